//! CUDA driver inventory (worker side): what `cuInit` says, the driver version, and every
//! device's name, bus id, compute capability, memory and SM count.

use super::cu::{self, check, CuError};
use super::driver_api::device;
use crate::facts::{normalize_bus_id, CallError, CudaDevice, CudaInventory, Probed, Why};
use cudarc::driver::sys::CUdevice_attribute as Attr;

pub fn inventory() -> Probed<CudaInventory> {
    let d = match cu::driver() {
        Ok(d) => d,
        Err(why) => return Probed::unknown(Why::Absent, why),
    };
    let a = &d.api;
    // SAFETY: flags must be 0.
    if let Err(e) = check(unsafe { (a.cuInit)(0) }) {
        let cause = e.at("cuInit");
        return failed(format!("{cause} [{}]", d.path), cause);
    }
    let mut version = 0;
    // SAFETY: valid out pointer.
    let _ = unsafe { (a.cuDriverGetVersion)(&mut version) };
    let mut count = 0;
    // SAFETY: valid out pointer.
    if let Err(e) = check(unsafe { (a.cuDeviceGetCount)(&mut count) }) {
        let cause = e.at("cuDeviceGetCount");
        return failed(cause.to_string(), cause);
    }
    let mut devices = Vec::new();
    for ordinal in 0..count {
        match describe(ordinal) {
            Ok(dev) => devices.push(dev),
            Err(cause) => return failed(format!("device {ordinal}: {cause}"), cause),
        }
    }
    Probed::Known(CudaInventory {
        library: Some(d.path.clone()),
        driver_version: version,
        devices,
    })
}

fn failed(detail: String, cause: CallError) -> Probed<CudaInventory> {
    Probed::Unknown {
        unknown: Why::Failed,
        detail,
        cause: Some(Box::new(cause)),
    }
}

/// The normalised PCI bus id of CUDA device `ordinal` (cuInit done).
pub fn bus_id(ordinal: i32) -> Option<String> {
    let dev = device(ordinal).ok()?;
    raw_bus_id(dev).ok().map(|b| normalize_bus_id(&b))
}

/// A C string the driver wrote into `buf`, up to its first NUL (or the whole buffer).
fn c_string(buf: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn raw_bus_id(dev: cu::CUdevice) -> Result<String, CuError> {
    let a = cu::api().map_err(|_| CuError(cu::code::NO_DEVICE))?;
    let mut bus = [0 as std::ffi::c_char; 32];
    // SAFETY: the buffer is 32 bytes, as passed.
    check(unsafe { (a.cuDeviceGetPCIBusId)(bus.as_mut_ptr(), bus.len() as i32, dev) })?;
    Ok(c_string(&bus))
}

fn describe(ordinal: i32) -> Result<CudaDevice, CallError> {
    let a = cu::api().map_err(|_| CuError(cu::code::NO_DEVICE).at("cuDeviceGet"))?;
    let dev = device(ordinal).map_err(|e| e.at("cuDeviceGet"))?;
    let bus_id = raw_bus_id(dev).map_err(|e| e.at("cuDeviceGetPCIBusId"))?;
    let attr = |at: Attr| -> Result<i32, CallError> {
        let mut v = 0;
        // SAFETY: dev is a valid device handle; valid out pointer.
        check(unsafe { (a.cuDeviceGetAttribute)(&mut v, at as i32, dev) })
            .map_err(|e| e.at(format!("cuDeviceGetAttribute({at:?})")))?;
        Ok(v)
    };
    let mut name = [0 as std::ffi::c_char; 256];
    // SAFETY: the buffer is 256 bytes, as passed.
    check(unsafe { (a.cuDeviceGetName)(name.as_mut_ptr(), name.len() as i32, dev) })
        .map_err(|e| e.at("cuDeviceGetName"))?;
    let mut mem = 0usize;
    // SAFETY: valid out pointer.
    check(unsafe { (a.cuDeviceTotalMem_v2)(&mut mem, dev) })
        .map_err(|e| e.at("cuDeviceTotalMem"))?;
    Ok(CudaDevice {
        ordinal,
        name: c_string(&name),
        bus_id: normalize_bus_id(&bus_id),
        compute_capability: [
            attr(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ],
        memory_bytes: mem as u64,
        multiprocessors: attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
    })
}
