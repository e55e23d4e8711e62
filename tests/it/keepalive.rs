//! Keep-alive connections on the gateway's plain-HTTP listener, which parks an idle
//! connection without hyper's buffers between requests: a parked connection serves
//! its next request, pipelined requests are all answered in order, `Connection:
//! close` (and HTTP/1.0) still closes, and an idle connection closes after
//! `-read-timeout`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

fn request(metric: &str, ts: i64, extra: &str) -> Vec<u8> {
    let body = gzip(format!("{metric} 1 {ts}\n").as_bytes());
    let mut r = format!(
        "POST /ingest HTTP/1.1\r\nHost: t\r\nX-Polymur-Key: 123\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(&body);
    r
}

/// Reads from `s` until `n` complete answers (head + `Content-Length` body) or EOF.
fn read_answers(s: &mut TcpStream, n: usize) -> Vec<String> {
    s.set_read_timeout(Some(secs(10))).unwrap();
    let (mut buf, mut answers) = (Vec::new(), Vec::new());
    let mut tmp = [0u8; 4096];
    while answers.len() < n {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                answers.push(head);
                buf.drain(..end + 4 + len);
                continue;
            }
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(k) => buf.extend_from_slice(&tmp[..k]),
        }
    }
    answers
}

/// True when the server closes `s` within `timeout` (EOF or reset).
fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut tmp = [0u8; 64];
    match s.read(&mut tmp) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn parked_and_pipelined_requests_are_all_answered_in_order() {
    let sink = LineSink::start();
    let gw = Gateway::start(&["-dev-mode", "-destinations", &sink.addr()]);
    let ts = now_ts();
    let mut s = TcpStream::connect(&gw.http).unwrap();
    // One at a time, with a pause so the connection is parked between them.
    for i in 0..3 {
        s.write_all(&request(&format!("ka.seq{i}"), ts, ""))
            .unwrap();
        let a = read_answers(&mut s, 1);
        assert!(a[0].starts_with("HTTP/1.1 200"), "{a:?}");
        // Longer than the gateway's 500 ms before it parks an idle connection.
        std::thread::sleep(Duration::from_millis(800));
    }
    // Three in one write: hyper reads them together; each gets its answer.
    let mut burst = Vec::new();
    for i in 0..3 {
        burst.extend(request(&format!("ka.pipe{i}"), ts, ""));
    }
    s.write_all(&burst).unwrap();
    let a = read_answers(&mut s, 3);
    assert_eq!(a.len(), 3, "{a:?}");
    assert!(a.iter().all(|h| h.starts_with("HTTP/1.1 200")), "{a:?}");
    assert!(!a
        .iter()
        .any(|h| h.to_ascii_lowercase().contains("connection: close")));
    assert!(sink.wait_count(6, secs(10)));
    let mut want: Vec<String> = (0..3)
        .map(|i| format!("ka.seq{i} 1 {ts}"))
        .chain((0..3).map(|i| format!("ka.pipe{i} 1 {ts}")))
        .collect();
    let mut got = sink.lines();
    want.sort();
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn connection_close_and_http10_still_close_and_idle_connections_time_out() {
    let sink = LineSink::start();
    let gw = Gateway::start(&[
        "-dev-mode",
        "-read-timeout=1s",
        "-destinations",
        &sink.addr(),
    ]);
    let ts = now_ts();
    let mut s = TcpStream::connect(&gw.http).unwrap();
    s.write_all(&request("ka.close", ts, "Connection: close\r\n"))
        .unwrap();
    let a = read_answers(&mut s, 1);
    assert!(a[0].starts_with("HTTP/1.1 200"), "{a:?}");
    assert!(
        closed_within(&mut s, secs(5)),
        "Connection: close left it open"
    );

    let mut s = TcpStream::connect(&gw.http).unwrap();
    let mut r10 = request("ka.http10", ts, "");
    r10.splice(
        ..b"POST /ingest HTTP/1.1".len(),
        b"POST /ingest HTTP/1.0".iter().copied(),
    );
    s.write_all(&r10).unwrap();
    let a = read_answers(&mut s, 1);
    assert!(a[0].starts_with("HTTP/1.0 200"), "{a:?}");
    assert!(closed_within(&mut s, secs(5)), "HTTP/1.0 left it open");

    // Served once, then idle: closed after -read-timeout (1 s), well within 10 s.
    let mut s = TcpStream::connect(&gw.http).unwrap();
    s.write_all(&request("ka.idle", ts, "")).unwrap();
    assert!(read_answers(&mut s, 1)[0].starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut s, secs(10)),
        "idle connection never closed"
    );
    assert!(sink.wait_count(3, secs(10)));
}
