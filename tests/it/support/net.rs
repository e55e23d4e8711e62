//! Port allocation and tiny TCP clients.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Ports already handed out in this test process. Tests in one binary run in parallel
/// threads; without this, two tests that each bind-read-drop port 0 can be given the same
/// port by the kernel before either has started its server on it.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A loopback TCP port that is free right now and was not returned before in this process.
/// The port is released before returning, so whoever binds it next (usually a server the test
/// starts right away) gets it.
///
/// The ports come from *below* the kernel's ephemeral range (`ip_local_port_range`), never
/// from `bind(0)`: every test binds sinks on port 0 and every daemon connects out from
/// ephemeral ports, so a port taken from that range could be given to another test's sink
/// or used as another connection's local port before this test binds it — and then a
/// gateway "destination that is down" is in fact another test's sink (seen: 30 000 points
/// delivered to the wrong test). Within the process, a counter never hands a port out
/// twice; its start depends on the pid, so concurrent test processes rarely meet.
pub fn free_port() -> u16 {
    let (low, span) = reserved_range();
    static NEXT: OnceLock<std::sync::atomic::AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| std::sync::atomic::AtomicU32::new(std::process::id() % span));
    for _ in 0..span {
        let offset = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % span;
        let port = (low + offset) as u16;
        if TcpListener::bind(loopback(port)).is_ok() && handed_out().lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("free_port: no free port in {low}..{}", low + span);
}

/// Start and size of the port range `free_port` uses: the 12 000 ports just below the
/// ephemeral range (20768..32768 with Linux's default 32768-60999), never below 10 000.
fn reserved_range() -> (u32, u32) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u32>().ok())
        })
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(12_000).max(10_000);
    (low, ephemeral_low.saturating_sub(low).max(1_000))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`. Returns false on timeout.
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&loopback(port), Duration::from_millis(250)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until connections to 127.0.0.1:`port` are refused (a server shut down). Returns false
/// if it still accepts after `timeout`.
pub fn wait_port_closed(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&loopback(port), Duration::from_millis(250)).is_err() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connect(addr: &str) -> io::Result<TcpStream> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(stream)
}

/// Connects to `addr` (`127.0.0.1:port`), writes `data` (plaintext lines, newline-terminated by
/// the caller), and closes the connection cleanly (FIN after the last byte). Returns once the
/// kernel has the data: wait on the receiver (`LineSink::wait_count`,
/// `CarbonCache::wait_points`) to know it arrived.
pub fn send_lines(addr: &str, data: &str) -> io::Result<()> {
    let mut stream = connect(addr)?;
    stream.write_all(data.as_bytes())?;
    stream.flush()?;
    stream.shutdown(Shutdown::Write)?;
    Ok(())
}

/// One-request-line TCP protocols (the runtime API `getdest`/`putdest`, runstats `stats`):
/// sends `request` (a newline is appended if missing) and returns everything the server writes
/// until it closes the connection (at most 30 s).
pub fn tcp_request(addr: &str, request: &str) -> io::Result<String> {
    let mut stream = connect(addr)?;
    let mut req = request.to_string();
    if !req.ends_with('\n') {
        req.push('\n');
    }
    stream.write_all(req.as_bytes())?;
    stream.flush()?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Whether this kernel reports the peer's receive window (Linux 6.2 and later). Without
/// it the daemons keep each destination's whole resend window (16 MiB), so a test of how
/// much memory goes back must allow for it.
pub fn kernel_reports_peer_window() -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        polymur::dest::unacked::peer_window(&s).is_some()
    })
}
