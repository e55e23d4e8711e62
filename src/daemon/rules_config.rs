//! `-config FILE`: routing rules in carbon-c-relay's language for the daemon's one
//! pipeline, and re-reading them on SIGHUP.
//!
//! Without `-config` the daemon routes by the same rules, `match * send to default`, with
//! `-destinations` as the `default` cluster ([`RulesRouter::for_flags`]); with it the
//! file's clusters name the destinations. A file that does not load is refused with its
//! `file:line:column` — at start the daemon exits 1, on SIGHUP it keeps the rules it runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::DaemonError;
use crate::dest::DestAddr;
use crate::registry::{Registry, RouterFactory};
use crate::route::counters::RouteCounters;
use crate::route::ring::HashKind;
use crate::route::Router;
use crate::rules::ast::ClusterKind;
use crate::rules::router::RulesRouter;
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
        let counters = Arc::new(RouteCounters::new(
            rules.clusters.iter().map(|c| c.name.as_str()),
        ));
        Loaded {
            rules: Arc::new(rules),
            counters,
        }
    }
}

/// The routing of a running daemon, swapped whole on reload.
pub type Current = Arc<ArcSwap<Loaded>>;

/// Reads and checks `-config FILE`: every error names the file, line and column, or
/// what the daemon cannot do with a section it parsed.
pub fn load(path: &Path) -> Result<Rules, String> {
    let rules = Rules::load(path).map_err(|e| e.to_string())?;
    if let Some(c) = rules
        .clusters
        .iter()
        .find(|c| matches!(c.kind, ClusterKind::File { .. }))
    {
        return Err(format!(
            "{}: cluster '{}': file clusters are not supported yet; send to a TCP cluster",
            path.display(),
            c.name
        ));
    }
    if let Some(l) = rules.config.listen.first() {
        return Err(format!(
            "{}: the listen section is not used by polymur: the daemon listens where its -listen-addr / -addr flags say; remove the section",
            l.pos
        ));
    }
    if rules.config.statistics.is_some() {
        return Err(format!(
            "{}: the statistics section is not used by polymur: self-metrics follow -metrics-flush and -stat-addr; remove the section",
            path.display()
        ));
    }
    Ok(rules)
}

/// The routing at start: the file's rules, or `-destinations` as the default cluster.
/// Returns the destinations to start and the router factory over them. `all_dynamic`
/// (`-hash-failover` with `-config`) makes every hash cluster `dynamic`.
pub fn start(
    config: Option<&PathBuf>,
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
        let factory: RouterFactory = Arc::new(move |addrs: &[DestAddr], _down: &_| {
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
    let rules = load(path).map_err(|e| DaemonError::config(format!("-config {e}")))?;
    let dests = rules.tcp_members();
    let current: Current = Arc::new(ArcSwap::from_pointee(Loaded::new(rules)));
    let cur = current.clone();
    let factory: RouterFactory = Arc::new(move |addrs: &[DestAddr], down: &_| {
        let loaded = cur.load();
        Box::new(RulesRouter::with_liveness(
            loaded.rules.clone(),
            addrs,
            down,
            all_dynamic,
            loaded.counters.clone(),
        )) as Box<dyn Router>
    });
    Ok((dests, current, factory))
}

/// SIGHUP with `-config`: the new file replaces the running rules and destinations in
/// one topology swap, or — when it does not load — nothing changes and the error is
/// logged with its file, line and column.
pub fn reload(registry: &Registry, current: &Current, path: &Path) {
    match load(path) {
        Ok(rules) => {
            let dests = rules.tcp_members();
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
            "<tr><td>blackholed</td><td>{}</td></tr>\n<tr><td>dropped by validate</td><td>{}</td></tr>\n</table>",
            c.blackholed.load(Relaxed),
            c.dropped.load(Relaxed)
        );
    }
}
