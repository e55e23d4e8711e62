//! polymur-proxy: flags and `main`. The daemon is [`polymur::proxy`].

use clap::Parser;

/// The proxy's command line: its flags, each also read from `POLYMUR_PROXY_<FLAG>`.
#[derive(Parser)]
#[command(
    name = "polymur-proxy",
    version,
    about = "Receives Graphite plaintext metrics over TCP and forwards them in gzip'ed batches to a polymur-gateway over HTTPS",
    after_help = "Flags may be written Go-style with one dash (-gateway=https://gw.example.com, -verbose)."
)]
struct Cli {
    #[command(flatten)]
    config: polymur::proxy::ProxyConfig,
}

fn main() -> std::process::ExitCode {
    let Cli { config } = polymur::config::parse("POLYMUR_PROXY_", std::env::args_os());
    polymur::logging::init(config.common.log_format);
    polymur::daemon::block_on("polymur-proxy", polymur::proxy::run(config))
}
