//! HTTPS for the ingest listener (rustls with the ring provider).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A certificate or key file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source} (check -cert / -key)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (check -cert)")]
    NoCert { path: String },
    #[error("{path} holds no PEM private key (check -key)")]
    NoKey { path: String },
    #[error("certificate and key do not form a usable TLS config: {0}")]
    Config(#[from] rustls::Error),
}

/// Builds the acceptor from PEM files, failing at start-up with a message that
/// names the file rather than at the first handshake.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
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
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
