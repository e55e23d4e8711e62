//! Side ports (runtime API, runstats, admin HTTP) follow one policy: a port the operator
//! set that cannot be bound is fatal, with the flag named; a busy *default* port is a
//! warning and the daemon runs without that endpoint — so a gateway and a proxy on one
//! host, both on the original's default `localhost:2020`, both start.

use std::net::TcpListener;

use crate::support::*;

/// Holds `localhost:2020` (the original's runstats default) busy for the test; if
/// something else on the machine already holds it, it is busy all the same.
fn hold_default_runstats_port() -> Option<TcpListener> {
    TcpListener::bind("127.0.0.1:2020").ok()
}

#[test]
fn a_busy_default_side_port_is_a_warning_not_an_exit() {
    let _held = hold_default_runstats_port();
    let sink = LineSink::start();
    let (http, admin) = (free_port(), format!("127.0.0.1:{}", free_port()));
    let args = [
        "-dev-mode".to_string(),
        "-listen-addr=127.0.0.1".to_string(),
        format!("-listen-http-port={http}"),
        "-api-addr=".to_string(),
        format!("-admin-addr={admin}"),
        format!("-destinations={}", sink.addr()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Proc::spawn(GATEWAY_BIN, &args, &[]);
    assert!(
        gw.wait_log("Admin HTTP started", secs(20)),
        "gateway did not start with the default runstats port busy: {}",
        gw.all_output()
    );
    assert!(gw.has_log("runstats not started"), "{}", gw.all_output());
    assert!(gw.has_log("-stat-addr"), "{}", gw.all_output());
    // And it serves data.
    let line = format!("side.port 1 {}", now_ts());
    let r = http_post(
        &format!("127.0.0.1:{http}"),
        "/ingest",
        &[("X-Polymur-Key", "123")],
        gzip(format!("{line}\n").as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(sink.wait_count(1, secs(10)));
    assert_eq!(sink.lines(), vec![line]);
}

#[test]
fn a_busy_side_port_the_operator_set_is_fatal_and_named() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let http = free_port();
    let base = [
        "-dev-mode".to_string(),
        "-listen-addr=127.0.0.1".to_string(),
        format!("-listen-http-port={http}"),
        "-api-addr=".to_string(),
        "-stat-addr=".to_string(),
        "-console-out".to_string(),
    ];
    for (flag, env) in [
        ("-stat-addr", "POLYMUR_GW_STAT_ADDR"),
        ("-admin-addr", "POLYMUR_GW_ADMIN_ADDR"),
        ("-api-addr", "POLYMUR_GW_API_ADDR"),
    ] {
        // On the command line (in place of the base's empty value) ...
        let mut args: Vec<String> = base
            .iter()
            .filter(|a| !a.starts_with(&format!("{flag}=")))
            .cloned()
            .collect();
        args.push(format!("{flag}={busy_addr}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = Proc::run(GATEWAY_BIN, &args, &[], secs(20));
        assert!(!out.success(), "{flag}: started on a busy port: {out:?}");
        assert!(out.stderr.contains(flag), "{flag}: {}", out.stderr);
        assert!(out.stderr.contains(&busy_addr), "{flag}: {}", out.stderr);
        // ... and through the environment.
        let args: Vec<&str> = base
            .iter()
            .map(String::as_str)
            .filter(|a| !a.starts_with(&format!("{flag}=")))
            .collect();
        let out = Proc::run(GATEWAY_BIN, &args, &[(env, busy_addr.as_str())], secs(20));
        assert!(!out.success(), "{env}: started on a busy port: {out:?}");
        assert!(out.stderr.contains(flag), "{env}: {}", out.stderr);
    }
    drop(busy);
}
