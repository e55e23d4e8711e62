//! polymur-gateway as a real process: every row of PROTOCOL.md's endpoint table,
//! bad bodies, limits, validation, key prefix, flags and env, key file reload,
//! backpressure and shutdown. Destinations are in-test line sinks.

use std::io::Write;

use crate::support::*;

const GW: &str = GATEWAY_BIN;

fn gateway_env(args: &[&str], envs: &[(&str, &str)]) -> Gateway {
    Gateway::start_env(args, envs)
}

fn gateway(args: &[&str]) -> Gateway {
    Gateway::start(args)
}

fn batch(lines: &[String]) -> Vec<u8> {
    let mut s = lines.join("\n");
    s.push('\n');
    gzip(s.as_bytes())
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    let ts = now_ts();
    (0..n).map(|i| format!("{prefix}.m{i} {i} {ts}")).collect()
}

const KEY: (&str, &str) = ("X-Polymur-Key", "123");

#[test]
fn ping_answers_per_protocol_table() {
    let gw = gateway(&["-dev-mode"]);
    let ok = http_post(&gw.http, "/ping", &[KEY], vec![]);
    assert_eq!((ok.status, ok.body.as_str()), (200, "key is valid\n"));
    // The old proxy spells the header X-polymur-key: names are case-insensitive.
    let ok = http_post(&gw.http, "/ping", &[("X-polymur-key", "123")], vec![]);
    assert_eq!(ok.status, 200);
    let bad = http_post(&gw.http, "/ping", &[("X-Polymur-Key", "nope")], vec![]);
    assert_eq!((bad.status, bad.body.as_str()), (401, "invalid key"));
    assert!(bad.closed, "connection must be closed after 401");
    let missing = http_post(&gw.http, "/ping", &[], vec![]);
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (401, "invalid key")
    );
}

#[test]
fn ingest_delivers_exact_lines_and_refuses_bad_keys() {
    let sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-destinations", &sink.addr()]);
    let sent = lines("e2e", 100);
    let r = http_post(&gw.http, "/ingest", &[KEY], batch(&sent));
    assert_eq!((r.status, r.body.as_str()), (200, "Batch Received\n"));
    assert!(sink.wait_count(100, secs(10)));
    assert_eq!(sink.lines(), sent);

    let bad = http_post(
        &gw.http,
        "/ingest",
        &[("X-Polymur-Key", "124")],
        batch(&lines("x", 5)),
    );
    assert_eq!((bad.status, bad.body.as_str()), (401, "invalid key"));
    assert!(bad.closed);
    assert_eq!(
        sink.wait_idle(millis(300), secs(3)),
        100,
        "nothing of a refused batch arrives"
    );
}

#[test]
fn keep_alive_connection_carries_many_batches() {
    let sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-destinations", &sink.addr()]);
    let mut conn = HttpConn::connect(&gw.http).unwrap();
    let mut all = Vec::new();
    for i in 0..20 {
        let l = lines(&format!("ka{i}"), 50);
        let r = conn.post("/ingest", &[KEY], &batch(&l)).unwrap();
        assert_eq!(r.status, 200);
        all.extend(l);
    }
    assert!(sink.wait_count(1000, secs(10)));
    assert_eq!(sink.lines(), all);
}

#[test]
fn malformed_and_truncated_bodies_get_400_and_harm_nothing_else() {
    let sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-destinations", &sink.addr()]);
    let r = http_post(&gw.http, "/ingest", &[KEY], b"a.b.c 1 2\n".to_vec());
    assert_eq!((r.status, r.body.as_str()), (400, "Batch Malformed\n"));
    let good = batch(&lines("trunc", 500));
    let r = http_post(&gw.http, "/ingest", &[KEY], good[..good.len() / 2].to_vec());
    assert_eq!((r.status, r.body.as_str()), (400, "Batch Malformed\n"));
    let r = http_post(&gw.http, "/ingest", &[KEY], vec![]);
    assert_eq!(r.status, 400);
    // The next batch is untouched by the bad ones.
    let next = lines("after", 10);
    let r = http_post(&gw.http, "/ingest", &[KEY], batch(&next));
    assert_eq!(r.status, 200);
    assert!(sink.wait_count(10, secs(10)));
    assert_eq!(sink.wait_idle(millis(300), secs(3)), 10);
    assert_eq!(sink.lines(), next);
}

#[test]
fn multi_member_gzip_is_one_batch() {
    let sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-destinations", &sink.addr()]);
    let a = lines("mm.a", 3);
    let b = lines("mm.b", 3);
    let mut body = batch(&a);
    body.extend(batch(&b));
    let r = http_post(&gw.http, "/ingest", &[KEY], body);
    assert_eq!(r.status, 200);
    assert!(sink.wait_count(6, secs(10)));
    assert_eq!(sink.lines(), [a, b].concat());
}

#[test]
fn invalid_lines_are_dropped_valid_ones_pass_and_last_line_is_whole() {
    let sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-destinations", &sink.addr()]);
    let ts = now_ts();
    let body = format!(
        "ok.one 1 {ts}\nonly.two 1\nbad.value abc {ts}\nbad.ts 1 soon\nctl\u{1}byte 1 {ts}\nnan.value nan {ts}\nok.two 2.5 {ts}\nok.last 42 {ts}"
    );
    let r = http_post(&gw.http, "/ingest", &[KEY], gzip(body.as_bytes()));
    assert_eq!(r.status, 200);
    assert!(sink.wait_count(3, secs(10)));
    assert_eq!(sink.wait_idle(millis(300), secs(3)), 3);
    assert_eq!(
        sink.lines(),
        vec![
            format!("ok.one 1 {ts}"),
            format!("ok.two 2.5 {ts}"),
            format!("ok.last 42 {ts}")
        ]
    );
    assert!(
        gw.proc
            .wait_log("Dropped 5 invalid lines from key dev", secs(5)),
        "{}",
        gw.proc.all_output()
    );
}

#[test]
fn key_prefix_namespaces_every_line() {
    let sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-key-prefix", "-destinations", &sink.addr()]);
    let ts = now_ts();
    let r = http_post(
        &gw.http,
        "/ingest",
        &[KEY],
        gzip(format!("web01.app.rate 5 {ts}\nweb02.app.rate 6 {ts}").as_bytes()),
    );
    assert_eq!(r.status, 200);
    assert!(sink.wait_count(2, secs(10)));
    assert_eq!(
        sink.lines(),
        vec![
            format!("dev.web01.app.rate 5 {ts}"),
            format!("dev.web02.app.rate 6 {ts}")
        ]
    );
}

#[test]
fn gzip_bomb_gets_413_with_bounded_memory_and_the_gateway_stays_up() {
    let sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-destinations", &sink.addr()]);
    // 2 GiB of zeros as 2048 gzip members of 1 MiB each: about 2 MB on the wire.
    let member = gzip(&vec![b'0'; 1 << 20]);
    let mut bomb = Vec::with_capacity(member.len() * 2048);
    for _ in 0..2048 {
        bomb.extend_from_slice(&member);
    }
    // Three at once: the decode budget (-incoming-queue-cap) lets one decode to the
    // cap at a time, so memory stays bounded however many clients send bombs. One that
    // waits for the budget past the admission deadline is answered 503 and retries, as
    // the proxy does.
    let bomb = std::sync::Arc::new(bomb);
    let senders: Vec<_> = (0..3)
        .map(|_| {
            let (http, bomb) = (gw.http.clone(), bomb.clone());
            std::thread::spawn(move || http_post_retrying(&http, "/ingest", &[KEY], &bomb))
        })
        .collect();
    for s in senders {
        let r = s.join().unwrap();
        assert_eq!((r.status, r.body.as_str()), (413, "Batch Too Large\n"));
    }
    // A member whose trailer lies about its size is corrupt, not large.
    let mut liar = gzip(b"x 1 2\n");
    let n = liar.len();
    liar[n - 4..].copy_from_slice(&(2u32 << 30).to_le_bytes());
    let r = http_post(&gw.http, "/ingest", &[KEY], liar);
    assert_eq!((r.status, r.body.as_str()), (400, "Batch Malformed\n"));
    let peak = gw.proc.peak_rss();
    assert!(peak < 400 << 20, "peak RSS {} MiB", peak >> 20);
    let after = lines("after.bomb", 5);
    let r = http_post(&gw.http, "/ingest", &[KEY], batch(&after));
    assert_eq!(r.status, 200);
    assert!(sink.wait_count(5, secs(10)));
}

#[test]
fn body_and_batch_limits_answer_413() {
    let sink = LineSink::start();
    let gw = gateway(&[
        "-dev-mode",
        "-destinations",
        &sink.addr(),
        "-max-body-bytes",
        "1K",
        "-max-batch-bytes=64K",
    ]);
    // Incompressible body over 1 KiB.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let r = http_post(&gw.http, "/ingest", &[KEY], noise);
    assert_eq!(r.status, 413);
    // Small body, large batch.
    let big = lines("big", 5000);
    let body = batch(&big);
    assert!(body.len() < 1024 * 64);
    let r = http_post(&gw.http, "/ingest", &[KEY], body);
    assert_eq!(r.status, 413, "{}", r.body);
    let ok = lines("small", 10);
    assert_eq!(
        http_post(&gw.http, "/ingest", &[KEY], batch(&ok)).status,
        200
    );
    assert!(sink.wait_count(10, secs(10)));
    assert_eq!(sink.wait_idle(millis(300), secs(3)), 10);
}

#[test]
fn client_address_comes_from_x_forwarded_for_and_keys_never_reach_logs() {
    let gw = gateway(&["-dev-mode"]);
    let r = http_post(
        &gw.http,
        "/ingest",
        &[
            ("X-Polymur-Key", "s3cret-guess-key"),
            ("X-Forwarded-For", "203.0.113.7, 10.0.0.1"),
        ],
        batch(&lines("xff", 1)),
    );
    assert_eq!(r.status, 401);
    assert!(
        gw.proc.wait_log("Invalid key from 203.0.113.7", secs(5)),
        "{}",
        gw.proc.all_output()
    );
    let r = http_post(&gw.http, "/ping", &[KEY], vec![]);
    assert_eq!(r.status, 200);
    assert!(gw
        .proc
        .wait_log("Ping from 127.0.0.1 with key dev", secs(5)));
    let out = gw.proc.all_output();
    assert!(
        !out.contains("s3cret-guess-key"),
        "a presented key was logged"
    );
    assert!(!out.contains(" 123"), "the dev key was logged: {out}");
}

#[test]
fn env_vars_and_single_dash_flags_configure_the_gateway() {
    let sink = LineSink::start();
    let dest = format!("-destinations={}", sink.addr());
    let gw = gateway_env(
        &[&dest],
        &[
            ("POLYMUR_GW_DEV_MODE", "true"),
            ("POLYMUR_GW_KEY_PREFIX", "true"),
        ],
    );
    let ts = now_ts();
    let r = http_post(
        &gw.http,
        "/ingest",
        &[KEY],
        gzip(format!("a.b 1 {ts}\n").as_bytes()),
    );
    assert_eq!(r.status, 200);
    assert!(sink.wait_count(1, secs(10)));
    assert_eq!(sink.lines(), vec![format!("dev.a.b 1 {ts}")]);

    // Port from the environment.
    let port = free_port();
    let p = Proc::spawn(
        GW,
        &[
            "-dev-mode",
            "-listen-addr=127.0.0.1",
            "-api-addr=",
            "-stat-addr=",
        ],
        &[("POLYMUR_GW_LISTEN_HTTP_PORT", &port.to_string())],
    );
    assert!(
        p.wait_log(&format!("HTTP listening on 127.0.0.1:{port}"), secs(10)),
        "{}",
        p.all_output()
    );
}

#[test]
fn help_lists_flags_with_env_names_and_bad_flags_fail_clearly() {
    let out = Proc::run(GW, &["-h"], &[], secs(10));
    assert!(out.success());
    for flag in [
        "--api-addr",
        "--cert",
        "--console-out",
        "--destinations",
        "--dev-mode",
        "--distribution",
        "--incoming-queue-cap",
        "--key ",
        "--key-prefix",
        "--listen-addr",
        "--listen-http-port",
        "--listen-https-port",
        "--metrics-flush",
        "--outgoing-queue-cap",
        "--stat-addr",
        "POLYMUR_GW_LISTEN_HTTP_PORT",
        "POLYMUR_GW_DEV_MODE",
        "localhost:2030",
        "4096",
        "32768",
    ] {
        assert!(
            out.stdout.contains(flag),
            "-h lacks {flag}:\n{}",
            out.stdout
        );
    }
    let out = Proc::run(GW, &["-no-such-flag"], &[], secs(10));
    assert!(!out.success());
    assert!(out.stderr.contains("no-such-flag"), "{}", out.stderr);
    let out = Proc::run(
        GW,
        &["-dev-mode", "-outgoing-queue-cap", "many"],
        &[],
        secs(10),
    );
    assert!(!out.success());
    assert!(out.stderr.contains("outgoing-queue-cap"), "{}", out.stderr);
    let out = Proc::run(
        GW,
        &["-dev-mode", "-destinations", "nohostport"],
        &[],
        secs(10),
    );
    assert!(!out.success());
    assert!(out.stderr.contains("nohostport"), "{}", out.stderr);
    // More worker threads than the OS gives used to panic inside the runtime.
    let out = Proc::run(GW, &["-dev-mode", "-threads", "100000"], &[], secs(20));
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("-threads")
            && out.stderr.contains("1024")
            && !out.stderr.contains("panicked"),
        "{}",
        out.stderr
    );
}

/// A key name that cannot stand in front of a metric (`;` starts Graphite tags, `/` is a
/// whisper directory) is named in a warning when the keys are loaded, once; the key
/// still works (the original accepted such names, and refusing would cut a site off).
#[test]
fn key_names_that_break_prefixed_metrics_are_warned_about_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(&path, "fine k0\nevil;tenant=other k1\nsite/x k2\n").unwrap();
    let sink = LineSink::start();
    let gw = gateway(&[
        "-keys-file",
        path.to_str().unwrap(),
        "-key-prefix",
        "-key-sync-interval",
        "1s",
        "-destinations",
        &sink.addr(),
    ]);
    assert!(
        gw.proc
            .wait_log("API key name \"evil;tenant=other\" contains ';'", secs(10)),
        "{}",
        gw.proc.all_output()
    );
    assert!(gw.proc.has_log("API key name \"site/x\" contains '/'"));
    assert!(!gw.proc.has_log("API key name \"fine\""));
    // A later change to the file warns about new names only.
    std::fs::write(
        &path,
        "fine k0\nevil;tenant=other k1\nsite/x k2\nother k3\n",
    )
    .unwrap();
    assert!(
        gw.proc.wait_log("API keys refreshed: 1 new", secs(10)),
        "{}",
        gw.proc.all_output()
    );
    assert_eq!(
        gw.proc.log_count("API key name \"evil;tenant=other\""),
        1,
        "{}",
        gw.proc.all_output()
    );
}

#[test]
fn key_file_is_reloaded_and_a_broken_file_keeps_the_last_good_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(&path, "# tenants\ncustomer-a key-aaa\ncustomer-b key-bbb\n").unwrap();
    let sink = LineSink::start();
    let gw = gateway(&[
        "-keys-file",
        path.to_str().unwrap(),
        "-key-prefix",
        "-destinations",
        &sink.addr(),
    ]);
    let ts = now_ts();
    let post = |key: &str, metric: &str| {
        http_post(
            &gw.http,
            "/ingest",
            &[("X-Polymur-Key", key)],
            gzip(format!("{metric} 1 {ts}\n").as_bytes()),
        )
        .status
    };
    assert_eq!(post("key-aaa", "m.a"), 200);
    assert_eq!(post("key-bbb", "m.b"), 200);
    assert!(sink.wait_count(2, secs(10)));
    assert_eq!(
        sink.lines(),
        vec![
            format!("customer-a.m.a 1 {ts}"),
            format!("customer-b.m.b 1 {ts}")
        ]
    );

    // Revoke customer-b: refused within a few seconds.
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "customer-a key-aaa").unwrap();
    drop(f);
    assert!(wait_until(secs(5), || post("key-bbb", "m.b") == 401));
    assert!(gw
        .proc
        .wait_log("API keys refreshed: 0 new, 1 removed", secs(5)));

    // A broken file keeps the last good set and says why.
    std::fs::write(&path, "customer-a key-aaa extra-field\n").unwrap();
    assert!(
        gw.proc.wait_log("line 1: expected", secs(5)),
        "{}",
        gw.proc.all_output()
    );
    assert_eq!(post("key-aaa", "m.a2"), 200);
}

#[test]
fn full_queues_answer_503_and_every_acknowledged_line_arrives() {
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let gw = gateway(&[
        "-dev-mode",
        "-destinations",
        &dest,
        "-outgoing-queue-cap",
        "3000",
    ]);
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..6 {
        let l = lines(&format!("bp{i}"), 1000);
        let r = http_post(&gw.http, "/ingest", &[KEY], batch(&l));
        match r.status {
            200 => acked.extend(l),
            503 => {
                refused += 1;
                assert_eq!(r.header("Retry-After"), Some("1"));
            }
            s => panic!("unexpected status {s}: {}", r.body),
        }
    }
    assert_eq!(
        acked.len(),
        3000,
        "three 1000-line batches fill a 3000-point queue"
    );
    assert_eq!(refused, 3);
    let sink = LineSink::start_on(port);
    assert!(sink.wait_count(3000, secs(20)), "got {}", sink.count());
    assert_eq!(sink.wait_idle(millis(300), secs(3)), 3000);
    assert_eq!(sink.lines(), acked);
    // Once drained, batches are accepted again.
    let more = lines("bp.after", 10);
    assert!(wait_until(secs(5), || http_post(
        &gw.http,
        "/ingest",
        &[KEY],
        batch(&more)
    )
    .status
        == 200));
}

#[test]
fn sigterm_drains_queues_and_exits_zero() {
    let sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-destinations", &sink.addr()]);
    let mut sent = Vec::new();
    for i in 0..10 {
        let l = lines(&format!("term{i}"), 500);
        assert_eq!(
            http_post(&gw.http, "/ingest", &[KEY], batch(&l)).status,
            200
        );
        sent.extend(l);
    }
    gw.proc.term();
    let status = gw
        .proc
        .wait_exit(secs(20))
        .expect("gateway exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(sink.wait_count(5000, secs(5)));
    assert_eq!(sink.lines(), sent);
}

#[test]
fn console_out_prints_lines_to_stdout() {
    let gw = gateway(&["-dev-mode", "-console-out"]);
    let l = lines("console", 3);
    assert_eq!(
        http_post(&gw.http, "/ingest", &[KEY], batch(&l)).status,
        200
    );
    assert!(wait_until(secs(5), || gw.proc.stdout_lines().len() >= 3));
    assert_eq!(gw.proc.stdout_lines(), l);
}

#[test]
fn https_listener_serves_the_same_routes() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate(dir.path());
    let sink = LineSink::start();
    let https = free_port();
    let https_port = https.to_string();
    let gw = gateway(&[
        "-dev-mode",
        "-destinations",
        &sink.addr(),
        "-cert",
        tls.cert.to_str().unwrap(),
        "-key",
        tls.key.to_str().unwrap(),
        "-listen-https-port",
        &https_port,
    ]);
    assert!(gw
        .proc
        .wait_log(&format!("HTTPS listening on 127.0.0.1:{https}"), secs(5)));
    let addr = format!("127.0.0.1:{https}");
    let r = https_post(&addr, "/ping", &[KEY], vec![], &tls.cert);
    assert_eq!((r.status, r.body.as_str()), (200, "key is valid\n"));
    let l = lines("tls", 20);
    let r = https_post(&addr, "/ingest", &[KEY], batch(&l), &tls.cert);
    assert_eq!((r.status, r.body.as_str()), (200, "Batch Received\n"));
    assert!(sink.wait_count(20, secs(10)));
    assert_eq!(sink.lines(), l);
    let r = https_post(
        &addr,
        "/ingest",
        &[("X-Polymur-Key", "x")],
        batch(&l),
        &tls.cert,
    );
    assert_eq!(r.status, 401);
}

#[test]
fn runtime_api_and_runstats_answer_per_protocol() {
    let sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-destinations", &sink.addr()]);
    let get = tcp_request(&gw.api, "getdest\n").unwrap();
    let doc: serde_json::Value = serde_json::from_str(get.trim()).unwrap();
    assert_eq!(doc["active"], serde_json::json!([sink.addr()]));
    assert!(doc["registered"][sink.addr()]
        .as_str()
        .unwrap()
        .contains('T'));
    assert_eq!(
        tcp_request(&gw.api, "putdest\n").unwrap(),
        "Must provide destination\n"
    );
    assert_eq!(
        tcp_request(&gw.api, "deldest\n").unwrap(),
        "Must provide destination\n"
    );
    assert_eq!(
        tcp_request(&gw.api, "frobnicate x\n").unwrap(),
        "Not a command: frobnicate\n"
    );
    let stats = tcp_request(&gw.stat, "stats\n").unwrap();
    let doc: serde_json::Value = serde_json::from_str(stats.trim()).unwrap();
    // The original's nested shape (PROTOCOL.md "Runstats").
    assert!(doc["service"]["start-time"].as_str().unwrap().contains('T'));
    assert!(doc["service"]["uptime-seconds"].is_u64());
    let mem = &doc["runtime-meminfo"];
    assert!(mem["rss-bytes"].as_u64().unwrap() > 0, "{doc}");
    assert!(mem["peak-rss-bytes"].as_u64().unwrap() >= mem["rss-bytes"].as_u64().unwrap());
    assert_eq!(doc.as_object().unwrap().len(), 2, "{doc}");
    assert_eq!(
        tcp_request(&gw.stat, "bogus\n").unwrap(),
        "Not a command: bogus\n"
    );
}

#[test]
fn slow_or_idle_clients_cannot_hold_a_connection() {
    use std::io::{Read, Write};
    let gw = gateway(&["-dev-mode", "-read-timeout", "1s"]);
    // Connected, sends nothing: closed after the read timeout.
    let mut idle = std::net::TcpStream::connect(&gw.http).unwrap();
    idle.set_read_timeout(Some(secs(10))).unwrap();
    let t = std::time::Instant::now();
    let mut buf = [0u8; 256];
    assert_eq!(idle.read(&mut buf).unwrap(), 0);
    assert!(t.elapsed() < secs(5));
    // Announces a body and stalls: 408, then closed.
    let mut slow = std::net::TcpStream::connect(&gw.http).unwrap();
    slow.set_read_timeout(Some(secs(10))).unwrap();
    slow.write_all(
        b"POST /ingest HTTP/1.1\r\nHost: x\r\nX-Polymur-Key: 123\r\nContent-Length: 100\r\n\r\nabc",
    )
    .unwrap();
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(t.elapsed() < secs(8));
}

#[test]
fn other_methods_get_405_with_allow_post_and_nothing_is_forwarded() {
    let sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-destinations", &sink.addr()]);
    let body = batch(&lines("m405", 3));
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        for path in ["/ingest", "/ping", "//ingest", "//ping"] {
            let r = try_http_request(method, &gw.http, path, &[KEY], &body)
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            assert_eq!(r.status, 405, "{method} {path}: {}", r.body);
            assert_eq!(r.header("allow"), Some("POST"), "{method} {path}");
        }
    }
    // HEAD gets the status and headers, without a body.
    let r = try_http_request("HEAD", &gw.http, "/ingest", &[KEY], &[]).expect("HEAD /ingest");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    // Unknown paths stay 404 whatever the method.
    let r = http_get(&gw.http, "/other", &[KEY]).expect("GET /other");
    assert_eq!(r.status, 404);
    assert_eq!(
        sink.wait_idle(millis(300), secs(3)),
        0,
        "no line of a refused method reaches a destination"
    );
}

#[test]
fn a_doubled_slash_is_served_like_the_path() {
    // A gateway URL configured with a trailing slash makes the proxy ask for //ping, //ingest.
    let sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-destinations", &sink.addr()]);
    let ok = http_post(&gw.http, "//ping", &[KEY], vec![]);
    assert_eq!((ok.status, ok.body.as_str()), (200, "key is valid\n"));
    let bad = http_post(&gw.http, "//ping", &[("X-Polymur-Key", "nope")], vec![]);
    assert_eq!((bad.status, bad.body.as_str()), (401, "invalid key"));
    let sent = lines("dbl", 20);
    let r = http_post(&gw.http, "//ingest", &[KEY], batch(&sent));
    assert_eq!((r.status, r.body.as_str()), (200, "Batch Received\n"));
    assert!(sink.wait_count(20, secs(10)));
    assert_eq!(sink.lines(), sent);
}
