//! Minimal synchronous HTTP/1.1 client over raw sockets (plain and rustls), written here
//! rather than using reqwest so tests can see exactly what the server did on the wire: the
//! status, every header, and whether it closed the connection after answering.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

/// Gzip-compresses `data` (what polymur-proxy sends as an `/ingest` body).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data).expect("gzip write");
    enc.finish().expect("gzip finish")
}

/// Inverse of `gzip`; panics on malformed input.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(data).read_to_end(&mut out).expect("gunzip");
    out
}

/// One HTTP response as seen on the wire.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names as sent (compare case-insensitively, or use `header()`).
    pub headers: Vec<(String, String)>,
    /// Body decoded as UTF-8 (lossy); chunked bodies are de-chunked.
    pub body: String,
    /// The server closed the connection after this response: it sent `Connection: close`,
    /// or EOF/reset was seen right after the response (probe of up to 100 ms).
    pub closed: bool,
}

impl HttpResponse {
    /// First header with this name, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How long `HttpConn` waits for a server on connect, read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to watch for EOF after a response that did not announce `Connection: close`.
const CLOSE_PROBE: Duration = Duration::from_millis(100);

trait Transport: Read + Write + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Transport for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// A client TLS config that trusts the PEM certificate(s) in `ca_cert`, using the ring
/// provider explicitly (the crate does not build aws-lc-rs, so there is no process default).
///
/// Certificates made by `openssl req -x509` carry `basicConstraints CA:TRUE`, and webpki
/// refuses such a certificate as a server's own (`CaUsedAsEndEntity`). Go's TLS client, which
/// the old proxy used, accepts it. So when the server presents exactly one of the trusted
/// certificates, it is accepted (pinning) after checking the server name against it; every
/// other certificate goes through normal webpki verification.
pub fn tls_client_config(ca_cert: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let mut pinned = Vec::new();
    for cert in CertificateDer::pem_file_iter(ca_cert)
        .unwrap_or_else(|e| panic!("read {}: {e}", ca_cert.display()))
    {
        let cert = cert.expect("PEM certificate");
        roots.add(cert.clone()).expect("add root");
        pinned.push(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("webpki verifier");
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedOrWebPki { inner, pinned }))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct PinnedOrWebPki {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => Ok(v),
            Err(e)
                if format!("{e:?}").contains("CaUsedAsEndEntity")
                    && self
                        .pinned
                        .iter()
                        .any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client TLS config with plain webpki verification against `ca_cert` (no pinning
/// fallback): what a strict rustls client does. With `TlsFiles::generate` certificates it
/// fails with `CaUsedAsEndEntity`; with `TlsFiles::generate_leaf` it succeeds.
pub fn tls_client_config_strict(ca_cert: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_cert)
        .unwrap_or_else(|e| panic!("read {}: {e}", ca_cert.display()))
    {
        roots.add(cert.expect("PEM certificate")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A (possibly kept-alive) HTTP/1.1 connection, for tests that send several requests on one
/// connection or check whether the server closes it.
pub struct HttpConn {
    stream: Box<dyn Transport>,
    host: String,
    buf: Vec<u8>,
    eof: bool,
}

fn tcp_connect(addr: &str) -> io::Result<TcpStream> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl HttpConn {
    /// Plain HTTP to `addr` (`127.0.0.1:port`).
    pub fn connect(addr: &str) -> io::Result<HttpConn> {
        Ok(HttpConn {
            stream: Box::new(tcp_connect(addr)?),
            host: addr.to_string(),
            buf: Vec::new(),
            eof: false,
        })
    }

    /// HTTPS to `addr`, trusting `ca_cert`. The server name checked against the certificate is
    /// the host part of `addr` (`127.0.0.1` → the IP SAN); the handshake completes here.
    pub fn connect_tls(addr: &str, ca_cert: &Path) -> io::Result<HttpConn> {
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Self::connect_tls_as(addr, ca_cert, name)
    }

    /// HTTPS with an explicit server name (e.g. `localhost` to check the DNS SAN).
    pub fn connect_tls_as(
        addr: &str,
        ca_cert: &Path,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<HttpConn> {
        Self::connect_tls_with(addr, tls_client_config(ca_cert), name)
    }

    /// HTTPS with a caller-made client config (e.g. `tls_client_config_strict`).
    pub fn connect_tls_with(
        addr: &str,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<HttpConn> {
        let tcp = tcp_connect(addr)?;
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(HttpConn {
            stream: Box::new(tls),
            host: addr.to_string(),
            buf: Vec::new(),
            eof: false,
        })
    }

    /// Sends one request and reads the whole response. `Host` and `Content-Length` are added
    /// unless given in `headers` (give a wrong `Content-Length` on purpose to test framing). If the server
    /// stops reading the body (e.g. answers 413 early and closes), its response is still
    /// returned when it can be read.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<HttpResponse> {
        let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if !has("host") {
            head.push_str(&format!("Host: {}\r\n", self.host));
        }
        if !has("content-length") && !has("transfer-encoding") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let write_result = self
            .stream
            .write_all(head.as_bytes())
            .and_then(|_| self.stream.write_all(body))
            .and_then(|_| self.stream.flush());
        match self.read_response(method) {
            Ok(r) => Ok(r),
            Err(read_err) => Err(write_result.err().unwrap_or(read_err)),
        }
    }

    /// `request("POST", ...)`.
    pub fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<HttpResponse> {
        self.request("POST", path, headers, body)
    }

    /// True if the server has closed (EOF or reset) within `timeout`.
    pub fn is_closed(&mut self, timeout: Duration) -> bool {
        if self.eof {
            return true;
        }
        let _ = self.stream.tcp().set_read_timeout(Some(timeout));
        let mut tmp = [0u8; 4096];
        let closed = match self.stream.read(&mut tmp) {
            Ok(0) => true,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                false
            }
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ),
        };
        let _ = self.stream.tcp().set_read_timeout(Some(IO_TIMEOUT));
        if closed {
            self.eof = true;
        }
        closed
    }

    /// Reads more bytes into `buf`; Ok(false) at EOF.
    fn fill(&mut self) -> io::Result<bool> {
        let mut tmp = [0u8; 16384];
        match self.stream.read(&mut tmp) {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(true)
            }
            // rustls reports a TCP close without close_notify as UnexpectedEof.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.eof = true;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            if self.buf.len() > 1 << 20 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a complete response",
                ));
            }
        }
    }

    fn read_exact_body(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside the body",
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn read_response(&mut self, method: &str) -> io::Result<HttpResponse> {
        loop {
            let status_line = self.read_line()?;
            let mut parts = status_line.splitn(3, ' ');
            let version = parts.next().unwrap_or("");
            if !version.starts_with("HTTP/1.") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                ));
            }
            let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status {status_line:?}"),
                )
            })?;
            let mut headers = Vec::new();
            loop {
                let line = self.read_line()?;
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            if (100..200).contains(&status) {
                continue; // 100 Continue and friends: the real response follows.
            }
            let get = |n: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.clone())
            };
            let mut closed = get("connection")
                .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
                || version == "HTTP/1.0";
            let body = if method == "HEAD" || status == 204 || status == 304 {
                Vec::new()
            } else if get("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
            {
                let mut body = Vec::new();
                loop {
                    let size_line = self.read_line()?;
                    let size_hex = size_line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size_hex, 16).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad chunk {size_line:?}"),
                        )
                    })?;
                    if size == 0 {
                        while !self.read_line()?.is_empty() {}
                        break;
                    }
                    body.extend(self.read_exact_body(size)?);
                    self.read_exact_body(2)?;
                }
                body
            } else if let Some(len) = get("content-length") {
                let n: usize = len.parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("bad length {len:?}"))
                })?;
                self.read_exact_body(n)?
            } else {
                // No framing: the body ends at EOF.
                while self.fill()? {}
                closed = true;
                std::mem::take(&mut self.buf)
            };
            if !closed && self.buf.is_empty() {
                closed = self.is_closed(CLOSE_PROBE);
            }
            return Ok(HttpResponse {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                closed,
            });
        }
    }
}

/// One request on a fresh plain connection; I/O errors are returned (connection refused, ...).
pub fn try_http_request(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    HttpConn::connect(addr)?.request(method, path, headers, body)
}

/// `POST` on a fresh plain connection; panics on I/O errors (use `try_http_request` to test
/// refusals).
pub fn http_post(addr: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> HttpResponse {
    try_http_request("POST", addr, path, headers, &body)
        .unwrap_or_else(|e| panic!("POST http://{addr}{path}: {e}"))
}

/// `http_post`, sent again (at most 50 times, 100 ms apart) while the answer is 503,
/// as the proxy retries a batch the gateway could not take yet.
pub fn http_post_retrying(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut r = http_post(addr, path, headers, body.to_vec());
    for _ in 0..50 {
        if r.status != 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        r = http_post(addr, path, headers, body.to_vec());
    }
    r
}

/// `GET` on a fresh plain connection; I/O errors are returned.
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> io::Result<HttpResponse> {
    try_http_request("GET", addr, path, headers, &[])
}

/// `POST` over TLS on a fresh connection, trusting only `ca_cert`; panics on I/O or TLS errors
/// (use `HttpConn::connect_tls` to test handshake failures).
pub fn https_post(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    ca_cert: &Path,
) -> HttpResponse {
    HttpConn::connect_tls(addr, ca_cert)
        .and_then(|mut c| c.post(path, headers, &body))
        .unwrap_or_else(|e| panic!("POST https://{addr}{path}: {e}"))
}
