//! `-route-test -config FILE`: where each input line would go, one output line per name it
//! is sent under.
//!
//! Format (issue 13): `<input metric>\t<name after rewrites>\t<member>,<member>,…` with
//! every member of every cluster in rule order (`host:port[:instance]`, or a file path),
//! `<input metric>\t<name>\tblackhole`, or `<input metric>\t<name>\tdrop`. A name with
//! cluster sends prints only its members; a name that was only blackholed or dropped
//! prints that word once.

use super::{Action, Rules};

/// The `-route-test` lines for one input line (a full `metric value timestamp` line, or a
/// bare name: then `validate` sees empty data).
pub fn dry_run(rules: &Rules, input_line: &str) -> Vec<String> {
    let line = input_line.trim_end_matches(['\n', '\r']);
    let metric = line.split([' ', '\t']).next().unwrap_or("");
    let d = rules.route(metric.as_bytes(), line.as_bytes());
    // Group the actions by name, keeping first-seen order.
    let mut groups: Vec<(Vec<u8>, Vec<String>, Option<&'static str>)> = Vec::new();
    let mut placed = Vec::new();
    for (name, action) in d.actions() {
        let gi = match groups.iter().position(|g| g.0 == name) {
            Some(i) => i,
            None => {
                groups.push((name.to_vec(), Vec::new(), None));
                groups.len() - 1
            }
        };
        let g = &mut groups[gi];
        match action {
            Action::Cluster(c) => {
                let cl = &rules.clusters[c];
                cl.placement(name, &mut placed);
                g.1.extend(placed.iter().map(|&m| cl.members[m].to_string()));
            }
            Action::Blackhole => {
                g.2.get_or_insert("blackhole");
            }
            Action::Drop { .. } | Action::Invalid => {
                g.2.get_or_insert("drop");
            }
        }
    }
    groups
        .into_iter()
        .filter_map(|(name, members, other)| {
            let what = if members.is_empty() {
                other?.to_string()
            } else {
                members.join(",")
            };
            Some(format!(
                "{metric}\t{}\t{what}",
                String::from_utf8_lossy(&name)
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_members_blackhole_and_drop() {
        let r = Rules::from_str(
            "t.conf",
            "cluster c carbon_ch 127.0.0.1:2104=a;\ncluster f file /tmp/x;\n\
             match ^junk send to blackhole;\nrewrite ^old\\.(.*) into new.\\1;\n\
             match * validate ^[0-9] else drop send to c f;",
        )
        .unwrap();
        assert_eq!(dry_run(&r, "junk.a 1 2"), vec!["junk.a\tjunk.a\tblackhole"]);
        assert_eq!(
            dry_run(&r, "old.a 1 2\n"),
            vec!["old.a\tnew.a\t127.0.0.1:2104:a,/tmp/x"]
        );
        assert_eq!(dry_run(&r, "old.a x 2"), vec!["old.a\tnew.a\tdrop"]);
    }
}
