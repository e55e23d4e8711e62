//! polymur-proxy as a real process: to our gateway over HTTPS (self-signed certificate
//! made in the test) and on to a real carbon-cache; a gateway outage while clients keep
//! sending; the disk spool across a proxy restart; a wrong key at start; and the retry
//! policy for 400, 503 and 401 against a scripted in-test gateway.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::support::*;

const PROXY: &str = env!("CARGO_BIN_EXE_polymur-proxy");
const GW: &str = env!("CARGO_BIN_EXE_polymur-gateway");

/// A running proxy and its plaintext address.
struct Proxy {
    proc: Proc,
    listen: String,
    admin: String,
}

fn proxy(gateway: &str, extra: &[&str]) -> Proxy {
    let listen = format!("127.0.0.1:{}", free_port());
    let stat = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "-gateway",
        gateway,
        "-listen-addr",
        &listen,
        "-stat-addr",
        &stat,
        "-admin-addr",
        &admin,
        "-flush-interval",
        "200ms",
        "-max-retry-delay",
        "2s",
    ];
    args.extend_from_slice(extra);
    let proc = Proc::spawn(PROXY, &args, &[]);
    assert!(
        proc.wait_log("Listening on", secs(15)),
        "proxy did not start: {}",
        proc.all_output()
    );
    Proxy {
        proc,
        listen,
        admin,
    }
}

/// Starts our gateway in dev mode (key `123`) on `http_port`, forwarding to `dest`.
fn gateway_on(http_port: u16, dest: &str, extra: &[&str]) -> Proc {
    let port = http_port.to_string();
    let mut args = vec![
        "-dev-mode",
        "-listen-addr=127.0.0.1",
        "-listen-http-port",
        &port,
        "-api-addr=",
        "-stat-addr=",
        "-admin-addr=",
        "-destinations",
        dest,
    ];
    args.extend_from_slice(extra);
    let gw = Proc::spawn(GW, &args, &[]);
    assert!(
        gw.wait_log("HTTP listening on", secs(15)),
        "{}",
        gw.all_output()
    );
    gw
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    let ts = now_ts();
    (0..n).map(|i| format!("{prefix}.m{i} {i} {ts}")).collect()
}

fn body(lines: &[String]) -> String {
    lines.join("\n") + "\n"
}

/// Every line of `expected` reaches `sink` within `timeout`, and nothing else (no
/// duplicate, no stray line) follows.
fn assert_all_arrive(sink: &LineSink, expected: &[String], timeout: std::time::Duration, p: &Proc) {
    assert!(
        sink.wait_count(expected.len(), timeout),
        "got {} of {}\n{}",
        sink.count(),
        expected.len(),
        p.all_output()
    );
    assert_eq!(sink.wait_idle(millis(500), secs(5)), expected.len());
    assert_eq!(sorted(sink.lines()), sorted(expected.to_vec()));
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn proxy_to_gateway_over_https_to_carbon_cache() {
    let dir = tempfile::tempdir().unwrap();
    // CA:TRUE self-signed, exactly as operators make it: the proxy's -cert must trust it.
    let tls = TlsFiles::generate(dir.path());
    let carbon = CarbonCache::start();
    let (http, https) = (free_port(), free_port());
    let https_port = https.to_string();
    let _gw = gateway_on(
        http,
        &carbon.line_addr(),
        &[
            "-cert",
            tls.cert.to_str().unwrap(),
            "-key",
            tls.key.to_str().unwrap(),
            "-listen-https-port",
            &https_port,
        ],
    );
    let p = proxy(
        &format!("https://127.0.0.1:{https}"),
        &["-api-key", "123", "-cert", tls.cert.to_str().unwrap()],
    );
    assert!(
        p.proc.has_log("accepts the API key"),
        "{}",
        p.proc.all_output()
    );

    let base = now_ts() - 60;
    let series = ["site1.web01.cpu", "site1.db01.disk"];
    let mut text = String::new();
    let mut expected = [Vec::new(), Vec::new()];
    for i in 0..10 {
        for (s, name) in series.iter().enumerate() {
            let v = (s * 100 + i) as f64 + 0.5;
            text.push_str(&format!("{name} {v} {}\n", base + i as i64));
            expected[s].push((base + i as i64, v));
        }
    }
    send_lines(&p.listen, &text).unwrap();
    for (s, name) in series.iter().enumerate() {
        let got = carbon.wait_points(name, base - 1, 10, secs(30));
        assert_eq!(got, expected[s], "{name}\n{}", p.proc.all_output());
    }
}

#[test]
fn gateway_down_for_ten_seconds_loses_nothing() {
    let sink = LineSink::start();
    let http = free_port();
    let gw = gateway_on(http, &sink.addr(), &[]);
    let p = proxy(&format!("http://127.0.0.1:{http}"), &["-api-key", "123"]);
    let first = lines("outage.before", 100);
    send_lines(&p.listen, &body(&first)).unwrap();
    assert!(sink.wait_count(100, secs(15)), "{}", p.proc.all_output());

    gw.term();
    assert!(gw.wait_exit(secs(15)).is_some());
    // Clients keep sending for ten seconds while the gateway is away.
    let mut during = Vec::new();
    for round in 0..10 {
        let l = lines(&format!("outage.during{round}"), 200);
        send_lines(&p.listen, &body(&l)).unwrap();
        during.extend(l);
        std::thread::sleep(secs(1));
    }
    assert!(
        p.proc.wait_log("did not take a batch", secs(5)),
        "{}",
        p.proc.all_output()
    );
    let _gw = gateway_on(http, &sink.addr(), &[]);
    let expected: Vec<String> = first.into_iter().chain(during).collect();
    assert_all_arrive(&sink, &expected, secs(30), &p.proc);
}

/// A proxy with a spool under a scratch directory, its gateway not started yet (on
/// `http`, forwarding to `sink` once [`gateway_on`] starts it).
struct SpoolingProxy {
    _dir: tempfile::TempDir,
    spool: std::path::PathBuf,
    sink: LineSink,
    http: u16,
    gw_url: String,
}

impl SpoolingProxy {
    fn new() -> SpoolingProxy {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let http = free_port();
        SpoolingProxy {
            spool,
            _dir: dir,
            sink: LineSink::start(),
            http,
            gw_url: format!("http://127.0.0.1:{http}"),
        }
    }

    /// A proxy on this spool with `-api-key 123` and `extra`.
    fn start(&self, extra: &[&str]) -> Proxy {
        let spool = self.spool.to_str().unwrap();
        let mut args = vec!["-api-key", "123", "-spool-dir", spool];
        args.extend_from_slice(extra);
        proxy(&self.gw_url, &args)
    }
}

#[test]
fn spooled_batches_survive_a_proxy_restart() {
    let setup = SpoolingProxy::new();
    let (spool, sink, http) = (setup.spool.clone(), &setup.sink, setup.http);
    // The gateway is down from the start: the proxy starts anyway and queues.
    let p = setup.start(&["-queue-cap", "1"]);
    let sent = lines("spool", 1000);
    send_lines(&p.listen, &body(&sent)).unwrap();
    assert!(
        p.proc.wait_log("did not take a batch", secs(15)),
        "{}",
        p.proc.all_output()
    );
    p.proc.term();
    assert!(p.proc.wait_exit(secs(30)).is_some_and(|s| s.success()));
    assert!(
        p.proc.has_log("left in the spool"),
        "{}",
        p.proc.all_output()
    );
    assert!(!p.proc.has_log("are lost"), "{}", p.proc.all_output());
    // The one spool format of every destination, under the destination's name.
    let segments = spool_segments(&spool);
    assert!(
        !segments.is_empty(),
        "batches are on disk in spool/gateway/seg-*.spool"
    );
    assert!(
        std::fs::read_dir(&spool).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".gz")),
        "no file of the old one-file-per-batch format"
    );
    // Plain lines on disk, whatever the memory queue held them as (sealed: compressed).
    let on_disk: Vec<u8> = segments
        .iter()
        .flat_map(|s| std::fs::read(spool.join("gateway").join(s)).unwrap())
        .collect();
    let first = format!("{}\n", sent[0]);
    assert!(
        on_disk.windows(first.len()).any(|w| w == first.as_bytes()),
        "the spool holds {:?} as a plain line",
        sent[0]
    );

    let _gw = gateway_on(http, &sink.addr(), &[]);
    let p2 = setup.start(&[]);
    assert_all_arrive(sink, &sent, secs(30), &p2.proc);
    // Delivered segments are deleted once the cursor is past them.
    assert!(
        wait_until(secs(10), || {
            let now = spool_segments(&spool);
            segments.iter().all(|s| !now.contains(s))
        }),
        "{:?}\n{}",
        spool_segments(&spool),
        p2.proc.all_output()
    );
}

/// Segment files of the proxy's spool (`<spool-dir>/gateway/seg-*.spool`).
fn spool_segments(spool: &std::path::Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(spool.join("gateway")) else {
        return Vec::new();
    };
    dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-") && n.ends_with(".spool"))
        .collect()
}

/// The value of an unlabelled series on the proxy's /metrics (0 when absent).
fn metric(admin: &str, series: &str) -> u64 {
    let body = http_get(admin, "/metrics", &[])
        .map(|r| r.body)
        .unwrap_or_default();
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A `-spool-dir` written by the old proxy (one fsync'd file per gzip'ed batch,
/// `<seq, 20 digits>-<points>.gz`, plus a `.tmp-<seq>` a crash left) is sent, oldest
/// first, by the new one after the upgrade, and its files are gone afterwards.
#[test]
fn an_old_format_spool_is_delivered_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let mut sent = Vec::new();
    for seq in 0..5u64 {
        let batch = lines(&format!("old{seq}"), 200);
        let name = format!("{seq:020}-{}.gz", batch.len());
        std::fs::write(spool.join(name), gzip(body(&batch).as_bytes())).unwrap();
        sent.extend(batch);
    }
    std::fs::write(spool.join(".tmp-5"), b"half a batch").unwrap();
    let sink = LineSink::start();
    let http = free_port();
    let _gw = gateway_on(http, &sink.addr(), &[]);
    let spool_arg = spool.to_str().unwrap().to_string();
    let p = proxy(
        &format!("http://127.0.0.1:{http}"),
        &["-api-key", "123", "-spool-dir", &spool_arg],
    );
    assert!(
        p.proc
            .has_log("of the old one-file-per-batch format moved into"),
        "{}",
        p.proc.all_output()
    );
    assert_all_arrive(&sink, &sent, secs(30), &p.proc);
    let left: Vec<String> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["gateway".to_string()], "old files removed");
}

/// `kill -9` of a proxy with `-spool-dir` while the gateway is down: every batch it had
/// written to the spool is delivered by the next start.
#[test]
fn kill_9_with_a_spool_dir_loses_nothing_that_was_spooled() {
    let dir = tempfile::tempdir().unwrap();
    let spool_arg = dir.path().join("spool").to_str().unwrap().to_string();
    let sink = LineSink::start();
    let http = free_port();
    let gw_url = format!("http://127.0.0.1:{http}");
    let args = [
        "-api-key",
        "123",
        "-spool-dir",
        &spool_arg,
        "-queue-cap",
        "1",
        "-flush-size",
        "100",
    ];
    let p = proxy(&gw_url, &args);
    // The first 100 lines fill the memory queue (100 points) and stay there, being
    // retried; a kill -9 loses them: memory is not the spool.
    send_lines(&p.listen, &body(&lines("k9.memory", 100))).unwrap();
    assert!(
        p.proc.wait_log("did not take a batch", secs(15)),
        "{}",
        p.proc.all_output()
    );
    let spooled = lines("k9.spooled", 1000);
    send_lines(&p.listen, &body(&spooled)).unwrap();
    assert!(
        wait_until(secs(15), || metric(
            &p.admin,
            "polymur_proxy_spooled_points_total"
        ) >= 1000),
        "{}",
        p.proc.all_output()
    );
    p.proc.kill9();
    assert!(p.proc.wait_exit(secs(10)).is_some());

    let _gw = gateway_on(http, &sink.addr(), &[]);
    let p2 = proxy(&gw_url, &args);
    let arrived = || {
        sink.lines()
            .into_iter()
            .filter(|l| l.starts_with("k9.spooled."))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(secs(30), || arrived().len() >= spooled.len()),
        "got {} of {}\n{}",
        arrived().len(),
        spooled.len(),
        p2.proc.all_output()
    );
    sink.wait_idle(millis(500), secs(5));
    // At least once: a batch may come twice after a kill, never not at all.
    let mut got = sorted(arrived());
    got.dedup();
    assert_eq!(got, sorted(spooled));
}

#[test]
fn wrong_key_at_start_exits_1_with_the_gateways_message() {
    let sink = LineSink::start();
    let http = free_port();
    let _gw = gateway_on(http, &sink.addr(), &[]);
    let out = Proc::run(
        PROXY,
        &[
            "-gateway",
            &format!("http://127.0.0.1:{http}"),
            "-api-key",
            "not-the-key",
            "-listen-addr",
            &format!("127.0.0.1:{}", free_port()),
            "-stat-addr=",
        ],
        &[],
        secs(20),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(out.stderr.contains("invalid key"), "{out:?}");
}

/// One request the scripted gateway saw.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    path: String,
    key: String,
    /// Decompressed `/ingest` body.
    body: String,
}

type Script = dyn Fn(&Seen, &[Seen]) -> (u16, &'static str, Option<&'static str>) + Send + Sync;

/// A tiny HTTP/1.1 server answering what `script` says (status, body, Retry-After),
/// given the request and every earlier one. Keep-alive is supported.
struct FakeGateway {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl FakeGateway {
    fn start(script: Arc<Script>) -> FakeGateway {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, st, script) = (s.clone(), st.clone(), script.clone());
                        std::thread::spawn(move || serve_conn(conn, s, st, script));
                    }
                    Err(_) => std::thread::sleep(millis(5)),
                }
            }
        });
        FakeGateway { addr, seen, stop }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn ingests(&self) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.path == "/ingest")
            .cloned()
            .collect()
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_conn(
    conn: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    script: Arc<Script>,
) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(secs(30))).unwrap();
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    while !stop.load(Ordering::SeqCst) {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let (mut len, mut key) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
                if k.eq_ignore_ascii_case("x-polymur-key") {
                    key = v.trim().to_string();
                }
            }
        }
        let mut raw = vec![0u8; len];
        if r.read_exact(&mut raw).is_err() {
            return;
        }
        let body = if path == "/ingest" {
            String::from_utf8_lossy(&gunzip(&raw)).into_owned()
        } else {
            String::new()
        };
        let req = Seen {
            at: Instant::now(),
            path,
            key,
            body,
        };
        let (status, text, retry_after) = {
            let mut all = seen.lock().unwrap();
            let answer = script(&req, &all);
            all.push(req);
            answer
        };
        let mut head = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n",
            text.len()
        );
        if let Some(ra) = retry_after {
            head.push_str(&format!("Retry-After: {ra}\r\n"));
        }
        head.push_str("\r\n");
        if w.write_all(head.as_bytes()).is_err() || w.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

/// 503 with `Retry-After` is retried no sooner than it says; 400 drops that batch
/// (never retried) and the others still go through.
#[test]
fn retry_after_503_is_honoured_and_400_drops_only_that_batch() {
    let script: Arc<Script> = Arc::new(|req, earlier| {
        if req.path == "/ping" {
            return (200, "key is valid\n", None);
        }
        if req.body.contains("poison") {
            return (400, "Batch Malformed\n", None);
        }
        let tries = earlier.iter().filter(|s| s.body == req.body).count();
        if tries < 2 {
            (
                503,
                "Batch Refused: destination queue full, retry later\n",
                Some("1"),
            )
        } else {
            (200, "Batch Received\n", None)
        }
    });
    let gw = FakeGateway::start(script);
    let p = proxy(
        &gw.url(),
        &["-api-key", "k1", "-flush-size", "1", "-workers", "1"],
    );
    let ts = now_ts();
    send_lines(&p.listen, &format!("good.one 1 {ts}\npoison.line 2 {ts}\n")).unwrap();
    assert!(
        wait_until(secs(20), || gw.ingests().len() >= 4),
        "{:?}\n{}",
        gw.ingests(),
        p.proc.all_output()
    );
    // Nothing more comes: the good batch was acknowledged, the poison one dropped.
    std::thread::sleep(secs(2));
    let ingests = gw.ingests();
    let good: Vec<&Seen> = ingests
        .iter()
        .filter(|s| s.body.contains("good.one"))
        .collect();
    let poison: Vec<&Seen> = ingests
        .iter()
        .filter(|s| s.body.contains("poison"))
        .collect();
    assert_eq!(good.len(), 3, "two 503s then 200: {ingests:?}");
    assert_eq!(poison.len(), 1, "a 400 is never retried: {ingests:?}");
    for pair in good.windows(2) {
        assert!(
            pair[1].at.duration_since(pair[0].at) >= millis(990),
            "Retry-After: 1 honoured"
        );
    }
    assert!(ingests.iter().all(|s| s.key == "k1"));
    assert!(
        p.proc.has_log("rejected a batch of 1 points"),
        "{}",
        p.proc.all_output()
    );
}

/// The proxy's spool on a full disk (a 2 MiB tmpfs) while the gateway is down: it keeps
/// what it took, slows its TCP client down instead of dropping (the spool refuses, the
/// batch waits), and once the gateway is up every line the client wrote arrives.
#[test]
fn a_full_spool_disk_slows_the_client_and_loses_nothing() {
    let Some(disk) = crate::disk_full::Tmpfs::mount("2m") else {
        return;
    };
    let sink = LineSink::start();
    let http = free_port();
    let spool = disk.path().to_str().unwrap().to_string();
    let p = proxy(
        &format!("http://127.0.0.1:{http}"),
        &["-api-key", "123", "-spool-dir", &spool, "-queue-cap", "100"],
    );
    // About 28 MB of lines: far more than the disk, the memory queue and both sockets'
    // buffers (a few MB each on loopback) hold, so the client must be held back.
    let sent = lines("fullspool", 1_000_000);
    let feeder = {
        let (addr, text) = (p.listen.clone(), body(&sent));
        std::thread::spawn(move || send_lines(&addr, &text))
    };
    assert!(
        p.proc.wait_log("No space left on device", secs(60)),
        "{}",
        p.proc.all_output()
    );
    assert!(
        !feeder.is_finished(),
        "the client is held back, not dropped"
    );
    let _gw = gateway_on(http, &sink.addr(), &[]);
    feeder.join().unwrap().unwrap();
    assert!(
        sink.wait_count(sent.len(), secs(90)),
        "got {} of {}\n{}",
        sink.count(),
        sent.len(),
        p.proc.all_output()
    );
    let got: std::collections::HashSet<String> = sink.lines().into_iter().collect();
    assert_eq!(sent.iter().filter(|l| !got.contains(*l)).count(), 0);
}

/// A `-flush-size` larger than the gateway's `-max-batch-bytes` used to cost every
/// batch (413 was "rejected for good"): now a 413 splits the batch in halves until the
/// gateway takes them, so every line arrives once, through our real gateway.
#[test]
fn a_batch_the_gateway_finds_too_large_is_split_not_dropped() {
    let sink = LineSink::start();
    let http = free_port();
    let _gw = gateway_on(http, &sink.addr(), &["-max-batch-bytes", "20K"]);
    let p = proxy(
        &format!("http://127.0.0.1:{http}"),
        &["-api-key", "123", "-flush-size", "5000"],
    );
    // 5 000 lines of about 28 bytes: 140 KB per batch, seven times the limit.
    let sent = lines("split.series", 12_000);
    send_lines(&p.listen, &body(&sent)).unwrap();
    assert_all_arrive(&sink, &sent, secs(60), &p.proc);
    assert!(p.proc.has_log("as too large"), "{}", p.proc.all_output());
    assert_eq!(
        p.proc.log_count("rejected a batch"),
        0,
        "{}",
        p.proc.all_output()
    );
    let metrics = http_get(&p.admin, "/metrics", &[]).unwrap().body;
    assert!(
        metrics.contains(
            "polymur_dropped_points_total{destination=\"gateway\",reason=\"rejected\"} 0\n"
        ),
        "{metrics}"
    );
}

/// 401 mid-stream pauses sending without losing data; once the key is valid again
/// (the proxy re-pings), the kept batches are delivered.
#[test]
fn unauthorized_pauses_keeps_data_and_resumes() {
    let revoked = Arc::new(AtomicBool::new(false));
    let r = revoked.clone();
    let script: Arc<Script> = Arc::new(move |req, _| {
        if r.load(Ordering::SeqCst) {
            return (401, "invalid key", None);
        }
        match req.path.as_str() {
            "/ping" => (200, "key is valid\n", None),
            _ => (200, "Batch Received\n", None),
        }
    });
    let gw = FakeGateway::start(script);
    let p = proxy(
        &gw.url(),
        &["-api-key", "k1", "-key-recheck-interval", "300ms"],
    );
    revoked.store(true, Ordering::SeqCst);
    let sent = lines("revoked", 50);
    send_lines(&p.listen, &body(&sent)).unwrap();
    assert!(
        p.proc.wait_log("sending PAUSED", secs(15)),
        "{}",
        p.proc.all_output()
    );
    let ready = http_get(&p.admin, "/readyz", &[]).unwrap();
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("refuses the API key"), "{}", ready.body);
    assert!(http_get(&p.admin, "/metrics", &[])
        .unwrap()
        .body
        .contains("polymur_proxy_key_valid 0\n"));
    revoked.store(false, Ordering::SeqCst);
    assert!(
        p.proc.wait_log("sending resumed", secs(15)),
        "{}",
        p.proc.all_output()
    );
    assert!(wait_until(secs(15), || {
        gw.ingests().iter().any(|s| s.body.contains("revoked.m0 "))
            && gw
                .seen
                .lock()
                .unwrap()
                .last()
                .is_some_and(|s| s.path == "/ingest")
    }));
    let delivered: Vec<String> = gw
        .ingests()
        .iter()
        .rev()
        .take(1)
        .flat_map(|s| s.body.lines().map(String::from).collect::<Vec<_>>())
        .collect();
    assert_eq!(sorted(delivered), sorted(sent));
    // The proxy's counters tell the same story.
    assert!(wait_until(secs(5), || http_get(&p.admin, "/readyz", &[])
        .unwrap()
        .status
        == 200));
    let metrics = http_get(&p.admin, "/metrics", &[]).unwrap().body;
    for series in [
        "polymur_received_points_total 50\n",
        "polymur_proxy_sent_points_total 50\n",
        "polymur_proxy_key_valid 1\n",
        "polymur_destination_up{destination=\"gateway\"} 1\n",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    let page = http_get(&p.admin, "/", &[]).unwrap().body;
    assert!(page.contains("points sent</td><td>50<"), "{page}");
}

/// Without a spool, a full memory queue slows the clients down (the proxy stops
/// reading) while the gateway is away; nothing is dropped, everything arrives after.
#[test]
fn full_queue_without_spool_applies_backpressure_and_loses_nothing() {
    let sink = LineSink::start();
    let http = free_port();
    let p = proxy(
        &format!("http://127.0.0.1:{http}"),
        &["-api-key", "123", "-queue-cap", "10", "-flush-size", "1000"],
    );
    let sent = lines("bp", 50_000);
    let text = body(&sent);
    let listen = p.listen.clone();
    let client = std::thread::spawn(move || send_lines(&listen, &text));
    assert!(
        p.proc.wait_log("did not take a batch", secs(15)),
        "{}",
        p.proc.all_output()
    );
    std::thread::sleep(secs(2));
    let _gw = gateway_on(http, &sink.addr(), &[]);
    assert!(
        sink.wait_count(sent.len(), secs(60)),
        "got {} of {}\n{}",
        sink.count(),
        sent.len(),
        p.proc.all_output()
    );
    client.join().unwrap().expect("client write completes");
    assert_eq!(sink.wait_idle(millis(500), secs(5)), sent.len());
    assert_eq!(sorted(sink.lines()), sorted(sent));
}

/// A proxy whose gateway is down keeps what its clients send in its memory queue at wire
/// size (sealed: compressed when admitted), not as plain lines: 1.2 M queued points grow
/// its RSS by less than half their 80 MB of text (plain, they grew it by more than that). Once the gateway is back every point
/// arrives, and the queue is empty.
#[test]
fn a_queue_of_sealed_batches_costs_its_wire_size_and_delivers_everything() {
    let sink = LineSink::start();
    let port = free_port();
    let p = proxy(&format!("http://127.0.0.1:{port}"), &["-api-key", "123"]);
    let base = p.proc.rss();
    let n = 1_200_000;
    let text: String = (0..n)
        .map(|i| format!("drain.test.series{i:07}.with.a.long.enough.name {i} 1700000000\n"))
        .collect();
    let plain = text.len() as u64;
    send_lines(&p.listen, &text).unwrap();
    drop(text);
    assert!(
        wait_until(secs(60), || metric(&p.admin, "polymur_proxy_queue_points")
            >= n as u64),
        "queued {} of {n}: {}",
        metric(&p.admin, "polymur_proxy_queue_points"),
        p.proc.all_output()
    );
    let grown = p.proc.rss().saturating_sub(base);
    assert!(
        grown < plain / 2,
        "{n} queued points grew RSS by {} MiB ({} MiB of lines)",
        grown >> 20,
        plain >> 20
    );
    let _gw = gateway_on(port, &sink.addr(), &["-outgoing-queue-cap=1000000"]);
    assert!(
        sink.wait_count(n, secs(90)),
        "{} of {n} arrived: {}",
        sink.count(),
        p.proc.all_output()
    );
    let mut got = sink.lines();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), n, "every point, once");
    assert!(wait_until(secs(5), || metric(
        &p.admin,
        "polymur_proxy_queue_points"
    ) == 0));
}

/// SIGTERM straight after a burst, the gateway down: batches still being sealed
/// (compressed for the memory queue) when the signal arrives reach the queue before it
/// drains, so all of them are in the spool at exit, and a restarted proxy delivers every
/// line once the gateway is up.
#[test]
fn sigterm_during_a_burst_spools_every_batch_being_sealed() {
    let setup = SpoolingProxy::new();
    let p = setup.start(&["-flush-size", "1000"]);
    let sent = lines("burst", 200_000);
    send_lines(&p.listen, &body(&sent)).unwrap();
    p.proc.term();
    assert!(p.proc.wait_exit(secs(60)).is_some_and(|s| s.success()));
    assert!(!p.proc.has_log("are lost"), "{}", p.proc.all_output());
    let _gw = gateway_on(
        setup.http,
        &setup.sink.addr(),
        &["-outgoing-queue-cap=1000000"],
    );
    let p2 = setup.start(&[]);
    assert_all_arrive(&setup.sink, &sent, secs(60), &p2.proc);
}
