//! The CUDA driver API as the worker calls it: `libcuda.so.1` opened at run time and every
//! function declared with a plain `i32` return.
//!
//! Why not cudarc's loader and `result` layer: (1) its `CUresult` is a Rust enum, and a newer
//! driver returns codes the 12.9 enum lacks (36 `CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER` in
//! 13.0, and more since): receiving one as the enum is undefined behaviour, so the raw integer
//! must be read before anything interprets it; (2) cudarc tries `libcuda.so` before
//! `libcuda.so.1`, while the CUDA runtime and NCCL load only `libcuda.so.1`, so a toolkit stub
//! `libcuda.so` earlier on the loader path made rigdoctor fail where PyTorch works. cudarc
//! still provides the handle types and attribute enums (passed in, never received).

use crate::facts::{CallError, Library as Lib};
pub use cudarc::driver::sys::{
    CUcontext, CUdevice, CUdeviceptr, CUevent, CUfunction, CUmodule, CUstream,
};
use libloading::Library;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

/// CUresult values rigdoctor acts on (cuda.h).
pub mod code {
    pub const SUCCESS: i32 = 0;
    pub const STUB_LIBRARY: i32 = 34;
    pub const NO_DEVICE: i32 = 100;
    pub const INVALID_CONTEXT: i32 = 201;
    pub const ECC_UNCORRECTABLE: i32 = 214;
    pub const JIT_COMPILER_NOT_FOUND: i32 = 221;
    pub const CONTAINED: i32 = 226;
    pub const NOT_READY: i32 = 600;
    pub const ILLEGAL_ADDRESS: i32 = 700;
    pub const LAUNCH_TIMEOUT: i32 = 702;
    pub const PEER_ACCESS_ALREADY_ENABLED: i32 = 704;
    pub const CONTEXT_IS_DESTROYED: i32 = 709;
    pub const ASSERT: i32 = 710;
    pub const HARDWARE_STACK_ERROR: i32 = 714;
    pub const ILLEGAL_INSTRUCTION: i32 = 715;
    pub const MISALIGNED_ADDRESS: i32 = 716;
    pub const INVALID_ADDRESS_SPACE: i32 = 717;
    pub const INVALID_PC: i32 = 718;
    pub const LAUNCH_FAILED: i32 = 719;
    pub const TENSOR_MEMORY_LEAK: i32 = 721;
    pub const SYSTEM_DRIVER_MISMATCH: i32 = 803;
    pub const MPS_CLIENT_TERMINATED: i32 = 810;
    pub const EXTERNAL_DEVICE: i32 = 911;
}

/// Codes after which the process's CUDA state is unusable: cuda.h documents each with "the
/// process must be terminated and relaunched" / "any further CUDA work will return the same
/// error" (226 CONTAINED: invalid peer access over NVLink; 721: a kernel exited with tensor
/// memory allocated; 810: the MPS server went away; 911: an external device's failure).
pub const STICKY: [i32; 15] = [
    code::ECC_UNCORRECTABLE,
    code::CONTAINED,
    code::ILLEGAL_ADDRESS,
    code::LAUNCH_TIMEOUT,
    code::CONTEXT_IS_DESTROYED,
    code::ASSERT,
    code::HARDWARE_STACK_ERROR,
    code::ILLEGAL_INSTRUCTION,
    code::MISALIGNED_ADDRESS,
    code::INVALID_ADDRESS_SPACE,
    code::INVALID_PC,
    code::LAUNCH_FAILED,
    code::TENSOR_MEMORY_LEAK,
    code::MPS_CLIENT_TERMINATED,
    code::EXTERNAL_DEVICE,
];

pub fn is_sticky(code: i32) -> bool {
    STICKY.contains(&code)
}

/// Declares the table of driver functions: one field per symbol, with its C signature from
/// cuda.h and an `i32` result.
macro_rules! driver_api {
    ($( $name:ident ( $($ty:ty),* ); )*) => {
        #[allow(non_snake_case)]
        pub struct Api {
            $( pub $name: unsafe extern "C" fn($($ty),*) -> c_int, )*
        }

        /// Every driver symbol the worker calls, resolved when the library is opened.
        pub const SYMBOLS: &[&str] = &[$(stringify!($name)),*];

        impl Api {
            fn resolve(lib: &Library) -> Result<Api, &'static str> {
                Ok(Api {
                    $( $name: {
                        let name = concat!(stringify!($name), "\0");
                        // SAFETY: the type is the symbol's C signature from cuda.h (with an
                        // int result); looking it up calls nothing.
                        *unsafe { lib.get(name.as_bytes()) }.map_err(|_| stringify!($name))?
                    }, )*
                })
            }
        }
    };
}

driver_api! {
    cuInit(c_uint);
    cuDriverGetVersion(*mut c_int);
    cuGetErrorName(c_int, *mut *const c_char);
    cuGetErrorString(c_int, *mut *const c_char);
    cuDeviceGetCount(*mut c_int);
    cuDeviceGet(*mut CUdevice, c_int);
    cuDeviceGetName(*mut c_char, c_int, CUdevice);
    cuDeviceGetPCIBusId(*mut c_char, c_int, CUdevice);
    cuDeviceTotalMem_v2(*mut usize, CUdevice);
    cuDeviceGetAttribute(*mut c_int, c_int, CUdevice);
    cuDeviceCanAccessPeer(*mut c_int, CUdevice, CUdevice);
    cuDeviceGetP2PAttribute(*mut c_int, c_int, CUdevice, CUdevice);
    cuDevicePrimaryCtxRetain(*mut CUcontext, CUdevice);
    cuCtxSetCurrent(CUcontext);
    cuCtxSynchronize();
    cuCtxEnablePeerAccess(CUcontext, c_uint);
    cuCtxDisablePeerAccess(CUcontext);
    cuMemAlloc_v2(*mut CUdeviceptr, usize);
    cuMemFree_v2(CUdeviceptr);
    cuMemcpyHtoD_v2(CUdeviceptr, *const c_void, usize);
    cuMemcpyDtoH_v2(*mut c_void, CUdeviceptr, usize);
    cuMemsetD32_v2(CUdeviceptr, c_uint, usize);
    cuMemcpyPeerAsync(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, usize, CUstream);
    cuMemcpyHtoDAsync_v2(CUdeviceptr, *const c_void, usize, CUstream);
    cuMemcpyDtoHAsync_v2(*mut c_void, CUdeviceptr, usize, CUstream);
    cuMemHostAlloc(*mut *mut c_void, usize, c_uint);
    cuMemFreeHost(*mut c_void);
    cuMemHostGetDevicePointer_v2(*mut CUdeviceptr, *mut c_void, c_uint);
    cuModuleLoadData(*mut CUmodule, *const c_void);
    cuModuleGetFunction(*mut CUfunction, CUmodule, *const c_char);
    cuLaunchKernel(CUfunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CUstream, *mut *mut c_void, *mut *mut c_void);
    cuStreamCreate(*mut CUstream, c_uint);
    cuStreamDestroy_v2(CUstream);
    cuStreamSynchronize(CUstream);
    cuEventCreate(*mut CUevent, c_uint);
    cuEventDestroy_v2(CUevent);
    cuEventRecord(CUevent, CUstream);
    cuEventQuery(CUevent);
    cuEventElapsedTime(*mut f32, CUevent, CUevent);
}

/// The opened driver library.
pub struct Driver {
    pub api: Api,
    /// The file the loader mapped (dladdr of cuInit), e.g. /usr/lib/x86_64-linux-gnu/libcuda.so.535.183.01.
    pub path: String,
    // Never unloaded: NCCL and the driver keep threads that run its code.
    _lib: Library,
}

/// The names tried, in order: the driver's soname first, as the CUDA runtime and NCCL load it;
/// the unversioned name (a development symlink, or a toolkit stub) only as a fallback.
pub const SONAMES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();

/// The driver, opened once per worker; or why it cannot be used.
pub fn driver() -> Result<&'static Driver, String> {
    DRIVER
        .get_or_init(|| open(&SONAMES))
        .as_ref()
        .map_err(Clone::clone)
}

fn open(names: &[&str]) -> Result<Driver, String> {
    let mut tried = Vec::new();
    for name in names {
        // SAFETY: loading the NVIDIA driver library runs its own initialisers only.
        let lib = match unsafe { Library::new(name) } {
            Ok(l) => l,
            Err(e) => {
                tried.push(format!("{name}: {e}"));
                continue;
            }
        };
        let path = mapped_path(&lib).unwrap_or_else(|| name.to_string());
        return match Api::resolve(&lib) {
            Ok(api) => Ok(Driver {
                api,
                path,
                _lib: lib,
            }),
            // A library that loads but lacks a symbol is foreign or too old: say which file.
            Err(sym) => Err(format!(
                "{path} has no {sym}: not a usable NVIDIA driver library, or one older than rigdoctor supports (R450 / CUDA 11.0, the oldest that JIT-compiles its PTX)"
            )),
        };
    }
    Err(format!(
        "libcuda.so.1 not loadable (no NVIDIA driver user-space libraries, or not on the loader path): {}",
        tried.join("; ")
    ))
}

/// The path of the object `lib` is, from dladdr on one of its symbols.
fn mapped_path(lib: &Library) -> Option<String> {
    // SAFETY: looking up a symbol calls nothing.
    let sym = unsafe { lib.get::<unsafe extern "C" fn()>(b"cuInit\0") }.ok()?;
    let addr = *sym as *const c_void;
    // SAFETY: Dl_info is plain data; dladdr fills it for an address inside a loaded object.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: addr is a symbol of a loaded library; info is a valid out pointer.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
    let p = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy();
    Some(std::fs::canonicalize(&*p).map_or_else(|_| p.to_string(), |c| c.display().to_string()))
}

/// A failed driver call: the raw code, named by the driver itself when it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CuError(pub i32);

impl CuError {
    /// `cuGetErrorName`, or None for a code this driver does not know (it then returns
    /// CUDA_ERROR_INVALID_VALUE and leaves the pointer unset).
    pub fn name(self) -> Option<String> {
        lookup(self.0, |d| d.api.cuGetErrorName)
    }

    pub fn text(self) -> Option<String> {
        lookup(self.0, |d| d.api.cuGetErrorString)
    }

    pub fn sticky(self) -> bool {
        is_sticky(self.0)
    }

    /// The failure of `call` as a fact.
    pub fn at(self, call: impl Into<String>) -> CallError {
        CallError {
            library: Lib::Cuda,
            call: call.into(),
            code: i64::from(self.0),
            name: self.name(),
            text: self.text(),
            sticky: self.sticky(),
        }
    }
}

type Describe = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;

fn lookup(code: i32, f: impl Fn(&Driver) -> Describe) -> Option<String> {
    let d = driver().ok()?;
    let mut p: *const c_char = std::ptr::null();
    // SAFETY: a valid out pointer; the driver returns a static string or an error.
    let r = unsafe { f(d)(code, &mut p) };
    if r != code::SUCCESS || p.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated static string of the driver.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// A CUresult as a Result.
pub fn check(r: c_int) -> Result<(), CuError> {
    if r == code::SUCCESS {
        Ok(())
    } else {
        Err(CuError(r))
    }
}

/// The driver's function table, or a "CUDA is not usable" error for a step.
pub fn api() -> Result<&'static Api, String> {
    driver().map(|d| &d.api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soname_comes_first_and_missing_libraries_are_named() {
        assert_eq!(SONAMES[0], "libcuda.so.1");
        let e = open(&["/nonexistent/libcuda.so.1"]).err().unwrap();
        assert!(e.contains("/nonexistent/libcuda.so.1"), "{e}");
        assert!(SYMBOLS.len() > 30);
        assert!(SYMBOLS.contains(&"cuMemcpyPeerAsync"));
    }

    #[test]
    fn the_sticky_codes_include_those_cuda_h_documents() {
        for c in [226, 700, 719, 721, 810, 911] {
            assert!(is_sticky(c), "{c}");
        }
        for c in [1, 2, 100, 217, 704, 36, 9999] {
            assert!(!is_sticky(c), "{c}");
        }
    }
}
