//! Server-side TLS (rustls with the ring provider) for every listener: the gateway's
//! HTTPS, and the TLS plaintext listeners of the relay and the proxy. One mechanism for
//! all of them: [`ServerTls`] names the files, [`Reloadable`] holds the acceptor in a
//! slot that SIGHUP swaps (certificate rotation) while existing connections keep the
//! one they were accepted with, and a pair that does not load keeps the old one.
//!
//! With a client CA (`-client-ca` on the gateway, `-listen-client-ca` on the others) a
//! client must present a certificate signed by it; the handshake fails otherwise, before
//! any byte of data is read. It is in addition to API keys, never instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use super::TlsSlot;

/// A certificate or key file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source} (check the certificate, key and CA flags)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (check -cert / -listen-tls-cert)")]
    NoCert { path: String },
    #[error("{path} holds no PEM private key (check -key / -listen-tls-key)")]
    NoKey { path: String },
    #[error("client CA {path}: {message} (check -client-ca / -listen-client-ca)")]
    ClientCa { path: String, message: String },
    #[error("certificate and key do not form a usable TLS config: {0}")]
    Config(#[from] rustls::Error),
}

/// The files of one TLS listener.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM CA certificate(s) client certificates must be signed by (`None`: no client
    /// certificate asked for).
    pub client_ca: Option<PathBuf>,
}

fn read(p: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(p).map_err(|source| TlsError::Read {
        path: p.display().to_string(),
        source,
    })
}

/// Builds the acceptor from PEM files, failing at start-up with a message that
/// names the file rather than at the first handshake.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    ServerTls {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        client_ca: None,
    }
    .acceptor()
}

impl ServerTls {
    /// The acceptor these files make now.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let (cert, key) = (&self.cert, &self.key);
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&cert_pem)
            .filter_map(Result::ok)
            .collect();
        if certs.is_empty() {
            return Err(TlsError::NoCert {
                path: cert.display().to_string(),
            });
        }
        // The first private key of any kind (PKCS#8, PKCS#1 RSA, SEC1 EC), as before.
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
            .ok()
            .ok_or_else(|| TlsError::NoKey {
                path: key.display().to_string(),
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let config = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
        }
        .with_single_cert(certs, key_der)?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Loads the acceptor into a slot that [`Reloadable::reload`] can swap.
    pub fn load(self) -> Result<Reloadable, TlsError> {
        let slot = Arc::new(arc_swap::ArcSwap::from_pointee(self.acceptor()?));
        Ok(Reloadable { files: self, slot })
    }
}

/// Requires client certificates signed by one of the certificates in `ca`.
fn client_verifier(
    ca: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let bad = |message: String| TlsError::ClientCa {
        path: ca.display().to_string(),
        message,
    };
    let pem = read(ca)?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots
        .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
    if added == 0 {
        return Err(bad("no usable PEM certificate".into()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| bad(e.to_string()))
}

/// A listener's TLS acceptor and the files it came from.
pub struct Reloadable {
    files: ServerTls,
    slot: TlsSlot,
}

impl Reloadable {
    /// The slot listeners read the current acceptor from.
    pub fn slot(&self) -> TlsSlot {
        self.slot.clone()
    }

    /// SIGHUP: re-reads the files. New connections use the new pair; a pair that does
    /// not load keeps the old one and says why.
    pub fn reload(&self) {
        match self.files.acceptor() {
            Ok(a) => {
                self.slot.store(Arc::new(a));
                tracing::info!(
                    "SIGHUP: TLS certificate reloaded from {}",
                    self.files.cert.display()
                );
            }
            Err(e) => tracing::error!("SIGHUP: keeping the current TLS certificate: {e}"),
        }
    }
}

/// Reloads every one of `tls` on each SIGHUP until `shutdown`, for daemons whose
/// SIGHUP does nothing else (the gateway and relay reload through the daemon layer).
pub fn reload_on_hup(tls: Vec<Reloadable>, shutdown: crate::shutdown::Shutdown) {
    if tls.is_empty() {
        return;
    }
    crate::signals::on_hup(shutdown, move || {
        for t in &tls {
            t.reload();
        }
        async {}
    });
}
