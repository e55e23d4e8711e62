//! Relay destinations over TLS (`-destination-tls`, issue 17): relay → TLS → relay → sink
//! with certificates made in the test; a destination whose certificate is signed by a CA
//! we were not given is refused with a log line naming the cause; and nothing is lost when
//! the receiving end dies mid-stream or is restarted, because the writer re-sends the tail
//! TLS may not have delivered (see `src/dest/unacked.rs`), nor while an mTLS destination
//! refuses our certificate; client certificates work; the gateway has the same flags.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::support::*;
use crate::wire::{lines, relay, text, Pki};

/// Sends `lines` to `addr` from a thread (the relay slows a fast client down through
/// TCP, so the test goes on meanwhile).
fn feed(addr: &str, lines: &[String]) -> JoinHandle<()> {
    let (addr, body) = (addr.to_string(), String::from_utf8(text(lines)).unwrap());
    std::thread::spawn(move || send_lines(&addr, &body).unwrap())
}

/// Every line of `want` is in `got` (duplicates allowed: delivery is at-least-once).
fn missing(want: &[String], got: &[String]) -> usize {
    let got: HashSet<&String> = got.iter().collect();
    want.iter().filter(|l| !got.contains(l)).count()
}

fn tls_dest_args<'a>(dest: &'a str, ca: &'a str) -> Vec<&'a str> {
    vec![
        "-destinations",
        dest,
        "-destination-tls",
        "-destination-ca",
        ca,
    ]
}

#[test]
fn relay_to_relay_over_tls_arrives_and_a_wrong_ca_is_refused_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let stranger = Pki::new(dir.path(), "stranger");
    let (cert, key) = pki.server();
    let sink = LineSink::start();
    let far = format!("127.0.0.1:{}", free_port());
    let _b = relay(
        &far,
        &[
            "-destinations",
            &sink.addr(),
            "-listen-tls-cert",
            &cert,
            "-listen-tls-key",
            &key,
        ],
    );
    let near = format!("127.0.0.1:{}", free_port());
    let a = relay(&near, &tls_dest_args(&far, &pki.ca()));
    let sent = lines("tlsdest.ok", 2000);
    feed(&near, &sent).join().unwrap();
    assert!(sink.wait_count(sent.len(), secs(20)), "{}", a.all_output());
    assert!(a.wait_log(&format!("Connected to destination {far} over TLS"), secs(5)));

    // Trusting another CA: the handshake fails, the cause is logged, nothing goes through.
    let wrong = format!("127.0.0.1:{}", free_port());
    let w = relay(&wrong, &tls_dest_args(&far, &stranger.ca()));
    feed(&wrong, &lines("tlsdest.refused", 10)).join().unwrap();
    assert!(
        w.wait_log("certificate is signed by an unknown issuer", secs(10)),
        "{}",
        w.all_output()
    );
    assert!(w.has_log("-destination-ca"), "{}", w.all_output());
    assert_eq!(sink.wait_idle(millis(500), secs(3)), sent.len());
    let mut got = sink.lines();
    got.sort();
    let mut want = sent;
    want.sort();
    assert_eq!(got, want);
}

/// A TLS receiver that dies mid-stream: after `cut[k]` lines on its `k`th connection it
/// drops the connection with whatever it had not read yet (in its kernel queue, in rustls,
/// in its read buffer), as a killed process loses them. Only lines it processed count.
struct DyingTlsSink {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DyingTlsSink {
    fn start(cert: &str, key: &str, cut: Vec<usize>) -> DyingTlsSink {
        let config = Arc::new(server_config(cert, key));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (lines.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut k = 0;
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        serve_one(tcp, config.clone(), cut.get(k).copied(), &l, &s);
                        k += 1;
                    }
                    Err(_) => std::thread::sleep(millis(10)),
                }
            }
        });
        DyingTlsSink {
            port,
            lines,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }
}

impl Drop for DyingTlsSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn server_config(cert: &str, key: &str) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
        .unwrap()
}

/// Reads lines from one connection until it ends, `cut` lines were processed, or `stop`.
fn serve_one(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    cut: Option<usize>,
    lines: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    tcp.set_nonblocking(false).unwrap();
    tcp.set_read_timeout(Some(millis(200))).unwrap();
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut reader = BufReader::with_capacity(64 << 10, rustls::StreamOwned::new(conn, tcp));
    let mut line = String::new();
    let mut here = 0;
    while !stop.load(Ordering::Relaxed) && cut.is_none_or(|c| here < c) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                lines.lock().unwrap().push(line.trim_end().to_string());
                line.clear();
                here += 1;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
    // Dropped with unread data: the kernel answers with a reset, as for a killed process.
}

/// carbon-c-relay's per-member `transport plain ssl` under `-config`: that member is
/// reached over TLS (verified against `-destination-ca`, no `-destination-tls` needed),
/// the member beside it stays plaintext, and each gets every line.
#[test]
fn a_config_member_with_transport_plain_ssl_is_reached_over_tls_beside_a_plain_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.server();
    let (far_sink, near_sink) = (LineSink::start(), LineSink::start());
    let far = format!("127.0.0.1:{}", free_port());
    let _b = relay(
        &far,
        &[
            "-destinations",
            &far_sink.addr(),
            "-listen-tls-cert",
            &cert,
            "-listen-tls-key",
            &key,
        ],
    );
    let conf = dir.path().join("ssl.conf");
    std::fs::write(
        &conf,
        format!(
            "cluster secure forward {far} transport plain ssl;\n\
             cluster clear forward {} proto tcp transport plain;\n\
             match * send to secure clear;\n",
            near_sink.addr()
        ),
    )
    .unwrap();
    let near = format!("127.0.0.1:{}", free_port());
    let ca = pki.ca();
    let a = relay(
        &near,
        &["-config", conf.to_str().unwrap(), "-destination-ca", &ca],
    );
    let sent = lines("member.ssl", 1000);
    feed(&near, &sent).join().unwrap();
    for sink in [&far_sink, &near_sink] {
        assert!(sink.wait_count(sent.len(), secs(20)), "{}", a.all_output());
        assert_eq!(missing(&sent, &sink.lines()), 0);
    }
    assert!(
        a.has_log(&format!("Connected to destination {far} over TLS")),
        "{}",
        a.all_output()
    );
    assert!(
        a.has_log(&format!("Connected to destination {}", near_sink.addr()))
            && !a.has_log(&format!(
                "Connected to destination {} over TLS",
                near_sink.addr()
            )),
        "{}",
        a.all_output()
    );
}

#[test]
fn a_tls_destination_dying_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.server();
    let sink = DyingTlsSink::start(&cert, &key, vec![30_000, 40_000]);
    let far = format!("127.0.0.1:{}", sink.port);
    let near = format!("127.0.0.1:{}", free_port());
    let a = relay(&near, &tls_dest_args(&far, &pki.ca()));
    let sent = lines("tlsdest.dying", 150_000);
    let feeder = feed(&near, &sent);
    let deadline = std::time::Instant::now() + secs(60);
    while missing(&sent, &sink.lines.lock().unwrap()) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(millis(200));
    }
    feeder.join().unwrap();
    let got = sink.lines.lock().unwrap().clone();
    let lost = missing(&sent, &got);
    assert_eq!(
        lost,
        0,
        "{lost} of {} lines lost ({} received):\n{}",
        sent.len(),
        got.len(),
        a.all_output()
    );
    assert!(a.has_log("re-sending"), "{}", a.all_output());
    eprintln!(
        "received {} lines for {} sent ({} duplicates)",
        sink.count(),
        sent.len(),
        sink.count() - sent.len()
    );
}

#[test]
fn restarting_the_receiving_relay_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.server();
    let sink = LineSink::start();
    let far = format!("127.0.0.1:{}", free_port());
    let far_args = [
        "-destinations",
        &sink.addr(),
        "-listen-tls-cert",
        &cert,
        "-listen-tls-key",
        &key,
    ];
    let b = relay(&far, &far_args);
    let near = format!("127.0.0.1:{}", free_port());
    let a = relay(&near, &tls_dest_args(&far, &pki.ca()));
    let sent = lines("tlsdest.restart", 150_000);
    let feeder = feed(&near, &sent);
    assert!(sink.wait_count(20_000, secs(30)), "{}", a.all_output());
    b.term();
    assert!(b.wait_exit(secs(30)).is_some(), "{}", b.all_output());
    drop(b);
    let _b = relay(&far, &far_args);
    feeder.join().unwrap();
    let deadline = std::time::Instant::now() + secs(60);
    while missing(&sent, &sink.lines()) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(millis(200));
    }
    let got = sink.lines();
    let lost = missing(&sent, &got);
    assert_eq!(
        lost,
        0,
        "{lost} of {} lines lost ({} received):\n{}",
        sent.len(),
        got.len(),
        a.all_output()
    );
}

#[test]
fn a_destination_refusing_our_certificate_gets_everything_once_it_takes_us() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.server();
    let (client_cert, client_key) = pki.leaf("client", "extendedKeyUsage=clientAuth", 2);
    let ca = pki.ca();
    let sink = LineSink::start();
    let far = format!("127.0.0.1:{}", free_port());
    let tls_listen = [
        "-destinations",
        &sink.addr(),
        "-listen-tls-cert",
        &cert,
        "-listen-tls-key",
        &key,
    ];
    let mut mtls_listen = tls_listen.to_vec();
    mtls_listen.extend_from_slice(&["-listen-client-ca", &ca]);
    let b = relay(&far, &mtls_listen);
    // Without a certificate: TLS 1.3 completes our side of the handshake, so the refusal
    // comes as an alert after we wrote; what we wrote must not count as delivered, and no
    // record may be taken for a poison one (dead-letter).
    let near = format!("127.0.0.1:{}", free_port());
    // A queue that holds everything, so each connection has megabytes to write at once.
    let mut args = tls_dest_args(&far, &ca);
    args.extend_from_slice(&["-outgoing-queue-cap", "1000000"]);
    let a = relay(&near, &args);
    let sent = lines("tlsdest.refused_then_taken", 200_000);
    feed(&near, &sent).join().unwrap();
    assert!(
        a.wait_log("requires a client certificate", secs(10)),
        "{}",
        a.all_output()
    );
    assert_eq!(sink.count(), 0);
    // The destination is fixed to take us as we are: everything arrives.
    b.term();
    assert!(b.wait_exit(secs(30)).is_some());
    drop(b);
    let _b = relay(&far, &tls_listen);
    let deadline = std::time::Instant::now() + secs(60);
    while missing(&sent, &sink.lines()) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(millis(200));
    }
    assert_eq!(missing(&sent, &sink.lines()), 0, "{}", a.all_output());
    assert!(!a.has_log("dead-letter"), "{}", a.all_output());

    // And with the certificate, the mTLS destination takes us at once.
    let sink2 = LineSink::start();
    let far2 = format!("127.0.0.1:{}", free_port());
    let sink2_addr = sink2.addr();
    let mut mtls2 = mtls_listen.clone();
    mtls2[1] = &sink2_addr;
    let _b2 = relay(&far2, &mtls2);
    let near2 = format!("127.0.0.1:{}", free_port());
    let mut with_cert = tls_dest_args(&far2, &ca);
    with_cert.extend_from_slice(&[
        "-destination-client-cert",
        &client_cert,
        "-destination-client-key",
        &client_key,
    ]);
    let _a2 = relay(&near2, &with_cert);
    let sent2 = lines("tlsdest.mtls", 1000);
    feed(&near2, &sent2).join().unwrap();
    assert!(sink2.wait_count(sent2.len(), secs(20)));
}

#[test]
fn the_gateway_reaches_its_destinations_over_tls_too() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.server();
    let sink = LineSink::start();
    let far = format!("127.0.0.1:{}", free_port());
    let _b = relay(
        &far,
        &[
            "-destinations",
            &sink.addr(),
            "-listen-tls-cert",
            &cert,
            "-listen-tls-key",
            &key,
        ],
    );
    let ca = pki.ca();
    let mut args = vec!["-dev-mode"];
    args.extend(tls_dest_args(&far, &ca));
    let gw = Gateway::start(&args);
    let sent = lines("tlsdest.gateway", 500);
    let r = http_post(
        &gw.http,
        "/ingest",
        &[("X-Polymur-Key", "123")],
        gzip(&text(&sent)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        sink.wait_count(sent.len(), secs(20)),
        "{}",
        gw.proc.all_output()
    );
    assert!(gw
        .proc
        .has_log(&format!("Connected to destination {far} over TLS")));
}
