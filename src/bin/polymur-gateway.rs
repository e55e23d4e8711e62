fn main() -> std::process::ExitCode {
    polymur::docgen::exit_if_requested::<polymur::gateway::GatewayArgs>();
    polymur::gateway::main()
}
