//! Per-line cost of `HashRing::lookup`, the hash-route hot path.
//!
//! Every forwarded line pays one lookup, so the figure that matters is lines per second on
//! one core; criterion reports it through `Throughput::Elements` (one element per line).
//! Metric names are Graphite-shaped (`servers.prod-dc1.cluster07.host0042.cpu.core5.user`,
//! ~40-60 bytes) and cycle through a pre-built set so hashing sees varied input without
//! measuring allocation.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use polymur::dest::addr::DestAddr;
use polymur::route::ring::{HashKind, HashRing};

const NAMES: usize = 4096;

/// Realistic metric paths: site, cluster and host parts, then a subsystem and a leaf.
fn metric_names() -> Vec<Vec<u8>> {
    let leaves = [
        "cpu.core5.user",
        "cpu.core11.system",
        "mem.used",
        "disk.sda0.reads",
        "net.eth0.rx_bytes",
        "load.shortterm",
        "app.requests.7.rate",
        "app.latency.http.get.p99",
    ];
    (0..NAMES)
        .map(|i| {
            let leaf = leaves[i % leaves.len()];
            format!(
                "servers.prod-dc{}.cluster{:02}.host{:04}.{leaf}",
                i % 3,
                i % 17,
                i * 7 % 10_000
            )
            .into_bytes()
        })
        .collect()
}

fn members(n: usize) -> Vec<DestAddr> {
    (0..n)
        .map(|i| {
            format!(
                "10.1.{}.{}:2004:{}",
                i / 250,
                i % 250 + 1,
                (b'a' + i as u8) as char
            )
            .parse()
            .unwrap()
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let names = metric_names();
    for replication in [1usize, 2] {
        let mut group = c.benchmark_group(format!("lookup_rf{replication}"));
        group.throughput(Throughput::Elements(1));
        for n in [3usize, 12] {
            let dests = members(n);
            for kind in HashKind::ALL {
                let ring = HashRing::new(kind, &dests);
                let mut out = Vec::with_capacity(n);
                let mut i = 0usize;
                group.bench_function(BenchmarkId::new(kind.name(), n), |b| {
                    b.iter(|| {
                        i = (i + 1) % NAMES;
                        ring.lookup(black_box(&names[i]), replication, &mut out);
                        black_box(out.first().copied())
                    })
                });
            }
        }
        group.finish();
    }
}

fn build(c: &mut Criterion) {
    // Failover rebuilds the ring; this shows that is cheap next to the lines it serves.
    let mut group = c.benchmark_group("build");
    for n in [3usize, 12] {
        let dests = members(n);
        for kind in HashKind::ALL {
            group.bench_function(BenchmarkId::new(kind.name(), n), |b| {
                b.iter(|| HashRing::new(kind, black_box(&dests)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
