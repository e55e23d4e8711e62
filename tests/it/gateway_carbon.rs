//! End to end with a real carbon-cache: gzip'ed batches in over HTTP, points read
//! back from the whisper files carbon wrote.

use crate::support::*;

#[test]
fn points_posted_to_the_gateway_are_stored_by_carbon_cache() {
    let carbon = CarbonCache::start();
    let gw = Gateway::start(&[
        "-dev-mode",
        "-key-prefix",
        "-destinations",
        &carbon.line_addr(),
    ]);
    let addr = gw.http.clone();

    // Three series, ten points each, one second apart, ending a minute ago
    // (inside the 1s:1h retention); values chosen to be exact in float64.
    let base = now_ts() - 70;
    let series = ["web01.cpu.user", "web01.cpu.system", "db01.disk.sda.reads"];
    let mut expected: Vec<Vec<(i64, f64)>> = vec![Vec::new(); series.len()];
    for batch_no in 0..2 {
        let mut body = String::new();
        for (s, name) in series.iter().enumerate() {
            for i in 0..5 {
                let t = base + batch_no * 5 + i;
                let v = (s as f64 + 1.0) * 100.0 + (batch_no * 5 + i) as f64 + 0.25;
                body.push_str(&format!("{name} {v} {t}\n"));
                expected[s].push((t, v));
            }
        }
        // An invalid line in each batch must not reach carbon.
        body.push_str("broken.line notanumber 1\n");
        let r = http_post(
            &addr,
            "/ingest",
            &[("X-Polymur-Key", "123")],
            gzip(body.as_bytes()),
        );
        assert_eq!((r.status, r.body.as_str()), (200, "Batch Received\n"));
    }

    for (s, name) in series.iter().enumerate() {
        let stored_as = format!("dev.{name}");
        let points = carbon.wait_points(&stored_as, base - 1, 10, secs(30));
        assert_eq!(
            points,
            expected[s],
            "points of {stored_as}: carbon log:\n{}",
            carbon.log_tail()
        );
    }
    let mut names = carbon.metrics();
    names.sort();
    assert_eq!(
        names,
        vec![
            "dev.db01.disk.sda.reads",
            "dev.web01.cpu.system",
            "dev.web01.cpu.user"
        ],
        "exactly the valid series, prefixed"
    );
}
