//! A batch of plaintext lines: one contiguous buffer plus the line index.
//!
//! Lines are never allocated one by one. A clean batch (every line valid, no key
//! prefix) keeps the very buffer it was decompressed into; otherwise the valid lines
//! are copied once into a new buffer, prefixed when tenant namespacing is on. The
//! buffer is a ref-counted [`Bytes`], so broadcast hands the same allocation to
//! every destination.

use bytes::Bytes;

use crate::line::{self, LineError};

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
}

/// What was refused while building a batch; logged (rate-limited) with a sample.
#[derive(Debug, Default)]
pub struct Rejects {
    /// Number of invalid lines dropped.
    pub count: u64,
    /// The same, by reason ([`LineError::index`]).
    pub by_reason: [u64; 4],
    /// The first refused line (truncated) and why, for the log.
    pub sample: Option<(LineError, String)>,
}

/// Longest sample of a bad line kept for the log.
const SAMPLE_BYTES: usize = 120;

impl Rejects {
    fn note(&mut self, err: LineError, line: &[u8]) {
        self.count += 1;
        self.by_reason[err.index()] += 1;
        if self.sample.is_none() {
            let cut = &line[..line.len().min(SAMPLE_BYTES)];
            self.sample = Some((err, String::from_utf8_lossy(cut).escape_debug().to_string()));
        }
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

impl Batch {
    /// Validates `raw` (LF-delimited plaintext) and builds a batch of its valid
    /// lines, each prefixed with `<prefix>.` when a prefix is given. A last line
    /// without `\n` is kept whole; empty lines are skipped silently.
    pub fn from_plaintext(mut raw: Vec<u8>, prefix: Option<&str>) -> (Batch, Rejects) {
        if raw.last().is_some_and(|&b| b != b'\n') {
            raw.push(b'\n');
        }
        let mut rejects = Rejects::default();
        let mut spans = Vec::with_capacity(raw.len() / 48 + 1);
        // `None` while every line so far is clean and unprefixed: the batch is then
        // `raw` itself. Becomes the copy buffer at the first line that needs one.
        let mut out: Option<Vec<u8>> =
            prefix.map(|_| Vec::with_capacity(raw.len() + raw.len() / 4));
        let mut pos = 0;
        // `raw` ends with '\n' here, so every line has one; `parse_next` finds it
        // while validating (no separate memchr per line on clean lines).
        while pos < raw.len() {
            let (result, nl) = line::parse_next(&raw, pos);
            let line = &raw[pos..nl];
            let line_start = pos;
            pos = nl + 1;
            let parsed = match result {
                Ok(l) => l,
                Err(e) => {
                    if line.iter().all(|&b| b == b' ' || b == b'\t' || b == b'\r') {
                        // Blank line: nothing to forward, nothing worth counting.
                    } else {
                        rejects.note(e, line);
                    }
                    if out.is_none() {
                        out = Some(copy_buffer(&raw, line_start));
                    }
                    continue;
                }
            };
            match out.as_mut() {
                None if parsed.start == 0 && parsed.end == line.len() => {
                    spans.push(Span {
                        metric_end: (line_start + parsed.metric_end) as u32,
                        end: pos as u32,
                    });
                }
                _ => {
                    let buf = out.get_or_insert_with(|| copy_buffer(&raw, line_start));
                    if let Some(p) = prefix {
                        buf.extend_from_slice(p.as_bytes());
                        buf.push(b'.');
                    }
                    let metric_end = buf.len() + parsed.metric_end - parsed.start;
                    buf.extend_from_slice(&line[parsed.start..parsed.end]);
                    buf.push(b'\n');
                    spans.push(Span {
                        metric_end: metric_end as u32,
                        end: buf.len() as u32,
                    });
                }
            }
        }
        let data = match out {
            Some(buf) => Bytes::from(buf),
            None => Bytes::from(raw),
        };
        (Batch { data, spans }, rejects)
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
        assert_eq!(r.by_reason, [1, 1, 0, 0]);
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

    #[test]
    fn empty_input_is_an_empty_batch() {
        let (b, r) = Batch::from_plaintext(Vec::new(), None);
        assert!(b.is_empty());
        assert_eq!(r.count, 0);
    }
}
