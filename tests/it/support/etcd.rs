//! A real, throwaway etcd 3.4 (Debian `etcd-server`) on loopback, with `etcdctl` helpers.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::http_get;
use super::net::{free_port, wait_port_closed};

/// One single-member etcd. `stop()`/`restart()` keep the ports and the data dir, so a test can
/// simulate a key-store outage and recovery. Killed and reaped on drop.
pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    starts: u32,
    // Declared last so the directory outlives the process.
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd and waits (up to 30 s) until `/health` reports healthy. Panics with the tail
    /// of etcd's log otherwise.
    pub fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("etcd-")
            .tempdir()
            .expect("tempdir for etcd");
        let mut etcd = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: dir.path().join("data"),
            log: dir.path().join("etcd.log"),
            starts: 0,
            dir,
        };
        etcd.launch();
        etcd
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        self.starts += 1;
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        // Append, so a restart keeps the earlier run's log for diagnosis.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("t={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // An operator's ETCD_* variables would override the flags above.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        self.child = Some(
            cmd.spawn()
                .expect("spawn etcd (Debian package etcd-server)"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "etcd exited during start-up ({status})\n{}",
                    self.log_tail()
                );
            }
            if self.healthy() {
                return;
            }
            if Instant::now() >= deadline {
                panic!("etcd not healthy after 30 s\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True when etcd answers `GET /health` with `"health":"true"`.
    pub fn healthy(&self) -> bool {
        match http_get(&self.client_addr(), "/health", &[]) {
            Ok(r) => r.status == 200 && r.body.contains("\"true\""),
            Err(_) => false,
        }
    }

    /// `http://127.0.0.1:<client port>` (gRPC and the JSON gateway share it).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:<client port>`, for clients that take host:port.
    pub fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// Last lines of etcd's log (all runs).
    pub fn log_tail(&self) -> String {
        super::file_tail(&self.log, 60)
    }

    fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=5s")
            .arg("--command-timeout=10s")
            .args(args)
            .stdin(Stdio::null());
        for (k, _) in std::env::vars_os() {
            let k_str = k.to_string_lossy();
            if k_str.starts_with("ETCDCTL") && k_str != "ETCDCTL_API" {
                cmd.env_remove(k);
            }
        }
        cmd.output()
            .expect("run etcdctl (Debian package etcd-client)")
    }

    fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `etcdctl put key value`; panics on failure.
    pub fn put(&self, key: &str, value: &str) {
        // `--` so values starting with '-' are not taken as flags.
        self.etcdctl_ok(&["put", "--", key, value]);
    }

    /// `etcdctl del key`; panics on failure (deleting a missing key is not a failure).
    pub fn delete(&self, key: &str) {
        self.etcdctl_ok(&["del", "--", key]);
    }

    /// `etcdctl get key`: the value, or None when the key does not exist.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl_ok(&["get", "--print-value-only", "--", key]);
        if out.is_empty() {
            None
        } else {
            Some(out.strip_suffix('\n').unwrap_or(&out).to_string())
        }
    }

    /// All `(key, value)` pairs under `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl_ok(&["get", "--prefix", "--", prefix]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }

    /// Kills etcd (SIGKILL, an abrupt outage) and waits until its client port refuses.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_port_closed(self.client_port, Duration::from_secs(10));
    }

    /// Starts etcd again on the same ports and data dir (keys survive) and waits until healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
