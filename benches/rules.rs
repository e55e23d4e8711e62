//! Per-line cost of routing rules (issue 13): a 50-rule carbon-c-relay configuration
//! (23 literal prefixes, 23 regexes, 4 rewrites) against the same lines with no rules.
//!
//! Three figures, one element per line so criterion reports lines per second:
//! * `no_rules`: the carbon_ch ring lookup alone (what `-distribution hash-route` pays);
//! * `match_all`: `match * send to ch;` through [`Rules`] plus the same placement (what a
//!   site pays for the rules engine with a trivial configuration);
//! * `rules_50`: the 50-rule configuration plus placement of every cluster it sends to.
//!
//! Names cycle through a pre-built set that hits early literal rules, late regex rules,
//! rewrites and the final catch-all, so neither the first rule nor the fallback dominates.

use std::hint::black_box;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use polymur::batch::Batch;
use polymur::route::counters::RouteCounters;
use polymur::route::Router;
use polymur::rules::router::RulesRouter;
use polymur::rules::{Action, Decision, Rules};
/// The load generator's workload (it lives in the `polymur-bench` binary, outside the library).
#[allow(dead_code)]
#[path = "../src/bin/polymur-bench/workload.rs"]
mod workload;

const NAMES: usize = 4096;

/// The 50-rule configuration: clusters, then literal and regex matches interleaved with
/// four rewrites, ending with a catch-all.
fn config() -> String {
    let mut c = String::new();
    c.push_str("cluster ch carbon_ch 10.0.0.1:2004=a 10.0.0.2:2004=b 10.0.0.3:2004=c;\n");
    c.push_str("cluster fnv fnv1a_ch replication 2 10.0.1.1:2003 10.0.1.2:2003 10.0.1.3:2003;\n");
    c.push_str("cluster arch forward 10.0.2.1:2003;\n");
    let mut rules = 0;
    for i in 0..23 {
        // Literal prefixes (carbon-c-relay's strncmp class).
        c.push_str(&format!("match ^svc{i:02}\\.prod\\. send to ch stop;\n"));
        // Regexes: anchored on a class, with alternation and repetition.
        c.push_str(&format!(
            "match ^dc[0-9]\\.host{i:02}[0-9]*\\.(cpu|mem|disk)\\. send to fnv arch stop;\n"
        ));
        rules += 2;
        if i % 6 == 5 {
            c.push_str(&format!(
                "rewrite ^legacy{i}\\.([^.]+)\\.(.*)$ into svc{:02}.prod.\\1.\\2;\n",
                i % 23
            ));
            rules += 1;
        }
    }
    c.push_str("match * send to ch;\n");
    rules += 1;
    assert_eq!(rules, 50, "the benchmark promises 50 rules");
    c
}

fn names() -> Vec<Vec<u8>> {
    (0..NAMES)
        .map(|i| {
            let k = i % 23;
            match i % 4 {
                0 => format!("svc{k:02}.prod.web{i}.requests.rate"),
                1 => format!("dc{}.host{k:02}{}.cpu.user", i % 10, i % 7),
                2 => format!("legacy{}.app{i}.latency.p99", (i % 4) * 6 + 5),
                _ => format!("servers.other{i}.load.shortterm"),
            }
            .into_bytes()
        })
        .collect()
}

/// Routes one name and places it in every cluster it is sent to, as the pipeline will.
fn route(rules: &Rules, name: &[u8], d: &mut Decision, out: &mut Vec<usize>) -> usize {
    rules.route_into(name, name, d);
    let mut n = 0;
    for (nm, a) in d.actions() {
        if let Action::Cluster(c) = a {
            rules.clusters[c].placement(nm, out);
            n += out.len();
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let names = names();
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(1));

    let single = Rules::from_str(
        "match_all.conf",
        "cluster ch carbon_ch 10.0.0.1:2004=a 10.0.0.2:2004=b 10.0.0.3:2004=c;\nmatch * send to ch;",
    )
    .unwrap();
    let ch = &single.clusters[0];
    let mut out = Vec::with_capacity(4);
    let mut i = 0usize;
    group.bench_function("no_rules", |b| {
        b.iter(|| {
            i = (i + 1) % NAMES;
            ch.placement(black_box(&names[i]), &mut out);
            black_box(out.len())
        })
    });

    let mut d = Decision::default();
    group.bench_function("match_all", |b| {
        b.iter(|| {
            i = (i + 1) % NAMES;
            black_box(route(&single, black_box(&names[i]), &mut d, &mut out))
        })
    });

    let fifty = Rules::from_str("rules_50.conf", &config()).unwrap();
    group.bench_function("rules_50", |b| {
        b.iter(|| {
            i = (i + 1) % NAMES;
            black_box(route(&fifty, black_box(&names[i]), &mut d, &mut out))
        })
    });
    group.finish();

    // The same, one name class at a time: where the per-line cost comes from.
    let mut group = c.benchmark_group("rules_50_by_class");
    group.throughput(Throughput::Elements(1));
    for (class, label) in ["literal_hit", "regex_hit", "rewrite", "fallthrough"]
        .iter()
        .enumerate()
    {
        let subset: Vec<&Vec<u8>> = names.iter().skip(class).step_by(4).collect();
        let mut j = 0usize;
        group.bench_function(*label, |b| {
            b.iter(|| {
                j = (j + 1) % subset.len();
                black_box(route(&fifty, black_box(subset[j]), &mut d, &mut out))
            })
        });
    }
    group.finish();
}

/// The whole router on the load generator's own batches (100 000 series, 5000-line
/// batches, 20 distinct batches so every series is seen): `benches/rules-50.conf`, what
/// `benches/rules-50.sh` runs end to end, against the default cluster the relay without
/// rules routes by (one `forward` destination, the batch's buffer shared). The difference
/// is the rules' own cost per line, without the sockets and validation both pay.
fn router(c: &mut Criterion) {
    let w = workload::Workload::default();
    let batches: Vec<Batch> = (0..20)
        .map(|k| Batch::from_plaintext(w.batch(k), None).0)
        .collect();
    let conf = include_str!("rules-50.conf").replace("SINK", "127.0.0.1:2003");
    let rules = Arc::new(Rules::from_str("rules-50.conf", &conf).unwrap());
    let dests = rules.tcp_members();
    let counters = |r: &Rules| {
        Arc::new(
            RouteCounters::new(r.clusters.iter().map(|c| c.name.as_str()))
                .with_rules(r.match_labels()),
        )
    };
    let fifty = RulesRouter::new(rules.clone(), &dests, counters(&rules));
    let plain = RulesRouter::for_flags(&dests, None, 1, Arc::new(RouteCounters::new(["default"])));
    let mut group = c.benchmark_group("router_5000_lines");
    group.throughput(Throughput::Elements(w.batch_lines as u64));
    for (label, router) in [("no_rules", &plain), ("rules_50", &fifty)] {
        let (mut k, mut out) = (0usize, Vec::new());
        group.bench_function(label, |b| {
            b.iter(|| {
                k = (k + 1) % batches.len();
                out.clear();
                router.route(black_box(&batches[k]), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(20);
    targets = bench, router
}
criterion_main!(benches);
