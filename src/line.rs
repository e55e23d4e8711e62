//! Graphite plaintext lines: `<metric.path> <value> <timestamp>`.
//!
//! Validation happens in place on the batch buffer, one pass per line and no
//! allocation, because it runs for every point the gateway accepts. A line that
//! fails here is counted and dropped; it never reaches a destination (carbon would
//! either log and drop it, store a point under a garbage name, or — for a line that
//! is not UTF-8 or is too long — close the connection, so that a resent window
//! holding the line would stop the destination for everybody).
//!
//! The rules are graphite-carbon 1.1.7's line receiver (`MetricLineReceiver`):
//! the line is decoded as strict UTF-8, split on whitespace into exactly three
//! fields, and both numbers are read with Python's `float()`; a NaN value is
//! dropped silently, a timestamp of `-1` means "now". [`LineRules`] holds the
//! limits and options that the batch builder applies on top.

use std::fmt;

/// Twisted's `LineOnlyReceiver.MAX_LENGTH`: carbon-cache closes the connection on a
/// line longer than this (the bytes before the `\n`, a `\r` included).
pub const CARBON_MAX_LINE_BYTES: usize = 16384;

/// How lines are checked and rewritten while a batch is built: carbon's receiver
/// limit and the Graphite 1.1 tag rules. One small `Copy` struct, so that every
/// source (HTTP ingest, the relay's and the proxy's TCP listeners) passes the same
/// options to [`crate::batch::Batch::build`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineRules {
    /// `-max-line-bytes`: longest forwarded line, counted as Twisted counts it (the
    /// bytes before the `\n`, after key prefixing and tag normalization). Longer
    /// lines are dropped as [`LineError::TooLong`].
    pub max_line_bytes: usize,
    /// `-tag-normalize`: rewrite tagged names as graphite-carbon's
    /// `TaggedSeries.parse(name).path` does (see [`crate::tags`]) before routing,
    /// and drop names its parser rejects as [`LineError::InvalidTags`].
    pub tag_normalize: bool,
}

impl LineRules {
    /// For lines this process validated already (re-routing a failed destination's
    /// queue): no length limit, no rewriting, so the operator's `-max-line-bytes`
    /// cannot be undercut by the default when the lines are parsed again.
    pub const ALREADY_CHECKED: LineRules = LineRules {
        max_line_bytes: usize::MAX,
        tag_normalize: false,
    };
}

impl Default for LineRules {
    /// carbon-cache's limit, tags forwarded as sent (carbon's
    /// `TAG_RELAY_NORMALIZED = False`, so placement matches carbon-relay's).
    fn default() -> Self {
        LineRules {
            max_line_bytes: CARBON_MAX_LINE_BYTES,
            tag_normalize: false,
        }
    }
}

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
    /// Not valid UTF-8: carbon's `line.decode('utf-8')` raises and the connection closes.
    NotUtf8,
    /// Longer than `-max-line-bytes`: carbon closes the connection.
    TooLong,
    /// The value is NaN: carbon-cache drops it silently (collectd sends one per
    /// counter after every start), so this is counted but logged at debug level.
    Nan,
    /// `-tag-normalize`: a tagged name carbon's `TaggedSeries.parse` rejects.
    InvalidTags,
}

impl LineError {
    /// Number of reasons (the size of per-reason counter arrays).
    pub const COUNT: usize = 8;

    /// Every reason, in [`index`](Self::index) order.
    pub const ALL: [LineError; Self::COUNT] = [
        LineError::FieldCount,
        LineError::Value,
        LineError::Timestamp,
        LineError::ControlByte,
        LineError::NotUtf8,
        LineError::TooLong,
        LineError::Nan,
        LineError::InvalidTags,
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
            LineError::NotUtf8 => "not_utf8",
            LineError::TooLong => "too_long",
            LineError::Nan => "nan",
            LineError::InvalidTags => "invalid_tags",
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
            LineError::NotUtf8 => "line is not valid UTF-8",
            LineError::TooLong => "line longer than -max-line-bytes",
            LineError::Nan => "value is NaN",
            LineError::InvalidTags => "invalid tags",
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
    /// Start of the timestamp (where a `-1` is replaced by the receive time).
    pub ts_start: usize,
    /// End of the timestamp (before any trailing blanks or `\r`).
    pub end: usize,
}

#[inline]
fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// True when `name` can stand as a metric path in a line carbon-cache takes: not
/// empty, no blank, control byte or DEL, valid UTF-8 without Unicode whitespace (the
/// same rules [`parse`] applies to a received line's metric). For names this process
/// made (a routing rule's rewrite), which no received line has checked.
pub fn valid_name(name: &[u8]) -> bool {
    let (len, high) = first_special(name);
    !name.is_empty()
        && len == name.len()
        && (!high || std::str::from_utf8(name).is_ok_and(|n| !n.chars().any(char::is_whitespace)))
}

/// Validates one line (without its `\n`). Leading blanks and trailing blanks or
/// `\r` (CRLF senders) are tolerated and excluded from the returned range.
///
/// Runs for every point, so it is written for speed: the metric path (most of
/// the line's bytes) is scanned 16 or 8 bytes at a time by [`first_special`],
/// the short value and timestamp byte by byte, and common numbers are checked
/// without `f64` parsing. The batch loop calls [`parse_next`], which handles
/// clean lines itself and comes here for the rest. A line that is not UTF-8 is
/// [`LineError::NotUtf8`] whatever else is wrong with it (carbon decodes first);
/// otherwise it reports the same error as a left-to-right scan would: the first
/// control byte or the start of a fourth field, whichever comes first, then a
/// missing field, then the value, then the timestamp, then a NaN value.
#[inline]
pub fn parse(line: &[u8]) -> Result<Line, LineError> {
    match parse_fields(line) {
        // The UTF-8 check costs nothing unless the metric has a byte >= 0x80
        // (the rest of a valid line is ASCII).
        Ok((l, false)) => Ok(l),
        Ok((l, true)) => match std::str::from_utf8(&line[l.start..l.metric_end]) {
            Err(_) => Err(LineError::NotUtf8),
            // Python's `split()` also splits on Unicode whitespace (U+00A0, U+2003…):
            // carbon would see more than three fields.
            Ok(name) if name.chars().any(char::is_whitespace) => Err(LineError::FieldCount),
            Ok(_) => Ok(l),
        },
        Err(e) => Err(if std::str::from_utf8(line).is_err() {
            LineError::NotUtf8
        } else {
            e
        }),
    }
}

/// [`parse`] without the UTF-8 rule; also says whether the metric has a byte >= 0x80.
#[inline]
fn parse_fields(line: &[u8]) -> Result<(Line, bool), LineError> {
    let mut end = line.len();
    while end > 0 && (is_blank(line[end - 1]) || line[end - 1] == b'\r') {
        end -= 1;
    }
    let line = &line[..end];
    let mut start = 0;
    while start < end && is_blank(line[start]) {
        start += 1;
    }
    if start == end {
        return Err(LineError::FieldCount);
    }
    let (len, high) = first_special(&line[start..]);
    let metric_end = start + len;
    if metric_end < end && !is_blank(line[metric_end]) {
        return Err(LineError::ControlByte);
    }
    let (value_start, value_end) = field(line, metric_end)?;
    let (ts_start, ts_end) = field(line, value_end)?;
    if ts_end < end {
        // Blanks then a fourth field (trailing blanks were trimmed above); a
        // scan from the left would meet a control byte there first.
        let fourth = line[ts_end..].iter().find(|&&b| !is_blank(b));
        return Err(match fourth {
            Some(&b) if b < 0x20 || b == 0x7f => LineError::ControlByte,
            _ => LineError::FieldCount,
        });
    }
    if value_start == value_end || ts_start == ts_end {
        return Err(LineError::FieldCount);
    }
    let value = classify(&line[value_start..value_end]);
    if value == Number::Invalid {
        return Err(LineError::Value);
    }
    if classify(&line[ts_start..ts_end]) != Number::Finite {
        return Err(LineError::Timestamp);
    }
    if value == Number::Nan {
        return Err(LineError::Nan);
    }
    Ok((
        Line {
            start,
            metric_end,
            ts_start,
            end,
        },
        high,
    ))
}

/// Skips the blanks at `from`, then returns the bounds of the field that
/// follows (empty at the end of the line). Fields after the metric are short,
/// so this goes byte by byte.
#[inline]
fn field(line: &[u8], mut from: usize) -> Result<(usize, usize), LineError> {
    while from < line.len() && is_blank(line[from]) {
        from += 1;
    }
    let start = from;
    while from < line.len() {
        let b = line[from];
        if is_blank(b) {
            break;
        }
        if b < 0x20 || b == 0x7f {
            return Err(LineError::ControlByte);
        }
        from += 1;
    }
    Ok((start, from))
}

/// Index of the first byte that is a blank, a control byte or DEL (any byte
/// `<= 0x20`, or `0x7f`), or `bytes.len()` if there is none; and whether a byte
/// `>= 0x80` comes before it (only then does the name need a UTF-8 check).
///
/// The metric path is most of a line's bytes, so this is the inner loop of
/// validation: 16 bytes per step with SSE2 (part of every x86_64 CPU), then
/// [`first_special_swar`] for the tail and on other architectures. The high-byte
/// flag is the sign mask the scan computes anyway, OR'ed up.
#[inline]
fn first_special(bytes: &[u8]) -> (usize, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_loadu_si128, _mm_movemask_epi8,
            _mm_set1_epi8,
        };
        let mut i = 0;
        let mut high = 0;
        // SAFETY: SSE2 is in the x86_64 baseline, so these intrinsics are always
        // available; every load reads bytes[i..i + 16], in bounds by the loop
        // condition, and `loadu` has no alignment requirement.
        unsafe {
            let limit = _mm_set1_epi8(0x21);
            let del = _mm_set1_epi8(0x7f);
            while i + 16 <= bytes.len() {
                let v = _mm_loadu_si128(bytes.as_ptr().add(i).cast::<__m128i>());
                // Signed compare: 0x21 > v holds for 0..=0x20 and for bytes >= 0x80
                // (negative); the sign mask removes the latter (UTF-8 is allowed).
                let sign = _mm_movemask_epi8(v);
                let low = _mm_movemask_epi8(_mm_cmpgt_epi8(limit, v)) & !sign;
                let hits = low | _mm_movemask_epi8(_mm_cmpeq_epi8(v, del));
                if hits != 0 {
                    let at = hits.trailing_zeros();
                    high |= sign & ((1 << at) - 1);
                    return (i + at as usize, high != 0);
                }
                high |= sign;
                i += 16;
            }
        }
        let (n, tail_high) = first_special_swar(&bytes[i..]);
        (i + n, high != 0 || tail_high)
    }
    #[cfg(not(target_arch = "x86_64"))]
    first_special_swar(bytes)
}

/// [`first_special`] eight bytes per step, portably (SWAR): `w - 0x21..`
/// borrows into bit 7 of exactly the bytes below 0x21 (masked with `!w` to
/// exclude bytes >= 0x80, which UTF-8 names may contain), and a byte equal to
/// 0x7f is a zero byte of `w ^ 0x7f..`.
/// A borrow can only flag a byte *above* a truly flagged one, so the lowest
/// flagged byte is exact.
#[inline]
fn first_special_swar(bytes: &[u8]) -> (usize, bool) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    let mut high = 0;
    while i + 8 <= bytes.len() {
        let w = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let low = w.wrapping_sub(ONES * 0x21) & !w & HIGH;
        let x = w ^ (ONES * 0x7f);
        let del = x.wrapping_sub(ONES) & !x & HIGH;
        let hits = low | del;
        if hits != 0 {
            // Bits below the lowest hit: the bytes before the special one.
            let below = (hits & hits.wrapping_neg()) - 1;
            high |= w & HIGH & below;
            return (i + (hits.trailing_zeros() / 8) as usize, high != 0);
        }
        high |= w & HIGH;
        i += 8;
    }
    let mut high = high != 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b <= 0x20 || b == 0x7f {
            return (i, high);
        }
        high |= b >= 0x80;
        i += 1;
    }
    (bytes.len(), high)
}

/// What Python's `float()` makes of a field, as far as carbon cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Number {
    /// A finite number: stored.
    Finite,
    /// `nan` in any case and sign: carbon-cache drops the point.
    Nan,
    /// Not a number, or infinite (`inf`, `1e999`): refused.
    Invalid,
}

/// [`Number`] of a value or timestamp field.
#[inline]
fn classify(field: &[u8]) -> Number {
    if is_number(field) {
        Number::Finite
    } else if is_nan(field) {
        Number::Nan
    } else {
        Number::Invalid
    }
}

/// `nan`, `NaN`, `-nan`, `+NAN`…: what Python's `float()` reads as NaN.
#[cold]
fn is_nan(field: &[u8]) -> bool {
    let word = match field.first() {
        Some(b'+' | b'-') => &field[1..],
        _ => field,
    };
    word.eq_ignore_ascii_case(b"nan")
}

/// True when `field` is a timestamp carbon-cache reads as "now":
/// `int(float(field)) == -1`, i.e. a number in (-2, -1] (`-1`, `-1.0`, `-1.5`).
/// The caller checks that it starts with `-` first; the field is a valid number.
pub fn is_now_timestamp(field: &[u8]) -> bool {
    if field == b"-1" {
        return true;
    }
    parse_float(field).is_some_and(|t| t.trunc() == -1.0)
}

/// A finite decimal number as carbon's `float()` accepts it (`1`, `-2.5`, `1e3`).
/// Words such as `nan` or `inf` are refused: whisper would store them as holes.
#[inline]
fn is_number(field: &[u8]) -> bool {
    // Fast path, no float parsing: `-?digits(.digits)?`, the shape of nearly
    // every value and timestamp. Fewer than 300 digits can never overflow f64,
    // so such a number is always finite; anything else takes the exact path.
    let n = field.len();
    let mut i = usize::from(n > 0 && field[0] == b'-');
    let int_start = i;
    while i < n && field[i].is_ascii_digit() {
        i += 1;
    }
    let int = i - int_start;
    if int > 0 && int < 300 {
        if i == n {
            return true;
        }
        if field[i] == b'.' {
            i += 1;
            let frac_start = i;
            while i < n && field[i].is_ascii_digit() {
                i += 1;
            }
            if i == n && i > frac_start {
                return true;
            }
        }
    }
    is_number_exact(field)
}

/// The exact rule, via `f64` parsing: exponents, signs, leading or trailing
/// dots, digit-separating underscores (`1_000`, as Python 3 reads them), overflow.
#[cold]
#[inline(never)]
fn is_number_exact(field: &[u8]) -> bool {
    parse_float(field).is_some_and(f64::is_finite)
}

/// Python's `float()` on a field of ASCII digits, signs, dots, exponents and
/// underscores (other spellings, such as `inf` or `nan`, give `None`).
fn parse_float(field: &[u8]) -> Option<f64> {
    if !field
        .iter()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E' | b'_'))
    {
        return None;
    }
    // Only ASCII bytes remain, so this is valid UTF-8.
    let text = std::str::from_utf8(field).ok()?;
    if !field.contains(&b'_') {
        return text.parse::<f64>().ok();
    }
    // PEP 515: an underscore only between two digits.
    let between_digits = |i: usize| {
        i > 0 && field[i - 1].is_ascii_digit() && field.get(i + 1).is_some_and(u8::is_ascii_digit)
    };
    if !(0..field.len()).all(|i| field[i] != b'_' || between_digits(i)) {
        return None;
    }
    text.replace('_', "").parse::<f64>().ok()
}

/// Validates the line that starts at `buf[start]` and ends at the next `\n`
/// (`buf` must contain one at or after `start`). Returns what [`parse`] would
/// return for that line, and the index of its `\n`.
///
/// This is the batch loop's entry point: for the common clean line
/// (`metric SEP value SEP timestamp\n`) it finds the newline as a by-product
/// of validating, instead of a separate `memchr` per line (about 7% of the
/// gateway's CPU in a profile). Anything unusual — leading or trailing blanks,
/// `\r`, a control byte, a number that needs the exact check — is handed to
/// [`parse`] on the line found by `memchr`, so results are identical.
#[inline]
pub fn parse_next(buf: &[u8], start: usize) -> (Result<Line, LineError>, usize) {
    if let Some(fast) = parse_clean(buf, start) {
        return fast;
    }
    let nl = start + memchr::memchr(b'\n', &buf[start..]).expect("buffer ends with a newline");
    (parse(&buf[start..nl]), nl)
}

/// The fast path of [`parse_next`]: `None` unless the line is clean, i.e.
/// `metric SEP+ number SEP+ number\n` with an ASCII metric and numbers of the
/// plain shape (`-?digits(.digits)?`, checked as they are scanned: no second pass).
#[inline]
fn parse_clean(buf: &[u8], start: usize) -> Option<(Result<Line, LineError>, usize)> {
    let rest = &buf[start..];
    match rest.first() {
        Some(&b) if !is_blank(b) => {}
        _ => return None,
    }
    let (metric_end, high) = first_special(rest);
    if high || !is_blank(*rest.get(metric_end)?) {
        return None;
    }
    let mut i = skip_blanks(rest, metric_end)?;
    i = plain_number_end(rest, i)?;
    if !is_blank(rest[i]) {
        return None;
    }
    let ts_start = skip_blanks(rest, i)?;
    i = plain_number_end(rest, ts_start)?;
    if rest[i] != b'\n' {
        return None;
    }
    Some((
        Ok(Line {
            start: 0,
            metric_end,
            ts_start,
            end: i,
        }),
        start + i,
    ))
}

/// Index of the first non-blank byte at or after `i` (`None` at the buffer's end).
#[inline]
fn skip_blanks(rest: &[u8], mut i: usize) -> Option<usize> {
    while is_blank(*rest.get(i)?) {
        i += 1;
    }
    Some(i)
}

/// If `rest[i..]` starts with a number of the plain shape `-?digits(.digits)?`
/// (under 300 integer digits, so always finite), the index just after it.
/// What follows is the caller's to check; any other shape gives `None`.
#[inline]
fn plain_number_end(rest: &[u8], mut i: usize) -> Option<usize> {
    if *rest.get(i)? == b'-' {
        i += 1;
    }
    let int_start = i;
    while rest.get(i)?.is_ascii_digit() {
        i += 1;
    }
    if i == int_start || i - int_start >= 300 {
        return None;
    }
    if rest[i] == b'.' {
        i += 1;
        let frac_start = i;
        while rest.get(i)?.is_ascii_digit() {
            i += 1;
        }
        if i == frac_start {
            return None;
        }
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_spaced_lines() {
        let l = parse(b"a.b.c 1.5 1700000000").unwrap();
        assert_eq!((l.start, l.metric_end, l.ts_start, l.end), (0, 5, 10, 20));
        let l = parse(b"  a.b\t\t-2e3   1700000000.5 \r").unwrap();
        assert_eq!((l.start, l.metric_end, l.ts_start, l.end), (2, 5, 14, 26));
    }

    #[test]
    fn refuses_bad_lines() {
        use LineError::*;
        let cases: [(LineError, &[&[u8]]); 6] = [
            (
                FieldCount,
                &[b"", b"a.b 1", b"a.b 1 2 3", b"a\xc2\xa0b 1 2"],
            ),
            (Value, &[b"a.b x 2", b"a.b inf 2", b"a.b 1e999 2"]),
            (Nan, &[b"a.b nan 2", b"a.b -NaN 2"]),
            (Timestamp, &[b"a.b nan x", b"a.b 1 nan", b"a.b 1 now"]),
            (
                NotUtf8,
                &[b"caf\xe9.x 1 2", b"caf\xe9.x 1", b"a.b 1 2 \xff"],
            ),
            (ControlByte, &[b"a\x01b 1 2", b"a.b 1 2\x00"]),
        ];
        for (err, lines) in cases {
            for line in lines {
                assert_eq!(parse(line), Err(err), "{line:?}");
            }
        }
        assert!(parse("caf\u{e9}.x 1 2".as_bytes()).is_ok());
    }

    /// The byte-at-a-time validator this module used before `first_special`;
    /// the fast one must agree with it on every input, error kind included.
    fn reference_parse(line: &[u8]) -> Result<Line, LineError> {
        let Ok(text) = std::str::from_utf8(line) else {
            return Err(LineError::NotUtf8);
        };
        let mut end = line.len();
        while end > 0 && (is_blank(line[end - 1]) || line[end - 1] == b'\r') {
            end -= 1;
        }
        let mut start = 0;
        while start < end && is_blank(line[start]) {
            start += 1;
        }
        let mut bounds = [0usize; 6];
        let mut n = 0;
        let mut in_field = false;
        for (i, &byte) in line[..end].iter().enumerate().skip(start) {
            if is_blank(byte) {
                if in_field {
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
            bounds[n] = end;
            n += 1;
        }
        if n != 6 {
            return Err(LineError::FieldCount);
        }
        let number = |f: &[u8]| {
            // PEP 515: pieces between underscores end and start with a digit.
            let text = std::str::from_utf8(f).unwrap();
            let pieces: Vec<&str> = text.split('_').collect();
            let joined = pieces.windows(2).all(|w| {
                w[0].ends_with(|c: char| c.is_ascii_digit())
                    && w[1].starts_with(|c: char| c.is_ascii_digit())
            });
            f.iter()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E' | b'_'))
                && joined
                && pieces
                    .concat()
                    .parse::<f64>()
                    .ok()
                    .is_some_and(f64::is_finite)
        };
        let nan = |f: &[u8]| {
            let w = std::str::from_utf8(f).unwrap();
            let w = w.strip_prefix(['+', '-']).unwrap_or(w);
            w.eq_ignore_ascii_case("nan")
        };
        let value = &line[bounds[2]..bounds[3]];
        if !number(value) && !nan(value) {
            return Err(LineError::Value);
        }
        if !number(&line[bounds[4]..bounds[5]]) {
            return Err(LineError::Timestamp);
        }
        if nan(value) {
            return Err(LineError::Nan);
        }
        if text[start..bounds[1]].chars().any(char::is_whitespace) {
            return Err(LineError::FieldCount);
        }
        Ok(Line {
            start,
            metric_end: bounds[1],
            ts_start: bounds[4],
            end,
        })
    }

    /// A small deterministic generator (xorshift64) for the generated-input tests: the
    /// same inputs on every run, no dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Appends fewer than `max_len` bytes drawn from `alphabet`.
        fn push_random(&mut self, out: &mut Vec<u8>, alphabet: &[u8], max_len: u64) {
            for _ in 0..self.next() % max_len {
                out.push(alphabet[(self.next() % alphabet.len() as u64) as usize]);
            }
        }
    }

    #[test]
    fn fast_parser_agrees_with_the_reference_on_generated_lines() {
        // Lines built from an alphabet rich in separators, control bytes, number
        // characters and UTF-8, by a small deterministic generator (xorshift).
        let alphabet: &[u8] = b"ab.Z09 \t\t  \r\x00\x01\x1f\x7f\x80\xc3\xa9-+eE.5_nN";
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut line = Vec::new();
        for _ in 0..200_000 {
            line.clear();
            rng.push_random(&mut line, alphabet, 40);
            assert_eq!(parse(&line), reference_parse(&line), "{:?}", line);
        }
        // And well-formed lines with one byte changed anywhere.
        let good = b"  servers.dc1.host0042.cpu.core5.user\t-12.75   1700000000 \r".to_vec();
        for i in 0..good.len() {
            for b in [
                0u8, 0x01, 0x09, 0x0d, 0x1f, b' ', b'x', b'.', b'-', b'e', 0x7f, 0x80, 0xff,
            ] {
                let mut l = good.clone();
                l[i] = b;
                assert_eq!(parse(&l), reference_parse(&l), "{:?}", l);
            }
        }
    }

    #[test]
    fn valid_names_are_what_parse_takes_as_a_metric() {
        for name in [
            "a",
            "a.b.c",
            "caf\u{e9}.x",
            "a;tag=v",
            "x".repeat(20_000).as_str(),
        ] {
            assert!(valid_name(name.as_bytes()), "{name:?}");
            let line = format!("{name} 1 2");
            assert!(parse(line.as_bytes()).is_ok(), "{name:?}");
        }
        let bad: [&[u8]; 8] = [
            b"",
            b"a b",
            b"a\tb",
            b"a\nb",
            b"a\x00",
            b"a\x7f",
            b"\xff\xfe",
            "a\u{a0}b".as_bytes(),
        ];
        for name in bad {
            assert!(!valid_name(name), "{name:?}");
        }
    }

    #[test]
    fn first_special_finds_the_first_separator_or_control_byte() {
        for len in 0..40usize {
            for pos in 0..=len {
                for special in [b' ', b'\t', 0x00, 0x1f, 0x20, 0x7f] {
                    let mut v = vec![b'a'; len];
                    // Bytes >= 0x80 (UTF-8) and 0x21 around the special one are not special.
                    for (k, b) in v.iter_mut().enumerate() {
                        *b = [b'a', 0x80, 0xff, 0x21, 0x7e][k % 5];
                    }
                    if pos < len {
                        v[pos] = special;
                    }
                    let high = v[..pos].iter().any(|&b| b >= 0x80);
                    let want = (pos, high);
                    assert_eq!(
                        first_special(&v),
                        want,
                        "len {len} pos {pos} byte {special}"
                    );
                    assert_eq!(first_special_swar(&v), want, "swar: len {len} pos {pos}");
                }
            }
        }
    }

    #[test]
    fn numbers_take_the_fast_or_exact_path_alike() {
        for (s, ok) in [
            ("0", true),
            ("-0", true),
            ("12.5", true),
            ("-12.50", true),
            ("1.", true),
            (".5", true),
            ("+1", true),
            ("1e3", true),
            ("5.", true),
            ("+5", true),
            ("-.5e-3", true),
            ("1_000.5", true),
            ("1e1_0", true),
            ("1__0", false),
            ("_1", false),
            ("1_", false),
            ("1_.5", false),
            ("1._5", false),
            (".", false),
            ("e5", false),
            ("1e", false),
            ("inf", false),
            ("nan", false),
            ("-", false),
            ("1.2.3", false),
            ("--1", false),
            ("1e999", false),
            ("", false),
        ] {
            assert_eq!(is_number(s.as_bytes()), ok, "{s}");
        }
        let huge = "9".repeat(400);
        assert!(!is_number(huge.as_bytes()), "overflows to inf");
        let big = "9".repeat(299);
        assert!(is_number(big.as_bytes()));
    }

    #[test]
    fn parse_next_agrees_with_parse_and_memchr() {
        let alphabet: &[u8] = b"ab.Z09 \t\t  \r\x00\x01\x7f\xc3-+e.5nnnnnn111 ";
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            // Up to seven random lines, then a good one.
            let mut buf = Vec::new();
            for _ in 0..(rng.next() % 8) {
                rng.push_random(&mut buf, alphabet, 30);
                buf.push(b'\n');
            }
            buf.extend_from_slice(b"good.metric 1.5 1700000000\n");
            let mut pos = 0;
            while pos < buf.len() {
                let nl = pos + memchr::memchr(b'\n', &buf[pos..]).unwrap();
                let (got, got_nl) = parse_next(&buf, pos);
                assert_eq!(
                    (got, got_nl),
                    (parse(&buf[pos..nl]), nl),
                    "{:?}",
                    &buf[pos..nl]
                );
                pos = nl + 1;
            }
        }
    }
}
