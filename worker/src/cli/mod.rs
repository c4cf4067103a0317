//! The `tokenfleet-worker` command line. Errors are reported once, on stderr, with the
//! whole cause chain, and turn into a non-zero exit code — never a panic.

mod bench_engine;
mod convert;
mod gen_model;
mod generate;
#[cfg(feature = "cuda")]
mod gpu_selftest;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tokenfleet-worker", version, about = "tokenfleet worker: one process per device, serving a Llama-3.1-family model")]
struct Cli {
    /// Log format on stderr (for `serve`: the log_format setting).
    #[arg(long = "tool-log-format", global = true, value_enum, default_value = "text")]
    tool_log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the tokenfleet.v1.Worker gRPC service (one process per device).
    Serve(crate::config::ServeFlags),
    /// Print the effective `serve` configuration (defaults < --config file < env < flags).
    PrintConfig(crate::config::ServeFlags),
    /// Generate a completion offline through the engine (CPU backend) and print it.
    Generate(generate::GenerateArgs),
    /// Write a model directory with deterministic random weights of a named architecture.
    GenModel(gen_model::GenModelArgs),
    /// Convert a Llama-architecture GGUF file into a Hugging Face model directory.
    ConvertGguf(convert::ConvertArgs),
    /// Time prefill and decode steps of the backend (and the scheduler alone).
    BenchEngine(bench_engine::BenchEngineArgs),
    /// GPU checks (kernels, parity, bandwidth) for scripts/gpu-check.sh.
    #[cfg(feature = "cuda")]
    GpuSelftest(gpu_selftest::GpuSelftestArgs),
}

/// Parses arguments, runs the command, maps errors to exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up logging itself, from its layered configuration.
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging("warn", cli.tool_log_format);
    }
    let result = match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::PrintConfig(a) => serve::print_config(a),
        Command::Generate(a) => generate::run(a),
        Command::GenModel(a) => gen_model::run(a),
        Command::ConvertGguf(a) => convert::run(a),
        Command::BenchEngine(a) => bench_engine::run(a),
        #[cfg(feature = "cuda")]
        Command::GpuSelftest(a) => gpu_selftest::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default_level: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
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
