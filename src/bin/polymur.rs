//! polymur (the relay): flags and `main`. The daemon is [`polymur::relay`].

use clap::Parser;

/// The relay's command line: its flags, each also read from `POLYMUR_<FLAG>`.
#[derive(Parser)]
#[command(
    name = "polymur",
    version,
    about = "Relays Graphite plaintext metrics from TCP clients to Graphite destinations",
    after_help = "Flags may be written Go-style with one dash (-listen-addr=0.0.0.0:2003, -console-out)."
)]
struct Cli {
    #[command(flatten)]
    config: polymur::relay::RelayConfig,
}

fn main() -> std::process::ExitCode {
    let Cli { config } = polymur::config::parse("POLYMUR_", std::env::args_os());
    if config.pipeline.route_test {
        return polymur::daemon::route_test("polymur", &config.pipeline);
    }
    polymur::logging::init(config.common.log_format);
    polymur::daemon::block_on("polymur", polymur::relay::run(config))
}
