//! The `pgw-key` binary end to end, against the in-test Consul agent, a real etcd and
//! a key file: PROTOCOL.md's output lines, key format, and non-zero exits on refusal.

use crate::consul_server::ConsulServer;
use crate::support::{secs, Etcd, Proc, RunOutput};

const BIN: &str = env!("CARGO_BIN_EXE_pgw-key");
const P: &str = "polymur/gateway/keys/";

/// How to point pgw-key at one store.
struct Target<'a> {
    args: Vec<String>,
    envs: Vec<(&'a str, String)>,
}

impl Target<'_> {
    fn run(&self, command: &[&str]) -> RunOutput {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend_from_slice(command);
        let envs: Vec<(&str, &str)> = self.envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = Proc::run(BIN, &args, &envs, secs(30));
        assert!(out.status.is_some(), "pgw-key {args:?} timed out");
        out
    }

    fn ok(&self, command: &[&str]) -> String {
        let out = self.run(command);
        assert!(out.success(), "pgw-key {command:?} failed: {out:?}");
        out.stdout
    }

    fn refused(&self, command: &[&str], message: &str) {
        let out = self.run(command);
        assert!(!out.success(), "pgw-key {command:?} should fail: {out:?}");
        assert_eq!(out.stderr.trim(), message, "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }
}

/// Returns the key from `Successfully <verb> <name> with key <key>`, checking its form.
fn key_from(stdout: &str, verb: &str, name: &str) -> String {
    let line = stdout.trim_end();
    let prefix = format!("Successfully {verb} {name} with key ");
    let key = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("unexpected output {line:?}"));
    assert_eq!(key.len(), 24, "key {key:?}");
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "key {key:?} is not lower-case hex"
    );
    key.to_string()
}

/// The whole command set against one store; `stored(name)` reads the store directly.
fn round_trip(t: &Target, stored: &dyn Fn(&str) -> Option<String>) {
    assert_eq!(t.ok(&["list", "names"]), "");

    let alice = key_from(&t.ok(&["create", "alice"]), "registered", "alice");
    assert_eq!(stored("alice").as_deref(), Some(alice.as_str()));
    let bob = key_from(&t.ok(&["create", "bob"]), "registered", "bob");
    assert_ne!(alice, bob);
    t.refused(&["create", "alice"], "Key alice already exists");
    assert_eq!(stored("alice").as_deref(), Some(alice.as_str()));

    assert_eq!(t.ok(&["list", "names"]), "alice\nbob\n");
    assert_eq!(
        t.ok(&["list", "all"]),
        format!("alice: {alice}\nbob: {bob}\n")
    );

    let alice2 = key_from(&t.ok(&["regen", "alice"]), "regenerated", "alice");
    assert_ne!(alice, alice2);
    assert_eq!(stored("alice").as_deref(), Some(alice2.as_str()));
    t.refused(&["regen", "carol"], "Key carol doesn't exist");
    assert_eq!(stored("carol"), None);

    assert_eq!(t.ok(&["delete", "alice"]), "Successfully deleted alice\n");
    assert_eq!(stored("alice"), None);
    t.refused(&["delete", "alice"], "Key alice doesn't exist");
    assert_eq!(t.ok(&["list", "names"]), "bob\n");
}

#[test]
fn consul_round_trip() {
    let server = ConsulServer::start();
    let t = Target {
        args: vec![],
        envs: vec![("CONSUL_HTTP_ADDR", server.addr())],
    };
    round_trip(&t, &|name| server.get(&format!("{P}{name}")));
}

#[test]
fn consul_token_from_environment() {
    let server = ConsulServer::start_with_token("t0ken");
    let t = Target {
        args: vec!["-key-store=consul".into()],
        envs: vec![
            ("CONSUL_HTTP_ADDR", server.url()),
            ("CONSUL_HTTP_TOKEN", "t0ken".into()),
        ],
    };
    let key = key_from(&t.ok(&["create", "alice"]), "registered", "alice");
    assert_eq!(t.ok(&["list", "all"]), format!("alice: {key}\n"));
    let requests = server.requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r.token.as_deref() == Some("t0ken")));

    // Without the token the listing is filtered by ACLs: an error, not "no keys".
    let anonymous = Target {
        args: vec![],
        envs: vec![("CONSUL_HTTP_ADDR", server.addr())],
    };
    let out = anonymous.run(&["list", "names"]);
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("ACL"), "{out:?}");
}

#[test]
fn consul_unreachable_fails_naming_the_agent() {
    let mut server = ConsulServer::start();
    server.stop();
    let t = Target {
        args: vec![],
        envs: vec![("CONSUL_HTTP_ADDR", server.addr())],
    };
    let out = t.run(&["create", "alice"]);
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains(&server.addr()), "{out:?}");
}

#[test]
fn etcd_round_trip() {
    let etcd = Etcd::start();
    // Go-style single-dash flags, as the original's users type them.
    let t = Target {
        args: vec![
            "-key-store".into(),
            "etcd".into(),
            format!("-etcd-endpoints=http://127.0.0.1:1,{}", etcd.endpoint()),
        ],
        envs: vec![],
    };
    round_trip(&t, &|name| etcd.get(&format!("{P}{name}")));

    // Flags from the environment work too.
    let t = Target {
        args: vec![],
        envs: vec![
            ("PGW_KEY_KEY_STORE", "etcd".into()),
            ("PGW_KEY_ETCD_ENDPOINTS", etcd.endpoint()),
        ],
    };
    assert_eq!(t.ok(&["list", "names"]), "bob\n");
}

#[test]
fn file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.txt");
    let t = Target {
        args: vec![
            "--key-store=file".into(),
            "-keys-file".into(),
            path.display().to_string(),
        ],
        envs: vec![],
    };
    let read = |name: &str| -> Option<String> {
        let text = std::fs::read_to_string(&path).ok()?;
        polymur::keys::file::parse(&text)
            .unwrap()
            .get(name)
            .cloned()
    };
    // A missing file is an empty store for `create` but an error for `list`.
    assert!(!t.run(&["list", "names"]).success());
    let key = key_from(&t.ok(&["create", "zed"]), "registered", "zed");
    assert_eq!(read("zed").as_deref(), Some(key.as_str()));
    assert_eq!(t.ok(&["delete", "zed"]), "Successfully deleted zed\n");
    round_trip(&t, &read);
}

#[test]
fn bad_names_and_usage_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.txt");
    let t = Target {
        args: vec![
            "-key-store=file".into(),
            format!("-keys-file={}", path.display()),
        ],
        envs: vec![],
    };
    for name in ["", "a/b", "a b"] {
        let out = t.run(&["create", name]);
        assert!(!out.success(), "{name:?}: {out:?}");
        assert!(out.stderr.contains("invalid key name"), "{out:?}");
    }
    assert!(!path.exists());
    assert!(!t.run(&["list", "everything"]).success());
    assert!(!t.run(&[]).success());
    let out = Target {
        args: vec!["-key-store=file".into()],
        envs: vec![],
    }
    .run(&["list", "names"]);
    assert!(out.stderr.contains("-keys-file"), "{out:?}");
}
