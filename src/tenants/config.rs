//! What the operator writes: the `-tenants-file` format and the JSON document kept under
//! `polymur/gateway/tenants/<name>` in Consul or etcd.
//!
//! File: one tenant per line, `#` comments, every field optional, `*` as the name sets the
//! defaults for key names without a line of their own:
//!
//! ```text
//! *           points-per-second=50000 burst=200000 series-per-minute=100000
//! site-paris  points-per-second=200000 weight=2 allow=paris.,infra.paris.
//! ```
//!
//! JSON: the same fields as an object, `{"points-per-second": 200000, "weight": 2,
//! "allow": ["paris."]}` (`allow` may also be one comma-separated string).
//!
//! These are configuration types only; [`super::TenantState`] holds the runtime side.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The name whose limits apply to every key name without limits of its own.
pub const DEFAULTS: &str = "*";

/// The KV prefix of tenant documents, next to the keys' `polymur/gateway/keys/`.
pub const TENANT_PREFIX: &str = "polymur/gateway/tenants/";

/// One tenant's limits as written; `None` means "not set here" (the defaults, or
/// unlimited, apply).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Limits {
    /// Sustained points per second (token bucket rate).
    pub points_per_second: Option<f64>,
    /// Points the bucket holds when full (default: one second of `points-per-second`).
    pub burst: Option<f64>,
    /// Sustained batches (HTTP requests) per second.
    pub batches_per_second: Option<f64>,
    /// Distinct series (metric paths) per minute: the cardinality guard.
    pub series_per_minute: Option<u64>,
    /// Weight in the fair share of nearly full destination queues (default 1).
    pub weight: Option<f64>,
    /// Allowed metric-name prefixes; lines outside are dropped and counted.
    #[serde(default, deserialize_with = "allow_list")]
    pub allow: Option<Vec<String>>,
}

/// `allow` as a JSON array or one comma-separated string.
fn allow_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Allow {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match Allow::deserialize(d)? {
        Allow::One(s) => split_allow(&s),
        Allow::Many(v) => v.into_iter().filter(|p| !p.is_empty()).collect(),
    }))
}

fn split_allow(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

impl Limits {
    /// `self` where set, else `defaults`, field by field.
    pub fn over(&self, defaults: &Limits) -> Limits {
        Limits {
            points_per_second: self.points_per_second.or(defaults.points_per_second),
            burst: self.burst.or(defaults.burst),
            batches_per_second: self.batches_per_second.or(defaults.batches_per_second),
            series_per_minute: self.series_per_minute.or(defaults.series_per_minute),
            weight: self.weight.or(defaults.weight),
            allow: self.allow.clone().or_else(|| defaults.allow.clone()),
        }
    }

    /// Checks values that would make a limit meaningless (negative, zero weight).
    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("points-per-second", self.points_per_second),
            ("burst", self.burst),
            ("batches-per-second", self.batches_per_second),
            ("weight", self.weight),
        ];
        for (name, v) in positive {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return Err(format!("{name}={v}: must be a number above 0"));
                }
            }
        }
        if self.series_per_minute == Some(0) {
            return Err("series-per-minute=0: must be at least 1".into());
        }
        Ok(())
    }

    /// Parses one JSON document (a tenant's value in Consul or etcd).
    pub fn from_json(text: &str) -> Result<Limits, String> {
        let limits: Limits = serde_json::from_str(text).map_err(|e| e.to_string())?;
        limits.validate()?;
        Ok(limits)
    }

    /// Parses the `field=value` words of one file line.
    fn from_words<'a>(words: impl Iterator<Item = &'a str>) -> Result<Limits, String> {
        let mut l = Limits::default();
        for word in words {
            let Some((field, value)) = word.split_once('=') else {
                return Err(format!("{word:?}: expected field=value"));
            };
            let num = || -> Result<f64, String> {
                value
                    .parse::<f64>()
                    .map_err(|_| format!("{field}={value}: not a number"))
            };
            match field {
                "points-per-second" => l.points_per_second = Some(num()?),
                "burst" => l.burst = Some(num()?),
                "batches-per-second" => l.batches_per_second = Some(num()?),
                "series-per-minute" => {
                    let n = value
                        .parse::<u64>()
                        .map_err(|_| format!("{field}={value}: not a whole number"))?;
                    l.series_per_minute = Some(n);
                }
                "weight" => l.weight = Some(num()?),
                "allow" => l.allow = Some(split_allow(value)),
                other => {
                    return Err(format!(
                        "unknown field {other:?} (known: points-per-second, burst, \
                         batches-per-second, series-per-minute, weight, allow)"
                    ))
                }
            }
        }
        l.validate()?;
        Ok(l)
    }
}

/// Every tenant's limits as written, by key name; `*` holds the defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantsConfig {
    /// Key name → its own limits (without the defaults merged in).
    pub by_name: BTreeMap<String, Limits>,
}

impl TenantsConfig {
    /// The limits that apply to `name`: its own over the `*` defaults.
    pub fn effective(&self, name: &str) -> Limits {
        let defaults = self.by_name.get(DEFAULTS).cloned().unwrap_or_default();
        match self.by_name.get(name) {
            Some(own) => own.over(&defaults),
            None => defaults,
        }
    }

    /// `other`'s tenants replace this one's, name by name (the store over the file).
    pub fn overlaid(&self, other: &TenantsConfig) -> TenantsConfig {
        let mut by_name = self.by_name.clone();
        by_name.extend(other.by_name.iter().map(|(k, v)| (k.clone(), v.clone())));
        TenantsConfig { by_name }
    }

    /// Parses the file text; `origin` (the path) names the file in errors. Any bad line
    /// rejects the whole file, so a typo never half-applies (the caller keeps the old set).
    pub fn parse(text: &str, origin: &Path) -> Result<TenantsConfig, TenantsError> {
        let mut by_name = BTreeMap::new();
        for (n, raw) in text.lines().enumerate() {
            let at = |message: String| TenantsError::Line {
                file: origin.display().to_string(),
                line: n + 1,
                message,
            };
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let name = words.next().unwrap_or_default();
            if name.contains('=') {
                return Err(at(format!(
                    "{name:?}: a line starts with the key name (or `*` for the defaults)"
                )));
            }
            let limits = Limits::from_words(words).map_err(at)?;
            if by_name.insert(name.to_string(), limits).is_some() {
                return Err(at(format!("{name:?} is listed twice")));
            }
        }
        Ok(TenantsConfig { by_name })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<TenantsConfig, TenantsError> {
        let text = std::fs::read_to_string(path).map_err(|e| TenantsError::Read {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Builds the store side from `name → JSON document` entries; a document that does
    /// not parse is skipped with a warning naming it (the others still apply).
    pub fn from_documents(docs: &BTreeMap<String, String>) -> TenantsConfig {
        let mut by_name = BTreeMap::new();
        for (name, doc) in docs {
            match Limits::from_json(doc) {
                Ok(l) => {
                    by_name.insert(name.clone(), l);
                }
                Err(e) => tracing::warn!("Ignoring tenant document {TENANT_PREFIX}{name}: {e}"),
            }
        }
        TenantsConfig { by_name }
    }
}

/// A tenants file that cannot be used; names the file and line and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    /// The file cannot be read.
    #[error("tenants file {file}: {message}")]
    Read { file: String, message: String },
    /// A line is malformed.
    #[error("{file}:{line}: {message}")]
    Line {
        file: String,
        line: usize,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lines_defaults_and_overrides() {
        let text = "# tenants\n* points-per-second=100 burst=500\n\
                    a points-per-second=1000 weight=2 allow=a.,shared. # inline\n\nb\n";
        let c = TenantsConfig::parse(text, Path::new("t")).unwrap();
        let a = c.effective("a");
        assert_eq!(a.points_per_second, Some(1000.0));
        assert_eq!(a.burst, Some(500.0), "unset fields come from *");
        assert_eq!(a.allow, Some(vec!["a.".to_string(), "shared.".to_string()]));
        assert_eq!(c.effective("b").points_per_second, Some(100.0));
        assert_eq!(c.effective("unknown").burst, Some(500.0));
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = TenantsConfig::parse("a burst=1\nb rate=3\n", Path::new("/etc/t")).unwrap_err();
        assert!(e.to_string().starts_with("/etc/t:2: "), "{e}");
        assert!(e.to_string().contains("unknown field \"rate\""), "{e}");
        let e = TenantsConfig::parse("a weight=0\n", Path::new("f")).unwrap_err();
        assert!(e.to_string().contains("f:1: weight=0"), "{e}");
        let e = TenantsConfig::parse("a\na\n", Path::new("f")).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = TenantsConfig::parse("burst=3\n", Path::new("f")).unwrap_err();
        assert!(e.to_string().contains("key name"), "{e}");
    }

    #[test]
    fn json_documents() {
        let l = Limits::from_json(r#"{"points-per-second": 5, "allow": "x.,y."}"#).unwrap();
        assert_eq!(l.points_per_second, Some(5.0));
        assert_eq!(l.allow, Some(vec!["x.".into(), "y.".into()]));
        let l = Limits::from_json(r#"{"allow": ["z."], "series-per-minute": 10}"#).unwrap();
        assert_eq!(l.series_per_minute, Some(10));
        assert!(Limits::from_json(r#"{"pps": 5}"#).is_err());
        assert!(Limits::from_json(r#"{"burst": -1}"#).is_err());
    }
}
