fn main() -> std::process::ExitCode {
    polymur::proxy::main()
}
