//! A target under test: where to send, which process to watch, and its sinks.
//!
//! With `-spawn` the bench starts the target itself, after its sinks listen, so a
//! command line can name them (`{sink}`); that makes compare mode one command. A
//! target found by `-addr`/`-pid` is only watched, never stopped.

use std::net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::sink::Sink;

/// How to reach and watch one target.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    /// Name in the report.
    pub label: String,
    /// Command line to start (`sh -c`), with `{port}`, `{sink}`, `{sinks}`, `{tmp}`.
    pub spawn: Option<String>,
    /// Address of an already running target.
    pub addr: Option<String>,
    /// Process to watch for an already running target.
    pub pid: Option<u32>,
    /// Where this target's sinks listen (port 0: any free port).
    pub sink_listen: SocketAddr,
}

/// A target ready for load.
pub struct Target {
    /// Name in the report.
    pub label: String,
    /// Where the load goes.
    pub addr: SocketAddr,
    /// Process whose CPU and memory are reported.
    pub pid: Option<u32>,
    /// The spawned command, after placeholder substitution.
    pub command: Option<String>,
    /// The target's destinations.
    pub sinks: Vec<Sink>,
    child: Option<Child>,
    log: Option<PathBuf>,
}

/// Resolves `addr` and insists on loopback: the bench must never load a real network.
pub fn loopback(addr: &str) -> anyhow::Result<SocketAddr> {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr:?} (expected host:port)"))?
        .collect();
    match resolved.iter().find(|a| a.ip().is_loopback()) {
        Some(a) if resolved.iter().all(|a| a.ip().is_loopback()) => Ok(*a),
        _ => bail!("{addr} is not a loopback address: polymur-bench only loads 127.0.0.1/::1"),
    }
}

/// A free loopback port for a spawned target's listener.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("picking a free port")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `addr` accepts a connection, or the child exits, or `limit` passes.
fn wait_listening(addr: SocketAddr, child: &mut Option<Child>, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if let Some(c) = child.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                return false;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn log_tail(path: &Option<PathBuf>) -> String {
    let Some(p) = path else { return String::new() };
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(10)..].join("\n");
    format!("\nlast lines of {}:\n{tail}", p.display())
}

impl Target {
    /// Starts the sinks, then the target (or finds it), and waits until it listens.
    pub async fn start(spec: &TargetSpec, sinks: usize) -> anyhow::Result<Target> {
        loopback(&spec.sink_listen.to_string())?;
        let mut started = Vec::new();
        for i in 0..sinks.max(1) {
            let mut listen = spec.sink_listen;
            if i > 0 && listen.port() != 0 {
                listen.set_port(listen.port() + i as u16);
            }
            started.push(Sink::start(listen).await?);
        }
        let sink_list: Vec<String> = started.iter().map(|s| s.addr.to_string()).collect();
        let Some(cmd) = &spec.spawn else {
            let addr = spec
                .addr
                .as_deref()
                .context("give -spawn \"<command>\" or -addr HOST:PORT for the target")?;
            let addr = loopback(addr)?;
            return Ok(Target {
                label: spec.label.clone(),
                addr,
                pid: spec.pid,
                command: None,
                sinks: started,
                child: None,
                log: None,
            });
        };
        let port = match &spec.addr {
            Some(a) => loopback(a)?.port(),
            None => free_port()?,
        };
        let tmp = std::env::temp_dir().join(format!(
            "polymur-bench-{}-{}",
            std::process::id(),
            spec.label
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ));
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let command = cmd
            .replace("{port}", &port.to_string())
            .replace("{sinks}", &sink_list.join(","))
            .replace("{sink}", &sink_list[0])
            .replace("{tmp}", &tmp.display().to_string());
        // `exec` makes the shell become the target, so the pid we watch is the target's.
        let shell_line = if command.contains("exec ") {
            command.clone()
        } else {
            format!("exec {command}")
        };
        let log = tmp.join("target.log");
        let out = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        // Its own process group, so that stopping it also stops whatever a wrapper
        // (`perf record`, `strace`) started, and Ctrl-C reaches only the bench.
        let child = Command::new("sh")
            .process_group(0)
            .arg("-c")
            .arg(&shell_line)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {command}"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let pid = child.id();
        let mut child = Some(child);
        let log = Some(log);
        if !wait_listening(addr, &mut child, Duration::from_secs(20)) {
            if let Some(c) = child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            bail!(
                "{}: target did not listen on {addr} within 20 s: {command}{}",
                spec.label,
                log_tail(&log)
            );
        }
        Ok(Target {
            label: spec.label.clone(),
            addr,
            pid: Some(pid),
            command: Some(command),
            sinks: started,
            child,
            log,
        })
    }

    /// Lines received by all of this target's sinks.
    pub fn arrived(&self) -> u64 {
        self.sinks.iter().map(|s| s.counters.lines()).sum()
    }

    /// When the last bytes reached any sink.
    pub fn last_arrival(&self) -> Instant {
        self.sinks
            .iter()
            .map(|s| s.counters.last_arrival())
            .max()
            .expect("at least one sink")
    }

    /// Stops a spawned target's process group with SIGTERM (it drains), then
    /// SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                // The leader is gone; a wrapper's children get the same signal.
                signal("-TERM");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("-KILL");
        let _ = child.wait();
    }

    /// Where the spawned target's output went.
    pub fn log(&self) -> Option<&PathBuf> {
        self.log.as_ref()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_accepted() {
        assert!(loopback("127.0.0.1:2003").is_ok());
        assert!(loopback("[::1]:2003").is_ok());
        assert!(loopback("10.0.0.1:2003").is_err());
        assert!(loopback("192.168.1.1:80").is_err());
    }
}
