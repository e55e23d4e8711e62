//! What systemd sees of each daemon: `READY=1` once the listeners are bound, `WATCHDOG=1`
//! pings, `RELOADING=1`/`READY=1` around a SIGHUP, `STOPPING=1` at SIGTERM — and a SIGHUP
//! (`systemctl reload`) never ends a daemon, whatever it has to reload.
//!
//! The notification socket is a real unix datagram socket, as systemd passes it in
//! `$NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::support::*;

const RELAY: &str = env!("CARGO_BIN_EXE_polymur");
const PROXY: &str = env!("CARGO_BIN_EXE_polymur-proxy");

/// A `$NOTIFY_SOCKET` stand-in collecting the states a daemon sends.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: String,
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify").to_str().unwrap().to_string();
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            _dir: dir,
            path,
            sock,
            seen: Vec::new(),
        }
    }

    /// Waits until a datagram holding `state` arrives (or fails after `within`).
    fn expect(&mut self, state: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let hit = msg.lines().any(|l| l == state);
                self.seen.push(msg);
                if hit {
                    return;
                }
            }
        }
        panic!("no {state} within {within:?}; got {:?}", self.seen);
    }
}

fn notify_env(sock: &NotifySocket) -> Vec<(&str, &str)> {
    vec![
        ("NOTIFY_SOCKET", sock.path.as_str()),
        ("WATCHDOG_USEC", "400000"),
    ]
}

#[test]
fn gateway_tells_systemd_ready_reloading_and_stopping() {
    let mut sock = NotifySocket::new();
    let sink = LineSink::start();
    let dest = format!("-destinations={}", sink.addr());
    let gw = Gateway::start_env(&["-dev-mode", &dest], &notify_env(&sock));
    sock.expect("READY=1", secs(10));
    sock.expect("WATCHDOG=1", secs(5));
    // Readiness means the port answers.
    assert_eq!(
        gw.ingest("123", &format!("a.b 1 {}\n", now_ts())).status,
        200
    );

    gw.proc.signal("HUP");
    sock.expect("RELOADING=1", secs(10));
    sock.expect("READY=1", secs(10));
    assert!(gw.proc.is_running(), "SIGHUP ended the gateway");

    gw.proc.term();
    sock.expect("STOPPING=1", secs(10));
    let status = gw.proc.wait_exit(secs(30)).expect("gateway did not exit");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn relay_without_anything_to_reload_survives_sighup() {
    let mut sock = NotifySocket::new();
    let sink = LineSink::start();
    let sink_addr = sink.addr();
    let (listen, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let args = [
        "-listen-addr",
        listen.as_str(),
        "-api-addr=",
        "-stat-addr=",
        "-admin-addr",
        admin.as_str(),
        "-destinations",
        &sink_addr,
    ];
    let relay = Proc::spawn(RELAY, &args, &notify_env(&sock));
    sock.expect("READY=1", secs(15));
    relay.signal("HUP");
    assert!(
        relay.wait_log("nothing to reload", secs(10)),
        "no reload log: {}",
        relay.all_output()
    );
    // Still serving after the signal: a line sent now arrives.
    let line = format!("after.hup 1 {}\n", now_ts());
    send_lines(&listen, &line).unwrap();
    assert!(
        sink.wait_count(1, secs(10)),
        "relay stopped forwarding after SIGHUP: {}",
        relay.all_output()
    );
    assert_eq!(sink.lines(), vec![line.trim_end().to_string()]);
    assert!(relay.is_running(), "SIGHUP ended the relay");
}

#[test]
fn proxy_survives_sighup() {
    let mut sock = NotifySocket::new();
    let sink = LineSink::start();
    let dest = format!("-destinations={}", sink.addr());
    let gw = Gateway::start(&["-dev-mode", &dest]);
    let gateway = format!("http://{}", gw.http);
    let (listen, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let args = [
        "-gateway",
        gateway.as_str(),
        "-api-key",
        "123",
        "-listen-addr",
        listen.as_str(),
        "-stat-addr=",
        "-admin-addr",
        admin.as_str(),
        "-flush-interval",
        "200ms",
    ];
    let proxy = Proc::spawn(PROXY, &args, &notify_env(&sock));
    sock.expect("READY=1", secs(15));
    proxy.signal("HUP");
    assert!(
        proxy.wait_log("nothing to reload", secs(10)),
        "no reload log: {}",
        proxy.all_output()
    );
    let line = format!("proxied.after.hup 1 {}\n", now_ts());
    send_lines(&listen, &line).unwrap();
    assert!(
        sink.wait_count(1, secs(15)),
        "proxy stopped forwarding after SIGHUP: {}",
        proxy.all_output()
    );
    assert!(proxy.is_running(), "SIGHUP ended the proxy");
}
