//! The set of destinations of a running daemon, changeable at run time.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::batch::Batch;
use crate::dest::Chunk;
use crate::dest::{DestAddr, DestConfig, Destination, SinkKind};
use crate::pipeline::{Pipeline, Topology};
use crate::route::Router;
use crate::shutdown::Shutdown;

/// Builds the router for a destination list, knowing which of them are down (an empty
/// set unless the registry keeps down destinations in the topology, see
/// [`Registry::keep_down_in_topology`]). The third argument names the destinations that
/// are not addresses ([`Registry::set_sinks`]), which follow the addresses in index order.
pub type RouterFactory =
    Arc<dyn Fn(&[DestAddr], &HashSet<DestAddr>, &[String]) -> Box<dyn Router> + Send + Sync>;

struct Entry {
    addr: DestAddr,
    dest: Arc<Destination>,
    registered: SystemTime,
}

/// Destinations by configuration order, plus the writer tasks to await at shutdown.
pub struct Registry {
    entries: Mutex<Vec<Entry>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    pipeline: Arc<Pipeline>,
    make_router: RouterFactory,
    config: DestConfig,
    shutdown: Shutdown,
    /// Destinations taken out of the ring by `-hash-failover` (empty without it).
    failed: Mutex<HashSet<DestAddr>>,
    /// Set when the destinations come from a file that names them (`-config`): why
    /// `putdest`/`deldest` refuse (a member removed at run time would leave its share of
    /// acknowledged lines nowhere to go).
    fixed: std::sync::OnceLock<String>,
    /// With rules (`-config`) a down destination stays in the topology and the router
    /// places around it (a forward cluster keeps queueing for it); without, failover
    /// takes it out and the ring is rebuilt over the others.
    keep_down: std::sync::atomic::AtomicBool,
    /// Destinations that are not addresses (the files of `file` clusters), by name, after
    /// the addresses in the topology.
    sinks: Mutex<Vec<(String, Arc<Destination>)>>,
}

/// Failed reconnects after which `-hash-failover` takes a destination out of the ring.
pub const FAILOVER_AFTER: u64 = 3;

impl Registry {
    /// Starts a writer per destination and installs the first topology.
    pub fn start(
        addrs: &[DestAddr],
        console: bool,
        pipeline: Arc<Pipeline>,
        make_router: RouterFactory,
        config: DestConfig,
        shutdown: Shutdown,
    ) -> Arc<Registry> {
        let reg = Arc::new(Registry {
            entries: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            pipeline,
            make_router,
            config,
            shutdown,
            failed: Mutex::new(HashSet::new()),
            fixed: std::sync::OnceLock::new(),
            keep_down: std::sync::atomic::AtomicBool::new(false),
            sinks: Mutex::new(Vec::new()),
        });
        if console {
            let (dest, task) =
                Destination::spawn(SinkKind::Console, &reg.config, reg.shutdown.clone());
            reg.lock_tasks().push(task);
            reg.pipeline.set_topology(Topology {
                dests: vec![dest],
                router: Box::new(crate::route::broadcast::Broadcast { destinations: 1 }),
            });
            return reg;
        }
        {
            let mut entries = reg.lock_entries();
            for addr in addrs {
                if entries.iter().any(|e| &e.addr == addr) {
                    continue;
                }
                let entry = reg.spawn_entry(addr.clone());
                entries.push(entry);
            }
            reg.install(&entries);
        }
        reg
    }

    /// The first destination whose spool could not be opened, with why (see
    /// [`DestShared::spool_error`](crate::dest::DestShared::spool_error)).
    pub fn spool_error(&self) -> Option<String> {
        self.lock_entries().iter().find_map(|e| {
            e.dest
                .spool_error()
                .map(|err| format!("destination {}: {err}", e.addr))
        })
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_entry(&self, addr: DestAddr) -> Entry {
        let (dest, task) = Destination::spawn(
            SinkKind::Tcp(addr.clone()),
            &self.config,
            self.shutdown.clone(),
        );
        self.lock_tasks().push(task);
        Entry {
            addr,
            dest,
            registered: SystemTime::now(),
        }
    }

    /// Builds and swaps in the topology of the entries in service (all of them,
    /// unless failover took some out).
    fn install(&self, entries: &[Entry]) {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        let keep_down = self.keep_down.load(Ordering::Relaxed);
        let live: Vec<&Entry> = entries
            .iter()
            .filter(|e| keep_down || !failed.contains(&e.addr))
            .collect();
        let addrs: Vec<DestAddr> = live.iter().map(|e| e.addr.clone()).collect();
        let down = if keep_down {
            failed.clone()
        } else {
            HashSet::new()
        };
        let sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        let names: Vec<String> = sinks.iter().map(|(n, _)| n.clone()).collect();
        let dests = live.iter().map(|e| e.dest.clone());
        self.pipeline.set_topology(Topology {
            dests: dests.chain(sinks.iter().map(|(_, d)| d.clone())).collect(),
            router: (self.make_router)(&addrs, &down, &names),
        });
    }

    /// Makes the destinations that are not addresses exactly `wanted`, by name: one kept
    /// keeps its writer and queue, one dropped delivers what it had admitted, then stops.
    /// Takes effect at the next topology install ([`reinstall`](Self::reinstall)).
    pub fn set_sinks(&self, wanted: Vec<Arc<dyn crate::dest::writer::Writer>>) {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        let mut old = std::mem::take(&mut *sinks);
        for w in wanted {
            let name = w.name();
            if sinks.iter().any(|(n, _)| *n == name) {
                continue;
            }
            if let Some(i) = old.iter().position(|(n, _)| *n == name) {
                sinks.push(old.swap_remove(i));
                continue;
            }
            let (dest, task) =
                Destination::spawn(SinkKind::Writer(w), &self.config, self.shutdown.clone());
            self.lock_tasks().push(task);
            sinks.push((name, dest));
        }
    }

    /// `-hash-failover`: every second, a destination whose last
    /// [`FAILOVER_AFTER`] reconnects failed leaves the ring and what its memory
    /// queue holds is routed again over the remaining ring; it rejoins once a
    /// reconnect succeeds. Its spool (if any) stays with it until then.
    pub fn start_failover(self: &Arc<Self>) {
        let reg = self.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.recv() => return,
                }
                reg.check_failover().await;
            }
        });
    }

    async fn check_failover(&self) {
        let out_of_ring: Vec<Arc<Destination>> = {
            let entries = self.lock_entries();
            let down: HashSet<DestAddr> = entries
                .iter()
                .filter(|e| {
                    !e.dest.stats.connected.load(Ordering::Relaxed)
                        && e.dest.stats.consecutive_failures.load(Ordering::Relaxed)
                            >= FAILOVER_AFTER
                })
                .map(|e| e.addr.clone())
                .collect();
            let changed = {
                let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                for a in down.difference(&failed) {
                    if self.keep_down.load(Ordering::Relaxed) {
                        tracing::warn!(
                            "Destination {a} failed {FAILOVER_AFTER} reconnects: down; clusters that move its share (any_of, failover, dynamic) send to the others"
                        );
                    } else {
                        tracing::warn!(
                            "Destination {a} failed {FAILOVER_AFTER} reconnects: taken out of the ring (-hash-failover), its queued lines are re-routed"
                        );
                    }
                }
                for a in failed.difference(&down) {
                    tracing::info!("Destination {a} reconnected: rejoins the ring");
                }
                let changed = *failed != down;
                *failed = down.clone();
                changed
            };
            if changed {
                self.install(&entries);
            }
            entries
                .iter()
                .filter(|e| down.contains(&e.addr) && self.pipeline.may_move(&e.dest))
                .map(|e| e.dest.clone())
                .collect()
        };
        // Batches routed on the old ring may still land in a failed queue, so
        // failed queues are emptied on every round, not only at the switch.
        for dest in out_of_ring {
            let chunks = dest.reclaim().await;
            if !chunks.is_empty() {
                self.reroute(&dest, chunks).await;
            }
        }
    }

    /// Routes reclaimed lines again; waits (without dropping) while the
    /// remaining queues are full.
    async fn reroute(&self, dest: &Arc<Destination>, chunks: Vec<Chunk>) {
        let from = dest.name();
        let points: u64 = chunks.iter().map(|c| c.points).sum();
        let mut shutdown = self.shutdown.clone();
        for chunk in chunks {
            let rules = crate::line::LineRules::ALREADY_CHECKED;
            let (batch, _) = Batch::build(chunk.data.to_vec(), None, &rules);
            while self.pipeline.submit_moved(dest, &batch).await.is_err() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = shutdown.recv() => {
                        tracing::error!("shutdown while re-routing lines of {from}: {} points not re-routed", batch.len());
                        return;
                    }
                }
            }
        }
        tracing::info!("Re-routed {points} queued points of failed destination {from}");
    }

    /// Builds the router again over the same destinations (the rules it is built from
    /// changed: a `-config` reload).
    pub fn reinstall(&self) {
        let entries = self.lock_entries();
        self.install(&entries);
    }

    /// Down destinations stay in the topology and the router is told which they are
    /// (rules: `any_of`, `failover`, `dynamic` place around them). Call before
    /// [`start_failover`](Self::start_failover).
    pub fn keep_down_in_topology(&self) {
        self.keep_down.store(true, Ordering::Relaxed);
    }

    /// From now on `putdest`/`deldest` answer `why` and change nothing.
    pub fn fix_membership(&self, why: &str) {
        let _ = self.fixed.set(why.to_string());
    }

    /// Takes the writer tasks, to await them during shutdown.
    pub fn take_tasks(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.lock_tasks())
    }
}

impl Registry {
    /// Makes the destination set exactly `desired` (a reload of the
    /// destinations file): missing ones are added, others removed, in one
    /// topology swap. Returns `(added, removed)`.
    pub fn apply(&self, desired: &[DestAddr]) -> (usize, usize) {
        let mut entries = self.lock_entries();
        let before = entries.len();
        let mut removed = 0;
        entries.retain(|e| {
            let keep = desired.contains(&e.addr);
            if !keep {
                tracing::info!("Removed destination {}", e.addr);
                removed += 1;
            }
            keep
        });
        let mut added = 0;
        for addr in desired {
            if !entries.iter().any(|e| &e.addr == addr) {
                let entry = self.spawn_entry(addr.clone());
                entries.push(entry);
                added += 1;
            }
        }
        if added > 0 || removed > 0 || entries.len() != before {
            self.failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|a| desired.contains(a));
            self.install(&entries);
        }
        (added, removed)
    }
}

/// What the runtime API (`getdest`, `putdest`, `deldest`) asks of the registry; the
/// API itself lives in `admin::api`, which depends on the registry, never the reverse.
impl Registry {
    /// JSON `{"active": [...], "registered": {...}}`: destinations in service and
    /// every registered one with its registration time.
    pub fn describe(&self) -> serde_json::Value {
        let entries = self.lock_entries();
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        let active: Vec<String> = entries
            .iter()
            .filter(|e| !failed.contains(&e.addr))
            .map(|e| e.addr.to_string())
            .collect();
        let registered: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|e| {
                (
                    e.addr.to_string(),
                    humantime::format_rfc3339_seconds(e.registered)
                        .to_string()
                        .into(),
                )
            })
            .collect();
        serde_json::json!({ "active": active, "registered": registered })
    }

    /// Adds a destination at run time; `Err` carries the message for the client.
    pub fn add(&self, dest: &str) -> Result<(), String> {
        if let Some(why) = self.fixed.get() {
            return Err(why.clone());
        }
        let addr: DestAddr = dest.parse().map_err(|e| format!("{e}"))?;
        let mut entries = self.lock_entries();
        if entries.iter().any(|e| e.addr == addr) {
            return Err(format!("Destination already registered: {addr}"));
        }
        let entry = self.spawn_entry(addr);
        if let Some(e) = entry.dest.spool_error() {
            // Refused, as at start: behind `-spool-dir` (and `-durable`) an acknowledged
            // batch must be on disk for every destination. Its writer ends with the entry.
            return Err(format!(
                "Destination {} not added: its spool cannot be opened: {e}",
                entry.addr
            ));
        }
        entries.push(entry);
        self.install(&entries);
        Ok(())
    }

    /// Removes a destination at run time; `Err` carries the message for the client.
    pub fn remove(&self, dest: &str) -> Result<(), String> {
        if let Some(why) = self.fixed.get() {
            return Err(why.clone());
        }
        let addr: DestAddr = dest.parse().map_err(|e| format!("{e}"))?;
        let mut entries = self.lock_entries();
        let Some(pos) = entries.iter().position(|e| e.addr == addr) else {
            return Err(format!("Destination not registered: {addr}"));
        };
        // The removed writer keeps delivering what it had admitted, then exits
        // when the last handle (held by in-flight batches) is dropped.
        entries.remove(pos);
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
        self.install(&entries);
        tracing::info!("Removed destination {addr}");
        Ok(())
    }
}
