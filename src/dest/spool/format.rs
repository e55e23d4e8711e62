//! The spool's on-disk format: segment names, the segment magic, and the record
//! (`len: u32 LE | points: u32 LE | crc32: u32 LE | len bytes of whole lines`).
//!
//! Every record carries its length and a CRC-32 (IEEE, as gzip) over its `points` field and
//! its data, so a reader can tell a good record from damage at any offset: recovery scans
//! forward for the next offset where a header and its CRC check out.

use std::path::{Path, PathBuf};

/// First bytes of every segment file.
pub(super) const SEGMENT_MAGIC: &[u8; 8] = b"PMSPOOL1";
/// Length of [`SEGMENT_MAGIC`], where the first record of a segment starts.
pub(super) const MAGIC_LEN: u64 = SEGMENT_MAGIC.len() as u64;
/// Record header: length, points, CRC-32.
pub const RECORD_HEADER: u64 = 12;
/// A record longer than this is corruption, not data (`-max-batch-bytes` is far below).
pub(super) const MAX_RECORD: u64 = 1 << 31;

/// Where a record ends: the segment and the offset just past it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpoolPos {
    /// Segment sequence number.
    pub seq: u64,
    /// Byte offset in the segment.
    pub offset: u64,
}

/// The spool subdirectory name of a destination: `127.0.0.1:2003:a` → `127.0.0.1_2003_a`.
pub fn dir_name(dest: &str) -> String {
    dest.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `<dir>/seg-<seq, 16 digits>.spool`.
pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:016}.spool"))
}

/// The sequence number of a segment file name, if it is one.
pub(super) fn segment_seq(file_name: &str) -> Option<u64> {
    file_name
        .strip_prefix("seg-")
        .and_then(|s| s.strip_suffix(".spool"))
        .and_then(|s| s.parse::<u64>().ok())
}

/// The on-disk size of a record holding `data_len` bytes.
pub fn record_size(data_len: usize) -> u64 {
    RECORD_HEADER + data_len as u64
}

pub(super) fn crc(points: u32, data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(&points.to_le_bytes());
    c.update(data);
    c.sum()
}

/// A record header as read from disk (not yet checked against its data).
#[derive(Clone, Copy, Debug)]
pub(super) struct Header {
    /// Data bytes after the header.
    pub len: u64,
    /// Lines in the data.
    pub points: u32,
    /// CRC-32 of `points` and the data.
    pub sum: u32,
}

impl Header {
    /// The header of a record holding `data` (`points` lines).
    pub fn encode(points: u32, data: &[u8]) -> [u8; RECORD_HEADER as usize] {
        let mut hdr = [0u8; RECORD_HEADER as usize];
        hdr[0..4].copy_from_slice(&(data.len() as u32).to_le_bytes());
        hdr[4..8].copy_from_slice(&points.to_le_bytes());
        hdr[8..12].copy_from_slice(&crc(points, data).to_le_bytes());
        hdr
    }

    /// Reads a header from its 12 bytes.
    pub fn decode(b: &[u8]) -> Header {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            len: word(0) as u64,
            points: word(4),
            sum: word(8),
        }
    }

    /// True when a record with this header at `offset` fits before `limit` and is not
    /// obviously damage (empty, or longer than any record can be).
    pub fn plausible(&self, offset: u64, limit: u64) -> bool {
        self.len > 0 && self.len <= MAX_RECORD && offset + RECORD_HEADER + self.len <= limit
    }

    /// True when `data` is this record's data: CRC matches, whole lines.
    pub fn matches(&self, data: &[u8]) -> bool {
        data.last() == Some(&b'\n') && crc(self.points, data) == self.sum
    }
}
