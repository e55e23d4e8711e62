//! Tokens of carbon-c-relay's configuration language.
//!
//! carbon-c-relay's flex scanner is stateful (a word is a keyword in one statement and a
//! cluster name in another); here the lexer only cuts words and the parser decides what a
//! word means where it stands, which gives the same language with a far smaller scanner.
//! What a word may contain is carbon-c-relay's `IDCHR` set plus `\ ` (an escaped space
//! continues a word); `"…"` quotes anything up to the end of the line and drops the
//! backslash of every `\x` inside; `#` starts a comment up to the end of the line.

use std::sync::Arc;

use super::ast::Pos;
use super::RuleError;

/// What a token is; a quoted word is never a keyword.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    /// A bare word, e.g. `cluster`, `^sys\.`, `127.0.0.1:2003`.
    Word(String),
    /// A `"quoted"` word, escapes resolved.
    Quoted(String),
    /// `=` (between a member address and its instance).
    Eq,
    /// `;` (ends every statement).
    Semi,
}

/// One token and where it starts, for error messages that point at it.
#[derive(Clone, Debug)]
pub struct Token {
    pub tok: Tok,
    pub pos: Pos,
}

impl Token {
    /// The text of a word (bare or quoted); `None` for punctuation.
    pub fn text(&self) -> Option<&str> {
        match &self.tok {
            Tok::Word(s) | Tok::Quoted(s) => Some(s),
            Tok::Eq | Tok::Semi => None,
        }
    }

    /// True when this is the bare keyword `kw` (quoting a keyword makes it a name).
    pub fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.tok, Tok::Word(s) if s == kw)
    }
}

/// carbon-c-relay's `IDCHR`: the bytes a bare word is made of.
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"[](){}|\\^?*$&%<>:/,._+-".contains(&b)
}

/// Cuts `src` (the contents of `file`) into tokens.
pub fn tokenize(file: &Arc<str>, src: &str) -> Result<Vec<Token>, RuleError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line, mut line_start) = (0usize, 1u32, 0usize);
    while i < b.len() {
        let pos = Pos {
            file: file.clone(),
            line,
            col: (src[line_start..i].chars().count() + 1) as u32,
        };
        match b[i] {
            b'\n' => {
                i += 1;
                line += 1;
                line_start = i;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b';' => {
                out.push(Token {
                    tok: Tok::Semi,
                    pos,
                });
                i += 1;
            }
            b'=' => {
                out.push(Token { tok: Tok::Eq, pos });
                i += 1;
            }
            b'"' => {
                let (s, end) = quoted(b, i + 1).ok_or_else(|| pos.error("unterminated string"))?;
                if s.is_empty() {
                    return Err(pos.error("empty string"));
                }
                out.push(Token {
                    tok: Tok::Quoted(s),
                    pos,
                });
                i = end;
            }
            c if is_word_byte(c) => {
                let start = i;
                loop {
                    while i < b.len()
                        && is_word_byte(b[i])
                        && !(b[i] == b'\\' && b.get(i + 1) == Some(&b' '))
                    {
                        i += 1;
                    }
                    // `\ ` followed by more word bytes continues the word.
                    if b.get(i) == Some(&b'\\')
                        && b.get(i + 1) == Some(&b' ')
                        && b.get(i + 2).is_some_and(|&c| is_word_byte(c))
                    {
                        i += 2;
                        continue;
                    }
                    if b.get(i) == Some(&b'\\') {
                        // A trailing `\` before a space that ends the word.
                        i += 1;
                    }
                    break;
                }
                out.push(Token {
                    tok: Tok::Word(src[start..i].to_string()),
                    pos,
                });
            }
            _ => {
                let c = src[i..].chars().next().unwrap_or('?');
                return Err(pos.error(&format!("unexpected character {c:?}")));
            }
        }
    }
    Ok(out)
}

/// A quoted string from just after its opening quote: `\x` stands for `x`, and the string
/// must end on the line it starts. Returns the text and the index after the closing quote.
fn quoted(b: &[u8], mut i: usize) -> Option<(String, usize)> {
    let mut s = Vec::new();
    while i < b.len() {
        match b[i] {
            b'"' => return Some((String::from_utf8_lossy(&s).into_owned(), i + 1)),
            b'\n' => return None,
            b'\\' if i + 1 < b.len() && b[i + 1] != b'\n' => {
                s.push(b[i + 1]);
                i += 2;
            }
            c => {
                s.push(c);
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(src: &str) -> Vec<Tok> {
        tokenize(&Arc::from("t.conf"), src)
            .unwrap()
            .into_iter()
            .map(|t| t.tok)
            .collect()
    }

    #[test]
    fn cuts_words_comments_quotes_and_escaped_spaces() {
        assert_eq!(
            words("match ^a\\ b # x;\n \"q\\.x y\" h:1=i;"),
            vec![
                Tok::Word("match".into()),
                Tok::Word("^a\\ b".into()),
                Tok::Quoted("q.x y".into()),
                Tok::Word("h:1".into()),
                Tok::Eq,
                Tok::Word("i".into()),
                Tok::Semi,
            ]
        );
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = tokenize(&Arc::from("t.conf"), "match *\n  send to @x;").unwrap_err();
        assert_eq!((e.line, e.col), (2, 11));
        assert!(e.to_string().starts_with("t.conf:2:11: "), "{e}");
    }
}
