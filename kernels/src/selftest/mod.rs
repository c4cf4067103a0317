//! GPU self-test: every kernel against a naive CPU reference on fresh random inputs of odd
//! sizes, outputs poisoned (NaN) before each run, NaN never passing. Each case also times the
//! kernel with CUDA events and reports the bytes and FLOPs it must move / do, so a fraction
//! of the floor can be computed against a measured bandwidth.
//!
//! Timing replays a CUDA graph of 20 back-to-back launches and divides by 20: the cost of a
//! kernel inside the backend's decode graphs, without the host's launch latency, which at
//! a few µs per launch would otherwise be most of a small kernel's figure. A call that cannot
//! be captured is timed eagerly instead; the report counts both.
//!
//! `run_all(ordinal)` returns a [`Report`]. With no GPU it returns a report with `skipped`
//! set, unless `TOKENFLEET_REQUIRE_GPU=1`, which turns that into an error.
//! `TOKENFLEET_SELFTEST_ONLY=basic,attn,sample` runs only those groups and
//! `TOKENFLEET_SELFTEST_NO_TIMING=1` skips the timed repetitions (for compute-sanitizer).

mod cases_attn;
mod cases_basic;
mod cases_gemv;
mod cases_sample;
pub mod reference;
pub mod sampler_ref;

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr};
use serde::Serialize;

use crate::{KernelError, Kernels};

/// Relative L2 error allowed for bf16 outputs.
pub const BF16_TOL: f64 = 1e-2;

/// One checked case (an op at one set of shapes).
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub op: String,
    pub case: String,
    pub passed: bool,
    /// ‖gpu − ref‖₂ / ‖ref‖₂ (None for exact-match checks such as sampled ids).
    pub rel_l2: Option<f64>,
    pub tolerance: f64,
    /// Elements that came back NaN / infinite where the reference is finite.
    pub nonfinite: usize,
    pub detail: String,
    /// Median time per call over the timed repetitions (CUDA events).
    pub time_us: Option<f64>,
    /// Fewest bytes the call must move through device memory.
    pub bytes: u64,
    /// Floating-point operations the call must do.
    pub flops: u64,
    /// bytes / time (GB/s).
    pub achieved_gbps: Option<f64>,
    /// flops / time (TFLOP/s).
    pub achieved_tflops: Option<f64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Set when no GPU was found (and `TOKENFLEET_REQUIRE_GPU` is not 1): nothing ran.
    pub skipped: Option<String>,
    pub device: String,
    pub compute_capability: String,
    pub image: String,
    pub num_sms: usize,
    pub wall_s: f64,
    /// How `time_us` was taken, and for how many cases each way.
    pub timing: String,
    pub cases: Vec<CaseResult>,
}

impl Report {
    pub fn all_passed(&self) -> bool {
        self.cases.iter().all(|c| c.passed)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// A short fixed-width table, one line per case.
    pub fn table(&self) -> String {
        let mut s = format!("device: {} (cc {}, {}, {} SMs)\n", self.device, self.compute_capability, self.image, self.num_sms);
        if let Some(why) = &self.skipped {
            s.push_str(&format!("SKIPPED: {why}\n"));
            return s;
        }
        s.push_str(&format!("{:<18} {:<34} {:>4} {:>10} {:>10} {:>9} {:>8}\n", "op", "case", "ok", "rel_l2", "time_us", "GB/s", "TFLOP/s"));
        for c in &self.cases {
            let f = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
            s.push_str(&format!(
                "{:<18} {:<34} {:>4} {:>10} {:>10} {:>9} {:>8}\n",
                c.op,
                c.case,
                if c.passed { "ok" } else { "FAIL" },
                c.rel_l2.map(|x| format!("{x:.2e}")).unwrap_or_else(|| "-".into()),
                f(c.time_us, 1),
                f(c.achieved_gbps, 0),
                f(c.achieved_tflops, 2)
            ));
        }
        let failed = self.cases.iter().filter(|c| !c.passed).count();
        s.push_str(&format!("{} passed, {} failed\n", self.cases.len() - failed, failed));
        s
    }
}

/// Runs every kernel check on device `ordinal`.
pub fn run_all(ordinal: usize) -> Result<Report, KernelError> {
    let require = std::env::var("TOKENFLEET_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let no_gpu = |why: String| -> Result<Report, KernelError> {
        if require {
            return Err(KernelError::SelfTest(format!("TOKENFLEET_REQUIRE_GPU=1 but {why}")));
        }
        Ok(Report {
            skipped: Some(why),
            device: String::new(),
            compute_capability: String::new(),
            image: String::new(),
            num_sms: 0,
            wall_s: 0.0,
            timing: String::new(),
            cases: Vec::new(),
        })
    };
    if let Err(e) = crate::cuda_available() {
        return no_gpu(e.to_string());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => {}
        Ok(_) => return no_gpu("no CUDA device".into()),
        Err(e) => return no_gpu(format!("cuDeviceGetCount failed: {e:?}")),
    }
    let (ctx, kernels) = Kernels::open(ordinal)?;
    let t0 = Instant::now();
    // A stream of our own: the default (legacy NULL) stream refuses graph capture. With one
    // stream, cudarc's cross-stream event tracking has nothing to order; off, it also
    // records no events inside a capture.
    // SAFETY: every buffer of the self-test is used on this one stream only.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(dev("new_stream"))?;
    let timing = !std::env::var("TOKENFLEET_SELFTEST_NO_TIMING").is_ok_and(|v| v == "1");
    let only = std::env::var("TOKENFLEET_SELFTEST_ONLY").ok();
    let wants = |group: &str| only.as_deref().is_none_or(|o| o.split(',').any(|g| g.trim() == group));
    let mut t = Tester {
        k: &kernels,
        ctx: ctx.clone(),
        stream,
        rng: Rng::new(0x7f4a_7c15_9e37_79b9 ^ now_seed()),
        cases: Vec::new(),
        timing,
        graph_timed: Cell::new(0),
        eager_timed: Cell::new(0),
    };
    if wants("basic") {
        cases_basic::run(&mut t)?;
    }
    if wants("attn") {
        cases_attn::run(&mut t)?;
    }
    if wants("sample") {
        cases_sample::run(&mut t)?;
    }
    if wants("gemv") {
        cases_gemv::run(&mut t)?;
    }
    let (major, minor) = kernels.compute_capability();
    Ok(Report {
        skipped: None,
        device: ctx.name().unwrap_or_else(|_| "unknown".into()),
        compute_capability: format!("{major}.{minor}"),
        image: kernels.image().as_str().into(),
        num_sms: kernels.num_sms(),
        wall_s: t0.elapsed().as_secs_f64(),
        timing: format!(
            "median per call: CUDA graph of {GRAPH_REPS} launches replayed ({} cases), eager launches between events ({} cases)",
            t.graph_timed.get(),
            t.eager_timed.get()
        ),
        cases: t.cases,
    })
}

fn now_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
}

/// State shared by the cases.
pub(crate) struct Tester<'k> {
    pub k: &'k Kernels,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub rng: Rng,
    pub cases: Vec<CaseResult>,
    /// false: `time` returns NaN without running anything.
    pub timing: bool,
    /// Cases timed inside a CUDA graph, and eagerly (capture refused).
    graph_timed: Cell<usize>,
    eager_timed: Cell<usize>,
}

/// Launches per captured timing graph.
const GRAPH_REPS: usize = 20;

/// Median µs between consecutive events, per call (`calls` calls between two events).
fn median_us(marks: &[cudarc::driver::CudaEvent], calls: usize) -> Result<f64, KernelError> {
    let mut ms: Vec<f64> = Vec::with_capacity(marks.len());
    for w in marks.windows(2) {
        ms.push(w[0].elapsed_ms(&w[1]).map_err(dev("elapsed"))? as f64);
    }
    ms.sort_by(f64::total_cmp);
    let mid = ms.get(ms.len() / 2).copied().ok_or_else(|| KernelError::SelfTest("no timed calls".into()))?;
    Ok(mid * 1000.0 / calls.max(1) as f64)
}

pub(crate) fn dev(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> KernelError {
    move |e| KernelError::Driver { op, msg: format!("{e:?}") }
}

impl Tester<'_> {
    /// Runs `f` with programmatic launch on, and off again afterwards; does nothing where the
    /// device cannot have it (anything but the sm_90a image).
    pub(crate) fn with_programmatic_launch(&mut self, f: impl FnOnce(&mut Self)) -> Result<(), KernelError> {
        if self.k.set_programmatic_launch(true).is_err() {
            return Ok(());
        }
        f(self);
        self.k.set_programmatic_launch(false)
    }

    pub fn up<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>, KernelError> {
        self.stream.clone_htod(v).map_err(dev("upload"))
    }

    pub fn down<T: DeviceRepr + Default + Clone>(&self, s: &CudaSlice<T>) -> Result<Vec<T>, KernelError> {
        self.stream.clone_dtoh(s).map_err(dev("download"))
    }

    pub fn sync(&self) -> Result<(), KernelError> {
        self.stream.synchronize().map_err(dev("synchronize"))
    }

    /// Median microseconds per call of `f` after 3 warm-ups: over `iters` replays of a CUDA
    /// graph of [`GRAPH_REPS`] calls, or, when `f` cannot be captured, over `iters` eager
    /// calls each between its own pair of events.
    pub fn time(&self, iters: usize, mut f: impl FnMut() -> Result<(), KernelError>) -> Result<f64, KernelError> {
        if !self.timing {
            return Ok(f64::NAN);
        }
        for _ in 0..3 {
            f()?;
        }
        self.sync()?;
        match self.time_in_graph(iters, &mut f) {
            Ok(us) => {
                self.graph_timed.set(self.graph_timed.get() + 1);
                Ok(us)
            }
            Err(_) => {
                self.eager_timed.set(self.eager_timed.get() + 1);
                self.time_eager(iters, f)
            }
        }
    }

    fn events(&self, n: usize) -> Result<Vec<cudarc::driver::CudaEvent>, KernelError> {
        (0..n).map(|_| self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(dev("new_event"))).collect()
    }

    fn time_in_graph(&self, iters: usize, f: &mut impl FnMut() -> Result<(), KernelError>) -> Result<f64, KernelError> {
        self.stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(dev("begin_capture"))?;
        let mut launched = Ok(());
        for _ in 0..GRAPH_REPS {
            launched = f();
            if launched.is_err() {
                break;
            }
        }
        // End the capture whatever happened, so the stream is usable again.
        let ended = self.stream.end_capture(CUgraphInstantiate_flags(0));
        launched?;
        let graph = ended.map_err(dev("end_capture"))?.ok_or_else(|| KernelError::SelfTest("empty timing graph".into()))?;
        graph.launch().map_err(dev("graph launch"))?;
        self.sync()?;
        let marks = self.events(iters + 1)?;
        marks[0].record(&self.stream).map_err(dev("event record"))?;
        for m in marks.iter().skip(1) {
            graph.launch().map_err(dev("graph launch"))?;
            m.record(&self.stream).map_err(dev("event record"))?;
        }
        self.sync()?;
        median_us(&marks, GRAPH_REPS)
    }

    fn time_eager(&self, iters: usize, mut f: impl FnMut() -> Result<(), KernelError>) -> Result<f64, KernelError> {
        let marks = self.events(iters + 1)?;
        marks[0].record(&self.stream).map_err(dev("event record"))?;
        for m in marks.iter().skip(1) {
            f()?;
            m.record(&self.stream).map_err(dev("event record"))?;
        }
        self.sync()?;
        median_us(&marks, 1)
    }

    pub fn push(&mut self, row: CaseResult) {
        self.cases.push(row);
    }
}

/// A case row from an error measurement.
pub(crate) struct Measured {
    pub rel_l2: f64,
    pub nonfinite: usize,
}

/// ‖gpu − ref‖ / ‖ref‖ in f64; any gpu value that is not finite where the reference is
/// finite counts as `nonfinite` (and fails the case).
pub(crate) fn compare(gpu: &[f32], reference: &[f64]) -> Measured {
    let (mut num, mut den, mut bad) = (0.0f64, 0.0f64, 0usize);
    for (g, r) in gpu.iter().zip(reference) {
        if !g.is_finite() && r.is_finite() {
            bad += 1;
            continue;
        }
        let d = *g as f64 - r;
        num += d * d;
        den += r * r;
    }
    if gpu.len() != reference.len() {
        bad += gpu.len().abs_diff(reference.len());
    }
    let rel = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
    Measured { rel_l2: rel, nonfinite: bad }
}

/// Builds a result row from an error measurement (untimed; see [`CaseResult::timed`]).
pub(crate) fn row(op: &str, case: &str, m: &Measured, tol: f64, detail: String) -> CaseResult {
    let passed = m.nonfinite == 0 && m.rel_l2 <= tol && m.rel_l2.is_finite();
    CaseResult {
        op: op.into(),
        case: case.into(),
        passed,
        rel_l2: Some(m.rel_l2),
        tolerance: tol,
        nonfinite: m.nonfinite,
        detail,
        time_us: None,
        bytes: 0,
        flops: 0,
        achieved_gbps: None,
        achieved_tflops: None,
    }
}

impl CaseResult {
    /// The same result under another case name (a variant of a case already run).
    pub(crate) fn named(mut self, case: &str) -> Self {
        self.case = case.into();
        self
    }

    /// Adds the timing and the bytes / FLOPs the call must move / do.
    pub(crate) fn timed(mut self, time_us: Option<f64>, bytes: u64, flops: u64) -> Self {
        self.time_us = time_us;
        self.bytes = bytes;
        self.flops = flops;
        self.achieved_gbps = time_us.map(|t| bytes as f64 / (t * 1e3));
        self.achieved_tflops = time_us.map(|t| flops as f64 / (t * 1e6));
        self
    }
}

/// A case that could not be evaluated (a launch failed, say): a failing row, not an abort.
pub(crate) fn error_row(op: &str, case: &str, e: &KernelError) -> CaseResult {
    CaseResult {
        op: op.into(),
        case: case.into(),
        passed: false,
        rel_l2: None,
        tolerance: 0.0,
        nonfinite: 0,
        detail: format!("error: {e}"),
        time_us: None,
        bytes: 0,
        flops: 0,
        achieved_gbps: None,
        achieved_tflops: None,
    }
}

/// SplitMix64: small, seedable, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Uniform in [-1, 1).
    pub fn sym(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Roughly normal (sum of four uniforms, unit variance).
    pub fn normal(&mut self) -> f32 {
        (self.sym() + self.sym() + self.sym() + self.sym()) * 0.866
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// bf16 helpers for building inputs and reading outputs.
pub(crate) mod bf {
    use half::bf16;

    pub const NAN: bf16 = bf16::from_bits(0x7fc0);

    /// Random bf16 values and their exact f32 widening.
    pub fn random(rng: &mut super::Rng, n: usize, scale: f32) -> (Vec<bf16>, Vec<f32>) {
        let b: Vec<bf16> = (0..n).map(|_| bf16::from_f32(rng.normal() * scale)).collect();
        let f = b.iter().map(|v| v.to_f32()).collect();
        (b, f)
    }

    pub fn widen(v: &[bf16]) -> Vec<f32> {
        v.iter().map(|x| x.to_f32()).collect()
    }
}
