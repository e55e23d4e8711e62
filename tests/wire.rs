//! The wire between proxy and gateway (issue 17): zstd and gzip bodies on `/ingest`, the
//! `Accept-Encoding` advertisement and the proxy's `-compression auto` negotiation against
//! our gateway and against a stub of the original Go gateway; TLS certificate pinning and
//! one-line TLS failure causes; TLS and mTLS listeners. Real processes, certificates made
//! with openssl in the test, line sinks as destinations.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use support::*;

const PROXY: &str = env!("CARGO_BIN_EXE_polymur-proxy");
const KEY: (&str, &str) = ("X-Polymur-Key", "123");

fn lines(prefix: &str, n: usize) -> Vec<String> {
    let ts = now_ts();
    (0..n).map(|i| format!("{prefix}.m{i} {i} {ts}")).collect()
}

fn text(lines: &[String]) -> Vec<u8> {
    let mut s = lines.join("\n");
    s.push('\n');
    s.into_bytes()
}

fn zst(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 3).unwrap()
}

/// A zstd frame without a declared content size, as a streaming encoder writes it.
fn zst_streamed(data: &[u8]) -> Vec<u8> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.include_contentsize(false).unwrap();
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[test]
fn ping_advertises_zstd_and_gzip_with_the_original_body() {
    let gw = Gateway::start(&["-dev-mode"]);
    let ok = http_post(&gw.http, "/ping", &[KEY], vec![]);
    assert_eq!((ok.status, ok.body.as_str()), (200, "key is valid\n"));
    assert_eq!(ok.header("accept-encoding"), Some("zstd, gzip"));
    let bad = http_post(&gw.http, "/ping", &[("X-Polymur-Key", "x")], vec![]);
    assert_eq!((bad.status, bad.body.as_str()), (401, "invalid key"));
}

#[test]
fn ingest_takes_zstd_and_gzip_by_header_or_by_magic() {
    let sink = LineSink::start();
    let gw = Gateway::start(&["-dev-mode", "-destinations", &sink.addr()]);
    let ze = ("Content-Encoding", "zstd");
    let ge = ("Content-Encoding", "gzip");
    let mut expected = Vec::new();
    let cases: Vec<(&str, Vec<(&str, &str)>, fn(&[u8]) -> Vec<u8>)> = vec![
        ("zstd.header", vec![KEY, ze], zst),
        ("zstd.streamed", vec![KEY, ze], zst_streamed),
        ("zstd.sniffed", vec![KEY], zst),
        ("gzip.header", vec![KEY, ge], gzip),
        // The original proxy: gzip, no Content-Encoding.
        ("gzip.sniffed", vec![KEY], gzip),
    ];
    for (name, headers, encode) in cases {
        let l = lines(name, 50);
        let r = http_post(&gw.http, "/ingest", &headers, encode(&text(&l)));
        assert_eq!((r.status, r.body.as_str()), (200, "Batch Received\n"), "{name}");
        expected.extend(l);
        assert!(sink.wait_count(expected.len(), secs(10)), "{name}");
    }
    assert_eq!(sink.lines(), expected);
}

#[test]
fn bad_zstd_is_400_and_an_unknown_coding_is_415() {
    let sink = LineSink::start();
    let gw = Gateway::start(&["-dev-mode", "-destinations", &sink.addr()]);
    let ze = ("Content-Encoding", "zstd");
    let body = zst(&text(&lines("trunc", 200)));
    let cases: Vec<(Vec<(&str, &str)>, Vec<u8>)> = vec![
        (vec![KEY, ze], b"not zstd at all".to_vec()),
        (vec![KEY, ze], body[..body.len() - 4].to_vec()),
        (vec![KEY, ze], gzip(b"a 1 2\n")),
        (vec![KEY], body[..body.len() - 4].to_vec()),
    ];
    for (headers, b) in cases {
        let r = http_post(&gw.http, "/ingest", &headers, b);
        assert_eq!((r.status, r.body.as_str()), (400, "Batch Malformed\n"));
    }
    let r = http_post(
        &gw.http,
        "/ingest",
        &[KEY, ("Content-Encoding", "br")],
        zst(b"a 1 2\n"),
    );
    assert_eq!(
        (r.status, r.body.as_str()),
        (415, "Unsupported Content-Encoding\n")
    );
    assert_eq!(r.header("accept-encoding"), Some("zstd, gzip"));
    let ok = lines("after.bad", 5);
    let r = http_post(&gw.http, "/ingest", &[KEY, ze], zst(&text(&ok)));
    assert_eq!(r.status, 200);
    assert!(sink.wait_count(5, secs(10)));
    assert_eq!(sink.wait_idle(millis(300), secs(3)), 5);
}

#[test]
fn zstd_bomb_gets_413_with_bounded_memory_and_the_gateway_stays_up() {
    let sink = LineSink::start();
    let gw = Gateway::start(&["-dev-mode", "-destinations", &sink.addr()]);
    // 2 GiB of zeros as 2048 frames of 1 MiB each, a few hundred KB on the wire: once
    // with declared frame sizes (refused on the headers' word) and once without (the
    // streaming decoder stops at the cap).
    let zeros = vec![b'0'; 1 << 20];
    let bombs: Vec<Vec<u8>> = [zst(&zeros), zst_streamed(&zeros)]
        .iter()
        .map(|frame| frame.repeat(2048))
        .collect();
    for bomb in bombs {
        // Three at once: the decode budget lets one decode to the cap at a time.
        let bomb = Arc::new(bomb);
        let senders: Vec<_> = (0..3)
            .map(|_| {
                let (http, bomb) = (gw.http.clone(), bomb.clone());
                std::thread::spawn(move || {
                    http_post(
                        &http,
                        "/ingest",
                        &[KEY, ("Content-Encoding", "zstd")],
                        bomb.to_vec(),
                    )
                })
            })
            .collect();
        for s in senders {
            let r = s.join().unwrap();
            assert_eq!((r.status, r.body.as_str()), (413, "Batch Too Large\n"));
        }
    }
    let peak = peak_rss(gw.proc.pid());
    eprintln!("zstd bombs: gateway peak RSS {} MiB", peak >> 20);
    assert!(peak < 400 << 20, "peak RSS {} MiB", peak >> 20);
    let after = lines("after.bomb", 5);
    let r = http_post(
        &gw.http,
        "/ingest",
        &[KEY, ("Content-Encoding", "zstd")],
        zst(&text(&after)),
    );
    assert_eq!(r.status, 200);
    assert!(sink.wait_count(5, secs(10)));
    assert_eq!(sink.lines(), after);
}
