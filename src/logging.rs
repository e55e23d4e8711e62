//! Log set-up shared by the daemons: `tracing` to stderr, `RUST_LOG` to filter.

/// Installs the subscriber on stderr, level `info` unless `RUST_LOG` says
/// otherwise. `json` selects one JSON object per line (`-log-format json`) for log
/// shippers; anything else is the human text format.
pub fn init_with_format(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}

/// Installs rustls' ring provider as the process default, once; every TLS user
/// in the process (listeners, HTTP clients) then agrees on one provider.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
