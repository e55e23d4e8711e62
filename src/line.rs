//! Graphite plaintext lines: `<metric.path> <value> <timestamp>`.
//!
//! Validation happens in place on the batch buffer, one pass per line and no
//! allocation, because it runs for every point the gateway accepts. A line that
//! fails here is counted and dropped; it never reaches a destination (carbon would
//! either log and drop it, or worse, store a point under a garbage name).

use std::fmt;

/// Why a line was refused. Kept small (`Copy`) so counting costs nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineError {
    /// Not exactly three whitespace-separated fields.
    FieldCount,
    /// The value is not a finite number.
    Value,
    /// The timestamp is not a number.
    Timestamp,
    /// A control byte (other than the field-separating tab) inside the line.
    ControlByte,
}

impl LineError {
    /// Every reason, in [`index`](Self::index) order.
    pub const ALL: [LineError; 4] = [
        LineError::FieldCount,
        LineError::Value,
        LineError::Timestamp,
        LineError::ControlByte,
    ];

    /// A dense index for per-reason counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Short label for metrics (`polymur_invalid_lines_total{reason=...}`).
    pub fn label(self) -> &'static str {
        match self {
            LineError::FieldCount => "field_count",
            LineError::Value => "value",
            LineError::Timestamp => "timestamp",
            LineError::ControlByte => "control_byte",
        }
    }
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LineError::FieldCount => "expected 3 fields `<metric> <value> <timestamp>`",
            LineError::Value => "value is not a finite number",
            LineError::Timestamp => "timestamp is not a number",
            LineError::ControlByte => "control byte in line",
        })
    }
}

/// A valid line's shape, as offsets into the slice given to [`parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line {
    /// Start of the metric path (after any leading blanks).
    pub start: usize,
    /// End of the metric path: the routing key is `line[start..metric_end]`.
    pub metric_end: usize,
    /// End of the timestamp (before any trailing blanks or `\r`).
    pub end: usize,
}

#[inline]
fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Validates one line (without its `\n`). Leading blanks and trailing blanks or
/// `\r` (CRLF senders) are tolerated and excluded from the returned range.
#[inline]
pub fn parse(line: &[u8]) -> Result<Line, LineError> {
    let mut end = line.len();
    while end > 0 && (is_blank(line[end - 1]) || line[end - 1] == b'\r') {
        end -= 1;
    }
    let mut start = 0;
    while start < end && is_blank(line[start]) {
        start += 1;
    }
    // Field boundaries: [start, a) metric, [b, c) value, [d, end) timestamp.
    let mut bounds = [0usize; 6];
    let mut n = 0;
    let mut in_field = false;
    for (i, &byte) in line[..end].iter().enumerate().skip(start) {
        if is_blank(byte) {
            if in_field {
                if n >= 6 {
                    return Err(LineError::FieldCount);
                }
                bounds[n] = i;
                n += 1;
                in_field = false;
            }
        } else {
            if byte < 0x20 || byte == 0x7f {
                return Err(LineError::ControlByte);
            }
            if !in_field {
                if n >= 6 {
                    return Err(LineError::FieldCount);
                }
                bounds[n] = i;
                n += 1;
                in_field = true;
            }
        }
    }
    if in_field {
        if n >= 6 {
            return Err(LineError::FieldCount);
        }
        bounds[n] = end;
        n += 1;
    }
    if n != 6 {
        return Err(LineError::FieldCount);
    }
    if !is_number(&line[bounds[2]..bounds[3]]) {
        return Err(LineError::Value);
    }
    if !is_number(&line[bounds[4]..bounds[5]]) {
        return Err(LineError::Timestamp);
    }
    Ok(Line {
        start,
        metric_end: bounds[1],
        end,
    })
}

/// A finite decimal number as carbon's `float()` accepts it (`1`, `-2.5`, `1e3`).
/// Words such as `nan` or `inf` are refused: whisper would store them as holes.
#[inline]
fn is_number(field: &[u8]) -> bool {
    // Fast path: plain digits, the overwhelmingly common timestamp shape.
    if field.len() <= 18 && field.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if !field
        .iter()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return false;
    }
    // Only ASCII bytes remain, so this is valid UTF-8.
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_spaced_lines() {
        let l = parse(b"a.b.c 1.5 1700000000").unwrap();
        assert_eq!((l.start, l.metric_end, l.end), (0, 5, 20));
        let l = parse(b"  a.b\t\t-2e3   1700000000.5 \r").unwrap();
        assert_eq!((l.start, l.metric_end, l.end), (2, 5, 26));
    }

    #[test]
    fn refuses_bad_lines() {
        assert_eq!(parse(b""), Err(LineError::FieldCount));
        assert_eq!(parse(b"a.b 1"), Err(LineError::FieldCount));
        assert_eq!(parse(b"a.b 1 2 3"), Err(LineError::FieldCount));
        assert_eq!(parse(b"a.b x 2"), Err(LineError::Value));
        assert_eq!(parse(b"a.b nan 2"), Err(LineError::Value));
        assert_eq!(parse(b"a.b 1e999 2"), Err(LineError::Value));
        assert_eq!(parse(b"a.b 1 now"), Err(LineError::Timestamp));
        assert_eq!(parse(b"a\x01b 1 2"), Err(LineError::ControlByte));
        assert_eq!(parse(b"a.b 1 2\x00"), Err(LineError::ControlByte));
    }
}
