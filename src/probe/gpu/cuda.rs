//! CUDA driver inventory (cudarc, dynamically loaded). cudarc panics when libcuda or one of its
//! symbols is missing, so both are checked before any call.

use super::driver_api::{error_name as name_of, loaded_library, unusable};
use crate::facts::{normalize_bus_id, CudaDevice, CudaInventory, Probed, Why};
use cudarc::driver::sys::{self, CUdevice_attribute as Attr};
use cudarc::driver::{result, DriverError};

/// Every driver-API symbol this module calls. All exist in any driver that CUDA 12 bindings can
/// talk to, so a missing one means a broken or foreign libcuda.
pub const SYMBOLS: [&str; 8] = [
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceGetPCIBusId",
    "cuDeviceTotalMem_v2",
    "cuDeviceGetAttribute",
];

pub fn inventory() -> Probed<CudaInventory> {
    if let Some(why) = unusable(&SYMBOLS) {
        return Probed::unknown(Why::Absent, why);
    }
    let library = loaded_library();
    if let Err(e) = result::init() {
        let at = library
            .as_deref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default();
        return Probed::unknown(Why::Failed, format!("cuInit: {}{at}", name_of(&e)));
    }
    let mut version = 0;
    // SAFETY: the symbol exists (checked above) and `version` is a valid out pointer.
    let _ = unsafe { sys::cuDriverGetVersion(&mut version) }.result();
    let count = match result::device::get_count() {
        Ok(c) => c,
        Err(e) => {
            return Probed::unknown(Why::Failed, format!("cuDeviceGetCount: {}", name_of(&e)))
        }
    };
    let mut devices = Vec::new();
    for ordinal in 0..count {
        match device(ordinal) {
            Ok(d) => devices.push(d),
            Err(e) => {
                return Probed::unknown(Why::Failed, format!("device {ordinal}: {}", name_of(&e)))
            }
        }
    }
    Probed::Known(CudaInventory {
        library,
        driver_version: version,
        devices,
    })
}

/// The normalised PCI bus id of CUDA device `ordinal` (cuInit done).
pub fn bus_id(ordinal: i32) -> Option<String> {
    let dev = result::device::get(ordinal).ok()?;
    raw_bus_id(dev).ok().map(|b| normalize_bus_id(&b))
}

fn raw_bus_id(dev: sys::CUdevice) -> Result<String, DriverError> {
    let mut bus = [0 as std::ffi::c_char; 32];
    // SAFETY: the buffer is 32 bytes, as passed; the symbol exists (checked by the caller).
    unsafe { sys::cuDeviceGetPCIBusId(bus.as_mut_ptr(), bus.len() as i32, dev) }.result()?;
    // SAFETY: cuDeviceGetPCIBusId NUL-terminates within the buffer on success.
    Ok(unsafe { std::ffi::CStr::from_ptr(bus.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

fn device(ordinal: i32) -> Result<CudaDevice, DriverError> {
    let dev = result::device::get(ordinal)?;
    let bus_id = raw_bus_id(dev)?;
    // SAFETY: dev is a valid device handle from cuDeviceGet.
    let attr = |a: Attr| unsafe { result::device::get_attribute(dev, a) };
    Ok(CudaDevice {
        ordinal,
        name: result::device::get_name(dev)?,
        bus_id: normalize_bus_id(&bus_id),
        compute_capability: [
            attr(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ],
        // SAFETY: as above.
        memory_bytes: unsafe { result::device::total_mem(dev) }? as u64,
        multiprocessors: attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
    })
}
