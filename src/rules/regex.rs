//! POSIX extended regular expressions (what carbon-c-relay gets from `regcomp(…,
//! REG_EXTENDED)` in glibc) on top of the `regex` crate.
//!
//! The two dialects agree on most of what configurations use (`^`, `$`, `.`, `[…]`,
//! `(…)`, `|`, `*`, `+`, `?`, `{m,n}`, `[[:alpha:]]`), so patterns are translated, not
//! reinterpreted. Where they differ:
//!
//! * **Backslash inside brackets is literal in POSIX**: `[\.]` matches a backslash or a
//!   dot. Translated so (every literal in a bracket is escaped for the regex crate, which
//!   would otherwise read `\.`, `&&`, `--`, `~~` and a nested `[` as its own syntax).
//! * **Escapes outside brackets**: glibc reads `\X` as the literal X except for `\w \W \s
//!   \S \b \B \< \> \` \'` and back-references. Those map to their regex-crate equivalents
//!   (`\`` → `\A`, `\'` → `\z`); other escaped letters and digits-free escapes become the
//!   literal character (`\d` is a `d`, as in glibc — not a digit).
//! * **Refused** (an error at load, never a silent change of meaning): back-references
//!   `\1`…`\9` (the regex crate has none), lazy quantifiers `*? +? ?? }?` (greedy
//!   repetition of a repetition in POSIX, laziness in the regex crate), Perl groups `(?…)`
//!   (a syntax error for regcomp), collating elements `[[.x.]]` and equivalence classes
//!   `[[=x=]]`.
//! * **Leftmost-longest**: POSIX returns the longest of the leftmost matches, the regex
//!   crate the first alternative that matches. Which lines match is identical; the span
//!   (and so what a rewrite replaces, or a group captures) can differ only when an
//!   alternation has one branch that is a prefix of another, e.g. `(a|ab)`. Documented,
//!   not detected.
//! * Matching is on bytes, `.` matches any byte (the C locale carbon-c-relay runs in).

use regex::bytes::{Regex, RegexBuilder};

/// Translates a POSIX ERE into the regex crate's syntax, or says why it cannot.
pub fn translate(posix: &str) -> Result<String, String> {
    let b = posix.as_bytes();
    let mut out = String::with_capacity(posix.len() + 8);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\\' => {
                let Some(&n) = b.get(i + 1) else {
                    return Err("trailing backslash".into());
                };
                match n {
                    b'1'..=b'9' => {
                        return Err(format!("back-reference \\{} is not supported", n as char));
                    }
                    b'w' | b'W' | b's' | b'S' | b'b' | b'B' | b'<' | b'>' => {
                        out.push('\\');
                        out.push(n as char);
                    }
                    b'`' => out.push_str("\\A"),
                    b'\'' => out.push_str("\\z"),
                    _ => push_literal(&mut out, posix, i + 1),
                }
                i += 1 + utf8_len(n);
            }
            b'[' => i = bracket(posix, i, &mut out)?,
            b'(' if b.get(i + 1) == Some(&b'?') => {
                return Err("'(?' groups are Perl syntax, not POSIX: remove the '?'".into());
            }
            b'*' | b'+' | b'?' | b'}' if b.get(i + 1) == Some(&b'?') => {
                return Err(format!(
                    "'{}?' is a lazy quantifier in Perl syntax and means something else in POSIX",
                    c as char
                ));
            }
            _ => {
                let len = utf8_len(c);
                out.push_str(&posix[i..i + len]);
                i += len;
            }
        }
    }
    Ok(out)
}

/// Compiles a POSIX ERE for matching bytes: translated, `.` matching any byte.
pub fn compile(posix: &str) -> Result<Regex, String> {
    let t = translate(posix)?;
    RegexBuilder::new(&t)
        .unicode(false)
        .dot_matches_new_line(true)
        .build()
        .map_err(|e| {
            format!(
                "invalid regular expression '{posix}': {}",
                first_line(&e.to_string())
            )
        })
}

fn first_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or(s)
        .to_string()
}

/// Byte length of the UTF-8 sequence starting with `b`.
fn utf8_len(b: u8) -> usize {
    match b {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// Appends the character starting at byte `i` of `s` as a literal.
fn push_literal(out: &mut String, s: &str, i: usize) {
    let len = utf8_len(s.as_bytes()[i]);
    out.push_str(&regex::escape(&s[i..i + len]));
}

/// A bracket expression starting at `start` (`[`): returns the index after its `]`.
fn bracket(s: &str, start: usize, out: &mut String) -> Result<usize, String> {
    let b = s.as_bytes();
    let mut i = start + 1;
    out.push('[');
    if b.get(i) == Some(&b'^') {
        out.push('^');
        i += 1;
    }
    let mut first = true;
    loop {
        let Some(&c) = b.get(i) else {
            return Err("unterminated bracket expression '['".into());
        };
        if c == b']' && !first {
            out.push(']');
            return Ok(i + 1);
        }
        first = false;
        if c == b'[' {
            match b.get(i + 1) {
                Some(b':') => {
                    let end = s[i + 2..]
                        .find(":]")
                        .ok_or("unterminated character class '[:'")?;
                    out.push_str(&s[i..i + 2 + end + 2]);
                    i += 2 + end + 2;
                    continue;
                }
                Some(b'.') | Some(b'=') => {
                    return Err(
                        "collating elements '[.' and equivalence classes '[=' are not supported"
                            .into(),
                    );
                }
                _ => {}
            }
        }
        // A range `x-y` keeps its dash; a dash first or last is a literal.
        if c == b'-'
            && i > start + 1
            && b.get(i + 1).is_some_and(|&n| n != b']')
            && !out.ends_with('[')
            && !out.ends_with('^')
        {
            out.push('-');
            i += 1;
            continue;
        }
        push_literal(out, s, i);
        i += utf8_len(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backslash_in_brackets_is_literal_like_posix() {
        let re = compile("[\\.]y").unwrap();
        assert!(re.is_match(b"a\\y"));
        assert!(re.is_match(b"a.y"));
        assert!(!re.is_match(b"aby"));
        let re = compile("^[^.]+\\.[a-c-]$").unwrap();
        assert!(re.is_match(b"x.-") && re.is_match(b"x.b") && !re.is_match(b"x.d"));
        assert!(compile("[]a]").unwrap().is_match(b"]"));
        assert!(compile("[[:digit:]]+").unwrap().is_match(b"42"));
    }

    #[test]
    fn escapes_follow_glibc() {
        assert!(compile("\\d").unwrap().is_match(b"d"));
        assert!(!compile("^\\d$").unwrap().is_match(b"5"));
        assert!(compile("a\\ b").unwrap().is_match(b"a b"));
        assert!(compile("\\<foo\\>").unwrap().is_match(b"x foo y"));
    }

    #[test]
    fn refuses_what_would_change_meaning() {
        for p in ["(a)\\1", "a*?", "(?i)a", "(?<!x)a", "[[.a.]]"] {
            assert!(compile(p).is_err(), "{p} must be refused");
        }
    }
}
