//! The small part of the CUDA driver API that the GPU steps share: checking the library before
//! cudarc touches it, naming errors, primary contexts bound by device, device buffers, and the
//! kernels of kernels/. Plain `sys`/`result` calls rather than cudarc's safe layer: the set of
//! symbols called stays explicit (checked up front, old drivers included) and nothing blocks or
//! panics in a destructor behind our back.

use cudarc::driver::sys::{self, CUcontext, CUdeviceptr, CUfunction, CUresult};
use cudarc::driver::{result, DriverError};
use std::collections::BTreeMap;
use std::ffi::c_void;

/// `"CUDA_ERROR_X (text)"`, or the raw code when the driver cannot name it.
pub fn error_name(e: &DriverError) -> String {
    let name = e
        .error_name()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name} ({})", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// A failed CUDA call of a GPU step: the message, and whether it poisoned the context.
pub struct Failure {
    pub message: String,
    pub sticky: bool,
}

/// `what: CUDA_ERROR_X (text)`, sticky when the context is lost.
pub fn fail(what: &str, e: DriverError) -> Failure {
    Failure {
        sticky: is_sticky(&e),
        message: format!("{what}: {}", error_name(&e)),
    }
}

/// Errors after which the context is unusable: every later call in this process fails too.
pub fn is_sticky(e: &DriverError) -> bool {
    use CUresult::*;
    matches!(
        e.0,
        CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_LAUNCH_TIMEOUT
            | CUDA_ERROR_ASSERT
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_LAUNCH_FAILED
            | CUDA_ERROR_ECC_UNCORRECTABLE
            | CUDA_ERROR_CONTEXT_IS_DESTROYED
    )
}

/// The libcuda this process mapped, from /proc/self/maps.
pub fn loaded_library() -> Option<String> {
    mapped_file("libcuda.")
}

/// The first file this process mapped whose path contains `needle` (from /proc/self/maps):
/// which library the loader really chose for a bare soname.
pub fn mapped_file(needle: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains(needle))
        .map(String::from)
}

/// Why the driver library cannot be used for `symbols`, or None when it can. cudarc panics on a
/// missing library or symbol, so this runs before any call.
pub fn unusable(symbols: &[&str]) -> Option<String> {
    // SAFETY: only dlopen()s the library by name to see whether it exists.
    if !unsafe { sys::is_culib_present() } {
        return Some("libcuda.so.1 not loadable (no NVIDIA driver user-space libraries, or not on the loader path)".into());
    }
    // SAFETY: the library is present (checked above), so culib() does not panic.
    let lib = unsafe { sys::culib() };
    for s in symbols {
        // SAFETY: looking a symbol up does not call it.
        if unsafe { lib.get::<unsafe extern "C" fn()>(s.as_bytes()) }.is_err() {
            let path = loaded_library().unwrap_or_else(|| "libcuda".into());
            return Some(format!(
                "{path} has no {s}: not a usable NVIDIA driver library, or one older than rigdoctor supports (R470)"
            ));
        }
    }
    None
}

/// Driver-API symbols the transfer tests call, all present since CUDA 10 / driver R410.
pub const TRANSFER_SYMBOLS: [&str; 17] = [
    "cuDevicePrimaryCtxRetain",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemcpyHtoD_v2",
    "cuMemcpyDtoH_v2",
    "cuMemsetD32_v2",
    "cuMemcpyPeerAsync",
    "cuDeviceCanAccessPeer",
    "cuDeviceGetP2PAttribute",
    "cuCtxEnablePeerAccess",
    "cuCtxDisablePeerAccess",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuLaunchKernel",
    "cuDeviceGet",
];

/// Driver-API symbols the bandwidth measurements add (streams, events, pinned host memory);
/// all present since CUDA 10 / driver R410.
pub const BANDWIDTH_SYMBOLS: [&str; 13] = [
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuEventCreate",
    "cuEventDestroy_v2",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventElapsedTime",
    "cuMemHostAlloc",
    "cuMemFreeHost",
    "cuMemHostGetDevicePointer_v2",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
];

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
                concat!(include_str!("../../../kernels/copy.ptx"), "\0"),
                "kernels/copy.ptx",
                c"copy_v4",
            ),
            Kernel::Spin => (
                concat!(include_str!("../../../kernels/spin.ptx"), "\0"),
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
    kernels: BTreeMap<(i32, Kernel), Result<CUfunction, String>>,
}

impl Session {
    /// The primary context of CUDA device `ordinal` (the one the user's frameworks use too).
    pub fn context(&mut self, ordinal: i32) -> Result<CUcontext, DriverError> {
        if let Some(c) = self.contexts.get(&ordinal) {
            return Ok(*c);
        }
        let dev = result::device::get(ordinal)?;
        // SAFETY: dev comes from cuDeviceGet.
        let ctx = unsafe { result::primary_ctx::retain(dev) }?;
        self.contexts.insert(ordinal, ctx);
        Ok(ctx)
    }

    /// Make `ordinal`'s context current; its handle.
    pub fn bind(&mut self, ordinal: i32) -> Result<CUcontext, DriverError> {
        let ctx = self.context(ordinal)?;
        // SAFETY: ctx is a retained primary context.
        unsafe { result::ctx::set_current(ctx) }?;
        Ok(ctx)
    }

    /// `copy_v4` loaded into `ordinal`'s context (JIT-compiled from the PTX on first use).
    pub fn copy_kernel(&mut self, ordinal: i32) -> Result<CUfunction, String> {
        self.kernel(ordinal, Kernel::Copy)
    }

    /// A kernel of kernels/ loaded into `ordinal`'s context, once per worker.
    pub fn kernel(&mut self, ordinal: i32, k: Kernel) -> Result<CUfunction, String> {
        if let Some(f) = self.kernels.get(&(ordinal, k)) {
            return f.clone();
        }
        let f = self.load(ordinal, k);
        self.kernels.insert((ordinal, k), f.clone());
        f
    }

    fn load(&mut self, ordinal: i32, k: Kernel) -> Result<CUfunction, String> {
        let (ptx, file, entry) = k.source();
        self.bind(ordinal)
            .map_err(|e| format!("cuCtxSetCurrent: {}", error_name(&e)))?;
        // SAFETY: the image is NUL-terminated PTX text that lives for the program.
        let module = unsafe { result::module::load_data(ptx.as_ptr() as *const c_void) }
            .map_err(|e| format!("cuModuleLoadData ({file}): {}", error_name(&e)))?;
        // SAFETY: module was just loaded; the name is a NUL-terminated string.
        unsafe { result::module::get_function(module, entry.into()) }.map_err(|e| {
            format!(
                "cuModuleGetFunction({}): {}",
                entry.to_string_lossy(),
                error_name(&e)
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
    pub fn new(bytes: usize) -> Result<DeviceBuffer, DriverError> {
        // SAFETY: plain allocation; the contents are written before they are read.
        let ptr = unsafe { result::malloc_sync(bytes) }?;
        Ok(DeviceBuffer { ptr, bytes })
    }

    pub fn upload(&self, data: &[u8]) -> Result<(), DriverError> {
        debug_assert_eq!(data.len(), self.bytes);
        // SAFETY: the buffer holds `bytes` bytes; the copy is synchronous.
        unsafe { result::memcpy_htod_sync(self.ptr, data) }
    }

    pub fn download(&self, out: &mut [u8]) -> Result<(), DriverError> {
        debug_assert_eq!(out.len(), self.bytes);
        // SAFETY: as above.
        unsafe { result::memcpy_dtoh_sync(out, self.ptr) }
    }

    /// Fill with a 32-bit value and wait for it.
    pub fn fill(&self, value: u32) -> Result<(), DriverError> {
        // SAFETY: the buffer holds `bytes` bytes, a multiple of 4 by construction.
        unsafe { sys::cuMemsetD32_v2(self.ptr, value, self.bytes / 4) }.result()?;
        result::ctx::synchronize()
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemAlloc and freed once.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// A stream of the current context, destroyed on drop.
pub struct Stream(pub sys::CUstream);

impl Stream {
    pub fn new() -> Result<Stream, DriverError> {
        let mut s = std::ptr::null_mut();
        // SAFETY: valid out pointer; non-blocking so the legacy null stream never serialises it.
        unsafe { sys::cuStreamCreate(&mut s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32) }
            .result()?;
        Ok(Stream(s))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: created by cuStreamCreate, destroyed once (the driver defers it past pending work).
        let _ = unsafe { sys::cuStreamDestroy_v2(self.0) };
    }
}

/// A timing event of the current context, destroyed on drop.
pub struct Event(pub sys::CUevent);

impl Event {
    pub fn new() -> Result<Event, DriverError> {
        let mut e = std::ptr::null_mut();
        // SAFETY: valid out pointer; flags 0 = timing enabled.
        unsafe { sys::cuEventCreate(&mut e, 0) }.result()?;
        Ok(Event(e))
    }

    pub fn record(&self, stream: &Stream) -> Result<(), DriverError> {
        // SAFETY: event and stream are live and of the same context.
        unsafe { sys::cuEventRecord(self.0, stream.0) }.result()
    }

    /// Whether the work before the event has finished (cuEventQuery: NOT_READY is `false`).
    pub fn done(&self) -> Result<bool, DriverError> {
        // SAFETY: a live event.
        match unsafe { sys::cuEventQuery(self.0) } {
            CUresult::CUDA_SUCCESS => Ok(true),
            CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            e => Err(DriverError(e)),
        }
    }

    /// Milliseconds from `start` to this event; both must have completed.
    pub fn since(&self, start: &Event) -> Result<f64, DriverError> {
        let mut ms = 0f32;
        // SAFETY: both events recorded and complete (callers wait for `done`).
        unsafe { sys::cuEventElapsedTime(&mut ms, start.0, self.0) }.result()?;
        Ok(f64::from(ms))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by cuEventCreate, destroyed once.
        let _ = unsafe { sys::cuEventDestroy_v2(self.0) };
    }
}

/// Page-locked host memory, portable across contexts and mapped into every GPU's address
/// space; not write-combined, so the CPU reads it back at full speed for verification.
pub struct HostBuffer {
    ptr: *mut u8,
    pub bytes: usize,
}

impl HostBuffer {
    pub fn new(bytes: usize) -> Result<HostBuffer, DriverError> {
        let mut p: *mut c_void = std::ptr::null_mut();
        let flags = sys::CU_MEMHOSTALLOC_PORTABLE | sys::CU_MEMHOSTALLOC_DEVICEMAP;
        // SAFETY: valid out pointer; a plain allocation.
        unsafe { sys::cuMemHostAlloc(&mut p, bytes, flags) }.result()?;
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
    pub fn device_ptr(&self) -> Result<CUdeviceptr, DriverError> {
        let mut d: CUdeviceptr = 0;
        // SAFETY: the allocation is mapped (DEVICEMAP); flags must be 0.
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut d, self.host_ptr(), 0) }.result()?;
        Ok(d)
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc and freed once.
        let _ = unsafe { sys::cuMemFreeHost(self.host_ptr()) };
    }
}
