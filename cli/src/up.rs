//! `tokenfleet up`: one gateway and N local workers as child processes, all stopped
//! together on Ctrl-C / SIGTERM (or when any of them dies).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Model directory (default: SmolLM2-135M as made by scripts/fetch-smollm2.sh).
    #[arg(long, default_value = "models/smollm2-135m")]
    pub model: PathBuf,
    /// Number of workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Worker backend (cpu, cuda, auto, synthetic).
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Gateway port on 127.0.0.1.
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// First worker port; worker i listens on base + i.
    #[arg(long, default_value_t = 50061)]
    pub worker_base_port: u16,
    /// Compute threads per worker (default: cores / workers).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Extra arguments for every worker (e.g. "--kv-cache-mib 512").
    #[arg(long, allow_hyphen_values = true)]
    pub worker_args: Option<String>,
    /// Extra arguments for the gateway.
    #[arg(long, allow_hyphen_values = true)]
    pub gateway_args: Option<String>,
}

/// A sibling binary of this executable (they are built and installed together).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let p = exe.with_file_name(name);
    if !p.exists() {
        bail!("{} not found next to {} (build the whole workspace: cargo build --release)", name, exe.display());
    }
    Ok(p)
}

fn split(extra: &Option<String>) -> Vec<String> {
    extra.as_deref().map(|s| s.split_whitespace().map(str::to_string).collect()).unwrap_or_default()
}

fn terminate(children: &mut [Child]) {
    for c in children.iter() {
        if let Some(pid) = c.id() {
            // SAFETY: kill(2) on a pid we spawned; no memory is touched.
            unsafe { libc_kill(pid as i32, 15) };
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub async fn run(a: UpArgs) -> anyhow::Result<()> {
    if !a.model.join("config.json").exists() {
        bail!("no model at {} (run scripts/fetch-smollm2.sh, or pass --model DIR)", a.model.display());
    }
    if a.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let worker_bin = sibling("tokenfleet-worker")?;
    let gateway_bin = sibling("tokenfleet-gateway")?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = a.threads.unwrap_or((cores / a.workers).max(1));
    let mut children = Vec::new();
    let mut gw_cmd = Command::new(&gateway_bin);
    gw_cmd.arg("--listen").arg(format!("127.0.0.1:{}", a.port));
    for i in 0..a.workers {
        let port = a.worker_base_port + i as u16;
        let mut cmd = Command::new(&worker_bin);
        cmd.arg("serve")
            .arg("--model")
            .arg(&a.model)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--backend")
            .arg(&a.backend)
            .arg("--threads")
            .arg(threads.to_string())
            .args(split(&a.worker_args))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        children.push(cmd.spawn().with_context(|| format!("starting {}", worker_bin.display()))?);
        gw_cmd.arg("--worker").arg(format!("127.0.0.1:{port}"));
    }
    gw_cmd.args(split(&a.gateway_args)).stdin(Stdio::null()).kill_on_drop(true);
    children.push(gw_cmd.spawn().with_context(|| format!("starting {}", gateway_bin.display()))?);

    let addr = format!("http://127.0.0.1:{}", a.port);
    let t0 = Instant::now();
    let ready = wait_healthy(&addr, a.workers, Duration::from_secs(120)).await;
    if let Err(e) = ready {
        terminate(&mut children);
        return Err(e);
    }
    eprintln!(
        "tokenfleet is up: gateway {addr} with {} worker(s) ({} thread(s) each) in {:.1}s — Ctrl-C stops everything",
        a.workers,
        threads,
        t0.elapsed().as_secs_f64()
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing SIGTERM handler")?;
    let exited = async {
        loop {
            for c in children.iter_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return status;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let died = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = sigterm.recv() => None,
        s = exited => Some(s),
    };
    terminate(&mut children);
    for c in children.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
    }
    match died {
        Some(s) => bail!("a tokenfleet process exited ({s}); stopped the rest"),
        None => {
            eprintln!("tokenfleet stopped");
            Ok(())
        }
    }
}

/// Waits until the gateway reports `workers` healthy workers.
async fn wait_healthy(addr: &str, workers: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let conn = super::client::ConnectArgs { addr: addr.to_string(), api_key: None };
    loop {
        if let Ok(mut c) = super::client::connect(&conn).await
            && let Ok(info) = c.model_info(tokenfleet_proto::v1::ModelInfoRequest {}).await
            && info.get_ref().healthy_workers as usize >= workers
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the stack did not become ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
