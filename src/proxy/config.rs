//! What the operator writes: polymur-proxy's flags and `POLYMUR_PROXY_*` variables.

use std::path::PathBuf;
use std::time::Duration;

use clap::ArgAction;

use super::compression::CompressionFlag;
use crate::config::{parse_bytes, parse_duration, CommonFlags, ListenTlsFlags};

/// Flags of polymur-proxy. Every flag of the Go original keeps its name and default;
/// each is also read from `POLYMUR_PROXY_<FLAG>` (see [`crate::config::parse`]).
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyConfig {
    /// Flags every daemon has.
    #[command(flatten)]
    pub common: CommonFlags,
    /// TLS on the plaintext listener.
    #[command(flatten)]
    pub listen_tls: ListenTlsFlags,
    /// polymur gateway API key
    #[arg(
        long,
        env = "POLYMUR_PROXY_API_KEY",
        default_value = "",
        hide_env_values = true
    )]
    pub api_key: String,
    /// Certificate (PEM) to trust for the gateway's TLS: its CA, or its self-signed certificate
    #[arg(long, env = "POLYMUR_PROXY_CERT")]
    pub cert: Option<PathBuf>,
    /// Batch compression: auto (zstd when the gateway advertises it, else gzip), zstd or gzip
    #[arg(
        long,
        env = "POLYMUR_PROXY_COMPRESSION",
        value_enum,
        default_value = "auto"
    )]
    pub compression: CompressionFlag,
    /// Compression level [default: 6 for gzip (0-9); for zstd, parameters tuned for Graphite batches (1-19: zstd's own levels)]
    #[arg(
        long,
        env = "POLYMUR_PROXY_COMPRESSION_LEVEL",
        allow_negative_numbers = true
    )]
    pub compression_level: Option<i32>,
    /// Client certificate (PEM) presented to the gateway (for a gateway with -client-ca)
    #[arg(long, env = "POLYMUR_PROXY_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of -client-cert
    #[arg(long, env = "POLYMUR_PROXY_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Dump output to console instead of sending it to the gateway
    #[arg(long, env = "POLYMUR_PROXY_CONSOLE_OUT", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub console_out: bool,
    /// polymur gateway address (https://host[:port]; http:// for plain HTTP; https:// when no scheme)
    #[arg(long, env = "POLYMUR_PROXY_GATEWAY", default_value = "")]
    pub gateway: String,
    /// Polymur-proxy listen address
    #[arg(
        long,
        env = "POLYMUR_PROXY_LISTEN_ADDR",
        default_value = "0.0.0.0:2003"
    )]
    pub listen_addr: String,
    /// In-flight message queue capacity, in units of 100 points (the original's batch
    /// size): points held in memory for the gateway before clients are slowed down
    /// (or, with -spool-dir, batches go to disk)
    #[arg(long, env = "POLYMUR_PROXY_QUEUE_CAP", default_value_t = 32768)]
    pub queue_cap: u64,
    /// Admin HTTP address: /metrics, /healthz, /readyz, status page ("" disables)
    #[arg(
        long,
        env = "POLYMUR_PROXY_ADMIN_ADDR",
        default_value = "127.0.0.1:2043"
    )]
    pub admin_addr: String,
    /// Verbose output: log every batch sent
    #[arg(long, env = "POLYMUR_PROXY_VERBOSE", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub verbose: bool,
    /// HTTP output workers (concurrent POSTs to the gateway)
    #[arg(long, env = "POLYMUR_PROXY_WORKERS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,

    /// Lines per batch: a batch is sent when it holds this many lines...
    #[arg(long, env = "POLYMUR_PROXY_FLUSH_SIZE", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub flush_size: u32,
    /// ...or when its first line is this old (seconds or e.g. 15s, 500ms)
    #[arg(long, env = "POLYMUR_PROXY_FLUSH_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// Disk spool for batches the gateway cannot take now (kept across restarts, sent oldest first)
    #[arg(long, env = "POLYMUR_PROXY_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Spool size limit, bytes or with K/M/G; when full, clients are slowed down
    #[arg(long, env = "POLYMUR_PROXY_SPOOL_MAX_BYTES", default_value = "1G", value_parser = parse_bytes)]
    pub spool_max_bytes: u64,
    /// Close a client connection that sent nothing for this long (0 never closes)
    #[arg(long, env = "POLYMUR_PROXY_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Time allowed for one POST to the gateway (connect, send, answer)
    #[arg(long, env = "POLYMUR_PROXY_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Longest pause between retries of a batch the gateway did not take
    #[arg(long, env = "POLYMUR_PROXY_MAX_RETRY_DELAY", default_value = "10s", value_parser = parse_duration)]
    pub max_retry_delay: Duration,
    /// After the gateway refused the API key (401), how often to ping it again
    #[arg(long, env = "POLYMUR_PROXY_KEY_RECHECK_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub key_recheck_interval: Duration,
    /// On SIGTERM/SIGINT, how long queued batches may take to reach the gateway
    /// (what is left goes to -spool-dir, or is reported lost without one)
    #[arg(long, env = "POLYMUR_PROXY_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Longest line accepted, in bytes before its newline: carbon-cache (Twisted's
    /// LineReceiver.MAX_LENGTH) closes the connection on a longer one, so longer lines are
    /// dropped here and counted (reason too_long), as lines that are not UTF-8 are
    #[arg(long, default_value_t = crate::line::CARBON_MAX_LINE_BYTES)]
    pub max_line_bytes: usize,
}

impl crate::daemon::DaemonFlags for ProxyConfig {
    fn flags(&self) -> (&CommonFlags, Option<&crate::config::PipelineFlags>) {
        (&self.common, None)
    }
}

impl ProxyConfig {
    /// The gateway's base URL: `-gateway` with `https://` added when it has no
    /// scheme, and without a trailing `/`.
    pub fn gateway_url(&self) -> String {
        let g = self.gateway.trim().trim_end_matches('/');
        if g.contains("://") {
            g.to_string()
        } else {
            format!("https://{g}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ProxyConfig {
        let mut v = vec!["polymur-proxy"];
        v.extend_from_slice(args);
        crate::config::parse(
            clap::Command::new("polymur-proxy"),
            "POLYMUR_PROXY_",
            v.into_iter().map(std::ffi::OsString::from),
        )
    }

    #[test]
    fn defaults_match_the_original() {
        let a = parse(&[]);
        assert_eq!(a.listen_addr, "0.0.0.0:2003");
        assert_eq!(a.workers, 3);
        assert_eq!(a.queue_cap, 32768);
        assert_eq!(a.common.stat_addr, "localhost:2020");
        assert_eq!(a.common.metrics_flush, 0);
        assert!(!a.verbose && !a.console_out);
        assert_eq!(a.flush_size, 5000);
        assert_eq!(a.flush_interval, Duration::from_secs(15));
    }

    #[test]
    fn go_style_flags_and_gateway_url() {
        let a = parse(&["-gateway=gw.example.com:8443/", "-verbose", "-workers", "5"]);
        assert_eq!(a.gateway_url(), "https://gw.example.com:8443");
        assert!(a.verbose);
        assert_eq!(a.workers, 5);
        let a = parse(&["-gateway", "http://127.0.0.1:80"]);
        assert_eq!(a.gateway_url(), "http://127.0.0.1:80");
    }
}
