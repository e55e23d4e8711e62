//! Which decoder an `/ingest` body goes through, and how much decode budget it reserves.
//!
//! `Content-Encoding: zstd` and `gzip` (also `x-gzip`) are taken as declared. Without the
//! header (or with `identity`) the body is sniffed, because the original Go proxy sends
//! gzip without saying so: the zstd magic selects zstd, anything else goes to the gzip
//! decoder, which answers `400 Batch Malformed` for what is not gzip, exactly as before.
//! Any other coding is answered `415 Unsupported Media Type` with `Accept-Encoding`, as
//! RFC 9110 §15.5.16 asks for an unsupported content coding: the request is well formed
//! but in a format we do not read, and the header tells a client what to send instead
//! (a 400 would say the body is broken, which it may not be).

use super::inflate::{gunzip, InflateError};
use super::zstd::{declared_size, looks_like_zstd, unzstd};

/// What the gateway advertises on `/ping` (and `/ingest` answers) in `Accept-Encoding`.
pub const ACCEPTED: &str = "zstd, gzip";

/// A body's compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// RFC 1952 gzip, one or several members.
    Gzip,
    /// RFC 8878 zstd, one or several frames.
    Zstd,
}

/// A `Content-Encoding` we do not decode (answered 415).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported Content-Encoding {0:?} (accepted: {ACCEPTED})")]
pub struct Unsupported(pub String);

/// How much decode budget to reserve before decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Bytes to reserve (never more than the cap).
    pub bytes: usize,
    /// True when the decoder cannot produce more than `bytes` without failing, so a
    /// `TooLarge` at `bytes` is final; false when the size is only a hint (gzip's
    /// trailer covers the last member only) and a retry at the cap may be needed.
    pub exact: bool,
}

impl Encoding {
    /// The encoding of a body given its `Content-Encoding` header value (if any).
    pub fn of(header: Option<&[u8]>, body: &[u8]) -> Result<Encoding, Unsupported> {
        let value = header
            .map(|h| String::from_utf8_lossy(h).trim().to_ascii_lowercase())
            .unwrap_or_default();
        match value.as_str() {
            "zstd" => Ok(Encoding::Zstd),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "" | "identity" if looks_like_zstd(body) => Ok(Encoding::Zstd),
            "" | "identity" => Ok(Encoding::Gzip),
            _ => Err(Unsupported(value)),
        }
    }

    /// The reservation for `body` under the decompressed cap `max`.
    pub fn claim(self, body: &[u8], max: usize) -> Claim {
        match self {
            // The gzip trailer's size claim, when plausible for this body (deflate cannot
            // exceed about 1032:1); otherwise assume the worst the cap allows.
            Encoding::Gzip => {
                let hint = body
                    .len()
                    .checked_sub(4)
                    .and_then(|at| body.get(at..))
                    .map(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize)
                    .filter(|&n| n <= max && n <= body.len().saturating_mul(1032));
                match hint {
                    Some(n) => Claim {
                        bytes: n,
                        exact: false,
                    },
                    None => Claim {
                        bytes: max,
                        exact: true,
                    },
                }
            }
            // zstd frames state their size and the one-shot decoder holds them to it; a
            // declaration past the cap is refused before any output is allocated, so it
            // needs no room. Without a declaration the streaming decoder may use the cap.
            Encoding::Zstd => match declared_size(body) {
                Some(n) if n <= max => Claim {
                    bytes: n,
                    exact: true,
                },
                Some(_) => Claim {
                    bytes: 0,
                    exact: true,
                },
                None => Claim {
                    bytes: max,
                    exact: true,
                },
            },
        }
    }

    /// Decompresses `body` to at most `max` bytes.
    pub fn decode(self, body: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        match self {
            Encoding::Gzip => gunzip(body, max),
            Encoding::Zstd => unzstd(body, max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_wins_and_a_missing_one_is_sniffed() {
        let z = zstd::bulk::compress(b"a 1 2\n", 3).unwrap();
        assert_eq!(Encoding::of(Some(b"zstd"), b"x"), Ok(Encoding::Zstd));
        assert_eq!(Encoding::of(Some(b" GZIP "), &z), Ok(Encoding::Gzip));
        assert_eq!(Encoding::of(Some(b"x-gzip"), b""), Ok(Encoding::Gzip));
        assert_eq!(Encoding::of(None, &z), Ok(Encoding::Zstd));
        assert_eq!(Encoding::of(None, b"not gzip"), Ok(Encoding::Gzip));
        assert_eq!(Encoding::of(Some(b"identity"), &z), Ok(Encoding::Zstd));
        assert_eq!(Encoding::of(Some(b"br"), &z), Err(Unsupported("br".into())));
        assert!(Encoding::of(Some(b"gzip, zstd"), &z).is_err());
    }

    #[test]
    fn zstd_claims_what_frames_declare_and_nothing_past_the_cap() {
        let z = zstd::bulk::compress(&[b'a'; 5000], 3).unwrap();
        let claim = |max| Encoding::Zstd.claim(&z, max);
        assert_eq!(
            claim(1 << 20),
            Claim {
                bytes: 5000,
                exact: true
            }
        );
        assert_eq!(
            claim(4999),
            Claim {
                bytes: 0,
                exact: true
            }
        );
        assert_eq!(
            Encoding::Zstd.decode(&z, 4999),
            Err(InflateError::TooLarge(4999))
        );
    }
}
