//! Size-capped zstd decompression of `/ingest` bodies (`Content-Encoding: zstd`).
//!
//! zstd decodes several times faster than inflate, so a proxy that can send it saves the
//! gateway most of its decode CPU. The limits are the gzip path's: a body that is not
//! zstd is `Malformed` (400), one that decodes past the cap is `TooLarge` (413), and
//! memory stays bounded by the cap whatever the frame headers claim — a zstd bomb costs
//! at most `max` bytes.
//!
//! Fast path: when every frame declares its content size (zstd's encoder does, for a
//! one-shot compress) and the sum fits the cap, one decode on the thread's own context
//! into a buffer of exactly that size. Otherwise a streaming decoder that stops one byte past the cap.

use std::cell::RefCell;

use zstd::zstd_safe::DCtx;

use super::inflate::{read_capped, InflateError};

/// The four bytes every zstd frame starts with (RFC 8878, little-endian 0xFD2FB528).
pub const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The largest window a streamed frame may use: 16 MiB, what zstd's own levels up to 19
/// use at most (only `--ultra` levels ask for more).
const WINDOW_LOG_MAX: u32 = 24;

/// True when `body` starts like a zstd frame.
pub fn looks_like_zstd(body: &[u8]) -> bool {
    body.starts_with(&MAGIC)
}

/// What the frames of `body` say they decode to, when every frame says so; `None`
/// when a frame omits it or the body does not parse as frames. Only a hint for sizing
/// (the decoder enforces the cap itself).
pub fn declared_size(body: &[u8]) -> Option<usize> {
    let mut rest = body;
    let mut total: usize = 0;
    while !rest.is_empty() {
        let frame_len = zstd::zstd_safe::find_frame_compressed_size(rest).ok()?;
        if frame_len == 0 || frame_len > rest.len() {
            return None;
        }
        let size = zstd::zstd_safe::get_frame_content_size(&rest[..frame_len]).ok()??;
        total = total.checked_add(usize::try_from(size).ok()?)?;
        rest = &rest[frame_len..];
    }
    Some(total)
}

/// Decompresses a zstd body (one or several frames) of at most `max` bytes.
pub fn unzstd(body: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    if !looks_like_zstd(body) {
        return Err(InflateError::Malformed("missing zstd frame header".into()));
    }
    match declared_size(body) {
        Some(size) if size > max => Err(InflateError::TooLarge(max)),
        Some(size) => one_shot(body, size),
        None => streaming(body, max),
    }
}

thread_local! {
    /// A decompression context per thread: `ZSTD_decompress` would allocate and
    /// initialise one (about 100 KiB of tables) for every batch, which costs as much as
    /// decoding a small batch. The gzip path keeps its libdeflate decompressor the same way.
    static DCTX: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

/// Decodes the frames of `body` straight into a buffer of exactly `size` bytes, the
/// size their headers declare; frames holding more or less than declared are refused.
fn one_shot(body: &[u8], size: usize) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::with_capacity(size);
    let decoded = DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = DCtx::try_create();
        }
        match slot.as_mut() {
            Some(dctx) => dctx.decompress(&mut out, body),
            // Out of memory for a context: the library's own one-shot call.
            None => zstd::zstd_safe::decompress(&mut out, body),
        }
    });
    match decoded {
        Ok(n) if n == size => Ok(out),
        Ok(n) => Err(InflateError::Malformed(format!(
            "zstd frames declare {size} bytes but hold {n}"
        ))),
        Err(code) => Err(InflateError::Malformed(
            zstd::zstd_safe::get_error_name(code).to_string(),
        )),
    }
}

fn streaming(body: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(body)
        .map_err(|e| InflateError::Malformed(e.to_string()))?;
    // A frame may ask for a window of up to 2 GiB (zstd's decoder accepts 128 MiB by
    // default); the proxy's batches need far less, so a bigger ask is refused (400)
    // instead of allocated: memory stays bounded by the cap plus this window.
    decoder
        .window_log_max(WINDOW_LOG_MAX)
        .map_err(|e| InflateError::Malformed(e.to_string()))?;
    // Reserve for a plausible ratio only: an undeclared size must not reserve the cap
    // for a tiny body.
    read_capped(decoder, max, max.min(body.len().saturating_mul(16)))
}

#[cfg(test)]
mod tests {
    use super::super::inflate::{assert_capped_at, assert_malformed};
    use super::*;
    use std::io::Write;

    fn zst(data: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(data, 3).unwrap()
    }

    /// A frame without a declared content size, as a streaming encoder writes it.
    fn zst_streamed(data: &[u8]) -> Vec<u8> {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.include_contentsize(false).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn one_frame_and_several() {
        assert_eq!(unzstd(&zst(b"a 1 2\n"), 1 << 20).unwrap(), b"a 1 2\n");
        let mut body = zst(b"first 1 2\n");
        body.extend(zst_streamed(b"second 3 4\n"));
        body.extend(zst(b"third 5 6\n"));
        assert_eq!(declared_size(&body), None);
        assert_eq!(
            unzstd(&body, 1 << 20).unwrap(),
            b"first 1 2\nsecond 3 4\nthird 5 6\n"
        );
    }

    #[test]
    fn declared_sizes_add_up() {
        let mut body = zst(&[b'x'; 1000]);
        body.extend(zst(&[b'y'; 500]));
        assert_eq!(declared_size(&body), Some(1500));
        assert_eq!(unzstd(&body, 1500).unwrap().len(), 1500);
    }

    #[test]
    fn caps_output_declared_or_not() {
        let data = vec![b'z'; 100_000];
        assert_capped_at(unzstd, &zst(&data), data.len());
        assert_capped_at(unzstd, &zst_streamed(&data), data.len());
    }

    #[test]
    fn refuses_garbage_and_truncation() {
        let body = zst(&vec![b'a'; 10_000]);
        let streamed = zst_streamed(&vec![b'a'; 10_000]);
        assert_malformed(
            unzstd,
            &[
                b"plain text",
                &body[..body.len() - 3],
                &streamed[..streamed.len() - 3],
            ],
        );
    }

    #[test]
    fn a_lying_header_cannot_overflow_the_buffer() {
        // Declares 10 bytes, holds 100 000: the one-shot decode must fail, not write past.
        let mut body = zst(&vec![b'q'; 100_000]);
        let honest = declared_size(&body).unwrap();
        assert_eq!(honest, 100_000);
        // Frame header descriptor of a small single-segment frame: find the 4-byte
        // content size that follows and shrink it.
        let fhd = body[4];
        assert_eq!(fhd >> 6, 2, "expected a 4-byte content size field");
        assert_eq!(fhd & 0x03, 0, "expected no dictionary id");
        let at = 5 + usize::from(fhd & 0x20 == 0);
        body[at..at + 4].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(declared_size(&body), Some(10));
        assert!(matches!(
            unzstd(&body, 1 << 20),
            Err(InflateError::Malformed(_))
        ));
    }
}
