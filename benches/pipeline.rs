//! In-process end to end: gzip body in → routed bytes out, no sockets.
//!
//! What `/ingest` does per batch after the body is read and before destinations
//! write: inflate (libdeflate), validate, optionally prefix, route. Comparing it
//! with `benches/inflate.rs` on the same batch shows how much of the per-line
//! budget the non-inflate steps take. Throughput is in lines.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use polymur::batch::Batch;
/// The load generator's workload (it lives in the `polymur-bench` binary, outside the library).
#[allow(dead_code)]
#[path = "../src/bin/polymur-bench/workload.rs"]
mod workload;
use polymur::dest::DestAddr;
use polymur::ingest::inflate::gunzip;
use polymur::route::broadcast::Broadcast;
use polymur::route::hash_router::HashRouter;
use polymur::route::ring::HashKind;
use polymur::route::{RoutedPart, Router};
use workload::Workload;

/// Body in, parts out; returns the bytes that would be written.
fn path(
    body: &[u8],
    prefix: Option<&str>,
    router: &dyn Router,
    parts: &mut Vec<RoutedPart>,
) -> usize {
    let raw = gunzip(body, 1 << 28).expect("valid body");
    let (batch, _rejects) = Batch::from_plaintext(raw, prefix);
    parts.clear();
    router.route(&batch, parts);
    parts.iter().map(|p| p.data.len()).sum()
}

fn pipeline(c: &mut Criterion) {
    let w = Workload::default();
    let body = w.gzip(&w.batch(0));
    let dests: Vec<DestAddr> = ["127.0.0.1:2104:a", "127.0.0.1:2204:b", "127.0.0.1:2304:c"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let broadcast1 = Broadcast { destinations: 1 };
    let broadcast3 = Broadcast { destinations: 3 };
    let carbon3 = HashRouter::new(HashKind::CarbonCh, &dests, 1);
    let fnv3 = HashRouter::new(HashKind::Fnv1aCh, &dests, 1);
    let carbon3_rf2 = HashRouter::new(HashKind::CarbonCh, &dests, 2);
    let mut parts = Vec::new();

    let mut group = c.benchmark_group("body_to_routed_5000_lines");
    group.throughput(Throughput::Elements(w.batch_lines as u64));
    let cases: [(&str, Option<&str>, &dyn Router); 6] = [
        ("broadcast_1", None, &broadcast1),
        ("broadcast_3", None, &broadcast3),
        ("broadcast_1_prefixed", Some("customer-a"), &broadcast1),
        ("carbon_ch_3", None, &carbon3),
        ("carbon_ch_3_rf2", None, &carbon3_rf2),
        ("fnv1a_ch_3", None, &fnv3),
    ];
    for (name, prefix, router) in cases {
        group.bench_function(name, |b| {
            b.iter(|| black_box(path(black_box(&body), prefix, router, &mut parts)))
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
