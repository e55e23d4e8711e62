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
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if handed_out().lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("free_port: no new free port after 200 attempts");
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
