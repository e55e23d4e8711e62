//! Routing rules in carbon-c-relay 3.7's configuration language (issue 13).
//!
//! A site that runs carbon-c-relay keeps its configuration: `cluster`, `match`,
//! `rewrite`, `include`, `listen` and `statistics` are read as carbon-c-relay reads them
//! (its man page, `carbon-c-relay.md`, is the reference), and `tests/rules_conformance.rs`
//! compares every routing decision with the real `carbon-c-relay -t`.
//!
//! * [`lexer`] / [`parser`] turn text into the [`ast::Config`] (errors carry
//!   file:line:column), [`include`](mod@include) expands `include` globs;
//! * [`regex`] is POSIX ERE on the `regex` crate, [`rewrite`] the replacement language,
//!   [`matcher`] the compiled expressions (literal comparisons, one regex set),
//!   [`prefilter`] the prefix trie that skips rules a name cannot match, [`cluster`]
//!   member placement;
//! * [`Rules`] is the compiled whole: [`Rules::route`] gives a [`Decision`] per line,
//!   [`dry_run()`] prints it in the `-route-test` format; [`plan`] caches decisions by
//!   name for the daemons ([`Rules::route_cached`]), [`router`] turns them into
//!   per-destination buffers.
//!
//! Semantics, exactly carbon-c-relay's: rules run top to bottom; a `rewrite` changes the
//! name for every later rule; a `match` sends to its clusters and processing goes on
//! unless it says `stop` (blackhole implies `stop`); a failed `validate` sends nothing for
//! that match, and stops processing when the match has no destinations of its own; a
//! line no match sends anywhere is blackholed. One deliberate difference: a line that
//! matches several expressions of one `match` is sent once, not once per expression.

pub mod ast;
pub mod cluster;
pub mod dry_run;
pub mod include;
pub mod lexer;
pub mod matcher;
pub mod parser;
pub mod plan;
pub mod prefilter;
pub mod regex;
pub mod rewrite;
pub mod router;

use std::path::Path;

pub use cluster::Cluster;
pub use dry_run::dry_run;

use ast::{Config, Expr, Rule};
use matcher::{Pattern, Segment, SetCache};
use prefilter::Prefilter;
use rewrite::Replacement;

/// A configuration error, pointing at where it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {msg}")]
pub struct RuleError {
    pub file: String,
    pub line: u32,
    pub col: u32,
    pub msg: String,
}

/// What happens to a line under one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send to the cluster with this index ([`Rules::clusters`]).
    Cluster(usize),
    /// `send to blackhole`, or no rule sent it anywhere.
    Blackhole,
    /// A `validate` failed (`log`: the line is also logged).
    Drop { log: bool },
    /// A rewrite made a name no carbon-cache takes ([`crate::line::valid_name`], or as
    /// long as the line limit): the line goes no further (deliberately unlike
    /// carbon-c-relay, which sends it on).
    Invalid,
}

/// What one `match` rule did with a line, for the per-rule counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Sent to its clusters.
    Sent,
    /// `send to blackhole`.
    Blackholed,
    /// Its `validate` failed.
    Dropped,
}

/// Every action for one line, each with the name it applies under (rewrites may change
/// the name between two matches). Reused across lines so routing does not allocate.
#[derive(Debug, Default)]
pub struct Decision {
    /// `(rule index in the configuration, outcome)` of every `match` that matched.
    matched: Vec<(usize, Outcome)>,
    /// Step indices of the rewrites that applied, in order (what a [`plan::Plan`] replays).
    rewrites: Vec<u32>,
    /// True when a `validate` was tested: the decision depends on the data, not only
    /// on the name, so it is not cached.
    validated: bool,
    /// Every name the line had, back to back.
    arena: Vec<u8>,
    /// `(start, end)` of each name in `arena`; the first is the input name.
    names: Vec<(usize, usize)>,
    /// `(index into names, action)` in rule order.
    actions: Vec<(usize, Action)>,
    /// Regex-set results of the current segment (reused).
    hits: Vec<bool>,
    /// The name being rewritten (reused).
    scratch: Vec<u8>,
    /// Candidate rules for the current name (reused).
    cands: Vec<u32>,
    /// Capture positions per rewrite (reused: a rewrite allocates once per Decision).
    locs: Vec<Option<::regex::bytes::CaptureLocations>>,
}

impl Decision {
    /// `(name, action)` in the order the rules produced them.
    pub fn actions(&self) -> impl Iterator<Item = (&[u8], Action)> + '_ {
        self.actions.iter().map(|&(n, a)| {
            let (s, e) = self.names[n];
            (&self.arena[s..e], a)
        })
    }

    /// `(rule, outcome)` of every `match` rule that matched the line, in rule order (the
    /// rule index counts every `match` and `rewrite` of the configuration from 0).
    pub fn matched(&self) -> &[(usize, Outcome)] {
        &self.matched
    }

    /// The name after every rewrite that applied.
    pub fn final_name(&self) -> &[u8] {
        self.names
            .last()
            .map_or(&[][..], |&(s, e)| &self.arena[s..e])
    }

    /// True when some rule sends the line to a cluster.
    pub fn is_sent(&self) -> bool {
        self.actions
            .iter()
            .any(|(_, a)| matches!(a, Action::Cluster(_)))
    }

    fn reset(&mut self, name: &[u8]) {
        self.arena.clear();
        self.names.clear();
        self.actions.clear();
        self.matched.clear();
        self.rewrites.clear();
        self.validated = false;
        self.arena.extend_from_slice(name);
        self.names.push((0, name.len()));
    }
}

/// One compiled rule (a `match` with several expressions is one step per expression).
#[derive(Debug)]
enum Step {
    Rewrite {
        pat: Pattern,
        repl: Replacement,
        /// This rewrite's slot in [`Decision`]'s reused capture buffers.
        idx: usize,
        /// `^literal(.*)$`: the literal ([`matcher::prefix_capture`]), captures without
        /// an automaton.
        head: Option<Vec<u8>>,
    },
    Match {
        pat: Pattern,
        rule: usize,
        validate: Option<(Pattern, bool)>,
        actions: Vec<Action>,
        stop: bool,
        validate_stops: bool,
    },
}

impl Step {
    /// What the step tests the name with.
    fn pattern(&self) -> &Pattern {
        match self {
            Step::Rewrite { pat, .. } | Step::Match { pat, .. } => pat,
        }
    }
}

/// A loaded configuration: clusters, compiled rules, and the sections the daemon maps.
#[derive(Debug)]
pub struct Rules {
    /// Clusters in configuration order; [`Action::Cluster`] indexes this.
    pub clusters: Vec<Cluster>,
    /// The configuration as parsed (listen and statistics sections for the daemon).
    pub config: Config,
    steps: Vec<Step>,
    /// `segment_of[i]` = the regex set step `i` belongs to (one set for the whole
    /// configuration today: its answer holds until a rewrite changes the name).
    segment_of: Vec<usize>,
    segments: Vec<Segment>,
    /// Skips rules whose literal prefix the name does not have.
    prefilter: Prefilter,
    /// Decisions by name ([`plan`]), made on first use; only for configurations with a
    /// regex (literal rules cost less than a lookup).
    cache: std::sync::OnceLock<plan::DecisionCache>,
    has_regex: bool,
    /// `-max-line-bytes`: a rewritten name that leaves no room for a value and a
    /// timestamp under it is [`Action::Invalid`] (decided by the name alone, so the
    /// decision can be cached; a line whose long data takes it over the limit after a
    /// rewrite is left to the destination writer's refusal handling).
    line_limit: usize,
}

impl Rules {
    /// Reads `path` (and its includes) and compiles it.
    pub fn load(path: impl AsRef<Path>) -> Result<Rules, RuleError> {
        Rules::compile(parser::parse_file(path.as_ref())?)
    }

    /// Compiles configuration text; `name` is what errors call it.
    pub fn from_str(name: &str, src: &str) -> Result<Rules, RuleError> {
        Rules::compile(parser::parse_str(name, src)?)
    }

    /// The cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// `match * send to CLUSTER stop;` and nothing else: what a daemon without `-config`
    /// routes by (its `-destinations` are the one cluster).
    pub fn single(cluster: Cluster) -> Rules {
        Rules {
            clusters: vec![cluster],
            config: Config::default(),
            steps: vec![Step::Match {
                pat: Pattern::All,
                rule: 0,
                validate: None,
                actions: vec![Action::Cluster(0)],
                stop: true,
                validate_stops: false,
            }],
            segment_of: vec![0],
            segments: vec![Segment::new(&[]).expect("an empty set compiles")],
            prefilter: Prefilter::new(&[None]),
            cache: std::sync::OnceLock::new(),
            has_regex: false,
            line_limit: crate::line::CARBON_MAX_LINE_BYTES,
        }
    }

    /// The rules with `-max-line-bytes` as the limit a rewritten name must stay under.
    pub fn with_line_limit(mut self, line_limit: usize) -> Rules {
        self.line_limit = line_limit;
        self
    }

    /// `Some(c)` when every line goes, unchanged, to cluster `c` and nowhere else (no
    /// rewrite, no validate, one `match *`): the router can skip the per-line decision.
    pub fn single_cluster(&self) -> Option<usize> {
        match self.steps.as_slice() {
            [Step::Match {
                pat: Pattern::All,
                validate: None,
                actions,
                ..
            }] => match actions.as_slice() {
                [Action::Cluster(c)] => Some(*c),
                _ => None,
            },
            _ => None,
        }
    }

    /// `(rule index, label)` of every `match` rule: the label is `file:line` and its first
    /// expression (`*` for match-all), what an operator finds the rule by.
    pub fn match_labels(&self) -> Vec<(usize, String)> {
        self.config
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                Rule::Match(m) => {
                    let first = m.exprs.first().map_or("*", |e| e.text.as_str());
                    let file = m.pos.file.rsplit('/').next().unwrap_or("");
                    Some((i, format!("{file}:{} {first}", m.pos.line)))
                }
                Rule::Rewrite(_) => None,
            })
            .collect()
    }

    /// Every TCP member of every cluster once, in configuration order: the daemon's
    /// destinations (a `host:port` is one server however many clusters name it).
    pub fn tcp_members(&self) -> Vec<crate::dest::DestAddr> {
        let mut out: Vec<crate::dest::DestAddr> = Vec::new();
        for c in &self.clusters {
            for m in &c.members {
                if let ast::Member::Tcp(a) = m {
                    if !out.contains(a) {
                        out.push(a.clone());
                    }
                }
            }
        }
        out
    }

    /// Compiles a parsed configuration.
    pub fn compile(config: Config) -> Result<Rules, RuleError> {
        cluster::check(&config.clusters)?;
        let mut clusters: Vec<Cluster> = Vec::with_capacity(config.clusters.len());
        for def in &config.clusters {
            if def.name == "blackhole" {
                return Err(def
                    .pos
                    .error("'blackhole' is reserved and cannot name a cluster"));
            }
            if clusters.iter().any(|c| c.name == def.name) {
                return Err(def
                    .pos
                    .error(&format!("cluster '{}' is defined twice", def.name)));
            }
            clusters.push(Cluster::new(def));
        }
        let mut steps = Vec::new();
        let mut seg_exprs: Vec<Vec<String>> = vec![Vec::new()];
        let mut segment_of = Vec::new();
        for (rule_id, rule) in config.rules.iter().enumerate() {
            match rule {
                Rule::Rewrite(r) => {
                    let pat = slotted(&r.expr, &mut seg_exprs)?;
                    let groups = pat.groups();
                    let repl = Replacement::new(&r.replacement.text, groups > 0);
                    if repl.max_group() > groups {
                        return Err(r.replacement.pos.error(&format!(
                            "replacement refers to \\{} but the expression has {groups} group(s)",
                            repl.max_group()
                        )));
                    }
                    let idx = steps
                        .iter()
                        .filter(|s| matches!(s, Step::Rewrite { .. }))
                        .count();
                    let head = matcher::prefix_capture(&r.expr.text);
                    steps.push(Step::Rewrite {
                        pat,
                        repl,
                        idx,
                        head,
                    });
                    segment_of.push(seg_exprs.len() - 1);
                }
                Rule::Match(m) => {
                    let actions = match_actions(m, &clusters)?;
                    let validate = match &m.validate {
                        Some(v) => Some((
                            Pattern::compile(&v.expr.text).map_err(|e| v.expr.pos.error(&e))?,
                            v.log,
                        )),
                        None => None,
                    };
                    let stop = m.blackhole || (m.stop && !actions.is_empty());
                    let pats = if m.exprs.is_empty() {
                        vec![None]
                    } else {
                        m.exprs.iter().map(Some).collect()
                    };
                    for e in pats {
                        let pat = match e {
                            None => Pattern::All,
                            Some(e) => slotted(e, &mut seg_exprs)?,
                        };
                        steps.push(Step::Match {
                            pat,
                            rule: rule_id,
                            validate: validate.clone(),
                            actions: actions.clone(),
                            stop,
                            validate_stops: actions.is_empty(),
                        });
                        segment_of.push(seg_exprs.len() - 1);
                    }
                }
            }
        }
        let segments = segments_of(&seg_exprs)?;
        let pats: Vec<&Pattern> = steps.iter().map(Step::pattern).collect();
        let prefixes: Vec<Option<&[u8]>> = pats.iter().map(|p| p.required_prefix()).collect();
        let prefilter = Prefilter::new(&prefixes);
        let has_regex = pats.iter().any(|p| matches!(p, Pattern::Regex { .. }));
        Ok(Rules {
            cache: std::sync::OnceLock::new(),
            has_regex,
            line_limit: crate::line::CARBON_MAX_LINE_BYTES,
            prefilter,
            clusters,
            config,
            steps,
            segment_of,
            segments,
        })
    }

    /// Routes one line: `metric` is its name (first field), `line` the whole line (what
    /// `validate` tests is the part after the name and its separating blanks).
    pub fn route(&self, metric: &[u8], line: &[u8]) -> Decision {
        let mut d = Decision::default();
        self.route_into(metric, line, &mut d);
        d
    }

    /// The decision cache, when this configuration uses one.
    pub fn cache(&self) -> Option<&plan::DecisionCache> {
        self.has_regex
            .then(|| self.cache.get_or_init(|| plan::DecisionCache::new(0)))
    }

    /// [`Rules::route_into`] through the decision cache (`cache`, from
    /// [`Rules::cache`]; `probe` is [`plan::DecisionCache::locate`] of `metric`): the
    /// same decision, from a replayed [`plan::Plan`] when the name was seen before.
    pub fn route_cached(
        &self,
        cache: &plan::DecisionCache,
        probe: &crate::route::pos_cache::Probe,
        metric: &[u8],
        line: &[u8],
        d: &mut Decision,
    ) -> plan::Lookup {
        if let Some(p) = cache.find(probe) {
            self.replay(p, metric, d);
            return plan::Lookup::Hit;
        }
        self.route_into(metric, line, d);
        if d.validated {
            return plan::Lookup::Uncached;
        }
        let p = plan::Plan {
            rewrites: d.rewrites.clone(),
            actions: d.actions.iter().map(|&(n, a)| (n as u32, a)).collect(),
            matched: d.matched.iter().map(|&(r, o)| (r as u32, o)).collect(),
        };
        match cache.store(probe, p) {
            Some(evicted) => plan::Lookup::Stored(evicted),
            None => plan::Lookup::Uncached,
        }
    }

    /// Rebuilds the decision `p` stands for on `metric`: its rewrites, then its actions.
    fn replay(&self, p: &plan::Plan, metric: &[u8], d: &mut Decision) {
        d.reset(metric);
        for &i in &p.rewrites {
            let (ns, ne) = *d.names.last().unwrap_or(&(0, 0));
            d.scratch.clear();
            self.rewrite_step(i, &d.arena[ns..ne], &mut d.locs, &mut d.scratch);
            let start = d.arena.len();
            d.arena.extend_from_slice(&d.scratch);
            d.names.push((start, d.arena.len()));
        }
        d.actions
            .extend(p.actions.iter().map(|&(n, a)| (n as usize, a)));
        d.matched
            .extend(p.matched.iter().map(|&(r, o)| (r as usize, o)));
    }

    /// Appends to `out` what rewrite step `step` (a [`plan::Plan`]'s `rewrites` entry)
    /// makes of `name`, which its pattern matched when the plan was made; `locs` holds
    /// the reused capture buffers (one per rewrite of the configuration). A step that is
    /// not a rewrite appends nothing.
    pub fn rewrite_step(
        &self,
        step: u32,
        name: &[u8],
        locs: &mut Vec<Option<::regex::bytes::CaptureLocations>>,
        out: &mut Vec<u8>,
    ) {
        let Some(Step::Rewrite {
            pat,
            repl,
            idx,
            head,
        }) = self.steps.get(step as usize)
        else {
            return;
        };
        if locs.len() <= *idx {
            locs.resize_with(idx + 1, || None);
        }
        rewrite_name((pat, repl, head.as_deref()), name, &mut locs[*idx], out);
    }

    /// [`Rules::route`] into a reused [`Decision`].
    pub fn route_into(&self, metric: &[u8], line: &[u8], d: &mut Decision) {
        d.reset(metric);
        let data = data_part(metric, line);
        let mut cache = SetCache::new(&mut d.hits);
        let mut cur_seg = usize::MAX;
        let mut last_rule = usize::MAX;
        let mut cands = std::mem::take(&mut d.cands);
        self.prefilter.candidates(metric, 0, &mut cands);
        let mut k = 0;
        while k < cands.len() {
            let i = cands[k] as usize;
            k += 1;
            let step = &self.steps[i];
            if self.segment_of[i] != cur_seg {
                cur_seg = self.segment_of[i];
                cache.enter(&self.segments[cur_seg]);
            }
            let (ns, ne) = *d.names.last().unwrap_or(&(0, 0));
            match step {
                Step::Rewrite {
                    pat,
                    repl,
                    idx,
                    head,
                } => {
                    let name = &d.arena[ns..ne];
                    if !pat.is_match(name, &mut cache) {
                        continue;
                    }
                    d.scratch.clear();
                    if d.locs.len() <= *idx {
                        d.locs.resize_with(idx + 1, || None);
                    }
                    let how = (pat, repl, head.as_deref());
                    rewrite_name(how, name, &mut d.locs[*idx], &mut d.scratch);
                    d.rewrites.push(i as u32);
                    let start = d.arena.len();
                    d.arena.extend_from_slice(&d.scratch);
                    d.names.push((start, d.arena.len()));
                    // The shortest data a line can carry is ` 0 0`: a name that leaves
                    // less room than that under the limit can only make overlong lines.
                    if d.scratch.len() + 4 > self.line_limit || !crate::line::valid_name(&d.scratch)
                    {
                        d.actions.push((d.names.len() - 1, Action::Invalid));
                        break;
                    }
                    cache.invalidate();
                    // The rules after this one see the new name.
                    self.prefilter.candidates(&d.scratch, i + 1, &mut cands);
                    k = 0;
                }
                Step::Match {
                    pat,
                    rule,
                    validate,
                    actions,
                    stop,
                    validate_stops,
                } => {
                    if *rule == last_rule || !pat.is_match(&d.arena[ns..ne], &mut cache) {
                        continue;
                    }
                    last_rule = *rule;
                    let n = d.names.len() - 1;
                    if let Some((v, log)) = validate {
                        d.validated = true;
                        if !v.matches_alone(data) {
                            d.matched.push((*rule, Outcome::Dropped));
                            d.actions.push((n, Action::Drop { log: *log }));
                            if *stop || *validate_stops {
                                break;
                            }
                            continue;
                        }
                    }
                    let outcome = match actions.first() {
                        Some(Action::Blackhole) => Outcome::Blackholed,
                        _ => Outcome::Sent,
                    };
                    d.matched.push((*rule, outcome));
                    d.actions.extend(actions.iter().map(|&a| (n, a)));
                    if *stop {
                        break;
                    }
                }
            }
        }
        d.cands = cands;
        if d.actions.is_empty() {
            d.actions.push((d.names.len() - 1, Action::Blackhole));
        }
    }
}

/// One regex set per segment.
fn segments_of(seg_exprs: &[Vec<String>]) -> Result<Vec<Segment>, RuleError> {
    seg_exprs
        .iter()
        .map(|exprs| Segment::new(&exprs.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RuleError {
            file: String::new(),
            line: 0,
            col: 0,
            msg: e,
        })
}

/// Compiles a name pattern, giving a regex its slot in the current segment's set.
fn slotted(e: &Expr, seg_exprs: &mut [Vec<String>]) -> Result<Pattern, RuleError> {
    let mut pat = Pattern::compile(&e.text).map_err(|m| e.pos.error(&m))?;
    if let Pattern::Regex { slot, .. } = &mut pat {
        let cur = seg_exprs.last_mut().expect("one segment at least");
        *slot = Some(cur.len());
        cur.push(e.text.clone());
    }
    Ok(pat)
}

/// The actions of a match's `send to`, its cluster names resolved.
fn match_actions(m: &ast::MatchDef, clusters: &[Cluster]) -> Result<Vec<Action>, RuleError> {
    if m.blackhole {
        return Ok(vec![Action::Blackhole]);
    }
    m.send_to
        .iter()
        .map(|e| {
            clusters
                .iter()
                .position(|c| c.name == e.text)
                .map(Action::Cluster)
                .ok_or_else(|| e.pos.error(&format!("unknown cluster '{}'", e.text)))
        })
        .collect()
}

/// The new name after a rewrite (`(pattern, replacement, prefix-capture literal)`) whose
/// pattern matched `name`; `locs` is this rewrite's reused capture buffer.
fn rewrite_name(
    (pat, repl, head): (&Pattern, &Replacement, Option<&[u8]>),
    name: &[u8],
    locs: &mut Option<::regex::bytes::CaptureLocations>,
    out: &mut Vec<u8>,
) {
    if let Some(h) = head.filter(|h| name.starts_with(h)) {
        let n = name.len();
        let group = |g| match g {
            0 => Some((0, n)),
            1 => Some((h.len(), n)),
            _ => None,
        };
        return repl.apply(name, (0, n), group, out);
    }
    match pat {
        Pattern::Regex { re, .. } => {
            let locs = locs.get_or_insert_with(|| re.capture_locations());
            match re.captures_read(locs, name) {
                Some(m) => repl.apply(name, (m.start(), m.end()), |n| locs.get(n), out),
                None => out.extend_from_slice(name),
            }
        }
        _ => {
            let whole = pat.find(name).unwrap_or((0, 0));
            repl.apply(name, whole, |_| None, out);
        }
    }
}

/// What follows the name in `line` (blanks skipped, line end trimmed): what `validate`
/// tests. carbon-c-relay tests its cleansed line, where fields are one space apart.
fn data_part<'a>(metric: &[u8], line: &'a [u8]) -> &'a [u8] {
    let rest = if line.starts_with(metric) {
        &line[metric.len()..]
    } else {
        line
    };
    let start = rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(rest.len());
    let rest = &rest[start..];
    let end = rest
        .iter()
        .rposition(|&b| b != b'\n' && b != b'\r')
        .map_or(0, |i| i + 1);
    &rest[..end]
}

/// What the decision-cache tests share: the configurations they run and names built
/// from each configuration's own words.
#[cfg(test)]
pub(crate) mod testing {
    /// Every fixture configuration and the benchmark's, as `(path, text)` with `SINK`
    /// made an address; files that include others are left to the include tests.
    pub fn configs() -> Vec<(std::path::PathBuf, String)> {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut files: Vec<std::path::PathBuf> = ["own", "carbon-c-relay"]
            .iter()
            .flat_map(|d| std::fs::read_dir(format!("{root}/tests/fixtures/rules/{d}")).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        files.push(format!("{root}/benches/rules-50.conf").into());
        files
            .into_iter()
            .map(|f| {
                let text = std::fs::read_to_string(&f)
                    .unwrap()
                    .replace("SINK", "127.0.0.1:1");
                (f, text)
            })
            .collect()
    }

    /// Distinct names made of the configuration's own words, so its rules, rewrites and
    /// fall-through all get exercised.
    pub fn names(conf: &str) -> Vec<String> {
        let mut words: Vec<&str> = conf
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .filter(|w| !w.is_empty() && w.len() < 20)
            .collect();
        words.sort_unstable();
        words.dedup();
        let mut out = Vec::new();
        for (i, a) in words.iter().enumerate() {
            for b in words.iter().skip(i % 5).step_by(3).take(12) {
                out.push(format!("{a}.{b}.x{i}"));
                out.push(format!("{a}.{}.{b}", i % 10));
                out.push(format!("{}.{a}.{b}", words[(i * 7) % words.len()]));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(cfg: &str, line: &str) -> Vec<(String, Action)> {
        decide_with(&Rules::from_str("t.conf", cfg).unwrap(), line)
    }

    fn decide_with(r: &Rules, line: &str) -> Vec<(String, Action)> {
        let metric = line.split(' ').next().unwrap();
        r.route(metric.as_bytes(), line.as_bytes())
            .actions()
            .map(|(n, a)| (String::from_utf8_lossy(n).into_owned(), a))
            .collect()
    }

    const CL: &str = "cluster a forward 10.0.0.1;\ncluster b forward 10.0.0.2;\n";

    #[test]
    fn a_rewrite_to_a_name_carbon_cannot_take_ends_the_line_as_invalid() {
        let cfg =
            format!("{CL}match * send to a;\nrewrite ^x\\.(.*) into \\1;\nmatch * send to b;");
        let r = |limit| {
            Rules::from_str("t.conf", &cfg)
                .unwrap()
                .with_line_limit(limit)
        };
        // `x.` rewrites to the empty name: what `match *` sent before stands, then it ends.
        assert_eq!(
            decide_with(&r(100), "x. 1 2"),
            vec![
                ("x.".into(), Action::Cluster(0)),
                ("".into(), Action::Invalid)
            ]
        );
        // A 6-byte name leaves room for ` 0 0` under a limit of 10, not under 9.
        assert_eq!(
            decide_with(&r(10), "x.abcdef 1 2")[1],
            ("abcdef".into(), Action::Cluster(1))
        );
        assert_eq!(
            decide_with(&r(9), "x.abcdef 1 2")[1],
            ("abcdef".into(), Action::Invalid)
        );
    }

    #[test]
    fn fall_through_stop_and_blackhole() {
        let cfg = format!("{CL}match ^x send to a;\nmatch * send to b stop;\nmatch * send to a;");
        assert_eq!(
            decide(&cfg, "x.1 1 2"),
            vec![
                ("x.1".into(), Action::Cluster(0)),
                ("x.1".into(), Action::Cluster(1))
            ]
        );
        let cfg = format!("{CL}match junk send to blackhole;\nmatch * send to a;");
        assert_eq!(
            decide(&cfg, "junk.1 1 2"),
            vec![("junk.1".into(), Action::Blackhole)]
        );
        assert_eq!(
            decide(&format!("{CL}match ^q send to a;"), "x 1 2"),
            vec![("x".into(), Action::Blackhole)]
        );
    }

    #[test]
    fn rewrites_apply_to_later_rules_only() {
        let cfg =
            format!("{CL}match * send to a;\nrewrite ^x\\.(.*) into y.\\1;\nmatch ^y send to b;");
        assert_eq!(
            decide(&cfg, "x.1 1 2"),
            vec![
                ("x.1".into(), Action::Cluster(0)),
                ("y.1".into(), Action::Cluster(1))
            ]
        );
    }

    #[test]
    fn validate_drops_and_stops_only_without_destinations() {
        let cfg = format!(
            "{CL}match * validate ^[0-9]+\\ [0-9]+$ else drop send to a;\nmatch * send to b;"
        );
        assert_eq!(
            decide(&cfg, "m x 2"),
            vec![
                ("m".into(), Action::Drop { log: false }),
                ("m".into(), Action::Cluster(1))
            ]
        );
        let cfg = format!("{CL}match * validate ^[0-9]+\\ [0-9]+$ else log;\nmatch * send to b;");
        assert_eq!(
            decide(&cfg, "m x 2"),
            vec![("m".into(), Action::Drop { log: true })]
        );
        assert_eq!(
            decide(&cfg, "m 1 2"),
            vec![("m".into(), Action::Cluster(1))]
        );
    }

    #[test]
    fn unknown_clusters_and_bad_groups_are_load_errors() {
        let e = Rules::from_str("t.conf", "match * send to nope;").unwrap_err();
        assert_eq!((e.line, e.col), (1, 17));
        let e = Rules::from_str("t.conf", "rewrite ^(a) into \\2;").unwrap_err();
        assert!(e.msg.contains("\\2"), "{e}");
    }
}
