//! polymur-proxy: flags and `main`. The daemon is [`polymur::proxy`]; it has no
//! `-route-test` (it routes nothing, it batches for one gateway).

const ABOUT: &str = "Receives Graphite plaintext metrics over TCP and forwards them in gzip'ed batches to a polymur-gateway over HTTPS";

fn main() -> std::process::ExitCode {
    let command = clap::Command::new("polymur-proxy")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .after_help("Flags may be written Go-style with one dash (-gateway=https://gw.example.com, -verbose).");
    let config: polymur::proxy::ProxyConfig =
        polymur::config::parse(command, "POLYMUR_PROXY_", std::env::args_os());
    let common = config.common.clone();
    polymur::daemon::main("polymur-proxy", &common, None, || {
        polymur::proxy::run(config)
    })
}
