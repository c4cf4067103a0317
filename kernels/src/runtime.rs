//! Loading the compiled images onto a device and the plumbing every launcher shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DevicePtr, DriverError, LaunchConfig};
use cudarc::nvrtc::Ptx;

use crate::KernelError;
use crate::launch::KernelLaunch;
use crate::module::ImageKind;

/// Checks that libcuda can be loaded. Call this before anything touches cudarc: its
/// `CudaContext::new` panics when the driver library is missing.
pub fn cuda_available() -> Result<(), KernelError> {
    // SAFETY: `is_culib_present` only tries to dlopen the driver library under its usual
    // names and drops the handle; it reads no CUDA state and has no preconditions.
    if unsafe { cudarc::driver::sys::is_culib_present() } { Ok(()) } else { Err(KernelError::NoDriver) }
}

/// Query heads per decode block, in the order of [`Functions::decode`]'s inner index.
pub(crate) const DECODE_TILES: [usize; 5] = [1, 2, 3, 4, 8];

/// Every kernel entry point, loaded once.
pub(crate) struct Functions {
    pub embedding: CudaFunction,
    pub feed_tokens: CudaFunction,
    pub rmsnorm: CudaFunction,
    pub add_rmsnorm: CudaFunction,
    pub rope_kv: CudaFunction,
    pub silu_mul: CudaFunction,
    /// [hd64, hd128]
    pub prefill: [CudaFunction; 2],
    /// [hd64, hd128][head tile index into DECODE_TILES]
    pub decode: [[CudaFunction; 5]; 2],
    pub decode_merge: [CudaFunction; 2],
    pub sample: CudaFunction,
    pub sample_stats: CudaFunction,
    /// Row-pair GEMV, [bf16, f32, silu][t - 1] for t = 1..=8 activation rows.
    pub gemv: [[CudaFunction; 8]; 3],
    /// Tensor-core GEMV, [bf16, f32, silu][t - 1] for t = 1..=16 activation rows.
    pub gemv_mma: [[CudaFunction; 16]; 3],
}

/// The kernels loaded on one device (context), with one checked launcher per op (see the
/// `ops` module). Cheap to share: launch methods take `&self`.
pub struct Kernels {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) f: Functions,
    image: ImageKind,
    compute_capability: (i32, i32),
    num_sms: usize,
    /// Launch with programmatic dependent launch (see [`Kernels::set_programmatic_launch`]).
    programmatic: AtomicBool,
    /// L2 budget of the GEMVs' weight prefetch under programmatic launch (bytes).
    gemv_prefetch: AtomicUsize,
    _modules: Vec<Arc<CudaModule>>,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("ordinal", &self.ctx.ordinal())
            .field("image", &self.image)
            .field("compute_capability", &self.compute_capability)
            .field("num_sms", &self.num_sms)
            .field("programmatic", &self.programmatic_launch())
            .finish()
    }
}

pub(crate) fn drv(op: &'static str) -> impl Fn(DriverError) -> KernelError {
    move |e| KernelError::Driver { op, msg: format!("{e:?}") }
}

impl Kernels {
    /// Opens device `ordinal` (after checking the driver is there) and loads the kernels.
    pub fn open(ordinal: usize) -> Result<(Arc<CudaContext>, Kernels), KernelError> {
        cuda_available()?;
        crate::compiled()?;
        let n = CudaContext::device_count().map_err(drv("device_count"))?;
        if ordinal >= n.max(0) as usize {
            return Err(KernelError::arg("open", format!("device {ordinal} does not exist ({n} CUDA devices)")));
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("CudaContext::new"))?;
        let k = Kernels::load(&ctx)?;
        Ok((ctx, k))
    }

    /// Loads the image matching the context's device: sm_80 cubin on 8.x, sm_90a cubin on
    /// 9.0, compute_90 PTX (driver JIT) on anything newer.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Kernels, KernelError> {
        crate::compiled()?;
        let (major, minor) = ctx.compute_capability().map_err(drv("compute_capability"))?;
        let image = ImageKind::for_compute_capability(major, minor)?;
        let num_sms = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(drv("attribute"))?;
        let mut modules = Vec::new();
        let mut lookup: Vec<(&'static str, Arc<CudaModule>)> = Vec::new();
        for m in crate::images::MODULE_IMAGES {
            let ptx = match image {
                ImageKind::Sm80Cubin => Ptx::from_binary(m.sm80.to_vec()),
                ImageKind::Sm90aCubin => Ptx::from_binary(m.sm90a.to_vec()),
                ImageKind::Ptx90Jit => Ptx::from_src(m.ptx90),
            };
            let module = ctx.load_module(ptx).map_err(drv("load_module"))?;
            lookup.push((m.name, module.clone()));
            modules.push(module);
        }
        let get = |module: &str, func: &str| -> Result<CudaFunction, KernelError> {
            let m = lookup
                .iter()
                .find(|(n, _)| *n == module)
                .ok_or_else(|| KernelError::SelfTest(format!("module {module} missing from the embedded images")))?;
            m.1.load_function(func).map_err(|e| KernelError::Driver { op: "load_function", msg: format!("{func}: {e:?}") })
        };
        let decode_row = |hd: usize| -> Result<[CudaFunction; 5], KernelError> {
            Ok([
                get("attention_decode", &format!("tf_attn_decode_hd{hd}_g1"))?,
                get("attention_decode", &format!("tf_attn_decode_hd{hd}_g2"))?,
                get("attention_decode", &format!("tf_attn_decode_hd{hd}_g3"))?,
                get("attention_decode", &format!("tf_attn_decode_hd{hd}_g4"))?,
                get("attention_decode", &format!("tf_attn_decode_hd{hd}_g8"))?,
            ])
        };
        // tf_{prefix}_{mode}_t1 ..= _t{N} of `module`.
        fn by_rows<const N: usize>(
            get: &impl Fn(&str, &str) -> Result<CudaFunction, KernelError>,
            module: &str,
            prefix: &str,
            mode: &str,
        ) -> Result<[CudaFunction; N], KernelError> {
            let v = (1..=N).map(|t| get(module, &format!("tf_{prefix}_{mode}_t{t}"))).collect::<Result<Vec<_>, _>>()?;
            v.try_into().map_err(|_| KernelError::SelfTest(format!("{prefix} kernels missing")))
        }
        let gemv_row = |mode: &str| by_rows::<8>(&get, "gemv", "gemv", mode);
        let gemv_mma_row = |mode: &str| by_rows::<16>(&get, "gemv_mma", "gemv_mma", mode);
        let f = Functions {
            embedding: get("embedding", "tf_embedding_gather")?,
            feed_tokens: get("embedding", "tf_feed_tokens")?,
            rmsnorm: get("rmsnorm", "tf_rmsnorm")?,
            add_rmsnorm: get("rmsnorm", "tf_add_rmsnorm")?,
            rope_kv: get("rope_kv", "tf_rope_kv_write")?,
            silu_mul: get("silu_mul", "tf_silu_mul")?,
            prefill: [get("attention_prefill", "tf_attn_prefill_hd64")?, get("attention_prefill", "tf_attn_prefill_hd128")?],
            decode: [decode_row(64)?, decode_row(128)?],
            decode_merge: [get("attention_decode", "tf_attn_decode_merge_hd64")?, get("attention_decode", "tf_attn_decode_merge_hd128")?],
            sample: get("sampling", "tf_sample")?,
            sample_stats: get("sampling_stats", "tf_sample_stats")?,
            gemv: [gemv_row("bf16")?, gemv_row("f32")?, gemv_row("silu")?],
            gemv_mma: [gemv_mma_row("bf16")?, gemv_mma_row("f32")?, gemv_mma_row("silu")?],
        };
        Ok(Kernels {
            ctx: ctx.clone(),
            f,
            image,
            compute_capability: (major, minor),
            num_sms: num_sms.max(1) as usize,
            programmatic: AtomicBool::new(false),
            gemv_prefetch: AtomicUsize::new(0),
            _modules: modules,
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn image(&self) -> ImageKind {
        self.image
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    pub fn num_sms(&self) -> usize {
        self.num_sms
    }

    /// Programmatic dependent launch: every later launch lets the driver start the kernel
    /// while the previous kernel in the stream is still running (its blocks wait in
    /// `griddepcontrol.wait` until that kernel has finished and its writes are visible), which
    /// hides launch latency between the many small kernels of a decode step, in CUDA graphs
    /// too. Only with the sm_90a cubin (H100, H200): the sm_80 cubin has no
    /// `griddepcontrol`, and only the cubin's SASS is checked at build time to wait before
    /// its first load (a driver JIT of the PTX on a newer GPU is not), so elsewhere it is
    /// refused.
    pub fn set_programmatic_launch(&self, on: bool) -> Result<(), KernelError> {
        if on && !self.image.supports_programmatic_launch() {
            return Err(KernelError::arg(
                "set_programmatic_launch",
                format!(
                    "programmatic dependent launch is built for the sm_90a image (compute capability 9.0); this device is {}.{} ({:?})",
                    self.compute_capability.0, self.compute_capability.1, self.image
                ),
            ));
        }
        self.programmatic.store(on, Ordering::Relaxed);
        Ok(())
    }

    pub fn programmatic_launch(&self) -> bool {
        self.programmatic.load(Ordering::Relaxed)
    }

    /// With programmatic launch on, each small-batch GEMV block first asks L2 for the head of
    /// its weight rows, then waits for the previous kernel: the weights start streaming while
    /// that kernel (a norm, RoPE, attention) finishes. `budget` bytes are shared by the blocks
    /// resident at once ([`crate::shapes::gemv_prefetch_row_bytes`]); 0 turns it off. Without
    /// programmatic launch nothing is prefetched (the wait would not overlap anything).
    pub fn set_gemv_prefetch(&self, budget: usize) {
        self.gemv_prefetch.store(budget, Ordering::Relaxed);
    }

    /// The prefetch budget in effect: 0 unless programmatic launch is on.
    pub fn gemv_prefetch(&self) -> usize {
        if self.programmatic_launch() { self.gemv_prefetch.load(Ordering::Relaxed) } else { 0 }
    }

    /// A launch of `func` on `stream`, programmatic or not as set.
    pub(crate) fn launch<'a>(&self, stream: &'a CudaStream, func: &'a CudaFunction) -> KernelLaunch<'a> {
        KernelLaunch::new(stream, func, self.programmatic_launch())
    }

    /// Launching on a stream of another context would fail inside the driver with a less
    /// helpful message.
    pub(crate) fn check_stream(&self, op: &'static str, stream: &CudaStream) -> Result<(), KernelError> {
        if **stream.context() == *self.ctx { Ok(()) } else { Err(KernelError::arg(op, "stream belongs to another CUDA context")) }
    }
}

/// Whether a device buffer starts on a 16-byte boundary (the kernels' vector loads need it).
pub(crate) fn check_aligned16<T, P: DevicePtr<T>>(op: &'static str, what: &str, buf: &P, stream: &CudaStream) -> Result<(), KernelError> {
    let (ptr, _record) = buf.device_ptr(stream);
    if ptr % 16 == 0 { Ok(()) } else { Err(KernelError::arg(op, format!("{what} is not 16-byte aligned"))) }
}

/// Grid/block of a launch.
pub(crate) fn cfg(grid: (u32, u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// A host size as the kernels' `int`, checked.
pub(crate) fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32, KernelError> {
    i32::try_from(v).map_err(|_| KernelError::arg(op, format!("{what} = {v} does not fit in i32")))
}

/// A host size as a grid dimension, checked.
pub(crate) fn to_u32(op: &'static str, what: &str, v: usize) -> Result<u32, KernelError> {
    u32::try_from(v).map_err(|_| KernelError::arg(op, format!("{what} = {v} does not fit in u32")))
}
