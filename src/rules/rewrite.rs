//! `rewrite … into REPLACEMENT`: the replacement language as carbon-c-relay defines it.
//!
//! The matched part of the name is replaced and the text before and after it is kept
//! (`-(average|sum)$ into .\1` turns `a.b-sum` into `a.b.sum`). In the replacement:
//! `\N` (one or more digits) inserts group N; `\_N` lower-cases it, `\^N`
//! upper-cases it, and a `.` after the backslash (`\.N`, `\_.N`, `\^.N`) also turns its
//! dots into underscores. Any other escaped character stands for itself (so `\g{1}`, which
//! carbon-c-relay only learnt after 3.7, is the text `g{1}` as in 3.7.3). carbon-c-relay
//! quirks kept on purpose, because configurations rely on the output they produce:
//! `\\` is not a literal backslash (it only continues the escape, so `\_1\2` lower-cases
//! both groups), and a pattern without capture groups copies the replacement verbatim,
//! backslashes included.

/// How an inserted group is transformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Keep,
    Lower,
    Upper,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(Vec<u8>),
    Group { n: usize, case: Case, dots: bool },
}

/// A compiled replacement.
#[derive(Clone, Debug)]
pub struct Replacement {
    pieces: Vec<Piece>,
}

impl Replacement {
    /// Compiles `text`; `groups` is false when the pattern has no capture group (then the
    /// text is copied verbatim, as carbon-c-relay does).
    pub fn new(text: &str, groups: bool) -> Replacement {
        if !groups {
            return Replacement {
                pieces: vec![Piece::Lit(text.as_bytes().to_vec())],
            };
        }
        Replacement {
            pieces: parse(text.as_bytes()),
        }
    }

    /// Highest group number referenced (0 when none), to refuse references beyond the
    /// pattern's groups at load time.
    pub fn max_group(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Group { n, .. } => *n,
                Piece::Lit(_) => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// Appends to `out` the new name: `name[..whole.start]`, the expanded replacement,
    /// `name[whole.end..]`. `group(n)` yields the span of group n when it took part.
    pub fn apply(
        &self,
        name: &[u8],
        whole: (usize, usize),
        group: impl Fn(usize) -> Option<(usize, usize)>,
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(&name[..whole.0]);
        for p in &self.pieces {
            match p {
                Piece::Lit(l) => out.extend_from_slice(l),
                Piece::Group { n, case, dots } => {
                    let Some((s, e)) = group(*n) else { continue };
                    if *case == Case::Keep && !*dots {
                        // The common `\1`: one copy, not a byte-by-byte map.
                        out.extend_from_slice(&name[s..e]);
                    } else {
                        out.extend(name[s..e].iter().map(|&b| {
                            let b = if *dots && b == b'.' { b'_' } else { b };
                            match case {
                                Case::Keep => b,
                                Case::Lower => b.to_ascii_lowercase(),
                                Case::Upper => b.to_ascii_uppercase(),
                            }
                        }));
                    }
                }
            }
        }
        out.extend_from_slice(&name[whole.1..]);
    }
}

/// The escape state machine: after `\`, `_`/`^` pick a case (only first), `.` asks for
/// dots-to-underscores, digits accumulate a group number; the first other byte ends the
/// escape, inserting the group if a number was read, and is itself copied unless it is
/// `\` (which keeps the escape going).
fn parse(t: &[u8]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut lit = Vec::new();
    let (mut escape, mut case, mut dots, mut num, mut have_num) =
        (false, Case::Keep, false, 0usize, false);
    // A NUL sentinel ends a trailing escape the way carbon-c-relay's C string does.
    for &c in t.iter().chain(std::iter::once(&0u8)) {
        if !escape {
            if c == b'\\' {
                escape = true;
                (case, dots, num, have_num) = (Case::Keep, false, 0, false);
            } else if c != 0 {
                lit.push(c);
            }
            continue;
        }
        match c {
            b'_' if !have_num && case == Case::Keep && !dots => case = Case::Lower,
            b'^' if !have_num && case == Case::Keep && !dots => case = Case::Upper,
            b'.' if !have_num => dots = true,
            b'0'..=b'9' => {
                num = num * 10 + usize::from(c - b'0');
                have_num = true;
            }
            _ => {
                if num > 0 {
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Group { n: num, case, dots });
                }
                num = 0;
                have_num = false;
                if c != b'\\' {
                    escape = false;
                    if c != 0 {
                        lit.push(c);
                    }
                }
            }
        }
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(repl: &str, name: &str, whole: (usize, usize), groups: &[(usize, usize)]) -> String {
        let r = Replacement::new(repl, true);
        let mut out = Vec::new();
        r.apply(
            name.as_bytes(),
            whole,
            |n| groups.get(n.wrapping_sub(1)).copied(),
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn backrefs_case_and_dots() {
        // name "Ab.Cd", group 1 = "Ab.Cd"
        let g = [(0, 5)];
        assert_eq!(run("x.\\1", "Ab.Cd", (0, 5), &g), "x.Ab.Cd");
        assert_eq!(run("\\_1_", "Ab.Cd", (0, 5), &g), "ab.cd_");
        assert_eq!(run("\\^1^", "Ab.Cd", (0, 5), &g), "AB.CD^");
        assert_eq!(run("\\.1", "Ab.Cd", (0, 5), &g), "Ab_Cd");
        assert_eq!(run("\\_.1", "Ab.Cd", (0, 5), &g), "ab_cd");
        assert_eq!(
            run("\\g{1}100", "Ab.Cd", (0, 5), &g),
            "g{1}100",
            "3.7.3 has no \\g{{n}}"
        );
        assert_eq!(
            run("\\_1\\1", "Ab", (0, 2), &[(0, 2)]),
            "abab",
            "case carries over \\\\ like c-relay"
        );
    }

    #[test]
    fn keeps_text_around_the_match() {
        // "a.b-sum": match "-sum" at 3..7, group 1 "sum" at 4..7
        assert_eq!(run(".\\1", "a.b-sum", (3, 7), &[(4, 7)]), "a.b.sum");
        let r = Replacement::new("b\\1", false);
        let mut out = Vec::new();
        r.apply(b"xay", (1, 2), |_| None, &mut out);
        assert_eq!(out, b"xb\\1y");
    }
}
