//! Spool write and replay rates, and gateway throughput in memory vs `-spool-dir` vs `-durable`.
//!
//! - `spool/write`: appends 5000-line records (~300 KB, one proxy batch) through the spool's
//!   append thread and waits for each group's acknowledgement; `durable` adds the group fsync.
//! - `spool/replay`: reads a spool of such records back from the start (page cache warm, as
//!   right after an outage).
//! - `gateway/*`: the real `polymur-gateway` binary (`-dev-mode`), 4 client threads posting
//!   pre-gzipped 5000-line batches over keep-alive HTTP, one in-bench TCP sink counting lines;
//!   an iteration ends when the sink has every line. Modes: in-memory queue; `-spool-dir` with
//!   the default queue (spool idle while the destination keeps up); `-spool-dir` with
//!   `-outgoing-queue-cap 1` (batches spill to disk and are replayed); `-durable` (every batch
//!   written and fsynced before its 200, replayed from disk).
//!
//! Criterion reports points/s (`Throughput::Elements`, one element per line).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use polymur::dest::spool::{record_size, Spool};
use polymur::dest::Chunk;

const LINES: usize = 5000;

fn chunk(seed: usize) -> Chunk {
    let mut s = String::with_capacity(LINES * 64);
    for i in 0..LINES {
        s.push_str(&format!(
            "servers.prod-dc1.cluster{:02}.host{:04}.cpu.user {i}.5 1700000000\n",
            seed % 17,
            i
        ));
    }
    Chunk {
        data: Bytes::from(s),
        points: LINES as u64,
    }
}

fn spool_rates(c: &mut Criterion) {
    let records = 200; // 1,000,000 points, ~60 MB
    let data: Vec<Chunk> = (0..records).map(chunk).collect();
    let mut g = c.benchmark_group("spool");
    g.sample_size(10);
    g.throughput(Throughput::Elements((records * LINES) as u64));
    for durable in [false, true] {
        let name = if durable { "write_durable" } else { "write" };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().unwrap();
                    let spool = Spool::open(dir.path(), "bench:1", u64::MAX >> 2, durable).unwrap();
                    let t = Instant::now();
                    // Producers do not wait one by one: many requests are in flight at once,
                    // which is what lets one fsync cover many batches.
                    let waits: Vec<_> = data
                        .iter()
                        .map(|c| {
                            assert!(spool.reserve(record_size(c.data.len())));
                            spool.append(c)
                        })
                        .collect();
                    for w in waits {
                        w.blocking_recv().unwrap().unwrap();
                    }
                    total += t.elapsed();
                    spool.close();
                }
                total
            })
        });
    }
    g.bench_function("replay", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().unwrap();
                {
                    let spool = Spool::open(dir.path(), "bench:1", u64::MAX >> 2, false).unwrap();
                    let waits: Vec<_> = data
                        .iter()
                        .map(|c| {
                            assert!(spool.reserve(record_size(c.data.len())));
                            spool.append(c)
                        })
                        .collect();
                    for w in waits {
                        w.blocking_recv().unwrap().unwrap();
                    }
                    spool.close();
                }
                let spool = Spool::open(dir.path(), "bench:1", u64::MAX >> 2, false).unwrap();
                let t = Instant::now();
                let mut points = 0;
                loop {
                    let got = spool.read(4 << 20).unwrap();
                    if got.is_empty() {
                        break;
                    }
                    for (c, pos) in got {
                        points += c.points;
                        spool.delivered(pos);
                    }
                }
                total += t.elapsed();
                assert_eq!(points as usize, records * LINES);
                spool.close();
            }
            total
        })
    });
    g.finish();
}

/// A Graphite receiver that only counts lines.
struct CountingSink {
    port: u16,
    lines: Arc<AtomicU64>,
}

fn counting_sink() -> CountingSink {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let lines = Arc::new(AtomicU64::new(0));
    let counter = lines.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let c = memchr::memchr_iter(b'\n', &buf[..n]).count();
                    counter.fetch_add(c as u64, Ordering::Relaxed);
                }
            });
        }
    });
    CountingSink { port, lines }
}

struct GwProc(Child);
impl Drop for GwProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_gateway(dest: u16, extra: &[String]) -> (GwProc, u16) {
    let http = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_polymur-gateway"));
    cmd.args([
        "-dev-mode",
        "-listen-addr",
        "127.0.0.1",
        "-listen-http-port",
        &http.to_string(),
        "-api-addr",
        "",
        "-stat-addr",
        "",
        "-destinations",
        &format!("127.0.0.1:{dest}"),
    ])
    .args(extra)
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = GwProc(cmd.spawn().expect("spawn polymur-gateway"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "gateway did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, http)
}

/// POSTs `body` on a keep-alive connection; true on 200 (503 is retried by the caller).
fn post(conn: &mut TcpStream, body: &[u8]) -> bool {
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: bench\r\nX-Polymur-Key: 123\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut req = Vec::with_capacity(head.len() + body.len());
    req.extend_from_slice(head.as_bytes());
    req.extend_from_slice(body);
    conn.write_all(&req).unwrap();
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    loop {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "gateway closed the connection");
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&got[..end]).to_string();
            let len: usize = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while got.len() < end + 4 + len {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            return text.starts_with("HTTP/1.1 200");
        }
    }
}

fn gateway_throughput(c: &mut Criterion) {
    let batches_per_client = 25;
    let clients = 4;
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..batches_per_client)
            .map(|i| {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&chunk(i).data).unwrap();
                e.finish().unwrap()
            })
            .collect(),
    );
    let per_iter = (clients * batches_per_client * LINES) as u64;
    let mut g = c.benchmark_group("gateway");
    g.sample_size(10);
    g.throughput(Throughput::Elements(per_iter));
    let modes: [(&str, Vec<&str>); 4] = [
        ("in_memory", vec![]),
        ("spool_dir", vec!["-spool-dir"]),
        (
            "spool_dir_spilling",
            vec!["-spool-dir", "-outgoing-queue-cap=1"],
        ),
        ("durable", vec!["-spool-dir", "-durable"]),
    ];
    for (name, flags) in modes {
        let dir = tempfile::tempdir().unwrap();
        let sink = counting_sink();
        let mut extra = Vec::new();
        for f in &flags {
            extra.push(f.to_string());
            if *f == "-spool-dir" {
                extra.push(dir.path().to_str().unwrap().to_string());
            }
        }
        let (_gw, http) = start_gateway(sink.port, &extra);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start_lines = sink.lines.load(Ordering::Relaxed);
                    let t = Instant::now();
                    let threads: Vec<_> = (0..clients)
                        .map(|_| {
                            let bodies = bodies.clone();
                            std::thread::spawn(move || {
                                let mut conn = TcpStream::connect(("127.0.0.1", http)).unwrap();
                                conn.set_nodelay(true).unwrap();
                                for b in bodies.iter() {
                                    while !post(&mut conn, b) {
                                        std::thread::sleep(Duration::from_millis(1));
                                    }
                                }
                            })
                        })
                        .collect();
                    for th in threads {
                        th.join().unwrap();
                    }
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while sink.lines.load(Ordering::Relaxed) < start_lines + per_iter {
                        assert!(Instant::now() < deadline, "lines missing at the sink");
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, spool_rates, gateway_throughput);
criterion_main!(benches);
