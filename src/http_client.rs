//! Outgoing HTTPS clients: the key stores' (Consul, etcd) and polymur-proxy's.
//!
//! reqwest is built without a bundled crypto provider (aws-lc-rs is slow to build),
//! so it would panic unless given a finished rustls configuration; we hand it one on
//! the `ring` provider instead of relying on a process-wide default. Roots are the
//! system CA bundle plus, optionally, one operator-supplied PEM file (`-cert` of the
//! proxy, `CONSUL_CACERT`).
//!
//! That operator file is very often the gateway's own self-signed certificate made
//! with `openssl req -x509` as the gateway README shows. openssl marks it `CA:TRUE`,
//! and webpki refuses a CA certificate as a server's end-entity certificate
//! (`CaUsedAsEndEntity`), while Go's TLS client, which the old proxy used, accepts it.
//! So a server certificate that is byte-identical to one in the operator's file is
//! trusted (pinned) after the server name is checked against it; everything else goes
//! through normal webpki chain verification, with the operator's certificates as
//! additional roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// Why a client could not be built. The message names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("CA certificate {path}: {message}")]
    Ca { path: String, message: String },
    #[error("TLS client configuration: {0}")]
    Tls(String),
    #[error("HTTP client: {0}")]
    Http(String),
}

/// Where Linux distributions keep the system CA bundle (the list rustls-native-certs
/// and Go's crypto/x509 search).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Reads every PEM certificate of `path`; an unreadable file or one without any
/// certificate is a configuration error, reported now rather than at the first handshake.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let ca = |message: String| ClientError::Ca {
        path: path.display().to_string(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ca(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca("no PEM certificate in file".into()));
    }
    Ok(certs)
}

/// A rustls client configuration on the ring provider: system roots (or
/// `SSL_CERT_FILE`), plus the certificates of `extra_ca`, which are also pinned.
pub fn tls_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let bundle: Option<PathBuf> = match std::env::var_os("SSL_CERT_FILE") {
        Some(path) => Some(path.into()),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
    };
    // A missing system bundle only matters for https endpoints, and then the TLS
    // handshake reports it.
    if let Some(path) = bundle {
        if let Ok(pem) = std::fs::read(&path) {
            roots.add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).flatten());
        }
    }
    let pinned = match extra_ca {
        Some(path) => {
            let certs = read_certs(path)?;
            let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
            if added == 0 {
                return Err(ClientError::Ca {
                    path: path.display().to_string(),
                    message: "no usable certificate".into(),
                });
            }
            certs
        }
        None => Vec::new(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    if pinned.is_empty() {
        return Ok(builder.with_root_certificates(roots).with_no_client_auth());
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedOrWebPki { inner, pinned }))
        .with_no_client_auth())
}

/// A reqwest client over [`tls_config`]. Proxies from the environment are ignored:
/// the key store is a local agent or internal cluster, and the polymur gateway is
/// reached directly as the old proxy did; an `HTTP_PROXY` meant for something else
/// must not see API keys or tokens.
pub fn reqwest_client(
    extra_ca: Option<&Path>,
    configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, ClientError> {
    let tls = tls_config(extra_ca)?;
    configure(
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .connect_timeout(Duration::from_secs(5)),
    )
    .build()
    .map_err(|e| ClientError::Http(e.to_string()))
}

/// Accepts a server certificate identical to a configured one (after checking the
/// server name and that webpki's complaint is not about validity dates or
/// revocation); every other certificate gets plain webpki verification.
#[derive(Debug)]
struct PinnedOrWebPki {
    inner: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let err = match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        // Pinning replaces the chain check only: an expired or revoked certificate
        // stays refused even when it is the configured one.
        let date_or_revoked = matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. }
                    | CertificateError::Revoked
            )
        );
        if date_or_revoked
            || !self
                .pinned
                .iter()
                .any(|c| c.as_ref() == end_entity.as_ref())
        {
            return Err(err);
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
