//! `-config FILE` in the running daemons: routing rules in the one pipeline, end to end
//! (three real carbon-caches, an archive sink, blackhole, rewrite), `-route-test -config`,
//! load errors at start and on SIGHUP, and the runtime API under a configuration.

use std::io::Write;

use polymur::rules::{Action, Rules};

use crate::support::*;

const RELAY: &str = env!("CARGO_BIN_EXE_polymur");

pub(crate) fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// A relay on `-config`, started or failed: its listen and api addresses.
fn relay(config: &str) -> (Proc, String, String) {
    let r = relay_on(config);
    (r.proc, r.listen, r.api)
}

/// A started relay on `-config` and its addresses.
pub(crate) struct Relay {
    pub proc: Proc,
    pub listen: String,
    pub api: String,
    pub admin: String,
}

/// Starts a relay on `-config` (and waits until its admin endpoint is up).
pub(crate) fn relay_on(config: &str) -> Relay {
    let (listen, api, stat, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let p = Proc::spawn(
        RELAY,
        &[
            "-listen-addr",
            &listen,
            "-api-addr",
            &api,
            "-stat-addr",
            &stat,
            "-admin-addr",
            &admin,
            "-config",
            config,
        ],
        &[],
    );
    assert!(
        p.wait_log("Admin HTTP started", secs(15)),
        "relay did not start: {}",
        p.all_output()
    );
    Relay {
        proc: p,
        listen,
        api,
        admin,
    }
}

/// The members (`host:port`) each name goes to and the names it goes under, by the
/// library's own decision for `config` (checked against carbon-c-relay in
/// `rules_conformance`): what the daemon must deliver.
fn expected(config: &str, line: &str) -> Vec<(String, String)> {
    let rules = Rules::from_str("e2e.conf", config).unwrap();
    let metric = line.split(' ').next().unwrap();
    let d = rules.route(metric.as_bytes(), line.as_bytes());
    let mut out = Vec::new();
    let mut placed = Vec::new();
    for (name, action) in d.actions() {
        if let Action::Cluster(c) = action {
            let cl = &rules.clusters[c];
            cl.placement(name, &mut placed);
            for &m in &placed {
                let member = cl.members[m].to_string();
                let hp = member
                    .rsplit_once(':')
                    .map_or(member.clone(), |(hp, inst)| {
                        if inst.parse::<u16>().is_ok() {
                            member.clone()
                        } else {
                            hp.to_string()
                        }
                    });
                out.push((hp, String::from_utf8_lossy(name).into_owned()));
            }
        }
    }
    out
}

/// One gateway, a 3-cluster config: carbon_ch over three real carbon-caches, a forward
/// archive, a blackholed junk prefix and a rewrite. Every line lands exactly where the
/// config says — read back from whisper and counted at the archive — and nowhere else.
#[test]
fn a_three_cluster_config_delivers_each_line_exactly_where_it_says() {
    let caches = [
        CarbonCache::start(),
        CarbonCache::start(),
        CarbonCache::start(),
    ];
    let archive = LineSink::start();
    let config = format!(
        "# e2e\ncluster caches carbon_ch\n    {}=a\n    {}=b\n    {}=c\n    ;\n\
         cluster archive forward {};\n\
         match ^dev\\.junk\\. send to blackhole;\n\
         rewrite ^dev\\.old\\.(.*) into dev.new.\\1;\n\
         match * send to archive;\n\
         match ^dev\\. send to caches stop;\n",
        caches[0].line_addr(),
        caches[1].line_addr(),
        caches[2].line_addr(),
        archive.addr()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "relay.conf", &config);
    let gw = Gateway::start(&["-dev-mode", "-key-prefix", "-config", &path]);

    let ts = now_ts() - 30;
    let mut body = String::new();
    for i in 0..12 {
        body.push_str(&format!(
            "app.s{i} {i} {ts}\nold.s{i} {i} {ts}\njunk.s{i} {i} {ts}\n"
        ));
    }
    let r = gw.ingest("123", &body);
    assert_eq!((r.status, r.body.as_str()), (200, "Batch Received\n"));

    // What the rules say, line by line, after the key prefix.
    let mut per_cache: Vec<Vec<String>> = vec![Vec::new(); 3];
    let mut archived = Vec::new();
    for line in body.lines() {
        let prefixed = format!("dev.{line}");
        for (member, name) in expected(&config, &prefixed) {
            if member == archive.addr() {
                archived.push(format!("{name} {}", line.split_once(' ').unwrap().1));
            } else {
                let k = caches.iter().position(|c| c.line_addr() == member).unwrap();
                per_cache[k].push(name);
            }
        }
    }
    assert_eq!(
        archived.len(),
        24,
        "app and old lines are archived, junk is not"
    );
    assert!(archive.wait_count(24, secs(20)));
    let mut got = archive.lines();
    got.sort();
    archived.sort();
    assert_eq!(
        got, archived,
        "the archive holds every non-junk line, renamed"
    );
    let stored: usize = per_cache.iter().map(Vec::len).sum();
    assert_eq!(stored, 24, "each non-junk series on exactly one cache");
    for (cache, want) in caches.iter().zip(&mut per_cache) {
        want.sort();
        let got = cache.wait_metrics(want.len(), secs(30));
        assert_eq!(&got, want, "carbon log:\n{}", cache.log_tail());
    }
    assert_eq!(archive.wait_idle(millis(500), secs(5)), 24, "nothing twice");

    let m = http_get(&gw.admin, "/metrics", &[]).unwrap().body;
    for want in [
        "polymur_route_blackholed_total 12",
        "polymur_route_cluster_lines_total{cluster=\"archive\"} 24",
        "polymur_route_cluster_lines_total{cluster=\"caches\"} 24",
    ] {
        assert!(m.contains(want), "{want} in /metrics:\n{m}");
    }
}

/// `-route-test -config FILE` prints the rules' dry run for full lines and bare names.
#[test]
fn route_test_with_a_config_prints_each_name_and_its_members() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "t.conf",
        "cluster c carbon_ch 127.0.0.1:2104=a 127.0.0.1:2204=b;\ncluster f forward 127.0.0.1:2003;\n\
         match ^junk send to blackhole;\nrewrite ^old\\.(.*) into new.\\1;\n\
         match * validate ^[0-9.]+\\ [0-9]+$ else drop send to f;\nmatch * send to c;\n",
    );
    let (p, mut stdin) = Proc::spawn_with_stdin(RELAY, &["-route-test", "-config", &path], &[]);
    stdin
        .write_all(b"junk.a 1 2\nold.a 1 2\nold.b x 2\nbare.name\n")
        .unwrap();
    drop(stdin);
    let status = p.wait_exit(secs(20)).expect("dry run exits");
    assert!(status.success(), "{}", p.stderr_text());
    let rules = Rules::load(&path).unwrap();
    let want: Vec<String> = ["junk.a 1 2", "old.a 1 2", "old.b x 2", "bare.name"]
        .iter()
        .flat_map(|l| polymur::rules::dry_run(&rules, l))
        .collect();
    assert_eq!(p.stdout_lines(), want);
    assert_eq!(want[0], "junk.a\tjunk.a\tblackhole");
    assert!(
        want[1].starts_with("old.a\tnew.a\t127.0.0.1:2003,"),
        "{}",
        want[1]
    );
}

/// A configuration error at start: exit 1 with file:line:column.
#[test]
fn a_config_error_at_start_exits_1_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "bad.conf",
        "cluster a forward 127.0.0.1:2003;\nmatch * send to nope;\n",
    );
    let out = Proc::run(
        RELAY,
        &["-config", &path, "-listen-addr", "127.0.0.1:0"],
        &[],
        secs(20),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("{path}:2:17"))
            && out.stderr.contains("unknown cluster 'nope'"),
        "{}",
        out.stderr
    );
}

/// SIGHUP: a broken file keeps the running rules (and says where it is broken); a good
/// one replaces rules and destinations at once. putdest is refused under -config.
#[test]
fn sighup_reloads_the_config_atomically_and_keeps_it_on_error() {
    let (first, second) = (LineSink::start(), LineSink::start());
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "r.conf",
        &format!(
            "cluster one forward {};\nmatch * send to one;\n",
            first.addr()
        ),
    );
    let (p, listen, api) = relay(&path);
    let ts = now_ts();
    send_lines(&listen, &format!("a.1 1 {ts}\n")).unwrap();
    assert!(first.wait_count(1, secs(10)));

    let reply = tcp_request(&api, &format!("putdest {}", second.addr())).unwrap();
    assert!(reply.contains("-config"), "putdest under -config: {reply}");

    std::fs::write(
        &path,
        "cluster one forward 127.0.0.1:1;\nmatch * send to two;\n",
    )
    .unwrap();
    p.signal("HUP");
    assert!(
        p.wait_log("keeping the running configuration", secs(10)),
        "{}",
        p.all_output()
    );
    assert!(p.has_log(&format!("{path}:2:17")), "{}", p.all_output());
    send_lines(&listen, &format!("a.2 2 {ts}\n")).unwrap();
    assert!(
        first.wait_count(2, secs(10)),
        "the running rules still route"
    );

    std::fs::write(
        &path,
        format!(
            "cluster two forward {};\nmatch * send to two;\n",
            second.addr()
        ),
    )
    .unwrap();
    p.signal("HUP");
    assert!(
        p.wait_log("routing rules reloaded", secs(10)),
        "{}",
        p.all_output()
    );
    send_lines(&listen, &format!("a.3 3 {ts}\n")).unwrap();
    assert!(second.wait_count(1, secs(10)), "the new rules route");
    assert_eq!(second.lines(), vec![format!("a.3 3 {ts}")]);
    assert_eq!(
        first.wait_idle(millis(300), secs(5)),
        2,
        "the old cluster gets nothing new"
    );
}

/// `failover` and `any_of` move a down member's share — its queued lines too — to the
/// live members, and give it back when it returns; the lines moved are not routed again
/// through the rules (the archive, another cluster, gets each line once).
#[test]
fn failover_and_any_of_move_a_down_members_share_and_give_it_back() {
    let mut primary = LineSink::start();
    let backup = LineSink::start();
    let mut any = [LineSink::start(), LineSink::start(), LineSink::start()];
    let archive = LineSink::start();
    primary.stop();
    any[1].stop();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "fo.conf",
        &format!(
            "cluster fo failover {} {};\ncluster any any_of {} {} {};\ncluster archive forward {};\n\
             match ^fo\\. send to fo;\nmatch ^any\\. send to any;\nmatch * send to archive;\n",
            primary.addr(),
            backup.addr(),
            any[0].addr(),
            any[1].addr(),
            any[2].addr(),
            archive.addr()
        ),
    );
    let (p, listen, _api) = relay(&path);
    let ts = now_ts();
    let fo: Vec<String> = (0..100).map(|i| format!("fo.m{i} 1 {ts}")).collect();
    let an: Vec<String> = (0..300).map(|i| format!("any.m{i} 1 {ts}")).collect();
    send_lines(&listen, &(fo.join("\n") + "\n" + &an.join("\n") + "\n")).unwrap();
    assert!(
        p.wait_log_count("reconnects: down", 2, secs(20)),
        "{}",
        p.all_output()
    );
    assert!(backup.wait_count(100, secs(10)), "{}", p.all_output());
    let mut got = backup.lines();
    got.sort();
    let mut want = fo.clone();
    want.sort();
    assert_eq!(got, want, "the primary's queued lines, once, on the backup");
    assert!(wait_until(secs(10), || any[0].count() + any[2].count() == 300));
    let mut got: Vec<String> = any.iter().flat_map(|s| s.lines()).collect();
    got.sort();
    let mut want = an.clone();
    want.sort();
    assert_eq!(got, want, "any_of: every line once on the live members");
    assert_eq!(
        archive.wait_idle(millis(500), secs(10)),
        400,
        "moved lines are not routed again"
    );

    primary.restart();
    any[1].restart();
    assert!(
        p.wait_log_count("rejoins", 2, secs(20)),
        "{}",
        p.all_output()
    );
    backup.clear();
    any.iter().for_each(|s| s.clear());
    send_lines(&listen, &format!("fo.back 2 {ts}\n")).unwrap();
    let back: String = (0..300).map(|i| format!("any.back{i} 2 {ts}\n")).collect();
    send_lines(&listen, &back).unwrap();
    assert!(primary.wait_count(1, secs(10)), "the primary is back");
    assert!(wait_until(secs(10), || any
        .iter()
        .map(|s| s.count())
        .sum::<usize>()
        == 300));
    assert!(
        any[1].count() > 0,
        "the returned any_of member gets its share back"
    );
    assert_eq!(backup.wait_idle(millis(300), secs(5)), 0);
}
