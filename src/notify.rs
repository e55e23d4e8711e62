//! systemd service notifications (`sd_notify`): readiness, reload, stop and watchdog.
//!
//! With `Type=notify` systemd considers a daemon started only once it says `READY=1`,
//! so `systemctl start` (and units ordered after it) wait until the listeners are
//! really bound; with `WatchdogSec=` systemd restarts a daemon that stops pinging.
//! The protocol is one datagram per message to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). It is written
//! here in a few lines rather than taken from a crate because the crates read the
//! environment on every call, which a multi-threaded test cannot vary safely; a
//! [`Notifier`] reads it once and can also be pointed at any socket.
//!
//! Outside systemd (no `$NOTIFY_SOCKET`) every call is a no-op.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::shutdown::Shutdown;

/// Where notifications go, and the watchdog period systemd asked for.
#[derive(Debug, Default)]
pub struct Notifier {
    /// The service manager's socket; `None` outside systemd.
    target: Option<SocketAddr>,
    /// `WATCHDOG_USEC` when it is meant for this process (`WATCHDOG_PID` unset or ours).
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` once.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|s| socket_addr(s.to_str()?).ok());
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// Sends to the socket at `path` (`@name`: abstract), with a watchdog period.
    pub fn to_socket(path: &str, watchdog: Option<Duration>) -> io::Result<Notifier> {
        Ok(Notifier {
            target: Some(socket_addr(path)?),
            watchdog,
        })
    }

    /// Sends one notification (newline-separated `KEY=value` assignments).
    pub fn send(&self, state: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), target)?;
        Ok(())
    }

    /// The listeners are up: `systemctl start` returns.
    pub fn ready(&self) -> io::Result<()> {
        self.send(&format!("READY=1\nMAINPID={}", std::process::id()))
    }

    /// A SIGHUP reload began; call [`Notifier::ready`] when it is done. The
    /// monotonic timestamp lets `Type=notify-reload` match the reload to its signal.
    pub fn reloading(&self) -> io::Result<()> {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    /// Shutdown began (queues are draining): systemd waits instead of calling it a crash.
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }

    /// Half the watchdog period systemd asked for: ping at least this often.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Pings `WATCHDOG=1` every half period until `shutdown`. The pings come from a
    /// runtime task, so they stop (and systemd restarts the daemon) when the runtime
    /// no longer schedules work. `None` when no watchdog was asked for.
    pub fn spawn_watchdog(
        self: Arc<Self>,
        mut shutdown: Shutdown,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.watchdog_interval()?;
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = self.send("WATCHDOG=1") {
                            tracing::warn!("systemd watchdog ping failed: {e}");
                        }
                    }
                    _ = shutdown.recv() => return,
                }
            }
        }))
    }
}

/// The process-wide notifier, from the environment at first use.
pub fn global() -> Arc<Notifier> {
    static GLOBAL: OnceLock<Arc<Notifier>> = OnceLock::new();
    GLOBAL
        .get_or_init(|| Arc::new(Notifier::from_env()))
        .clone()
}

/// [`Notifier::ready`] on the process-wide notifier; failures are logged, never fatal.
pub fn ready() {
    log_failure("READY", global().ready());
}

/// [`Notifier::reloading`] on the process-wide notifier.
pub fn reloading() {
    log_failure("RELOADING", global().reloading());
}

/// [`Notifier::stopping`] on the process-wide notifier.
pub fn stopping() {
    log_failure("STOPPING", global().stopping());
}

/// [`Notifier::spawn_watchdog`] on the process-wide notifier (inside a runtime).
pub fn spawn_watchdog(shutdown: Shutdown) -> Option<tokio::task::JoinHandle<()>> {
    global().spawn_watchdog(shutdown)
}

fn log_failure(what: &str, result: io::Result<()>) {
    if let Err(e) = result {
        tracing::warn!("systemd notification {what} failed: {e}");
    }
}

fn socket_addr(name: &str) -> io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        }
        None => SocketAddr::from_pathname(Path::new(name)),
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares reloads against.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (tempfile::TempDir, UnixDatagram, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (dir, sock, path.to_str().unwrap().to_string())
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification datagram");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_reloading_and_stopping_arrive_as_datagrams() {
        let (_dir, sock, path) = listener();
        let n = Notifier::to_socket(&path, None).unwrap();
        n.ready().unwrap();
        assert_eq!(
            recv(&sock),
            format!("READY=1\nMAINPID={}", std::process::id())
        );
        n.reloading().unwrap();
        let reload = recv(&sock);
        let usec: u64 = reload
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .expect(&reload)
            .parse()
            .unwrap();
        assert!(usec > 0);
        n.stopping().unwrap();
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn abstract_socket_names_are_understood() {
        let name = format!("polymur-notify-test-{}", std::process::id());
        let addr = socket_addr(&format!("@{name}")).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Notifier::to_socket(&format!("@{name}"), None)
            .unwrap()
            .stopping()
            .unwrap();
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn without_a_socket_every_call_is_a_no_op() {
        let n = Notifier::default();
        n.ready().unwrap();
        n.stopping().unwrap();
        assert_eq!(n.watchdog_interval(), None);
    }

    #[tokio::test]
    async fn the_watchdog_pings_at_half_the_period_until_shutdown() {
        let (_dir, sock, path) = listener();
        let n = Arc::new(Notifier::to_socket(&path, Some(Duration::from_millis(200))).unwrap());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_millis(100)));
        let (trigger, shutdown) = Shutdown::new();
        let task = n.spawn_watchdog(shutdown).unwrap();
        let sock = tokio::task::spawn_blocking(move || {
            for _ in 0..3 {
                assert_eq!(recv(&sock), "WATCHDOG=1");
            }
            sock
        })
        .await
        .unwrap();
        trigger.fire();
        task.await.unwrap();
        // Stopped: whatever was queued before the shutdown is read, then nothing more comes.
        sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        while sock.recv(&mut buf).is_ok() {}
        std::thread::sleep(Duration::from_millis(300));
        assert!(sock.recv(&mut buf).is_err(), "a ping after shutdown");
    }
}
