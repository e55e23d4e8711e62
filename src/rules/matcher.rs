//! Expressions compiled once per load, matched without trying every regex on every line.
//!
//! Two techniques, both carbon-c-relay's or better:
//! * **Literal patterns are plain comparisons.** An expression made only of `[A-Za-z0-9_-]`
//!   and escaped `.` `*` `+` `(` `\`, optionally anchored by a leading `^` and/or trailing
//!   `$`, is a substring, prefix, suffix or whole-name comparison — carbon-c-relay's
//!   `strstr`/`strncmp`/`tailcmp`/`strcmp` classes, chosen by the same rule.
//! * **All regexes run as one automaton.** The regexes of a configuration form one
//!   [`RegexSet`]: the first regex rule a line reaches runs the whole set in a single pass
//!   over the name, and every later regex rule is a bit lookup — until a rewrite changes
//!   the name, which forgets the answer. A regex anchored on a literal (`^dc[0-9]…`) is
//!   first tested by comparing that literal, so a name no regex can match never runs the
//!   set at all. Captures are only computed for a rewrite whose pattern matched.
//!
//! Deliberate difference: carbon-c-relay drops an escaped or mid-pattern `$` from a
//! "literal" (so `foo$bar` becomes the substring `foobar`); here such a pattern is a regex
//! with its POSIX meaning.

use regex::bytes::{Regex, RegexSet, RegexSetBuilder};

use super::regex::{compile, translate};

/// How one expression is tested.
#[derive(Clone, Debug)]
pub enum Pattern {
    /// `*`.
    All,
    /// Unanchored literal: carbon-c-relay's `strstr`.
    Contains(Vec<u8>),
    /// `^literal`: `strncmp`.
    StartsWith(Vec<u8>),
    /// `literal$`: `tailcmp`.
    EndsWith(Vec<u8>),
    /// `^literal$`: `strcmp`.
    Equals(Vec<u8>),
    /// Anything else. `slot` is its index in its segment's [`RegexSet`] (for validate
    /// expressions, which are tested on the data and not on names, there is no set).
    Regex {
        re: Regex,
        slot: Option<usize>,
        /// A literal every match starts the name with (`^dc` of `^dc[0-9]\.`): a name
        /// without it is rejected by one comparison, before any automaton runs.
        prefix: Vec<u8>,
    },
}

impl Pattern {
    /// Classifies and compiles `expr` (`*` must be handled by the caller).
    pub fn compile(expr: &str) -> Result<Pattern, String> {
        if let Some(p) = literal(expr) {
            return Ok(p);
        }
        Ok(Pattern::Regex {
            re: compile(expr)?,
            slot: None,
            prefix: anchored_prefix(expr),
        })
    }

    /// True when the expression has capture groups (rewrites can use `\1`…).
    pub fn groups(&self) -> usize {
        match self {
            Pattern::Regex { re, .. } => re.captures_len() - 1,
            _ => 0,
        }
    }

    /// Where the pattern matches `s` (the whole match's span), tested on its own.
    pub fn find(&self, s: &[u8]) -> Option<(usize, usize)> {
        match self {
            Pattern::All => Some((0, s.len())),
            Pattern::Contains(l) => memchr::memmem::find(s, l).map(|i| (i, i + l.len())),
            Pattern::StartsWith(l) => s.starts_with(l).then_some((0, l.len())),
            Pattern::EndsWith(l) => s.ends_with(l).then(|| (s.len() - l.len(), s.len())),
            Pattern::Equals(l) => (s == l.as_slice()).then_some((0, l.len())),
            Pattern::Regex { re, .. } => re.find(s).map(|m| (m.start(), m.end())),
        }
    }

    /// The literal every name this pattern matches starts with, when there is one.
    pub fn required_prefix(&self) -> Option<&[u8]> {
        match self {
            Pattern::StartsWith(l) | Pattern::Equals(l) => Some(l),
            Pattern::Regex { prefix, .. } if !prefix.is_empty() => Some(prefix),
            _ => None,
        }
    }

    /// Whether the pattern matches `s`, tested on its own (validate expressions).
    pub fn matches_alone(&self, s: &[u8]) -> bool {
        match self {
            Pattern::Regex { re, .. } => re.is_match(s),
            _ => self.find(s).is_some(),
        }
    }

    /// Whether the pattern matches `s`, using `set` (this segment's set result) for regexes.
    #[inline]
    pub fn is_match(&self, s: &[u8], set: &mut SetCache<'_>) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Contains(l) => memchr::memmem::find(s, l).is_some(),
            Pattern::StartsWith(l) => s.starts_with(l),
            Pattern::EndsWith(l) => s.ends_with(l),
            Pattern::Equals(l) => s == l.as_slice(),
            Pattern::Regex { prefix, .. } if !s.starts_with(prefix) => false,
            Pattern::Regex {
                re, slot: Some(i), ..
            } => set.get(s, *i).unwrap_or_else(|| re.is_match(s)),
            Pattern::Regex { re, slot: None, .. } => re.is_match(s),
        }
    }
}

/// carbon-c-relay's rule for "this expression is a plain comparison", or `None` for a regex.
/// `Some(literal)` for `^literal(.*)` and `^literal(.*)$`, the usual "move a subtree"
/// rewrite: a name matches it exactly when it starts with the literal (names hold no
/// newline), group 1 being the rest, so its captures need no automaton.
pub fn prefix_capture(expr: &str) -> Option<Vec<u8>> {
    let head = expr
        .strip_suffix("(.*)$")
        .or_else(|| expr.strip_suffix("(.*)"))?;
    // An odd run of backslashes before `(` escapes it: then there is no group.
    let escapes = head.bytes().rev().take_while(|&c| c == b'\\').count();
    if !head.starts_with('^') || escapes % 2 == 1 {
        return None;
    }
    if head == "^" {
        return Some(Vec::new());
    }
    match literal(head)? {
        Pattern::StartsWith(lit) => Some(lit),
        _ => None,
    }
}

fn literal(expr: &str) -> Option<Pattern> {
    let b = expr.as_bytes();
    let (anchored, body) = match b.first() {
        Some(b'^') => (true, &b[1..]),
        _ => (false, b),
    };
    let (tail, body) = match body.last() {
        Some(b'$') if !ends_escaped(body) => (true, &body[..body.len() - 1]),
        _ => (false, body),
    };
    let mut lit = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\\' => match body.get(i + 1) {
                Some(&c @ (b'.' | b'*' | b'+' | b'(' | b'\\')) => {
                    lit.push(c);
                    i += 2;
                }
                _ => return None,
            },
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' => {
                lit.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    Some(match (anchored, tail) {
        (false, false) => Pattern::Contains(lit),
        (true, false) => Pattern::StartsWith(lit),
        (false, true) => Pattern::EndsWith(lit),
        (true, true) => Pattern::Equals(lit),
    })
}

/// The literal a `^`-anchored POSIX expression requires at the start of the name: plain
/// bytes and escaped punctuation up to the first operator, minus a last byte that a
/// quantifier applies to. Empty when there is none or a top-level `|` could bypass it.
fn anchored_prefix(expr: &str) -> Vec<u8> {
    let b = expr.as_bytes();
    if b.first() != Some(&b'^') || top_level_alternation(b) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut i = 1;
    while i < b.len() {
        let (c, next) = match b[i] {
            b'\\' if b.get(i + 1).is_some_and(|c| c.is_ascii_punctuation()) => (b[i + 1], i + 2),
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b':' || c == b'#' => {
                (c, i + 1)
            }
            _ => break,
        };
        if matches!(b.get(next), Some(b'*' | b'?' | b'{')) {
            break;
        }
        out.push(c);
        if b.get(next) == Some(&b'+') {
            break;
        }
        i = next;
    }
    out
}

/// True when `|` appears outside every group and bracket.
fn top_level_alternation(b: &[u8]) -> bool {
    let (mut depth, mut i) = (0i32, 0);
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' => {
                // Skip the bracket: a `]` right after `[` or `[^` is a member.
                i += 1;
                if b.get(i) == Some(&b'^') {
                    i += 1;
                }
                if b.get(i) == Some(&b']') {
                    i += 1;
                }
                while i < b.len() && b[i] != b']' {
                    if b[i] == b'[' && matches!(b.get(i + 1), Some(b':' | b'.' | b'=')) {
                        let close = b[i + 2..]
                            .windows(2)
                            .position(|w| w[1] == b']' && w[0] == b[i + 1]);
                        i += close.map_or(0, |p| p + 3);
                    }
                    i += 1;
                }
            }
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'|' if depth <= 0 => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// True when the last byte of `b` is escaped by an odd run of backslashes.
fn ends_escaped(b: &[u8]) -> bool {
    let n = b.len();
    let run = b[..n - 1].iter().rev().take_while(|&&c| c == b'\\').count();
    run % 2 == 1
}

/// The regexes of one segment (the rules between two rewrites) as one automaton.
#[derive(Debug)]
pub struct Segment {
    set: Option<RegexSet>,
}

impl Segment {
    /// Builds the set from the POSIX expressions of the segment's regex rules, in slot order.
    pub fn new(exprs: &[&str]) -> Result<Segment, String> {
        if exprs.is_empty() {
            return Ok(Segment { set: None });
        }
        let translated: Vec<String> = exprs
            .iter()
            .map(|e| translate(e))
            .collect::<Result<_, _>>()?;
        let set = RegexSetBuilder::new(&translated)
            .unicode(false)
            .dot_matches_new_line(true)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Segment { set: Some(set) })
    }
}

/// One line's lazily computed set result for the segment it is in: the set runs at most
/// once per segment per line, and only if a regex rule of the segment is reached. The
/// result buffer is borrowed from the caller so routing a line does not allocate.
pub struct SetCache<'a> {
    seg: Option<&'a Segment>,
    hits: &'a mut Vec<bool>,
    done: bool,
}

impl<'a> SetCache<'a> {
    /// A cache writing its results into `hits` (any previous content is ignored).
    pub fn new(hits: &'a mut Vec<bool>) -> Self {
        SetCache {
            seg: None,
            hits,
            done: false,
        }
    }

    /// Moves to `seg` (the name or the segment changed): forget the previous result.
    pub fn enter(&mut self, seg: &'a Segment) {
        self.seg = Some(seg);
        self.done = false;
    }

    /// Forgets the result (the name changed) but stays in the segment.
    pub fn invalidate(&mut self) {
        self.done = false;
    }

    fn get(&mut self, s: &[u8], slot: usize) -> Option<bool> {
        let set = self.seg?.set.as_ref()?;
        if !self.done {
            self.hits.clear();
            self.hits.resize(set.len(), false);
            set.matches_read_at(self.hits, s, 0);
            self.done = true;
        }
        self.hits.get(slot).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_captures_are_recognised_only_where_exact() {
        assert_eq!(
            prefix_capture("^a\\.b\\.(.*)$").as_deref(),
            Some(&b"a.b."[..])
        );
        assert_eq!(prefix_capture("^x(.*)").as_deref(), Some(&b"x"[..]));
        assert_eq!(prefix_capture("^(.*)$").as_deref(), Some(&b""[..]));
        for not in ["a(.*)$", "^a\\(.*)", "^a[0-9](.*)$", "^a(.*)b", "^a(.+)$"] {
            assert_eq!(prefix_capture(not), None, "{not}");
        }
    }

    #[test]
    fn literals_are_classified_like_carbon_c_relay() {
        assert!(
            matches!(Pattern::compile("^sys\\.cpu").unwrap(), Pattern::StartsWith(l) if l == b"sys.cpu")
        );
        assert!(
            matches!(Pattern::compile("legacy$").unwrap(), Pattern::EndsWith(l) if l == b"legacy")
        );
        assert!(
            matches!(Pattern::compile("^a_b-c$").unwrap(), Pattern::Equals(l) if l == b"a_b-c")
        );
        assert!(matches!(Pattern::compile("foo").unwrap(), Pattern::Contains(l) if l == b"foo"));
        assert!(matches!(
            Pattern::compile("^sys.cpu").unwrap(),
            Pattern::Regex { .. }
        ));
        assert!(matches!(
            Pattern::compile("a\\$").unwrap(),
            Pattern::Regex { .. }
        ));
        assert_eq!(Pattern::compile("^(a)(b)").unwrap().groups(), 2);
    }

    #[test]
    fn anchored_prefixes_are_only_what_every_match_starts_with() {
        for (expr, want) in [
            ("^dc[0-9]\\.host", "dc"),
            ("^servers\\.(a|b)", "servers."),
            ("^ab*c", "a"),
            ("^ab+c", "ab"),
            ("^a|^b", ""),
            ("^(a|b)", ""),
            ("x^a", ""),
            ("^[|]a|b", ""),
            ("^a[|](b|c)", "a"),
        ] {
            assert_eq!(anchored_prefix(expr), want.as_bytes(), "{expr}");
        }
    }

    #[test]
    fn a_set_answers_for_every_regex_of_its_segment() {
        let seg = Segment::new(&["^a.*z$", "b+c"]).unwrap();
        let mut hits = Vec::new();
        let mut c = SetCache::new(&mut hits);
        c.enter(&seg);
        let p0 = Pattern::Regex {
            re: compile("^a.*z$").unwrap(),
            slot: Some(0),
            prefix: b"a".to_vec(),
        };
        let p1 = Pattern::Regex {
            re: compile("b+c").unwrap(),
            slot: Some(1),
            prefix: Vec::new(),
        };
        assert!(p0.is_match(b"abcz", &mut c));
        assert!(p1.is_match(b"abcz", &mut c));
        c.enter(&seg);
        assert!(!p0.is_match(b"bbc", &mut c) && p1.is_match(b"bbc", &mut c));
    }
}
