//! Log set-up shared by the daemons: `tracing` to stderr, `RUST_LOG` to filter.

use crate::config::LogFormat;

/// Installs the subscriber on stderr, level `info` unless `RUST_LOG` says
/// otherwise. [`LogFormat::Json`] (`-log-format json`) writes one JSON object per
/// line for log shippers; [`LogFormat::Text`] is the human format.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let _ = if format == LogFormat::Json {
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
