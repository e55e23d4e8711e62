//! The set of destinations of a running daemon, changeable at run time.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::task::JoinHandle;

use crate::admin::api::DestinationControl;
use crate::dest::{DestAddr, DestConfig, Destination, SinkKind};
use crate::pipeline::{Pipeline, Topology};
use crate::route::Router;
use crate::shutdown::Shutdown;

/// Builds the router for a destination list (broadcast or a hash ring).
pub type RouterFactory = Arc<dyn Fn(&[DestAddr]) -> Box<dyn Router> + Send + Sync>;

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
}

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

    fn install(&self, entries: &[Entry]) {
        let addrs: Vec<DestAddr> = entries.iter().map(|e| e.addr.clone()).collect();
        self.pipeline.set_topology(Topology {
            dests: entries.iter().map(|e| e.dest.clone()).collect(),
            router: (self.make_router)(&addrs),
        });
    }

    /// Takes the writer tasks, to await them during shutdown.
    pub fn take_tasks(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.lock_tasks())
    }
}

impl DestinationControl for Registry {
    fn getdest(&self) -> serde_json::Value {
        let entries = self.lock_entries();
        let active: Vec<String> = entries.iter().map(|e| e.addr.to_string()).collect();
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

    fn putdest(&self, dest: &str) -> Result<(), String> {
        let addr: DestAddr = dest.parse().map_err(|e| format!("{e}"))?;
        let mut entries = self.lock_entries();
        if entries.iter().any(|e| e.addr == addr) {
            return Err(format!("Destination already registered: {addr}"));
        }
        let entry = self.spawn_entry(addr);
        entries.push(entry);
        self.install(&entries);
        Ok(())
    }

    fn deldest(&self, dest: &str) -> Result<(), String> {
        let addr: DestAddr = dest.parse().map_err(|e| format!("{e}"))?;
        let mut entries = self.lock_entries();
        let Some(pos) = entries.iter().position(|e| e.addr == addr) else {
            return Err(format!("Destination not registered: {addr}"));
        };
        // The removed writer keeps delivering what it had admitted, then exits
        // when the last handle (held by in-flight batches) is dropped.
        entries.remove(pos);
        self.install(&entries);
        tracing::info!("Removed destination {addr}");
        Ok(())
    }
}
