//! Linux network namespaces owned by one test run: created with `ip netns`, entered
//! per thread with `setns(2)`, deleted on drop.
//!
//! Entering a namespace per thread (instead of `ip netns exec` per command) lets the
//! test run anything there — bind a port, connect, spawn a binary or a carbon-cache
//! with the existing harness — because a process or socket made by a thread lives in
//! that thread's network namespace. Names carry the test's pid, so a run never
//! touches another run's namespaces, and leftovers of a killed run are swept.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

/// Prefix of every namespace this test makes: `ptopo-<pid>-<role>`.
const PREFIX: &str = "ptopo-";

/// One namespace; `ip netns delete` on drop (drop every process in it first).
pub struct Netns {
    name: String,
}

/// Runs a command to completion; Err carries its stderr, for skip and panic messages.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip <args>`, panicking with the error: set-up steps after the namespaces exist
/// have no reason to fail.
pub fn ip(args: &[&str]) {
    run("ip", args).unwrap_or_else(|e| panic!("{e}"));
}

impl Netns {
    /// Creates `ptopo-<pid>-<role>` with its loopback up. Err (a reason to skip) when
    /// namespaces cannot be made here: not root, no `ip`, no CAP_SYS_ADMIN.
    pub fn create(role: &str) -> Result<Netns, String> {
        let name = format!("{PREFIX}{}-{role}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, for `ip -n` / `tc -n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `f` on a thread that has entered this namespace and returns its result.
    /// Sockets bound and processes spawned inside `f` belong to the namespace.
    pub fn exec<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns on a valid namespace fd; it changes only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "delete", &self.name]) {
            eprintln!("topology cleanup: {e}");
        }
    }
}

/// Deletes `ptopo-<pid>-*` namespaces whose test process is gone (a run killed with
/// SIGKILL cannot clean up after itself).
pub fn sweep_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "delete", name]);
            eprintln!("topology: removed stale namespace {name}");
        }
    }
}

/// Namespaces of this process still present (for the cleanup check).
pub fn ours() -> Vec<String> {
    let mine = format!("{PREFIX}{}-", std::process::id());
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&mine))
        .map(str::to_string)
        .collect()
}
