//! Differential conformance: for a corpus of carbon-c-relay configurations and thousands
//! of metric lines, `polymur::rules::dry_run` must give the same names and the same
//! destinations as the real `carbon-c-relay -t` (3.7.3, Debian package).
//!
//! The oracle runs as a subprocess, once per configuration, with every input line
//! followed by a sentinel line so its (unframed) test-mode output can be cut per input.
//! What is compared per input line: for every name the line is sent under, the set of
//! destinations (`host:port` or file path; carbon-c-relay does not print instances), or
//! `blackhole` / `drop` when that name was sent nowhere. Skips with a message when
//! carbon-c-relay is not installed (`apt-get install -y carbon-c-relay`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use polymur::rules::{dry_run, Rules};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rules");
/// Generated names per configuration, on top of its own `.tst` inputs.
const GENERATED: usize = 1500;
/// Upper bound for one carbon-c-relay run.
const ORACLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Per input line: name → destinations (or `{"blackhole"}` / `{"drop"}`).
type Outcome = BTreeMap<String, BTreeSet<String>>;

fn oracle() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CARBON_C_RELAY") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/bin/carbon-c-relay",
        "/usr/sbin/carbon-c-relay",
        "/usr/local/bin/carbon-c-relay",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

macro_rules! require_oracle {
    () => {
        match oracle() {
            Some(p) => p,
            None => {
                eprintln!(
                    "SKIP: carbon-c-relay not installed (apt-get install -y carbon-c-relay, or set \
                     CARBON_C_RELAY); the differential conformance test did not run"
                );
                return;
            }
        }
    };
}

/// A small deterministic generator (no dependency, same corpus on every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, v: &'a [String]) -> &'a str {
        &v[self.next() as usize % v.len()]
    }
}

/// Metric lines shaped after the configuration: its own words (from patterns and
/// replacements) mixed with common Graphite parts, digits, case and separators, so that
/// most rules are hit both ways. Values include non-numbers for `validate`.
fn generated_lines(conf: &str, seed: u64, n: usize) -> Vec<String> {
    let mut words: BTreeSet<String> = conf
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')))
        .filter(|w| !w.is_empty() && w.len() < 24)
        .map(str::to_string)
        .collect();
    for w in [
        "servers", "sys", "app", "web01", "db12", "cpu", "count", "Mixed", "Case", "x", "y", "q",
        "n", "a", "b",
    ] {
        words.insert(w.to_string());
    }
    let words: Vec<String> = words.into_iter().collect();
    // Literal `^prefix\.` anchors of the configuration start half of the names, so
    // anchored rules are hit often, not by chance.
    let prefixes: Vec<String> = conf
        .split('^')
        .skip(1)
        .filter_map(|s| {
            let w: String = s
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            s[w.len()..].starts_with("\\.").then(|| format!("{w}."))
        })
        .filter(|w| w.len() > 1)
        .collect();
    let values: Vec<String> = ["1", "42", "4.2", "-3", "1e5", "abc", "0.5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let stamps: Vec<String> = ["1700000000", "42", "x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut rng = Lcg(seed);
    (0..n)
        .map(|_| {
            let parts = 1 + rng.next() as usize % 5;
            let mut name = String::new();
            if !prefixes.is_empty() && rng.next().is_multiple_of(2) {
                name.push_str(rng.pick(&prefixes));
            }
            for i in 0..parts {
                if i > 0 {
                    name.push(match rng.next() % 10 {
                        0 => '-',
                        1 => '_',
                        _ => '.',
                    });
                }
                let w = rng.pick(&words).to_string();
                match rng.next() % 8 {
                    0 => name.push_str(&w.to_uppercase()),
                    1 => name.push_str(&format!("{w}{}", rng.next() % 1000)),
                    _ => name.push_str(&w),
                }
            }
            let v = rng.pick(&values).to_string();
            let t = if rng.next().is_multiple_of(6) {
                rng.pick(&stamps).to_string()
            } else {
                "1700000000".into()
            };
            format!("{name} {v} {t}")
        })
        .collect()
}

/// The configuration's own test inputs (`NAME.tst`), bare names completed to full lines.
fn tst_lines(conf: &Path) -> Vec<String> {
    let Ok(t) = std::fs::read_to_string(conf.with_extension("tst")) else {
        return Vec::new();
    };
    t.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.starts_with(' ') && !l.starts_with('\t'))
        .map(|l| {
            if l.contains(' ') {
                l.to_string()
            } else {
                format!("{l} 1 1700000000")
            }
        })
        .collect()
}

fn sentinel(i: usize) -> String {
    format!("zz-polymur-sentinel-{i}")
}

/// Runs `carbon-c-relay -t` over `lines`, returns each line's [`Outcome`].
fn run_oracle(bin: &Path, conf: &Path, lines: &[String]) -> Vec<Outcome> {
    let mut child = Command::new(bin)
        .args(["-H", "test", "-t", "-f"])
        .arg(conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn carbon-c-relay");
    let mut stdin = child.stdin.take().unwrap();
    let feed: String = lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{l}\n{} 1 1\n", sentinel(i)))
        .collect();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(feed.as_bytes());
    });
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > ORACLE_TIMEOUT {
            let _ = child.kill();
            panic!(
                "carbon-c-relay -t on {} took longer than {ORACLE_TIMEOUT:?}",
                conf.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().unwrap();
    let out = reader.join().unwrap();
    let blocks = parse_blocks(&out);
    split_outcomes(&blocks, lines)
}

/// One block of carbon-c-relay's test output.
#[derive(Debug, Default)]
struct Block {
    /// The name the rule saw (first block of an input: the input name).
    name: String,
    /// The name after a rewrite block.
    rewritten: Option<String>,
    dests: Vec<String>,
    blackholed: bool,
    dropped: bool,
}

/// Cuts the test-mode output into blocks: `rewrite`, `match`, `nothing matched NAME`.
fn parse_blocks(out: &str) -> Vec<Block> {
    let lines: Vec<&str> = out.lines().collect();
    // Skip the configuration echo: blocks start after the last rule of the echo, which
    // is the first line that is exactly "rewrite"/"match" followed by a "    … -> …" line.
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if let Some(name) = l.strip_prefix("nothing matched ") {
            blocks.push(Block {
                name: name.to_string(),
                ..Block::default()
            });
            i += 1;
            continue;
        }
        let is_head = (l == "rewrite" || l == "match")
            && lines
                .get(i + 1)
                .is_some_and(|n| n.starts_with("    ") && (n.contains(" -> ") || n.ends_with(']')));
        if !is_head {
            i += 1;
            continue;
        }
        let mut b = Block::default();
        let first = lines[i + 1];
        i += 2;
        if first.ends_with(']')
            && !first.contains(" (regex) -> ")
            && !first.starts_with("    * -> ")
        {
            b.name = lines
                .get(i)
                .and_then(|n| n.strip_prefix("    -> "))
                .unwrap_or("")
                .to_string();
            i += 1;
        } else {
            b.name = first.rsplit_once(" -> ").map_or("", |x| x.1).to_string();
        }
        let mut in_cluster = false;
        while i < lines.len() && lines[i].starts_with("    ") {
            let t = lines[i];
            if let Some(r) = t.strip_prefix("    into(") {
                b.rewritten = Some(r.rsplit_once(") -> ").map_or("", |x| x.1).to_string());
            } else if t == "    blackholed" {
                b.blackholed = true;
            } else if t.starts_with("        fail -> ") {
                b.dropped = true;
            } else if t.starts_with("        ") {
                if in_cluster {
                    b.dests.push(t.trim().to_string());
                }
            } else {
                // A 4-space line: a cluster header `kind(name)`, validate or stop.
                in_cluster = t.ends_with(')') && !t.starts_with("    validate");
            }
            i += 1;
        }
        blocks.push(b);
    }
    blocks
}

/// Assigns blocks to inputs (each input's first block names it) and normalises them.
fn split_outcomes(blocks: &[Block], lines: &[String]) -> Vec<Outcome> {
    let feed: Vec<String> = lines
        .iter()
        .enumerate()
        .flat_map(|(i, l)| [l.split(' ').next().unwrap_or("").to_string(), sentinel(i)])
        .collect();
    let mut per_feed: Vec<Vec<&Block>> = vec![Vec::new(); feed.len()];
    let mut k = 0usize;
    let mut started = false;
    for b in blocks {
        if !started && b.name == feed[0] {
            started = true;
        } else if k + 1 < feed.len() && b.name == feed[k + 1] {
            k += 1;
        }
        if started {
            per_feed[k].push(b);
        }
    }
    (0..lines.len())
        .map(|i| outcome_of(&per_feed[2 * i], &feed[2 * i]))
        .collect()
}

/// The dry-run grouping applied to carbon-c-relay's blocks: per name its destinations,
/// else the first of blackhole/drop; a line sent nowhere is blackholed under its final name.
fn outcome_of(blocks: &[&Block], input: &str) -> Outcome {
    let mut order: Vec<String> = Vec::new();
    let mut members: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut other: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut last = input.to_string();
    for b in blocks {
        if let Some(r) = &b.rewritten {
            last = r.clone();
            continue;
        }
        if b.dests.is_empty() && !b.blackholed && !b.dropped {
            continue;
        }
        if !order.contains(&b.name) {
            order.push(b.name.clone());
        }
        if b.dropped {
            other.entry(b.name.clone()).or_insert("drop");
        } else if b.blackholed {
            other.entry(b.name.clone()).or_insert("blackhole");
        }
        members
            .entry(b.name.clone())
            .or_default()
            .extend(b.dests.iter().cloned());
    }
    let mut out = Outcome::new();
    for n in order {
        let m = members.remove(&n).unwrap_or_default();
        if !m.is_empty() {
            out.insert(n, m);
        } else if let Some(w) = other.get(&n) {
            out.insert(n, BTreeSet::from([w.to_string()]));
        }
    }
    if out.is_empty() {
        out.insert(last, BTreeSet::from(["blackhole".to_string()]));
    }
    out
}

/// Our dry run for one line, in the same shape (instances stripped: c-relay prints none).
fn ours(rules: &Rules, line: &str) -> Outcome {
    let mut out = Outcome::new();
    for row in dry_run(rules, line) {
        let mut f = row.splitn(3, '\t');
        let (_, name, dests) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap_or(""));
        let set = out.entry(name.to_string()).or_default();
        for d in dests.split(',') {
            let parts: Vec<&str> = d.split(':').collect();
            set.insert(if parts.len() >= 2 {
                format!("{}:{}", parts[0], parts[1])
            } else {
                d.to_string()
            });
        }
    }
    out
}

fn configs(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(format!("{FIXTURES}/{dir}"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no configurations under {FIXTURES}/{dir}");
    v
}

/// Compares one configuration; returns the number of lines compared and how many of
/// them the oracle sent to a cluster (so a harness that parses nothing cannot pass).
fn compare(bin: &Path, conf: &Path, seed: u64) -> (usize, usize) {
    let text = std::fs::read_to_string(conf).unwrap();
    let rules = Rules::load(conf).unwrap_or_else(|e| panic!("{}: {e}", conf.display()));
    let mut lines = tst_lines(conf);
    lines.extend(generated_lines(&text, seed, GENERATED));
    let expected = run_oracle(bin, conf, &lines);
    let sent = expected
        .iter()
        .filter(|o| {
            o.values()
                .any(|d| !d.contains("blackhole") && !d.contains("drop"))
        })
        .count();
    eprintln!(
        "{}: {sent} of {} lines sent to a cluster",
        conf.display(),
        lines.len()
    );
    let mut diffs = Vec::new();
    for (line, want) in lines.iter().zip(&expected) {
        let got = ours(&rules, line);
        if &got != want {
            diffs.push(format!(
                "  {line:?}\n    carbon-c-relay: {want:?}\n    polymur:        {got:?}"
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{}: {} of {} lines differ, first ones:\n{}",
        conf.display(),
        diffs.len(),
        lines.len(),
        diffs.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
    );
    (lines.len(), sent)
}

fn compare_dir(dir: &str) {
    let bin = require_oracle!();
    let (mut confs, mut total, mut sent) = (0, 0, 0);
    for (i, conf) in configs(dir).iter().enumerate() {
        let (n, s) = compare(&bin, conf, 0x5eed + i as u64);
        eprintln!("{}: {n} lines agree", conf.display());
        confs += 1;
        total += n;
        sent += s;
    }
    assert!(
        sent * 4 > total,
        "{dir}: only {sent} of {total} lines reached a cluster: is the oracle output parsed?"
    );
    eprintln!(
        "{dir}: {confs} configurations, {total} lines compared with carbon-c-relay -t ({sent} sent to clusters)"
    );
}

#[test]
fn carbon_c_relay_own_issue_configurations_route_identically() {
    compare_dir("carbon-c-relay");
}

#[test]
fn configurations_covering_every_construct_route_identically() {
    compare_dir("own");
}

#[test]
fn includes_by_glob_route_identically() {
    let bin = require_oracle!();
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("conf.d")).unwrap();
    std::fs::write(
        d.path().join("conf.d/10-clusters.conf"),
        "cluster a forward 127.0.0.1:3501;\ncluster b forward 127.0.0.1:3502;\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("conf.d/20-rules.conf"),
        "match ^inc\\. send to a stop;\nrewrite ^(.*)$ into moved.\\1;\n",
    )
    .unwrap();
    std::fs::write(d.path().join("conf.d/30-tail.conf"), "match * send to b;\n").unwrap();
    let main = d.path().join("main.conf");
    std::fs::write(
        &main,
        format!("include {}/conf.d/*.conf;\n", d.path().display()),
    )
    .unwrap();
    let (n, sent) = compare(&bin, &main, 7);
    assert_eq!(sent, n, "every line reaches a or b");
    eprintln!("include glob: {n} lines agree");
}

#[test]
fn configurations_carbon_c_relay_refuses_are_refused() {
    let bin = require_oracle!();
    for (name, src) in [
        ("unknown-cluster", "match * send to nowhere;"),
        (
            "syntax",
            "cluster a forward 127.0.0.1:1;\nmatch * send to a",
        ),
        (
            "bad-regex",
            "cluster a forward 127.0.0.1:1;\nmatch ^(unclosed send to a;",
        ),
        (
            "replication",
            "cluster a carbon_ch replication 0 127.0.0.1:1;",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(format!("{name}.conf"));
        std::fs::write(&p, src).unwrap();
        let st = Command::new(&bin)
            .args(["-t", "-t", "-f"])
            .arg(&p)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            !st.status.success(),
            "{name}: carbon-c-relay accepted it, the case is wrong"
        );
        let e = Rules::load(&p).expect_err(name);
        assert!(
            e.file.ends_with(&format!("{name}.conf")) && e.line >= 1,
            "{name}: {e}"
        );
    }
    // carbon-c-relay's own refused configurations (shared servers, replication).
    for conf in configs("refused") {
        let st = Command::new(&bin)
            .args(["-t", "-t", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let theirs =
            String::from_utf8_lossy(&st.stderr).to_string() + &String::from_utf8_lossy(&st.stdout);
        assert!(
            !st.status.success(),
            "{}: carbon-c-relay accepted it",
            conf.display()
        );
        let e = Rules::load(&conf).expect_err(&conf.display().to_string());
        // Same reason, in carbon-c-relay's words.
        assert!(
            theirs.contains(&e.msg),
            "{}: ours {e:?}, theirs {theirs}",
            conf.display()
        );
        eprintln!("{}: refused by both: {}", conf.display(), e.msg);
    }
}
