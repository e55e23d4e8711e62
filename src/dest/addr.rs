//! Destination addresses as operators write them: `host:port` or `host:port:instance`.

use std::fmt;
use std::str::FromStr;

/// One configured destination. The spelling is kept exactly as given because it is
/// how destinations are named everywhere an operator looks: logs, the runtime API,
/// self-metrics and the routing dry-run all print `Display` of this type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestAddr {
    /// Host name or IP literal (IPv6 in brackets, e.g. `[::1]`), as written.
    pub host: String,
    /// TCP port of the Graphite plaintext receiver.
    pub port: u16,
    /// The carbon-cache instance name; graphite-carbon puts it in the ring node key.
    pub instance: Option<String>,
    /// Reached over TLS whatever `-destination-tls` says: a `-config` member written
    /// `transport plain ssl`. Not part of the name (`Display`), nor of the ring's node key.
    pub tls: bool,
}

/// Why a destination string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("destination {0:?} must be host:port or host:port:instance")]
    Shape(String),
    #[error("destination {0:?} has an invalid port (1-65535 expected)")]
    Port(String),
}

impl DestAddr {
    /// `host:port`, the form used for connecting and for the runtime API's `active` list.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Parses the comma-delimited `-destinations` value; empty items are ignored.
    pub fn parse_list(list: &str) -> Result<Vec<DestAddr>, AddrError> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect()
    }
}

impl FromStr for DestAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        // An IPv6 literal carries colons of its own, so it must be bracketed.
        let (host, rest) = if let Some(stripped) = s.strip_prefix('[') {
            let end = stripped
                .find(']')
                .ok_or_else(|| AddrError::Shape(s.into()))?;
            let rest = stripped[end + 1..]
                .strip_prefix(':')
                .ok_or_else(|| AddrError::Shape(s.into()))?;
            (&s[..end + 2], rest)
        } else {
            s.split_once(':')
                .ok_or_else(|| AddrError::Shape(s.into()))?
        };
        if host.is_empty() {
            return Err(AddrError::Shape(s.into()));
        }
        let (port, instance) = match rest.split_once(':') {
            Some((p, i)) if !i.is_empty() && !i.contains(':') => (p, Some(i.to_string())),
            Some(_) => return Err(AddrError::Shape(s.into())),
            None => (rest, None),
        };
        let port: u16 = port.parse().map_err(|_| AddrError::Port(s.into()))?;
        if port == 0 {
            return Err(AddrError::Port(s.into()));
        }
        Ok(DestAddr {
            host: host.to_string(),
            port,
            instance,
            tls: false,
        })
    }
}

impl fmt::Display for DestAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.instance {
            Some(i) => write!(f, "{}:{}:{}", self.host, self.port, i),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_and_instance() {
        let a: DestAddr = "127.0.0.1:2003:a".parse().unwrap();
        assert_eq!(a.host, "127.0.0.1");
        assert_eq!(a.port, 2003);
        assert_eq!(a.instance.as_deref(), Some("a"));
        assert_eq!(a.to_string(), "127.0.0.1:2003:a");
        let b: DestAddr = "[::1]:2003".parse().unwrap();
        assert_eq!(b.host, "[::1]");
        assert_eq!(b.host_port(), "[::1]:2003");
    }

    #[test]
    fn refuses_bad_shapes() {
        assert!(matches!(
            "localhost".parse::<DestAddr>(),
            Err(AddrError::Shape(_))
        ));
        assert!(matches!("h:0".parse::<DestAddr>(), Err(AddrError::Port(_))));
        assert!(matches!("h:x".parse::<DestAddr>(), Err(AddrError::Port(_))));
        assert!(matches!(
            "h:1:a:b".parse::<DestAddr>(),
            Err(AddrError::Shape(_))
        ));
        assert_eq!(DestAddr::parse_list("a:1, b:2:x,").unwrap().len(), 2);
    }
}
