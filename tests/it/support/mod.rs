//! Shared harness for the integration tests: real Graphite and etcd servers, an in-test
//! plaintext receiver, subprocess control for the crate's binaries, and small HTTP/TCP clients.
//!
//! Every test binary does `mod support;` and uses only a part of this module, so dead code
//! is allowed here rather than annotating each item.
//!
//! Design rules, so that no test can hang or disturb the machine:
//! - everything listens and connects on 127.0.0.1 only;
//! - every wait has a timeout and every socket has read/write timeouts;
//! - every spawned process is killed and reaped when its handle is dropped, even on panic.
#![allow(dead_code)]
#![allow(unused_imports)]

mod carbon;
mod etcd;
mod gateway;
mod http;
mod net;
mod process;
mod sink;
mod tls;

pub use carbon::CarbonCache;
pub use etcd::Etcd;
pub use gateway::{Gateway, GATEWAY_BIN};
pub use http::{
    gunzip, gzip, http_get, http_post, http_post_retrying, https_post, tls_client_config,
    tls_client_config_strict, try_http_request, HttpConn, HttpResponse,
};
pub use net::{
    free_port, kernel_reports_peer_window, send_lines, tcp_request, wait_port, wait_port_closed,
};
pub use process::{Proc, RunOutput};
pub use sink::LineSink;
pub use tls::TlsFiles;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Current Unix time in seconds. Whisper drops points older than the longest retention and
/// rejects points in the future, so tests build timestamps from this.
pub fn now_ts() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs() as i64
}

/// Shorthand for `Duration::from_secs`, to keep timeouts in tests readable.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Shorthand for `Duration::from_millis`.
pub fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Polls `cond` every 20 ms until it returns true or `timeout` passes; returns the last result.
/// For conditions that have no dedicated waiter (a file appearing, a counter reaching a value).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Last `max_lines` lines of a text file (or a note that it could not be read), for panic
/// messages when a helper server fails to start.
pub(crate) fn file_tail(path: &std::path::Path, max_lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(max_lines);
            lines[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
