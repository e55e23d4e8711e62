//! polymur (the relay) as a real process: exact delivery from many concurrent client
//! connections, backpressure instead of loss when a destination is down, hash-route
//! to three real carbon-caches, flags from the environment and the runtime API.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;

use crate::support::*;

const RELAY: &str = env!("CARGO_BIN_EXE_polymur");

/// A running relay and its addresses.
struct Relay {
    proc: Proc,
    listen: String,
    api: String,
    admin: String,
}

fn relay_env(args: &[&str], envs: &[(&str, &str)]) -> Relay {
    let (listen, api, stat) = (free_port(), free_port(), free_port());
    let listen = format!("127.0.0.1:{listen}");
    let api = format!("127.0.0.1:{api}");
    let stat = format!("127.0.0.1:{stat}");
    let admin = format!("127.0.0.1:{}", free_port());
    let mut all = vec![
        "-listen-addr",
        &listen,
        "-api-addr",
        &api,
        "-stat-addr",
        &stat,
        "-admin-addr",
        &admin,
    ];
    all.extend_from_slice(args);
    let proc = Proc::spawn(RELAY, &all, envs);
    assert!(
        proc.wait_log("Admin HTTP started", secs(15)),
        "relay did not start: {}",
        proc.all_output()
    );
    Relay {
        proc,
        listen,
        api,
        admin,
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// 200 connections open at once, each writing 50 lines in small interleaved writes
/// that split lines across reads: every line arrives exactly once, whole.
#[test]
fn many_concurrent_connections_deliver_every_line_exactly_once() {
    const CONNS: usize = 200;
    const LINES: usize = 50;
    let sink = LineSink::start();
    let relay = relay_env(&["-destinations", &sink.addr()], &[]);
    let ts = now_ts();
    let mut expected = Vec::new();
    let mut payloads = Vec::new();
    for c in 0..CONNS {
        let mut p = String::new();
        for i in 0..LINES {
            let line = format!("conc.c{c}.m{i} {i} {ts}");
            p.push_str(&line);
            p.push('\n');
            expected.push(line);
        }
        payloads.push(p.into_bytes());
    }
    let mut conns: Vec<TcpStream> = (0..CONNS)
        .map(|_| {
            let s = TcpStream::connect(&relay.listen).expect("connect relay");
            s.set_write_timeout(Some(secs(30))).unwrap();
            s
        })
        .collect();
    // Round-robin writes of 37 bytes: lines are cut at arbitrary places.
    let mut offsets = vec![0usize; CONNS];
    loop {
        let mut progressed = false;
        for (c, conn) in conns.iter_mut().enumerate() {
            let p = &payloads[c];
            if offsets[c] < p.len() {
                let end = (offsets[c] + 37).min(p.len());
                conn.write_all(&p[offsets[c]..end]).unwrap();
                offsets[c] = end;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    for conn in &conns {
        conn.shutdown(std::net::Shutdown::Write).unwrap();
    }
    assert!(
        sink.wait_count(CONNS * LINES, secs(60)),
        "got {} of {} lines\n{}",
        sink.count(),
        CONNS * LINES,
        relay.proc.all_output()
    );
    assert_eq!(sink.wait_idle(millis(300), secs(5)), CONNS * LINES);
    assert_eq!(sorted(sink.lines()), sorted(expected));
    // The relay's own counters agree with what was sent and delivered.
    let metrics = http_get(&relay.admin, "/metrics", &[]).unwrap().body;
    let total = (CONNS * LINES).to_string();
    assert!(
        metrics.contains(&format!("polymur_received_points_total {total}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "polymur_forwarded_points_total{{destination=\"{}\"}} {total}\n",
            sink.addr()
        )),
        "{metrics}"
    );
}

/// A destination that is down with a tiny queue: the relay stops reading from its
/// client instead of dropping, and everything arrives once the destination is up.
#[test]
fn a_full_queue_slows_clients_down_and_loses_nothing() {
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let relay = relay_env(
        &[
            "-destinations",
            &dest,
            "-outgoing-queue-cap",
            "100",
            "-incoming-queue-cap",
            "1",
        ],
        &[],
    );
    let ts = now_ts();
    let expected: Vec<String> = (0..20_000).map(|i| format!("bp.m{i} {i} {ts}")).collect();
    let body = expected.join("\n") + "\n";
    let listen = relay.listen.clone();
    let sender = std::thread::spawn(move || send_lines(&listen, &body));
    std::thread::sleep(millis(1500));
    assert!(
        relay.proc.wait_log("queue is at capacity", secs(15)),
        "{}",
        relay.proc.all_output()
    );
    let sink = LineSink::start_on(port);
    assert!(
        sink.wait_count(expected.len(), secs(60)),
        "got {} of {}\n{}",
        sink.count(),
        expected.len(),
        relay.proc.all_output()
    );
    sender.join().unwrap().expect("client write completes");
    assert_eq!(sink.wait_idle(millis(300), secs(5)), expected.len());
    assert_eq!(sorted(sink.lines()), sorted(expected));
}

/// With `-spool-dir`, a relay whose destination is down keeps reading: what the
/// memory queue cannot hold goes to disk; a restart (SIGTERM, destination still
/// down) keeps it there; once the destination is up every line arrives, once.
#[test]
fn spool_holds_lines_across_a_restart_until_the_destination_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().to_str().unwrap().to_string();
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let args = [
        "-destinations",
        dest.as_str(),
        "-outgoing-queue-cap",
        "100",
        "-spool-dir",
        spool.as_str(),
        "-drain-timeout",
        "1s",
    ];
    let ts = now_ts();
    let expected: Vec<String> = (0..5_000).map(|i| format!("sp.m{i} {i} {ts}")).collect();
    let relay = relay_env(&args, &[]);
    send_lines(&relay.listen, &(expected.join("\n") + "\n")).unwrap();
    // Everything is held (memory + spool) long before the destination exists.
    assert!(wait_until(secs(10), || {
        http_get(&relay.admin, "/metrics", &[])
            .unwrap()
            .body
            .contains("polymur_received_points_total 5000\n")
    }));
    relay.proc.term();
    assert!(relay
        .proc
        .wait_exit(secs(15))
        .expect("relay exits")
        .success());
    let spooled: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".spool"))
        .map(|f| f.metadata().unwrap().len())
        .sum();
    assert!(spooled > 5_000 * 10, "lines are on disk: {spooled} bytes");

    let relay = relay_env(&args, &[]);
    let sink = LineSink::start_on(port);
    assert!(
        sink.wait_count(expected.len(), secs(30)),
        "got {} of {}\n{}",
        sink.count(),
        expected.len(),
        relay.proc.all_output()
    );
    assert_eq!(sink.wait_idle(millis(300), secs(5)), expected.len());
    assert_eq!(sorted(sink.lines()), sorted(expected));
}

/// hash-route to three carbon-caches: each metric is stored by exactly the cache that
/// the ring (the relay's own `-route-test`, pinned to graphite-carbon by the fixtures)
/// names, with the value sent.
#[test]
fn hash_route_stores_each_metric_on_its_ring_owner() {
    let caches = [
        CarbonCache::start(),
        CarbonCache::start(),
        CarbonCache::start(),
    ];
    let dests: Vec<String> = caches
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}:{}", c.line_addr(), ["a", "b", "c"][i]))
        .collect();
    let dest_list = dests.join(",");
    let metrics: Vec<String> = (0..30).map(|i| format!("hr.host{i}.load")).collect();

    let (dry, mut stdin) = Proc::spawn_with_stdin(
        RELAY,
        &[
            "-route-test",
            "-distribution",
            "hash-route",
            "-destinations",
            &dest_list,
        ],
        &[],
    );
    stdin
        .write_all((metrics.join("\n") + "\n").as_bytes())
        .unwrap();
    drop(stdin);
    assert!(dry.wait_exit(secs(15)).is_some_and(|s| s.success()));
    let owner: BTreeMap<String, usize> = dry
        .stdout_lines()
        .iter()
        .map(|l| {
            let (m, d) = l.split_once('\t').expect("metric<TAB>dest");
            (
                m.to_string(),
                dests.iter().position(|x| x == d).expect("known dest"),
            )
        })
        .collect();
    assert_eq!(owner.len(), metrics.len());
    let used: std::collections::BTreeSet<usize> = owner.values().copied().collect();
    assert_eq!(used.len(), 3, "30 metrics spread over all three caches");

    let relay = relay_env(
        &["-distribution", "hash-route", "-destinations", &dest_list],
        &[],
    );
    let ts = now_ts() - 30;
    let body: String = metrics
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{m} {}.5 {ts}\n", i))
        .collect();
    send_lines(&relay.listen, &body).unwrap();

    for (i, m) in metrics.iter().enumerate() {
        let o = owner[m];
        let points = caches[o].wait_points(m, ts - 1, 1, secs(30));
        assert_eq!(
            points,
            vec![(ts, i as f64 + 0.5)],
            "{m} on cache {o}\n{}",
            caches[o].log_tail()
        );
    }
    for (c, cache) in caches.iter().enumerate() {
        let mut want: Vec<String> = owner
            .iter()
            .filter(|(_, &o)| o == c)
            .map(|(m, _)| m.clone())
            .collect();
        want.sort();
        assert_eq!(cache.metrics(), want, "cache {c} holds exactly its metrics");
    }
}

/// Flags come from `POLYMUR_*` variables too; the runtime API manages destinations.
#[test]
fn env_flags_and_runtime_api() {
    let sink = LineSink::start();
    let relay = relay_env(&[], &[("POLYMUR_DESTINATIONS", &sink.addr())]);
    let got = tcp_request(&relay.api, "getdest").unwrap();
    let doc: serde_json::Value = serde_json::from_str(got.trim()).unwrap();
    assert_eq!(doc["active"], serde_json::json!([sink.addr()]));

    let other = LineSink::start();
    assert_eq!(
        tcp_request(&relay.api, &format!("putdest {}", other.addr())).unwrap(),
        format!("Registered destination: {}\n", other.addr())
    );
    let ts = now_ts();
    send_lines(&relay.listen, &format!("api.one 1 {ts}\n")).unwrap();
    assert!(sink.wait_count(1, secs(10)));
    assert!(
        other.wait_count(1, secs(10)),
        "broadcast reaches the added destination"
    );
    assert_eq!(other.lines(), vec![format!("api.one 1 {ts}")]);
}

/// `-metrics-flush 1`: the relay's own figures reach its destinations as Graphite lines.
#[test]
fn metrics_flush_sends_self_metrics_to_the_destinations() {
    let sink = LineSink::start();
    let relay = relay_env(&["-destinations", &sink.addr(), "-metrics-flush", "1"], &[]);
    let dest = sink.addr().replace('.', "_");
    let want = format!(".polymur.outgoing-queue.{dest}.limit 4096 ");
    assert!(
        wait_until(secs(10), || sink.lines().iter().any(|l| l.contains(&want))),
        "{:?}\n{}",
        sink.lines(),
        relay.proc.all_output()
    );
    let lines = sink.lines();
    assert!(
        lines.iter().any(|l| l.contains(".polymur.rate ")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(".polymur.incoming-queue.limit 3276800 ")),
        "{lines:?}"
    );
}

/// Points in the relay's memory queues (`polymur_destination_queue_points`, summed).
fn queued_points(admin: &str) -> u64 {
    http_get(admin, "/metrics", &[]).map_or(0, |r| {
        r.body
            .lines()
            .filter(|l| l.starts_with("polymur_destination_queue_points"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    })
}

/// A relay whose destination was down held what its clients sent in its memory queue;
/// once that queue has drained, the memory goes back to the system instead of keeping
/// the relay at its high-water mark (glibc keeps freed memory in its arenas).
#[test]
fn memory_goes_back_once_a_large_queue_has_drained() {
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let r = relay_env(
        &["-destinations", &dest, "-outgoing-queue-cap=2000000"],
        &[],
    );
    let n = 800_000;
    let text: String = (0..n)
        .map(|i| format!("drain.test.series{i:07}.with.a.long.enough.name {i} 1700000000\n"))
        .collect();
    send_lines(&r.listen, &text).unwrap();
    drop(text);
    assert!(
        wait_until(secs(60), || queued_points(&r.admin) >= n as u64),
        "queued {} of {n}: {}",
        queued_points(&r.admin),
        r.proc.all_output()
    );
    let full = r.proc.rss();
    assert!(
        full > 40 << 20,
        "a full queue of {n} points in {} MiB",
        full >> 20
    );
    let sink = LineSink::start_on(port);
    assert!(
        sink.wait_count(n, secs(60)),
        "{} of {n} arrived: {}",
        sink.count(),
        r.proc.all_output()
    );
    // Without the peer's window (Linux before 6.2) the 16 MiB resend window stays full.
    let window = if kernel_reports_peer_window() {
        0
    } else {
        16 << 20
    };
    assert!(
        wait_until(secs(10), || r.proc.rss() < full / 2 + window),
        "RSS {} MiB after draining, {} MiB with the queue full",
        r.proc.rss() >> 20,
        full >> 20
    );
    assert_eq!(queued_points(&r.admin), 0);
}

/// SIGTERM straight after a client wrote a burst: what the client wrote before the signal
/// (sitting in the relay's socket buffer) is still read, and every line reaches the
/// destination before the relay exits.
#[test]
fn sigterm_right_after_a_burst_still_delivers_what_the_client_wrote() {
    let sink = LineSink::start();
    let r = relay_env(
        &["-destinations", &sink.addr(), "-outgoing-queue-cap=1000000"],
        &[],
    );
    let ts = 1_700_000_000;
    let sent: Vec<String> = (0..1_000_000)
        .map(|i| format!("burst.m{i} {i} {ts}"))
        .collect();
    send_lines(&r.listen, &(sent.join("\n") + "\n")).unwrap();
    r.proc.term();
    assert!(
        r.proc.wait_exit(secs(60)).is_some_and(|s| s.success()),
        "{}",
        r.proc.all_output()
    );
    assert_eq!(
        sink.wait_idle(millis(500), secs(10)),
        sent.len(),
        "{}",
        r.proc.all_output()
    );
    assert_eq!(sorted(sink.lines()), sorted(sent));
}
