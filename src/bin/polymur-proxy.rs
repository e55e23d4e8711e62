//! polymur-proxy: flags and `main`. The daemon is [`polymur::proxy`]; it has no
//! `-route-test` (it routes nothing, it batches for one gateway).

fn main() -> std::process::ExitCode {
    polymur::daemon::run_cli(polymur::daemon::Daemon::Proxy, polymur::proxy::run)
}
