//! The run itself: build the network and the processes, send, inject the faults,
//! let everything settle, and count what whisper holds where.
//!
//! Locals are declared in build order, so on any exit (a panic included) they drop
//! in reverse: processes first, then the WAN links, then the namespaces.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::carbon::{Carbon, Stored};
use super::netns::Netns;
use super::wan::{Addressing, WanLink};
use crate::support::{free_port, http_get, now_ts, Proc};

const GATEWAY: &str = env!("CARGO_BIN_EXE_polymur-gateway");
const PROXY: &str = env!("CARGO_BIN_EXE_polymur-proxy");
/// The gateways' public address: HAProxy's frontend in the central namespace.
const VIP: &str = "10.0.0.1";
const SITES: usize = 2;
/// Metrics per site; each gets one point per second of load (unique metric + timestamp).
const METRICS_PER_SITE: usize = 250;
const LOAD_SECS: u64 = 45;
const WAN_DELAY: Duration = Duration::from_millis(40);
/// After the load stops, how long the points may take to reach whisper.
const SETTLE: Duration = Duration::from_secs(60);

/// What the run found.
pub struct Report {
    pub sent: u64,
    pub accepted: u64,
    pub stored: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub misplaced: u64,
    pub lost_examples: Vec<String>,
    pub misplaced_examples: Vec<String>,
}

/// One point an application sent.
struct Point {
    metric: String,
    ts: i64,
    value: f64,
}

/// The namespaces and links. Fields drop in order: links (emulator threads, TUN
/// devices) before the namespaces.
struct Network {
    wans: Vec<WanLink>,
    sites: Vec<Netns>,
    central: Netns,
}

/// Runs the whole scenario; `None` when namespaces cannot be created here.
pub fn run() -> Option<Report> {
    let net = match network() {
        Ok(net) => net,
        Err(why) => {
            println!("topology: SKIPPED: cannot create network namespaces here ({why})");
            return None;
        }
    };
    for (i, w) in net.wans.iter().enumerate() {
        println!(
            "topology: site{} WAN link: {}, 1 % loss",
            i + 1,
            w.describe()
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("topology-")
        .tempdir()
        .unwrap();
    let (cert, key) = certificate(dir.path());
    let mut carbons: Vec<Carbon> = ["a", "b", "c"]
        .iter()
        .map(|i| Carbon::start(&net.central, i))
        .collect();
    let dests: Vec<String> = carbons.iter().map(Carbon::destination).collect();
    let dests = dests.join(",");
    let mut gateways: Vec<GatewaySlot> = (1..=2)
        .map(|n| GatewaySlot::new(&net.central, n, &dests, &cert, &key, dir.path()))
        .collect();
    for g in &mut gateways {
        g.start(&net.central);
    }
    let haproxy = haproxy(&net.central, &gateways, dir.path());
    let proxies: Vec<SiteProxy> = net
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| SiteProxy::start(s, i + 1, &cert, dir.path()))
        .collect();
    println!(
        "topology: carbon-caches {dests}; gateways behind haproxy {VIP}:443; load {LOAD_SECS} s"
    );

    let from = now_ts() - 1;
    let points = load_with_faults(&net, &proxies, &mut gateways, &mut carbons);
    let owners = owners(&dests, &points);
    let stored = settle(&carbons, from, &points, &owners);
    print_stats(&proxies, &haproxy.1, &carbons, &stored, &net);
    for g in &gateways {
        let lines = g
            .proc
            .as_ref()
            .map(|p| p.stderr_lines())
            .unwrap_or_default();
        for l in lines.iter().filter(|l| l.contains("to replay from")) {
            let msg = l.split_once("Spool").map_or(l.as_str(), |(_, m)| m);
            println!("topology: {} at its restart: spool{msg}", g.name);
        }
    }
    let accepted = proxies
        .iter()
        .zip(&net.sites)
        .map(|(p, s)| p.metric(s, "polymur_received_points_total"))
        .sum();
    let report = count(&points, &owners, &stored, accepted);
    if report.lost > 0 || report.misplaced > 0 {
        diagnostics(&proxies, &gateways, &carbons);
    }
    Some(report)
}

/// What every process said, when points went missing.
fn diagnostics(proxies: &[SiteProxy], gateways: &[GatewaySlot], carbons: &[Carbon]) {
    for (i, p) in proxies.iter().enumerate() {
        println!("=== proxy{} ===\n{}", i + 1, p.proc.all_output());
    }
    for g in gateways {
        if let Some(p) = &g.proc {
            println!("=== {} (admin {}) ===\n{}", g.name, g.admin, p.all_output());
        }
    }
    for c in carbons {
        println!("=== carbon-cache {} ===\n{}", c.instance, c.log_tail());
    }
}

fn network() -> Result<Network, String> {
    let central = Netns::create("c")?;
    let mut sites = Vec::new();
    for n in 1..=SITES {
        sites.push(Netns::create(&format!("s{n}"))?);
    }
    central.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    let mut wans = Vec::new();
    for (i, site) in sites.iter().enumerate() {
        let n = i + 1;
        let (s, c) = (format!("10.{n}.0.2/24"), format!("10.{n}.0.1/24"));
        let addrs = Addressing {
            site_cidr: &s,
            central_cidr: &c,
            route_to: &format!("{VIP}/32"),
        };
        wans.push(WanLink::connect(
            site,
            &central,
            &format!("s{n}"),
            &addrs,
            WAN_DELAY,
            1.0,
        ));
    }
    Ok(Network {
        wans,
        sites,
        central,
    })
}

/// A self-signed certificate for the VIP, made the way operators make theirs.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-nodes", "-days", "2", "-newkey", "rsa:2048", "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args([
            "-subj",
            "/CN=gateway",
            "-addext",
            &format!("subjectAltName=IP:{VIP}"),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// A gateway's fixed flags (ports, spool) so that a restart is the same gateway.
struct GatewaySlot {
    name: String,
    args: Vec<String>,
    https: String,
    admin: String,
    proc: Option<Proc>,
}

impl GatewaySlot {
    fn new(central: &Netns, n: usize, dests: &str, cert: &Path, key: &Path, dir: &Path) -> Self {
        let p: Vec<u16> = central.exec(|| (0..5).map(|_| free_port()).collect());
        let spool = dir.join(format!("gateway{n}-spool"));
        let args = vec![
            "-listen-addr=127.0.0.1".to_string(),
            format!("-listen-http-port={}", p[0]),
            format!("-listen-https-port={}", p[1]),
            format!("-api-addr=127.0.0.1:{}", p[2]),
            format!("-stat-addr=127.0.0.1:{}", p[3]),
            format!("-admin-addr=127.0.0.1:{}", p[4]),
            format!("-cert={}", cert.display()),
            format!("-key={}", key.display()),
            "-dev-mode".into(),
            "-distribution=hash-route".into(),
            format!("-destinations={dests}"),
            format!("-spool-dir={}", spool.display()),
            "-durable".into(),
        ];
        GatewaySlot {
            name: format!("gateway{n}"),
            args,
            https: format!("127.0.0.1:{}", p[1]),
            admin: format!("127.0.0.1:{}", p[4]),
            proc: None,
        }
    }

    fn start(&mut self, central: &Netns) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let proc = central.exec(|| Proc::spawn(GATEWAY, &args, &[]));
        assert!(
            proc.wait_log("Admin HTTP started", Duration::from_secs(20)),
            "{} did not start: {}",
            self.name,
            proc.all_output()
        );
        self.proc = Some(proc);
    }

    fn kill9(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill9();
        }
    }
}

/// HAProxy in TCP mode: TLS passes through to the gateways, health-checked twice a
/// second so a dead gateway leaves the rotation. Returns the process and its stats socket.
fn haproxy(central: &Netns, gateways: &[GatewaySlot], dir: &Path) -> (Proc, PathBuf) {
    let sock = dir.join("haproxy.sock");
    let mut cfg = format!(
        "global\n  maxconn 512\n  stats socket {} mode 600 level admin\n\
         defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
         \x20 retries 3\n  option redispatch\n\
         frontend gateways\n  bind {VIP}:443\n  default_backend gateways\n\
         backend gateways\n  balance roundrobin\n",
        sock.display()
    );
    for g in gateways {
        cfg.push_str(&format!(
            "  server {} {} check inter 500ms fall 2 rise 2\n",
            g.name, g.https
        ));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let path = path.display().to_string();
    let proc = central.exec(|| {
        let p = Proc::spawn("haproxy", &["-db", "-f", &path], &[]);
        let up = wait_connect(&format!("{VIP}:443"), Duration::from_secs(10));
        assert!(
            up,
            "haproxy is not listening on {VIP}:443: {}",
            p.all_output()
        );
        p
    });
    (proc, sock)
}

fn wait_connect(addr: &str, timeout: Duration) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// One site's proxy: plaintext on its loopback, spool on disk, the gateway over the WAN.
struct SiteProxy {
    proc: Proc,
    listen: String,
    admin: String,
}

impl SiteProxy {
    fn start(site: &Netns, n: usize, cert: &Path, dir: &Path) -> SiteProxy {
        let (listen, admin) = site.exec(|| {
            (
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            )
        });
        let args = [
            format!("-gateway=https://{VIP}:443"),
            "-api-key=123".into(),
            format!("-cert={}", cert.display()),
            format!("-listen-addr={listen}"),
            format!("-admin-addr={admin}"),
            "-stat-addr=".into(),
            "-flush-size=250".into(),
            "-flush-interval=1s".into(),
            format!(
                "-spool-dir={}",
                dir.join(format!("proxy{n}-spool")).display()
            ),
            "-max-retry-delay=2s".into(),
            "-request-timeout=10s".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = site.exec(|| Proc::spawn(PROXY, &args, &[]));
        assert!(
            proc.wait_log("Listening on", Duration::from_secs(30)),
            "proxy{n} did not start: {}",
            proc.all_output()
        );
        SiteProxy {
            proc,
            listen,
            admin,
        }
    }

    /// Sum of a Prometheus family on the proxy's admin endpoint.
    fn metric(&self, site: &Netns, name: &str) -> u64 {
        let body = site
            .exec(|| http_get(&self.admin, "/metrics", &[]))
            .map(|r| r.body)
            .unwrap_or_default();
        prometheus_sum(&body, name)
    }
}

fn prometheus_sum(body: &str, name: &str) -> u64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Runs both sites' applications for LOAD_SECS while the faults happen on this
/// thread; returns every point sent.
fn load_with_faults(
    net: &Network,
    proxies: &[SiteProxy],
    gateways: &mut [GatewaySlot],
    carbons: &mut [Carbon],
) -> Vec<Point> {
    let start = Instant::now();
    let t0 = now_ts();
    std::thread::scope(|s| {
        let apps: Vec<_> = net
            .sites
            .iter()
            .zip(proxies)
            .enumerate()
            .map(|(i, (site, p))| s.spawn(move || site.exec(|| app(i + 1, &p.listen, t0, start))))
            .collect();
        faults(start, net, gateways, carbons);
        apps.into_iter().flat_map(|a| a.join().unwrap()).collect()
    })
}

/// One site's application: every second, one point for each of its metrics, over
/// one TCP connection that it closes cleanly at the end.
fn app(site: usize, listen: &str, t0: i64, start: Instant) -> Vec<Point> {
    let mut conn = TcpStream::connect(listen).expect("connect to the site's proxy");
    conn.set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut sent = Vec::new();
    for tick in 0..LOAD_SECS {
        let due = start + Duration::from_secs(tick);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut text = String::new();
        for k in 0..METRICS_PER_SITE {
            let p = Point {
                metric: format!("topo.site{site}.m{k:03}"),
                ts: t0 + tick as i64,
                value: (tick * 1000 + k as u64) as f64,
            };
            text.push_str(&format!("{} {} {}\n", p.metric, p.value, p.ts));
            sent.push(p);
        }
        conn.write_all(text.as_bytes())
            .expect("write to the site's proxy");
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    // The proxy closes after reading everything: then every line is in its hands.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = conn.read(&mut [0u8; 1]);
    sent
}

fn at(start: Instant, secs: u64, what: &str) {
    if let Some(wait) = (start + Duration::from_secs(secs)).checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    println!("topology: t+{secs}s {what}");
}

/// The fault schedule, on the test's clock.
fn faults(start: Instant, net: &Network, gateways: &mut [GatewaySlot], carbons: &mut [Carbon]) {
    at(start, 8, "kill -9 gateway1");
    gateways[0].kill9();
    at(start, 16, "start gateway1 again (replays its spool)");
    gateways[0].start(&net.central);
    at(start, 22, "restart carbon-cache b");
    carbons[1].restart(&net.central);
    at(start, 30, "WAN loss 10 % on both sites");
    net.wans.iter().for_each(|w| w.set_loss(10.0));
    at(start, 40, "WAN loss back to 1 %");
    net.wans.iter().for_each(|w| w.set_loss(1.0));
    at(start, LOAD_SECS, "applications stop sending");
}

/// The carbon-cache index (a, b, c) each metric belongs to, from the gateway's own
/// dry run of the ring it routes with.
fn owners(dests: &str, points: &[Point]) -> HashMap<String, usize> {
    let mut names: Vec<&str> = points.iter().map(|p| p.metric.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut child = Command::new(GATEWAY)
        .args([
            "-route-test",
            "-distribution=hash-route",
            &format!("-destinations={dests}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("polymur-gateway -route-test");
    child
        .stdin
        .take()
        .unwrap()
        .write_all((names.join("\n") + "\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let order: Vec<&str> = dests.split(',').collect();
    let owners: HashMap<String, usize> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (metric, dest) = l.split_once('\t')?;
            Some((metric.to_string(), order.iter().position(|d| *d == dest)?))
        })
        .collect();
    assert_eq!(
        owners.len(),
        names.len(),
        "route-test did not place every metric"
    );
    owners
}

/// Reads every carbon-cache until each point is on its owner (or SETTLE passes),
/// then until carbon's own received counters stop moving.
fn settle(
    carbons: &[Carbon],
    from: i64,
    points: &[Point],
    owners: &HashMap<String, usize>,
) -> Vec<Stored> {
    let deadline = Instant::now() + SETTLE;
    let read = || carbons.iter().map(|c| c.stored(from)).collect::<Vec<_>>();
    let mut stored = read();
    loop {
        let on_owner = points
            .iter()
            .filter(|p| {
                stored[owners[&p.metric]]
                    .points
                    .contains_key(&(p.metric.clone(), p.ts))
            })
            .count();
        if on_owner == points.len() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
        stored = read();
    }
    // carbon reports what it received every 2 s: wait until two reads agree.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(3));
        let again = read();
        let same = again
            .iter()
            .zip(&stored)
            .all(|(a, b)| a.received == b.received);
        stored = again;
        if same {
            break;
        }
    }
    stored
}

fn count(
    points: &[Point],
    owners: &HashMap<String, usize>,
    stored: &[Stored],
    accepted: u64,
) -> Report {
    let mut r = Report {
        sent: points.len() as u64,
        accepted,
        stored: 0,
        lost: 0,
        duplicates: 0,
        misplaced: 0,
        lost_examples: Vec::new(),
        misplaced_examples: Vec::new(),
    };
    for p in points {
        let key = (p.metric.clone(), p.ts);
        let owner = owners[&p.metric];
        match stored[owner].points.get(&key) {
            Some(v) if *v == p.value => r.stored += 1,
            other => {
                r.lost += 1;
                if r.lost_examples.len() < 10 {
                    r.lost_examples.push(format!(
                        "{} {} {} (found {other:?})",
                        p.metric, p.value, p.ts
                    ));
                }
            }
        }
        for (i, s) in stored.iter().enumerate() {
            if i != owner && s.points.contains_key(&key) {
                r.misplaced += 1;
                if r.misplaced_examples.len() < 10 {
                    r.misplaced_examples
                        .push(format!("{} {} on cache {i}", p.metric, p.ts));
                }
            }
        }
    }
    // Whisper keeps one value per second, so a point delivered twice is stored once:
    // carbon's received count minus what is stored is what arrived more than once.
    let received: u64 = stored.iter().map(|s| s.received).sum();
    let entries: u64 = stored.iter().map(|s| s.points.len() as u64).sum();
    r.duplicates = received.saturating_sub(entries);
    r
}

fn print_stats(
    proxies: &[SiteProxy],
    haproxy_sock: &Path,
    carbons: &[Carbon],
    stored: &[Stored],
    net: &Network,
) {
    for (i, (p, site)) in proxies.iter().zip(&net.sites).enumerate() {
        println!(
            "topology: proxy{}: received {} sent {} retries {}",
            i + 1,
            p.metric(site, "polymur_received_points_total"),
            p.metric(site, "polymur_proxy_sent_points_total"),
            p.metric(site, "polymur_proxy_retries_total"),
        );
    }
    for (c, s) in carbons.iter().zip(stored) {
        println!(
            "topology: carbon-cache {}: {} points stored, {} datapoints received",
            c.instance,
            s.points.len(),
            s.received
        );
    }
    if let Ok(mut conn) = std::os::unix::net::UnixStream::connect(haproxy_sock) {
        let _ = conn.write_all(b"show stat\n");
        let mut csv = String::new();
        let _ = conn.read_to_string(&mut csv);
        for l in csv.lines().filter(|l| l.starts_with("gateways,gateway")) {
            let f: Vec<&str> = l.split(',').collect();
            println!(
                "topology: haproxy {}: {} connections, status {}",
                f[1], f[7], f[17]
            );
        }
    }
}
