//! A cache of routing decisions by metric name, so a configuration with regexes pays
//! for its regexes once per series instead of once per line.
//!
//! Graphite series repeat every interval, and without `validate` a line's decision
//! depends on its name alone. A decision is kept as a [`Plan`]: which rewrites applied
//! (in order) and the actions and rule outcomes, without the names. Replaying a plan
//! runs only those rewrites on the line's own name — no match is tried, no regex set is
//! searched — and yields the very [`Decision`](super::Decision) the rules would have
//! given. Distinct plans are few (they are shapes of the configuration, not series), so
//! they are interned and the name table holds a 16-bit plan index per name: the
//! lock-free [`PosCache`] the hash rings use (its 2^-44 false-hit odds per missing
//! lookup, with a seed new in every process, apply here too). A decision that tested a
//! `validate` expression depends on the data and is never cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::{Action, Outcome};
use crate::route::pos_cache::{self, PosCache};

/// A replayable decision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Plan {
    /// Step indices of the rewrites that applied, in order.
    pub rewrites: Vec<u32>,
    /// `(name index, action)`: name 0 is the input, name `k` the one rewrite `k` made.
    pub actions: Vec<(u32, Action)>,
    /// `(rule, outcome)` of every match that matched.
    pub matched: Vec<(u32, Outcome)>,
}

/// Most distinct plans one configuration keeps; past that, new shapes go uncached.
const MAX_PLANS: usize = 4096;

/// Interned plans: read lock-free by index, added under a lock (a miss only).
struct Plans {
    table: Box<[OnceLock<Plan>]>,
    len: AtomicUsize,
    index: Mutex<HashMap<Plan, u16>>,
}

impl Plans {
    fn new() -> Plans {
        Plans {
            table: (0..MAX_PLANS).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
            index: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, i: u16) -> Option<&Plan> {
        self.table.get(usize::from(i))?.get()
    }

    /// The index of `plan`, added when new; `None` when the table is full.
    fn intern(&self, plan: Plan) -> Option<u16> {
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = index.get(&plan) {
            return Some(i);
        }
        let i = self.len.load(Ordering::Relaxed);
        if i >= MAX_PLANS {
            return None;
        }
        let _ = self.table[i].set(plan.clone());
        self.len.store(i + 1, Ordering::Relaxed);
        let i = i as u16;
        index.insert(plan, i);
        Some(i)
    }
}

/// Name → plan, for one loaded configuration (every router over it shares it).
pub struct DecisionCache {
    names: PosCache,
    plans: Plans,
}

impl std::fmt::Debug for DecisionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionCache")
            .field("slots", &self.names.slots())
            .field("plans", &self.plans.len.load(Ordering::Relaxed))
            .finish()
    }
}

/// How one lookup went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Replayed from the cache.
    Hit,
    /// Decided by the rules and remembered (`true`: over another name's entry).
    Stored(bool),
    /// Decided by the rules, not cacheable (it tested `validate`) or the cache is off.
    Uncached,
}

impl DecisionCache {
    /// A cache of `slots` names (the hash rings' default size when 0).
    pub fn new(slots: usize) -> DecisionCache {
        let slots = if slots == 0 {
            pos_cache::DEFAULT_SLOTS
        } else {
            slots
        };
        DecisionCache {
            names: PosCache::new(slots),
            plans: Plans::new(),
        }
    }

    /// Hashes `name` and starts fetching its table entry (see [`PosCache::locate`]).
    #[inline]
    pub fn locate(&self, name: &[u8]) -> pos_cache::Probe {
        self.names.locate(name)
    }

    /// [`PosCache::pipelined`] over this cache's names.
    #[inline]
    pub fn pipelined<'b, T: Copy, I: Iterator<Item = (T, &'b [u8])>>(
        &self,
        items: I,
    ) -> pos_cache::Pipelined<'_, 'b, T, I> {
        self.names.pipelined(items)
    }

    /// The plan remembered for the name `probe` located.
    #[inline]
    pub fn find(&self, probe: &pos_cache::Probe) -> Option<&Plan> {
        self.names.get(probe).and_then(|i| self.plans.get(i))
    }

    /// Remembers `plan` for the name `probe` located; true when it evicted another.
    pub fn store(&self, probe: &pos_cache::Probe, plan: Plan) -> Option<bool> {
        let i = self.plans.intern(plan)?;
        Some(self.names.insert(probe, i))
    }

    /// True when the next batch should not use the cache (it kept missing).
    pub fn skip_batch(&self) -> bool {
        self.names.skip_batch()
    }

    /// How a batch fared (see [`PosCache::learn`]).
    pub fn learn(&self, hits: u64, evictions: u64, lines: u64) {
        self.names.learn(hits, evictions, lines);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Decision, Rules};

    /// Every action with its name, and the rule outcomes.
    type Decided = (Vec<(Vec<u8>, super::Action)>, Vec<(usize, super::Outcome)>);

    fn decided(d: &Decision) -> Decided {
        let actions = d.actions().map(|(n, a)| (n.to_vec(), a)).collect();
        (actions, d.matched().to_vec())
    }

    /// Every fixture configuration and the benchmark's: a cached decision (stored, then
    /// replayed) is the decision the rules give, for the same names and for lines that
    /// `validate` tests.
    #[test]
    fn replayed_plans_give_the_rules_own_decisions() {
        let (mut compared, mut hits) = (0, 0);
        for (f, text) in super::super::testing::configs() {
            let Ok(rules) = Rules::from_str("t.conf", &text) else {
                continue; // includes relative to another directory
            };
            let cache = super::DecisionCache::new(1 << 16);
            let (mut plain, mut cached) = (Decision::default(), Decision::default());
            for round in 0..2 {
                for name in super::super::testing::names(&text) {
                    for line in [format!("{name} 1 2"), format!("{name} x 2")] {
                        rules.route_into(name.as_bytes(), line.as_bytes(), &mut plain);
                        let probe = cache.locate(name.as_bytes());
                        let how = rules.route_cached(
                            &cache,
                            &probe,
                            name.as_bytes(),
                            line.as_bytes(),
                            &mut cached,
                        );
                        assert_eq!(decided(&plain), decided(&cached), "{}: {line}", f.display());
                        if round == 1 && how == super::Lookup::Hit {
                            hits += 1;
                        }
                        compared += 1;
                    }
                }
            }
        }
        assert!(compared > 10_000, "{compared} decisions compared");
        assert!(hits * 4 > compared, "{hits} of {compared} replayed");
    }
}
