//! Parse + validate a 5000-line batch into a `Batch`, with and without key prefix.
//!
//! This is step 2 of the hot path in DESIGN.md: one pass over the inflated bytes,
//! validating each line in place. Variants show the three shapes a batch takes:
//! clean (the buffer is kept, no copy), prefixed (one copy with `<key>.` per line),
//! and dirty (an invalid line early forces the copy path). Throughput is in lines.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use polymur::batch::Batch;
/// The load generator's workload (it lives in the `polymur-bench` binary, outside the library).
#[allow(dead_code)]
#[path = "../src/bin/polymur-bench/workload.rs"]
mod workload;
use workload::Workload;

fn batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("from_plaintext_5000_lines");
    group.throughput(Throughput::Elements(5000));
    for name_len in [30usize, 60, 120] {
        let w = Workload {
            name_len,
            ..Workload::default()
        };
        let clean = w.batch(0);
        let mut dirty = b"not a valid line\n".to_vec();
        dirty.extend_from_slice(&clean[..clean.len() - clean.len() / 5000]);
        // `from_plaintext` consumes its input; cloning is part of every variant
        // equally, and is measured alone as `clone_only` for subtraction.
        group.bench_function(BenchmarkId::new("clone_only", name_len), |b| {
            b.iter(|| black_box(clean.clone()))
        });
        group.bench_function(BenchmarkId::new("clean", name_len), |b| {
            b.iter(|| black_box(Batch::from_plaintext(clean.clone(), None)))
        });
        group.bench_function(BenchmarkId::new("prefixed", name_len), |b| {
            b.iter(|| black_box(Batch::from_plaintext(clean.clone(), Some("customer-a"))))
        });
        group.bench_function(BenchmarkId::new("dirty_first_line", name_len), |b| {
            b.iter(|| black_box(Batch::from_plaintext(dirty.clone(), None)))
        });
    }
    group.finish();

    // Per-line validation alone, no batch around it.
    let w = Workload::default();
    let raw = w.batch(0);
    let lines: Vec<&[u8]> = raw
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut group = c.benchmark_group("line_parse");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("5000_lines_60b_names", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(polymur::line::parse(black_box(l)).is_ok());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, batch);
criterion_main!(benches);
