//! Lines carbon cannot take never leave the gateway or the relay (issue 11): a real
//! carbon-cache (graphite-carbon 1.1.7) closes the connection on a line that is not
//! UTF-8 or longer than 16 384 bytes, so such a line, resent after every reconnect,
//! would stop the destination for everybody. Here a batch holds both, then normal
//! batches follow: every normal point must be read back from whisper, and the two
//! lines are counted under their own reasons in `/metrics`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;

use crate::support::*;

const RELAY: &str = env!("CARGO_BIN_EXE_polymur");
/// Series written in every batch; each gets one point per batch.
const SERIES: usize = 4;
const BATCHES: i64 = 4;

fn metrics(admin: &str) -> BTreeMap<String, f64> {
    let r = http_get(admin, "/metrics", &[]).unwrap();
    assert_eq!(r.status, 200);
    r.body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse::<f64>().ok()?))
        })
        .collect()
}

fn reason(m: &BTreeMap<String, f64>, r: &str) -> f64 {
    m[&format!("polymur_invalid_lines_total{{reason=\"{r}\"}}")]
}

/// Batch `b` of the normal series at `base + b`; the first one carries the two lines
/// carbon would close the connection on, between normal lines.
fn batch(prefix: &str, b: i64, base: i64) -> Vec<u8> {
    let mut body = Vec::new();
    for s in 0..SERIES {
        if b == 0 && s == SERIES / 2 {
            // `caf\xe9`: Latin-1, not UTF-8.
            body.extend_from_slice(format!("{prefix}.caf").as_bytes());
            body.push(0xe9);
            body.extend_from_slice(format!(".latin1 1 {base}\n").as_bytes());
            let long = format!("{prefix}.long.{} 1 {base}\n", "x".repeat(20_000));
            body.extend_from_slice(long.as_bytes());
        }
        let line = format!("{prefix}.s{s} {} {}\n", b * 10 + s as i64, base + b);
        body.extend_from_slice(line.as_bytes());
    }
    body
}

/// Every normal point of every batch is in whisper, with its value.
fn assert_all_stored(carbon: &CarbonCache, prefix: &str, base: i64) {
    for s in 0..SERIES {
        let name = format!("{prefix}.s{s}");
        let want: Vec<(i64, f64)> = (0..BATCHES)
            .map(|b| (base + b, (b * 10 + s as i64) as f64))
            .collect();
        let got = carbon.wait_points(&name, base - 1, want.len(), secs(30));
        assert_eq!(got, want, "{name}; carbon log:\n{}", carbon.log_tail());
    }
    let names = carbon.metrics();
    assert!(
        names
            .iter()
            .all(|n| !n.contains("long") && !n.contains("latin1")),
        "neither refused line reached carbon: {names:?}"
    );
}

#[test]
fn gateway_keeps_a_latin1_and_an_overlong_line_from_carbon() {
    let carbon = CarbonCache::start();
    let gw = Gateway::start(&["-dev-mode", "-destinations", &carbon.line_addr()]);
    let base = now_ts() - 60;
    for b in 0..BATCHES {
        let body = batch("lr.gw", b, base);
        if b == 0 {
            assert!(body.contains(&0xe9) && std::str::from_utf8(&body).is_err());
        }
        let r = http_post(
            &gw.http,
            "/ingest",
            &[("X-Polymur-Key", "123")],
            gzip(&body),
        );
        assert_eq!((r.status, r.body.as_str()), (200, "Batch Received\n"));
    }
    assert_all_stored(&carbon, "lr.gw", base);
    let m = metrics(&gw.admin);
    assert_eq!((reason(&m, "not_utf8"), reason(&m, "too_long")), (1.0, 1.0));
    assert_eq!(
        m["polymur_received_points_total"],
        (SERIES as i64 * BATCHES) as f64
    );
}

#[test]
fn relay_keeps_a_latin1_and_an_overlong_line_from_carbon() {
    let carbon = CarbonCache::start();
    let (listen, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let (api, stat) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let relay = Proc::spawn(
        RELAY,
        &[
            "-listen-addr",
            &listen,
            "-admin-addr",
            &admin,
            "-api-addr",
            &api,
            "-stat-addr",
            &stat,
            "-destinations",
            &carbon.line_addr(),
        ],
        &[],
    );
    assert!(
        relay.wait_log("Admin HTTP started", secs(15)),
        "{}",
        relay.all_output()
    );
    let base = now_ts() - 60;
    for b in 0..BATCHES {
        let mut c = TcpStream::connect(&listen).unwrap();
        c.write_all(&batch("lr.relay", b, base)).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
    }
    assert_all_stored(&carbon, "lr.relay", base);
    let m = metrics(&admin);
    assert_eq!((reason(&m, "not_utf8"), reason(&m, "too_long")), (1.0, 1.0));
}

/// collectd sends `nan` for every counter after each start: dropped as carbon-cache
/// drops it, counted under `nan`, and no WARN per line (debug only); an infinite
/// value is still an invalid value with its WARN.
#[test]
fn nan_is_counted_on_its_own_without_a_warning() {
    let sink = LineSink::start();
    let gw = Gateway::start(&["-dev-mode", "-destinations", &sink.addr()]);
    let ts = now_ts();
    let body = format!("c.a nan {ts}\nc.b NaN {ts}\nc.ok 1 {ts}\n");
    assert_eq!(gw.ingest("123", &body).status, 200);
    assert!(sink.wait_count(1, secs(10)));
    let m = metrics(&gw.admin);
    assert_eq!((reason(&m, "nan"), reason(&m, "value")), (2.0, 0.0));
    assert!(
        !gw.proc.has_log("invalid lines"),
        "{}",
        gw.proc.all_output()
    );
    std::thread::sleep(millis(1100)); // the invalid-line WARN is rate-limited per second
    assert_eq!(gw.ingest("123", &format!("c.inf inf {ts}\n")).status, 200);
    assert!(wait_until(secs(5), || gw.proc.has_log("invalid lines")));
    assert_eq!(reason(&metrics(&gw.admin), "value"), 1.0);
    let ours: Vec<String> = sink
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("c."))
        .collect();
    assert_eq!(ours, vec![format!("c.ok 1 {ts}")]);
}

/// The proxy applies the same rules before batching: the two lines are dropped and
/// counted there (the gateway behind it counts nothing), every normal point is stored.
#[test]
fn proxy_drops_the_same_lines_before_the_gateway_sees_them() {
    let carbon = CarbonCache::start();
    let gw = Gateway::start(&["-dev-mode", "-destinations", &carbon.line_addr()]);
    let (listen, admin, stat) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let gateway_url = format!("http://{}", gw.http);
    let proxy = Proc::spawn(
        env!("CARGO_BIN_EXE_polymur-proxy"),
        &[
            "-gateway",
            &gateway_url,
            "-api-key",
            "123",
            "-listen-addr",
            &listen,
            "-admin-addr",
            &admin,
            "-stat-addr",
            &stat,
            "-flush-interval",
            "200ms",
        ],
        &[],
    );
    assert!(
        proxy.wait_log("Listening on", secs(15)),
        "{}",
        proxy.all_output()
    );
    let base = now_ts() - 60;
    for b in 0..BATCHES {
        let mut c = TcpStream::connect(&listen).unwrap();
        c.write_all(&batch("lr.proxy", b, base)).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
    }
    assert_all_stored(&carbon, "lr.proxy", base);
    let m = metrics(&admin);
    assert_eq!((reason(&m, "not_utf8"), reason(&m, "too_long")), (1.0, 1.0));
    let g = metrics(&gw.admin);
    assert_eq!((reason(&g, "not_utf8"), reason(&g, "too_long")), (0.0, 0.0));
}

/// carbon-cache reads a timestamp of `-1` as "now", which for a queued or spooled point
/// would be its delivery time: the gateway stamps it with the time it received the batch.
#[test]
fn minus_one_timestamps_are_stamped_when_received() {
    let sink = LineSink::start();
    let gw = Gateway::start(&["-dev-mode", "-destinations", &sink.addr()]);
    let before = now_ts();
    assert_eq!(
        gw.ingest("123", "t.now 1 -1\nt.fixed 2 1700000000\n")
            .status,
        200
    );
    let after = now_ts();
    assert!(sink.wait_count(2, secs(10)));
    // Only this test's series (a port reused by another process's leftovers is ignored).
    let lines: Vec<String> = sink
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("t."))
        .collect();
    let stamped: i64 = lines[0].strip_prefix("t.now 1 ").unwrap().parse().unwrap();
    assert!((before..=after).contains(&stamped), "{lines:?}");
    assert_eq!(lines[1], "t.fixed 2 1700000000");
}
