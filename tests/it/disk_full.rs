//! A full disk under the spool: the real polymur-gateway with `-spool-dir` on a small tmpfs
//! mounted by the test, the destination down, 5000-line batches posted until the disk fills.
//! Once spool writes fail the answers are `503` + `Retry-After`; every line answered `200`
//! arrives once the destination comes up; and the same process accepts again after the spool
//! drained (no restart).
//!
//! Mounting needs root (CI runs as root); elsewhere the tests print why and pass.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use crate::support::*;

const KEY: (&str, &str) = ("X-Polymur-Key", "123");
/// Lines per posted batch, as the proxy sends them.
const BATCH: usize = 5000;
/// Upper bound on batches posted while filling the disk (16 MiB / ~150 KB per batch ≈ 110).
const MAX_BATCHES: usize = 400;

/// A tmpfs mounted on a fresh temporary directory, unmounted when dropped (also on panic).
pub(crate) struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `16m`), or None (with a printed reason) when not possible.
    pub(crate) fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a process not yet reaped): detach it lazily.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    let ts = now_ts();
    (0..n).map(|i| format!("{prefix}.m{i} {i} {ts}")).collect()
}

fn batch(lines: &[String]) -> Vec<u8> {
    let mut s = lines.join("\n");
    s.push('\n');
    gzip(s.as_bytes())
}

/// Posts 5000-line batches until `stop_after` consecutive refusals (or MAX_BATCHES).
/// Returns the acknowledged lines and the number of refused batches; asserts every
/// answer is 200 or 503 with `Retry-After`.
fn fill(gw: &Gateway, tag: &str, stop_after: usize) -> (Vec<String>, usize) {
    let (mut acked, mut refused, mut in_a_row) = (Vec::new(), 0, 0);
    for i in 0..MAX_BATCHES {
        let l = lines(&format!("{tag}.b{i}"), BATCH);
        let r = try_http_request("POST", &gw.http, "/ingest", &[KEY], &batch(&l))
            .expect("the gateway answers");
        match r.status {
            200 => {
                acked.extend(l);
                in_a_row = 0;
            }
            503 => {
                assert_eq!(r.header("Retry-After"), Some("1"), "{}", r.body);
                refused += 1;
                in_a_row += 1;
                if in_a_row >= stop_after {
                    break;
                }
            }
            s => panic!("unexpected status {s}: {}", r.body),
        }
    }
    (acked, refused)
}

fn missing(sent: &[String], sink: &LineSink) -> usize {
    let got: HashSet<String> = sink.lines().into_iter().collect();
    sent.iter().filter(|l| !got.contains(*l)).count()
}

fn disk_full_refuses_then_delivers_and_accepts_again(durable: bool) {
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let spool_dir = fs.path().to_str().unwrap().to_string();
    let mut args = vec![
        "-dev-mode",
        "-destinations",
        &dest,
        "-spool-dir",
        &spool_dir,
        "-outgoing-queue-cap",
        "5000",
    ];
    if durable {
        args.push("-durable");
    }
    let gw = Gateway::start(&args);
    let tag = if durable { "dfd" } else { "df" };
    let (acked, refused) = fill(&gw, tag, 5);
    println!(
        "disk full (16 MiB tmpfs, durable={durable}): {} lines acknowledged in {} batches, {refused} batches refused",
        acked.len(),
        acked.len() / BATCH
    );
    assert!(
        refused >= 5,
        "a full disk refuses batches (503), it does not acknowledge them: {refused} refused, {} acked\n{}",
        acked.len(),
        gw.proc.all_output()
    );
    assert!(
        acked.len() >= 20 * BATCH,
        "the disk held some batches first"
    );

    let sink = LineSink::start_on(port);
    let delivered_all = wait_until(secs(90), || missing(&acked, &sink) == 0);
    let lost = missing(&acked, &sink);
    println!(
        "disk full (durable={durable}): {} of {} acknowledged lines delivered after the destination came up",
        acked.len() - lost,
        acked.len()
    );
    assert!(
        delivered_all,
        "{lost} acknowledged lines lost\n{}",
        gw.proc.all_output()
    );

    // The spool drained: the same process accepts and delivers again, without a restart.
    let again = lines(&format!("{tag}.again"), BATCH);
    let accepted = wait_until(secs(30), || {
        try_http_request("POST", &gw.http, "/ingest", &[KEY], &batch(&again))
            .is_ok_and(|r| r.status == 200)
    });
    assert!(
        accepted,
        "the gateway accepts again once the spool drained\n{}",
        gw.proc.all_output()
    );
    assert!(
        wait_until(secs(30), || missing(&again, &sink) == 0),
        "lines accepted after the drain arrive"
    );
    // And it can fill and drain a second time: nothing stayed wedged.
    let (acked2, _) = fill(&gw, &format!("{tag}.second"), 1);
    assert!(wait_until(secs(60), || missing(&acked2, &sink) == 0));
    gw.proc.term();
    assert!(gw.proc.wait_exit(secs(20)).is_some());
    let summary = gw.proc.all_output();
    assert!(
        summary.contains("Stopped:") && summary.contains(" 0 undelivered"),
        "everything was delivered: {summary}"
    );
}

#[test]
fn disk_full_refuses_with_503_delivers_every_acknowledged_line_and_accepts_again() {
    disk_full_refuses_then_delivers_and_accepts_again(false);
}

#[test]
fn disk_full_with_durable_refuses_with_503_delivers_every_acknowledged_line_and_accepts_again() {
    disk_full_refuses_then_delivers_and_accepts_again(true);
}

/// `N` of the shutdown line `Stopped: M points received, N undelivered`.
fn undelivered(p: &Proc) -> Option<u64> {
    let out = p.all_output();
    let line = out.lines().find(|l| l.contains("Stopped:"))?;
    let before = line.split(" undelivered").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

#[test]
fn sigterm_on_a_full_disk_reports_exactly_the_acknowledged_points_it_could_not_keep() {
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let spool_dir = fs.path().to_str().unwrap().to_string();
    let args = [
        "-dev-mode",
        "-destinations",
        &dest,
        "-spool-dir",
        &spool_dir,
        "-outgoing-queue-cap",
        "5000",
        "-drain-timeout",
        "1s",
    ];
    let gw = Gateway::start(&args);
    let (acked, _) = fill(&gw, "term", 3);
    gw.proc.term();
    assert!(gw.proc.wait_exit(secs(30)).is_some(), "exits after SIGTERM");
    let lost = undelivered(&gw.proc).expect("a shutdown summary");

    let sink = LineSink::start_on(port);
    let gw2 = Gateway::start(&args);
    sink.wait_idle(millis(1500), secs(90));
    let missing = missing(&acked, &sink) as u64;
    println!(
        "SIGTERM on a full disk: {} lines acknowledged, {} delivered after restart, summary said {lost} undelivered",
        acked.len(),
        acked.len() as u64 - missing
    );
    assert_eq!(
        missing,
        lost,
        "the summary counts exactly the acknowledged points that were neither delivered nor spooled\n{}",
        gw.proc.all_output()
    );
    drop(gw2);
}
