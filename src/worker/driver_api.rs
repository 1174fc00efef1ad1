//! The small part of the CUDA driver API that the GPU steps share: primary contexts bound by
//! device, device and pinned host buffers, streams, events, and the kernels of kernels/. Plain
//! calls through [`super::cu`] (raw integer results): the set of symbols stays explicit and
//! nothing blocks or panics in a destructor behind our back.

use super::cu::{self, api, check, CUcontext, CUdeviceptr, CUfunction, CuError};
use crate::facts::{CallError, StepError};
use std::collections::BTreeMap;
use std::ffi::c_void;

/// The driver's table, or the step error "CUDA is not usable" for a step that needs it.
pub fn driver() -> Result<&'static cu::Api, StepError> {
    api().map_err(|because| StepError::NotRun {
        because: format!("CUDA is not usable: {because}"),
    })
}

/// `cuInit(0)` (cheap when done already: a restarted worker starts here).
pub fn init() -> Result<&'static cu::Api, StepError> {
    let a = driver()?;
    // SAFETY: cuInit takes flags 0.
    check(unsafe { (a.cuInit)(0) }).map_err(|e| StepError::NotRun {
        because: format!("CUDA is not usable: {}", e.at("cuInit")),
    })?;
    Ok(a)
}

/// `cuDeviceGetCount` after init.
pub fn device_count() -> Result<i32, StepError> {
    let a = init()?;
    let mut n = 0;
    // SAFETY: valid out pointer.
    check(unsafe { (a.cuDeviceGetCount)(&mut n) }).map_err(|e| e.at("cuDeviceGetCount"))?;
    Ok(n)
}

/// `cuDeviceGet`.
pub fn device(ordinal: i32) -> Result<cu::CUdevice, CuError> {
    let a = api().map_err(|_| CuError(cu::code::NO_DEVICE))?;
    let mut d = 0;
    // SAFETY: valid out pointer.
    check(unsafe { (a.cuDeviceGet)(&mut d, ordinal) })?;
    Ok(d)
}

/// The API table when the library is open (always, once a step got past `init`).
fn a() -> Result<&'static cu::Api, CuError> {
    // Not loadable is reported by `init`; here it can only mean a bug, answered as an error.
    api().map_err(|_| CuError(cu::code::INVALID_CONTEXT))
}

/// The kernels of kernels/, each in its own PTX module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernel {
    /// `copy_v4(dst, src, n)`: 16-byte elements, grid-stride.
    Copy,
    /// `spin_wait(flag, timeout_ns)`: holds a stream until the host releases it.
    Spin,
}

impl Kernel {
    /// (PTX text NUL-terminated for cuModuleLoadData, file name, entry name).
    fn source(self) -> (&'static str, &'static str, &'static std::ffi::CStr) {
        match self {
            Kernel::Copy => (
                concat!(include_str!("../../kernels/copy.ptx"), "\0"),
                "kernels/copy.ptx",
                c"copy_v4",
            ),
            Kernel::Spin => (
                concat!(include_str!("../../kernels/spin.ptx"), "\0"),
                "kernels/spin.ptx",
                c"spin_wait",
            ),
        }
    }
}

/// Contexts and kernels of the devices a worker has touched, created once per worker.
#[derive(Default)]
pub struct Session {
    contexts: BTreeMap<i32, CUcontext>,
    kernels: BTreeMap<(i32, Kernel), Result<CUfunction, CallError>>,
}

impl Session {
    /// The primary context of CUDA device `ordinal` (the one the user's frameworks use too).
    pub fn context(&mut self, ordinal: i32) -> Result<CUcontext, CuError> {
        if let Some(c) = self.contexts.get(&ordinal) {
            return Ok(*c);
        }
        let dev = device(ordinal)?;
        let mut ctx: CUcontext = std::ptr::null_mut();
        // SAFETY: dev comes from cuDeviceGet; valid out pointer.
        check(unsafe { (a()?.cuDevicePrimaryCtxRetain)(&mut ctx, dev) })?;
        self.contexts.insert(ordinal, ctx);
        Ok(ctx)
    }

    /// Make `ordinal`'s context current; its handle.
    pub fn bind(&mut self, ordinal: i32) -> Result<CUcontext, CuError> {
        let ctx = self.context(ordinal)?;
        // SAFETY: ctx is a retained primary context.
        check(unsafe { (a()?.cuCtxSetCurrent)(ctx) })?;
        Ok(ctx)
    }

    /// `copy_v4` loaded into `ordinal`'s context (JIT-compiled from the PTX on first use).
    pub fn copy_kernel(&mut self, ordinal: i32) -> Result<CUfunction, CallError> {
        self.kernel(ordinal, Kernel::Copy)
    }

    /// A kernel of kernels/ loaded into `ordinal`'s context, once per worker.
    pub fn kernel(&mut self, ordinal: i32, k: Kernel) -> Result<CUfunction, CallError> {
        if let Some(f) = self.kernels.get(&(ordinal, k)) {
            return f.clone();
        }
        let f = self.load(ordinal, k);
        self.kernels.insert((ordinal, k), f.clone());
        f
    }

    fn load(&mut self, ordinal: i32, k: Kernel) -> Result<CUfunction, CallError> {
        let (ptx, file, entry) = k.source();
        self.bind(ordinal).map_err(|e| e.at("cuCtxSetCurrent"))?;
        let a = a().map_err(|e| e.at("cuModuleLoadData"))?;
        let mut module: cu::CUmodule = std::ptr::null_mut();
        // SAFETY: the image is NUL-terminated PTX text that lives for the program.
        check(unsafe { (a.cuModuleLoadData)(&mut module, ptx.as_ptr() as *const c_void) })
            .map_err(|e| e.at(format!("cuModuleLoadData ({file})")))?;
        let mut f: CUfunction = std::ptr::null_mut();
        // SAFETY: module was just loaded; the name is a NUL-terminated string.
        check(unsafe { (a.cuModuleGetFunction)(&mut f, module, entry.as_ptr()) })
            .map_err(|e| e.at(format!("cuModuleGetFunction({})", entry.to_string_lossy())))?;
        Ok(f)
    }

    /// Launch `f` on `stream` (null: the context's default stream) with these arguments.
    pub fn launch(
        f: CUfunction,
        grid: u32,
        block: u32,
        stream: cu::CUstream,
        params: &mut [*mut c_void],
    ) -> Result<(), CuError> {
        // SAFETY: the caller passes the kernel's parameters as its PTX .entry declares them.
        check(unsafe {
            (a()?.cuLaunchKernel)(
                f,
                grid,
                1,
                1,
                block,
                1,
                1,
                0,
                stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })
    }
}

/// Device memory, freed on drop (without a context switch: pointers are unified).
pub struct DeviceBuffer {
    pub ptr: CUdeviceptr,
    pub bytes: usize,
}

impl DeviceBuffer {
    /// Allocate in the current context.
    pub fn new(bytes: usize) -> Result<DeviceBuffer, CuError> {
        let mut ptr: CUdeviceptr = 0;
        // SAFETY: plain allocation; the contents are written before they are read.
        check(unsafe { (a()?.cuMemAlloc_v2)(&mut ptr, bytes) })?;
        Ok(DeviceBuffer { ptr, bytes })
    }

    pub fn upload(&self, data: &[u8]) -> Result<(), CuError> {
        let n = data.len().min(self.bytes);
        // SAFETY: both hold at least n bytes; the copy is synchronous.
        check(unsafe { (a()?.cuMemcpyHtoD_v2)(self.ptr, data.as_ptr() as *const c_void, n) })
    }

    pub fn download(&self, out: &mut [u8]) -> Result<(), CuError> {
        let n = out.len().min(self.bytes);
        // SAFETY: as above.
        check(unsafe { (a()?.cuMemcpyDtoH_v2)(out.as_mut_ptr() as *mut c_void, self.ptr, n) })
    }

    /// Fill with a 32-bit value and wait for it.
    pub fn fill(&self, value: u32) -> Result<(), CuError> {
        // SAFETY: the buffer holds `bytes` bytes, a multiple of 4 by construction.
        check(unsafe { (a()?.cuMemsetD32_v2)(self.ptr, value, self.bytes / 4) })?;
        synchronize()
    }
}

/// `cuCtxSynchronize` of the current context.
pub fn synchronize() -> Result<(), CuError> {
    // SAFETY: no arguments; fails cleanly without a current context.
    check(unsafe { (a()?.cuCtxSynchronize)() })
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let Ok(a) = a() {
            // SAFETY: allocated by cuMemAlloc and freed once.
            let _ = unsafe { (a.cuMemFree_v2)(self.ptr) };
        }
    }
}

/// A stream of the current context, destroyed on drop.
pub struct Stream(pub cu::CUstream);

/// cuda.h CU_STREAM_NON_BLOCKING.
const STREAM_NON_BLOCKING: u32 = 0x1;

impl Stream {
    pub fn new() -> Result<Stream, CuError> {
        let mut s = std::ptr::null_mut();
        // SAFETY: valid out pointer; non-blocking so the legacy null stream never serialises it.
        check(unsafe { (a()?.cuStreamCreate)(&mut s, STREAM_NON_BLOCKING) })?;
        Ok(Stream(s))
    }

    /// Wait for everything queued on the stream.
    pub fn synchronize(&self) -> Result<(), CuError> {
        // SAFETY: a live stream.
        check(unsafe { (a()?.cuStreamSynchronize)(self.0) })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Ok(a) = a() {
            // SAFETY: created by cuStreamCreate, destroyed once (the driver defers it past
            // pending work).
            let _ = unsafe { (a.cuStreamDestroy_v2)(self.0) };
        }
    }
}

/// A timing event of the current context, destroyed on drop.
pub struct Event(pub cu::CUevent);

impl Event {
    pub fn new() -> Result<Event, CuError> {
        let mut e = std::ptr::null_mut();
        // SAFETY: valid out pointer; flags 0 = timing enabled.
        check(unsafe { (a()?.cuEventCreate)(&mut e, 0) })?;
        Ok(Event(e))
    }

    pub fn record(&self, stream: &Stream) -> Result<(), CuError> {
        // SAFETY: event and stream are live and of the same context.
        check(unsafe { (a()?.cuEventRecord)(self.0, stream.0) })
    }

    /// Whether the work before the event has finished (cuEventQuery: NOT_READY is `false`).
    pub fn done(&self) -> Result<bool, CuError> {
        // SAFETY: a live event.
        match unsafe { (a()?.cuEventQuery)(self.0) } {
            cu::code::SUCCESS => Ok(true),
            cu::code::NOT_READY => Ok(false),
            e => Err(CuError(e)),
        }
    }

    /// Milliseconds from `start` to this event; both must have completed.
    pub fn since(&self, start: &Event) -> Result<f64, CuError> {
        let mut ms = 0f32;
        // SAFETY: both events recorded and complete (callers wait for `done`).
        check(unsafe { (a()?.cuEventElapsedTime)(&mut ms, start.0, self.0) })?;
        Ok(f64::from(ms))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if let Ok(a) = a() {
            // SAFETY: created by cuEventCreate, destroyed once.
            let _ = unsafe { (a.cuEventDestroy_v2)(self.0) };
        }
    }
}

/// Page-locked host memory, portable across contexts and mapped into every GPU's address
/// space; not write-combined, so the CPU reads it back at full speed for verification.
pub struct HostBuffer {
    ptr: *mut u8,
    pub bytes: usize,
}

impl HostBuffer {
    pub fn new(bytes: usize) -> Result<HostBuffer, CuError> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // cuda.h: CU_MEMHOSTALLOC_PORTABLE 0x01, CU_MEMHOSTALLOC_DEVICEMAP 0x02.
        let flags = 0x01 | 0x02;
        // SAFETY: valid out pointer; a plain allocation.
        check(unsafe { (a()?.cuMemHostAlloc)(&mut p, bytes, flags) })?;
        Ok(HostBuffer {
            ptr: p as *mut u8,
            bytes,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `bytes` bytes allocated by cuMemHostAlloc, alive while self is.
        unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }

    pub fn host_ptr(&self) -> *mut c_void {
        self.ptr as *mut c_void
    }

    /// The address kernels of the current context use for this memory.
    pub fn device_ptr(&self) -> Result<CUdeviceptr, CuError> {
        let mut d: CUdeviceptr = 0;
        // SAFETY: the allocation is mapped (DEVICEMAP); flags must be 0.
        check(unsafe { (a()?.cuMemHostGetDevicePointer_v2)(&mut d, self.host_ptr(), 0) })?;
        Ok(d)
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        if let Ok(a) = a() {
            // SAFETY: allocated by cuMemHostAlloc and freed once.
            let _ = unsafe { (a.cuMemFreeHost)(self.host_ptr()) };
        }
    }
}
