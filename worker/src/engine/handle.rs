//! The engine on its own OS thread, and the async-side handle that talks to it through
//! bounded command and broadcast channels. The tokio runtime never runs a model step; the
//! engine thread never waits on a client.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::core::{EngineCore, RequestOutput};
use super::kv_blocks::BlockEvent;
use super::request::EngineRequest;

/// Load figures published after every step.
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    pub waiting: u32,
    pub running: u32,
    pub kv_blocks_total: u32,
    pub kv_blocks_free: u32,
    pub active_tokens: u64,
    pub prefix_lookup_tokens: u64,
    pub prefix_hit_tokens: u64,
    pub generated_tokens: u64,
    pub prompt_tokens: u64,
    pub preemptions: u64,
    /// Steps planned while the previous one ran, and refusals to plan ahead (overlap).
    pub planned_ahead: u64,
    pub plan_ahead_refused: u64,
    pub resumed: u64,
    pub finished: u64,
    pub steps: u64,
    pub last_step_batch: u32,
    pub last_step_tokens: u32,
    pub last_step_ms: f64,
}

/// The prefix cache as of one moment: every cached hash and the id of the last event
/// already reflected in it.
#[derive(Debug, Clone)]
pub struct CacheSnapshot {
    pub hashes: Vec<u64>,
    pub last_event_id: u64,
}

enum Command {
    Submit(Box<EngineRequest>, mpsc::UnboundedSender<RequestOutput>),
    Abort(String, oneshot::Sender<bool>),
    Snapshot(oneshot::Sender<CacheSnapshot>),
    Shutdown,
}

/// State shared between the engine thread and the async side.
pub struct Shared {
    pub load: Mutex<LoadStats>,
    /// Milliseconds since `epoch` of the engine loop's last sign of life.
    heartbeat_ms: AtomicU64,
    epoch: Instant,
    /// Set when the backend failed; the process must stop serving.
    pub fatal: Mutex<Option<String>>,
    pub stopped: AtomicBool,
    events: broadcast::Sender<BlockEvent>,
    /// Called by the engine thread after every step with (sequences, seconds) — metrics.
    pub step_observer: std::sync::OnceLock<StepObserver>,
}

/// Receives (sequences in the step, step wall time in seconds).
pub type StepObserver = Box<dyn Fn(usize, f64) + Send + Sync>;

impl Shared {
    /// How long ago the engine loop last made progress or idled normally.
    pub fn since_heartbeat(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }

    fn beat(&self) {
        self.heartbeat_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Why a submission did not reach the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the engine's command queue is full")]
    Busy,
    #[error("the engine has stopped")]
    Stopped,
}

/// Cloneable async handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Command>,
    pub shared: Arc<Shared>,
}

impl EngineHandle {
    /// Starts the engine thread. `command_capacity` bounds the submissions in flight
    /// between the async side and the engine.
    pub fn spawn(core: EngineCore, command_capacity: usize) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
        let (tx, rx) = sync_channel(command_capacity.max(1));
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            load: Mutex::new(LoadStats::default()),
            heartbeat_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            fatal: Mutex::new(None),
            stopped: AtomicBool::new(false),
            events,
            step_observer: std::sync::OnceLock::new(),
        });
        let sh = shared.clone();
        let join = std::thread::Builder::new().name("tokenfleet-engine".into()).spawn(move || run_loop(core, rx, sh))?;
        Ok((EngineHandle { tx, shared }, join))
    }

    /// Submits a request; its outputs arrive on the returned receiver.
    pub fn submit(&self, req: EngineRequest) -> Result<mpsc::UnboundedReceiver<RequestOutput>, SubmitError> {
        let (otx, orx) = mpsc::unbounded_channel();
        match self.tx.try_send(Command::Submit(Box::new(req), otx)) {
            Ok(()) => Ok(orx),
            Err(TrySendError::Full(_)) => Err(SubmitError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Aborts a request; true when the engine knew it.
    pub async fn abort(&self, id: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.send_control(Command::Abort(id.to_string(), tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// The current prefix cache, consistent with the event stream.
    pub async fn snapshot(&self) -> Option<CacheSnapshot> {
        let (tx, rx) = oneshot::channel();
        self.send_control(Command::Snapshot(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Subscribes to block events (subscribe before taking a snapshot).
    pub fn subscribe_events(&self) -> broadcast::Receiver<BlockEvent> {
        self.shared.events.subscribe()
    }

    pub fn load(&self) -> LoadStats {
        self.shared.load.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Asks the engine thread to stop after its current step.
    pub fn shutdown(&self) {
        let _ = self.tx.try_send(Command::Shutdown);
    }

    /// Control commands must not be lost when the queue is momentarily full of
    /// submissions: retry for up to ~200 ms without blocking the runtime.
    async fn send_control(&self, cmd: Command) -> Result<(), SubmitError> {
        let mut cmd = cmd;
        for _ in 0..200 {
            match self.tx.try_send(cmd) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(c)) => {
                    cmd = c;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(SubmitError::Stopped),
            }
        }
        Err(SubmitError::Busy)
    }
}

fn run_loop(mut core: EngineCore, rx: Receiver<Command>, shared: Arc<Shared>) {
    let mut shutdown = false;
    publish(&mut core, &shared, None);
    while !shutdown {
        shared.beat();
        // Idle: wait for a command (waking now and then to keep the heartbeat fresh).
        if !core.has_work() {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(cmd) => shutdown |= handle(&mut core, cmd),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            shutdown |= handle(&mut core, cmd);
        }
        let start = Instant::now();
        match core.step() {
            Ok(report) => {
                let ms = start.elapsed().as_secs_f64() * 1e3;
                if let (Some(r), Some(obs)) = (report, shared.step_observer.get()) {
                    obs(r.sequences, ms / 1e3);
                }
                publish(&mut core, &shared, report.map(|r| (r.sequences as u32, r.tokens as u32, ms)));
            }
            Err(e) => {
                tracing::error!(error = %e, "backend failed; the engine stops");
                if let Ok(mut f) = shared.fatal.lock() {
                    *f = Some(e.to_string());
                }
                break;
            }
        }
    }
    shared.stopped.store(true, Ordering::SeqCst);
}

/// Handles one command; true means shut down.
fn handle(core: &mut EngineCore, cmd: Command) -> bool {
    match cmd {
        Command::Submit(req, out) => {
            core.submit(*req, out);
        }
        Command::Abort(id, reply) => {
            let _ = reply.send(core.abort(&id));
        }
        Command::Snapshot(reply) => {
            let b = &core.scheduler.blocks;
            let _ = reply.send(CacheSnapshot { hashes: b.cached_hashes(), last_event_id: b.last_event_id() });
        }
        Command::Shutdown => return true,
    }
    false
}

fn publish(core: &mut EngineCore, shared: &Shared, step: Option<(u32, u32, f64)>) {
    // Events go out in id order after the commands/step that produced them; a snapshot is
    // only taken between steps, so its `last_event_id` splits the stream exactly.
    for ev in core.scheduler.blocks.take_events() {
        let _ = shared.events.send(ev);
    }
    let s = &core.scheduler;
    if let Ok(mut l) = shared.load.lock() {
        l.waiting = s.num_waiting() as u32;
        l.running = s.num_running() as u32;
        l.kv_blocks_total = s.blocks.num_blocks() as u32;
        l.kv_blocks_free = s.blocks.available() as u32;
        l.active_tokens = s.active_tokens() as u64;
        l.prefix_lookup_tokens = s.blocks.lookup_tokens;
        l.prefix_hit_tokens = s.blocks.hit_tokens;
        l.generated_tokens = s.counters.generated_tokens;
        l.prompt_tokens = s.counters.prompt_tokens;
        l.preemptions = s.counters.preemptions;
        l.planned_ahead = core.planned_ahead;
        l.plan_ahead_refused = core.plan_ahead_refused;
        l.resumed = s.counters.resumed;
        l.finished = s.counters.finished;
        if let Some((b, t, ms)) = step {
            l.steps += 1;
            l.last_step_batch = b;
            l.last_step_tokens = t;
            l.last_step_ms = ms;
        }
    }
}
