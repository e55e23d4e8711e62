//! A batch of plaintext lines: one contiguous buffer plus the line index.
//!
//! Lines are never allocated one by one. A clean batch (every line valid, no key
//! prefix, nothing to rewrite) keeps the very buffer it was decompressed into;
//! otherwise the valid lines are copied once into a new buffer, prefixed when tenant
//! namespacing is on, with tagged names normalized and `-1` timestamps replaced when
//! the [`LineRules`] ask for it. The buffer is a ref-counted [`Bytes`], so broadcast
//! hands the same allocation to every destination.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::line::{self, Line, LineError, LineRules};
use crate::tags::{self, Normalizer};

/// The end offsets of one line inside [`Batch::data`]. The line starts where the
/// previous one ended, so two `u32`s are enough (batches are capped well below 4 GiB).
#[derive(Clone, Copy, Debug)]
struct Span {
    /// End of the metric path (the routing key).
    metric_end: u32,
    /// One past the line's `\n`.
    end: u32,
}

/// Valid, `\n`-terminated lines ready for routing.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    data: Bytes,
    spans: Vec<Span>,
    /// The sender's address, when a source knows it: what a `file ip` cluster of the
    /// routing rules writes in front of each line, as carbon-c-relay does.
    source: Option<std::net::IpAddr>,
}

/// What was refused while building a batch; logged (rate-limited) with a sample.
#[derive(Debug, Default)]
pub struct Rejects {
    /// Number of invalid lines dropped.
    pub count: u64,
    /// The same, by reason ([`LineError::index`]).
    pub by_reason: [u64; LineError::COUNT],
    /// The first refused line (truncated) and why, for the log. A NaN line is kept
    /// only while no other reason was seen, so the WARN names a real problem.
    pub sample: Option<(LineError, String)>,
}

/// Longest sample of a bad line kept for the log.
const SAMPLE_BYTES: usize = 120;

impl Rejects {
    fn note(&mut self, err: LineError, line: &[u8]) {
        self.count += 1;
        self.by_reason[err.index()] += 1;
        let replace = match &self.sample {
            None => true,
            Some((LineError::Nan, _)) => err != LineError::Nan,
            Some(_) => false,
        };
        if replace {
            let cut = &line[..line.len().min(SAMPLE_BYTES)];
            self.sample = Some((err, String::from_utf8_lossy(cut).escape_debug().to_string()));
        }
    }

    /// Refused lines other than NaN values (those carbon drops silently too, so
    /// they are logged at debug level only).
    pub fn warn_count(&self) -> u64 {
        self.count - self.by_reason[LineError::Nan.index()]
    }
}

/// Starts the copy buffer with the clean lines before `upto`. Sized for the whole
/// input (without a prefix the output is never longer), so it never regrows: a
/// buffer started empty would double its way up, one reallocation and copy per
/// doubling, which the allocation test caught.
fn copy_buffer(raw: &[u8], upto: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(raw.len());
    buf.extend_from_slice(&raw[..upto]);
    buf
}

/// The state of one [`Batch::build`] pass.
struct Builder<'a> {
    prefix: Option<&'a str>,
    rules: &'a LineRules,
    spans: Vec<Span>,
    rejects: Rejects,
    /// `None` while every line so far is kept as it is: the batch is then `raw`
    /// itself. Becomes the copy buffer at the first line that needs one.
    out: Option<Vec<u8>>,
    normalizer: Normalizer,
    /// The batch's receive time (Unix seconds) for `-1` timestamps, read once.
    received: Option<u64>,
}

impl Builder<'_> {
    /// Handles one line `raw[start..nl]` (its `\n` at `nl`).
    fn line(&mut self, raw: &[u8], start: usize, nl: usize, result: Result<Line, LineError>) {
        let line = &raw[start..nl];
        let parsed = match result {
            Ok(l) => l,
            Err(e) => {
                if line.iter().all(|&b| b == b' ' || b == b'\t' || b == b'\r') {
                    // Blank line: nothing to forward, nothing worth counting.
                } else if line.len() > self.rules.max_line_bytes {
                    self.rejects.note(LineError::TooLong, line);
                } else {
                    self.rejects.note(e, line);
                }
                self.out.get_or_insert_with(|| copy_buffer(raw, start));
                return;
            }
        };
        let metric = &line[parsed.start..parsed.metric_end];
        let normalize = self.rules.tag_normalize && tags::needs_normalizing(metric);
        let now_ts = line[parsed.ts_start] == b'-'
            && line::is_now_timestamp(&line[parsed.ts_start..parsed.end]);
        let as_is = self.prefix.is_none() && !normalize && !now_ts;
        if as_is && self.out.is_none() && parsed.start == 0 && parsed.end == line.len() {
            if line.len() > self.rules.max_line_bytes {
                self.rejects.note(LineError::TooLong, line);
                self.out = Some(copy_buffer(raw, start));
                return;
            }
            self.spans.push(Span {
                metric_end: (start + parsed.metric_end) as u32,
                end: (nl + 1) as u32,
            });
            return;
        }
        let buf = self.out.get_or_insert_with(|| copy_buffer(raw, start));
        let line_start = buf.len();
        if let Some(p) = self.prefix {
            buf.extend_from_slice(p.as_bytes());
            buf.push(b'.');
        }
        // One copy per line in the common case: the name and the rest together.
        let (metric_end, copy_from) = if !normalize {
            (buf.len() + metric.len(), parsed.start)
        } else if self.normalizer.normalize(metric, buf).is_ok() {
            (buf.len(), parsed.metric_end)
        } else {
            buf.truncate(line_start);
            self.rejects.note(LineError::InvalidTags, line);
            return;
        };
        let copy_to = if now_ts { parsed.ts_start } else { parsed.end };
        buf.extend_from_slice(&line[copy_from..copy_to]);
        if now_ts {
            let t = *self.received.get_or_insert_with(unix_now);
            buf.extend_from_slice(t.to_string().as_bytes());
        }
        if buf.len() - line_start > self.rules.max_line_bytes {
            buf.truncate(line_start);
            self.rejects.note(LineError::TooLong, line);
            return;
        }
        buf.push(b'\n');
        self.spans.push(Span {
            metric_end: metric_end as u32,
            end: buf.len() as u32,
        });
    }
}

/// Now, in Unix seconds (what carbon-cache would stamp a `-1` point with).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Batch {
    /// [`build`](Self::build) with the default [`LineRules`] (carbon's line limit,
    /// tags forwarded as sent).
    pub fn from_plaintext(raw: Vec<u8>, prefix: Option<&str>) -> (Batch, Rejects) {
        Self::build(raw, prefix, &LineRules::default())
    }

    /// Validates `raw` (LF-delimited plaintext) and builds a batch of its valid
    /// lines, each prefixed with `<prefix>.` when a prefix is given (in front of the
    /// name, which is the name part of a tagged name in both forms). A last line
    /// without `\n` is kept whole; empty lines are skipped silently. Per `rules`,
    /// tagged names are normalized (then prefixed) and lines longer than carbon
    /// takes are dropped; a `-1` timestamp becomes the time of this call, so a
    /// spooled or delayed point keeps the time it was received.
    pub fn build(mut raw: Vec<u8>, prefix: Option<&str>, rules: &LineRules) -> (Batch, Rejects) {
        if raw.last().is_some_and(|&b| b != b'\n') {
            raw.push(b'\n');
        }
        let mut b = Builder {
            prefix,
            rules,
            spans: Vec::with_capacity(raw.len() / 48 + 1),
            rejects: Rejects::default(),
            out: prefix.map(|_| Vec::with_capacity(raw.len() + raw.len() / 4)),
            normalizer: Normalizer::default(),
            received: None,
        };
        let mut pos = 0;
        // `raw` ends with '\n' here, so every line has one; `parse_next` finds it
        // while validating (no separate memchr per line on clean lines).
        while pos < raw.len() {
            let (result, nl) = line::parse_next(&raw, pos);
            b.line(&raw, pos, nl, result);
            pos = nl + 1;
        }
        let data = match b.out {
            Some(buf) => Bytes::from(buf),
            None => Bytes::from(raw),
        };
        let batch = Batch {
            data,
            spans: b.spans,
            source: None,
        };
        (batch, b.rejects)
    }

    /// The batch, marked as sent by `ip`.
    pub fn with_source(mut self, ip: std::net::IpAddr) -> Batch {
        self.source = Some(ip);
        self
    }

    /// The sender's address, when the source set it.
    pub fn source(&self) -> Option<std::net::IpAddr> {
        self.source
    }

    /// All lines, each ending in `\n`, as one buffer (cheap to clone).
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Number of points (lines).
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when no valid line remained.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Iterates `(line including '\n', metric path)` without allocating.
    pub fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let mut start = 0usize;
        self.spans.iter().map(move |s| {
            let line = &self.data[start..s.end as usize];
            let metric = &self.data[start..s.metric_end as usize];
            start = s.end as usize;
            (line, metric)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(b: &Batch) -> Vec<String> {
        b.lines()
            .map(|(l, _)| String::from_utf8(l.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn clean_batch_keeps_its_buffer() {
        let raw = b"a.b 1 100\nc.d 2 200\n".to_vec();
        let ptr = raw.as_ptr();
        let (b, r) = Batch::from_plaintext(raw, None);
        assert_eq!(r.count, 0);
        assert_eq!(b.len(), 2);
        assert_eq!(b.data().as_ptr(), ptr, "no copy for a clean batch");
        let metrics: Vec<&[u8]> = b.lines().map(|(_, m)| m).collect();
        assert_eq!(metrics, vec![&b"a.b"[..], &b"c.d"[..]]);
    }

    #[test]
    fn last_line_without_newline_is_kept_whole() {
        let (b, _) = Batch::from_plaintext(b"a.b 1 100\nc.d 2 200".to_vec(), None);
        assert_eq!(lines(&b), vec!["a.b 1 100\n", "c.d 2 200\n"]);
    }

    #[test]
    fn invalid_lines_are_dropped_and_sampled() {
        let raw =
            b"ok.one 1 100\nbad line\n\n  ok.two\t2 200\r\nx nan 1\nok.three 3 300\n".to_vec();
        let (b, r) = Batch::from_plaintext(raw, None);
        assert_eq!(
            lines(&b),
            vec!["ok.one 1 100\n", "ok.two\t2 200\n", "ok.three 3 300\n"]
        );
        assert_eq!(r.count, 2);
        assert_eq!(r.by_reason, [1, 0, 0, 0, 0, 0, 1, 0]);
        let (err, sample) = r.sample.unwrap();
        assert_eq!(err, LineError::FieldCount);
        assert_eq!(sample, "bad line");
    }

    #[test]
    fn prefix_applies_to_every_line_and_metric() {
        let (b, r) = Batch::from_plaintext(
            b"web01.app.rate 5 100\nbad\nx.y 1 2".to_vec(),
            Some("customer-a"),
        );
        assert_eq!(r.count, 1);
        assert_eq!(
            lines(&b),
            vec!["customer-a.web01.app.rate 5 100\n", "customer-a.x.y 1 2\n"]
        );
        let metrics: Vec<&[u8]> = b.lines().map(|(_, m)| m).collect();
        assert_eq!(
            metrics,
            vec![&b"customer-a.web01.app.rate"[..], &b"customer-a.x.y"[..]]
        );
    }

    fn build(raw: &[u8], prefix: Option<&str>, rules: LineRules) -> (Vec<String>, Rejects) {
        let (b, r) = Batch::build(raw.to_vec(), prefix, &rules);
        (lines(&b), r)
    }

    #[test]
    fn lines_carbon_would_close_the_connection_on_are_dropped() {
        let long = format!("a.{} 1 2\n", "x".repeat(16384 - 6));
        assert_eq!(
            long.len(),
            16385,
            "16384 bytes before the newline: carbon's limit"
        );
        let longer = format!("a.{} 1 2\n", "x".repeat(16384 - 5));
        let mut raw = b"ok.one 1 2\ncaf\xe9 1 2\n".to_vec();
        raw.extend_from_slice(long.as_bytes());
        raw.extend_from_slice(longer.as_bytes());
        raw.extend_from_slice(b"ok.two 1 2\n");
        let (got, r) = build(&raw, None, LineRules::default());
        assert_eq!(got, vec!["ok.one 1 2\n", long.as_str(), "ok.two 1 2\n"]);
        assert_eq!(r.by_reason[LineError::NotUtf8.index()], 1);
        assert_eq!(r.by_reason[LineError::TooLong.index()], 1);
        // A prefix counts: the forwarded line is what carbon measures.
        let (got, r) = build(long.as_bytes(), Some("t"), LineRules::default());
        assert!(got.is_empty());
        assert_eq!(r.by_reason[LineError::TooLong.index()], 1);
        let small = LineRules {
            max_line_bytes: 10,
            ..LineRules::default()
        };
        let (got, r) = build(b"a.b 1 2\nabcdefgh 1 2\n", None, small);
        assert_eq!((got, r.count), (vec!["a.b 1 2\n".to_string()], 1));
    }

    #[test]
    fn minus_one_timestamps_become_the_receive_time() {
        let before = unix_now();
        let (got, r) = build(
            b"a 1 -1\nb 2 -1.5\nc 3 -2\nd 4 1700000000\n",
            None,
            LineRules::default(),
        );
        let after = unix_now();
        assert_eq!(r.count, 0);
        let ts: Vec<u64> = got[..2]
            .iter()
            .map(|l| l.trim_end().rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(ts.iter().all(|&t| t >= before && t <= after), "{got:?}");
        assert_eq!(&got[2..], ["c 3 -2\n", "d 4 1700000000\n"]);
    }

    #[test]
    fn nan_values_have_their_own_reason_and_no_warning_sample() {
        let (got, r) = build(b"a nan 1\nb 1 1\n", None, LineRules::default());
        assert_eq!(got, vec!["b 1 1\n"]);
        assert_eq!(
            (r.by_reason[LineError::Nan.index()], r.warn_count()),
            (1, 0)
        );
        let (_, r) = build(b"a nan 1\nbad\n", None, LineRules::default());
        assert_eq!(
            (r.warn_count(), r.sample.unwrap().0),
            (1, LineError::FieldCount)
        );
    }

    #[test]
    fn tags_are_normalized_then_prefixed_only_when_asked() {
        let raw = b"x.y;b=2;a=1 1 2\nm{z=\"1\",a=\"2\"} 1 2\nx;a=~b 1 2\nplain 1 2\n";
        let on = LineRules {
            tag_normalize: true,
            ..LineRules::default()
        };
        let (b, r) = Batch::build(raw.to_vec(), Some("t"), &on);
        assert_eq!(
            lines(&b),
            vec!["t.x.y;a=1;b=2 1 2\n", "t.m;a=2;z=1 1 2\n", "t.plain 1 2\n"]
        );
        let metrics: Vec<&[u8]> = b.lines().map(|(_, m)| m).collect();
        assert_eq!(metrics[0], b"t.x.y;a=1;b=2");
        assert_eq!(r.by_reason[LineError::InvalidTags.index()], 1);
        // Off (the default): forwarded as sent, the prefix in front of the name.
        let (got, r) = build(raw, Some("t"), LineRules::default());
        assert_eq!(r.count, 0);
        assert_eq!(got[1], "t.m{z=\"1\",a=\"2\"} 1 2\n");
        assert_eq!(got[2], "t.x;a=~b 1 2\n");
    }

    #[test]
    fn empty_input_is_an_empty_batch() {
        let (b, r) = Batch::from_plaintext(Vec::new(), None);
        assert!(b.is_empty());
        assert_eq!(r.count, 0);
    }
}
