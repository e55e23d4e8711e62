//! The configuration as written: what the parser produces and what [`super::Rules`] is
//! compiled from. Kept separate from the compiled form so the daemon can show, diff and
//! map (listeners, statistics) what the operator wrote without knowing how it is matched.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::RuleError;
use crate::dest::addr::DestAddr;

/// Where something was written: file, 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pos {
    pub file: Arc<str>,
    pub line: u32,
    pub col: u32,
}

impl Pos {
    /// An error pointing here.
    pub fn error(&self, msg: &str) -> RuleError {
        RuleError {
            file: self.file.to_string(),
            line: self.line,
            col: self.col,
            msg: msg.to_string(),
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// A whole configuration, includes resolved in place.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Every `cluster`, in file order.
    pub clusters: Vec<ClusterDef>,
    /// `match` and `rewrite` rules, in file order (their order is their meaning).
    pub rules: Vec<Rule>,
    /// `listen` sections, for the daemon to map onto its listeners.
    pub listen: Vec<Listen>,
    /// The `statistics` section (the last one wins, as in carbon-c-relay).
    pub statistics: Option<Statistics>,
}

/// A routing rule.
#[derive(Clone, Debug)]
pub enum Rule {
    Match(MatchDef),
    Rewrite(RewriteDef),
}

/// `match * | EXPR… [validate EXPR else log|drop] [send to CLUSTER…|blackhole] [stop];`
#[derive(Clone, Debug)]
pub struct MatchDef {
    pub pos: Pos,
    /// The expressions; empty means `*`.
    pub exprs: Vec<Expr>,
    pub validate: Option<Validate>,
    /// Cluster names in order; empty when only `validate` was given.
    pub send_to: Vec<Expr>,
    /// `send to blackhole`.
    pub blackhole: bool,
    /// `stop` as written (carbon-c-relay implies it for blackhole and ignores it without
    /// destinations; the compiler applies both rules).
    pub stop: bool,
}

/// A word of the configuration and where it was written.
#[derive(Clone, Debug)]
pub struct Expr {
    pub text: String,
    pub pos: Pos,
}

/// `validate EXPR else log|drop`: a test on what follows the metric name.
#[derive(Clone, Debug)]
pub struct Validate {
    pub expr: Expr,
    /// `log` (true) or `drop` (false): both send nothing; `log` also logs the line.
    pub log: bool,
}

/// `rewrite EXPR into REPLACEMENT;`
#[derive(Clone, Debug)]
pub struct RewriteDef {
    pub pos: Pos,
    pub expr: Expr,
    pub replacement: Expr,
}

/// How a cluster picks members for a metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterKind {
    /// Every member gets every metric.
    Forward,
    /// One member, by hash of the name; a down member's share moves to the live ones.
    AnyOf,
    /// The first live member, in configuration order.
    Failover,
    /// carbon-c-relay's `carbon_ch` ring.
    CarbonCh,
    /// carbon-c-relay's `fnv1a_ch` ring.
    Fnv1aCh,
    /// carbon-c-relay's `jump_fnv1a_ch`.
    JumpFnv1aCh,
    /// Append lines to files (`file ip` prefixes the sender's address).
    File { ip: bool },
}

impl ClusterKind {
    /// True for the three consistent-hash kinds.
    pub fn is_hash(&self) -> bool {
        matches!(
            self,
            ClusterKind::CarbonCh | ClusterKind::Fnv1aCh | ClusterKind::JumpFnv1aCh
        )
    }

    /// The configuration keyword.
    pub fn keyword(&self) -> &'static str {
        match self {
            ClusterKind::Forward => "forward",
            ClusterKind::AnyOf => "any_of",
            ClusterKind::Failover => "failover",
            ClusterKind::CarbonCh => "carbon_ch",
            ClusterKind::Fnv1aCh => "fnv1a_ch",
            ClusterKind::JumpFnv1aCh => "jump_fnv1a_ch",
            ClusterKind::File { ip: false } => "file",
            ClusterKind::File { ip: true } => "file ip",
        }
    }
}

/// `cluster NAME KIND … MEMBERS;`
#[derive(Clone, Debug)]
pub struct ClusterDef {
    pub pos: Pos,
    pub name: String,
    pub kind: ClusterKind,
    /// `useall` (forward/any_of/failover): every address a host name resolves to.
    pub useall: bool,
    /// `replication N` (hash kinds; 1 when absent).
    pub replication: usize,
    /// `dynamic` (hash kinds): a down member's metrics go to the others.
    pub dynamic: bool,
    pub members: Vec<Member>,
}

/// One member of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Member {
    /// `host[:port][=instance] [proto tcp]` (port 2003 when absent).
    Tcp(DestAddr),
    /// A path of a `file` cluster.
    File(PathBuf),
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::Tcp(a) => a.fmt(f),
            Member::File(p) => p.display().fmt(f),
        }
    }
}

/// `listen type linemode [transport …] ADDR proto tcp|udp … PATH proto unix …;`
#[derive(Clone, Debug)]
pub struct Listen {
    pub pos: Pos,
    /// `plain` unless a `transport` clause says `gzip`, `lz4` or `snappy`.
    pub transport: String,
    /// `ssl` / `mtls` with the certificate path, when given.
    pub tls: Option<(String, PathBuf)>,
    pub receptors: Vec<Receptor>,
}

/// One address a `listen` section opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receptor {
    /// `[interface:]port` for tcp/udp, a path for unix.
    pub addr: String,
    /// `tcp`, `udp` or `unix`.
    pub proto: String,
}

/// `statistics [submit every N seconds] [reset counters after interval] [prefix with P]
/// [send to CLUSTER…] [stop];`
#[derive(Clone, Debug, Default)]
pub struct Statistics {
    pub interval_secs: Option<u64>,
    pub reset_counters: bool,
    pub prefix: Option<String>,
    pub send_to: Vec<String>,
    pub stop: bool,
}
