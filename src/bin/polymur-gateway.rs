fn main() -> std::process::ExitCode {
    polymur::gateway::main()
}
