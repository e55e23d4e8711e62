//! The wire between proxy and gateway (issue 17): zstd and gzip bodies on `/ingest`, the
//! `Accept-Encoding` advertisement and the proxy's `-compression auto` negotiation against
//! our gateway and against a stub of the original Go gateway; TLS certificate pinning and
//! one-line TLS failure causes; TLS and mTLS listeners. Real processes, certificates made
//! with openssl in the test, line sinks as destinations.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use crate::support::*;

const PROXY: &str = env!("CARGO_BIN_EXE_polymur-proxy");
const KEY: (&str, &str) = ("X-Polymur-Key", "123");

/// Request headers of one case.
type Headers<'a> = Vec<(&'a str, &'a str)>;
/// A compressor of one case.
type Encode = fn(&[u8]) -> Vec<u8>;

pub(crate) fn lines(prefix: &str, n: usize) -> Vec<String> {
    let ts = now_ts();
    (0..n).map(|i| format!("{prefix}.m{i} {i} {ts}")).collect()
}

pub(crate) fn text(lines: &[String]) -> Vec<u8> {
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
    let cases: Vec<(&str, Headers, Encode)> = vec![
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
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "Batch Received\n"),
            "{name}"
        );
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
    let cases: Vec<(Headers, Vec<u8>)> = vec![
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
        // Three at once: the decode budget lets one decode to the cap at a time (one
        // that waits past the admission deadline is answered 503 and retries).
        let bomb = Arc::new(bomb);
        let senders: Vec<_> = (0..3)
            .map(|_| {
                let (http, bomb) = (gw.http.clone(), bomb.clone());
                std::thread::spawn(move || {
                    let zstd = [KEY, ("Content-Encoding", "zstd")];
                    http_post_retrying(&http, "/ingest", &zstd, &bomb)
                })
            })
            .collect();
        for s in senders {
            let r = s.join().unwrap();
            assert_eq!((r.status, r.body.as_str()), (413, "Batch Too Large\n"));
        }
    }
    let peak = gw.proc.peak_rss();
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

/// A running proxy and its plaintext address.
struct Proxy {
    proc: Proc,
    listen: String,
}

fn proxy(gateway: &str, extra: &[&str]) -> Proxy {
    let listen = format!("127.0.0.1:{}", free_port());
    let stat = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "-gateway",
        gateway,
        "-api-key",
        "123",
        "-listen-addr",
        &listen,
        "-stat-addr",
        &stat,
        "-admin-addr",
        &admin,
        "-flush-interval",
        "200ms",
        "-flush-size",
        "500",
        "-max-retry-delay",
        "1s",
    ];
    args.extend_from_slice(extra);
    let proc = Proc::spawn(PROXY, &args, &[]);
    assert!(
        proc.wait_log("Listening on", secs(15)),
        "proxy did not start: {}",
        proc.all_output()
    );
    Proxy { proc, listen }
}

/// A TCP forwarder that keeps a copy of every byte the client sent, so a test can see
/// the requests a proxy made to a real gateway.
struct Recorder {
    addr: String,
    sent: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start(to: &str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let sent: Arc<std::sync::Mutex<Vec<u8>>> = Arc::default();
        let (to, s) = (to.to_string(), sent.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let Ok(server) = TcpStream::connect(&to) else {
                    continue;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                });
                let s = s.clone();
                std::thread::spawn(move || {
                    let (mut client, mut server) = (client, server);
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = client.read(&mut buf) {
                        if n == 0 || server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        s.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = server.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Recorder { addr, sent }
    }

    /// Everything the client sent, lower-cased (header names are case-insensitive).
    fn sent_lower(&self) -> Vec<u8> {
        self.sent.lock().unwrap().to_ascii_lowercase()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn auto_sends_zstd_to_our_gateway_and_every_line_arrives() {
    let sink = LineSink::start();
    let gw = Gateway::start(&["-dev-mode", "-destinations", &sink.addr()]);
    let rec = Recorder::start(&gw.http);
    let p = proxy(&format!("http://{}", rec.addr), &[]);
    let sent = lines("auto.zstd", 2000);
    send_lines(&p.listen, &String::from_utf8(text(&sent)).unwrap()).unwrap();
    assert!(
        sink.wait_count(sent.len(), secs(20)),
        "{}",
        p.proc.all_output()
    );
    assert_eq!(sink.wait_idle(millis(300), secs(3)), sent.len());
    let mut got = sink.lines();
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(got, want);
    let wire = rec.sent_lower();
    assert!(contains(&wire, b"content-encoding: zstd\r\n"));
    assert!(!contains(&wire, b"content-encoding: gzip\r\n"));
    assert!(
        contains(&wire, &[0x28, 0xb5, 0x2f, 0xfd]),
        "zstd frames on the wire"
    );
}

/// What the stub of the original gateway saw on `/ingest`.
#[derive(Default)]
struct OldSeen {
    /// Decoded lines of the batches it took.
    lines: Vec<String>,
    /// Bodies that were not gzip (answered 400, as a gzip-only gateway must).
    not_gzip: usize,
}

/// The original Go gateway as a proxy sees it: `/ping` answers 200 `key is valid\n`
/// without `Accept-Encoding`, `/ingest` takes gzip only. Keep-alive, one thread a connection.
fn old_gateway() -> (String, Arc<std::sync::Mutex<OldSeen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: Arc<std::sync::Mutex<OldSeen>> = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let s = s.clone();
            std::thread::spawn(move || old_gateway_conn(conn, s));
        }
    });
    (format!("http://{addr}"), seen)
}

fn old_gateway_conn(conn: TcpStream, seen: Arc<std::sync::Mutex<OldSeen>>) {
    conn.set_read_timeout(Some(secs(30))).unwrap();
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        let mut raw = vec![0u8; len];
        if r.read_exact(&mut raw).is_err() {
            return;
        }
        let (status, answer) = match path.as_str() {
            "/ping" => (200, "key is valid\n"),
            _ if raw.starts_with(&[0x1f, 0x8b]) => {
                let text = String::from_utf8(gunzip(&raw)).unwrap();
                seen.lock()
                    .unwrap()
                    .lines
                    .extend(text.lines().map(String::from));
                (200, "Batch Received\n")
            }
            _ => {
                seen.lock().unwrap().not_gzip += 1;
                (400, "Batch Malformed\n")
            }
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
            answer.len()
        );
        if w.write_all(head.as_bytes()).is_err() || w.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn auto_sends_gzip_to_the_original_gateway_and_every_line_arrives() {
    let (url, seen) = old_gateway();
    let p = proxy(&url, &[]);
    let sent = lines("auto.gzip", 2000);
    send_lines(&p.listen, &String::from_utf8(text(&sent)).unwrap()).unwrap();
    assert!(
        wait_until(secs(20), || seen.lock().unwrap().lines.len() >= sent.len()),
        "{}",
        p.proc.all_output()
    );
    std::thread::sleep(millis(300));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.not_gzip, 0);
    let mut got = seen.lines.clone();
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(got, want);
}

/// Runs openssl with `args` in `dir`; panics with its output on failure.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA in `dir` (`ca.pem`, `ca.key`) that signs leaf certificates.
pub(crate) struct Pki {
    dir: std::path::PathBuf,
}

impl Pki {
    pub(crate) fn new(dir: &std::path::Path, name: &str) -> Pki {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-newkey",
                "rsa:2048",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                &format!("/CN=polymur test CA {name}"),
            ],
        );
        Pki { dir }
    }

    pub(crate) fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// A leaf certificate `<name>.pem` / `<name>.key` with `ext` (openssl extension
    /// lines), valid for `days` (negative: already expired).
    pub(crate) fn leaf(&self, name: &str, ext: &str, days: i32) -> (String, String) {
        let ext_file = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext_file),
            format!("basicConstraints=CA:FALSE\n{ext}\n"),
        )
        .unwrap();
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let days = days.to_string();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                &days,
                "-extfile",
                &ext_file,
            ],
        );
        (
            self.dir.join(pem).display().to_string(),
            self.dir.join(key).display().to_string(),
        )
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub(crate) fn server(&self) -> (String, String) {
        self.leaf("server", "subjectAltName=IP:127.0.0.1,DNS:localhost", 2)
    }
}

/// Our gateway with HTTPS on a free port, forwarding to `dest`; returns it and the port.
fn https_gateway(dest: &str, cert: &str, key: &str, extra: &[&str]) -> (Gateway, u16) {
    let https = free_port();
    let port = https.to_string();
    let mut args = vec![
        "-dev-mode",
        "-destinations",
        dest,
        "-cert",
        cert,
        "-key",
        key,
        "-listen-https-port",
        &port,
    ];
    args.extend_from_slice(extra);
    let gw = Gateway::start(&args);
    assert!(gw.proc.wait_log("HTTPS listening on", secs(5)));
    (gw, https)
}

#[test]
fn the_readmes_certificate_without_names_works_when_pinned() {
    let dir = tempfile::tempdir().unwrap();
    // Exactly the README's command (no subjectAltName; the subject would be asked for).
    openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-nodes",
            "-days",
            "365",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-subj",
            "/CN=gateway.example.com",
        ],
    );
    let (cert, key) = (
        dir.path().join("cert.pem").display().to_string(),
        dir.path().join("key.pem").display().to_string(),
    );
    let sink = LineSink::start();
    let (_gw, https) = https_gateway(&sink.addr(), &cert, &key, &[]);
    let p = proxy(&format!("https://127.0.0.1:{https}"), &["-cert", &cert]);
    assert!(
        p.proc.wait_log("accepts the API key", secs(5)),
        "{}",
        p.proc.all_output()
    );
    let sent = lines("pinned", 600);
    send_lines(&p.listen, &String::from_utf8(text(&sent)).unwrap()).unwrap();
    assert!(
        sink.wait_count(sent.len(), secs(20)),
        "{}",
        p.proc.all_output()
    );
}

/// The proxy against a gateway that fails TLS for `cause`: the same one-line cause is
/// logged at start and on the retries of a batch.
fn assert_cause_at_start_and_on_retries(gateway: &str, proxy_args: &[&str], cause: &str) {
    let p = proxy(gateway, proxy_args);
    assert!(
        p.proc.wait_log("unreachable at start", secs(5)),
        "{}",
        p.proc.all_output()
    );
    send_lines(&p.listen, "retried.line 1 1700000000\n").unwrap();
    let logged = || {
        p.proc
            .all_output()
            .lines()
            .filter(|l| l.contains(cause))
            .count()
    };
    assert!(
        wait_until(secs(10), || logged() >= 3),
        "want {cause:?} at start and on two retries:\n{}",
        p.proc.all_output()
    );
    let start = p.proc.all_output();
    let start = start
        .lines()
        .find(|l| l.contains("unreachable at start"))
        .unwrap();
    assert!(start.contains(cause), "{start}");
    assert!(!start.contains("error sending request"), "{start}");
}

#[test]
fn tls_failures_name_their_cause_at_start_and_on_retries() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let other = Pki::new(dir.path(), "other");
    let sink = LineSink::start();
    let (server_cert, server_key) = pki.server();
    let (gw, https) = https_gateway(&sink.addr(), &server_cert, &server_key, &[]);
    // Trusting another CA.
    assert_cause_at_start_and_on_retries(
        &format!("https://127.0.0.1:{https}"),
        &["-cert", &other.ca()],
        "unknown issuer",
    );
    drop(gw);
    // Reached by a name the certificate does not hold.
    let (named, named_key) = pki.leaf("named", "subjectAltName=DNS:gateway.example", 2);
    let (named_gw, https) = https_gateway(&sink.addr(), &named, &named_key, &[]);
    assert_cause_at_start_and_on_retries(
        &format!("https://127.0.0.1:{https}"),
        &["-cert", &pki.ca()],
        "is not valid for 127.0.0.1 (it names gateway.example)",
    );
    drop(named_gw);
    // Expired.
    let (old_cert, old_key) = pki.leaf("expired", "subjectAltName=IP:127.0.0.1", -1);
    let (_gw, https) = https_gateway(&sink.addr(), &old_cert, &old_key, &[]);
    assert_cause_at_start_and_on_retries(
        &format!("https://127.0.0.1:{https}"),
        &["-cert", &pki.ca()],
        "TLS: the gateway's certificate has expired",
    );
    // http:// to the HTTPS port.
    assert_cause_at_start_and_on_retries(
        &format!("http://127.0.0.1:{https}"),
        &[],
        "(is it an HTTPS port?): use -gateway=https://127.0.0.1:",
    );
    // https:// to the plain HTTP port.
    let plain = Gateway::start(&["-dev-mode", "-destinations", &sink.addr()]);
    assert_cause_at_start_and_on_retries(
        &format!("https://{}", plain.http),
        &[],
        &format!(
            "the gateway answered plain HTTP: use -gateway=http://{}",
            plain.http
        ),
    );
    assert_eq!(sink.lines(), Vec::<String>::new());
}

/// The proxy's own TLS session (used when the HTTP client reports a failure without a
/// cause: in TLS 1.3 a refused client certificate is an alert after the handshake, and a
/// pooled client can lose the race and see only `connection was not ready`) reads each
/// refusal to its end and names it; a session the server accepts names nothing.
#[tokio::test]
async fn the_tls_probe_names_each_refusal_and_nothing_when_accepted() {
    use polymur::http_client::{probe_tls, tls_config_with, Identity};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let other = Pki::new(dir.path(), "other");
    let (cert, key) = pki.server();
    let (client_cert, client_key) = pki.leaf("proxy", "extendedKeyUsage=clientAuth", 2);
    let sink = LineSink::start();
    let (_gw, https) = https_gateway(&sink.addr(), &cert, &key, &["-client-ca", &pki.ca()]);
    let url = format!("https://127.0.0.1:{https}");
    let ca = std::path::PathBuf::from(pki.ca());
    let probe = |config: rustls::ClientConfig, url: String| async move {
        probe_tls(Arc::new(config), &url, secs(5)).await
    };
    let without = tls_config_with(Some(&ca), None).unwrap();
    let why = probe(without, url.clone()).await;
    assert_eq!(
        why.as_deref(),
        Some("TLS: the gateway requires a client certificate: give -client-cert and -client-key")
    );
    let identity = Identity {
        cert: std::path::Path::new(&client_cert),
        key: std::path::Path::new(&client_key),
    };
    let with = tls_config_with(Some(&ca), Some(identity)).unwrap();
    assert_eq!(probe(with, url.clone()).await, None);
    let wrong_ca = tls_config_with(Some(std::path::Path::new(&other.ca())), None).unwrap();
    let why = probe(wrong_ca, url.clone()).await.unwrap_or_default();
    assert!(why.contains("unknown issuer"), "{why}");
    // Not https: nothing to probe.
    let plain = tls_config_with(Some(&ca), None).unwrap();
    assert_eq!(
        probe(plain, format!("http://127.0.0.1:{https}")).await,
        None
    );
    assert_eq!(sink.lines(), Vec::<String>::new());
}

const RELAY: &str = env!("CARGO_BIN_EXE_polymur");

/// A TLS client config trusting `ca`, presenting `identity` (cert, key) when given.
fn client_tls(ca: &str, identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    })
}

/// Sends `text` over TLS to `addr` and closes cleanly (close_notify). An error when
/// the handshake or the writes fail, as they do for a client the server refuses.
fn send_tls(addr: &str, config: Arc<rustls::ClientConfig>, text: &str) -> std::io::Result<()> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(secs(5)))?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(text.as_bytes())?;
    tls.flush()?;
    tls.conn.send_close_notify();
    tls.flush()?;
    // A refusal (TLS 1.3 checks the client certificate after the client's first
    // flight) arrives as an alert: read until EOF to see it.
    let mut rest = Vec::new();
    match tls.read_to_end(&mut rest) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
        Err(e) => Err(e),
    }
}

/// The relay with `args` after its listener flags; waits until it serves.
pub(crate) fn relay(listen: &str, args: &[&str]) -> Proc {
    let (api, stat, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut all = vec![
        "-listen-addr",
        listen,
        "-api-addr",
        &api,
        "-stat-addr",
        &stat,
        "-admin-addr",
        &admin,
    ];
    all.extend_from_slice(args);
    let proc = Proc::spawn(RELAY, &all, &[]);
    assert!(
        proc.wait_log("Admin HTTP started", secs(15)),
        "relay did not start: {}",
        proc.all_output()
    );
    proc
}

#[test]
fn relay_serves_plaintext_and_mtls_at_once_and_refuses_clients_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let stranger = Pki::new(dir.path(), "stranger");
    let (cert, key) = pki.server();
    let (client_cert, client_key) = pki.leaf("client", "extendedKeyUsage=clientAuth", 2);
    let (bad_cert, bad_key) = stranger.leaf("intruder", "extendedKeyUsage=clientAuth", 2);
    let sink = LineSink::start();
    let (plain, tls) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let r = relay(
        &plain,
        &[
            "-destinations",
            &sink.addr(),
            "-listen-tls-cert",
            &cert,
            "-listen-tls-key",
            &key,
            "-listen-tls-addr",
            &tls,
            "-listen-client-ca",
            &pki.ca(),
        ],
    );
    assert!(r.has_log(&format!(
        "Listening on {tls} (TLS, client certificates required)"
    )));
    let plain_lines = lines("relay.plain", 100);
    send_lines(&plain, &String::from_utf8(text(&plain_lines)).unwrap()).unwrap();
    let tls_lines = lines("relay.mtls", 100);
    let with_cert = client_tls(&pki.ca(), Some((&client_cert, &client_key)));
    send_tls(
        &tls,
        with_cert,
        &String::from_utf8(text(&tls_lines)).unwrap(),
    )
    .unwrap();
    assert!(sink.wait_count(200, secs(10)), "{}", r.all_output());
    // No certificate, or one from another CA: refused, nothing forwarded.
    let refused = lines("relay.refused", 10);
    let refused_text = String::from_utf8(text(&refused)).unwrap();
    assert!(send_tls(&tls, client_tls(&pki.ca(), None), &refused_text).is_err());
    let stranger_cfg = client_tls(&pki.ca(), Some((&bad_cert, &bad_key)));
    assert!(send_tls(&tls, stranger_cfg, &refused_text).is_err());
    // Plain text on the TLS port is not a handshake either.
    let _ = send_lines(&tls, &refused_text);
    assert_eq!(sink.wait_idle(millis(500), secs(3)), 200);
    let mut got = sink.lines();
    got.sort();
    let mut want: Vec<String> = plain_lines.into_iter().chain(tls_lines).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn listener_certificates_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::new(dir.path(), "first");
    let second = Pki::new(dir.path(), "second");
    let (cert1, key1) = first.server();
    let (cert2, key2) = second.server();
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
    std::fs::copy(&cert1, &cert).unwrap();
    std::fs::copy(&key1, &key).unwrap();
    let sink = LineSink::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let r = relay(
        &listen,
        &[
            "-destinations",
            &sink.addr(),
            "-listen-tls-cert",
            cert.to_str().unwrap(),
            "-listen-tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(r.has_log(&format!("Listening on {listen} (TLS)")));
    send_tls(
        &listen,
        client_tls(&first.ca(), None),
        "before.reload 1 1700000000\n",
    )
    .unwrap();
    assert!(sink.wait_count(1, secs(10)));
    // A broken pair keeps the current certificate.
    std::fs::write(&cert, "not a certificate").unwrap();
    r.signal("HUP");
    assert!(r.wait_log("keeping the current TLS certificate", secs(5)));
    send_tls(
        &listen,
        client_tls(&first.ca(), None),
        "still.first 2 1700000000\n",
    )
    .unwrap();
    assert!(sink.wait_count(2, secs(10)));
    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    r.signal("HUP");
    assert!(r.wait_log("TLS certificate reloaded", secs(5)));
    assert!(send_tls(
        &listen,
        client_tls(&first.ca(), None),
        "old.ca 3 1700000000\n"
    )
    .is_err());
    send_tls(
        &listen,
        client_tls(&second.ca(), None),
        "after.reload 4 1700000000\n",
    )
    .unwrap();
    assert!(sink.wait_count(3, secs(10)));
    assert_eq!(
        sink.lines(),
        vec![
            "before.reload 1 1700000000",
            "still.first 2 1700000000",
            "after.reload 4 1700000000"
        ]
    );
}

#[test]
fn gateway_mtls_takes_the_proxys_client_certificate_and_refuses_none() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let (cert, key) = pki.server();
    let (client_cert, client_key) = pki.leaf("proxy", "extendedKeyUsage=clientAuth", 2);
    let sink = LineSink::start();
    let (_gw, https) = https_gateway(&sink.addr(), &cert, &key, &["-client-ca", &pki.ca()]);
    let url = format!("https://127.0.0.1:{https}");
    // The proxy also serves its own listener over TLS only.
    let p = proxy(
        &url,
        &[
            "-cert",
            &pki.ca(),
            "-client-cert",
            &client_cert,
            "-client-key",
            &client_key,
            "-listen-tls-cert",
            &cert,
            "-listen-tls-key",
            &key,
        ],
    );
    assert!(
        p.proc.wait_log("accepts the API key", secs(5)),
        "{}",
        p.proc.all_output()
    );
    assert!(p.proc.has_log(&format!("Listening on {} (TLS)", p.listen)));
    let sent = lines("mtls.proxy", 700);
    send_tls(
        &p.listen,
        client_tls(&pki.ca(), None),
        &String::from_utf8(text(&sent)).unwrap(),
    )
    .unwrap();
    assert!(
        sink.wait_count(sent.len(), secs(20)),
        "{}",
        p.proc.all_output()
    );
    // Without a client certificate: refused in the handshake, whatever the key.
    let mut c = HttpConn::connect_tls(
        &format!("127.0.0.1:{https}"),
        std::path::Path::new(&pki.ca()),
    )
    .and_then(|mut c| c.post("/ping", &[KEY], b""));
    assert!(c.is_err(), "{:?}", c.as_mut().map(|r| r.status));
    // A proxy without one says why, in one line.
    assert_cause_at_start_and_on_retries(
        &url,
        &["-cert", &pki.ca()],
        "TLS: the gateway requires a client certificate: give -client-cert and -client-key",
    );
    let mut got = sink.lines();
    got.sort();
    let mut want = sent;
    want.sort();
    assert_eq!(got, want);
}
