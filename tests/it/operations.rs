//! Operations surface of the gateway: Prometheus counters that match what was
//! sent, readiness, the status page (and a Chromium render of it), the JSON
//! destination API, self-metrics through the pipeline, SIGHUP certificate reload.

use std::collections::BTreeMap;

use crate::support::*;

const KEY: (&str, &str) = ("X-Polymur-Key", "123");

fn gateway(args: &[&str]) -> Gateway {
    Gateway::start(args)
}

/// `/metrics` as a map from series (name + labels) to value.
fn metrics(admin: &str) -> BTreeMap<String, f64> {
    let r = http_get(admin, "/metrics", &[]).unwrap();
    assert_eq!(r.status, 200);
    r.body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse::<f64>().unwrap())
        })
        .collect()
}

#[test]
fn prometheus_counters_equal_what_was_sent_forwarded_and_dropped() {
    let sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-destinations", &sink.addr()]);
    let ts = now_ts();
    let mut good = 0;
    for b in 0..7 {
        let mut body = String::new();
        for i in 0..300 {
            body.push_str(&format!("ops.b{b}.m{i} {i} {ts}\n"));
            good += 1;
        }
        body.push_str("two fields\nbad.value x 1\nbad.ts 1 y\n");
        assert_eq!(
            http_post(&gw.http, "/ingest", &[KEY], gzip(body.as_bytes())).status,
            200
        );
    }
    assert_eq!(
        http_post(&gw.http, "/ingest", &[KEY], b"not gzip".to_vec()).status,
        400
    );
    assert_eq!(
        http_post(&gw.http, "/ingest", &[("X-Polymur-Key", "no")], vec![]).status,
        401
    );
    assert!(sink.wait_count(good, secs(10)));
    let dest = sink.addr();
    assert!(wait_until(secs(5), || {
        metrics(&gw.admin).get(&format!(
            "polymur_forwarded_points_total{{destination=\"{dest}\"}}"
        )) == Some(&(good as f64))
    }));
    let m = metrics(&gw.admin);
    assert_eq!(m["polymur_received_points_total"], good as f64);
    assert_eq!(m["polymur_received_batches_total"], 7.0);
    assert_eq!(
        m["polymur_invalid_lines_total{reason=\"field_count\"}"],
        7.0
    );
    assert_eq!(m["polymur_invalid_lines_total{reason=\"value\"}"], 7.0);
    assert_eq!(m["polymur_invalid_lines_total{reason=\"timestamp\"}"], 7.0);
    assert_eq!(
        m["polymur_invalid_lines_total{reason=\"control_byte\"}"],
        0.0
    );
    assert_eq!(
        m[&format!("polymur_destination_queue_points{{destination=\"{dest}\"}}")],
        0.0
    );
    assert_eq!(
        m[&format!("polymur_destination_up{{destination=\"{dest}\"}}")],
        1.0
    );
    assert_eq!(
        m["polymur_http_requests_total{path=\"/ingest\",code=\"200\"}"],
        7.0
    );
    assert_eq!(
        m["polymur_http_requests_total{path=\"/ingest\",code=\"400\"}"],
        1.0
    );
    assert_eq!(
        m["polymur_http_requests_total{path=\"/ingest\",code=\"401\"}"],
        1.0
    );
    assert_eq!(m["polymur_batch_latency_seconds_count"], 9.0);
    assert_eq!(m["polymur_batch_latency_seconds_bucket{le=\"+Inf\"}"], 9.0);
    assert_eq!(
        m["polymur_key_received_points_total{key_name=\"dev\"}"],
        good as f64
    );
    assert_eq!(m["polymur_key_names"], 1.0);
    assert_eq!(m["polymur_key_sync_up"], 1.0);
}

#[test]
fn readiness_follows_the_only_destination() {
    let mut sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-destinations", &sink.addr()]);
    assert_eq!(http_get(&gw.admin, "/healthz", &[]).unwrap().body, "ok\n");
    assert!(wait_until(secs(5), || http_get(&gw.admin, "/readyz", &[])
        .unwrap()
        .status
        == 200));
    sink.stop();
    // The writer notices the closed connection while idle.
    assert!(wait_until(secs(5), || http_get(&gw.admin, "/readyz", &[])
        .unwrap()
        .status
        == 503));
    let r = http_get(&gw.admin, "/readyz", &[]).unwrap();
    assert!(r.body.contains("no destination is connected"), "{}", r.body);
    assert_eq!(http_get(&gw.admin, "/healthz", &[]).unwrap().status, 200);
    sink.restart();
    assert!(wait_until(secs(10), || http_get(&gw.admin, "/readyz", &[])
        .unwrap()
        .status
        == 200));
}

#[test]
fn readiness_ends_when_shutdown_closes_the_listeners() {
    use std::io::Write;
    let sink = LineSink::start();
    let gw = gateway(&["-dev-mode", "-destinations", &sink.addr()]);
    assert!(wait_until(secs(5), || http_get(&gw.admin, "/readyz", &[])
        .unwrap()
        .status
        == 200));
    // A request in flight (headers sent, body not yet) keeps the process in its
    // first shutdown stage, with the admin endpoint still answering.
    let mut inflight = std::net::TcpStream::connect(&gw.http).unwrap();
    inflight
        .write_all(
            b"POST /ingest HTTP/1.1\r\nHost: gw\r\nX-Polymur-Key: 123\r\nContent-Length: 64\r\n\r\n",
        )
        .unwrap();
    gw.proc.term();
    assert!(gw.proc.wait_log("Shutting down", secs(10)));
    assert!(wait_until(secs(5), || http_get(&gw.admin, "/readyz", &[])
        .unwrap()
        .status
        == 503));
    let r = http_get(&gw.admin, "/readyz", &[]).unwrap();
    assert!(r.body.contains("not listening"), "{}", r.body);
    drop(inflight);
    assert!(gw.proc.wait_exit(secs(20)).is_some_and(|s| s.success()));
}

#[test]
fn status_page_shows_destinations_keys_and_drops_but_never_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        "customer-a very-secret-key-a\ncustomer-b very-secret-key-b\n",
    )
    .unwrap();
    let sink = LineSink::start();
    let gw = gateway(&[
        "-keys-file",
        keys.to_str().unwrap(),
        "-destinations",
        &sink.addr(),
    ]);
    let body = gzip(format!("a.b 1 {}\nbroken\n", now_ts()).as_bytes());
    assert_eq!(
        http_post(
            &gw.http,
            "/ingest",
            &[("X-Polymur-Key", "very-secret-key-a")],
            body
        )
        .status,
        200
    );
    let page = http_get(&gw.admin, "/", &[]).unwrap();
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.body;
    assert!(html.contains("http-equiv=refresh"), "refreshes itself");
    assert!(html.contains(&sink.addr()));
    assert!(html.contains("customer-a") && html.contains("customer-b"));
    assert!(html.contains("2 key names"));
    assert!(
        html.contains("expected 3 fields `&lt;metric&gt; &lt;value&gt; &lt;timestamp&gt;`"),
        "invalid lines by reason"
    );
    assert!(
        !html.contains("very-secret-key"),
        "a key reached the status page"
    );

    if std::path::Path::new("/usr/bin/chromium").exists() {
        let shot = dir.path().join("status.png");
        let profile = dir.path().join("chromium-profile");
        let out = std::process::Command::new("/usr/bin/chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                &format!("--user-data-dir={}", profile.display()),
                &format!("--screenshot={}", shot.display()),
                "--window-size=1200,900",
                &format!("http://{}/", gw.admin),
            ])
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read(&shot).expect("screenshot written");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 10_000, "a rendered page, not a blank image");
    }
}

#[test]
fn json_destination_api_mirrors_the_tcp_api() {
    let (a, b) = (LineSink::start(), LineSink::start());
    let gw = gateway(&["-dev-mode", "-destinations", &a.addr()]);
    let doc: serde_json::Value =
        serde_json::from_str(&http_get(&gw.admin, "/api/destinations", &[]).unwrap().body).unwrap();
    assert_eq!(doc["active"], serde_json::json!([a.addr()]));
    let put = try_http_request(
        "PUT",
        &gw.admin,
        &format!("/api/destinations/{}", b.addr()),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(
        (put.status, put.body.clone()),
        (200, format!("Registered destination: {}\n", b.addr()))
    );
    let del = try_http_request(
        "DELETE",
        &gw.admin,
        "/api/destinations",
        &[],
        a.addr().as_bytes(),
    )
    .unwrap();
    assert_eq!(
        (del.status, del.body.clone()),
        (200, format!("Unregistered destination: {}\n", a.addr()))
    );
    let doc: serde_json::Value =
        serde_json::from_str(&http_get(&gw.admin, "/api/destinations", &[]).unwrap().body).unwrap();
    assert_eq!(doc["active"], serde_json::json!([b.addr()]));
    let l = format!("after.change 1 {}", now_ts());
    assert_eq!(
        http_post(
            &gw.http,
            "/ingest",
            &[KEY],
            gzip(format!("{l}\n").as_bytes())
        )
        .status,
        200
    );
    assert!(b.wait_count(1, secs(10)));
    assert_eq!(b.lines(), vec![l]);
    assert_eq!(a.wait_idle(millis(300), secs(2)), 0);
}

#[test]
fn self_metrics_reach_the_destination() {
    let sink = LineSink::start();
    let gw = gateway(&[
        "-dev-mode",
        "-metrics-flush",
        "1",
        "-destinations",
        &sink.addr(),
    ]);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let dest = sink.addr().replace('.', "_");
    assert!(wait_until(secs(10), || sink
        .lines()
        .iter()
        .any(|l| l.starts_with(&format!(
            "{host}.polymur.outgoing-queue.{dest}.limit 4096 "
        )))));
    let lines = sink.lines();
    for name in [
        "rate",
        "incoming-queue.current-size",
        "incoming-queue.limit",
        "memory.rss-bytes",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{host}.polymur.{name} "))),
            "{name} missing: {lines:?}"
        );
    }
    let _ = gw;
}

#[test]
fn sighup_reloads_the_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = (dir.path().join("one"), dir.path().join("two"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let first = TlsFiles::generate(&d1);
    let second = TlsFiles::generate(&d2);
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let https = free_port();
    let https_port = https.to_string();
    let gw = gateway(&[
        "-dev-mode",
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
        "-listen-https-port",
        &https_port,
    ]);
    let addr = format!("127.0.0.1:{https}");
    let ping = |ca: &std::path::Path| {
        HttpConn::connect_tls(&addr, ca).and_then(|mut c| c.post("/ping", &[KEY], &[]))
    };
    assert_eq!(ping(&first.cert).unwrap().status, 200);
    assert!(
        ping(&second.cert).is_err(),
        "the second certificate is not served yet"
    );
    // A broken pair keeps the current certificate.
    std::fs::write(&cert, "not a certificate").unwrap();
    gw.proc.signal("HUP");
    assert!(
        gw.proc
            .wait_log("keeping the current TLS certificate", secs(5)),
        "{}",
        gw.proc.all_output()
    );
    assert_eq!(ping(&first.cert).unwrap().status, 200);
    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    gw.proc.signal("HUP");
    assert!(gw.proc.wait_log("TLS certificate reloaded", secs(5)));
    assert_eq!(ping(&second.cert).unwrap().status, 200);
    assert!(ping(&first.cert).is_err(), "the old certificate is gone");
    assert!(gw.proc.is_running());
}

#[test]
fn sighup_reloads_the_destinations_file_and_keeps_it_when_broken() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("destinations");
    let (a, b) = (LineSink::start(), LineSink::start());
    std::fs::write(&file, format!("# Graphite\n{}\n", a.addr())).unwrap();
    let gw = gateway(&["-dev-mode", "-destinations-file", file.to_str().unwrap()]);
    let active = || -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(
            &http_get(&gw.admin, "/api/destinations", &[]).unwrap().body,
        )
        .unwrap()["active"]
            .clone()
    };
    assert_eq!(active(), serde_json::json!([a.addr()]));
    std::fs::write(&file, format!("{}\n", b.addr())).unwrap();
    gw.proc.signal("HUP");
    assert!(
        gw.proc.wait_log("1 added, 1 removed", secs(5)),
        "{}",
        gw.proc.all_output()
    );
    assert_eq!(active(), serde_json::json!([b.addr()]));
    let l = format!("reloaded.dest 1 {}", now_ts());
    assert_eq!(gw.ingest("123", &format!("{l}\n")).status, 200);
    assert!(b.wait_count(1, secs(10)));
    assert_eq!(b.lines(), vec![l]);
    assert_eq!(a.count(), 0);

    std::fs::write(&file, "not-a-destination\n").unwrap();
    gw.proc.signal("HUP");
    assert!(
        gw.proc
            .wait_log("keeping the current destinations", secs(5)),
        "{}",
        gw.proc.all_output()
    );
    assert_eq!(active(), serde_json::json!([b.addr()]));
    assert!(gw.proc.is_running());
}

#[test]
fn spool_depth_and_drops_are_counted_per_destination() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let dest = format!("127.0.0.1:{port}");
    let gw = gateway(&[
        "-dev-mode",
        "-destinations",
        &dest,
        "-spool-dir",
        dir.path().to_str().unwrap(),
    ]);
    let ts = now_ts();
    for b in 0..3 {
        let body: String = (0..5000)
            .map(|i| format!("sp.b{b}.m{i} 1 {ts}\n"))
            .collect();
        assert_eq!(gw.ingest("123", &body).status, 200);
    }
    let series = |name: &str| format!("{name}{{destination=\"{dest}\"}}");
    let m = metrics(&gw.admin);
    // The first batch fits the memory queue; the other two are spilled to disk.
    assert_eq!(m[&series("polymur_spooled_points_total")], 10000.0);
    assert!(m[&series("polymur_spool_bytes")] > 10000.0 * 10.0);
    assert_eq!(m[&series("polymur_destination_queue_points")], 5000.0);
    assert!(http_get(&gw.admin, "/", &[])
        .unwrap()
        .body
        .contains("spool bytes"));
    let sink = LineSink::start_on(port);
    assert!(sink.wait_count(15000, secs(20)));
    assert!(wait_until(secs(5), || {
        let m = metrics(&gw.admin);
        m[&series("polymur_spool_bytes")] == 0.0
            && m[&series("polymur_forwarded_points_total")] == 15000.0
    }));
    assert_eq!(
        metrics(&gw.admin)[&format!(
            "polymur_dropped_points_total{{destination=\"{dest}\",reason=\"overflow\"}}"
        )],
        0.0
    );
}
