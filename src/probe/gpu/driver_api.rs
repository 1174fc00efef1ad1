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
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libcuda.so") || p.contains("libcuda."))
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

/// The PTX of kernels/, NUL-terminated for cuModuleLoadData.
const COPY_PTX: &str = concat!(include_str!("../../../kernels/copy.ptx"), "\0");

/// Contexts and kernels of the devices a worker has touched, created once per worker.
#[derive(Default)]
pub struct Session {
    contexts: BTreeMap<i32, CUcontext>,
    copy_kernels: BTreeMap<i32, Result<CUfunction, String>>,
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
        if let Some(k) = self.copy_kernels.get(&ordinal) {
            return k.clone();
        }
        let k = self.load_copy(ordinal);
        self.copy_kernels.insert(ordinal, k.clone());
        k
    }

    fn load_copy(&mut self, ordinal: i32) -> Result<CUfunction, String> {
        self.bind(ordinal)
            .map_err(|e| format!("cuCtxSetCurrent: {}", error_name(&e)))?;
        // SAFETY: the image is NUL-terminated PTX text that lives for the program.
        let module = unsafe { result::module::load_data(COPY_PTX.as_ptr() as *const c_void) }
            .map_err(|e| format!("cuModuleLoadData (kernels/copy.ptx): {}", error_name(&e)))?;
        // SAFETY: module was just loaded; the name is a NUL-terminated string.
        unsafe { result::module::get_function(module, c"copy_v4".into()) }
            .map_err(|e| format!("cuModuleGetFunction(copy_v4): {}", error_name(&e)))
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
