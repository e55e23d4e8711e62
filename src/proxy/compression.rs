//! How the proxy compresses a batch: `-compression auto|zstd|gzip` and `-compression-level`.
//!
//! zstd compresses Graphite batches as well as gzip -6 at several times the speed, and the
//! gateway decodes it several times faster than inflate; but the original Go gateway only
//! reads gzip. So `auto` (the default) sends zstd only to a gateway that said it accepts it
//! (`Accept-Encoding` with `zstd` on its `/ping` or `/ingest` answers, which the original
//! never sends) and gzip otherwise, until a gateway says so.
//!
//! A body says what it is by its magic bytes, so the spool needs no extra field: a batch
//! sealed as zstd and then meant for a gateway that turned out not to take zstd (a gateway
//! downgraded, a spool replayed after `-compression gzip`) is re-encoded to gzip just
//! before it is POSTed.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use clap::ValueEnum;
use flate2::write::GzEncoder;

/// `-compression`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressionFlag {
    /// zstd when the gateway advertises it, gzip otherwise.
    Auto,
    /// Always zstd (the gateway must accept it).
    Zstd,
    /// Always gzip (what the original proxy sent).
    Gzip,
}

/// One body's compression, as the gateway sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// gzip, one member.
    Gzip,
    /// zstd, one frame with its content size (the gateway reserves exactly that).
    Zstd,
}

/// gzip's level when none is given: Go's gzip.Writer default, what the original sent.
pub const GZIP_DEFAULT_LEVEL: i32 = 6;
/// zstd's level when none is given: 0, which selects [`tuned`] parameters (at or below
/// gzip -6's size for Graphite batches at a fraction of its CPU, see docs/BENCHMARKS.md)
/// rather than libzstd's own level 0 (= 3).
pub const ZSTD_DEFAULT_LEVEL: i32 = 0;

impl Codec {
    /// The `Content-Encoding` for this codec.
    pub fn content_encoding(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    /// What `body` is, by its magic bytes (anything not zstd is sent as gzip).
    pub fn of(body: &[u8]) -> Codec {
        if body.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Codec::Zstd
        } else {
            Codec::Gzip
        }
    }
}

/// The proxy's compression choice, shared by the batcher (which seals) and the gateway
/// client (which learns what the gateway accepts, and re-encodes when it must).
#[derive(Debug)]
pub struct Compressor {
    flag: CompressionFlag,
    level: Option<i32>,
    /// The gateway said `Accept-Encoding: ... zstd ...` on its last answer that had a say.
    zstd_accepted: AtomicBool,
}

impl Default for Compressor {
    /// gzip at the original's level: what a proxy without flags did before.
    fn default() -> Self {
        Compressor::new(CompressionFlag::Gzip, None)
    }
}

impl Compressor {
    /// The choice from `-compression` and `-compression-level` (`None`: each codec's default).
    pub fn new(flag: CompressionFlag, level: Option<i32>) -> Compressor {
        Compressor {
            flag,
            level,
            zstd_accepted: AtomicBool::new(false),
        }
    }

    /// Notes a gateway answer's `Accept-Encoding` (`None`: the header was absent, as
    /// with the original gateway). Only the ping and successful answers should count.
    pub fn note_accept_encoding(&self, value: Option<&str>) {
        let zstd = value.is_some_and(|v| {
            v.split(',').any(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("zstd")
            })
        });
        let was = self.zstd_accepted.swap(zstd, Ordering::Relaxed);
        if was != zstd && self.flag == CompressionFlag::Auto {
            let codec = if zstd { "zstd" } else { "gzip" };
            tracing::info!(
                "-compression auto: sending {codec} (the gateway's Accept-Encoding: {})",
                value.unwrap_or("none")
            );
        }
    }

    /// The gateway refused zstd (415): fall back to gzip until it advertises zstd again.
    pub fn note_zstd_refused(&self) {
        self.note_accept_encoding(None);
    }

    /// The codec new batches are sealed with.
    pub fn codec(&self) -> Codec {
        match self.flag {
            CompressionFlag::Zstd => Codec::Zstd,
            CompressionFlag::Gzip => Codec::Gzip,
            CompressionFlag::Auto if self.zstd_accepted.load(Ordering::Relaxed) => Codec::Zstd,
            CompressionFlag::Auto => Codec::Gzip,
        }
    }

    /// Compresses one batch with the current codec.
    pub fn compress(&self, data: &[u8]) -> Vec<u8> {
        match self.codec() {
            Codec::Gzip => gzip(data, self.level.unwrap_or(GZIP_DEFAULT_LEVEL)),
            Codec::Zstd => zstd(data, self.level.unwrap_or(ZSTD_DEFAULT_LEVEL)),
        }
    }

    /// The body to POST for a sealed `body` and its codec: a zstd body goes out as gzip
    /// when the current choice is gzip (the gateway does not take zstd).
    pub fn for_gateway(&self, body: Bytes) -> (Bytes, Codec) {
        let codec = Codec::of(&body);
        if codec == Codec::Zstd && self.codec() == Codec::Gzip {
            let mut raw = Vec::new();
            let decoded = zstd::stream::read::Decoder::with_buffer(&body[..])
                .and_then(|mut d| d.read_to_end(&mut raw));
            if decoded.is_ok() {
                let level = self.level.unwrap_or(GZIP_DEFAULT_LEVEL);
                return (Bytes::from(gzip(&raw, level)), Codec::Gzip);
            }
        }
        (body, codec)
    }
}

/// Whether a record is a sealed (compressed) batch rather than plain lines: gzip's or
/// zstd's magic. The batcher seals what it admits to the memory queue, and the spool and
/// a 413 split need plain lines back ([`unseal`]). Plain records are lines that passed
/// validation, and no valid line starts with a control byte (gzip: 0x1f) or with `(`
/// and a UTF-8 continuation byte (zstd: 0x28 0xb5), so the magic cannot be a line.
pub fn is_sealed(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b]) || data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
}

/// Largest plain batch [`unseal`] restores (batches are `-flush-size` lines; this only
/// bounds a damaged record's claim).
const UNSEAL_MAX: usize = 1 << 30;

/// The lines of a sealed batch.
pub fn unseal(data: &[u8]) -> Result<Vec<u8>, String> {
    use crate::ingest::encoding::Encoding;
    let encoding = match Codec::of(data) {
        Codec::Zstd => Encoding::Zstd,
        Codec::Gzip => Encoding::Gzip,
    };
    encoding
        .decode(data, UNSEAL_MAX)
        .map_err(|e| format!("a sealed batch does not decompress: {e}"))
}

/// `data` as plain lines: itself when it is not sealed, else decompressed on the blocking
/// pool (for the spool, which holds plain lines, and for a split after a 413).
pub async fn plain_lines(data: Bytes) -> Result<Bytes, String> {
    if !is_sealed(&data) {
        return Ok(data);
    }
    match tokio::task::spawn_blocking(move || unseal(&data)).await {
        Ok(lines) => lines.map(Bytes::from),
        Err(e) => Err(e.to_string()),
    }
}

/// gzip as the gateway expects it: one member (level clamped to 0..=9).
pub fn gzip(data: &[u8], level: i32) -> Vec<u8> {
    let level = flate2::Compression::new(level.clamp(0, 9) as u32);
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), level);
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// zstd in one frame that declares its size, so the gateway decodes it in one shot into
/// a buffer of exactly that size. `level` 0 ([`ZSTD_DEFAULT_LEVEL`]) means the parameters
/// tuned for Graphite batches ([`tuned`]); any other level is zstd's own (clamped to its range).
pub fn zstd(data: &[u8], level: i32) -> Vec<u8> {
    use zstd::zstd_safe::{compress_bound, CCtx, CParameter, ResetDirective};
    let mut out = Vec::with_capacity(compress_bound(data.len()));
    let done = CCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = CCtx::try_create();
        }
        let cctx = slot.as_mut()?;
        cctx.reset(ResetDirective::SessionAndParameters).ok()?;
        if level == ZSTD_DEFAULT_LEVEL {
            for p in tuned() {
                cctx.set_parameter(p).ok()?;
            }
        } else {
            let level = level.clamp(
                zstd::zstd_safe::min_c_level(),
                zstd::zstd_safe::max_c_level(),
            );
            cctx.set_parameter(CParameter::CompressionLevel(level))
                .ok()?;
        }
        cctx.set_parameter(CParameter::ContentSizeFlag(true)).ok()?;
        cctx.compress2(&mut out, data).ok()
    });
    match done {
        Some(_) => out,
        None => zstd::bulk::compress(data, 3).unwrap_or_default(),
    }
}

thread_local! {
    /// A compression context per thread: creating one per batch (what `zstd::bulk::compress`
    /// does) allocates and clears its tables every time, a large part of a small batch's cost.
    static CCTX: std::cell::RefCell<Option<zstd::zstd_safe::CCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd parameters for Graphite plaintext batches. Lines share long name prefixes with
/// lines some way back (the same host, the same cluster) while values and timestamps look
/// random; zstd's fast levels take the first match they find and lose to gzip -6 on bytes
/// (about 1.15x), its lazy levels search a little deeper and win. Lazy matching over a 3-step
/// search with matches of at least 6 bytes (shorter ones are digits, cheaper as literals) came
/// out smallest per CPU-second of the settings measured (docs/BENCHMARKS.md, the wire section):
/// about 0.96x gzip -6's bytes at about twice its speed.
pub fn tuned() -> [zstd::zstd_safe::CParameter; 6] {
    use zstd::zstd_safe::{CParameter as P, Strategy};
    [
        P::Strategy(Strategy::ZSTD_lazy),
        P::WindowLog(19),
        P::HashLog(17),
        P::ChainLog(17),
        P::SearchLog(3),
        P::MinMatch(6),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_gateway_and_fixed_choices_do_not() {
        let auto = Compressor::new(CompressionFlag::Auto, None);
        assert_eq!(auto.codec(), Codec::Gzip, "nothing heard yet");
        auto.note_accept_encoding(Some("zstd, gzip"));
        assert_eq!(auto.codec(), Codec::Zstd);
        assert_eq!(Codec::of(&auto.compress(b"a 1 2\n")), Codec::Zstd);
        auto.note_accept_encoding(Some("gzip;q=1.0, br"));
        assert_eq!(auto.codec(), Codec::Gzip);
        auto.note_accept_encoding(Some("gzip, ZSTD;q=0.9"));
        assert_eq!(auto.codec(), Codec::Zstd);
        auto.note_zstd_refused();
        assert_eq!(auto.codec(), Codec::Gzip);
        let gz = Compressor::new(CompressionFlag::Gzip, None);
        gz.note_accept_encoding(Some("zstd"));
        assert_eq!(gz.codec(), Codec::Gzip);
        let z = Compressor::new(CompressionFlag::Zstd, Some(5));
        assert_eq!(z.codec(), Codec::Zstd);
    }

    #[test]
    fn zstd_declares_its_size_and_round_trips_tuned_or_at_a_level() {
        let data = b"servers.dc1.host0001.cpu.user 12.5 1700000000\n".repeat(500);
        for level in [ZSTD_DEFAULT_LEVEL, 1, 19, 99] {
            let z = zstd(&data, level);
            assert_eq!(crate::ingest::zstd::declared_size(&z), Some(data.len()));
            assert_eq!(crate::ingest::zstd::unzstd(&z, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn a_zstd_body_goes_out_as_gzip_to_a_gzip_only_gateway() {
        let data = b"a.b 1 2\nc.d 3 4\n".repeat(100);
        let sealed = Bytes::from(zstd(&data, 3));
        let auto = Compressor::new(CompressionFlag::Auto, None);
        let (body, codec) = auto.for_gateway(sealed.clone());
        assert_eq!(codec, Codec::Gzip);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        auto.note_accept_encoding(Some("zstd, gzip"));
        assert_eq!(auto.for_gateway(sealed.clone()), (sealed, Codec::Zstd));
        let gz = Bytes::from(gzip(&data, 6));
        assert_eq!(auto.for_gateway(gz.clone()), (gz, Codec::Gzip));
    }
}
