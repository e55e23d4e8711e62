//! Size-capped gzip decompression of `/ingest` bodies.
//!
//! Fast path: one-shot libdeflate into a buffer sized from the gzip trailer's
//! ISIZE, about three times zlib's speed. Anything the fast path cannot settle
//! (several gzip members, a trailer that lies, corrupt data) goes through a
//! streaming decoder that stops at the cap, so memory stays bounded by
//! `max` whatever the input claims — a gzip bomb costs at most `max` bytes.

use std::cell::RefCell;
use std::io::Read;
use std::ptr::NonNull;

use libdeflate_sys as ld;

/// Why a body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InflateError {
    /// Not a valid gzip stream (answered `400 Batch Malformed`).
    #[error("body is not valid gzip: {0}")]
    Malformed(String),
    /// Decompresses to more than the cap (answered `413`).
    #[error("body decompresses to more than {0} bytes")]
    TooLarge(usize),
}

/// A libdeflate decompressor, kept per thread because allocating one per batch
/// would cost more than a small batch's inflate.
struct Decompressor(NonNull<ld::libdeflate_decompressor>);

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the pointer came from libdeflate_alloc_decompressor and is freed once.
        unsafe { ld::libdeflate_free_decompressor(self.0.as_ptr()) }
    }
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

/// Outcome of the one-shot attempt.
enum Fast {
    Done(Vec<u8>),
    /// Let the streaming decoder decide (it reports the precise error).
    Fallback,
}

fn fast_path(body: &[u8], size: usize) -> Fast {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            // SAFETY: plain allocation call; null means out of memory.
            let p = unsafe { ld::libdeflate_alloc_decompressor() };
            *slot = NonNull::new(p).map(Decompressor);
        }
        let Some(d) = slot.as_ref() else {
            return Fast::Fallback;
        };
        let mut out: Vec<u8> = Vec::with_capacity(size);
        let mut used_in = 0usize;
        let mut used_out = 0usize;
        // SAFETY: `body` is valid for reads of body.len() bytes and `out` for writes
        // of `size` bytes (its capacity); libdeflate writes at most `size` bytes and
        // reports how many in `used_out`, which is all we expose via set_len.
        let ret = unsafe {
            ld::libdeflate_gzip_decompress_ex(
                d.0.as_ptr(),
                body.as_ptr().cast(),
                body.len(),
                out.as_mut_ptr().cast(),
                size,
                &mut used_in,
                &mut used_out,
            )
        };
        if ret == ld::libdeflate_result_LIBDEFLATE_SUCCESS
            && used_in == body.len()
            && used_out <= size
        {
            // SAFETY: libdeflate initialised the first `used_out` bytes.
            unsafe { out.set_len(used_out) };
            Fast::Done(out)
        } else {
            Fast::Fallback
        }
    })
}

/// Decompresses a gzip body (one or several members) of at most `max` bytes.
pub fn gunzip(body: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    if body.len() < 18 || body[0] != 0x1f || body[1] != 0x8b {
        return Err(InflateError::Malformed("missing gzip header".into()));
    }
    // ISIZE: the last member's uncompressed size mod 2^32. Only a hint: a
    // truncated body ends in arbitrary bytes, so an implausible claim is left to
    // the streaming decoder (which tells truncation from size) instead of
    // answering 413 on its word.
    let tail: [u8; 4] = body[body.len() - 4..].try_into().expect("4 bytes");
    let isize_hint = u32::from_le_bytes(tail) as usize;
    if isize_hint <= max {
        if let Fast::Done(out) = fast_path(body, isize_hint) {
            return Ok(out);
        }
    }
    streaming(body, max, isize_hint)
}

fn streaming(body: &[u8], max: usize, hint: usize) -> Result<Vec<u8>, InflateError> {
    // Reserve from the hint, but never more than deflate's plausible ratio for
    // this body: a lying trailer must not reserve the cap for a tiny body.
    let reserve = hint.min(max).min(body.len().saturating_mul(32));
    read_capped(flate2::read::MultiGzDecoder::new(body), max, reserve)
}

/// Reads a decoder to its end, refusing output past `max` bytes: memory stays bounded
/// by the cap whatever the stream claims. `reserve` is the first allocation.
pub(crate) fn read_capped(
    decoder: impl Read,
    max: usize,
    reserve: usize,
) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::with_capacity(reserve);
    // Read one byte past the cap to tell "exactly max" from "more than max".
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| InflateError::Malformed(e.to_string()))?;
    if out.len() > max {
        return Err(InflateError::TooLarge(max));
    }
    Ok(out)
}

/// For the gzip and zstd decoders' tests: each of `bodies` (garbage, a body cut short)
/// is refused as malformed, never decoded short nor taken for too large.
#[cfg(test)]
pub(crate) fn assert_malformed(
    decode: impl Fn(&[u8], usize) -> Result<Vec<u8>, InflateError>,
    bodies: &[&[u8]],
) {
    for (i, body) in bodies.iter().enumerate() {
        let got = decode(body, 1 << 20);
        assert!(
            matches!(got, Err(InflateError::Malformed(_))),
            "body {i} ({} bytes): {got:?}",
            body.len()
        );
    }
}

/// For the gzip and zstd decoders' tests: `body`, which decodes to `len` bytes, is
/// refused as too large under a cap one byte short and decodes whole at exactly `len`.
#[cfg(test)]
pub(crate) fn assert_capped_at(
    decode: impl Fn(&[u8], usize) -> Result<Vec<u8>, InflateError>,
    body: &[u8],
    len: usize,
) {
    assert_eq!(decode(body, len - 1), Err(InflateError::TooLarge(len - 1)));
    assert_eq!(decode(body, len).map(|v| v.len()), Ok(len));
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn single_member() {
        assert_eq!(gunzip(&gz(b"a 1 2\n"), 1 << 20).unwrap(), b"a 1 2\n");
    }

    #[test]
    fn multi_member_streams_are_whole() {
        let mut body = gz(b"first 1 2\n");
        body.extend(gz(b"second 3 4\n"));
        assert_eq!(gunzip(&body, 1 << 20).unwrap(), b"first 1 2\nsecond 3 4\n");
        // Members of equal size and content must not be mistaken for one.
        let mut same = gz(b"x 1 2\n");
        same.extend(gz(b"x 1 2\n"));
        assert_eq!(gunzip(&same, 1 << 20).unwrap(), b"x 1 2\nx 1 2\n");
    }

    #[test]
    fn refuses_garbage_and_truncation() {
        let body = gz(&vec![b'a'; 10_000]);
        assert_malformed(
            gunzip,
            &[b"plain text, not gzip at all", &body[..body.len() - 5], &[]],
        );
    }

    #[test]
    fn caps_output_even_when_the_trailer_lies() {
        let data = vec![b'z'; 100_000];
        assert_capped_at(gunzip, &gz(&data), data.len());
        let mut lying = gz(&data);
        let n = lying.len();
        lying[n - 4..].copy_from_slice(&10u32.to_le_bytes());
        assert!(gunzip(&lying, 50_000).is_err());
    }
}
