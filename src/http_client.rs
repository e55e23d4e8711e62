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
//! The same command makes a certificate without subjectAltName, which names no host at
//! all for webpki. So a server certificate that is byte-identical to one in the operator's
//! file is trusted (pinned) whatever names it holds: the operator handed us exactly that
//! certificate, which says more than any name could. Only its dates still count (an
//! expired pinned certificate is refused). Everything else goes through normal webpki
//! chain and name verification, with the operator's certificates as additional roots.
//!
//! When a request fails, [`describe`] names the cause in one line (unknown issuer, name
//! mismatch, expired, plain HTTP on the other side, a missing client certificate)
//! instead of reqwest's `error sending request`.

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
    #[error("client certificate {path}: {message} (check -client-cert / -client-key)")]
    Identity { path: String, message: String },
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

/// A client certificate and its key (PEM files), for servers that require one.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    /// Certificate chain, leaf first (`-client-cert`).
    pub cert: &'a Path,
    /// Its private key (`-client-key`).
    pub key: &'a Path,
}

/// A rustls client configuration on the ring provider: system roots (or
/// `SSL_CERT_FILE`), plus the certificates of `extra_ca`, which are also pinned.
pub fn tls_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
    tls_config_with(extra_ca, None)
}

/// Like [`tls_config`], presenting `identity` when the server asks for a certificate.
pub fn tls_config_with(
    extra_ca: Option<&Path>,
    identity: Option<Identity<'_>>,
) -> Result<rustls::ClientConfig, ClientError> {
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
    let builder = if pinned.is_empty() {
        builder.with_root_certificates(roots)
    } else {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedOrWebPki { inner, pinned }))
    };
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => {
            let bad = |message: String| ClientError::Identity {
                path: id.cert.display().to_string(),
                message,
            };
            let certs = read_certs(id.cert)?;
            let key_pem = std::fs::read(id.key).map_err(|e| ClientError::Identity {
                path: id.key.display().to_string(),
                message: e.to_string(),
            })?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
                ClientError::Identity {
                    path: id.key.display().to_string(),
                    message: "no PEM private key".into(),
                }
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad(e.to_string()))
        }
    }
}

/// A reqwest client over [`tls_config`]. Proxies from the environment are ignored:
/// the key store is a local agent or internal cluster, and the polymur gateway is
/// reached directly as the old proxy did; an `HTTP_PROXY` meant for something else
/// must not see API keys or tokens.
pub fn reqwest_client(
    extra_ca: Option<&Path>,
    configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, ClientError> {
    reqwest_client_with(extra_ca, None, configure)
}

/// Like [`reqwest_client`], presenting `identity` to servers that ask for a certificate.
pub fn reqwest_client_with(
    extra_ca: Option<&Path>,
    identity: Option<Identity<'_>>,
    configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, ClientError> {
    reqwest_client_on(tls_config_with(extra_ca, identity)?, configure)
}

/// A reqwest client over a finished TLS configuration (kept by the caller too, e.g.
/// for [`probe_tls`]).
pub fn reqwest_client_on(
    tls: rustls::ClientConfig,
    configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, ClientError> {
    configure(
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .connect_timeout(Duration::from_secs(5)),
    )
    .build()
    .map_err(|e| ClientError::Http(e.to_string()))
}

/// Accepts a server certificate identical to a configured one, whatever its names,
/// when webpki's complaint is not about validity dates or revocation (webpki checks
/// the dates first, so an expired certificate always reports that); every other
/// certificate gets plain webpki verification.
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

/// One line naming why a request to `url` failed: the TLS cause when there is one (with
/// what to do about it), else the error and its causes joined with `: `.
pub fn describe(e: &reqwest::Error) -> String {
    explained(e).unwrap_or_else(|| chain(e))
}

/// [`describe`]'s explanation, or `None` when the error holds no cause we can name
/// (e.g. hyper's `connection was not ready` when the server's TLS alert arrived after
/// the client had finished its side of the handshake: see [`probe_tls`]).
pub fn explained(e: &reqwest::Error) -> Option<String> {
    let url = e
        .url()
        .map(|u| u.as_str().trim_end_matches('/').to_string());
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(cause) = tls_cause(err).and_then(|t| explain(t, url.as_deref())) {
            return Some(cause);
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse() && url.as_deref().is_some_and(|u| u.starts_with("http://")) {
                let https = url
                    .as_deref()
                    .unwrap_or("")
                    .replacen("http://", "https://", 1);
                let base = https.rsplit_once('/').map_or(https.as_str(), |(b, _)| b);
                return Some(format!(
                    "the gateway did not answer HTTP (is it an HTTPS port?): use -gateway={base} ({h})"
                ));
            }
        }
        cur = err.source();
    }
    None
}

/// Why a TLS session with `url`'s server fails, found by opening one, closing it at
/// once (close_notify, no request) and reading to the end; `None` when the session
/// closes cleanly, the address is not `https://`, or nothing answers within `timeout`.
///
/// In TLS 1.3 the client's handshake is over before the server has checked the client's
/// certificate, so a refusal (`certificate required`, `unknown CA`) is an alert that
/// arrives afterwards. A pooled HTTP client that loses that race sees only a closed
/// connection; reading the session to its end always sees the alert.
pub async fn probe_tls(
    config: Arc<rustls::ClientConfig>,
    url: &str,
    timeout: Duration,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let parsed = reqwest::Url::parse(url).ok()?;
    if parsed.scheme() != "https" {
        return None;
    }
    let host = parsed.host_str()?.trim_matches(|c| c == '[' || c == ']');
    let port = parsed.port_or_known_default()?;
    let name = ServerName::try_from(host.to_string()).ok()?;
    let cause = |e: &std::io::Error| tls_cause(e).and_then(|t| explain(t, Some(url)));
    let session = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut tls = match connector.connect(name, tcp).await {
            Ok(t) => t,
            Err(e) => return cause(&e),
        };
        if let Err(e) = tls.shutdown().await {
            return cause(&e);
        }
        let mut rest = Vec::new();
        match tls.read_to_end(&mut rest).await {
            Ok(_) => None,
            Err(e) => cause(&e),
        }
    };
    tokio::time::timeout(timeout, session).await.ok().flatten()
}

/// The rustls error inside `err`, directly or wrapped in `io::Error`s (hyper-rustls wraps
/// tokio-rustls' wrapper; `io::Error::source` skips the wrapped error, so walking the
/// chain alone would miss it).
fn tls_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = err;
    for _ in 0..8 {
        if let Some(t) = cur.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        cur = cur.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
    None
}

/// `DnsName("a.example")` → `a.example` (rustls lists presented names in Debug form).
fn bare_name(n: &str) -> &str {
    match (n.find('('), n.rfind(')')) {
        (Some(a), Some(b)) if a < b => n[a + 1..b].trim_matches('"'),
        _ => n,
    }
}

fn unix(t: &UnixTime) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(t.as_secs());
    humantime::format_rfc3339_seconds(at).to_string()
}

/// What a TLS error means for an operator, or `None` to fall back to the raw chain.
fn explain(t: &rustls::Error, url: Option<&str>) -> Option<String> {
    use rustls::AlertDescription as A;
    let cert = |why: String| Some(format!("TLS: the gateway's certificate {why}"));
    match t {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => cert(
                "is signed by an unknown issuer: give its CA certificate, or the certificate itself, with -cert".into(),
            ),
            CertificateError::NotValidForNameContext { expected, presented } => cert(format!(
                "is not valid for {} (it names {}): connect by one of its names, or pin exactly this certificate with -cert",
                expected.to_str(),
                if presented.is_empty() {
                    "no host".to_string()
                } else {
                    presented.iter().map(|n| bare_name(n)).collect::<Vec<_>>().join(", ")
                }
            )),
            CertificateError::NotValidForName => cert(
                "is not valid for the name in -gateway: connect by one of its names, or pin exactly this certificate with -cert".into(),
            ),
            CertificateError::ExpiredContext { not_after, .. } => {
                cert(format!("has expired (valid until {})", unix(not_after)))
            }
            CertificateError::Expired => cert("has expired".into()),
            CertificateError::NotValidYetContext { not_before, .. } => {
                cert(format!("is not valid before {}", unix(not_before)))
            }
            CertificateError::NotValidYet => cert("is not valid yet".into()),
            other => cert(format!("was refused: {other:?}")),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            let plain = url
                .map(|u| u.replacen("https://", "http://", 1))
                .map(|u| u.rsplit_once('/').map_or(u.clone(), |(b, _)| b.to_string()))
                .unwrap_or_else(|| "http://…".into());
            Some(format!(
                "the gateway answered plain HTTP: use -gateway={plain}"
            ))
        }
        rustls::Error::AlertReceived(A::CertificateRequired)
        | rustls::Error::AlertReceived(A::HandshakeFailure) => Some(
            "TLS: the gateway requires a client certificate: give -client-cert and -client-key".into(),
        ),
        rustls::Error::AlertReceived(
            a @ (A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::CertificateExpired | A::AccessDenied | A::DecryptError),
        ) => Some(format!(
            "TLS: the gateway refused our client certificate ({a:?}): check -client-cert against its -client-ca"
        )),
        other => Some(format!("TLS: {other}")),
    }
}

/// An error with its causes (reqwest's top-level message alone says little).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
