//! TLS to destinations (`-destination-tls`), so two relays can talk across a WAN.
//!
//! carbon-c-relay marks a server `transport plain ssl`, which a `-config` member may say
//! too ([`DestAddr::tls`](super::DestAddr)); `-destinations` are `host:port` as Graphite
//! writes them, so for them one flag switches every destination of the process to TLS.
//! Either way the certificate is
//! verified by default: the system CAs plus `-destination-ca`, with the same pinning as the
//! proxy's `-cert` (a destination presenting exactly a certificate of that file is trusted
//! whatever names it holds). `-destination-client-cert`/`-key` answer a relay that requires
//! client certificates (`-listen-client-ca`).
//!
//! The writer keeps measuring what the destination may not have in TCP terms
//! ([`super::unacked`]); [`Conn::tls_slack`] is what TLS adds to that figure. A session the
//! peer ends with a TLS error ([`session_failed`]: TLS 1.3 lets a server refuse our client
//! certificate after our side of the handshake is done and we have written) is different:
//! the peer threw away what it received, so the writer sends everything written on it again.

use std::io::{self, IoSlice};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::unacked;
use crate::http_client::{tls_config_with, Identity};

/// `-destination-tls` and its files (relay and gateway).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DestTlsFlags {
    /// Connect to every destination over TLS, verifying its certificate (system CAs plus -destination-ca)
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub destination_tls: bool,
    /// CA certificate(s) (PEM) trusted for -destination-tls; a destination presenting exactly one of them is trusted whatever its names
    #[arg(long)]
    pub destination_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to destinations that require one (a relay with -listen-client-ca)
    #[arg(long)]
    pub destination_client_cert: Option<PathBuf>,
    /// Private key (PEM) of -destination-client-cert
    #[arg(long)]
    pub destination_client_key: Option<PathBuf>,
}

impl DestTlsFlags {
    /// The client configuration, when `-destination-tls` is on or `members` (a `-config`
    /// whose members may say `transport plain ssl`); an unreadable file, or a file flag
    /// with neither, is refused at start, naming the flag.
    pub fn client(&self, members: bool) -> Result<Option<DestTls>, String> {
        let files = self.destination_ca.is_some()
            || self.destination_client_cert.is_some()
            || self.destination_client_key.is_some();
        if !self.destination_tls && !members {
            return match files {
                true => Err(
                    "-destination-ca and -destination-client-cert/-key need -destination-tls (or -config members with transport plain ssl)"
                        .into(),
                ),
                false => Ok(None),
            };
        }
        let identity = match (&self.destination_client_cert, &self.destination_client_key) {
            (Some(cert), Some(key)) => Some(Identity { cert, key }),
            (None, None) => None,
            _ => {
                return Err(
                    "-destination-client-cert and -destination-client-key go together".into(),
                )
            }
        };
        let config = tls_config_with(self.destination_ca.as_deref(), identity)
            .map_err(|e| format!("-destination-tls: {e}"))?;
        Ok(Some(DestTls {
            connector: TlsConnector::from(Arc::new(config)),
        }))
    }
}

/// What the writers of a process connect with when `-destination-tls` is on.
#[derive(Clone)]
pub struct DestTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for DestTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DestTls")
    }
}

impl DestTls {
    /// The TLS handshake on a connected stream, verifying the certificate for `host` (the
    /// destination's host as written, brackets of an IPv6 literal removed). The error
    /// names the cause in one line ([`describe`]).
    pub async fn handshake(&self, host: &str, tcp: TcpStream) -> Result<Conn, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_string())
            .map_err(|_| format!("TLS: {host:?} is not a valid server name"))?;
        let mut tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| describe(&e))?;
        // The bound [`unacked::TLS_SLACK`] counts on (rustls' default, made explicit).
        tls.get_mut()
            .1
            .set_buffer_limit(Some(unacked::TLS_SEND_BUFFER));
        Ok(Conn::Tls(Box::new(tls)))
    }
}

/// A failed handshake in one line an operator can act on.
pub fn describe(e: &io::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => format!(
                "TLS: the destination closed the connection during the handshake \
                 (is it a plaintext port? does it require a client certificate?): {e}"
            ),
            _ => format!("TLS handshake: {e}"),
        };
    };
    let cert = |why: &str| format!("TLS: the destination's certificate {why}");
    match t {
        E::InvalidCertificate(C::UnknownIssuer) => cert(
            "is signed by an unknown issuer: give its CA certificate, or the certificate itself, with -destination-ca",
        ),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => cert(
            "is not valid for the destination's host name: connect by one of its names, or pin exactly this certificate with -destination-ca",
        ),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => cert("has expired"),
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            cert("is not valid yet")
        }
        E::InvalidCertificate(other) => cert(&format!("was refused: {other:?}")),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            "TLS: the destination did not answer TLS (is it a plaintext port?)".into()
        }
        E::AlertReceived(A::CertificateRequired | A::HandshakeFailure) => {
            "TLS: the destination requires a client certificate: give -destination-client-cert and -destination-client-key".into()
        }
        E::AlertReceived(a) => format!(
            "TLS: the destination refused the handshake ({a:?}): check -destination-client-cert against its -listen-client-ca"
        ),
        other => format!("TLS: {other}"),
    }
}

/// True when `e` is a TLS failure of an established session (an alert from the peer, a
/// record that does not decrypt) rather than a TCP one: the peer then dropped the session
/// and with it whatever it had received, acknowledged or not.
pub fn session_failed(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// A connection to a destination: plain TCP, or TLS over it.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// The TCP socket underneath, for the kernel's figures ([`unacked`]).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    /// Bytes the writer counts as written that the TCP figures may not cover
    /// ([`unacked::TLS_SLACK`]); 0 for plain TCP.
    pub fn tls_slack(&self) -> usize {
        match self {
            Conn::Plain(_) => 0,
            Conn::Tls(_) => unacked::TLS_SLACK,
        }
    }

    /// Completes when the peer closes the connection (or it fails) while we are idle, so
    /// a restarted receiver is noticed before the next batch is written into a dead socket.
    /// Cancel-safe: plain TCP only peeks at readiness, and rustls keeps what it read.
    pub async fn peer_closed(&mut self) -> io::Error {
        let mut buf = [0u8; 512];
        let closed = || io::Error::new(io::ErrorKind::ConnectionReset, "connection closed by peer");
        loop {
            match self {
                Conn::Plain(s) => {
                    if let Err(e) = s.readable().await {
                        return e;
                    }
                    match s.try_read(&mut buf) {
                        Ok(0) => return closed(),
                        // Graphite receivers send nothing; ignore stray bytes.
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return e,
                    }
                }
                Conn::Tls(s) => match s.read(&mut buf).await {
                    Ok(0) => return closed(),
                    Ok(_) => continue,
                    Err(e) => return e,
                },
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_the_switch_or_half_an_identity_are_refused() {
        let refusal = |tls: bool, ca: Option<&str>, cert: Option<&str>| {
            let flags = DestTlsFlags {
                destination_tls: tls,
                destination_ca: ca.map(PathBuf::from),
                destination_client_cert: cert.map(PathBuf::from),
                destination_client_key: None,
            };
            flags.client(false).err()
        };
        assert!(DestTlsFlags::default().client(false).unwrap().is_none());
        assert!(DestTlsFlags::default().client(true).unwrap().is_some());
        let ca_only = refusal(false, Some("ca.pem"), None).unwrap();
        assert!(ca_only.contains("need -destination-tls"));
        let half = refusal(true, None, Some("c.pem")).unwrap();
        assert!(half.contains("go together"));
        let missing = refusal(true, Some("/nonexistent/ca.pem"), None).unwrap();
        assert!(missing.contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn handshake_failures_name_their_cause_and_the_flag_to_use() {
        let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let unknown = describe(&wrap(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        )));
        assert!(unknown.contains("unknown issuer") && unknown.contains("-destination-ca"));
        let plain = describe(&wrap(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        )));
        assert!(plain.contains("plaintext port"));
        let eof = describe(&io::Error::new(io::ErrorKind::UnexpectedEof, "eof"));
        assert!(eof.contains("closed the connection during the handshake"));
    }
}
