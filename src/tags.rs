//! Graphite 1.1 tagged names, normalized exactly as graphite-carbon 1.1.7's
//! `TaggedSeries.parse(name).path` does (`carbon/util.py`).
//!
//! Why: carbon-cache stores a tagged series under its normalized name, but relays
//! hash the name as sent, so `x.y;b=2;a=1` and `x.y;a=1;b=2` land on different
//! carbon-caches and graphite-web's carbonlink misses points. With `-tag-normalize`
//! every name is rewritten before routing, so all spellings of one series go to one
//! carbon-cache under one name. The rules, from carbon's parser:
//!
//! - `metric;tag=value;…` (carbon form) or `metric{tag="value",…}` (OpenMetrics, when
//!   the name ends with `"}` and holds a `{`; values may escape `\"` and `\\`);
//! - the output is `name` then `;tag=value` for each tag, sorted as those strings
//!   (byte order of `tag=value`), a repeated tag keeping its last value;
//! - `name` is the metric with leading `~` stripped; a `name=` tag is replaced by it;
//! - refused: no metric before the first `;` or `{`, an empty tag or value, `;!^=` in
//!   a tag, `;` in a value, a value starting with `~`, a metric that is only `~`, an
//!   OpenMetrics segment that is not `tag="value"` followed by `,`, `:,` or the end.
//!
//! A name without `;`, without the OpenMetrics ending and without a leading `~` is its
//! own normalized name, and [`needs_normalizing`] says so without parsing.

use std::cmp::Ordering;

/// Why carbon's parser refuses a tagged name (for logs; all count as invalid tags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// Nothing before the first `;` (or `{`).
    #[error("no metric before the tags")]
    NoMetric,
    /// The metric is only `~` characters.
    #[error("metric name is empty once leading `~` are stripped")]
    EmptyName,
    /// A `;` segment without `=`, or an OpenMetrics segment that is not `tag="value"`.
    #[error("a tag segment is not tag=value")]
    Segment,
    /// A tag or value breaks carbon's `validateTagAndValue`.
    #[error("empty tag or value, `;!^=` in a tag, `;` in a value or a value starting with `~`")]
    TagOrValue,
}

/// True when `name` may differ from its normalized form: it starts with `~`, holds a
/// `;`, or has the OpenMetrics shape. One `memchr` per name, only with `-tag-normalize`.
#[inline]
pub fn needs_normalizing(name: &[u8]) -> bool {
    name.first() == Some(&b'~') || memchr::memchr(b';', name).is_some() || is_openmetrics(name)
}

/// carbon's dispatch: `path[-2:] == '"}' and '{' in path`.
fn is_openmetrics(name: &[u8]) -> bool {
    name.ends_with(b"\"}") && memchr::memchr(b'{', name).is_some()
}

/// One tag as `tag=value` in [`Normalizer::scratch`]: `start..eq` is the tag,
/// `eq + 1..end` the value; the whole range is what carbon sorts (after its `;`).
#[derive(Clone, Copy, Debug)]
struct Tag {
    start: usize,
    eq: usize,
    end: usize,
}

/// Reusable buffers for [`Normalizer::normalize`], so a batch of tagged names costs
/// no allocation per line once they have grown.
#[derive(Debug, Default)]
pub struct Normalizer {
    /// Tags and (unescaped) values, each `tag=value`, back to back.
    scratch: Vec<u8>,
    tags: Vec<Tag>,
}

impl Normalizer {
    /// Appends the normalized form of `name` (valid UTF-8, as every validated line's
    /// metric is) to `out`; on error `out` is left as it was.
    pub fn normalize(&mut self, name: &[u8], out: &mut Vec<u8>) -> Result<(), TagError> {
        self.scratch.clear();
        self.tags.clear();
        let metric = if is_openmetrics(name) {
            self.parse_openmetrics(name)?
        } else {
            self.parse_carbon(name)?
        };
        let stripped = trim_tildes(metric);
        if stripped.is_empty() {
            return Err(TagError::EmptyName);
        }
        self.keep_last_of_each_tag();
        let scratch = &self.scratch;
        let text = |t: &Tag| &scratch[t.start..t.end];
        self.tags.sort_unstable_by(|a, b| text(a).cmp(text(b)));
        out.extend_from_slice(stripped);
        for t in &self.tags {
            out.push(b';');
            out.extend_from_slice(text(t));
        }
        Ok(())
    }

    /// `metric;tag=value;…`: returns the metric, tags into `self`.
    fn parse_carbon<'a>(&mut self, name: &'a [u8]) -> Result<&'a [u8], TagError> {
        let mut segments = name.split(|&b| b == b';');
        let metric = segments.next().unwrap_or_default();
        if metric.is_empty() {
            return Err(TagError::NoMetric);
        }
        for segment in segments {
            let eq = memchr::memchr(b'=', segment).ok_or(TagError::Segment)?;
            if eq == 0 {
                return Err(TagError::Segment);
            }
            self.push(&segment[..eq], &segment[eq + 1..])?;
        }
        Ok(metric)
    }

    /// `metric{tag="value",…}`, as carbon's regex
    /// `([^=]+)="((?:[\\]["\\]|[^"\\])+)"(:?,|$)` reads it segment after segment.
    fn parse_openmetrics<'a>(&mut self, name: &'a [u8]) -> Result<&'a [u8], TagError> {
        let body = &name[..name.len() - 1];
        let open = memchr::memchr(b'{', body).expect("is_openmetrics saw a `{`");
        // Python's `split('{', 2)` into two names: a second `{` is an error.
        if memchr::memchr(b'{', &body[open + 1..]).is_some() {
            return Err(TagError::Segment);
        }
        let metric = &body[..open];
        if metric.is_empty() {
            return Err(TagError::NoMetric);
        }
        let mut rest = &body[open + 1..];
        while !rest.is_empty() {
            let eq = memchr::memchr(b'=', rest).ok_or(TagError::Segment)?;
            if eq == 0 || rest.get(eq + 1) != Some(&b'"') {
                return Err(TagError::Segment);
            }
            let raw_start = eq + 2;
            let close = closing_quote(&rest[raw_start..]).ok_or(TagError::Segment)? + raw_start;
            if close == raw_start {
                return Err(TagError::Segment);
            }
            let value = unescape(&rest[raw_start..close]);
            self.push(&rest[..eq], &value)?;
            rest = &rest[close + 1..];
            rest = match rest {
                [] => rest,
                [b',', tail @ ..] | [b':', b',', tail @ ..] => tail,
                _ => return Err(TagError::Segment),
            };
        }
        Ok(metric)
    }

    /// Validates (carbon's `validateTagAndValue`) and records one tag.
    fn push(&mut self, tag: &[u8], value: &[u8]) -> Result<(), TagError> {
        let bad_tag = tag.is_empty() || tag.iter().any(|b| b";!^=".contains(b));
        let bad_value = value.is_empty() || value.contains(&b';') || value[0] == b'~';
        if bad_tag || bad_value {
            return Err(TagError::TagOrValue);
        }
        let start = self.scratch.len();
        self.scratch.extend_from_slice(tag);
        let eq = self.scratch.len();
        self.scratch.push(b'=');
        self.scratch.extend_from_slice(value);
        self.tags.push(Tag {
            start,
            eq,
            end: self.scratch.len(),
        });
        Ok(())
    }

    /// Python's dict: a repeated tag keeps its last value; `name` is the metric's.
    fn keep_last_of_each_tag(&mut self) {
        let scratch = &self.scratch;
        let tag = |t: &Tag| &scratch[t.start..t.eq];
        if self.tags.len() > 1 {
            // Stable sort by tag keeps the input order within a tag: keep the last.
            self.tags.sort_by(|a, b| tag(a).cmp(tag(b)));
            let mut kept: Vec<Tag> = Vec::with_capacity(self.tags.len());
            for t in self.tags.drain(..) {
                match kept.last_mut() {
                    Some(last) if tag(last).cmp(tag(&t)) == Ordering::Equal => *last = t,
                    _ => kept.push(t),
                }
            }
            self.tags = kept;
        }
        self.tags.retain(|t| tag(t) != b"name");
    }
}

/// Index of the `"` that ends an OpenMetrics value (`\"` and `\\` are escapes);
/// `None` when there is none or a `\` escapes anything else (carbon's regex fails).
fn closing_quote(raw: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'"' => return Some(i),
            b'\\' => match raw.get(i + 1) {
                Some(b'"' | b'\\') => i += 2,
                _ => return None,
            },
            _ => i += 1,
        }
    }
    None
}

/// carbon's `value.replace(r'\"', '"').replace(r'\\', '\\')`, in that order.
fn unescape(raw: &[u8]) -> Vec<u8> {
    replace(&replace(raw, b"\\\"", b"\""), b"\\\\", b"\\")
}

/// Python's `bytes.replace`: non-overlapping, left to right.
fn replace(s: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Python's `name.lstrip('~')`.
fn trim_tildes(name: &[u8]) -> &[u8] {
    let n = name.iter().take_while(|&&b| b == b'~').count();
    &name[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(name: &str) -> Result<String, TagError> {
        let mut out = b"kept:".to_vec();
        Normalizer::default().normalize(name.as_bytes(), &mut out)?;
        Ok(String::from_utf8(out[5..].to_vec()).unwrap())
    }

    #[test]
    fn sorts_tags_and_replaces_the_name_tag() {
        assert_eq!(norm("x.y;b=2;a=1").unwrap(), "x.y;a=1;b=2");
        assert_eq!(norm("x.y;a=1;b=2").unwrap(), "x.y;a=1;b=2");
        assert_eq!(norm("~x.y;name=z;a=1").unwrap(), "x.y;a=1");
        // carbon sorts `;tag=value` strings: `a.b=` before `a=` ('.' < '=').
        assert_eq!(norm("m;a=1;a.b=2").unwrap(), "m;a.b=2;a=1");
        assert_eq!(norm("m;a=1;a=2").unwrap(), "m;a=2");
        assert_eq!(norm("~plain.name").unwrap(), "plain.name");
    }

    #[test]
    fn openmetrics_form_becomes_carbon_form() {
        assert_eq!(
            norm(r#"disk_used{dc="1",host="w\"e\\b"}"#).unwrap(),
            r#"disk_used;dc=1;host=w"e\b"#
        );
        assert_eq!(norm(r#"m{b="2":,a="1"}"#).unwrap(), "m;a=1;b=2");
        assert_eq!(
            norm(r#"m{a="1",}"#).unwrap(),
            r#"m{a="1",}"#,
            "not the OM shape"
        );
    }

    #[test]
    fn refuses_what_carbon_refuses() {
        for bad in [
            ";a=b",
            "x;a",
            "x;=b",
            "x;a=",
            "x;a=~b",
            "x;a!=b",
            "x;a^b=c",
            "x;a=b;",
            "~;a=b",
            "~~",
            r#"{a="b"}"#,
            r#"x{a=""}"#,
            r#"x{a="b"c="d"}"#,
            r#"x{a="~b"}"#,
            r#"x{a="b;c"}"#,
            r#"x{a="b\q"}"#,
            r#"x{{a="b"}"#,
            r#"x{a="{"}"#,
            r#"x{"}"#,
        ] {
            assert!(norm(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn needs_normalizing_only_for_special_names() {
        assert!(!needs_normalizing(b"a.b.c"));
        assert!(!needs_normalizing(b"a{b}"));
        assert!(needs_normalizing(b"a;b=c"));
        assert!(needs_normalizing(b"~a"));
        assert!(needs_normalizing(br#"a{b="c"}"#));
    }
}
