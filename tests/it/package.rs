//! The Debian package: the asset list of Cargo.toml's `[package.metadata.deb]` (what
//! `cargo deb` packs in scripts/package) is staged with this build's binaries and the
//! documentation they generate, packed with `dpkg-deb --build`, unpacked into a
//! throwaway root with `dpkg -x`, and checked there: files and modes, binaries that
//! run, environment files whose every variable is a real flag and whose side ports
//! do not collide, and systemd units that `systemd-analyze verify` accepts.
//!
//! The test does not run cargo-deb itself: installing it compiles for minutes, and
//! the release build it packs would double the test's build. What it checks is the
//! same asset list and the same files.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BINS: [(&str, &str); 4] = [
    ("polymur-gateway", env!("CARGO_BIN_EXE_polymur-gateway")),
    ("polymur-proxy", env!("CARGO_BIN_EXE_polymur-proxy")),
    ("polymur", env!("CARGO_BIN_EXE_polymur")),
    ("pgw-key", env!("CARGO_BIN_EXE_pgw-key")),
];
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// One `[source, destination, mode]` line of the deb metadata.
struct Asset {
    src: String,
    dest: String,
    mode: u32,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `assets = [...]` lines of `[package.metadata.deb]` (one asset per line, as the
/// comment in Cargo.toml asks).
fn assets() -> Vec<Asset> {
    let toml = fs::read_to_string(Path::new(MANIFEST_DIR).join("Cargo.toml")).unwrap();
    let deb = toml
        .split("[package.metadata.deb]")
        .nth(1)
        .expect("Cargo.toml has [package.metadata.deb]");
    let list = deb.split("assets = [").nth(1).expect("deb assets");
    let list = &list[..list.find("\n]").expect("end of assets")];
    list.lines()
        .filter(|l| l.trim_start().starts_with('['))
        .map(|l| {
            let f: Vec<&str> = l.split('"').collect();
            assert!(f.len() >= 7, "asset line not [src, dest, mode]: {l}");
            Asset {
                src: f[1].to_string(),
                dest: f[3].to_string(),
                mode: u32::from_str_radix(f[5], 8).expect("octal mode"),
            }
        })
        .collect()
}

/// Where an asset's source is in this build: the test's binaries for
/// `target/release/*`, freshly generated docs for `target/docgen/*`.
fn source(src: &str, docgen: &Path) -> PathBuf {
    if let Some(bin) = src.strip_prefix("target/release/") {
        let (_, path) = BINS
            .iter()
            .find(|(b, _)| *b == bin)
            .expect("a packaged binary");
        PathBuf::from(path)
    } else if let Some(rest) = src.strip_prefix("target/docgen/") {
        docgen.join(rest)
    } else {
        Path::new(MANIFEST_DIR).join(src)
    }
}

/// What scripts/package does before `cargo deb`: each binary writes its docs, man
/// pages are gzipped.
fn generate_docs(dir: &Path) {
    for (_, bin) in BINS {
        run(Command::new(bin).env("POLYMUR_GENERATE_DOCS", dir));
    }
    for e in fs::read_dir(dir.join("man")).unwrap() {
        run(Command::new("gzip").arg("-9n").arg(e.unwrap().path()));
    }
}

/// Stages the assets plus DEBIAN/ (control, conffiles, maintainer scripts) and packs them.
fn build_deb(work: &Path) -> PathBuf {
    let docgen = work.join("docgen");
    generate_docs(&docgen);
    let stage = work.join("stage");
    let mut conffiles = String::new();
    for a in assets() {
        let from = source(&a.src, &docgen);
        let name = from.file_name().unwrap().to_str().unwrap().to_string();
        let dest = if a.dest.ends_with('/') {
            format!("{}{name}", a.dest)
        } else {
            a.dest.clone()
        };
        let to = stage.join(&dest);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        fs::set_permissions(&to, fs::Permissions::from_mode(a.mode)).unwrap();
        if a.src.starts_with("target/release/") {
            // As cargo-deb does: the debug build's symbols would make packing take minutes.
            run(Command::new("strip").arg("--strip-debug").arg(&to));
        }
        if dest.starts_with("etc/") {
            conffiles.push_str(&format!("/{dest}\n"));
        }
    }
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian).unwrap();
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    let control = format!(
        "Package: polymur\nVersion: {}-1\nArchitecture: {}\nMaintainer: polymur-rs developers\n\
         Depends: libc6\nSection: net\nPriority: optional\nDescription: {}\n",
        env!("CARGO_PKG_VERSION"),
        arch.trim(),
        env!("CARGO_PKG_DESCRIPTION")
    );
    fs::write(debian.join("control"), control).unwrap();
    fs::write(debian.join("conffiles"), conffiles).unwrap();
    for script in ["postinst", "prerm", "postrm"] {
        let to = debian.join(script);
        fs::copy(
            Path::new(MANIFEST_DIR)
                .join("packaging/debian")
                .join(script),
            &to,
        )
        .unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let deb = work.join("polymur.deb");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&stage)
        .arg(&deb));
    deb
}

#[test]
fn the_package_installs_binaries_units_environment_docs_and_completions() {
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        println!("package test SKIPPED: dpkg-deb is not installed (not a Debian system)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let deb = build_deb(work.path());
    let root = work.path().join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    println!("{contents}");

    for (bin, _) in BINS {
        let path = root.join("usr/bin").join(bin);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{bin}");
        let version = run(Command::new(&path).arg("--version"));
        assert_eq!(
            version.trim(),
            format!("{bin} {}", env!("CARGO_PKG_VERSION"))
        );
        let man =
            run(Command::new("zcat").arg(root.join(format!("usr/share/man/man1/{bin}.1.gz"))));
        assert!(man.contains(&format!(".TH {bin} 1")), "{bin} man page");
        for f in [
            format!("usr/share/bash-completion/completions/{bin}"),
            format!("usr/share/zsh/vendor-completions/_{bin}"),
            format!("usr/share/fish/vendor_completions.d/{bin}.fish"),
        ] {
            let text = fs::read_to_string(root.join(&f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(text.contains(bin), "{f}");
        }
    }
    for f in ["keys", "tenants", "rules.conf"] {
        assert!(
            root.join("usr/share/doc/polymur/examples")
                .join(f)
                .is_file(),
            "example {f}"
        );
    }
    // The proxy's file holds its API key: root only.
    let mode = fs::metadata(root.join("etc/default/polymur-proxy"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let conffiles = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles"));
    for d in ["polymur-gateway", "polymur-proxy", "polymur"] {
        assert!(
            conffiles.contains(&format!("/etc/default/{d}")),
            "{conffiles}"
        );
    }
    check_environment_files(&root);
    check_units(&root);
}

/// Every uncommented `POLYMUR*` variable is a flag the daemon knows (its `--help`
/// names the variable), and no two daemons share a side port.
fn check_environment_files(root: &Path) {
    let mut side_ports: HashMap<String, String> = HashMap::new();
    for daemon in ["polymur-gateway", "polymur-proxy", "polymur"] {
        let help = run(Command::new(root.join("usr/bin").join(daemon)).arg("--help"));
        let text = fs::read_to_string(root.join("etc/default").join(daemon)).unwrap();
        let vars: Vec<(&str, &str)> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
            .filter_map(|l| l.split_once('='))
            .collect();
        assert!(!vars.is_empty(), "{daemon}: no settings");
        for (name, value) in vars {
            assert!(
                help.contains(&format!("[env: {name}="))
                    || help.contains(&format!("[env: {name}]")),
                "{daemon}: /etc/default/{daemon} sets {name}, which is not one of its flags"
            );
            if name.ends_with("_API_ADDR")
                || name.ends_with("_STAT_ADDR")
                || name.ends_with("_ADMIN_ADDR")
            {
                let port = value.rsplit(':').next().unwrap().to_string();
                if let Some(other) = side_ports.insert(port.clone(), format!("{daemon} {name}")) {
                    panic!("side port {port}: {other} and {daemon} {name} collide");
                }
            }
        }
    }
    assert_eq!(side_ports.len(), 8, "{side_ports:?}");
}

/// The units' own claims (binary, environment file, state directory for the spool),
/// then `systemd-analyze verify` on copies whose paths point into the throwaway root.
fn check_units(root: &Path) {
    let units = root.join("lib/systemd/system");
    let verify_dir = root.join("verify");
    fs::create_dir_all(&verify_dir).unwrap();
    let mut names = HashSet::new();
    for (daemon, spool_var) in [
        ("polymur-gateway", "POLYMUR_GW_SPOOL_DIR"),
        ("polymur-proxy", "POLYMUR_PROXY_SPOOL_DIR"),
        ("polymur", "POLYMUR_SPOOL_DIR"),
    ] {
        let unit = fs::read_to_string(units.join(format!("{daemon}.service"))).unwrap();
        for line in [
            "Type=notify".to_string(),
            format!("ExecStart=/usr/bin/{daemon}"),
            format!("EnvironmentFile=/etc/default/{daemon}"),
            format!("StateDirectory={daemon}"),
            "DynamicUser=yes".into(),
            "ProtectSystem=strict".into(),
            "NoNewPrivileges=yes".into(),
            "AmbientCapabilities=CAP_NET_BIND_SERVICE".into(),
        ] {
            assert!(
                unit.lines().any(|l| l == line),
                "{daemon}.service lacks {line}"
            );
        }
        assert!(
            unit.lines().any(|l| l.starts_with("WatchdogSec=")),
            "{daemon}: WatchdogSec"
        );
        let env = fs::read_to_string(root.join("etc/default").join(daemon)).unwrap();
        assert!(
            env.lines()
                .any(|l| l.starts_with(&format!("{spool_var}=/var/lib/{daemon}/"))),
            "{daemon}: the spool is on by default, in the state directory"
        );
        let r = root.display().to_string();
        let local = unit
            .replace("/usr/bin/", &format!("{r}/usr/bin/"))
            .replace("/etc/default/", &format!("{r}/etc/default/"));
        fs::write(verify_dir.join(format!("{daemon}.service")), local).unwrap();
        names.insert(daemon);
    }
    let gateway = fs::read_to_string(units.join("polymur-gateway.service")).unwrap();
    assert!(gateway.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    verify_units(&verify_dir, &names);
}

fn verify_units(dir: &Path, names: &HashSet<&str>) {
    let files: Vec<PathBuf> = names
        .iter()
        .map(|n| dir.join(format!("{n}.service")))
        .collect();
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(&files)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            println!("systemd-analyze verify SKIPPED: cannot run systemd-analyze ({e}); install the systemd package");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 even for settings it ignores: any line about our units is a failure.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.contains(&*dir.to_string_lossy())
                || names.iter().any(|n| l.starts_with(&format!("{n}.service")))
        })
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
    println!("systemd-analyze verify: {} units OK", files.len());
}
