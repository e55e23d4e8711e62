fn main() -> std::process::ExitCode {
    polymur::docgen::exit_if_requested::<polymur::relay::RelayArgs>();
    polymur::relay::main()
}
