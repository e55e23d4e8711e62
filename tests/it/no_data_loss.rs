//! "No data lost": fault injection against the real polymur-gateway binary, with in-test
//! line sinks as destinations (loopback only, every wait bounded). Each test compares the
//! lines the gateway acknowledged (`200`) with the lines the destination received.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::support::*;

const KEY: (&str, &str) = ("X-Polymur-Key", "123");

/// Starts the gateway (dev mode) on fresh loopback ports.
fn gateway_env(args: &[&str], envs: &[(&str, &str)]) -> Gateway {
    let mut all = vec!["-dev-mode"];
    all.extend_from_slice(args);
    Gateway::start_env(&all, envs)
}

fn gateway(args: &[&str]) -> Gateway {
    gateway_env(args, &[])
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

/// Posts a batch; the HTTP status, or None when the request failed (gateway gone).
fn post(gw_http: &str, l: &[String]) -> Option<u16> {
    try_http_request("POST", gw_http, "/ingest", &[KEY], &batch(l))
        .ok()
        .map(|r| r.status)
}

/// Sent lines missing from `received`, as a short message (empty when none).
fn missing(sent: &[String], received: &[String]) -> Vec<String> {
    let got: HashSet<&String> = received.iter().collect();
    sent.iter().filter(|l| !got.contains(l)).cloned().collect()
}

/// A client thread posting `batches` batches of `per` lines (`(batches, per)`) named
/// `<prefix><i>`, each refused one retried as polymur-proxy does: every 25 ms, at most
/// `tries` times. The returned list holds the lines acknowledged so far.
fn posting_client(
    http: &str,
    prefix: &str,
    (batches, per): (usize, usize),
    tries: u32,
) -> (Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let (acked, http, prefix) = (sent.clone(), http.to_string(), prefix.to_string());
    let client = std::thread::spawn(move || {
        for i in 0..batches {
            let l = lines(&format!("{prefix}{i}"), per);
            let mut left = tries;
            loop {
                match post(&http, &l) {
                    Some(200) => break,
                    Some(503) if left > 0 => {
                        left -= 1;
                        std::thread::sleep(millis(25));
                    }
                    other => panic!("batch {i}: {other:?}"),
                }
            }
            acked.lock().unwrap().extend(l);
        }
    });
    (sent, client)
}

/// Waits until every line of `sent` was received (or `timeout`); returns what is missing.
fn wait_all(sink: &LineSink, sent: &[String], timeout: std::time::Duration) -> Vec<String> {
    let mut left = Vec::new();
    wait_until(timeout, || {
        left = missing(sent, &sink.lines());
        left.is_empty()
    });
    left
}

/// The spool directory of the destination on `port`.
fn dest_spool(spool: &Path, port: u16) -> PathBuf {
    spool.join(format!("127.0.0.1_{port}"))
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "spool"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Sum of `N` in log lines `... re-sending N points ...`.
fn resent_in_log(p: &Proc) -> u64 {
    let mut total = 0;
    for l in p.stderr_lines().iter().chain(p.stdout_lines().iter()) {
        if let Some(rest) = l.split("re-sending ").nth(1) {
            total += rest
                .split(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

#[test]
fn destination_down_at_start_spools_then_delivers_every_line_in_order() {
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_str().unwrap();
    let gw = gateway(&[
        "-destinations",
        &dest,
        "-outgoing-queue-cap",
        "1000",
        "-spool-dir",
        spool_dir,
    ]);
    let mut sent = Vec::new();
    for i in 0..40 {
        let l = lines(&format!("down{i}"), 250);
        assert_eq!(post(&gw.http, &l), Some(200), "batch {i} must be held");
        sent.extend(l);
    }
    // 1000 points fit the memory queue; the other 9000 are on disk.
    let on_disk: u64 = segments(&dest_spool(spool.path(), port))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        on_disk > 9000 * 20,
        "spool holds the overflow: {on_disk} bytes"
    );

    let sink = LineSink::start_on(port);
    assert!(
        wait_all(&sink, &sent, secs(30)).is_empty(),
        "got {} of {}",
        sink.count(),
        sent.len()
    );
    assert_eq!(
        sink.wait_idle(millis(300), secs(5)),
        sent.len(),
        "no duplicates"
    );
    assert_eq!(
        sink.lines(),
        sent,
        "memory queue first, then the spool, in order"
    );

    // The spool drained: new batches flow again, still in order.
    let mut more = Vec::new();
    for i in 0..5 {
        let l = lines(&format!("after{i}"), 100);
        assert_eq!(post(&gw.http, &l), Some(200));
        more.extend(l);
    }
    assert!(sink.wait_count(sent.len() + more.len(), secs(10)));
    assert_eq!(sink.lines()[sent.len()..], more[..]);
}

#[test]
fn without_spool_a_full_queue_refuses_whole_batches_and_every_acknowledged_line_arrives() {
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let gw = gateway(&["-destinations", &dest, "-outgoing-queue-cap", "500"]);
    let (mut acked, mut refused_lines) = (Vec::new(), Vec::new());
    let mut refused = 0;
    for i in 0..10 {
        let l = lines(&format!("tiny{i}"), 200);
        let r = try_http_request("POST", &gw.http, "/ingest", &[KEY], &batch(&l)).unwrap();
        match r.status {
            200 => acked.extend(l),
            503 => {
                refused += 1;
                assert_eq!(r.header("Retry-After"), Some("1"));
                refused_lines.extend(l);
            }
            s => panic!("unexpected status {s}: {}", r.body),
        }
    }
    // Admit while fewer than 500 points are queued: 0, 200, 400 → three batches.
    assert_eq!((acked.len(), refused), (600, 7));
    let sink = LineSink::start_on(port);
    assert!(wait_all(&sink, &acked, secs(20)).is_empty());
    assert_eq!(sink.wait_idle(millis(300), secs(5)), acked.len());
    assert_eq!(
        sink.lines(),
        acked,
        "exactly the acknowledged lines, no part of a refused batch"
    );
    assert!(missing(&refused_lines, &sink.lines()).len() == refused_lines.len());
}

#[test]
fn sigterm_with_destination_down_then_restart_delivers_everything() {
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_str().unwrap();
    let args = [
        "-destinations",
        &dest,
        "-spool-dir",
        spool_dir,
        "-drain-timeout",
        "1s",
    ];
    let gw = gateway(&args);
    let mut sent = Vec::new();
    for i in 0..12 {
        // 12 × 500: the first 9 fit the default 4096-point queue, the rest spill.
        let l = lines(&format!("term{i}"), 500);
        assert_eq!(post(&gw.http, &l), Some(200));
        sent.extend(l);
    }
    gw.proc.term();
    let status = gw.proc.wait_exit(secs(20)).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}: {}", gw.proc.all_output());
    assert!(
        gw.proc.has_log("points moved to the spool"),
        "{}",
        gw.proc.all_output()
    );

    let sink = LineSink::start_on(port);
    let gw2 = gateway(&args);
    let left = wait_all(&sink, &sent, secs(30));
    assert!(
        left.is_empty(),
        "{} lines lost, e.g. {:?}",
        left.len(),
        left.first()
    );
    assert_eq!(
        sink.wait_idle(millis(300), secs(5)),
        sent.len(),
        "no duplicates"
    );
    let mut got = sink.lines();
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(got, want);
    drop(gw2);
}

#[test]
fn durable_kill9_mid_load_then_restart_delivers_every_acknowledged_line() {
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_str().unwrap().to_string();
    let args = ["-destinations", &dest, "-spool-dir", &spool_dir, "-durable"];
    let gw = gateway(&args);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let (acked, stop, http) = (acked.clone(), stop.clone(), gw.http.clone());
            std::thread::spawn(move || {
                for i in 0..10_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let l = lines(&format!("dur{c}.b{i}"), 200);
                    match post(&http, &l) {
                        Some(200) => acked.lock().unwrap().extend(l),
                        Some(_) => std::thread::sleep(millis(20)),
                        None => break, // the gateway is gone
                    }
                }
            })
        })
        .collect();
    assert!(
        wait_until(secs(20), || acked.lock().unwrap().len() >= 30 * 200),
        "load did not start"
    );
    gw.proc.kill9(); // mid-load: requests are in flight
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let sink = LineSink::start_on(port);
    let _gw2 = gateway(&args);
    let left = wait_all(&sink, &acked, secs(60));
    assert!(
        left.is_empty(),
        "{} of {} acknowledged lines lost, e.g. {:?}",
        left.len(),
        acked.len(),
        left.first()
    );
}

#[test]
fn destination_restarted_mid_stream_loses_nothing_and_duplicates_are_counted() {
    let mut sink = LineSink::start();
    let gw = gateway(&["-destinations", &sink.addr()]);
    let (sent, client) = posting_client(&gw.http, "mid", (120, 500), 600);
    assert!(sink.wait_count(15_000, secs(30)), "stream did not start");
    sink.stop(); // kills the connection and whatever was in its buffers
    std::thread::sleep(millis(300));
    sink.restart();
    client.join().unwrap();
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 60_000);
    let left = wait_all(&sink, &sent, secs(30));
    assert!(
        left.is_empty(),
        "{} lines lost, e.g. {:?}",
        left.len(),
        left.first()
    );
    let received = sink.wait_idle(millis(500), secs(10));
    let unique: HashSet<String> = sink.lines().into_iter().collect();
    assert_eq!(unique.len(), sent.len());
    let duplicates = (received - unique.len()) as u64;
    let resent = resent_in_log(&gw.proc);
    assert!(
        resent > 0,
        "the break is logged with a count: {}",
        gw.proc.all_output()
    );
    assert!(
        duplicates <= resent,
        "every duplicate is a counted re-send: {duplicates} duplicates, {resent} re-sent"
    );
}

#[test]
fn corrupt_spool_tail_replays_the_good_part_and_quarantines_the_rest() {
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_str().unwrap().to_string();
    let args = ["-destinations", &dest, "-spool-dir", &spool_dir, "-durable"];
    let gw = gateway(&args);
    let batches: Vec<Vec<String>> = (0..10).map(|i| lines(&format!("torn{i}"), 100)).collect();
    for b in &batches {
        assert_eq!(post(&gw.http, b), Some(200));
    }
    gw.proc.term();
    assert!(gw.proc.wait_exit(secs(20)).is_some_and(|s| s.success()));

    // A crash mid-write: the last record is cut short.
    let dir = dest_spool(spool.path(), port);
    let segs = segments(&dir);
    let last = segs.last().expect("a segment");
    let len = std::fs::metadata(last).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    f.set_len(len - 50).unwrap();
    drop(f);

    let sink = LineSink::start_on(port);
    let gw2 = gateway(&args);
    let good: Vec<String> = batches[..9].concat();
    assert!(wait_all(&sink, &good, secs(20)).is_empty());
    assert_eq!(sink.wait_idle(millis(500), secs(5)), good.len());
    assert_eq!(
        sink.lines(),
        good,
        "the records before the damage, in order"
    );
    assert!(
        gw2.proc.wait_log("quarantined", secs(5)),
        "the damage is reported: {}",
        gw2.proc.all_output()
    );
    assert!(gw2.proc.is_running(), "no crash");
    let quarantined: Vec<_> = std::fs::read_dir(dir.join("quarantine")).unwrap().collect();
    assert_eq!(quarantined.len(), 1);
    // The gateway keeps working, and a restart neither reports the damage again nor
    // replays what was delivered.
    let l = lines("torn.after", 10);
    assert_eq!(post(&gw2.http, &l), Some(200));
    assert!(sink.wait_count(good.len() + 10, secs(10)));
    gw2.proc.term();
    assert!(gw2.proc.wait_exit(secs(20)).is_some_and(|s| s.success()));
    let gw3 = gateway(&args);
    assert_eq!(sink.wait_idle(millis(1500), secs(5)), good.len() + 10);
    assert!(!gw3.proc.has_log("damaged"), "{}", gw3.proc.all_output());
}

/// Offsets where the records of a spool segment start (8-byte magic, then
/// `len u32 LE | points u32 LE | crc u32 LE | data`).
fn record_offsets(seg: &Path) -> Vec<u64> {
    let bytes = std::fs::read(seg).unwrap();
    let (mut at, mut out) = (8usize, Vec::new());
    while at + 12 <= bytes.len() {
        out.push(at as u64);
        at += 12 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    out
}

#[test]
fn a_damaged_record_in_the_middle_of_a_segment_costs_only_its_own_points() {
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_str().unwrap().to_string();
    let args = ["-destinations", &dest, "-spool-dir", &spool_dir, "-durable"];
    let gw = gateway(&args);
    let batches: Vec<Vec<String>> = (0..60).map(|i| lines(&format!("dmg{i}"), 100)).collect();
    for b in &batches {
        assert_eq!(post(&gw.http, b), Some(200));
    }
    gw.proc.term();
    assert!(gw.proc.wait_exit(secs(20)).is_some_and(|s| s.success()));

    // 16 bytes flipped in the middle of the segment: inside the data of record 30.
    let dir = dest_spool(spool.path(), port);
    let segs = segments(&dir);
    assert_eq!(segs.len(), 1, "one segment with many records");
    let offsets = record_offsets(&segs[0]);
    assert_eq!(offsets.len(), 60, "one record per batch");
    let at = (offsets[30] + offsets[31]) / 2;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&segs[0])
            .unwrap();
        let mut buf = [0u8; 16];
        f.read_exact_at(&mut buf, at).unwrap();
        for b in &mut buf {
            *b ^= 0xff;
        }
        f.write_all_at(&buf, at).unwrap();
    }

    let sink = LineSink::start_on(port);
    let gw2 = gateway(&args);
    let good: Vec<String> = batches
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 30)
        .flat_map(|(_, b)| b.clone())
        .collect();
    let left = wait_all(&sink, &good, secs(30));
    assert!(
        left.is_empty(),
        "{} undamaged lines lost\n{}",
        left.len(),
        gw2.proc.all_output()
    );
    assert_eq!(sink.wait_idle(millis(500), secs(5)), good.len());
    assert_eq!(sink.lines(), good, "every other record replayed, in order");
    println!(
        "damaged spool: 16 bytes flipped at offset {at} of a 60-record segment: {} of {} lines replayed, 100 lost (the damaged record)",
        good.len(),
        good.len() + 100
    );
    assert!(
        gw2.proc.wait_log("100 points lost", secs(5)),
        "the loss is logged: {}",
        gw2.proc.all_output()
    );
    let metrics = http_get(&gw2.admin, "/metrics", &[]).unwrap().body;
    let series = format!(
        "polymur_dropped_points_total{{destination=\"{dest}\",reason=\"spool_damaged\"}} 100"
    );
    assert!(metrics.contains(&series), "{series} in {metrics}");
    let q: Vec<_> = std::fs::read_dir(dir.join("quarantine")).unwrap().collect();
    assert_eq!(q.len(), 1);
    let qlen = q[0].as_ref().unwrap().metadata().unwrap().len();
    assert_eq!(
        qlen,
        offsets[31] - offsets[30],
        "only the damaged record quarantined"
    );
}

#[test]
fn overflow_drop_counts_and_logs_what_it_drops_and_acknowledges() {
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let gw = gateway(&[
        "-destinations",
        &dest,
        "-outgoing-queue-cap",
        "500",
        "-overflow",
        "drop",
    ]);
    let mut held = Vec::new();
    for i in 0..6 {
        let l = lines(&format!("drop{i}"), 200);
        assert_eq!(post(&gw.http, &l), Some(200), "a drop mirror never refuses");
        if i < 3 {
            held.extend(l);
        }
    }
    assert!(gw.proc.wait_log("-overflow drop: dropped", secs(5)));
    let metrics = http_get(&gw.admin, "/metrics", &[]).unwrap().body;
    let dropped =
        format!("polymur_dropped_points_total{{destination=\"{dest}\",reason=\"overflow\"}} 600\n");
    assert!(metrics.contains(&dropped), "{metrics}");
    let sink = LineSink::start_on(port);
    assert!(sink.wait_count(held.len(), secs(20)));
    assert_eq!(sink.wait_idle(millis(300), secs(5)), held.len());
    assert_eq!(sink.lines(), held);
}

#[test]
fn a_spool_directory_is_never_shared_by_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().to_str().unwrap().to_string();
    let dest = format!("127.0.0.1:{}", free_port());
    let first = gateway(&["-destinations", &dest, "-spool-dir", &spool]);
    let port = free_port().to_string();
    let second = Proc::run(
        GATEWAY_BIN,
        &[
            "-dev-mode",
            "-destinations",
            &dest,
            "-spool-dir",
            &spool,
            "-listen-addr",
            "127.0.0.1",
            "-listen-http-port",
            &port,
            "-api-addr=",
            "-stat-addr=",
            "-admin-addr=",
        ],
        &[],
        secs(20),
    );
    assert_refused_spool(&second, "polymur-gateway", "is in use by another process");
    assert!(!first.proc.has_log("in use by another process"));
    // The first keeps spooling: a batch beyond its queue is still acknowledged.
    for i in 0..3 {
        let body = lines(&format!("shared{i}"), 5000).join("\n") + "\n";
        assert_eq!(first.ingest("123", &body).status, 200);
    }
}

/// `program` exited 1 at start, its one-line error naming `-spool-dir` and `why`.
fn assert_refused_spool(out: &RunOutput, program: &str, why: &str) {
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(1),
        "{program}: {}",
        out.stderr
    );
    let head = format!("{program}: -spool-dir: ");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with(&head) && l.contains(why)),
        "{program}: {}",
        out.stderr
    );
}

/// `putdest` of a destination whose spool cannot be opened (here its directory name is
/// taken by a file) is refused with the reason, and the running destination keeps working.
#[test]
fn putdest_is_refused_when_the_new_destinations_spool_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().to_str().unwrap().to_string();
    let sink = LineSink::start();
    let gw = gateway(&[
        "-destinations",
        &sink.addr(),
        "-spool-dir",
        &spool,
        "-durable",
    ]);
    let port = free_port();
    std::fs::write(dir.path().join(format!("127.0.0.1_{port}")), b"in the way").unwrap();
    let reply = tcp_request(&gw.api, &format!("putdest 127.0.0.1:{port}\n")).unwrap();
    assert!(
        reply.contains("not added") && reply.contains("File exists"),
        "{reply}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(tcp_request(&gw.api, "getdest\n").unwrap().trim()).unwrap();
    assert_eq!(doc["active"], serde_json::json!([sink.addr()]), "{doc}");
    let l = lines("after.refused.putdest", 100);
    assert_eq!(post(&gw.http, &l), Some(200));
    assert!(wait_all(&sink, &l, secs(10)).is_empty());
}

/// A `-spool-dir` that cannot hold a spool (a file, not a directory) stops every daemon
/// at start with the reason, for the gateway, the relay and the proxy: running on with
/// memory only would quietly break what the operator set it for.
#[test]
fn an_unusable_spool_dir_stops_the_daemon_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let spool = file.to_str().unwrap();
    let dest = format!("127.0.0.1:{}", free_port());
    let gw_url = format!("http://{dest}");
    let (port, listen) = (
        free_port().to_string(),
        format!("127.0.0.1:{}", free_port()),
    );
    let runs: [(&str, &str, Vec<&str>); 3] = [
        (
            GATEWAY_BIN,
            "polymur-gateway",
            vec![
                "-dev-mode",
                "-listen-addr",
                "127.0.0.1",
                "-listen-http-port",
                &port,
                "-destinations",
                &dest,
                "-api-addr=",
                "-stat-addr=",
                "-admin-addr=",
            ],
        ),
        (
            env!("CARGO_BIN_EXE_polymur"),
            "polymur",
            vec![
                "-listen-addr",
                &listen,
                "-destinations",
                &dest,
                "-api-addr=",
                "-stat-addr=",
                "-admin-addr=",
            ],
        ),
        (
            env!("CARGO_BIN_EXE_polymur-proxy"),
            "polymur-proxy",
            vec![
                "-listen-addr",
                &listen,
                "-gateway",
                &gw_url,
                "-api-key",
                "k",
                "-stat-addr=",
                "-admin-addr=",
            ],
        ),
    ];
    for (bin, program, mut args) in runs {
        args.extend(["-spool-dir", spool]);
        let out = Proc::run(bin, &args, &[], secs(20));
        assert_refused_spool(&out, program, "Not a directory");
    }
}

/// What a destination process that is killed takes with it: the lines it had read (kept
/// here as processed) survive, its kernel receive queue is discarded (`SO_LINGER` 0 makes the
/// close a reset, as the kernel does for a SIGKILLed process with unread data).
struct Lagging {
    processed: Arc<Mutex<Vec<String>>>,
    stall: Arc<AtomicBool>,
    kill: Arc<AtomicBool>,
    reader: std::thread::JoinHandle<()>,
}

impl Lagging {
    /// Accepts one connection on `port` and reads it as fast as it can (so the kernel grows
    /// its receive buffer) until `stall` is set, then reads nothing until `kill`.
    fn start(port: u16) -> Lagging {
        use std::io::Read;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let processed = Arc::new(Mutex::new(Vec::new()));
        let stall = Arc::new(AtomicBool::new(false));
        let kill = Arc::new(AtomicBool::new(false));
        let reader = {
            let (processed, stall, kill) = (processed.clone(), stall.clone(), kill.clone());
            std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                drop(listener);
                s.set_read_timeout(Some(millis(50))).unwrap();
                let (mut buf, mut partial) = (vec![0u8; 64 << 10], Vec::new());
                while !kill.load(Ordering::SeqCst) {
                    if stall.load(Ordering::SeqCst) {
                        std::thread::sleep(millis(10));
                        continue;
                    }
                    let n = match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(_) => continue,
                    };
                    partial.extend_from_slice(&buf[..n]);
                    let end = partial
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |i| i + 1);
                    let text = String::from_utf8_lossy(&partial[..end]).into_owned();
                    processed
                        .lock()
                        .unwrap()
                        .extend(text.lines().map(str::to_string));
                    partial.drain(..end);
                }
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                use std::os::fd::AsRawFd;
                // SAFETY: a live socket and a linger struct of the right size.
                unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        &linger as *const libc::linger as *const libc::c_void,
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
            })
        };
        Lagging {
            processed,
            stall,
            kill,
            reader,
        }
    }

    fn processed(&self) -> usize {
        self.processed.lock().unwrap().len()
    }
}

#[test]
fn a_destination_killed_after_it_fell_behind_loses_nothing_it_had_not_read() {
    let port = free_port();
    let lagging = Lagging::start(port);
    let gw = gateway(&["-destinations", &format!("127.0.0.1:{port}")]);
    let (sent, client) = posting_client(&gw.http, "lag", (400, 2000), 2400);
    assert!(
        wait_until(secs(30), || lagging.processed() >= 200_000),
        "stream did not start"
    );
    lagging.stall.store(true, Ordering::SeqCst);
    // The destination stops reading: its kernel queue fills while the gateway keeps writing.
    std::thread::sleep(millis(1500));
    lagging.kill.store(true, Ordering::SeqCst);
    lagging.reader.join().unwrap();
    let processed = lagging.processed.lock().unwrap().clone();
    std::thread::sleep(millis(300));
    let sink = LineSink::start_on(port);
    client.join().unwrap();
    let sent = sent.lock().unwrap().clone();
    let mut left = Vec::new();
    wait_until(secs(60), || {
        let mut got = sink.lines();
        got.extend(processed.iter().cloned());
        left = missing(&sent, &got);
        left.is_empty()
    });
    assert!(
        left.is_empty(),
        "{} of {} acknowledged lines lost (the destination had processed {}), e.g. {:?}",
        left.len(),
        sent.len(),
        processed.len(),
        left.first()
    );
}

/// An operator frees disk space by deleting spool segments while the gateway runs (its
/// destination down). Every batch acknowledged before and after is still delivered: the
/// deleted segments are read back from the gateway's open handles, and new records go to
/// a new segment instead of the deleted file (before: the reader looked the segment up by
/// name, failed every second for ever, and nothing spooled afterwards arrived either).
#[test]
fn spool_segments_deleted_by_hand_while_running_lose_nothing_acknowledged() {
    spool_deleted_by_hand(|dir| {
        for seg in segments(dir) {
            std::fs::remove_file(seg).unwrap();
        }
    });
}

/// The same with the destination's whole spool directory deleted (`rm -rf`): it is made
/// again, so batches are still acknowledged and delivered (before: every batch after it
/// was answered 503 until a restart).
#[test]
fn a_spool_directory_deleted_by_hand_is_made_again_and_loses_nothing_acknowledged() {
    spool_deleted_by_hand(|dir| std::fs::remove_dir_all(dir).unwrap());
}

/// 20 batches spooled, `remove` applied to the destination's spool directory, 20 more,
/// then the destination comes up: every acknowledged line arrives.
fn spool_deleted_by_hand(remove: impl Fn(&Path)) {
    let port = free_port();
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_str().unwrap().to_string();
    let dest = format!("127.0.0.1:{port}");
    let args = [
        "-destinations",
        &dest,
        "-spool-dir",
        &spool_dir,
        "-outgoing-queue-cap",
        "1000",
    ];
    let gw = gateway(&args);
    let mut acked = Vec::new();
    for b in 0..20 {
        let l = lines(&format!("before{b}"), 1000);
        assert_eq!(post(&gw.http, &l), Some(200));
        acked.extend(l);
    }
    let dir = dest_spool(spool.path(), port);
    assert!(wait_until(secs(10), || !segments(&dir).is_empty()));
    remove(&dir);
    for b in 0..20 {
        let l = lines(&format!("after{b}"), 1000);
        assert_eq!(post(&gw.http, &l), Some(200));
        acked.extend(l);
    }
    assert!(
        wait_until(secs(10), || !segments(&dir).is_empty()),
        "new records go to a segment a restart can find"
    );
    let sink = LineSink::start_on(port);
    let left = wait_all(&sink, &acked, secs(30));
    assert!(
        left.is_empty(),
        "{} of {} acknowledged lines lost, e.g. {:?}\n{}",
        left.len(),
        acked.len(),
        left.first(),
        gw.proc.all_output()
    );
    assert!(
        gw.proc.wait_log("was deleted while in use", secs(5)),
        "{}",
        gw.proc.all_output()
    );
}
