//! Subprocess control for the crate's binaries (`env!("CARGO_BIN_EXE_polymur-gateway")` etc.).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Captured output of both streams; one condvar wakes `wait_log` on any new line.
#[derive(Default)]
struct Output {
    stdout: Vec<String>,
    stderr: Vec<String>,
}

#[derive(Default)]
struct Captured {
    out: Mutex<Output>,
    changed: Condvar,
}

/// Environment variables that would change a binary's configuration behind the test's back
/// (flags can come from `POLYMUR_*` variables; Consul clients read `CONSUL_HTTP_*`).
fn is_config_env(name: &str) -> bool {
    name.starts_with("POLYMUR")
        || name.starts_with("CONSUL_")
        || name.starts_with("ETCD")
        || name == "RUST_LOG"
        || name == "RUST_BACKTRACE"
}

/// A running binary whose stdout and stderr are collected line by line on background threads.
/// Killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Mutex<Child>,
    pid: u32,
    captured: Arc<Captured>,
    readers: Mutex<Vec<JoinHandle<()>>>,
    status: Mutex<Option<ExitStatus>>,
}

/// How long to wait for the output pipes to drain after the process exited. They stay open
/// past that only if a grandchild inherited them; the lines read so far are kept.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Result of `Proc::run`.
#[derive(Debug)]
pub struct RunOutput {
    /// None when the process had to be killed at the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Removes ANSI colour sequences, so log assertions work even if colours were forced on.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c2 in chars.by_ref() {
                if ('@'..='~').contains(&c2) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn build_command(bin_path: &str, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin_path);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if is_config_env(&k.to_string_lossy()) {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

impl Proc {
    /// Starts `bin_path` with `args` and extra `envs`. Inherited `POLYMUR*`, `CONSUL_*`, `ETCD*`,
    /// `RUST_LOG` variables are removed; `RUST_LOG=info` and `NO_COLOR=1` are set unless `envs`
    /// overrides them. stdin is null.
    pub fn spawn(bin_path: &str, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        Self::spawn_cmd(build_command(bin_path, args, envs), bin_path, false).0
    }

    /// Like `spawn`, with a pipe to the child's stdin (returned; drop it to send EOF).
    pub fn spawn_with_stdin(
        bin_path: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> (Proc, std::process::ChildStdin) {
        let (p, stdin) = Self::spawn_cmd(build_command(bin_path, args, envs), bin_path, true);
        (p, stdin.expect("stdin pipe"))
    }

    fn spawn_cmd(
        mut cmd: Command,
        bin_path: &str,
        with_stdin: bool,
    ) -> (Proc, Option<std::process::ChildStdin>) {
        cmd.stdin(if with_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin_path}: {e}"));
        let captured = Arc::new(Captured::default());
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stdin = child.stdin.take();
        let readers = vec![
            spawn_reader(stdout, captured.clone(), false),
            spawn_reader(stderr, captured.clone(), true),
        ];
        let pid = child.id();
        (
            Proc {
                child: Mutex::new(child),
                pid,
                captured,
                readers: Mutex::new(readers),
                status: Mutex::new(None),
            },
            stdin,
        )
    }

    /// Runs a short-lived command (e.g. `pgw-key list names`) to completion, at most `timeout`
    /// (then it is killed and `status` is None). Same environment rules as `spawn`.
    pub fn run(
        bin_path: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        timeout: Duration,
    ) -> RunOutput {
        let p = Self::spawn(bin_path, args, envs);
        let status = p.wait_exit(timeout);
        if status.is_none() {
            p.kill9();
        }
        RunOutput {
            status,
            stdout: p.stdout_text(),
            stderr: p.stderr_text(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident memory now (`VmRSS`), in bytes.
    pub fn rss(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    /// Peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.status_bytes("VmHWM:")
    }

    /// A `kB` field of `/proc/PID/status`, in bytes.
    fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid));
        kib << 10
    }

    fn contains(out: &Output, needle: &str) -> bool {
        out.stderr.iter().any(|l| l.contains(needle))
            || out.stdout.iter().any(|l| l.contains(needle))
    }

    fn occurrences(out: &Output, needle: &str) -> usize {
        out.stderr
            .iter()
            .chain(out.stdout.iter())
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until a line of stderr or stdout contains `needle`; false on timeout.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_log_count(needle, 1, timeout)
    }

    /// Waits until at least `n` lines (stderr and stdout) contain `needle`; false on timeout.
    /// For periodic messages, e.g. the second `Running API key sync`.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut out = self.captured.out.lock().unwrap();
        loop {
            if Self::occurrences(&out, needle) >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Bounded slices, so a process that exits silently does not cost the full timeout
            // more than once per slice.
            let slice = (deadline - now).min(Duration::from_millis(200));
            out = self.captured.changed.wait_timeout(out, slice).unwrap().0;
        }
    }

    /// Number of lines (stderr and stdout) containing `needle` so far.
    pub fn log_count(&self, needle: &str) -> usize {
        Self::occurrences(&self.captured.out.lock().unwrap(), needle)
    }

    /// True if some line so far contains `needle`.
    pub fn has_log(&self, needle: &str) -> bool {
        Self::contains(&self.captured.out.lock().unwrap(), needle)
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.captured.out.lock().unwrap().stdout.clone()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.captured.out.lock().unwrap().stderr.clone()
    }

    pub fn stdout_text(&self) -> String {
        join_lines(&self.captured.out.lock().unwrap().stdout)
    }

    pub fn stderr_text(&self) -> String {
        join_lines(&self.captured.out.lock().unwrap().stderr)
    }

    /// Both streams, for assertion messages: `--- stdout ---` then `--- stderr ---`.
    pub fn all_output(&self) -> String {
        let out = self.captured.out.lock().unwrap();
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            join_lines(&out.stdout),
            join_lines(&out.stderr)
        )
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`, `KILL`, ...) via `kill -<sig> <pid>`.
    /// Ignored if the process was already reaped (the pid could have been reused).
    pub fn signal(&self, sig: &str) {
        if self.try_status().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// `signal("TERM")`: the graceful shutdown path.
    pub fn term(&self) {
        self.signal("TERM");
    }

    /// SIGKILL (crash simulation) and reap.
    pub fn kill9(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        if let Ok(st) = child.wait() {
            self.status.lock().unwrap().get_or_insert(st);
        }
        drop(child);
        self.join_readers();
    }

    /// The exit status if the process has exited (reaping it), without waiting.
    pub fn try_status(&self) -> Option<ExitStatus> {
        if let Some(st) = *self.status.lock().unwrap() {
            return Some(st);
        }
        let st = self.child.lock().unwrap().try_wait().ok().flatten()?;
        *self.status.lock().unwrap() = Some(st);
        Some(st)
    }

    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit. When it has, also waits (briefly) until
    /// its output pipes are drained, so `stdout_lines()` is complete afterwards.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                self.join_readers();
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (once, up to DRAIN_TIMEOUT) for the reader threads to reach EOF.
    fn join_readers(&self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut readers = self.readers.lock().unwrap();
        while readers.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Finished ones are joined; unfinished ones are detached so later calls do not wait again.
        for h in readers.drain(..) {
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // When a test fails, show what the process said (cargo shows it for failed tests only).
        if std::thread::panicking() {
            if let Ok(out) = self.captured.out.lock() {
                let tail = |v: &Vec<String>| v[v.len().saturating_sub(60)..].join("\n");
                eprintln!(
                    "=== process {} output (last 60 lines each) ===\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.pid,
                    tail(&out.stdout),
                    tail(&out.stderr)
                );
            }
        }
    }
}

fn join_lines(lines: &[String]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    captured: Arc<Captured>,
    is_stderr: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    let line = strip_ansi(&String::from_utf8_lossy(&buf));
                    let mut out = captured.out.lock().unwrap();
                    if is_stderr {
                        out.stderr.push(line);
                    } else {
                        out.stdout.push(line);
                    }
                    drop(out);
                    captured.changed.notify_all();
                }
            }
        }
    })
}
