//! Command-line flags and environment variables shared by the binaries.
//!
//! The Go original used Go's `flag` package: long flags with one dash
//! (`-dev-mode`, `-destinations=a:1,b:2`), booleans as `-flag` or `-flag=false`,
//! and every flag also readable from an environment variable (`POLYMUR_GW_*`).
//! Existing systemd units rely on that spelling, so [`normalize_args`] rewrites
//! single-dash long flags to clap's `--flag` form before parsing.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValue;
use clap::{ArgAction, ValueEnum};

use crate::dest::Overflow;
use crate::route::ring::HashKind;

/// `-distribution`: how a batch is split over the destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    // Every destination receives every line.
    Broadcast,
    // Each metric goes to its owners on a consistent-hash ring (`-hash`).
    HashRoute,
}

/// `-overflow`: what happens to a batch no queue or spool can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OverflowMode {
    // Refuse it: the gateway answers 503 (the proxy retries), the relay slows clients down.
    Refuse,
    // Drop it, counted and logged.
    Drop,
}

impl From<OverflowMode> for Overflow {
    fn from(mode: OverflowMode) -> Overflow {
        match mode {
            OverflowMode::Refuse => Overflow::Refuse,
            OverflowMode::Drop => Overflow::Drop,
        }
    }
}

/// `-log-format`: the human text format, or one JSON object per line for log shippers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    // Human text.
    Text,
    // One JSON object per line.
    Json,
}

/// `-hash` takes the reference implementations' own spellings (`carbon_ch`, ...).
impl ValueEnum for HashKind {
    fn value_variants<'a>() -> &'a [Self] {
        &HashKind::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()))
    }
}

/// Flags every daemon has (gateway, relay, proxy), with the same meaning and default.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonFlags {
    /// Graphite flush interval for runtime metrics in seconds (0 is disabled)
    #[arg(long, default_value_t = 0)]
    pub metrics_flush: u64,
    /// runstats listen address ("" disables)
    #[arg(long, default_value = "localhost:2020")]
    pub stat_addr: String,
    /// Log format: text or json
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Worker threads of the runtime (0: one per core, at most 1024); large bodies are
    /// decompressed on the blocking pool, outside this count
    #[arg(long, default_value_t = 0,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1024))]
    pub threads: usize,
}

/// Flags of the daemons that route into Graphite destinations (gateway, relay):
/// the pipeline, its destinations and how they are chosen.
#[derive(clap::Args, Debug, Clone)]
pub struct PipelineFlags {
    /// API listen address ("" disables)
    #[arg(long, default_value = "localhost:2030")]
    pub api_addr: String,
    /// Dump output to console instead of the destinations
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub console_out: bool,
    /// Comma-delimited list of host:port[:instance] destinations
    #[arg(long, default_value = "")]
    pub destinations: String,
    /// Destination distribution methods: broadcast, hash-route
    #[arg(long, value_enum, default_value_t = Distribution::Broadcast)]
    pub distribution: Distribution,
    /// In-flight incoming capacity, in units of 100 points (the original's batch size):
    /// points received (read from clients, or being decoded) and not yet queued for the
    /// destinations
    #[arg(long, default_value_t = 32768)]
    pub incoming_queue_cap: u64,
    /// In-flight message queue capacity per destination (number of data points)
    #[arg(long, default_value_t = 4096)]
    pub outgoing_queue_cap: u64,
    /// Routing rules in carbon-c-relay 3.7's configuration language (cluster, match,
    /// rewrite, include); its clusters replace -destinations and -distribution. Re-read
    /// on SIGHUP
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// File of destinations (`host:port[:instance]` per line, `#` comments), added to
    /// -destinations and re-read on SIGHUP
    #[arg(long)]
    pub destinations_file: Option<PathBuf>,
    /// Hash for -distribution hash-route: carbon_ch (graphite-carbon), carbon_ch_c_relay,
    /// fnv1a_ch, jump_fnv1a_ch (carbon-c-relay)
    #[arg(long, value_enum, default_value_t = HashKind::CarbonCh)]
    pub hash: HashKind,
    /// Destinations per metric for hash-route (the next distinct ones on the ring)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub replication_factor: u16,
    /// hash-route availability mode: a destination failing 3 reconnects leaves the ring and its
    /// queued lines are re-routed (placement is no longer guaranteed while it is out)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub hash_failover: bool,
    /// hash-route: metric names whose ring position is remembered (8 bytes each, shared by
    /// all clients), so a repeating series is hashed once; 0 hashes every line
    #[arg(long, default_value_t = crate::route::pos_cache::DEFAULT_SLOTS)]
    pub hash_cache_entries: usize,
    /// Per-destination disk spool for lines the memory queue cannot hold (survives restarts)
    #[arg(long)]
    pub spool_dir: Option<PathBuf>,
    /// Pace delivery out of the spool to at most N points/s per destination (default: unlimited); live traffic keeps priority
    #[arg(long)]
    pub replay_rate: Option<u64>,
    /// Spool size limit per destination, bytes or with K/M/G
    #[arg(long, default_value = "1G", value_parser = parse_bytes)]
    pub spool_max_bytes: u64,
    /// What to do with a batch no queue or spool can hold: refuse (the gateway answers 503
    /// and the proxy retries; the relay slows its clients down until there is room) or drop
    /// (counted and logged; for mirrors you can afford to lose)
    #[arg(long, value_enum, default_value_t = OverflowMode::Refuse)]
    pub overflow: OverflowMode,
    /// On SIGTERM/SIGINT, how long queues may take to drain to destinations
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Routing dry-run: read lines or metric names on stdin, print `metric<TAB>dest[,dest]`, exit
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub route_test: bool,
    /// Longest line forwarded, in bytes before its newline (after key prefix and tag
    /// normalization): carbon-cache (Twisted's LineReceiver.MAX_LENGTH) closes the connection
    /// on a longer one, so longer lines are dropped and counted (reason too_long)
    #[arg(long, default_value_t = crate::line::CARBON_MAX_LINE_BYTES)]
    pub max_line_bytes: usize,
    /// Rewrite Graphite 1.1 tagged names as graphite-carbon 1.1.7 stores them (tags sorted,
    /// `name=` tag and leading `~` dropped, OpenMetrics `m{t="v"}` turned into `m;t=v`) before
    /// routing, so every tag order of a series goes to one carbon-cache under one name; names
    /// carbon's parser rejects are dropped and counted (reason invalid_tags). Off by default,
    /// as carbon's TAG_RELAY_NORMALIZED = False: placement then matches carbon-relay's
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub tag_normalize: bool,
    /// TLS to the destinations.
    #[command(flatten)]
    pub destination_tls: crate::dest::tls::DestTlsFlags,
}

impl PipelineFlags {
    /// `-max-line-bytes` and `-tag-normalize`, for the batch builder.
    pub fn line_rules(&self) -> crate::line::LineRules {
        crate::line::LineRules {
            max_line_bytes: self.max_line_bytes,
            tag_normalize: self.tag_normalize,
        }
    }
}

/// Flags read from the command line only: `-route-test` makes a daemon exit after a
/// dry run, so a variable left in a unit's environment must never turn it on.
const COMMAND_LINE_ONLY: &[&str] = &["route-test"];

/// Gives every long flag without an environment variable its `<prefix><FLAG>` one
/// (upper case, dashes as underscores), as PROTOCOL.md specifies. Shared flag structs
/// are flattened into several daemons, so their variables are named here, per daemon,
/// rather than in the struct.
pub fn with_env_prefix(cmd: clap::Command, prefix: &str) -> clap::Command {
    cmd.mut_args(|arg| {
        let Some(long) = arg.get_long() else {
            return arg;
        };
        if arg.get_env().is_some() || COMMAND_LINE_ONLY.contains(&long) {
            return arg;
        }
        let name = format!("{prefix}{}", long.to_ascii_uppercase().replace('-', "_"));
        // Built once per process, at start-up: leaking a few short names is the price of
        // clap's `&'static` environment names.
        arg.env(&*Box::leak(name.into_boxed_str()))
    })
}

/// Parses a daemon's flags into `A` under the binary's `command` (name, version,
/// about): Go-style single-dash flags accepted ([`normalize_args`]), every flag also
/// read from `<env_prefix><FLAG>`. Exits with clap's message on an error.
pub fn parse<A: clap::Args>(
    command: clap::Command,
    env_prefix: &str,
    args: impl IntoIterator<Item = OsString>,
) -> A {
    let command = full_command::<A>(command, env_prefix);
    // `POLYMUR_GENERATE_DOCS=<dir>` (packaging) writes man pages and completions of
    // exactly this command, then exits.
    crate::docgen::exit_if_requested(|| command.clone());
    let matches = command.get_matches_from(normalize_args(args));
    note_given(&matches);
    A::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Flags the operator set (on the command line or through the environment), by
/// their id (the field name, e.g. `stat_addr`), recorded once by [`parse`].
static GIVEN: std::sync::OnceLock<std::collections::HashSet<String>> = std::sync::OnceLock::new();

fn note_given(matches: &clap::ArgMatches) {
    use clap::parser::ValueSource;
    let given = matches
        .ids()
        .filter(|id| {
            matches!(
                matches.value_source(id.as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|id| id.as_str().to_string())
        .collect();
    let _ = GIVEN.set(given);
}

/// True when the operator set flag `id` (field name) rather than leaving its default.
/// Side ports use it: a busy default port is a warning (two daemons on one host share
/// the original's defaults), a busy port the operator asked for is an error.
pub fn given(id: &str) -> bool {
    GIVEN.get().is_some_and(|g| g.contains(id))
}

/// The binary's `command` with the flags of `A` and their environment variables: what
/// [`parse`] parses with, and what the man pages and completions are generated from
/// ([`crate::docgen`]), so both always list the same flags.
pub fn full_command<A: clap::Args>(command: clap::Command, env_prefix: &str) -> clap::Command {
    // A flag struct's doc comment would replace the binary's `about`; keep the binary's.
    let about = command.get_about().cloned();
    let long_about = command.get_long_about().cloned();
    let mut command = A::augment_args(command).long_about(None::<&str>);
    if let Some(about) = about {
        command = command.about(about);
    }
    if let Some(long_about) = long_about {
        command = command.long_about(long_about);
    }
    with_env_prefix(command, env_prefix)
}

/// Rewrites Go-style `-long-flag[=v]` arguments to `--long-flag[=v]`. Short flags
/// (`-h`, `-V`), negative numbers, a lone `-` and everything after `--` pass through.
pub fn normalize_args<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || passthrough {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            passthrough = true;
            out.push(arg);
            continue;
        }
        let name = s.split('=').next().unwrap_or(s);
        let is_go_long = s.starts_with('-')
            && !s.starts_with("--")
            && name.len() > 2
            && name[1..].starts_with(|c: char| c.is_ascii_alphabetic());
        if is_go_long {
            out.push(OsString::from(format!("-{s}")));
        } else {
            out.push(arg);
        }
    }
    out
}

/// Parses a duration given as bare seconds (`30`, Go-flag style) or with a unit
/// (`30s`, `500ms`, `2m`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{e} (expected seconds, or e.g. 30s, 500ms, 2m)"))
}

/// Parses a byte size: a plain number of bytes, or with a `K`, `M`, `G` (binary) suffix.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let mult = match s[i..].trim().to_ascii_uppercase().as_str() {
                "K" | "KB" | "KIB" => 1 << 10,
                "M" | "MB" | "MIB" => 1 << 20,
                "G" | "GB" | "GIB" => 1 << 30,
                other => return Err(format!("unknown size unit {other:?} (use K, M or G)")),
            };
            (&s[..i], mult)
        }
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a size (e.g. 33554432, 32M, 1G)"))
}

/// Declares a Go-style boolean flag: `-flag`, `-flag=true`, `-flag=false`, or the
/// environment variable set to true/false/1/0/yes/no.
#[macro_export]
macro_rules! go_bool {
    () => {
        clap::builder::BoolishValueParser::new()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared flags as a gateway or relay flattens them.
    #[derive(clap::Args, Debug)]
    struct Daemon {
        #[command(flatten)]
        common: CommonFlags,
        #[command(flatten)]
        pipeline: PipelineFlags,
    }

    #[test]
    fn shared_flags_take_each_daemons_env_prefix() {
        for prefix in ["POLYMUR_GW_", "POLYMUR_"] {
            let cmd = with_env_prefix(
                <Daemon as clap::Args>::augment_args(clap::Command::new("t")),
                prefix,
            );
            let env = |long: &str| {
                cmd.get_arguments()
                    .find(|a| a.get_long() == Some(long))
                    .and_then(|a| a.get_env())
                    .map(|e| e.to_string_lossy().into_owned())
            };
            assert_eq!(env("destinations"), Some(format!("{prefix}DESTINATIONS")));
            assert_eq!(
                env("outgoing-queue-cap"),
                Some(format!("{prefix}OUTGOING_QUEUE_CAP"))
            );
            assert_eq!(env("stat-addr"), Some(format!("{prefix}STAT_ADDR")));
            // A dry run is never switched on by a unit's environment.
            assert_eq!(env("route-test"), None);
        }
    }

    #[test]
    fn options_parse_with_the_originals_spellings() {
        let d: Daemon = parse(
            clap::Command::new("t"),
            "POLYMUR_TEST_UNSET_",
            [
                "t",
                "-distribution=hash-route",
                "-hash=jump_fnv1a_ch",
                "-overflow=drop",
                "-log-format=json",
                "-threads=1",
            ]
            .map(OsString::from),
        );
        assert_eq!(d.common.threads, 1);
        assert_eq!(d.pipeline.distribution, Distribution::HashRoute);
        assert_eq!(d.pipeline.hash, HashKind::JumpFnv1aCh);
        assert_eq!(d.pipeline.overflow, OverflowMode::Drop);
        assert_eq!(d.common.log_format, LogFormat::Json);
        let d: Daemon = parse(
            clap::Command::new("t"),
            "POLYMUR_TEST_UNSET_",
            ["t"].map(OsString::from),
        );
        assert_eq!(d.pipeline.distribution, Distribution::Broadcast);
        assert_eq!(d.pipeline.hash, HashKind::CarbonCh);
        assert_eq!(d.pipeline.overflow, OverflowMode::Refuse);
        assert_eq!(d.common.log_format, LogFormat::Text);
        assert_eq!(d.common.stat_addr, "localhost:2020");
        assert_eq!(d.common.threads, 0, "default: one worker per core");
    }

    fn norm(v: &[&str]) -> Vec<String> {
        normalize_args(v.iter().map(OsString::from))
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_style_flags_become_double_dash() {
        assert_eq!(
            norm(&[
                "bin",
                "-dev-mode",
                "-destinations=a:1,b:2",
                "--x",
                "-h",
                "-5",
                "-"
            ]),
            vec![
                "bin",
                "--dev-mode",
                "--destinations=a:1,b:2",
                "--x",
                "-h",
                "-5",
                "-"
            ]
        );
        assert_eq!(norm(&["bin", "--", "-abc"]), vec!["bin", "--", "-abc"]);
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(
            parse_duration("30").unwrap(),
            std::time::Duration::from_secs(30)
        );
        assert_eq!(
            parse_duration("500ms").unwrap(),
            std::time::Duration::from_millis(500)
        );
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_bytes("32M").unwrap(), 32 << 20);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert!(parse_bytes("12Q").is_err());
    }
}

/// TLS on the plaintext TCP listener (relay and proxy): the same files and SIGHUP
/// reload as the gateway's HTTPS ([`crate::ingest::tls`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ListenTlsFlags {
    /// TLS certificate (PEM) of the plaintext listener: with -listen-tls-key, clients connect over TLS
    #[arg(long)]
    pub listen_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of -listen-tls-cert
    #[arg(long)]
    pub listen_tls_key: Option<PathBuf>,
    /// Serve TLS on this address and plaintext on -listen-addr at once (default: -listen-addr serves TLS only)
    #[arg(long)]
    pub listen_tls_addr: Option<String>,
    /// Require client certificates signed by this CA (PEM) on the TLS listener
    #[arg(long)]
    pub listen_client_ca: Option<PathBuf>,
}

impl ListenTlsFlags {
    /// The TLS files, when both -listen-tls-cert and -listen-tls-key are given.
    pub fn server_tls(&self) -> Result<Option<crate::ingest::tls::ServerTls>, String> {
        match (&self.listen_tls_cert, &self.listen_tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::ingest::tls::ServerTls {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.listen_client_ca.clone(),
            })),
            (None, None) if self.listen_client_ca.is_some() || self.listen_tls_addr.is_some() => {
                Err("-listen-client-ca and -listen-tls-addr need -listen-tls-cert and -listen-tls-key".into())
            }
            (None, None) => Ok(None),
            _ => Err("TLS on the listener needs both -listen-tls-cert and -listen-tls-key".into()),
        }
    }
}
