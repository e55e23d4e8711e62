//! polymur-rs: Graphite metrics forwarding.
pub mod admin;
pub mod batch;
pub mod config;
pub mod dest;
pub mod gateway;
pub mod ingest;
pub mod keys;
pub mod line;
pub mod logging;
pub mod pipeline;
pub mod registry;
pub mod route;
pub mod shutdown;
pub mod stats;
