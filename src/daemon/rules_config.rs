//! `-config FILE`: routing rules in carbon-c-relay's language for the daemon's one
//! pipeline, and re-reading them on SIGHUP.
//!
//! Without `-config` the daemon routes by the same rules, `match * send to default`, with
//! `-destinations` as the `default` cluster ([`RulesRouter::for_flags`]); with it the
//! file's clusters name the destinations. A file that does not load is refused with its
//! `file:line:column` — at start the daemon exits 1, on SIGHUP it keeps the rules it runs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::DaemonError;
use crate::dest::file::FileWriter;
use crate::dest::writer::Writer;
use crate::dest::DestAddr;
use crate::registry::{Registry, RouterFactory};
use crate::route::counters::RouteCounters;
use crate::route::ring::HashKind;
use crate::route::Router;
use crate::rules::ast::{ClusterKind, Member};
use crate::rules::router::{Members, RulesRouter};
use crate::rules::Rules;

/// One loaded configuration and its counters (a reload starts new ones).
pub struct Loaded {
    /// The compiled rules.
    pub rules: Arc<Rules>,
    /// What they did with lines.
    pub counters: Arc<RouteCounters>,
}

impl Loaded {
    fn new(rules: Rules) -> Loaded {
        let counters = Arc::new(
            RouteCounters::new(rules.clusters.iter().map(|c| c.name.as_str()))
                .with_rules(rules.match_labels()),
        );
        Loaded {
            rules: Arc::new(rules),
            counters,
        }
    }
}

/// The routing of a running daemon, swapped whole on reload.
pub type Current = Arc<ArcSwap<Loaded>>;

/// Reads and checks `-config FILE`: every error names the file, line and column, or
/// what the daemon cannot do with a section it parsed. `line_limit` is `-max-line-bytes`
/// (what a rewrite may not make a name as long as).
pub fn load(path: &Path, line_limit: usize) -> Result<Rules, String> {
    let rules = Rules::load(path)
        .map_err(|e| e.to_string())?
        .with_line_limit(line_limit);
    if let Some(l) = rules.config.listen.first() {
        return Err(format!(
            "{}: the listen section cannot be mapped: polymur listens where -listen-addr says (the gateway also -listen-http-port / -listen-https-port); remove the section and use those flags",
            l.pos
        ));
    }
    if rules.config.statistics.is_some() {
        return Err(format!(
            "{}: the statistics section cannot be mapped: polymur sends its own metrics (<hostname>.polymur.*) through the rules every -metrics-flush seconds, and serves /metrics on -admin-addr; remove the section and use -metrics-flush",
            path.display()
        ));
    }
    Ok(rules)
}

/// Opens (creating when missing) every path of a `file` cluster for appending, so a
/// path that cannot be written — a missing directory, no permission — is refused like a
/// syntax error (exit 1 at start, the running rules kept on SIGHUP) instead of dropping
/// every line it is sent from the first one. A file that fails later (a full disk) is
/// the writer's to count and log.
fn check_files(rules: &Rules) -> Result<(), String> {
    for c in &rules.clusters {
        for m in &c.members {
            if let Member::File(p) = m {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| {
                        format!(
                            "cluster {}: cannot open {} for appending: {e}",
                            c.name,
                            p.display()
                        )
                    })?;
            }
        }
    }
    Ok(())
}

/// [`load`], and its `file` clusters' paths opened ([`check_files`]): what a daemon runs
/// (`-route-test` only loads, and creates no file).
fn load_to_run(path: &Path, line_limit: usize) -> Result<Rules, String> {
    let rules = load(path, line_limit)?;
    check_files(&rules)?;
    Ok(rules)
}

/// The routing at start: the file's rules, or `-destinations` as the default cluster.
/// Returns the destinations to start and the router factory over them. `all_dynamic`
/// (`-hash-failover` with `-config`) makes every hash cluster `dynamic`; `line_limit` is
/// `-max-line-bytes` (see [`load`]).
pub fn start(
    config: Option<&PathBuf>,
    line_limit: usize,
    flag_dests: Vec<DestAddr>,
    ring: Option<HashKind>,
    replication: usize,
    all_dynamic: bool,
) -> Result<(Vec<DestAddr>, Current, RouterFactory), DaemonError> {
    let Some(path) = config else {
        let counters = Arc::new(RouteCounters::new(["default"]));
        let current: Current = Arc::new(ArcSwap::from_pointee(Loaded {
            rules: Arc::new(Rules::single(crate::rules::Cluster::from_flags(
                "default",
                &flag_dests,
                ring,
                replication,
            ))),
            counters: counters.clone(),
        }));
        let factory: RouterFactory = Arc::new(move |addrs: &[DestAddr], _down: &_, _files: &_| {
            Box::new(RulesRouter::for_flags(
                addrs,
                ring,
                replication,
                counters.clone(),
            )) as Box<dyn Router>
        });
        return Ok((flag_dests, current, factory));
    };
    if !flag_dests.is_empty() {
        return Err(DaemonError::config(
            "-config: the destinations are the clusters of the file; drop -destinations and -destinations-file",
        ));
    }
    let rules =
        load_to_run(path, line_limit).map_err(|e| DaemonError::config(format!("-config {e}")))?;
    let dests = rules.tcp_members();
    let current: Current = Arc::new(ArcSwap::from_pointee(Loaded::new(rules)));
    let cur = current.clone();
    let factory: RouterFactory = Arc::new(
        move |addrs: &[DestAddr], down: &HashSet<DestAddr>, files: &[String]| {
            let loaded = cur.load();
            Box::new(RulesRouter::with_liveness(
                loaded.rules.clone(),
                Members { addrs, down, files },
                all_dynamic,
                loaded.counters.clone(),
            )) as Box<dyn Router>
        },
    );
    Ok((dests, current, factory))
}

/// A writer for every member of every `file` cluster, once per path.
fn file_writers(rules: &Rules) -> Vec<Arc<dyn Writer>> {
    let mut out: Vec<Arc<dyn Writer>> = Vec::new();
    for c in &rules.clusters {
        for m in &c.members {
            if let Member::File(p) = m {
                out.push(FileWriter::new(p));
            }
        }
    }
    out
}

/// Starts the file destinations of the rules in force (none without `-config`); call
/// once the registry exists, before the listeners open. Returns how many there are.
pub fn start_files(registry: &Registry, current: &Current) -> usize {
    let loaded = current.load();
    let writers = file_writers(&loaded.rules);
    let n = writers.len();
    if n > 0 {
        registry.set_sinks(writers);
        registry.reinstall();
    }
    n
}

/// SIGHUP with `-config`: the new file replaces the running rules and destinations in
/// one topology swap, or — when it does not load — nothing changes and the error is
/// logged with its file, line and column.
pub fn reload(registry: &Registry, current: &Current, path: &Path, line_limit: usize) {
    // Whether or not the file loads: logrotate moved the files away and sent SIGHUP.
    crate::dest::file::reopen_all();
    match load_to_run(path, line_limit) {
        Ok(rules) => {
            let dests = rules.tcp_members();
            registry.set_sinks(file_writers(&rules));
            current.store(Arc::new(Loaded::new(rules)));
            let (added, removed) = registry.apply(&dests);
            // The same destinations may need the new rules all the same.
            registry.reinstall();
            tracing::info!(
                "SIGHUP: routing rules reloaded from {}: {added} destinations added, {removed} removed",
                path.display()
            );
        }
        Err(e) => tracing::error!("SIGHUP: -config {e}: keeping the running configuration"),
    }
}

/// The routing rules' counters on `/metrics` and the status page.
pub struct RulesStatus(pub Current);

impl crate::admin::http::AdminExtra for RulesStatus {
    fn metrics(&self, out: &mut String) {
        use crate::admin::prometheus::{header, label, single};
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        let loaded = self.0.load();
        let c = &loaded.counters;
        header(
            out,
            "polymur_route_cluster_lines_total",
            "counter",
            "Lines the routing rules sent to each cluster (since the rules were loaded).",
        );
        for (name, n) in c.clusters() {
            let _ = writeln!(
                out,
                "polymur_route_cluster_lines_total{{cluster=\"{}\"}} {n}",
                label(&name)
            );
        }
        single(
            out,
            "polymur_route_blackholed_total",
            "counter",
            "Lines sent to blackhole, or that no rule sent anywhere.",
            c.blackholed.load(Relaxed),
        );
        single(
            out,
            "polymur_route_validate_dropped_total",
            "counter",
            "Lines a validate clause dropped.",
            c.dropped.load(Relaxed),
        );
        single(
            out,
            "polymur_route_rewrite_invalid_total",
            "counter",
            "Lines dropped because a rewrite made a name no carbon-cache takes (empty, a blank or control byte, or -max-line-bytes long).",
            c.invalid.load(Relaxed),
        );
        rule_metrics(out, c);
    }

    fn status_html(&self, out: &mut String) {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        let loaded = self.0.load();
        let c = &loaded.counters;
        out.push_str("<h2>Routing</h2>\n<table>\n<tr><th>cluster</th><th>lines</th></tr>\n");
        for (name, n) in c.clusters() {
            let name = name.replace('&', "&amp;").replace('<', "&lt;");
            let _ = writeln!(out, "<tr><td>{name}</td><td>{n}</td></tr>");
        }
        let _ = writeln!(
            out,
            "<tr><td>blackholed</td><td>{}</td></tr>\n<tr><td>dropped by validate</td><td>{}</td></tr>\n\
             <tr><td>dropped: a rewrite made an invalid name</td><td>{}</td></tr>\n</table>",
            c.blackholed.load(Relaxed),
            c.dropped.load(Relaxed),
            c.invalid.load(Relaxed)
        );
        let rules = c.rule_counts();
        if rules.is_empty() {
            return;
        }
        out.push_str(
            "<h3>Rules</h3>\n<table>\n<tr><th>rule</th><th>where, first expression</th>\
             <th>matched</th><th>blackholed</th><th>dropped by validate</th></tr>\n",
        );
        for (rule, label, matched, blackholed, dropped) in rules {
            let label = label.replace('&', "&amp;").replace('<', "&lt;");
            let _ = writeln!(
                out,
                "<tr><td>{rule}</td><td>{label}</td><td>{matched}</td><td>{blackholed}</td><td>{dropped}</td></tr>"
            );
        }
        out.push_str("</table>\n");
    }
}

/// `polymur_rule_lines_total{rule, label, outcome}`: per `match` rule, the lines it
/// matched, and of those the ones it blackholed and the ones its `validate` dropped.
fn rule_metrics(out: &mut String, c: &RouteCounters) {
    use crate::admin::prometheus::{header, label};
    use std::fmt::Write;
    let rules = c.rule_counts();
    if rules.is_empty() {
        return;
    }
    header(
        out,
        "polymur_rule_lines_total",
        "counter",
        "Lines each match rule (index among the file's rules from 0, label file:line and first expression) matched; outcome blackholed and dropped count the part it sent to blackhole or its validate dropped.",
    );
    for (rule, l, matched, blackholed, dropped) in rules {
        let l = label(&l);
        for (outcome, n) in [
            ("matched", matched),
            ("blackholed", blackholed),
            ("dropped", dropped),
        ] {
            let _ = writeln!(
                out,
                "polymur_rule_lines_total{{rule=\"{rule}\",label=\"{l}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
}

/// The runtime API under `-config`: `getdest [CLUSTER]`, `putdest CLUSTER host:port`,
/// `deldest CLUSTER host:port` change a cluster's members in the running rules (the
/// file is not written: the next SIGHUP reads the file again and replaces them).
/// A change is compiled like a reload — a change the file could not hold (a server
/// shared with an any_of cluster, replication above the members) is refused with
/// carbon-c-relay's reason — and swapped in at once with its destinations; the
/// counters carry on.
pub struct RulesControl {
    pub registry: Arc<Registry>,
    pub current: Current,
    /// One change at a time: each starts from the rules the last one left.
    lock: std::sync::Mutex<()>,
}

/// The usage line a `putdest`/`deldest` without a cluster gets under `-config`.
const USAGE: &str =
    "with -config: putdest|deldest CLUSTER host:port[:instance] (getdest [CLUSTER] lists members)";

impl RulesControl {
    pub fn new(registry: Arc<Registry>, current: Current) -> RulesControl {
        RulesControl {
            registry,
            current,
            lock: std::sync::Mutex::new(()),
        }
    }

    /// Applies `change` to the members of the cluster `args` names (`CLUSTER MEMBER`).
    fn change(
        &self,
        args: &str,
        change: impl FnOnce(&mut Vec<Member>, Member) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut words = args.split_whitespace();
        let (Some(name), Some(member), None) = (words.next(), words.next(), words.next()) else {
            return Err(USAGE.to_string());
        };
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = self.current.load_full();
        let mut config = loaded.rules.config.clone();
        let def = config
            .clusters
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("Unknown cluster: {name}"))?;
        let member = if matches!(def.kind, ClusterKind::File { .. }) {
            Member::File(PathBuf::from(member))
        } else {
            // carbon-c-relay writes the instance after `=`, the API after `:`.
            let spelled = member.replacen('=', ":", 1);
            Member::Tcp(spelled.parse::<DestAddr>().map_err(|e| e.to_string())?)
        };
        change(&mut def.members, member)?;
        let rules = Rules::compile(config).map_err(|e| e.msg)?;
        let dests = rules.tcp_members();
        self.registry.set_sinks(file_writers(&rules));
        self.current.store(Arc::new(Loaded {
            rules: Arc::new(rules),
            counters: loaded.counters.clone(),
        }));
        self.registry.apply(&dests);
        self.registry.reinstall();
        Ok(())
    }
}

impl crate::admin::api::DestinationControl for RulesControl {
    fn getdest(&self) -> serde_json::Value {
        let mut v = self.registry.describe();
        let loaded = self.current.load();
        let clusters: serde_json::Map<String, serde_json::Value> = loaded
            .rules
            .clusters
            .iter()
            .map(|c| (c.name.clone(), cluster_json(c)))
            .collect();
        v["clusters"] = clusters.into();
        v
    }

    fn getdest_args(&self, args: &str) -> Result<serde_json::Value, String> {
        let name = args.trim();
        if name.is_empty() {
            return Ok(self.getdest());
        }
        let loaded = self.current.load();
        let c = loaded
            .rules
            .cluster(name)
            .ok_or_else(|| format!("Unknown cluster: {name}"))?;
        let mut v = cluster_json(c);
        v["cluster"] = name.into();
        Ok(v)
    }

    fn putdest(&self, args: &str) -> Result<(), String> {
        self.change(args, |members, m| {
            if members.contains(&m) {
                return Err(format!("Destination already registered: {m}"));
            }
            members.push(m);
            Ok(())
        })
    }

    fn deldest(&self, args: &str) -> Result<(), String> {
        self.change(args, |members, m| {
            let pos = members
                .iter()
                .position(|x| *x == m)
                .ok_or_else(|| format!("Destination not registered: {m}"))?;
            if members.len() == 1 {
                return Err(format!(
                    "{m} is the last member of its cluster: a cluster needs one (change the file and send SIGHUP to drop the cluster)"
                ));
            }
            members.remove(pos);
            Ok(())
        })
    }
}

/// `{"kind": …, "members": […]}` of one cluster.
fn cluster_json(c: &crate::rules::Cluster) -> serde_json::Value {
    let members: Vec<String> = c.members.iter().map(ToString::to_string).collect();
    serde_json::json!({ "kind": c.kind.keyword(), "members": members })
}
