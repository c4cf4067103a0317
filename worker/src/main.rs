//! `tokenfleet-worker`: serve, generate, convert-gguf, gen-model (see `--help`).

fn main() -> std::process::ExitCode {
    tokenfleet_worker::cli::main()
}
