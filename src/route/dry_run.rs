//! `-route-test`: print where each metric would go, like `carbon-c-relay -t`.
//!
//! Reads plaintext lines (or bare metric names) and writes
//! `metric<TAB>dest[,dest...]` per line, destinations spelled as configured — the
//! format of the routing fixtures, so a fixture body can be diffed against it.
//! With `-tag-normalize` the first column is the normalized name (what the daemon
//! forwards and hashes); a name carbon's tag parser rejects gets no output line,
//! and a note on stderr, because the daemon would drop it.

use std::io::{self, BufRead, Write};

use super::hash_router::HashRouter;
use super::ring::HashKind;
use crate::dest::DestAddr;
use crate::line::LineRules;
use crate::tags::{self, Normalizer};

/// How lines are distributed in the dry run.
pub enum Plan {
    /// Every destination gets every metric.
    Broadcast,
    /// A hash ring with a replication factor.
    Hash(HashKind, usize),
}

/// Routes every line of `input` and writes the owners to `output`, names as given.
pub fn run(
    plan: &Plan,
    dests: &[DestAddr],
    input: impl BufRead,
    output: impl Write,
) -> io::Result<u64> {
    run_with(plan, dests, &LineRules::default(), input, output)
}

/// [`run`], with names rewritten as the daemon would per `rules` (`-tag-normalize`).
pub fn run_with(
    plan: &Plan,
    dests: &[DestAddr],
    rules: &LineRules,
    input: impl BufRead,
    mut output: impl Write,
) -> io::Result<u64> {
    let names: Vec<String> = dests.iter().map(|d| d.to_string()).collect();
    let router = match plan {
        Plan::Hash(kind, rf) => Some(HashRouter::new(*kind, dests, *rf)),
        Plan::Broadcast => None,
    };
    let all: Vec<usize> = (0..dests.len()).collect();
    let mut owners = Vec::new();
    let mut normalizer = Normalizer::default();
    let mut normalized = Vec::new();
    let mut n = 0;
    for line in input.split(b'\n') {
        let line = line?;
        let Some(metric) = line
            .split(|&b| b == b' ' || b == b'\t' || b == b'\r')
            .find(|f| !f.is_empty())
        else {
            continue;
        };
        let metric = if rules.tag_normalize && tags::needs_normalizing(metric) {
            normalized.clear();
            let valid = std::str::from_utf8(metric).is_ok();
            match normalizer.normalize(metric, &mut normalized) {
                Ok(()) if valid => &normalized[..],
                result => {
                    let why = match result {
                        Err(e) => e.to_string(),
                        Ok(()) => "not UTF-8".to_string(),
                    };
                    eprintln!(
                        "{}: invalid tags ({why}): dropped with -tag-normalize",
                        String::from_utf8_lossy(metric)
                    );
                    continue;
                }
            }
        } else {
            metric
        };
        let picked: &[usize] = match &router {
            Some(r) => {
                r.owners(metric, &mut owners);
                &owners
            }
            None => &all,
        };
        output.write_all(metric)?;
        output.write_all(b"\t")?;
        for (i, &d) in picked.iter().enumerate() {
            if i > 0 {
                output.write_all(b",")?;
            }
            output.write_all(names[d].as_bytes())?;
        }
        output.write_all(b"\n")?;
        n += 1;
    }
    output.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_metric_tab_destinations() {
        let dests: Vec<DestAddr> = vec!["a:1".parse().unwrap(), "b:2:x".parse().unwrap()];
        let mut out = Vec::new();
        run(
            &Plan::Broadcast,
            &dests,
            &b"m.one 1 2\n\nm.two\n"[..],
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "m.one\ta:1,b:2:x\nm.two\ta:1,b:2:x\n"
        );
    }

    #[test]
    fn normalized_names_when_asked() {
        let dests: Vec<DestAddr> = vec!["a:1".parse().unwrap()];
        let input = &b"x;b=2;a=1 1 2\nx;a=~b\nm{a=\"1\"}\n"[..];
        let rules = LineRules {
            tag_normalize: true,
            ..LineRules::default()
        };
        let mut out = Vec::new();
        run_with(&Plan::Broadcast, &dests, &rules, input, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "x;a=1;b=2\ta:1\nm;a=1\ta:1\n"
        );
        let mut out = Vec::new();
        run(&Plan::Broadcast, &dests, input, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "x;b=2;a=1\ta:1\nx;a=~b\ta:1\nm{a=\"1\"}\ta:1\n"
        );
    }
}
