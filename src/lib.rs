//! polymur-rs: Graphite metrics forwarding — a drop-in, lossless and faster
//! reimplementation of Polymur.
//!
//! Three daemons share one pipeline and differ only in their source and sink:
//!
//! ```text
//!  polymur-gateway = HTTP(S) /ingest (gzip batches, API keys) → router → TCP destinations
//!  polymur         = TCP plaintext                            → router → TCP destinations
//!  polymur-proxy   = TCP plaintext → batcher → gzip → HTTPS POST to a gateway (retry, spool)
//!  pgw-key         = key management over the key stores
//! ```
//!
//! The shapes that matter:
//! - a [`batch::Batch`] is one buffer plus a line index: lines are validated in
//!   place ([`mod@line`]) and never allocated one by one;
//! - a [`route::Router`] splits a batch into one buffer per destination
//!   (broadcast shares the batch's own buffer; hash rings follow graphite-carbon);
//! - the [`pipeline::Pipeline`] admits a batch to every destination it routes to,
//!   or to none — so an acknowledgement is a promise;
//! - a [`dest::Destination`] is a bounded queue, an optional disk spool and one
//!   writer task that reconnects; nothing one destination does stalls another;
//! - [`keys`] syncs API keys from Consul, etcd or a file into a lock-free cache.
//!
//! Module map: [`mod@line`], [`tags`], [`batch`] (data); [`rules`] (carbon-c-relay's
//! configuration and the one router built from it); [`route`] (rings, the hash router,
//! broadcast, dry run); [`dest`] (queues, spool, writers); [`pipeline`] (admission: all
//! or nothing), [`registry`] (runtime destination changes); [`tenants`] (quotas, fair
//! shares, namespaces); [`ingest`] (the gateway's HTTP source); [`plaintext`] (TCP
//! source); [`daemon`] (the one daemon layer: a source into the pipeline with registry,
//! operator endpoints, reports and staged shutdown); [`gateway`], [`relay`], [`proxy`]
//! (what each daemon adds to it); [`keys`]; [`admin`] (runtime API, runstats, admin
//! HTTP, Prometheus); [`stats`], [`self_metrics`]; [`config`] (flag conventions, shared
//! flags), [`net`], [`shutdown`], [`signals`], [`logging`], [`http_client`]; [`notify`]
//! (systemd readiness and watchdog), [`docgen`] (man pages and completions from the
//! flags). The binaries in `src/bin/` parse flags and call the library; `polymur-bench`
//! (the load generator) lives there too, outside the library.
//!
//! ```
//! use polymur::batch::Batch;
//! use polymur::route::{broadcast::Broadcast, Router};
//!
//! // One invalid line is dropped; the last line keeps its missing newline's place.
//! let (batch, rejects) =
//!     Batch::from_plaintext(b"web01.cpu 1.5 1700000000\nbroken\nweb02.cpu 2 1700000000".to_vec(), Some("tenant"));
//! assert_eq!((batch.len(), rejects.count), (2, 1));
//! let mut parts = Vec::new();
//! Broadcast { destinations: 2 }.route(&batch, &mut parts);
//! assert_eq!(parts[1].data.as_ref(), b"tenant.web01.cpu 1.5 1700000000\ntenant.web02.cpu 2 1700000000\n");
//! ```
pub mod admin;
pub mod batch;
pub mod config;
pub mod daemon;
pub mod dest;
pub mod docgen;
pub mod gateway;
pub mod http_client;
pub mod ingest;
pub mod keys;
pub mod line;
pub mod logging;
pub mod memory;
pub mod net;
pub mod notify;
pub mod pipeline;
pub mod plaintext;
pub mod proxy;
pub mod registry;
pub mod relay;
pub mod route;
pub mod rules;
pub mod self_metrics;
pub mod shutdown;
pub mod signals;
pub mod stats;
pub mod tags;
pub mod tenants;
