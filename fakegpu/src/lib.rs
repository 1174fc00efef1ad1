//! A fake NVIDIA driver for rigdoctor's tests: one shared library that exports the CUDA driver
//! API and NVML functions rigdoctor calls, answering from a rig described in the JSON file named
//! by `FAKEGPU_RIG` (format in docs/testing.md). Tests put a directory with `libcuda.so.1` and
//! `libnvidia-ml.so.1` symlinks to this library on `LD_LIBRARY_PATH`.
//!
//! Test equipment only: never built into rigdoctor, never the default.

#![allow(non_snake_case, clippy::missing_safety_doc)]

mod cuda;
#[cfg(test)]
mod cuda_tests;
mod memory;
mod nccl;
mod nvml;
pub mod rig;
mod stream;

pub use rig::Rig;

/// The rig of this process, read once. A missing or broken rig file is a test bug: say it loudly
/// on stderr and behave as a machine with no GPU.
pub(crate) fn rig() -> &'static Rig {
    static RIG: std::sync::OnceLock<Rig> = std::sync::OnceLock::new();
    RIG.get_or_init(|| match Rig::from_env() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fakegpu: {e}");
            Rig::default()
        }
    })
}

/// Copy a string into a C buffer of `len` bytes, NUL-terminated; false when it does not fit.
pub(crate) unsafe fn write_cstr(dst: *mut std::ffi::c_char, len: usize, s: &str) -> bool {
    if dst.is_null() || s.len() + 1 > len {
        return false;
    }
    std::ptr::copy_nonoverlapping(s.as_ptr(), dst as *mut u8, s.len());
    *dst.add(s.len()) = 0;
    true
}
