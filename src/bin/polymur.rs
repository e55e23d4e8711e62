fn main() -> std::process::ExitCode {
    polymur::relay::main()
}
