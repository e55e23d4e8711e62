//! Which rules can match a name at all, from their literal prefixes, without visiting
//! the others.
//!
//! Most rules of real configurations are anchored on a literal (`^sys\.`, `^dc[0-9]…`
//! starts with `dc`): such a rule can only match names starting with it. The prefixes
//! form a trie; walking a name down the trie yields exactly the anchored rules whose
//! prefix it has, and the unanchored rules are always candidates. Rules still run in
//! file order over the candidates, so semantics do not change — a line that matches
//! nothing costs one walk of its first bytes, not one comparison per rule.

/// A trie of rule prefixes.
#[derive(Debug, Default)]
pub struct Prefilter {
    nodes: Vec<Node>,
    /// Rules without a prefix (candidates for every name), ascending.
    always: Vec<u32>,
}

#[derive(Debug, Default)]
struct Node {
    /// Children by next byte, sorted.
    next: Vec<(u8, u32)>,
    /// Rules whose whole prefix ends here.
    rules: Vec<u32>,
}

impl Prefilter {
    /// `prefixes[i]` is the literal every name rule `i` matches starts with, if any.
    pub fn new(prefixes: &[Option<&[u8]>]) -> Prefilter {
        let mut p = Prefilter {
            nodes: vec![Node::default()],
            always: Vec::new(),
        };
        for (i, pre) in prefixes.iter().enumerate() {
            match pre {
                Some(pre) if !pre.is_empty() => {
                    let mut n = 0usize;
                    for &b in *pre {
                        n = match p.nodes[n].next.binary_search_by_key(&b, |e| e.0) {
                            Ok(k) => p.nodes[n].next[k].1 as usize,
                            Err(k) => {
                                let id = p.nodes.len() as u32;
                                p.nodes.push(Node::default());
                                p.nodes[n].next.insert(k, (b, id));
                                id as usize
                            }
                        };
                    }
                    p.nodes[n].rules.push(i as u32);
                }
                _ => p.always.push(i as u32),
            }
        }
        p
    }

    /// Fills `out` (cleared first) with the rules at index `from` or later that can match
    /// `name`, ascending.
    pub fn candidates(&self, name: &[u8], from: usize, out: &mut Vec<u32>) {
        out.clear();
        let mut n = 0usize;
        for &b in name {
            match self.nodes[n].next.binary_search_by_key(&b, |e| e.0) {
                Ok(k) => n = self.nodes[n].next[k].1 as usize,
                Err(_) => break,
            }
            out.extend(self.nodes[n].rules.iter().filter(|&&r| r as usize >= from));
        }
        if out.is_empty() {
            let start = self.always.partition_point(|&r| (r as usize) < from);
            out.extend_from_slice(&self.always[start..]);
            return;
        }
        let start = self.always.partition_point(|&r| (r as usize) < from);
        out.extend_from_slice(&self.always[start..]);
        out.sort_unstable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_the_rules_whose_prefix_the_name_has_plus_the_unanchored() {
        let p = Prefilter::new(&[
            Some(b"sys."),
            None,
            Some(b"sys.cpu"),
            Some(b"app."),
            Some(b"s"),
            None,
        ]);
        let mut out = Vec::new();
        p.candidates(b"sys.cpu.user", 0, &mut out);
        assert_eq!(out, vec![0, 1, 2, 4, 5]);
        p.candidates(b"other", 0, &mut out);
        assert_eq!(out, vec![1, 5]);
        p.candidates(b"sys.cpu", 2, &mut out);
        assert_eq!(out, vec![2, 4, 5]);
    }
}
