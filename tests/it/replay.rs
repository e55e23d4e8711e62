//! `-replay-rate` with real processes: a gateway spools a million points while its
//! destination is down, then replays them at the configured pace once it is back.

use std::time::Instant;

use crate::support::*;

#[test]
fn a_million_point_spool_replays_at_the_replay_rate() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spool = format!("-spool-dir={}", dir.path().display());
    let dest = format!("-destinations=127.0.0.1:{port}");
    let rate: u64 = 250_000;
    let replay = format!("-replay-rate={rate}");
    let gw = Gateway::start(&[
        "-dev-mode",
        &dest,
        &spool,
        &replay,
        "-outgoing-queue-cap=1000",
    ]);
    let (batches, per_batch) = (200, 5000);
    let ts = now_ts();
    for b in 0..batches {
        let body: String = (0..per_batch)
            .map(|i| format!("r.b{b}.m{i} {i} {ts}\n"))
            .collect();
        let r = gw.ingest("123", &body);
        assert_eq!(r.status, 200, "batch {b}: {r:?}");
    }
    let total = batches * per_batch;
    let sink = LineSink::start_on(port);
    assert!(
        sink.wait_count(1, secs(30)),
        "replay never started: {}",
        gw.proc.stderr_text()
    );
    let started = Instant::now();
    assert!(
        sink.wait_count(total, secs(120)),
        "got {} of {total}",
        sink.count()
    );
    let took = started.elapsed();
    let measured = total as f64 / took.as_secs_f64();
    println!(
        "replayed {total} points in {took:?}: {measured:.0} points/s at -replay-rate={rate} ({:+.1} %)",
        (measured / rate as f64 - 1.0) * 100.0
    );
    // Wide bound, one-sided: the pace held (a slow machine may only be slower).
    assert!(
        measured <= rate as f64 * 1.1,
        "replay at {measured:.0} points/s, over -replay-rate={rate} by more than 10 %"
    );
}
