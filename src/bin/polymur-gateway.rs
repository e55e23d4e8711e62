//! polymur-gateway: flags and `main`. The daemon is [`polymur::gateway`].

fn main() -> std::process::ExitCode {
    polymur::daemon::run_cli(polymur::daemon::Daemon::Gateway, polymur::gateway::run)
}
