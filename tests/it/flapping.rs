//! Destinations that drop connections, against the real polymur-gateway binary with in-test
//! line sinks (loopback only, every loop bounded in count and time):
//! - a destination killed every 1-3 s under load loses nothing that was acknowledged, and what
//!   it receives twice (at-least-once re-sends) stays a small share of the acknowledged points;
//! - a destination that drops the connection on one record (as carbon-cache does on a line it
//!   cannot take) does not wedge: that record goes to a dead-letter file and sending goes on.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::support::*;

const KEY: (&str, &str) = ("X-Polymur-Key", "123");

fn batch(lines: &[String]) -> Vec<u8> {
    let mut s = lines.join("\n");
    s.push('\n');
    gzip(s.as_bytes())
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    let ts = now_ts();
    (0..n).map(|i| format!("{prefix}.m{i} {i} {ts}")).collect()
}

/// Posts until `200` (a `503` is retried as polymur-proxy does); false when it never was.
fn post_until_held(http: &str, l: &[String], give_up: Instant) -> bool {
    let body = batch(l);
    while Instant::now() < give_up {
        match try_http_request("POST", http, "/ingest", &[KEY], &body).map(|r| r.status) {
            Ok(200) => return true,
            Ok(503) | Err(_) => std::thread::sleep(millis(20)),
            Ok(s) => panic!("unexpected status {s}"),
        }
    }
    false
}

/// What a flapping run measured.
struct Flapped {
    acked: usize,
    lost: usize,
    duplicates: usize,
    /// Deliveries the acknowledged points call for (acked x copies per point).
    expected: usize,
}

/// Posts 5000-line batches for about `load` while one sink after the other is killed (its
/// connections, kernel queue and read buffer dropped) every 1-3 s and brought back on the
/// same port. The sinks read 64 KiB at a time, as carbon-cache does.
fn flap(distribution: &str, sinks: usize, load: std::time::Duration) -> Flapped {
    let sinks: Vec<LineSink> = (0..sinks).map(|_| LineSink::start_like_carbon()).collect();
    let dests: Vec<String> = sinks.iter().map(|s| s.addr()).collect();
    let gw = Gateway::start(&[
        "-dev-mode",
        "-distribution",
        distribution,
        "-destinations",
        &dests.join(","),
    ]);
    let done = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let client = {
        let (done, acked, http) = (done.clone(), acked.clone(), gw.http.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            for i in 0..400 {
                if start.elapsed() >= load {
                    break;
                }
                let l = lines(&format!("flap.{i}"), 5000);
                if post_until_held(&http, &l, Instant::now() + secs(10)) {
                    acked.lock().unwrap().extend(l);
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let killer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut sinks = sinks;
            // Pauses of 1.0-2.9 s in a fixed order, so that runs are comparable.
            let pauses = [1000u64, 2300, 1600, 2900, 1200, 2000, 1400, 2600];
            let mut k = 0;
            while !done.load(Ordering::SeqCst) && k < 64 {
                let until = Instant::now() + millis(pauses[k % pauses.len()]);
                while Instant::now() < until && !done.load(Ordering::SeqCst) {
                    std::thread::sleep(millis(20));
                }
                let n = sinks.len();
                let s = &mut sinks[k % n];
                s.stop(); // kills the connection and whatever sat in its buffers
                std::thread::sleep(millis(150));
                s.restart();
                k += 1;
            }
            (sinks, k)
        })
    };
    client.join().unwrap();
    let (sinks, kills) = killer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(kills >= 3, "only {kills} kills during the load");
    let copies = if distribution == "broadcast" {
        sinks.len()
    } else {
        1
    };
    // Wait until every acknowledged point arrived (each sink for broadcast, one for hash-route).
    let got =
        |sinks: &[LineSink]| -> Vec<Vec<String>> { sinks.iter().map(|s| s.lines()).collect() };
    let lost_of = |received: &[Vec<String>]| -> usize {
        if copies > 1 {
            received
                .iter()
                .map(|r| {
                    let set: HashSet<&String> = r.iter().collect();
                    acked.iter().filter(|l| !set.contains(l)).count()
                })
                .sum()
        } else {
            let set: HashSet<&String> = received.iter().flatten().collect();
            acked.iter().filter(|l| !set.contains(l)).count()
        }
    };
    wait_until(secs(30), || lost_of(&got(&sinks)) == 0);
    for s in &sinks {
        s.wait_idle(millis(500), secs(10));
    }
    let received = got(&sinks);
    if lost_of(&received) > 0 {
        // What an investigation needs: which lines, and what the writer logged.
        for (i, r) in received.iter().enumerate() {
            let set: HashSet<&String> = r.iter().collect();
            let gone: Vec<&String> = acked.iter().filter(|l| !set.contains(l)).collect();
            println!(
                "sink {i}: {} lost, first {:?} last {:?}",
                gone.len(),
                gone.first(),
                gone.last()
            );
        }
        for l in gw.proc.stderr_lines() {
            if l.contains("Destination") {
                println!("{l}");
            }
        }
    }
    let duplicates: usize = received
        .iter()
        .map(|r| r.len() - r.iter().collect::<HashSet<_>>().len())
        .sum();
    Flapped {
        acked: acked.len(),
        lost: lost_of(&received),
        duplicates,
        expected: acked.len() * copies,
    }
}

fn check(name: &str, f: &Flapped) {
    let ratio = f.duplicates as f64 / f.expected.max(1) as f64;
    println!(
        "flapping {name}: {} points acknowledged, {} lost, {} duplicates = {:.2} % of {} deliveries",
        f.acked,
        f.lost,
        f.duplicates,
        ratio * 100.0,
        f.expected
    );
    assert!(f.acked >= 100_000, "too little load: {} points", f.acked);
    assert_eq!(f.lost, 0, "{name}: acknowledged points lost");
    assert!(
        ratio <= 0.05,
        "{name}: duplicates are {:.2} % of the acknowledged points (at most 5 %)",
        ratio * 100.0
    );
}

#[test]
fn broadcast_to_two_flapping_destinations_loses_nothing_and_duplicates_little() {
    let f = flap("broadcast", 2, secs(12));
    check("broadcast to 2", &f);
}

#[test]
fn hash_route_to_three_flapping_destinations_loses_nothing_and_duplicates_little() {
    let f = flap("hash-route", 3, secs(12));
    check("hash-route to 3", &f);
}

/// Dead-letter files of the destination `dest` under the spool root.
fn dead_letters(spool: &Path, dest: &str) -> Vec<PathBuf> {
    let dir = spool.join(dest.replace(':', "_")).join("dead-letter");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Batches around one poison line: what came before and after must all arrive. Returns
/// (before, after, the poisoned batch, the poison line).
fn around_poison(http: &str, tag: &str) -> (Vec<String>, Vec<String>, Vec<String>, String) {
    let ts = now_ts();
    let poison = format!("{tag}.poison.marker 1 {ts}");
    let mut before = Vec::new();
    for i in 0..5 {
        let l = lines(&format!("{tag}.before{i}"), 2000);
        assert!(post_until_held(http, &l, Instant::now() + secs(10)));
        before.extend(l);
    }
    let mut bad = lines(&format!("{tag}.with"), 50);
    bad.insert(25, poison.clone());
    assert!(post_until_held(http, &bad, Instant::now() + secs(10)));
    let mut after = Vec::new();
    for i in 0..5 {
        let l = lines(&format!("{tag}.after{i}"), 2000);
        assert!(post_until_held(http, &l, Instant::now() + secs(10)));
        after.extend(l);
    }
    (before, after, bad, poison)
}

#[test]
fn a_record_the_destination_keeps_dropping_goes_to_dead_letter_and_sending_goes_on() {
    let sink = LineSink::start_closing_on("poison.marker");
    let spool = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&[
        "-dev-mode",
        "-destinations",
        &sink.addr(),
        "-spool-dir",
        spool.path().to_str().unwrap(),
    ]);
    let (before, after, bad, poison) = around_poison(&gw.http, "dl");
    let all: Vec<String> = before.iter().chain(after.iter()).cloned().collect();
    let arrived = wait_until(secs(30), || {
        let got: HashSet<String> = sink.lines().into_iter().collect();
        all.iter().all(|l| got.contains(l))
    });
    let got: HashSet<String> = sink.lines().into_iter().collect();
    let missing = all.iter().filter(|l| !got.contains(*l)).count();
    assert!(
        arrived,
        "{missing} lines around the poison never arrived ({} connections dropped on it): {}",
        sink.poisoned(),
        gw.proc.all_output()
    );
    // The record is kept on disk for the operator, the log names it, the metric counts it.
    let files = dead_letters(spool.path(), &sink.addr());
    let kept: String = files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        kept.lines().any(|l| l == poison),
        "dead-letter files {files:?} hold the poison line"
    );
    assert!(gw.proc.has_log("dead-letter"), "{}", gw.proc.all_output());
    let metrics = http_get(&gw.admin, "/metrics", &[]).expect("GET /metrics");
    let counted = metrics
        .body
        .lines()
        .find(|l| l.starts_with("polymur_dropped_points_total") && l.contains("dead_letter"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        counted >= 1,
        "dead-lettered points are counted: {}",
        metrics.body
    );
    // Every acknowledged line of the poisoned batch is either delivered or in the file,
    // and nothing of the other batches was set aside.
    let kept: HashSet<&str> = kept.lines().collect();
    let innocent = all.iter().filter(|l| kept.contains(l.as_str())).count();
    assert_eq!(innocent, 0, "lines of other batches set aside");
    for l in bad.iter().filter(|l| **l != poison) {
        assert!(got.contains(l) || kept.contains(l.as_str()), "{l} lost");
    }
    // The reconnect loop is bounded and its log lines are rate-limited.
    assert!(
        sink.poisoned() <= 20,
        "{} connections dropped on the poison",
        sink.poisoned()
    );
    let errors = gw.proc.log_count("Destination error");
    assert!(errors <= 20, "{errors} destination error lines");
}

#[test]
fn without_a_spool_the_dropped_record_is_logged_and_counted() {
    let sink = LineSink::start_closing_on("poison.marker");
    let gw = Gateway::start(&["-dev-mode", "-destinations", &sink.addr()]);
    let (before, after, _bad, _poison) = around_poison(&gw.http, "nodl");
    let all: Vec<String> = before.iter().chain(after.iter()).cloned().collect();
    let arrived = wait_until(secs(30), || {
        let got: HashSet<String> = sink.lines().into_iter().collect();
        all.iter().all(|l| got.contains(l))
    });
    assert!(
        arrived,
        "lines around the poison never arrived: {}",
        gw.proc.all_output()
    );
    assert!(gw.proc.has_log("dead-letter"), "{}", gw.proc.all_output());
    let metrics = http_get(&gw.admin, "/metrics", &[]).expect("GET /metrics");
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l.contains("reason=\"dead_letter\"") && !l.ends_with(" 0")),
        "{}",
        metrics.body
    );
}

#[test]
fn carbon_cache_dropping_the_connection_on_a_long_line_does_not_stop_later_points() {
    // graphite-carbon 1.1.7 closes the connection on a line over 16 384 bytes; the
    // gateway must not re-send it forever.
    let carbon = CarbonCache::start();
    let spool = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&[
        "-dev-mode",
        "-destinations",
        &carbon.line_addr(),
        "-spool-dir",
        spool.path().to_str().unwrap(),
    ]);
    let base = now_ts() - 60;
    let long = format!("long.{} 1 {base}", "x".repeat(20_000));
    let poisoned = format!("with.a 1 {base}\n{long}\nwith.b 2 {base}\n");
    assert_eq!(gw.ingest("123", &poisoned).status, 200);
    let mut later = Vec::new();
    for b in 0..3 {
        let body: String = (0..5)
            .map(|i| format!("later.s{b} {} {}\n", i + 1, base + i))
            .collect();
        assert_eq!(gw.ingest("123", &body).status, 200);
        later.push(format!("later.s{b}"));
    }
    for name in &later {
        let points = carbon.wait_points(name, base - 1, 5, secs(30));
        assert_eq!(
            points.len(),
            5,
            "{name}: carbon log:\n{}\ngateway:\n{}",
            carbon.log_tail(),
            gw.proc.all_output()
        );
    }
    // The poisoned batch's other lines are stored, or kept in its dead-letter file.
    let kept: String = dead_letters(spool.path(), &carbon.line_addr())
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for name in ["with.a", "with.b"] {
        let stored = !carbon.fetch(name, base - 1).is_empty();
        assert!(
            stored || kept.contains(&format!("{name} ")),
            "{name} neither stored nor kept"
        );
    }
}

#[test]
fn a_destination_that_closes_every_connection_gets_nothing_set_aside() {
    // A load balancer without a backend accepts and closes at once: that is no record's
    // fault, so nothing may go to dead-letter; everything waits for a real receiver.
    let port = free_port();
    let closer = std::thread::spawn(move || {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (until, mut closed) = (Instant::now() + secs(4), 0);
        while Instant::now() < until {
            match listener.accept() {
                Ok((conn, _)) => {
                    drop(conn);
                    closed += 1;
                }
                Err(_) => std::thread::sleep(millis(5)),
            }
        }
        closed
    });
    let spool = tempfile::tempdir().unwrap();
    let dest = format!("127.0.0.1:{port}");
    let gw = Gateway::start(&[
        "-dev-mode",
        "-destinations",
        &dest,
        "-spool-dir",
        spool.path().to_str().unwrap(),
    ]);
    let mut sent = Vec::new();
    for b in 0..3 {
        let l = lines(&format!("closer{b}"), 1000);
        assert!(post_until_held(&gw.http, &l, Instant::now() + secs(10)));
        sent.extend(l);
    }
    let closed = closer.join().unwrap();
    assert!(closed >= 3, "the closer saw only {closed} connections");
    let sink = LineSink::start_on(port);
    let arrived = wait_until(secs(30), || {
        let got: HashSet<String> = sink.lines().into_iter().collect();
        sent.iter().all(|l| got.contains(l))
    });
    assert!(arrived, "lines lost: {}", gw.proc.all_output());
    assert_eq!(
        dead_letters(spool.path(), &dest),
        Vec::<PathBuf>::new(),
        "nothing set aside"
    );
    assert!(
        !gw.proc.has_log("dead-letter file"),
        "{}",
        gw.proc.all_output()
    );
    assert!(
        gw.proc.has_log("one at a time"),
        "the breaks did look like a refused record: {}",
        gw.proc.all_output()
    );
}
