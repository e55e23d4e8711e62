//! The gateway binary with real key stores: etcd (a real server) and Consul (the
//! in-test KV server, since Consul itself cannot be installed here). Revoked keys
//! stop working within seconds, an outage keeps the cache, several tenants at once
//! each get their own prefix.

use crate::consul_server::ConsulServer;
use crate::support::*;

const P: &str = "polymur/gateway/keys/";

fn gateway(args: &[&str], envs: &[(&str, &str)]) -> (Proc, String) {
    let gw = Gateway::start_env(args, envs);
    (gw.proc, gw.http)
}

fn ingest(http: &str, key: &str, body: &str) -> u16 {
    http_post(
        http,
        "/ingest",
        &[("X-Polymur-Key", key)],
        gzip(body.as_bytes()),
    )
    .status
}

/// Tenants, revocation and outage against whichever store the gateway was given.
fn exercise(
    http: &str,
    gw: &Proc,
    sink: &LineSink,
    put: &dyn Fn(&str, &str),
    del: &dyn Fn(&str),
    outage: &mut dyn FnMut(bool),
) {
    let ts = now_ts();
    // Several tenants at once: each line carries its own key's name.
    assert_eq!(ingest(http, "key-a", &format!("web.rate 1 {ts}\n")), 200);
    assert_eq!(ingest(http, "key-b", &format!("web.rate 2 {ts}\n")), 200);
    assert!(sink.wait_count(2, secs(10)));
    let mut got = sink.lines();
    got.sort();
    assert_eq!(
        got,
        vec![
            format!("customer-a.web.rate 1 {ts}"),
            format!("customer-b.web.rate 2 {ts}")
        ]
    );

    // A key added now works within seconds; a revoked one is refused within 3 s.
    put("customer-c", "key-c");
    assert!(wait_until(secs(3), || ingest(
        http,
        "key-c",
        &format!("c.x 1 {ts}\n")
    ) == 200));
    del("customer-b");
    let t0 = std::time::Instant::now();
    assert!(wait_until(secs(3), || ingest(
        http,
        "key-b",
        &format!("b.x 1 {ts}\n")
    ) == 401));
    assert!(t0.elapsed() < secs(3));

    // Store outage: keys stay as they were, the gateway keeps serving.
    outage(true);
    std::thread::sleep(secs(2));
    assert_eq!(
        ingest(http, "key-a", &format!("during.outage 1 {ts}\n")),
        200
    );
    assert_eq!(ingest(http, "key-b", &format!("b.y 1 {ts}\n")), 401);
    outage(false);
    // After recovery, changes apply again.
    del("customer-a");
    assert!(
        wait_until(secs(10), || ingest(http, "key-a", &format!("a.y 1 {ts}\n"))
            == 401),
        "{}",
        gw.all_output()
    );
    assert!(!gw.all_output().contains("key-a"), "a key reached the log");
}

#[test]
fn etcd_keys_sync_revoke_and_survive_an_outage() {
    let etcd = std::cell::RefCell::new(Etcd::start());
    etcd.borrow().put(&format!("{P}customer-a"), "key-a");
    etcd.borrow().put(&format!("{P}customer-b"), "key-b");
    let sink = LineSink::start();
    let endpoint = etcd.borrow().endpoint();
    let (gw, http) = gateway(
        &[
            "-key-store",
            "etcd",
            "-etcd-endpoints",
            &endpoint,
            "-key-prefix",
            "-destinations",
            &sink.addr(),
        ],
        &[],
    );
    assert!(
        gw.wait_log("API keys refreshed: 2 new, 0 removed", secs(10)),
        "{}",
        gw.all_output()
    );
    exercise(
        &http,
        &gw,
        &sink,
        &|n, k| etcd.borrow().put(&format!("{P}{n}"), k),
        &|n| etcd.borrow().delete(&format!("{P}{n}")),
        &mut |down| {
            if down {
                etcd.borrow_mut().stop()
            } else {
                etcd.borrow_mut().restart()
            }
        },
    );
}

#[test]
fn consul_keys_sync_revoke_and_survive_an_outage() {
    let consul = std::cell::RefCell::new(ConsulServer::start_with_token("s3cr3t-token"));
    consul.borrow().put(&format!("{P}customer-a"), "key-a");
    consul.borrow().put(&format!("{P}customer-b"), "key-b");
    let sink = LineSink::start();
    let addr = consul.borrow().addr();
    let (gw, http) = gateway(
        &["-key-prefix", "-destinations", &sink.addr()],
        &[
            ("CONSUL_HTTP_ADDR", &addr),
            ("CONSUL_HTTP_TOKEN", "s3cr3t-token"),
        ],
    );
    assert!(
        gw.wait_log("API keys refreshed: 2 new, 0 removed", secs(10)),
        "{}",
        gw.all_output()
    );
    exercise(
        &http,
        &gw,
        &sink,
        &|n, k| consul.borrow().put(&format!("{P}{n}"), k),
        &|n| consul.borrow().delete(&format!("{P}{n}")),
        &mut |down| {
            if down {
                consul.borrow_mut().stop()
            } else {
                consul.borrow_mut().restart()
            }
        },
    );
    let reqs = consul.borrow().requests();
    assert!(!reqs.is_empty());
    assert!(
        !gw.all_output().contains("s3cr3t-token"),
        "the Consul token reached the log"
    );
}

#[test]
fn consul_unreachable_at_start_is_logged_with_its_address_and_the_gateway_keeps_serving() {
    let port = free_port();
    let sink = LineSink::start();
    let consul_addr = format!("127.0.0.1:{port}");
    let (gw, http) = gateway(
        &["-destinations", &sink.addr(), "-key-sync-interval", "1"],
        &[("CONSUL_HTTP_ADDR", &consul_addr)],
    );
    assert_eq!(ingest(&http, "key-z", "a.b 1 2\n"), 401);
    assert!(
        gw.wait_log(&consul_addr, secs(5)),
        "the error names the agent: {}",
        gw.all_output()
    );
    assert!(
        gw.wait_log("API key sync failed, keeping 0 cached keys", secs(5)),
        "{}",
        gw.all_output()
    );
    assert!(gw.is_running());
    let ping = http_post(&http, "/ping", &[("X-Polymur-Key", "key-z")], vec![]);
    assert_eq!((ping.status, ping.body.as_str()), (401, "invalid key"));
}
