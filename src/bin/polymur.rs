//! polymur (the relay): flags and `main`. The daemon is [`polymur::relay`].

fn main() -> std::process::ExitCode {
    let command = clap::Command::new("polymur")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Relays Graphite plaintext metrics from TCP clients to Graphite destinations")
        .after_help("Flags may be written Go-style with one dash (-listen-addr=0.0.0.0:2003, -console-out).");
    let config: polymur::relay::RelayConfig =
        polymur::config::parse(command, "POLYMUR_", std::env::args_os());
    let (common, flags) = (config.common.clone(), config.pipeline.clone());
    polymur::daemon::main("polymur", &common, Some(&flags), || {
        polymur::relay::run(config)
    })
}
