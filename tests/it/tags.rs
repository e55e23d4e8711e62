//! Graphite 1.1 tags (issue 15): `-tag-normalize` against graphite-carbon 1.1.7 itself.
//!
//! - the golden vectors in `tests/fixtures/tags/` (made by `make_vectors.py` with
//!   `carbon.util.TaggedSeries` and `carbon.hashing`) are reproduced exactly by
//!   `polymur-gateway -route-test -tag-normalize -distribution hash-route`;
//! - tagged points posted with their tags in random orders reach three hash-routed real
//!   carbon-caches (`ENABLE_TAGS = False`) under the normalized name, each series on
//!   exactly one cache; invalid tagged lines are counted under their own reason.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tags");

/// One fixture row: the name as sent, and `(normalized, owner)` or `None` when
/// carbon's parser refuses it.
type Row = (String, Option<(String, String)>);

fn fixture(file: &str) -> (String, Vec<Row>) {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{file}")).unwrap();
    let header = text.lines().next().unwrap();
    let dests = header
        .split("destinations=")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let rows = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let mut f = l.split('\t');
            let (input, norm, owner) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            let want = (norm != "!invalid").then(|| (norm.to_string(), owner.to_string()));
            (input.to_string(), want)
        })
        .collect();
    (dests, rows)
}

fn route_test(dests: &str, input: &str) -> Proc {
    let (p, mut stdin) = Proc::spawn_with_stdin(
        GATEWAY_BIN,
        &[
            "-route-test",
            "-tag-normalize",
            "-distribution",
            "hash-route",
            "-destinations",
            dests,
        ],
        &[],
    );
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let status = p.wait_exit(secs(30)).expect("dry run exits");
    assert!(status.success(), "{}", p.stderr_text());
    p
}

#[test]
fn route_test_reproduces_the_graphite_carbon_tag_vectors() {
    for file in ["carbon_ch.four_hosts.tsv", "carbon_ch.four_instances.tsv"] {
        let (dests, rows) = fixture(file);
        assert!(rows.len() >= 2000, "{file}: {} vectors", rows.len());
        let input: String = rows.iter().map(|(i, _)| format!("{i}\n")).collect();
        let p = route_test(&dests, &input);
        let want: Vec<String> = rows
            .iter()
            .filter_map(|(_, w)| w.as_ref().map(|(n, o)| format!("{n}\t{o}")))
            .collect();
        let got = p.stdout_lines();
        assert_eq!(got.len(), want.len(), "{file}: one line per valid name");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{file}: valid vector {i}");
        }
        // Every name carbon refuses is reported, none is routed.
        let refused: Vec<&String> = rows
            .iter()
            .filter(|(_, w)| w.is_none())
            .map(|(i, _)| i)
            .collect();
        assert!(refused.len() >= 20);
        assert_eq!(
            p.stderr_lines()
                .iter()
                .filter(|l| l.contains("invalid tags"))
                .count(),
            refused.len(),
            "{file}"
        );
    }
}

/// Without `-tag-normalize`, names are routed as sent (today's format).
#[test]
fn route_test_without_normalizing_keeps_names_as_sent() {
    let out = Proc::run(
        GATEWAY_BIN,
        &["-route-test", "-destinations", "127.0.0.1:1"],
        &[],
        secs(30),
    );
    // Nothing on stdin (null): no output, success.
    assert!(out.status.is_some_and(|s| s.success()));
    assert_eq!(out.stdout, "");
}

/// carbon's own answers for `names`: the normalized name and the whisper file it is
/// stored in (`_tagged/<sha256[0:3]>/<sha256[3:6]>/<sha256>` for a tagged name, Debian's
/// `TAG_HASH_FILENAMES = True`), written as a `CarbonCache` metric name (parts joined by `.`).
fn carbon_names(names: &[String]) -> Vec<(String, String)> {
    const PY: &str = r#"
import sys
from carbon.util import TaggedSeries
for line in sys.stdin.read().splitlines():
    path = TaggedSeries.parse(line).path
    print(path + "\t" + TaggedSeries.encode(path, hash_only=True))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("Debian's /usr/bin/python3 with graphite-carbon");
    let input = names.join("\n") + "\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once('\t').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect()
}

/// Tags of series `s`, in an order (and form) that depends on `variant`.
fn spelling(s: usize, variant: usize) -> String {
    let mut tags = [
        ("host".to_string(), format!("web{s:02}")),
        ("dc".to_string(), ["ams", "fra", "nyc"][s % 3].to_string()),
        ("env".to_string(), "prod".to_string()),
        ("a.b".to_string(), format!("v{}", s % 2)),
    ];
    let n = tags.len();
    tags.rotate_left(variant % n);
    if variant % 2 == 1 {
        tags.reverse();
    }
    let metric = format!("tg.disk{}.used", s % 4);
    if variant == 2 {
        let body: Vec<String> = tags.iter().map(|(t, v)| format!("{t}=\"{v}\"")).collect();
        format!("{metric}{{{}}}", body.join(","))
    } else {
        let body: String = tags.iter().map(|(t, v)| format!(";{t}={v}")).collect();
        format!("{metric}{body}")
    }
}

#[test]
fn tagged_points_in_any_order_reach_one_carbon_cache_under_the_normalized_name() {
    let caches = [
        CarbonCache::start(),
        CarbonCache::start(),
        CarbonCache::start(),
    ];
    let dests: Vec<String> = caches
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}:{}", c.line_addr(), ["a", "b", "c"][i]))
        .collect();
    let dest_list = dests.join(",");
    const SERIES: usize = 12;
    const VARIANTS: usize = 3;
    let canonical: Vec<String> = (0..SERIES).map(|s| spelling(s, 0)).collect();
    let carbon = carbon_names(&canonical);
    // The ring owner of each normalized name, from the dry run (pinned to carbon by
    // the golden vectors above).
    let input: String = carbon.iter().map(|(n, _)| format!("{n}\n")).collect();
    let owner: BTreeMap<String, usize> = route_test(&dest_list, &input)
        .stdout_lines()
        .iter()
        .map(|l| {
            let (m, d) = l.split_once('\t').unwrap();
            (m.to_string(), dests.iter().position(|x| x == d).unwrap())
        })
        .collect();
    assert_eq!(owner.len(), SERIES);
    let used: BTreeSet<usize> = owner.values().copied().collect();
    assert_eq!(used.len(), 3, "12 series spread over all three caches");

    let gw = Gateway::start(&[
        "-dev-mode",
        "-tag-normalize",
        "-distribution",
        "hash-route",
        "-destinations",
        &dest_list,
    ]);
    let base = now_ts() - 60;
    for v in 0..VARIANTS {
        let mut body = String::new();
        for s in 0..SERIES {
            body.push_str(&format!(
                "{} {} {}\n",
                spelling(s, v),
                s * 10 + v,
                base + v as i64
            ));
        }
        // Carbon's parser refuses these: dropped and counted when normalizing.
        body.push_str(&format!("tg.bad;a=~x 1 {base}\ntg.bad;=x 1 {base}\n"));
        assert_eq!(gw.ingest("123", &body).status, 200);
    }
    for (s, (norm, file)) in carbon.iter().enumerate() {
        let o = owner[norm];
        let want: Vec<(i64, f64)> = (0..VARIANTS)
            .map(|v| (base + v as i64, (s * 10 + v) as f64))
            .collect();
        let got = caches[o].wait_points(file, base - 1, VARIANTS, secs(30));
        let all: Vec<Vec<String>> = caches.iter().map(|c| c.metrics()).collect();
        assert_eq!(got, want, "{norm} ({file}) on cache {o}: {all:?}");
    }
    for (c, cache) in caches.iter().enumerate() {
        let want: Vec<String> = carbon
            .iter()
            .filter(|(n, _)| owner[n] == c)
            .map(|(_, f)| f.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            cache.metrics(),
            want,
            "cache {c} holds exactly its series, once"
        );
    }
    let m = http_get(&gw.admin, "/metrics", &[]).unwrap().body;
    assert!(
        m.contains("polymur_invalid_lines_total{reason=\"invalid_tags\"} 6"),
        "{m}"
    );
}
