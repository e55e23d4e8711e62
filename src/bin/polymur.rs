//! polymur (the relay): flags and `main`. The daemon is [`polymur::relay`].

fn main() -> std::process::ExitCode {
    polymur::daemon::run_cli(polymur::daemon::Daemon::Relay, polymur::relay::run)
}
