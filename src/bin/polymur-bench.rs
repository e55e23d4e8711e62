//! polymur-bench: see `polymur::bench` and `docs/BENCHMARKS.md`.
fn main() -> std::process::ExitCode {
    polymur::bench::main()
}
