//! The `tokenfleet-worker` command line. Errors are reported once, on stderr, with the
//! whole cause chain, and turn into a non-zero exit code — never a panic.

mod convert;
mod gen_model;
mod generate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tokenfleet-worker", version, about = "tokenfleet worker: one process per device, serving a Llama-3.1-family model")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a completion offline through the engine (CPU backend) and print it.
    Generate(generate::GenerateArgs),
    /// Write a model directory with deterministic random weights of a named architecture.
    GenModel(gen_model::GenModelArgs),
    /// Convert a Llama-architecture GGUF file into a Hugging Face model directory.
    ConvertGguf(convert::ConvertArgs),
}

/// Parses arguments, runs the command, maps errors to exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::GenModel(a) => gen_model::run(a),
        Command::ConvertGguf(a) => convert::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub(crate) fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}
