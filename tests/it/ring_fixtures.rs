//! Replays every golden vector in `tests/fixtures` (copied from the project's shared reference fixtures) through
//! `HashRing`, and through `HashRouter`'s position cache (cold and warm).
//!
//! The fixtures were produced by the real graphite-carbon 1.1.7 and carbon-c-relay 3.7.3;
//! graphite-web finds metrics only if our placement matches theirs exactly, so every row of
//! every file must agree.

use std::fs;
use std::path::{Path, PathBuf};

use polymur::dest::addr::DestAddr;
use polymur::route::hash_router::HashRouter;
use polymur::route::ring::{HashKind, HashRing};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Which implementation wrote a fixture directory, which decides how destinations are
/// spelled and which `HashKind` reproduces its `carbon_ch`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Origin {
    GraphiteCarbon,
    CRelay,
}

struct Header {
    kind: HashKind,
    replication: usize,
    members: Vec<DestAddr>,
}

/// Value of `key=` in the first header line, up to the next whitespace.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(key)
        .unwrap_or_else(|| panic!("header lacks {key}: {line}"))
        + key.len();
    line[start..].split_whitespace().next().unwrap_or("")
}

fn parse_header(line: &str, origin: Origin) -> Header {
    let kind = match (field(line, "hash="), origin) {
        ("carbon_ch", Origin::GraphiteCarbon) => HashKind::CarbonCh,
        ("carbon_ch", Origin::CRelay) => HashKind::CarbonChCRelay,
        // graphite-carbon's own fnv1a_ch vectors are checked against the c-relay flavour on
        // purpose: they agree whenever every member has an instance.
        ("fnv1a_ch", _) => HashKind::Fnv1aCh,
        ("jump_fnv1a_ch", _) => HashKind::JumpFnv1aCh,
        (other, _) => panic!("unknown hash {other:?} in {line}"),
    };
    let replication = field(line, "replication=").parse().expect("replication");
    let members = field(line, "destinations=")
        .split(',')
        .map(|d| {
            // carbon-c-relay spells an instance `host:port=instance`.
            let d = match d.split_once('=') {
                Some((hp, inst)) => format!("{hp}:{inst}"),
                None => d.to_string(),
            };
            d.parse::<DestAddr>()
                .unwrap_or_else(|e| panic!("bad destination {d:?}: {e}"))
        })
        .collect();
    Header {
        kind,
        replication,
        members,
    }
}

/// Checks one file; returns the number of rows compared.
fn check_file(path: &Path, origin: Origin) -> usize {
    let text = fs::read_to_string(path).unwrap();
    let first = text.lines().next().expect("empty fixture");
    let h = parse_header(first, origin);
    let ring = HashRing::new(h.kind, &h.members);
    // The router looks positions up in its cache: each metric twice, the first time
    // missing (hashed and remembered), the second from the cache.
    let router = HashRouter::new(h.kind, &h.members, h.replication);
    let shown: Vec<String> = h
        .members
        .iter()
        .map(|m| match origin {
            Origin::GraphiteCarbon => m.to_string(),
            Origin::CRelay => m.host_port(),
        })
        .collect();
    let mut out = Vec::with_capacity(h.members.len());
    let mut rows = 0;
    let mut bad = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (metric, dests) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("{}: malformed row {line:?}", path.display()));
        let want: Vec<&str> = dests.split(',').collect();
        assert_eq!(
            want.len(),
            h.replication.min(h.members.len()),
            "{}: row {line:?} disagrees with its header",
            path.display()
        );
        ring.lookup(metric.as_bytes(), h.replication, &mut out);
        let got: Vec<&str> = out.iter().map(|&i| shown[i].as_str()).collect();
        if got != want {
            bad.push(format!("{metric}: want {want:?} got {got:?}"));
        }
        for pass in ["cold", "warm"] {
            router.owners(metric.as_bytes(), &mut out);
            let got: Vec<&str> = out.iter().map(|&i| shown[i].as_str()).collect();
            if got != want {
                bad.push(format!(
                    "{metric} (cached, {pass}): want {want:?} got {got:?}"
                ));
            }
        }
        rows += 1;
    }
    assert!(rows > 0, "{}: no rows", path.display());
    assert!(
        bad.is_empty(),
        "{}: {} of {rows} rows differ ({}), first ones:\n{}",
        path.display(),
        bad.len(),
        h.kind,
        bad[..bad.len().min(10)].join("\n")
    );
    rows
}

fn tsv_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tsv"))
        .collect();
    files.sort();
    files
}

fn check_dir(sub: &str, origin: Origin) {
    let files = tsv_files(&Path::new(FIXTURES).join(sub));
    assert!(!files.is_empty(), "no fixtures under {sub}");
    let mut total = 0;
    for f in &files {
        let rows = check_file(f, origin);
        println!(
            "{sub}/{}: {rows} rows ok",
            f.file_name().unwrap().to_string_lossy()
        );
        total += rows;
    }
    assert!(total > 0);
    println!("{sub}: {} files, {total} rows ok", files.len());
}

#[test]
fn graphite_carbon_fixtures() {
    check_dir("carbon_ch", Origin::GraphiteCarbon);
}

#[test]
fn carbon_c_relay_fixtures() {
    check_dir("carbon-c-relay", Origin::CRelay);
}
