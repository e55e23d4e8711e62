//! polymur-gateway: flags and `main`. The daemon is [`polymur::gateway`].

use clap::Parser;

/// The gateway's command line: its flags, each also read from `POLYMUR_GW_<FLAG>`.
#[derive(Parser)]
#[command(
    name = "polymur-gateway",
    version,
    about = "Receives gzip'ed Graphite batches over HTTP(S) from polymur-proxy and forwards them to Graphite",
    after_help = "Flags may be written Go-style with one dash (-dev-mode, -destinations=a:1,b:2)."
)]
struct Cli {
    #[command(flatten)]
    config: polymur::gateway::GatewayConfig,
}

fn main() -> std::process::ExitCode {
    let Cli { config } = polymur::config::parse("POLYMUR_GW_", std::env::args_os());
    if config.pipeline.route_test {
        return polymur::daemon::route_test("polymur-gateway", &config.pipeline);
    }
    polymur::logging::init(config.common.log_format);
    polymur::daemon::block_on("polymur-gateway", polymur::gateway::run(config))
}
