//! Command-line flags and environment variables shared by the binaries.
//!
//! The Go original used Go's `flag` package: long flags with one dash
//! (`-dev-mode`, `-destinations=a:1,b:2`), booleans as `-flag` or `-flag=false`,
//! and every flag also readable from an environment variable (`POLYMUR_GW_*`).
//! Existing systemd units rely on that spelling, so [`normalize_args`] rewrites
//! single-dash long flags to clap's `--flag` form before parsing.

use std::ffi::OsString;

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
