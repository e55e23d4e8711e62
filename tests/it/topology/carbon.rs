//! Real carbon-caches that can be restarted in place (same ports, same whisper
//! storage), in the central namespace, and a reader for everything they stored.
//!
//! `support::CarbonCache` starts a fresh instance each time; a restart in this test
//! must keep the ports the gateways' ring names and the whisper files written so far.
//! The configuration is the harness's (TESTING.md), plus `CARBON_METRIC_INTERVAL = 2`
//! so that carbon's own `metricsReceived` counter — every datapoint it received,
//! duplicates included — lands in whisper, which is how duplicates are counted.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::Netns;
use crate::support::{free_port, wait_port};

/// Prints `<metric> <ts> <repr(value)>` for every non-null point from a start time in
/// every whisper file under a root, in one interpreter (Debian's, which has `whisper`).
const DUMP_PY: &str = r#"
import os, sys, time, whisper
root, start = sys.argv[1], int(sys.argv[2])
now = int(time.time())
for d, _, files in os.walk(root):
    for f in files:
        if not f.endswith('.wsp'):
            continue
        path = os.path.join(d, f)
        name = os.path.relpath(path, root)[:-4].replace(os.sep, '.')
        try:
            (st, en, step), values = whisper.fetch(path, start, now)
        except Exception:
            continue  # caught while carbon creates it: read again next time
        for i, v in enumerate(values):
            if v is not None:
                print(name, st + i * step, repr(v))
"#;

/// What one carbon-cache holds: `(metric, ts) -> value` for the test's points, and
/// the sum of its `metricsReceived` reports.
pub struct Stored {
    pub points: HashMap<(String, i64), f64>,
    pub received: u64,
}

/// One carbon-cache process in a namespace; SIGKILLed on drop.
pub struct Carbon {
    pub instance: String,
    pub line_port: u16,
    conf: PathBuf,
    storage: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    // Last, so the files outlive the process writing them.
    dir: tempfile::TempDir,
}

impl Carbon {
    /// Configures and starts instance `instance` in `ns` (ports chosen there).
    pub fn start(ns: &Netns, instance: &str) -> Carbon {
        let dir = tempfile::Builder::new()
            .prefix("topo-carbon-")
            .tempdir()
            .unwrap();
        let (conf, storage) = (dir.path().join("conf"), dir.path().join("storage"));
        fs::create_dir_all(storage.join("whisper")).unwrap();
        fs::create_dir_all(storage.join("log")).unwrap();
        fs::create_dir_all(&conf).unwrap();
        let ports: Vec<u16> = ns.exec(|| (0..3).map(|_| free_port()).collect());
        let text = format!(
            "[cache]\nSTORAGE_DIR = {s}\nLOCAL_DATA_DIR = {s}/whisper\nLOG_DIR = {s}/log\n\
             PID_DIR = {s}\nUSER =\nLINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = {}\n\
             PICKLE_RECEIVER_INTERFACE = 127.0.0.1\nPICKLE_RECEIVER_PORT = {}\n\
             CACHE_QUERY_INTERFACE = 127.0.0.1\nCACHE_QUERY_PORT = {}\nENABLE_UDP_LISTENER = False\n\
             ENABLE_TAGS = False\nMAX_CACHE_SIZE = inf\nMAX_CREATES_PER_MINUTE = inf\n\
             MAX_UPDATES_PER_SECOND = inf\nWHISPER_FALLOCATE_CREATE = False\n\
             LOG_LISTENER_CONN_SUCCESS = False\nCARBON_METRIC_INTERVAL = 2\n",
            ports[0],
            ports[1],
            ports[2],
            s = storage.display()
        );
        fs::write(conf.join("carbon.conf"), text).unwrap();
        fs::write(
            conf.join("storage-schemas.conf"),
            "[carbon]\npattern = ^carbon\\.\nretentions = 1s:1h\n[default]\npattern = .*\nretentions = 1s:1h,60s:1d\n",
        )
        .unwrap();
        let log = dir.path().join("carbon.log");
        let mut c = Carbon {
            instance: instance.to_string(),
            line_port: ports[0],
            conf,
            storage,
            log,
            child: None,
            dir,
        };
        c.spawn(ns);
        c
    }

    /// `127.0.0.1:<line port>:<instance>`, as the gateways' `-destinations` name it.
    pub fn destination(&self) -> String {
        format!("127.0.0.1:{}:{}", self.line_port, self.instance)
    }

    fn spawn(&mut self, ns: &Netns) {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("carbon.out"))
            .unwrap();
        let mut cmd = Command::new("carbon-cache");
        cmd.arg(format!(
            "--config={}",
            self.conf.join("carbon.conf").display()
        ))
        .arg("--nodaemon")
        .arg(format!("--logfile={}", self.log.display()))
        .arg(format!(
            "--pidfile={}",
            self.dir.path().join("carbon.pid").display()
        ))
        .arg("start")
        .env("GRAPHITE_ROOT", self.dir.path())
        .env("GRAPHITE_CONF_DIR", &self.conf)
        .env("GRAPHITE_STORAGE_DIR", &self.storage)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        let port = self.line_port;
        let child = ns.exec(move || {
            let child = cmd.spawn().expect("spawn carbon-cache (graphite-carbon)");
            assert!(
                wait_port(port, Duration::from_secs(30)),
                "carbon-cache port {port} not accepting"
            );
            child
        });
        self.child = Some(child);
    }

    /// Graceful restart: SIGTERM (carbon writes its cache to whisper on the way
    /// out), wait for the exit, start again on the same ports and storage.
    pub fn restart(&mut self, ns: &Netns) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn(ns);
    }

    /// Everything stored with a timestamp >= `from`: the test's points (names not
    /// starting with `carbon.`) and the sum of `carbon.agents.*.metricsReceived`.
    pub fn stored(&self, from: i64) -> Stored {
        let out = Command::new("/usr/bin/python3")
            .args(["-c", DUMP_PY])
            .arg(self.storage.join("whisper"))
            .arg(from.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run /usr/bin/python3 (python3-whisper)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut stored = Stored {
            points: HashMap::new(),
            received: 0,
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut f = line.split(' ');
            let (Some(name), Some(ts), Some(v)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let (Ok(ts), Ok(v)) = (ts.parse::<i64>(), v.parse::<f64>()) else {
                continue;
            };
            if name.starts_with("carbon.agents.") && name.ends_with(".metricsReceived") {
                stored.received += v as u64;
            } else if !name.starts_with("carbon.") {
                stored.points.insert((name.to_string(), ts), v);
            }
        }
        stored
    }

    /// The last lines of carbon's logs, for a failure message.
    pub fn log_tail(&self) -> String {
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        let text = read(&self.log) + &read(&self.dir.path().join("carbon.out"));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Carbon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
