//! Kernel launches: the arguments packed as the driver reads them, queued by `cuLaunchKernel`
//! or — with programmatic dependent launch on (Hopper and newer, see
//! [`crate::Kernels::set_programmatic_launch`]) — by `cuLaunchKernelEx` with the
//! programmatic-stream-serialization attribute, which lets the driver start a kernel while
//! the one before it in the stream is still finishing. Every kernel of ours calls
//! `tf::pdl_wait()` (griddepcontrol.wait) before it touches memory, so the overlap covers
//! only launch latency and block scheduling, never data.

use std::ffi::c_void;

use cudarc::driver::sys;
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DriverError, LaunchConfig, SyncOnDrop,
};

/// One kernel argument's value; the launch hands the driver a pointer to each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ArgValue {
    Ptr(u64),
    I32(i32),
    I64(i64),
    U32(u32),
    F32(f32),
}

impl ArgValue {
    /// Where the driver reads the value from (valid while `self` is neither moved nor dropped).
    fn param(&mut self) -> *mut c_void {
        match self {
            ArgValue::Ptr(v) => v as *mut u64 as *mut c_void,
            ArgValue::I32(v) => v as *mut i32 as *mut c_void,
            ArgValue::I64(v) => v as *mut i64 as *mut c_void,
            ArgValue::U32(v) => v as *mut u32 as *mut c_void,
            ArgValue::F32(v) => v as *mut f32 as *mut c_void,
        }
    }
}

/// Most arguments a kernel may take (ours: at most 20, tf_sample). Held inline: a decode step
/// queues ≈ 290 launches, none of which should allocate.
const MAX_ARGS: usize = 24;

/// The driver's parameter array: one pointer per argument, into `args` (the rest null).
fn params(args: &mut [ArgValue]) -> [*mut c_void; MAX_ARGS] {
    let mut p = [std::ptr::null_mut(); MAX_ARGS];
    for (slot, a) in p.iter_mut().zip(args.iter_mut()) {
        *slot = a.param();
    }
    p
}

/// A launch being built: arguments in the kernel's order, then [`KernelLaunch::launch`].
pub(crate) struct KernelLaunch<'a> {
    stream: &'a CudaStream,
    func: &'a CudaFunction,
    programmatic: bool,
    args: [ArgValue; MAX_ARGS],
    len: usize,
    /// cudarc's read/write bookkeeping of the buffers (no-ops with event tracking off);
    /// dropped only after the launch is queued, as cudarc requires.
    guards: [Option<SyncOnDrop<'a>>; MAX_ARGS],
}

impl<'a> KernelLaunch<'a> {
    pub(crate) fn new(stream: &'a CudaStream, func: &'a CudaFunction, programmatic: bool) -> Self {
        KernelLaunch { stream, func, programmatic, args: [ArgValue::I32(0); MAX_ARGS], len: 0, guards: [const { None }; MAX_ARGS] }
    }

    /// Appends an argument; one past [`MAX_ARGS`] is counted, and refused at launch.
    fn push(&mut self, v: ArgValue, guard: Option<SyncOnDrop<'a>>) -> &mut Self {
        if let Some(slot) = self.args.get_mut(self.len) {
            *slot = v;
            self.guards[self.len] = guard;
        }
        self.len += 1;
        self
    }

    fn ptr(&mut self, (p, guard): (u64, SyncOnDrop<'a>)) -> &mut Self {
        self.push(ArgValue::Ptr(p), Some(guard))
    }

    /// Queues the kernel on the stream.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameter list in number, order and type, and
    /// `cfg` must be a grid the kernel handles for the buffers given (the ops' launchers
    /// check their sizes before they get here).
    pub(crate) unsafe fn launch(mut self, cfg: LaunchConfig) -> Result<(), DriverError> {
        if self.len > MAX_ARGS {
            // A launcher bug, not a request's: the kernel would read missing parameters.
            return Err(DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        self.stream.context().bind_to_thread()?;
        let mut params = params(&mut self.args[..self.len]);
        if self.programmatic {
            // SAFETY: an all-zero attribute is a valid "ignore" entry; id and value are set next.
            let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
            attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attr.value.programmaticStreamSerializationAllowed = 1;
            let config = sys::CUlaunchConfig {
                gridDimX: cfg.grid_dim.0,
                gridDimY: cfg.grid_dim.1,
                gridDimZ: cfg.grid_dim.2,
                blockDimX: cfg.block_dim.0,
                blockDimY: cfg.block_dim.1,
                blockDimZ: cfg.block_dim.2,
                sharedMemBytes: cfg.shared_mem_bytes,
                hStream: self.stream.cu_stream(),
                attrs: &mut attr,
                numAttrs: 1,
            };
            // SAFETY: `config` and `attr` live across the call; `params` points into
            // `self.args`, which is not touched until the call returns (the driver copies
            // the values at launch); the caller vouches for the argument list.
            unsafe { sys::cuLaunchKernelEx(&config, self.func.cu_function(), params.as_mut_ptr(), std::ptr::null_mut()) }.result()
        } else {
            // SAFETY: as above, through cuLaunchKernel.
            unsafe {
                cudarc::driver::result::launch_kernel(
                    self.func.cu_function(),
                    cfg.grid_dim,
                    cfg.block_dim,
                    cfg.shared_mem_bytes,
                    self.stream.cu_stream(),
                    &mut params[..self.len],
                )
            }
        }
    }
}

/// Adds one kernel argument (device buffers by their device pointer, scalars by value).
pub(crate) trait PushArg<T> {
    fn arg(&mut self, v: T) -> &mut Self;
}

impl<'a, 'b: 'a, T> PushArg<&'b CudaView<'_, T>> for KernelLaunch<'a> {
    fn arg(&mut self, v: &'b CudaView<'_, T>) -> &mut Self {
        let s = self.stream;
        self.ptr(v.device_ptr(s))
    }
}

impl<'a, 'b: 'a, T> PushArg<&'b mut CudaViewMut<'_, T>> for KernelLaunch<'a> {
    fn arg(&mut self, v: &'b mut CudaViewMut<'_, T>) -> &mut Self {
        let s = self.stream;
        self.ptr(v.device_ptr_mut(s))
    }
}

impl<'a, 'b: 'a, T> PushArg<&'b CudaSlice<T>> for KernelLaunch<'a> {
    fn arg(&mut self, v: &'b CudaSlice<T>) -> &mut Self {
        let s = self.stream;
        self.ptr(v.device_ptr(s))
    }
}

impl<'a, 'b: 'a, T> PushArg<&'b mut CudaSlice<T>> for KernelLaunch<'a> {
    fn arg(&mut self, v: &'b mut CudaSlice<T>) -> &mut Self {
        let s = self.stream;
        self.ptr(v.device_ptr_mut(s))
    }
}

macro_rules! scalar_arg {
    ($t:ty, $variant:ident) => {
        impl PushArg<&$t> for KernelLaunch<'_> {
            fn arg(&mut self, v: &$t) -> &mut Self {
                self.push(ArgValue::$variant(*v), None)
            }
        }
    };
}
scalar_arg!(i32, I32);
scalar_arg!(i64, I64);
scalar_arg!(u32, U32);
scalar_arg!(f32, F32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_parameter_points_at_its_own_value() {
        let mut args = [ArgValue::Ptr(0xdead_beef_0000), ArgValue::I32(-7), ArgValue::I64(1 << 40), ArgValue::U32(9), ArgValue::F32(0.5)];
        let p = params(&mut args);
        assert!(p[5..].iter().all(|q| q.is_null()));
        // SAFETY: each pointer was taken from the matching variant of `args`, still alive.
        unsafe {
            assert_eq!(*(p[0] as *const u64), 0xdead_beef_0000);
            assert_eq!(*(p[1] as *const i32), -7);
            assert_eq!(*(p[2] as *const i64), 1 << 40);
            assert_eq!(*(p[3] as *const u32), 9);
            assert_eq!(*(p[4] as *const f32), 0.5);
        }
    }
}
