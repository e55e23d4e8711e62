//! The integration tests: one binary, so the harness (`support`, `consul_server`) is
//! compiled once instead of once per file. Each module is one behaviour area and runs
//! the real binaries, a real carbon-cache, etcd and sockets (see `support`).
//!
//! `tests/no_alloc.rs` stays a binary of its own: it installs a counting global
//! allocator, which would count every other test's allocations too.

mod consul_server;
mod support;

mod disk_full;
mod flapping;
mod gateway_carbon;
mod gateway_http;
mod gateway_keys;
mod harness_selftest;
mod hash_route;
mod keepalive;
mod keys_consul;
mod keys_etcd;
mod keys_file;
mod line_rules;
mod no_data_loss;
mod operations;
mod package;
mod pgw_key;
mod proxy;
mod relay;
mod replay;
mod ring_fixtures;
mod rules_conformance;
mod rules_ops;
mod rules_pipeline;
mod side_ports;
mod systemd;
mod tags;
mod tenants;
mod topology;
mod wire;
mod wire_tls_dest;
