//! `-route-test`: print where each metric would go, like `carbon-c-relay -t`.
//!
//! Reads plaintext lines (or bare metric names) and writes
//! `metric<TAB>dest[,dest...]` per line, destinations spelled as configured — the
//! format of the routing fixtures, so a fixture body can be diffed against it.

use std::io::{self, BufRead, Write};

use super::hash_router::HashRouter;
use super::ring::HashKind;
use crate::dest::DestAddr;

/// How lines are distributed in the dry run.
pub enum Plan {
    /// Every destination gets every metric.
    Broadcast,
    /// A hash ring with a replication factor.
    Hash(HashKind, usize),
}

/// Routes every line of `input` and writes the owners to `output`.
pub fn run(
    plan: &Plan,
    dests: &[DestAddr],
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
    let mut n = 0;
    for line in input.split(b'\n') {
        let line = line?;
        let Some(metric) = line
            .split(|&b| b == b' ' || b == b'\t' || b == b'\r')
            .find(|f| !f.is_empty())
        else {
            continue;
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
}
