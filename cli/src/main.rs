//! `tokenfleet`: the user's command line — talk to a gateway (generate, stream, session,
//! tokenize, info), start a local stack (`up`), or load-test one (`bench`).

mod bench;
mod client;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tokenfleet", version, about = "tokenfleet command-line client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One completion, returned whole (unary Generate).
    Generate(client::GenerateArgs),
    /// One completion, printed as it streams (GenerateStream).
    Stream(client::GenerateArgs),
    /// Several completions at once over one bidirectional Session.
    Session(client::SessionArgs),
    /// Tokenize text with the served model's tokenizer.
    Tokenize(client::TokenizeArgs),
    /// What model the gateway serves.
    Info(client::ConnectArgs),
    /// Start a gateway and N local workers; stop them all on Ctrl-C.
    Up(up::UpArgs),
    /// Load-test a gateway or worker (vLLM bench serve metrics and JSON keys).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Generate(a) => client::generate(a).await,
            Command::Stream(a) => client::stream(a).await,
            Command::Session(a) => client::session(a).await,
            Command::Tokenize(a) => client::tokenize(a).await,
            Command::Info(a) => client::info(a).await,
            Command::Up(a) => up::run(a).await,
            Command::Bench(a) => bench::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
