//! `tokenfleet-gateway`: see `--help`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokenfleet_gateway::config::{GatewayConfig, GatewayFlags};
use tokenfleet_proto::runtime::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "tokenfleet-gateway",
    version,
    about = "tokenfleet gateway: the public gRPC API in front of tokenfleet workers",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: GatewayFlags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the default when no subcommand is given).
    Serve(GatewayFlags),
    /// Print the effective configuration (defaults < --config file < env < flags), API keys redacted.
    PrintConfig(GatewayFlags),
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = match cli.command {
        Some(Command::PrintConfig(f)) => {
            return match tokenfleet_gateway::server::print_config(&f) {
                Ok(text) => {
                    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), format!("{text}\n").as_bytes());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            };
        }
        Some(Command::Serve(f)) => f,
        None => cli.flags,
    };
    let cfg = match GatewayConfig::load(&flags) {
        Ok(c) => c.value,
        Err(e) => return fail(e.into()),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::anyhow!("starting the async runtime: {e}")),
    };
    let result = rt.block_on(async move {
        let _telemetry = telemetry::init(cfg.log_format, "info", &cfg.otel)?;
        tokenfleet_gateway::server::serve(cfg).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
