//! The CUDA driver API calls rigdoctor makes, answered from the rig.

use crate::memory as m;
use crate::{rig, write_cstr};
use std::ffi::{c_char, c_int, c_uint};
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) type CUresult = c_uint;
pub(crate) const SUCCESS: CUresult = 0;
pub(crate) const INVALID_VALUE: CUresult = 1;
const NOT_INITIALIZED: CUresult = 3;
const STUB_LIBRARY: CUresult = 34;
const NO_DEVICE: CUresult = 100;
const INVALID_DEVICE: CUresult = 101;
const SYSTEM_DRIVER_MISMATCH: CUresult = 803;

const ATTR_MULTIPROCESSOR_COUNT: c_int = 16;
const ATTR_PCI_BUS_ID: c_int = 33;
const ATTR_PCI_DEVICE_ID: c_int = 34;
const ATTR_PCI_DOMAIN_ID: c_int = 50;
const ATTR_CC_MAJOR: c_int = 75;
const ATTR_CC_MINOR: c_int = 76;

static INITIALISED: AtomicBool = AtomicBool::new(false);

pub(crate) fn ready() -> Result<(), CUresult> {
    if INITIALISED.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(NOT_INITIALIZED)
    }
}

/// Index into the rig's `gpus` of CUDA device `dev`.
pub(crate) fn gpu_index(dev: c_int) -> Result<usize, CUresult> {
    ready()?;
    usize::try_from(dev)
        .ok()
        .and_then(|d| rig().cuda_index(d))
        .ok_or(INVALID_DEVICE)
}

fn gpu(dev: c_int) -> Result<&'static crate::rig::Gpu, CUresult> {
    gpu_index(dev).map(|i| &rig().gpus[i])
}

fn ret(r: Result<(), CUresult>) -> CUresult {
    r.err().unwrap_or(SUCCESS)
}

/// "0000:41:00.0" -> (domain, bus, device) numbers.
fn bdf_numbers(bus_id: &str) -> (c_int, c_int, c_int) {
    let mut p = bus_id.split([':', '.']);
    let mut next = || {
        p.next()
            .and_then(|x| i64::from_str_radix(x, 16).ok())
            .unwrap_or(0) as c_int
    };
    (next(), next(), next())
}

#[no_mangle]
pub unsafe extern "C" fn cuInit(_flags: c_uint) -> CUresult {
    match rig().faults.cuda_init.as_deref() {
        Some("hang") => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        Some("stub") => return STUB_LIBRARY,
        Some("no-device") => return NO_DEVICE,
        Some("mismatch") => return SYSTEM_DRIVER_MISMATCH,
        _ => {}
    }
    if rig().gpus.is_empty() {
        return NO_DEVICE;
    }
    INITIALISED.store(true, Ordering::SeqCst);
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut c_int) -> CUresult {
    if v.is_null() {
        return INVALID_VALUE;
    }
    *v = rig().cuda_version;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(n: *mut c_int) -> CUresult {
    ret(ready().map(|_| *n = rig().gpus.len() as c_int))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(dev: *mut c_int, ordinal: c_int) -> CUresult {
    ret(gpu(ordinal).map(|_| *dev = ordinal))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: c_int) -> CUresult {
    ret(gpu(dev).and_then(|g| {
        if write_cstr(name, len.max(0) as usize, &g.name) {
            Ok(())
        } else {
            Err(INVALID_VALUE)
        }
    }))
}

/// Real drivers answer in upper-case hex ("0000:0A:00.0"); rigdoctor must normalise.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetPCIBusId(id: *mut c_char, len: c_int, dev: c_int) -> CUresult {
    ret(gpu(dev).and_then(|g| {
        let (d, b, s) = bdf_numbers(&g.bus_id);
        let text = format!("{d:04X}:{b:02X}:{s:02X}.0");
        if write_cstr(id, len.max(0) as usize, &text) {
            Ok(())
        } else {
            Err(INVALID_VALUE)
        }
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: c_int) -> CUresult {
    ret(gpu(dev).map(|g| *bytes = (g.memory_mib << 20) as usize))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(v: *mut c_int, attr: c_int, dev: c_int) -> CUresult {
    ret(gpu(dev).map(|g| {
        let (domain, bus, device) = bdf_numbers(&g.bus_id);
        *v = match attr {
            ATTR_CC_MAJOR => g.cc[0],
            ATTR_CC_MINOR => g.cc[1],
            ATTR_MULTIPROCESSOR_COUNT => g.sms,
            ATTR_PCI_BUS_ID => bus,
            ATTR_PCI_DEVICE_ID => device,
            ATTR_PCI_DOMAIN_ID => domain,
            _ => 0,
        }
    }))
}

fn error_text(e: CUresult) -> (&'static [u8], &'static [u8]) {
    match e {
        SUCCESS => (b"CUDA_SUCCESS\0", b"no error\0"),
        INVALID_VALUE => (b"CUDA_ERROR_INVALID_VALUE\0", b"invalid argument\0"),
        NOT_INITIALIZED => (b"CUDA_ERROR_NOT_INITIALIZED\0", b"initialization error\0"),
        STUB_LIBRARY => (
            b"CUDA_ERROR_STUB_LIBRARY\0",
            b"CUDA driver is a stub library\0",
        ),
        NO_DEVICE => (
            b"CUDA_ERROR_NO_DEVICE\0",
            b"no CUDA-capable device is detected\0",
        ),
        INVALID_DEVICE => (b"CUDA_ERROR_INVALID_DEVICE\0", b"invalid device ordinal\0"),
        SYSTEM_DRIVER_MISMATCH => (
            b"CUDA_ERROR_SYSTEM_DRIVER_MISMATCH\0",
            b"system has unsupported display driver / cuda driver combination\0",
        ),
        m::INVALID_CONTEXT => (b"CUDA_ERROR_INVALID_CONTEXT\0", b"invalid device context\0"),
        m::INVALID_PTX => (
            b"CUDA_ERROR_INVALID_PTX\0",
            b"a PTX JIT compilation failed\0",
        ),
        m::UNSUPPORTED_PTX_VERSION => (
            b"CUDA_ERROR_UNSUPPORTED_PTX_VERSION\0",
            b"the provided PTX was compiled with an unsupported toolchain.\0",
        ),
        m::PEER_ACCESS_UNSUPPORTED => (
            b"CUDA_ERROR_PEER_ACCESS_UNSUPPORTED\0",
            b"peer access is not supported between these two devices\0",
        ),
        m::INVALID_HANDLE => (b"CUDA_ERROR_INVALID_HANDLE\0", b"invalid resource handle\0"),
        m::NOT_FOUND => (b"CUDA_ERROR_NOT_FOUND\0", b"named symbol not found\0"),
        m::ILLEGAL_ADDRESS => (
            b"CUDA_ERROR_ILLEGAL_ADDRESS\0",
            b"an illegal memory access was encountered\0",
        ),
        m::PEER_ACCESS_ALREADY_ENABLED => (
            b"CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED\0",
            b"peer access is already enabled\0",
        ),
        m::PEER_ACCESS_NOT_ENABLED => (
            b"CUDA_ERROR_PEER_ACCESS_NOT_ENABLED\0",
            b"peer access has not been enabled\0",
        ),
        _ => (b"CUDA_ERROR_UNKNOWN\0", b"unknown error\0"),
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(e: CUresult, s: *mut *const c_char) -> CUresult {
    *s = error_text(e).0.as_ptr() as *const c_char;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(e: CUresult, s: *mut *const c_char) -> CUresult {
    *s = error_text(e).1.as_ptr() as *const c_char;
    SUCCESS
}
