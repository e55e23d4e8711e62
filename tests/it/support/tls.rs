//! Self-signed certificate for HTTPS tests, made by the `openssl` CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A self-signed certificate (CN=localhost, SAN IP:127.0.0.1 and DNS:localhost) and its key,
/// as PEM files. The certificate doubles as the CA a client trusts.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Writes `cert.pem` and `key.pem` into `dir` (which must exist) with exactly the command
    /// operators use (TESTING.md). Note: openssl marks this certificate `CA:TRUE`, which strict
    /// webpki clients refuse as a server certificate (`CaUsedAsEndEntity`); see
    /// `tls_client_config`. Panics with openssl's output on failure.
    pub fn generate(dir: &Path) -> TlsFiles {
        Self::openssl(dir, "cert.pem", "key.pem", &[])
    }

    /// Like `generate`, plus `basicConstraints=critical,CA:FALSE`, so plain webpki
    /// verification (any stock rustls client) accepts it. Files `leaf-cert.pem`/`leaf-key.pem`.
    pub fn generate_leaf(dir: &Path) -> TlsFiles {
        Self::openssl(
            dir,
            "leaf-cert.pem",
            "leaf-key.pem",
            &["-addext", "basicConstraints=critical,CA:FALSE"],
        )
    }

    fn openssl(dir: &Path, cert_name: &str, key_name: &str, extra: &[&str]) -> TlsFiles {
        let cert = dir.join(cert_name);
        let key = dir.join(key_name);
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-nodes", "-days", "2", "-newkey", "rsa:2048", "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl (Debian package openssl)");
        assert!(
            out.status.success() && cert.exists() && key.exists(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TlsFiles { cert, key }
    }
}
