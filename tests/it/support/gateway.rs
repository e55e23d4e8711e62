//! The gateway binary as a test subject: free loopback ports for every listener,
//! started and waited for, with small helpers for the common requests.

use super::{free_port, gzip, http_post, secs, HttpResponse, Proc};

/// Path of the gateway binary built for this test run.
pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_polymur-gateway");

/// A running `polymur-gateway` with its addresses (`127.0.0.1:port`).
pub struct Gateway {
    /// The process (logs, signals, exit status).
    pub proc: Proc,
    /// HTTP ingest listener.
    pub http: String,
    /// TCP runtime API.
    pub api: String,
    /// TCP runstats.
    pub stat: String,
    /// Admin HTTP endpoint.
    pub admin: String,
}

impl Gateway {
    /// Starts the gateway with `args` after the listener flags.
    pub fn start(args: &[&str]) -> Gateway {
        Self::start_env(args, &[])
    }

    /// Like `start`, with extra environment variables.
    pub fn start_env(args: &[&str], envs: &[(&str, &str)]) -> Gateway {
        let http = free_port();
        let (api, stat, admin) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let (http_flag, api_flag, stat_flag, admin_flag) = (
            format!("-listen-http-port={http}"),
            format!("-api-addr={api}"),
            format!("-stat-addr={stat}"),
            format!("-admin-addr={admin}"),
        );
        let mut all = vec![
            "-listen-addr=127.0.0.1",
            http_flag.as_str(),
            api_flag.as_str(),
            stat_flag.as_str(),
            admin_flag.as_str(),
        ];
        all.extend_from_slice(args);
        let proc = Proc::spawn(GATEWAY_BIN, &all, envs);
        // Admin is the last listener the gateway starts.
        assert!(
            proc.wait_log("Admin HTTP started", secs(20)),
            "gateway did not start: {}",
            proc.all_output()
        );
        Gateway {
            proc,
            http: format!("127.0.0.1:{http}"),
            api,
            stat,
            admin,
        }
    }

    /// `POST /ingest` of `body` gzip'ed, with `key`.
    pub fn ingest(&self, key: &str, body: &str) -> HttpResponse {
        http_post(
            &self.http,
            "/ingest",
            &[("X-Polymur-Key", key)],
            gzip(body.as_bytes()),
        )
    }
}
