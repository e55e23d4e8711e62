fn main() -> std::process::ExitCode {
    polymur::docgen::exit_if_requested::<polymur::proxy::ProxyArgs>();
    polymur::proxy::main()
}
