//! hash-route end to end: the `-route-test` dry run against the golden fixtures,
//! three real carbon-caches each holding exactly the metrics graphite-carbon's ring
//! gives them, identical placement across gateway processes, key prefix + hashing,
//! and runtime destination changes during ingestion.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::support::*;
use polymur::dest::addr::DestAddr;
use polymur::route::ring::{HashKind, HashRing};

const GW: &str = GATEWAY_BIN;
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn gateway(args: &[&str]) -> Gateway {
    let mut all = vec!["-dev-mode"];
    all.extend_from_slice(args);
    Gateway::start(&all)
}

fn post(gw: &Gateway, body: &str) -> u16 {
    gw.ingest("123", body).status
}

/// Runs `polymur-gateway -route-test` over a fixture and compares every row.
fn dry_run_matches(file: &str, hash: &str, c_relay: bool) {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{file}")).unwrap();
    let header = text.lines().next().unwrap();
    let field = |k: &str| {
        let s = &header[header.find(k).unwrap() + k.len()..];
        s.split_whitespace().next().unwrap().to_string()
    };
    let dests = field("destinations=").replace('=', ":");
    let rf = field("replication=");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let metrics: String = rows
        .iter()
        .map(|r| format!("{}\n", r.split('\t').next().unwrap()))
        .collect();
    let (p, mut stdin) = Proc::spawn_with_stdin(
        GW,
        &[
            "-route-test",
            "-distribution=hash-route",
            "-hash",
            hash,
            "-replication-factor",
            &rf,
            "-destinations",
            &dests,
        ],
        &[],
    );
    stdin.write_all(metrics.as_bytes()).unwrap();
    drop(stdin);
    let status = p.wait_exit(secs(30)).expect("dry run exits");
    assert!(status.success(), "{}", p.stderr_text());
    let out = p.stdout_lines();
    assert_eq!(
        out.len(),
        rows.len(),
        "{file}: one output line per input line"
    );
    for (got, want) in out.iter().zip(&rows) {
        let got = if c_relay {
            // carbon-c-relay prints members as host:port; we print them as configured.
            let (m, d) = got.split_once('\t').unwrap();
            let d: Vec<String> = d
                .split(',')
                .map(|x| x.parse::<DestAddr>().unwrap().host_port())
                .collect();
            format!("{m}\t{}", d.join(","))
        } else {
            got.clone()
        };
        assert_eq!(&got, want, "{file}");
    }
}

#[test]
fn route_test_reproduces_every_graphite_carbon_fixture() {
    let mut files = 0;
    for entry in std::fs::read_dir(format!("{FIXTURES}/carbon_ch")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let hash = name.split('.').next().unwrap();
        dry_run_matches(&format!("carbon_ch/{name}"), hash, false);
        files += 1;
    }
    assert!(files > 0, "no fixtures under {FIXTURES}/carbon_ch");
}

#[test]
fn route_test_reproduces_every_carbon_c_relay_fixture() {
    let mut files = 0;
    for entry in std::fs::read_dir(format!("{FIXTURES}/carbon-c-relay")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let hash = match name.split('.').next().unwrap() {
            "carbon_ch" => "carbon_ch_c_relay",
            other => other,
        };
        let hash = hash.to_string();
        dry_run_matches(&format!("carbon-c-relay/{name}"), &hash, true);
        files += 1;
    }
    assert!(files > 0, "no fixtures under {FIXTURES}/carbon-c-relay");
}

#[test]
fn each_metric_is_stored_on_the_carbon_cache_graphite_carbon_assigns() {
    let caches = [
        CarbonCache::start(),
        CarbonCache::start(),
        CarbonCache::start(),
    ];
    let members: Vec<DestAddr> = caches
        .iter()
        .zip(["a", "b", "c"])
        .map(|(c, i)| format!("{}:{i}", c.line_addr()).parse().unwrap())
        .collect();
    let dests = members
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let gw = gateway(&["-distribution", "hash-route", "-destinations", &dests]);
    let ts = now_ts() - 30;
    let names: Vec<String> = (0..60)
        .map(|i| format!("app{}.host{i}.cpu.user", i % 7))
        .collect();
    let body: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n} {i}.5 {ts}\n"))
        .collect();
    assert_eq!(post(&gw, &body), 200);

    let ring = HashRing::new(HashKind::CarbonCh, &members);
    let mut expected: Vec<BTreeSet<String>> = vec![BTreeSet::new(); 3];
    let mut owner = Vec::new();
    for n in &names {
        ring.lookup(n.as_bytes(), 1, &mut owner);
        expected[owner[0]].insert(n.clone());
    }
    assert!(
        expected.iter().all(|s| !s.is_empty()),
        "60 metrics spread over all three"
    );
    for (i, cache) in caches.iter().enumerate() {
        let got: BTreeSet<String> = cache
            .wait_metrics(expected[i].len(), secs(30))
            .into_iter()
            .collect();
        assert_eq!(
            got, expected[i],
            "cache {} holds exactly its share",
            members[i]
        );
    }
    for (i, n) in names.iter().enumerate() {
        ring.lookup(n.as_bytes(), 1, &mut owner);
        let points = caches[owner[0]].wait_points(n, ts - 1, 1, secs(10));
        assert_eq!(points, vec![(ts, i as f64 + 0.5)], "{n}");
    }
}

/// Metric names by sink, from lines `name value ts`.
fn placement(sinks: &[LineSink], value: &str) -> Vec<BTreeSet<String>> {
    sinks
        .iter()
        .map(|s| {
            s.lines()
                .iter()
                .filter(|l| l.split(' ').nth(1) == Some(value))
                .map(|l| l.split(' ').next().unwrap().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn two_gateways_with_the_same_destinations_place_every_metric_identically() {
    let sinks = [LineSink::start(), LineSink::start(), LineSink::start()];
    let dests = sinks.iter().map(|s| s.addr()).collect::<Vec<_>>().join(",");
    let args = [
        "-distribution",
        "hash-route",
        "-replication-factor",
        "2",
        "-destinations",
        &dests,
    ];
    let (gw1, gw2) = (gateway(&args), gateway(&args));
    let ts = now_ts();
    let names: Vec<String> = (0..500).map(|i| format!("svc.node{i}.latency")).collect();
    let body = |v: u32| -> String { names.iter().map(|n| format!("{n} {v} {ts}\n")).collect() };
    assert_eq!(post(&gw1, &body(1)), 200);
    assert_eq!(post(&gw2, &body(2)), 200);
    assert!(wait_until(secs(10), || sinks
        .iter()
        .map(|s| s.count())
        .sum::<usize>()
        == 2000));
    let (p1, p2) = (placement(&sinks, "1"), placement(&sinks, "2"));
    assert_eq!(p1, p2);
    // Replication 2: every metric on exactly two distinct sinks.
    let mut copies: BTreeMap<&String, usize> = BTreeMap::new();
    for set in &p1 {
        for n in set {
            *copies.entry(n).or_default() += 1;
        }
    }
    assert_eq!(copies.len(), 500);
    assert!(copies.values().all(|&c| c == 2));
}

#[test]
fn key_prefix_is_part_of_the_routing_key() {
    let sinks = [LineSink::start(), LineSink::start(), LineSink::start()];
    let members: Vec<DestAddr> = sinks.iter().map(|s| s.addr().parse().unwrap()).collect();
    let dests = sinks.iter().map(|s| s.addr()).collect::<Vec<_>>().join(",");
    let gw = gateway(&[
        "-key-prefix",
        "-distribution",
        "hash-route",
        "-destinations",
        &dests,
    ]);
    let ts = now_ts();
    let body: String = (0..200).map(|i| format!("m{i}.x 1 {ts}\n")).collect();
    assert_eq!(post(&gw, &body), 200);
    assert!(wait_until(secs(10), || sinks
        .iter()
        .map(|s| s.count())
        .sum::<usize>()
        == 200));
    let ring = HashRing::new(HashKind::CarbonCh, &members);
    let mut owner = Vec::new();
    for (i, sink) in sinks.iter().enumerate() {
        for line in sink.lines() {
            let metric = line.split(' ').next().unwrap();
            assert!(metric.starts_with("dev."), "{line}");
            ring.lookup(metric.as_bytes(), 1, &mut owner);
            assert_eq!(
                owner,
                vec![i],
                "{metric} routed by its stored (prefixed) name"
            );
        }
    }
}

#[test]
fn putdest_and_deldest_during_ingestion_lose_nothing_and_rebuild_the_ring() {
    let sinks = [LineSink::start(), LineSink::start(), LineSink::start()];
    let first_two = format!("{},{}", sinks[0].addr(), sinks[1].addr());
    let gw = Arc::new(gateway(&[
        "-distribution",
        "hash-route",
        "-destinations",
        &first_two,
    ]));
    let ts = now_ts();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (gw, stop) = (gw.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            let mut batch_no = 0;
            while !stop.load(Ordering::Relaxed) && batch_no < 2000 {
                let lines: Vec<String> = (0..100)
                    .map(|i| format!("live.b{batch_no}.m{i} 1 {ts}"))
                    .collect();
                let body = lines.join("\n") + "\n";
                if post(&gw, &body) == 200 {
                    sent.extend(lines);
                }
                batch_no += 1;
            }
            sent
        })
    };
    std::thread::sleep(millis(500));
    assert_eq!(
        tcp_request(&gw.api, &format!("putdest {}", sinks[2].addr())).unwrap(),
        format!("Registered destination: {}\n", sinks[2].addr())
    );
    std::thread::sleep(millis(500));
    assert_eq!(
        tcp_request(&gw.api, &format!("deldest {}", sinks[0].addr())).unwrap(),
        format!("Unregistered destination: {}\n", sinks[0].addr())
    );
    std::thread::sleep(millis(500));
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    assert!(
        sent.len() >= 500,
        "ingestion kept going: {} lines",
        sent.len()
    );
    assert!(wait_until(secs(15), || sinks
        .iter()
        .map(|s| s.count())
        .sum::<usize>()
        >= sent.len()));
    let mut got: Vec<String> = sinks.iter().flat_map(|s| s.lines()).collect();
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(got, want, "every acknowledged line arrived exactly once");
    assert!(sinks[2].count() > 0, "the added destination received lines");

    let doc: serde_json::Value =
        serde_json::from_str(tcp_request(&gw.api, "getdest").unwrap().trim()).unwrap();
    assert_eq!(
        doc["active"],
        serde_json::json!([sinks[1].addr(), sinks[2].addr()])
    );
    // After the change, placement follows the ring of the two remaining members.
    for s in &sinks {
        s.clear();
    }
    let members: Vec<DestAddr> = [&sinks[1], &sinks[2]]
        .iter()
        .map(|s| s.addr().parse().unwrap())
        .collect();
    let body: String = (0..100).map(|i| format!("after.m{i} 1 {ts}\n")).collect();
    assert_eq!(post(&gw, &body), 200);
    assert!(wait_until(secs(10), || sinks[1].count() + sinks[2].count() == 100));
    assert_eq!(sinks[0].count(), 0);
    let ring = HashRing::new(HashKind::CarbonCh, &members);
    let mut owner = Vec::new();
    for (i, sink) in [&sinks[1], &sinks[2]].iter().enumerate() {
        for line in sink.lines() {
            ring.lookup(line.split(' ').next().unwrap().as_bytes(), 1, &mut owner);
            assert_eq!(owner, vec![i]);
        }
    }
}

/// Owner index of each line's metric on the ring over `members`.
fn owner_of(ring: &HashRing, line: &str) -> usize {
    let mut owner = Vec::new();
    ring.lookup(line.split(' ').next().unwrap().as_bytes(), 1, &mut owner);
    owner[0]
}

#[test]
fn a_down_destination_keeps_its_place_and_gets_its_lines_when_back() {
    let mut sinks = [LineSink::start(), LineSink::start(), LineSink::start()];
    let members: Vec<DestAddr> = sinks.iter().map(|s| s.addr().parse().unwrap()).collect();
    let dests = sinks.iter().map(|s| s.addr()).collect::<Vec<_>>().join(",");
    sinks[2].stop();
    let gw = gateway(&["-distribution", "hash-route", "-destinations", &dests]);
    let ts = now_ts();
    let lines: Vec<String> = (0..300).map(|i| format!("place.m{i} 1 {ts}")).collect();
    assert_eq!(post(&gw, &(lines.join("\n") + "\n")), 200);
    let ring = HashRing::new(HashKind::CarbonCh, &members);
    let for_down = lines.iter().filter(|l| owner_of(&ring, l) == 2).count();
    assert!(for_down > 0);
    assert!(wait_until(secs(10), || sinks[0].count() + sinks[1].count()
        == 300 - for_down));
    // Well past three failed reconnects, nothing of the down destination's share moved.
    std::thread::sleep(secs(3));
    assert_eq!(sinks[0].count() + sinks[1].count(), 300 - for_down);
    sinks[2].restart();
    assert!(wait_until(secs(15), || sinks[2].count() == for_down));
    for (i, s) in sinks.iter().enumerate() {
        assert!(s.lines().iter().all(|l| owner_of(&ring, l) == i));
    }
}

#[test]
fn hash_failover_reroutes_a_failed_destinations_lines_and_lets_it_rejoin() {
    let mut sinks = [LineSink::start(), LineSink::start(), LineSink::start()];
    let members: Vec<DestAddr> = sinks.iter().map(|s| s.addr().parse().unwrap()).collect();
    let dests = sinks.iter().map(|s| s.addr()).collect::<Vec<_>>().join(",");
    sinks[2].stop();
    let gw = gateway(&[
        "-distribution",
        "hash-route",
        "-hash-failover",
        "-destinations",
        &dests,
    ]);
    let ts = now_ts();
    let lines: Vec<String> = (0..300).map(|i| format!("fo.m{i} 1 {ts}")).collect();
    assert_eq!(post(&gw, &(lines.join("\n") + "\n")), 200);
    // Its share was queued for it, then taken back and re-routed to the others.
    assert!(
        gw.proc.wait_log("taken out of the ring", secs(15)),
        "{}",
        gw.proc.all_output()
    );
    assert!(wait_until(secs(10), || sinks[0].count() + sinks[1].count() == 300));
    let mut got: Vec<String> = [&sinks[0], &sinks[1]]
        .iter()
        .flat_map(|s| s.lines())
        .collect();
    got.sort();
    let mut want = lines.clone();
    want.sort();
    assert_eq!(got, want, "every line once, on the remaining destinations");
    let doc: serde_json::Value =
        serde_json::from_str(tcp_request(&gw.api, "getdest").unwrap().trim()).unwrap();
    assert_eq!(
        doc["active"],
        serde_json::json!([sinks[0].addr(), sinks[1].addr()])
    );

    // While it is out, the two-member ring places new lines.
    let two = HashRing::new(HashKind::CarbonCh, &members[..2]);
    for s in &sinks {
        s.clear();
    }
    let more: Vec<String> = (0..100).map(|i| format!("fo.more{i} 1 {ts}")).collect();
    assert_eq!(post(&gw, &(more.join("\n") + "\n")), 200);
    assert!(wait_until(secs(10), || sinks[0].count() + sinks[1].count() == 100));
    for (i, s) in sinks[..2].iter().enumerate() {
        assert!(s.lines().iter().all(|l| owner_of(&two, l) == i));
    }

    // Back up: it rejoins and receives its share of the three-member ring again.
    sinks[2].restart();
    assert!(
        gw.proc.wait_log("rejoins the ring", secs(15)),
        "{}",
        gw.proc.all_output()
    );
    for s in &sinks {
        s.clear();
    }
    let three = HashRing::new(HashKind::CarbonCh, &members);
    let last: Vec<String> = (0..300).map(|i| format!("fo.back{i} 1 {ts}")).collect();
    assert_eq!(post(&gw, &(last.join("\n") + "\n")), 200);
    assert!(wait_until(secs(10), || sinks
        .iter()
        .map(|s| s.count())
        .sum::<usize>()
        == 300));
    assert!(sinks[2].count() > 0);
    for (i, s) in sinks.iter().enumerate() {
        assert!(s.lines().iter().all(|l| owner_of(&three, l) == i));
    }
}

/// `polymur_hash_cache_lookups_total{result=...}` from `/metrics`.
fn cache_lookups(gw: &Gateway, result: &str) -> u64 {
    let body = http_get(&gw.admin, "/metrics", &[]).unwrap().body;
    let series = format!("polymur_hash_cache_lookups_total{{result=\"{result}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{body}"))
        .parse()
        .unwrap()
}

/// The position cache keeps its entries across ring changes (they hold ring
/// positions, which do not depend on the members): the same names, already cached,
/// must still land exactly where the *new* ring puts them after `putdest` and after
/// `deldest`, and the cache must have answered those lookups.
#[test]
fn a_ring_change_never_serves_a_stale_owner_from_the_position_cache() {
    let sinks = [LineSink::start(), LineSink::start(), LineSink::start()];
    let addr = |i: usize| sinks[i].addr();
    let gw = gateway(&[
        "-distribution",
        "hash-route",
        "-destinations",
        &format!("{},{}", addr(0), addr(1)),
    ]);
    let ts = now_ts();
    let names: Vec<String> = (0..400).map(|i| format!("cache.h{i}.cpu")).collect();
    let body: String = names.iter().map(|n| format!("{n} 1 {ts}\n")).collect();
    let rings: [&[usize]; 3] = [&[0, 1], &[0, 1, 2], &[1, 2]];
    for (step, members) in rings.iter().enumerate() {
        match step {
            1 => assert_eq!(
                tcp_request(&gw.api, &format!("putdest {}", addr(2))).unwrap(),
                format!("Registered destination: {}\n", addr(2))
            ),
            2 => assert_eq!(
                tcp_request(&gw.api, &format!("deldest {}", addr(0))).unwrap(),
                format!("Unregistered destination: {}\n", addr(0))
            ),
            _ => {}
        }
        let hits_before = cache_lookups(&gw, "hit");
        // Twice per ring: the first post of step 0 fills the cache, every later one
        // is answered from it.
        for _ in 0..2 {
            for s in &sinks {
                s.clear();
            }
            assert_eq!(post(&gw, &body), 200);
            assert!(wait_until(secs(10), || sinks
                .iter()
                .map(|s| s.count())
                .sum::<usize>()
                == names.len()));
            let ring_members: Vec<DestAddr> =
                members.iter().map(|&i| addr(i).parse().unwrap()).collect();
            let ring = HashRing::new(HashKind::CarbonCh, &ring_members);
            for (i, sink) in sinks.iter().enumerate() {
                for line in sink.lines() {
                    let owner = members[owner_of(&ring, &line)];
                    assert_eq!(owner, i, "step {step}: {line} belongs to sink {owner}");
                }
            }
        }
        let hits = cache_lookups(&gw, "hit") - hits_before;
        let want = if step == 0 { 400 } else { 800 };
        assert!(hits >= want, "step {step}: {hits} cache hits, want {want}");
    }
    assert!(cache_lookups(&gw, "miss") >= 400);
}
