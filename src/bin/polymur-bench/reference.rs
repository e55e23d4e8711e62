//! Reference figures measured in the same run as the end-to-end rounds: how fast
//! one core merely inflates the very batch the clients send (zlib-rs, libdeflate,
//! Python's zlib), and how fast the in-process hot path (inflate, validate,
//! route) handles it.
//!
//! The gateway's goal is stated against these: delivered points per gateway
//! CPU-second at least equal to zlib's inflate alone. Measuring them next to the
//! end-to-end figure, under the same machine load, makes the ratio meaningful on
//! a noisy shared host where absolute numbers drift by tens of percent.

use std::io::Read;
use std::process::Command;

use serde::Serialize;

use super::procstat::thread_cpu_secs;
use polymur::batch::Batch;
use polymur::ingest::inflate::gunzip;
use polymur::route::{broadcast::Broadcast, Router};

/// Lines per CPU-second of each reference, for one batch.
#[derive(Clone, Debug, Serialize)]
pub struct Reference {
    /// Lines in the batch.
    pub batch_lines: u64,
    /// Compressed body size.
    pub body_bytes: usize,
    /// Decompressed size.
    pub plain_bytes: usize,
    /// flate2 with the zlib-rs backend (the crate's zlib), streaming decoder.
    pub zlib_rs_lines_per_cpu_sec: f64,
    /// libdeflate one-shot (what the gateway's fast path uses).
    pub libdeflate_lines_per_cpu_sec: f64,
    /// `/usr/bin/python3` `zlib.decompress(body, 31)`, if Python is installed.
    pub python_zlib_lines_per_cpu_sec: Option<f64>,
    /// In process, no sockets: inflate + validate + broadcast route to one destination.
    pub hot_path_lines_per_cpu_sec: f64,
    /// zstd one-shot decode of the same batch compressed at `zstd_level`.
    pub zstd_decode_lines_per_cpu_sec: f64,
    /// What the proxy pays to compress: gzip -6 (flate2 with zlib-rs, the proxy's codec).
    pub gzip6_lines_per_cpu_sec: f64,
    /// `/usr/bin/python3` `zlib.compressobj(6, wbits=31)` on the plain batch.
    pub python_zlib_compress_lines_per_cpu_sec: Option<f64>,
    /// zstd at `zstd_level` (the proxy's codec).
    pub zstd_lines_per_cpu_sec: f64,
    /// The zstd level measured.
    pub zstd_level: i32,
    /// gzip -6 body bytes per point.
    pub gzip6_bytes_per_point: f64,
    /// zstd body bytes per point.
    pub zstd_bytes_per_point: f64,
}

/// Runs `f` on this thread for about `secs` CPU-seconds; returns calls per CPU-second.
fn per_cpu_sec(secs: f64, mut f: impl FnMut()) -> f64 {
    // Warm caches and the per-thread decompressor first.
    f();
    let t0 = thread_cpu_secs();
    let mut n = 0u64;
    loop {
        f();
        n += 1;
        let used = thread_cpu_secs() - t0;
        if used >= secs {
            return n as f64 / used;
        }
    }
}

/// Python's `zlib.decompress`, timed by Python itself with `time.process_time`.
fn python_zlib(body: &[u8], secs: f64) -> Option<f64> {
    python_timed(body, secs, "zlib.decompress(d, 31)")
}

/// Python's zlib compressing `plain` to gzip at level 6 (C zlib, the bar for the proxy).
fn python_zlib_compress(plain: &[u8], secs: f64) -> Option<f64> {
    python_timed(
        plain,
        secs,
        "(lambda c: c.compress(d) + c.flush())(zlib.compressobj(6, zlib.DEFLATED, 31))",
    )
}

/// Calls per CPU-second of the Python expression `call` on the bytes `d` read from a file.
fn python_timed(body: &[u8], secs: f64, call: &str) -> Option<f64> {
    let python = "/usr/bin/python3";
    if !std::path::Path::new(python).exists() {
        return None;
    }
    let path = std::env::temp_dir().join(format!("polymur-bench-{}.bin", std::process::id()));
    std::fs::write(&path, body).ok()?;
    let script = format!(
        "import sys, time, zlib\n\
         d = open(sys.argv[1], 'rb').read()\n\
         {call}\n\
         n = 0\n\
         t = time.process_time()\n\
         while time.process_time() - t < {secs}:\n\
         \x20   {call}\n\
         \x20   n += 1\n\
         print(n / (time.process_time() - t))\n"
    );
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output();
    let _ = std::fs::remove_file(&path);
    let out = out.ok().filter(|o| o.status.success())?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Measures every reference on `body` (one gzip batch of `lines` lines), about
/// `secs` CPU-seconds each. Blocking: call it from a blocking thread.
pub fn measure(body: &[u8], lines: u64, secs: f64, zstd_level: i32) -> Reference {
    let plain = gunzip(body, usize::MAX >> 1).expect("the bench's own gzip body inflates");
    let plain_bytes = plain.len();
    let lines_f = lines as f64;

    let mut buf = Vec::with_capacity(plain_bytes);
    let zlib = per_cpu_sec(secs, || {
        buf.clear();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut buf)
            .expect("zlib-rs inflates the bench body");
    }) * lines_f;
    let libdeflate = per_cpu_sec(secs, || {
        let out = gunzip(body, plain_bytes).expect("libdeflate inflates the bench body");
        std::hint::black_box(out);
    }) * lines_f;
    let router = Broadcast { destinations: 1 };
    let mut parts = Vec::with_capacity(1);
    let hot = per_cpu_sec(secs, || {
        let raw = gunzip(body, plain_bytes + 1).expect("inflate");
        let (batch, _) = Batch::from_plaintext(raw, None);
        parts.clear();
        router.route(&batch, &mut parts);
        std::hint::black_box(&parts);
    }) * lines_f;
    let python = python_zlib(body, secs).map(|calls| calls * lines_f);
    use polymur::proxy::compression::{gzip, zstd};
    let zbody = zstd(&plain, zstd_level);
    let zstd_decode = per_cpu_sec(secs, || {
        let out = polymur::ingest::zstd::unzstd(&zbody, plain_bytes).expect("zstd decodes");
        std::hint::black_box(out);
    }) * lines_f;
    let gzip6 = per_cpu_sec(secs, || {
        std::hint::black_box(gzip(&plain, 6));
    }) * lines_f;
    let zstd_c = per_cpu_sec(secs, || {
        std::hint::black_box(zstd(&plain, zstd_level));
    }) * lines_f;
    let python_c = python_zlib_compress(&plain, secs).map(|calls| calls * lines_f);
    Reference {
        zstd_decode_lines_per_cpu_sec: zstd_decode,
        gzip6_lines_per_cpu_sec: gzip6,
        python_zlib_compress_lines_per_cpu_sec: python_c,
        zstd_lines_per_cpu_sec: zstd_c,
        zstd_level,
        gzip6_bytes_per_point: gzip(&plain, 6).len() as f64 / lines_f,
        zstd_bytes_per_point: zbody.len() as f64 / lines_f,
        batch_lines: lines,
        body_bytes: body.len(),
        plain_bytes,
        zlib_rs_lines_per_cpu_sec: zlib,
        libdeflate_lines_per_cpu_sec: libdeflate,
        python_zlib_lines_per_cpu_sec: python,
        hot_path_lines_per_cpu_sec: hot,
    }
}
