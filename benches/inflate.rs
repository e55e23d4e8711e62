//! Inflating one 5000-line gzip batch (level 6, as polymur-proxy sends it).
//!
//! The gateway's CPU budget is stated against this: the whole `/ingest` path must
//! cost less per line than zlib's inflate alone. So the same batch is inflated by
//! flate2/zlib-rs (the crate's zlib, streaming, as the fallback path uses it) and by
//! `gunzip` (libdeflate one-shot into a buffer sized from the trailer, the fast
//! path). Throughput is in lines, the unit every other figure uses.

use std::hint::black_box;
use std::io::Read;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
/// The load generator's workload (it lives in the `polymur-bench` binary, outside the library).
#[allow(dead_code)]
#[path = "../src/bin/polymur-bench/workload.rs"]
mod workload;
use polymur::ingest::inflate::gunzip;
use workload::Workload;

fn inflate(c: &mut Criterion) {
    let w = Workload::default();
    let plain = w.batch(0);
    let mut group = c.benchmark_group("inflate_5000_lines");
    group.throughput(Throughput::Elements(w.batch_lines as u64));
    for level in [1u32, 6, 9] {
        let body = workload::gzip(&plain, level);
        let mut out = Vec::with_capacity(plain.len());
        group.bench_function(format!("zlib_rs_gz{level}"), |b| {
            b.iter(|| {
                out.clear();
                flate2::read::GzDecoder::new(black_box(&body[..]))
                    .read_to_end(&mut out)
                    .unwrap();
                black_box(out.len())
            })
        });
        group.bench_function(format!("libdeflate_gunzip_gz{level}"), |b| {
            b.iter(|| black_box(gunzip(black_box(&body), 1 << 28).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, inflate);
criterion_main!(benches);
