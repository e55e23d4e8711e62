//! polymur-gateway: flags and `main`. The daemon is [`polymur::gateway`].

fn main() -> std::process::ExitCode {
    let command = clap::Command::new("polymur-gateway")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Receives gzip'ed Graphite batches over HTTP(S) from polymur-proxy and forwards them to Graphite")
        .after_help("Flags may be written Go-style with one dash (-dev-mode, -destinations=a:1,b:2).");
    let config: polymur::gateway::GatewayConfig =
        polymur::config::parse(command, "POLYMUR_GW_", std::env::args_os());
    let (common, flags) = (config.common.clone(), config.pipeline.clone());
    polymur::daemon::main("polymur-gateway", &common, Some(&flags), || {
        polymur::gateway::run(config)
    })
}
