//! A real, throwaway Debian `carbon-cache` (graphite-carbon 1.1.7) to receive what the relay
//! sends, and readers for the whisper files it writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::net::{free_port, wait_port};

/// Debian's own interpreter: a pyenv `python3` earlier on PATH does not see the packaged
/// `whisper` module.
const PYTHON: &str = "/usr/bin/python3";

/// Prints the non-null points of one whisper file from a start time as `<ts> <repr(value)>`
/// lines; `repr` keeps the float exact through the round trip into Rust.
const FETCH_PY: &str = r#"
import sys, time, whisper
path, start = sys.argv[1], int(sys.argv[2])
now = int(time.time())
(st, en, step), values = whisper.fetch(path, start, now)
for i, v in enumerate(values):
    if v is not None:
        print(st + i * step, repr(v))
"#;

/// One carbon-cache process with its own config, storage and three loopback ports.
/// Killed and reaped on drop; the temp dir is removed after that.
pub struct CarbonCache {
    child: Option<Child>,
    line_port: u16,
    pickle_port: u16,
    query_port: u16,
    storage: PathBuf,
    log: PathBuf,
    // Declared last so the directory outlives the process that writes into it.
    dir: tempfile::TempDir,
}

impl CarbonCache {
    /// Writes the config, starts `carbon-cache --nodaemon` and waits (up to 30 s) until its
    /// line port accepts. Panics with the tail of carbon's log if it exits or never listens.
    pub fn start() -> CarbonCache {
        let dir = tempfile::Builder::new()
            .prefix("carbon-")
            .tempdir()
            .expect("tempdir for carbon-cache");
        let conf_dir = dir.path().join("conf");
        let storage = dir.path().join("storage");
        fs::create_dir_all(&conf_dir).unwrap();
        fs::create_dir_all(storage.join("whisper")).unwrap();
        fs::create_dir_all(storage.join("log")).unwrap();
        let (line_port, pickle_port, query_port) = (free_port(), free_port(), free_port());
        let conf = format!(
            "[cache]\n\
             STORAGE_DIR = {storage}\n\
             LOCAL_DATA_DIR = {storage}/whisper\n\
             LOG_DIR = {storage}/log\n\
             PID_DIR = {storage}\n\
             USER =\n\
             LINE_RECEIVER_INTERFACE = 127.0.0.1\n\
             LINE_RECEIVER_PORT = {line_port}\n\
             PICKLE_RECEIVER_INTERFACE = 127.0.0.1\n\
             PICKLE_RECEIVER_PORT = {pickle_port}\n\
             CACHE_QUERY_INTERFACE = 127.0.0.1\n\
             CACHE_QUERY_PORT = {query_port}\n\
             ENABLE_UDP_LISTENER = False\n\
             ENABLE_TAGS = False\n\
             MAX_CACHE_SIZE = inf\n\
             MAX_CREATES_PER_MINUTE = inf\n\
             MAX_UPDATES_PER_SECOND = inf\n\
             WHISPER_FALLOCATE_CREATE = False\n\
             LOG_LISTENER_CONN_SUCCESS = False\n",
            storage = storage.display()
        );
        fs::write(conf_dir.join("carbon.conf"), conf).unwrap();
        fs::write(
            conf_dir.join("storage-schemas.conf"),
            "[default]\npattern = .*\nretentions = 1s:1h,60s:1d\n",
        )
        .unwrap();
        let log = dir.path().join("carbon.log");
        let out = dir.path().join("carbon.out");
        let out_file = fs::File::create(&out).unwrap();
        let child = Command::new("carbon-cache")
            .arg(format!(
                "--config={}",
                conf_dir.join("carbon.conf").display()
            ))
            .arg("--nodaemon")
            .arg(format!("--logfile={}", log.display()))
            .arg(format!(
                "--pidfile={}",
                dir.path().join("carbon.pid").display()
            ))
            .arg("start")
            .env("GRAPHITE_ROOT", dir.path())
            .env("GRAPHITE_CONF_DIR", &conf_dir)
            .env("GRAPHITE_STORAGE_DIR", &storage)
            .stdin(Stdio::null())
            .stdout(out_file.try_clone().unwrap())
            .stderr(out_file)
            .spawn()
            .expect("spawn carbon-cache (Debian package graphite-carbon)");
        let mut cache = CarbonCache {
            child: Some(child),
            line_port,
            pickle_port,
            query_port,
            storage,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = cache.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "carbon-cache exited during start-up ({status})\n{}",
                    cache.log_tail()
                );
            }
            if wait_port(line_port, Duration::from_millis(100)) {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "carbon-cache line port {line_port} not accepting after 30 s\n{}",
                    cache.log_tail()
                );
            }
        }
        cache
    }

    /// The plaintext line receiver port.
    pub fn line_port(&self) -> u16 {
        self.line_port
    }

    /// `127.0.0.1:<line port>`, ready to use as a destination.
    pub fn line_addr(&self) -> String {
        format!("127.0.0.1:{}", self.line_port)
    }

    /// The pickle receiver port (unused by polymur, here for completeness).
    pub fn pickle_port(&self) -> u16 {
        self.pickle_port
    }

    /// The cache query (CARBONLINK) port.
    pub fn query_port(&self) -> u16 {
        self.query_port
    }

    /// Carbon's STORAGE_DIR; whisper files are under `<storage>/whisper`.
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// The whisper file of `metric` (`a.b.c` → `<storage>/whisper/a/b/c.wsp`).
    pub fn whisper_path(&self, metric: &str) -> PathBuf {
        let mut p = self.storage.join("whisper");
        for part in metric.split('.') {
            p.push(part);
        }
        p.set_extension("wsp");
        p
    }

    /// Carbon's own logs (twistd log file, console output and LOG_DIR files), last lines of each,
    /// for diagnosing a failed test.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        let mut files = vec![self.log.clone(), self.dir.path().join("carbon.out")];
        if let Ok(rd) = fs::read_dir(self.storage.join("log")) {
            for e in rd.flatten() {
                collect_files(&e.path(), &mut files);
            }
        }
        for f in files {
            if f.exists() {
                out.push_str(&format!(
                    "--- {} ---\n{}\n",
                    f.display(),
                    super::file_tail(&f, 40)
                ));
            }
        }
        out
    }

    /// Non-null points of `metric` with timestamp >= `from`, sorted by time. Empty when the
    /// whisper file does not exist yet. Reads the file with Debian's python3 `whisper` module.
    pub fn fetch(&self, metric: &str, from: i64) -> Vec<(i64, f64)> {
        let path = self.whisper_path(metric);
        if !path.exists() {
            return Vec::new();
        }
        let out = Command::new(PYTHON)
            .arg("-c")
            .arg(FETCH_PY)
            .arg(&path)
            .arg(from.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run /usr/bin/python3 (Debian package python3-whisper)");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            // A file caught while carbon is still creating it has a short header; retry later.
            if err.contains("CorruptWhisperFile") || err.contains("struct.error") {
                return Vec::new();
            }
            panic!("whisper fetch of {} failed: {err}", path.display());
        }
        let mut points: Vec<(i64, f64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (t, v) = l.split_once(' ')?;
                Some((t.parse().ok()?, parse_py_float(v)?))
            })
            .collect();
        points.sort_by_key(|p| p.0);
        points
    }

    /// Polls `fetch` (every 200 ms) until at least `expected` non-null points are stored or
    /// `timeout` passes; returns the last fetch either way so the test can assert on it.
    /// Needed because carbon's writer flushes its cache to disk asynchronously.
    pub fn wait_points(
        &self,
        metric: &str,
        from: i64,
        expected: usize,
        timeout: Duration,
    ) -> Vec<(i64, f64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let points = self.fetch(metric, from);
            if points.len() >= expected || Instant::now() >= deadline {
                return points;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every metric name that has a whisper file, sorted (`a/b/c.wsp` → `a.b.c`).
    pub fn metrics(&self) -> Vec<String> {
        let root = self.storage.join("whisper");
        let mut files = Vec::new();
        collect_files(&root, &mut files);
        let mut names: Vec<String> = files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "wsp"))
            .filter_map(|p| {
                let rel = p.strip_prefix(&root).ok()?.with_extension("");
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                Some(parts.join("."))
            })
            .collect();
        names.sort();
        names
    }

    /// Polls `metrics()` until at least `n` metrics exist or `timeout` passes; returns the last list.
    pub fn wait_metrics(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics();
            if m.len() >= n || Instant::now() >= deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills carbon-cache now (SIGKILL) and reaps it; the line port then refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for CarbonCache {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse_py_float(s: &str) -> Option<f64> {
    match s.trim() {
        "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

/// Recursively lists regular files under `dir` (bounded by the tree itself; no symlink following).
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if meta.is_file() {
        out.push(dir.to_path_buf());
        return;
    }
    if !meta.is_dir() {
        return;
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            collect_files(&e.path(), out);
        }
    }
}
