//! Log set-up shared by the daemons: `tracing` to stderr, `RUST_LOG` to filter.

/// Installs the subscriber: `2016-07-29T14:16:13Z INFO message` lines on stderr,
/// level `info` unless `RUST_LOG` says otherwise.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs rustls' ring provider as the process default, once; every TLS user
/// in the process (listeners, HTTP clients) then agrees on one provider.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
