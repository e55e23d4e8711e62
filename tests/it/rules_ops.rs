//! Routing rules in operation (issue 13): `file` clusters as real destinations (what
//! lands in the file, rotation on SIGHUP, a file that cannot be written), the runtime API
//! on clusters under `-config`, per-rule counters, and the sections that cannot map.

use std::io::Write;

use crate::rules_pipeline::{relay_on, write_config};
use crate::support::*;

const RELAY: &str = env!("CARGO_BIN_EXE_polymur");

/// The file's lines once it holds `n` (at most 20 s).
fn wait_file_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let read = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    wait_until(secs(20), || read().len() >= n);
    read()
}

/// A `file` and a `file ip` cluster beside a TCP sink: every line lands in each file
/// exactly as carbon-c-relay writes it (the name after rewrites; `file ip` puts the
/// sender's address and a space in front), junk nowhere; after logrotate moves the
/// files and sends SIGHUP the new lines go to new files.
#[test]
fn file_clusters_append_lines_as_carbon_c_relay_writes_them_and_reopen_on_sighup() {
    let sink = LineSink::start();
    let dir = tempfile::tempdir().unwrap();
    let (plain, withip) = (dir.path().join("archive.log"), dir.path().join("ip.log"));
    let config = format!(
        "cluster archive file {};\ncluster debug file ip {};\ncluster tcp forward {};\n\
         match ^junk\\. send to blackhole;\nrewrite ^old\\.(.*) into new.\\1;\n\
         match * send to archive debug tcp;\n",
        plain.display(),
        withip.display(),
        sink.addr()
    );
    let path = write_config(&dir, "files.conf", &config);
    let r = relay_on(&path);
    let ts = now_ts();
    let mut body = String::new();
    let mut want = Vec::new();
    for i in 0..50 {
        body.push_str(&format!(
            "app.m{i} {i} {ts}\nold.m{i} {i} {ts}\njunk.m{i} {i} {ts}\n"
        ));
        want.push(format!("app.m{i} {i} {ts}"));
        want.push(format!("new.m{i} {i} {ts}"));
    }
    send_lines(&r.listen, &body).unwrap();
    assert!(sink.wait_count(100, secs(20)), "{}", r.proc.all_output());
    let mut got = wait_file_lines(&plain, 100);
    let mut got_ip = wait_file_lines(&withip, 100);
    got.sort();
    got_ip.sort();
    want.sort();
    assert_eq!(got, want, "the file cluster holds every line, renamed");
    let want_ip: Vec<String> = want.iter().map(|l| format!("127.0.0.1 {l}")).collect();
    assert_eq!(got_ip, want_ip, "file ip: the sender's address first");
    let mut tcp = sink.lines();
    tcp.sort();
    assert_eq!(tcp, want, "the TCP cluster gets the same lines");

    // logrotate: move both files away, then SIGHUP.
    std::fs::rename(&plain, dir.path().join("archive.log.1")).unwrap();
    std::fs::rename(&withip, dir.path().join("ip.log.1")).unwrap();
    r.proc.signal("HUP");
    assert!(r.proc.wait_log("routing rules reloaded", secs(10)));
    send_lines(&r.listen, &format!("after.rotate 1 {ts}\n")).unwrap();
    assert_eq!(
        wait_file_lines(&plain, 1),
        vec![format!("after.rotate 1 {ts}")]
    );
    assert_eq!(
        wait_file_lines(&withip, 1),
        vec![format!("127.0.0.1 after.rotate 1 {ts}")]
    );
    let old = std::fs::read_to_string(dir.path().join("archive.log.1")).unwrap();
    assert_eq!(old.lines().count(), 100, "the rotated file got nothing new");
}

/// A file cluster on a full disk (`/dev/full`: every write fails with ENOSPC): the TCP
/// cluster still gets every line, the failed lines are counted on /metrics, and the
/// failure is logged once for the whole burst, not per line or per batch.
#[test]
fn a_file_that_cannot_be_written_is_counted_logged_once_and_blocks_no_other_cluster() {
    let sink = LineSink::start();
    let dir = tempfile::tempdir().unwrap();
    let missing = std::path::PathBuf::from("/dev/full");
    let config = format!(
        "cluster archive file {};\ncluster tcp forward {};\nmatch * send to archive tcp;\n",
        missing.display(),
        sink.addr()
    );
    let path = write_config(&dir, "broken.conf", &config);
    let r = relay_on(&path);
    let ts = now_ts();
    for batch in 0..5 {
        let body: String = (0..200)
            .map(|i| format!("b{batch}.m{i} {i} {ts}\n"))
            .collect();
        send_lines(&r.listen, &body).unwrap();
        assert!(sink.wait_count(200 * (batch + 1), secs(20)));
    }
    let name = missing.display().to_string();
    let failed = format!(
        "polymur_dropped_points_total{{destination=\"{name}\",reason=\"write_failed\"}} 1000"
    );
    let metrics = || http_get(&r.admin, "/metrics", &[]).unwrap().body;
    assert!(
        wait_until(secs(10), || metrics().contains(&failed)),
        "{failed} in:\n{}",
        metrics()
    );
    assert_eq!(
        r.proc.log_count("write failed"),
        1,
        "{}",
        r.proc.all_output()
    );
    assert_eq!(sink.wait_idle(millis(300), secs(5)), 1000);
}

/// A file cluster whose path cannot be opened (its directory is missing) is a
/// configuration error like a syntax error: at start the daemon exits 1 naming the
/// cluster and the path; on SIGHUP it keeps the running rules. A daemon whose only
/// cluster is a file does not warn that it discards what it receives.
#[test]
fn a_file_cluster_that_cannot_be_opened_is_refused_at_start_and_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("archive.log");
    let bad = format!(
        "cluster archive file {};\nmatch * send to archive;\n",
        missing.display()
    );
    let path = write_config(&dir, "bad.conf", &bad);
    let out = Proc::run(
        RELAY,
        &[
            "-config",
            &path,
            "-listen-addr",
            "127.0.0.1:0",
            "-api-addr=",
            "-stat-addr=",
            "-admin-addr=",
        ],
        &[],
        secs(20),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{}", out.stderr);
    let name = missing.display().to_string();
    assert!(
        out.stderr.lines().any(|l| l.starts_with("polymur: ")
            && l.contains("cluster archive")
            && l.contains(&name)
            && l.contains("No such file or directory")),
        "{}",
        out.stderr
    );
    assert!(!missing.exists());

    let good = dir.path().join("good.log");
    let path = write_config(
        &dir,
        "good.conf",
        &format!(
            "cluster archive file {};\nmatch * send to archive;\n",
            good.display()
        ),
    );
    let r = relay_on(&path);
    assert!(!r.proc.has_log("discarded"), "{}", r.proc.all_output());
    let ts = now_ts();
    send_lines(&r.listen, &format!("a.1 1 {ts}\n")).unwrap();
    assert_eq!(wait_file_lines(&good, 1), vec![format!("a.1 1 {ts}")]);
    std::fs::write(&path, &bad).unwrap();
    r.proc.signal("HUP");
    assert!(
        r.proc
            .wait_log("keeping the running configuration", secs(10)),
        "{}",
        r.proc.all_output()
    );
    assert!(r.proc.has_log(&name), "{}", r.proc.all_output());
    send_lines(&r.listen, &format!("a.2 2 {ts}\n")).unwrap();
    assert_eq!(
        wait_file_lines(&good, 2),
        vec![format!("a.1 1 {ts}"), format!("a.2 2 {ts}")],
        "the running rules still write"
    );
}

/// `-route-test -config` with file clusters: the paths are printed as members, in the
/// order the library's decision (compared with carbon-c-relay in `rules_conformance`)
/// gives them.
#[test]
fn route_test_prints_file_cluster_paths() {
    let conf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rules/own/clusters.conf"
    );
    let (p, mut stdin) = Proc::spawn_with_stdin(RELAY, &["-route-test", "-config", conf], &[]);
    let input = ["app.x 1 2", "other.y9 1 2", "sys.z 1 2", "plain"];
    stdin.write_all(input.join("\n").as_bytes()).unwrap();
    drop(stdin);
    let status = p.wait_exit(secs(20)).expect("dry run exits");
    assert!(status.success(), "{}", p.stderr_text());
    let rules = polymur::rules::Rules::load(conf).unwrap();
    let want: Vec<String> = input
        .iter()
        .flat_map(|l| polymur::rules::dry_run(&rules, l))
        .collect();
    assert_eq!(p.stdout_lines(), want);
    let y9 = &want[1];
    assert!(
        y9.contains("/tmp/polymur-rules-archive.log")
            && y9.contains("/tmp/polymur-rules-a.log,/tmp/polymur-rules-b.log"),
        "{y9}"
    );
}

/// Under `-config` the runtime API works on clusters: `putdest NAME host:port` adds a
/// member (the hash ring is rebuilt and lines reach it), `getdest NAME` lists members,
/// `deldest NAME host:port` removes one; refusals say why.
#[test]
fn putdest_deldest_getdest_act_on_a_named_cluster_under_config() {
    let (a, b) = (LineSink::start(), LineSink::start());
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "cluster ring carbon_ch {}=a;\nmatch * send to ring;\n",
        a.addr()
    );
    let path = write_config(&dir, "api.conf", &config);
    let r = relay_on(&path);
    let api = |req: &str| tcp_request(&r.api, req).unwrap();

    let members = |reply: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(reply.trim()).unwrap();
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        members(&api("getdest ring")),
        vec![format!("{}:a", a.addr())]
    );
    assert!(api("putdest nope 127.0.0.1:9").contains("Unknown cluster: nope"));
    assert!(api(&format!("putdest {}", b.addr())).contains("putdest|deldest CLUSTER"));
    let reply = api(&format!("putdest ring {}=b", b.addr()));
    assert!(reply.starts_with("Registered destination"), "{reply}");
    assert_eq!(
        members(&api("getdest ring")),
        vec![format!("{}:a", a.addr()), format!("{}:b", b.addr())]
    );
    let all: serde_json::Value = serde_json::from_str(api("getdest").trim()).unwrap();
    assert_eq!(all["clusters"]["ring"]["kind"], "carbon_ch");

    let ts = now_ts();
    let body: String = (0..200).map(|i| format!("m.{i} {i} {ts}\n")).collect();
    send_lines(&r.listen, &body).unwrap();
    assert!(wait_until(secs(20), || a.count() + b.count() == 200));
    assert!(
        a.count() > 0 && b.count() > 0,
        "both members of the ring get lines"
    );

    let reply = api(&format!("deldest ring {}:a", a.addr()));
    assert!(reply.starts_with("Unregistered destination"), "{reply}");
    let last = api(&format!("deldest ring {}:b", b.addr()));
    assert!(last.contains("last member"), "{last}");
    let before = a.wait_idle(millis(300), secs(5));
    send_lines(&r.listen, &body).unwrap();
    assert!(wait_until(secs(20), || b.count() + before == 400));
    assert_eq!(a.wait_idle(millis(300), secs(5)), before, "a left the ring");
}

/// Per-rule counters: each match rule's matched, blackholed and dropped-by-validate
/// lines on /metrics and on the status page.
#[test]
fn per_rule_counters_show_matched_blackholed_and_dropped_lines() {
    let sink = LineSink::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "cluster tcp forward {};\n\
         match ^junk\\. send to blackhole;\n\
         match ^v\\. validate ^[0-9]+\\ [0-9]+$ else drop send to tcp stop;\n\
         match * send to tcp;\n",
        sink.addr()
    );
    let path = write_config(&dir, "counted.conf", &config);
    let r = relay_on(&path);
    let ts = now_ts();
    let mut body = String::new();
    for i in 0..10 {
        body.push_str(&format!(
            "junk.{i} 1 {ts}\nv.{i} {i} {ts}\nv.bad{i} 1.5 {ts}\n"
        ));
    }
    for i in 0..7 {
        body.push_str(&format!("other.{i} 1 {ts}\n"));
    }
    send_lines(&r.listen, &body).unwrap();
    // v.* lines: 10 valid (sent), 10 dropped; `stop` ends both (carbon-c-relay's rule).
    assert!(sink.wait_count(17, secs(20)));
    let m = http_get(&r.admin, "/metrics", &[]).unwrap().body;
    for (rule, line, expr, outcome, n) in [
        (0, 2, "^junk\\\\.", "matched", 10),
        (0, 2, "^junk\\\\.", "blackholed", 10),
        (1, 3, "^v\\\\.", "matched", 20),
        (1, 3, "^v\\\\.", "dropped", 10),
        (1, 3, "^v\\\\.", "blackholed", 0),
        (2, 4, "*", "matched", 7),
        (2, 4, "*", "dropped", 0),
    ] {
        let want = format!(
            "polymur_rule_lines_total{{rule=\"{rule}\",label=\"counted.conf:{line} {expr}\",outcome=\"{outcome}\"}} {n}"
        );
        assert!(m.contains(&want), "{want} in /metrics:\n{m}");
    }
    assert_eq!(sink.wait_idle(millis(300), secs(5)), 17);
    let page = http_get(&r.admin, "/", &[]).unwrap().body;
    assert!(
        page.contains("<td>1</td><td>counted.conf:3 ^v\\.</td><td>20</td><td>0</td><td>10</td>"),
        "{page}"
    );
}

/// `listen` and `statistics` sections cannot map onto polymur's own listeners and
/// self-metrics: the daemon refuses the file with one line (on stderr, besides the log)
/// naming the flags to use.
#[test]
fn listen_and_statistics_sections_are_refused_naming_the_flags_to_use() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, flag) in [
        (
            "listen.conf",
            "listen type linemode 2003 proto tcp;\ncluster c forward 127.0.0.1:2003;\nmatch * send to c;\n",
            "-listen-addr",
        ),
        (
            "stats.conf",
            "statistics submit every 60 seconds;\ncluster c forward 127.0.0.1:2003;\nmatch * send to c;\n",
            "-metrics-flush",
        ),
    ] {
        let path = write_config(&dir, name, text);
        let out = Proc::run(
            RELAY,
            &["-config", &path, "-listen-addr", "127.0.0.1:0"],
            &[],
            secs(20),
        );
        assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{}", out.stderr);
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("polymur: ") && l.contains("cannot be mapped"))
            .collect();
        assert_eq!(lines.len(), 1, "{}", out.stderr);
        assert!(lines[0].contains(&path) && lines[0].contains(flag), "{}", lines[0]);
    }
}

/// The gateway writes `file ip` lines too: the HTTP peer's address (never a header the
/// client sets), then the line after the key prefix.
#[test]
fn the_gateway_writes_file_ip_lines_with_the_http_peer() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gw-ip.log");
    let config = format!(
        "cluster debug file ip {};\nmatch * send to debug;\n",
        log.display()
    );
    let path = write_config(&dir, "gw.conf", &config);
    let gw = Gateway::start(&["-dev-mode", "-key-prefix", "-config", &path]);
    let ts = now_ts();
    let body = format!("a.b 1 {ts}\nc.d 2 {ts}\n");
    let r = gw.ingest("123", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let mut got = wait_file_lines(&log, 2);
    got.sort();
    assert_eq!(
        got,
        vec![
            format!("127.0.0.1 dev.a.b 1 {ts}"),
            format!("127.0.0.1 dev.c.d 2 {ts}")
        ]
    );
}

/// A rewrite can make a name no carbon-cache takes: empty, with a blank (carbon would see
/// four fields), or so long the line passes carbon's 16 384 bytes (carbon-cache drops the
/// connection on such a line). carbon-c-relay sends those on; polymur drops them, counts
/// them, logs one example, and delivers every other line; `-route-test` says `drop`.
#[test]
fn a_rewrite_that_makes_an_invalid_name_drops_only_that_line_and_counts_it() {
    let sink = LineSink::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "cluster tcp forward {};\n\
         rewrite ^sp\\.(.*)$ into \"has space.\\1\";\n\
         rewrite ^em\\.(.*)$ into \\1;\n\
         rewrite ^big\\.(.*)$ into \\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1;\n\
         rewrite ^ok\\.(.*)$ into fine.\\1;\n\
         match * send to tcp;\n",
        sink.addr()
    );
    let path = write_config(&dir, "invalid.conf", &config);
    let r = relay_on(&path);
    let ts = now_ts();
    let long = "x".repeat(1000);
    let mut body = String::new();
    let mut want = Vec::new();
    for i in 0..20 {
        body.push_str(&format!(
            "sp.a{i} 1 {ts}\nem. {i} {ts}\nbig.{long}{i} 1 {ts}\nok.m{i} {i} {ts}\nplain.m{i} {i} {ts}\n"
        ));
        want.push(format!("fine.m{i} {i} {ts}"));
        want.push(format!("plain.m{i} {i} {ts}"));
    }
    // Twice: the second pass replays the remembered decisions.
    send_lines(&r.listen, &body).unwrap();
    send_lines(&r.listen, &body).unwrap();
    want.extend(want.clone());
    assert!(
        sink.wait_count(want.len(), secs(20)),
        "{}",
        r.proc.all_output()
    );
    assert_eq!(sink.wait_idle(millis(500), secs(5)), want.len());
    let mut got = sink.lines();
    got.sort();
    want.sort();
    assert_eq!(got, want, "only the lines whose names stay valid arrive");
    let m = http_get(&r.admin, "/metrics", &[]).unwrap().body;
    assert!(
        m.contains("polymur_route_rewrite_invalid_total 120"),
        "3 x 20 x 2 lines counted:\n{m}"
    );
    assert!(
        r.proc.wait_log("which no carbon-cache takes", secs(5)),
        "{}",
        r.proc.all_output()
    );

    let (p, mut stdin) = Proc::spawn_with_stdin(RELAY, &["-route-test", "-config", &path], &[]);
    stdin
        .write_all(format!("sp.a 1 2\nem. 1 2\nbig.{long} 1 2\nok.a 1 2\n").as_bytes())
        .unwrap();
    drop(stdin);
    assert!(p.wait_exit(secs(20)).is_some_and(|s| s.success()));
    let out = p.stdout_lines();
    assert_eq!(out.len(), 4, "{out:?}");
    // Inside quotes a backslash escapes the next character, as in carbon-c-relay.
    assert_eq!(out[0], "sp.a\thas space.1\tdrop");
    assert_eq!(out[1], "em.\t\tdrop");
    assert!(
        out[2].ends_with("\tdrop") && out[2].len() > 20_000,
        "{}",
        &out[2][..80]
    );
    assert_eq!(out[3], format!("ok.a\tfine.a\t{}", sink.addr()));
}
