//! Binding and accepting: the two socket steps every listener of every daemon takes
//! (ingest, plaintext, runtime API, runstats, admin HTTP), written once so each
//! error names its address and an accept failure never ends a listener.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use crate::shutdown::Shutdown;

/// Binds a listener, naming the address in the error (the operator's flag value).
pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    let local = l.local_addr()?;
    Ok((l, local))
}

/// Accepts the next connection, or `None` once shutdown is requested. Accept
/// errors (typically EMFILE) are logged and retried after a short pause instead
/// of spinning or ending the listener.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &mut Shutdown,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.recv() => return None,
        }
    }
}

/// `host:port` for a listen address and port, bracketing IPv6 literals.
pub fn host_port(addr: &str, port: u16) -> String {
    if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}
