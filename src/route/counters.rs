//! What the routing rules did with lines: per cluster sent, per `match` rule matched,
//! blackholed and dropped, and the lines no cluster got (blackholed, dropped by
//! `validate`). Shared by every router built over one configuration, so a destination
//! change (a new router) does not reset them.

use std::sync::atomic::{AtomicU64, Ordering};

/// One `match` rule's counters.
#[derive(Debug, Default)]
pub struct RuleCounter {
    /// Index of the rule among the configuration's `match` and `rewrite` rules, from 0.
    pub rule: usize,
    /// `file:line` and the first expression.
    pub label: String,
    /// Lines the rule matched (whatever it then did with them).
    pub matched: AtomicU64,
    /// Of those, lines it sent to `blackhole`.
    pub blackholed: AtomicU64,
    /// Of those, lines its `validate` dropped.
    pub dropped: AtomicU64,
}

/// `(rule, label, matched, blackholed, dropped)` of one rule, read now.
pub type RuleCounts = (usize, String, u64, u64, u64);

/// Counters of one loaded configuration; [`RouteCounters::new`] sizes them for its clusters.
#[derive(Debug, Default)]
pub struct RouteCounters {
    /// Lines sent under some name to each cluster (once per cluster, not per member).
    pub cluster_lines: Vec<(String, AtomicU64)>,
    /// Lines sent to `blackhole`, or that no rule sent anywhere.
    pub blackholed: AtomicU64,
    /// Lines a `validate` clause dropped.
    pub dropped: AtomicU64,
    /// Lines a rewrite gave a name no carbon-cache takes ([`crate::rules::Action::Invalid`]).
    pub invalid: AtomicU64,
    /// [`note_invalid`](Self::note_invalid)'s log, at most every 10 s.
    invalid_log: crate::stats::LogGate,
    /// `match` rules in configuration order ([`with_rules`](Self::with_rules)).
    pub rules: Vec<RuleCounter>,
    /// `slot[rule index]`: the rule's place in `rules` (`usize::MAX` for a rewrite).
    slot: Vec<usize>,
}

impl RouteCounters {
    /// Logs, at most once per 10 s, that rewrites made invalid names (`example` one of
    /// them): the configuration needs fixing, and each such line is dropped.
    pub fn note_invalid(&self, example: &[u8]) {
        if self.invalid_log.allow(10) {
            let shown = &example[..example.len().min(200)];
            tracing::warn!(
                "Routing rules: a rewrite made {:?} ({} bytes), which no carbon-cache takes (empty, \
                 a blank or control byte, or -max-line-bytes long): such lines are dropped \
                 ({} so far, polymur_route_rewrite_invalid_total)",
                String::from_utf8_lossy(shown),
                example.len(),
                self.invalid.load(Ordering::Relaxed)
            );
        }
    }

    /// Zeroed counters for clusters named `names`, in configuration order.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> RouteCounters {
        RouteCounters {
            cluster_lines: names
                .into_iter()
                .map(|n| (n.to_string(), AtomicU64::new(0)))
                .collect(),
            ..RouteCounters::default()
        }
    }

    /// Adds per-rule counters for the `(rule index, label)` of every `match` rule.
    pub fn with_rules(mut self, rules: Vec<(usize, String)>) -> RouteCounters {
        let len = rules.iter().map(|(i, _)| i + 1).max().unwrap_or(0);
        self.slot = vec![usize::MAX; len];
        for (k, (rule, label)) in rules.into_iter().enumerate() {
            self.slot[rule] = k;
            self.rules.push(RuleCounter {
                rule,
                label,
                ..RuleCounter::default()
            });
        }
        self
    }

    /// Where rule `rule` (by its index in the configuration) is in [`rules`](Self::rules).
    pub fn slot_of(&self, rule: usize) -> Option<usize> {
        self.slot.get(rule).copied().filter(|&k| k != usize::MAX)
    }

    /// Adds one batch's per-rule counts (`[matched, blackholed, dropped]` by slot).
    pub fn add_rules(&self, counts: &[[u64; 3]]) {
        for (c, n) in self.rules.iter().zip(counts) {
            if n[0] > 0 {
                c.matched.fetch_add(n[0], Ordering::Relaxed);
                c.blackholed.fetch_add(n[1], Ordering::Relaxed);
                c.dropped.fetch_add(n[2], Ordering::Relaxed);
            }
        }
    }

    /// `(cluster name, lines)` now.
    pub fn clusters(&self) -> Vec<(String, u64)> {
        self.cluster_lines
            .iter()
            .map(|(n, c)| (n.clone(), c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Every rule's counts now.
    pub fn rule_counts(&self) -> Vec<RuleCounts> {
        let r = Ordering::Relaxed;
        self.rules
            .iter()
            .map(|c| {
                (
                    c.rule,
                    c.label.clone(),
                    c.matched.load(r),
                    c.blackholed.load(r),
                    c.dropped.load(r),
                )
            })
            .collect()
    }
}
