//! Checks the shared test harness itself against the real servers on this machine, so a
//! failure elsewhere can be trusted to be the product's and not the harness's.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use crate::support::*;

#[test]
fn carbon_cache_round_trip_exact_values() {
    let started = Instant::now();
    let carbon = CarbonCache::start();
    eprintln!("carbon-cache up after {:?}", started.elapsed());
    let t = now_ts() - 5;
    let data = format!(
        "harness.selftest.a 1.5 {}\nharness.selftest.a 2.25 {}\nharness.selftest.a -3 {}\nharness.selftest.b 42 {}\n",
        t - 2,
        t - 1,
        t,
        t
    );
    send_lines(&carbon.line_addr(), &data).unwrap();
    let points = carbon.wait_points("harness.selftest.a", t - 60, 3, secs(20));
    assert_eq!(
        points,
        vec![(t - 2, 1.5), (t - 1, 2.25), (t, -3.0)],
        "{}",
        carbon.log_tail()
    );
    let b = carbon.wait_points("harness.selftest.b", t - 60, 1, secs(20));
    assert_eq!(b, vec![(t, 42.0)]);
    assert_eq!(
        carbon.metrics(),
        vec![
            "harness.selftest.a".to_string(),
            "harness.selftest.b".to_string()
        ]
    );
    assert!(carbon.fetch("harness.selftest.missing", t - 60).is_empty());
}

#[test]
fn two_carbon_caches_at_once() {
    let a = std::thread::spawn(CarbonCache::start);
    let b = std::thread::spawn(CarbonCache::start);
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_ne!(a.line_port(), b.line_port());
    let t = now_ts() - 1;
    send_lines(&a.line_addr(), &format!("only.on.a 1 {t}\n")).unwrap();
    send_lines(&b.line_addr(), &format!("only.on.b 2 {t}\n")).unwrap();
    assert_eq!(
        a.wait_points("only.on.a", t - 10, 1, secs(20)),
        vec![(t, 1.0)]
    );
    assert_eq!(
        b.wait_points("only.on.b", t - 10, 1, secs(20)),
        vec![(t, 2.0)]
    );
    assert_eq!(a.metrics(), vec!["only.on.a".to_string()]);
    assert_eq!(b.metrics(), vec!["only.on.b".to_string()]);
}

#[test]
fn etcd_put_delete_stop_restart() {
    let started = Instant::now();
    let mut etcd = Etcd::start();
    eprintln!("etcd healthy after {:?}", started.elapsed());
    assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
    etcd.put("polymur/gateway/keys/test-user", "test-key");
    etcd.put("polymur/gateway/keys/other", "-starts-with-dash");
    assert_eq!(
        etcd.get("polymur/gateway/keys/test-user").as_deref(),
        Some("test-key")
    );
    assert_eq!(
        etcd.list("polymur/gateway/keys/"),
        vec![
            (
                "polymur/gateway/keys/other".to_string(),
                "-starts-with-dash".to_string()
            ),
            (
                "polymur/gateway/keys/test-user".to_string(),
                "test-key".to_string()
            ),
        ]
    );
    etcd.delete("polymur/gateway/keys/other");
    assert_eq!(etcd.get("polymur/gateway/keys/other"), None);

    let port = etcd.client_port();
    etcd.stop();
    assert!(!etcd.healthy());
    assert!(wait_port_closed(port, secs(1)));
    etcd.restart();
    assert!(etcd.healthy());
    assert_eq!(etcd.client_port(), port);
    assert_eq!(
        etcd.get("polymur/gateway/keys/test-user").as_deref(),
        Some("test-key"),
        "data dir kept across restart"
    );
}

#[test]
fn line_sink_collects_stops_and_restarts() {
    let mut sink = LineSink::start();
    send_lines(&sink.addr(), "a.b 1 100\na.c 2 100\nno.newline 3 100").unwrap();
    assert!(sink.wait_count(3, secs(5)));
    assert_eq!(
        sink.lines(),
        vec!["a.b 1 100", "a.c 2 100", "no.newline 3 100"]
    );

    // An open connection is cut by stop(), and the port then refuses.
    let mut open = TcpStream::connect(sink.addr()).unwrap();
    assert!(sink.wait_connections(2, secs(5)));
    sink.stop();
    assert!(TcpStream::connect(sink.addr()).is_err());
    open.set_read_timeout(Some(secs(5))).unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(open.read(&mut buf), Ok(0) | Err(_)));

    sink.restart();
    send_lines(&sink.addr(), "after.restart 4 100\n").unwrap();
    assert!(sink.wait_count(4, secs(5)));
    assert_eq!(sink.lines()[3], "after.restart 4 100");
    assert_eq!(sink.wait_idle(millis(100), secs(2)), 4);

    // Reserved port, sink comes up later.
    let port = free_port();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    let late = LineSink::bind_later(port);
    assert!(wait_port(port, secs(2)));
    assert_eq!(late.port(), port);
}

#[test]
fn line_sink_handles_a_million_lines() {
    let sink = LineSink::start();
    let mut data = String::new();
    for i in 0..250_000 {
        data.push_str(&format!("bulk.metric.{} {i} 1700000000\n", i % 1000));
    }
    let started = Instant::now();
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (addr, data) = (sink.addr(), data.clone());
            std::thread::spawn(move || send_lines(&addr, &data).unwrap())
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    assert!(sink.wait_count(1_000_000, secs(60)));
    eprintln!("1M lines received in {:?}", started.elapsed());
    assert_eq!(sink.count(), 1_000_000);
}

#[test]
fn proc_captures_signals_and_env() {
    let p = Proc::spawn(
        "/bin/sh",
        &[
            "-c",
            "echo \"log=$RUST_LOG x=$X\"; echo to-stderr >&2; trap 'echo got-term; exit 3' TERM; \
             while true; do sleep 0.05; done",
        ],
        &[("X", "y")],
    );
    assert!(p.wait_log("to-stderr", secs(5)));
    assert!(p.wait_log("log=info x=y", secs(5)));
    assert!(!p.wait_log("never printed", millis(50)));
    assert!(p.is_running());
    p.term();
    let st = p.wait_exit(secs(5)).expect("exits on TERM");
    assert_eq!(st.code(), Some(3));
    assert!(p.stdout_lines().contains(&"got-term".to_string()));
    assert_eq!(p.stderr_text(), "to-stderr\n");

    let over = Proc::run(
        "/bin/sh",
        &["-c", "echo $RUST_LOG"],
        &[("RUST_LOG", "debug")],
        secs(5),
    );
    assert!(over.success());
    assert_eq!(over.stdout, "debug\n");

    let hung = Proc::spawn("/bin/sh", &["-c", "exec sleep 30"], &[]);
    assert!(hung.wait_exit(millis(100)).is_none());
    hung.kill9();
    assert!(hung.wait_exit(secs(1)).is_some());
}

/// A one-connection HTTP/1.1 server answering each request with `reply`; closes after the
/// first answer when `close` is set.
fn tiny_http_server(
    reply: &'static str,
    close: bool,
) -> (String, std::thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        // Read head + body (Content-Length) then answer.
        loop {
            let n = s.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                if got.len() >= end + 4 + len {
                    break;
                }
            }
        }
        s.write_all(reply.as_bytes()).unwrap();
        if !close {
            // Keep the connection open a while, as a keep-alive server does.
            std::thread::sleep(millis(500));
        }
        got
    });
    (addr, h)
}

#[test]
fn http_post_reports_status_body_and_close() {
    let (addr, h) = tiny_http_server(
        "HTTP/1.1 401 Unauthorized\r\ncontent-length: 11\r\nconnection: close\r\n\r\ninvalid key",
        true,
    );
    let r = http_post(&addr, "/ping", &[("X-Polymur-Key", "nope")], Vec::new());
    assert_eq!(
        (r.status, r.body.as_str(), r.closed),
        (401, "invalid key", true)
    );
    let req = String::from_utf8(h.join().unwrap()).unwrap();
    assert!(req.starts_with("POST /ping HTTP/1.1\r\n"));
    assert!(req.contains("X-Polymur-Key: nope\r\n"));

    let (addr, h) = tiny_http_server(
        "HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\nBatch Received\n",
        false,
    );
    let body = gzip(b"a.b 1 2\n");
    let r = http_post(&addr, "/ingest", &[("X-Polymur-Key", "123")], body.clone());
    assert_eq!(
        (r.status, r.body.as_str(), r.closed),
        (200, "Batch Received\n", false)
    );
    assert_eq!(r.header("Content-Length"), Some("15"));
    let req = h.join().unwrap();
    assert_eq!(gunzip(&req[req.len() - body.len()..]), b"a.b 1 2\n");

    // Chunked response, no Connection header, server closes right after: closed via EOF.
    let (addr, _h) = tiny_http_server(
        "HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\nretry-after: 1\r\n\r\n4\r\nbusy\r\n0\r\n\r\n",
        true,
    );
    let r = http_post(&addr, "/ingest", &[], vec![1, 2, 3]);
    assert_eq!((r.status, r.body.as_str(), r.closed), (503, "busy", true));
    assert_eq!(r.header("retry-after"), Some("1"));

    let refused = free_port();
    assert!(try_http_request("POST", &format!("127.0.0.1:{refused}"), "/", &[], b"").is_err());
}

/// A TLS server (rustls, ring) for `conns` connections, answering each request with
/// `200 key is valid`. Handshake failures just end that connection.
fn tiny_https_server(tls: &TlsFiles, conns: usize) -> (String, std::thread::JoinHandle<()>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&tls.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        for _ in 0..conns {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(secs(5))).unwrap();
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp);
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            if got.is_empty() {
                continue;
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nkey is valid");
            let _ = s.flush();
            std::thread::sleep(millis(200));
        }
    });
    (addr, server)
}

#[test]
fn https_post_trusts_the_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate(dir.path());
    let (addr, server) = tiny_https_server(&tls, 3);
    let r = https_post(
        &addr,
        "/ping",
        &[("X-Polymur-Key", "123")],
        Vec::new(),
        &tls.cert,
    );
    assert_eq!((r.status, r.body.as_str()), (200, "key is valid"));
    // The DNS name in the certificate works too.
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut c = HttpConn::connect_tls_as(&addr, &tls.cert, name).unwrap();
    let r = c.post("/ping", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    // A stock rustls client refuses openssl's CA:TRUE self-signed certificate.
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let err = HttpConn::connect_tls_with(&addr, tls_client_config_strict(&tls.cert), name)
        .err()
        .expect("strict webpki refuses a CA certificate as end entity");
    assert!(format!("{err:?}").contains("CaUsedAsEndEntity"), "{err:?}");
    server.join().unwrap();

    // The leaf variant passes strict verification; a name not in the certificate fails.
    let leaf = TlsFiles::generate_leaf(dir.path());
    let (addr, server) = tiny_https_server(&leaf, 2);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut c =
        HttpConn::connect_tls_with(&addr, tls_client_config_strict(&leaf.cert), name).unwrap();
    assert_eq!(c.post("/ping", &[], b"").unwrap().body, "key is valid");
    let wrong = rustls::pki_types::ServerName::try_from("example.com").unwrap();
    assert!(HttpConn::connect_tls_as(&addr, &leaf.cert, wrong).is_err());
    server.join().unwrap();
}
