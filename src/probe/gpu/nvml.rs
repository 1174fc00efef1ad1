//! NVML inventory (nvml-wrapper). Every call may fail on its own, e.g. a symbol missing from an
//! older driver's libnvidia-ml: that field is unknown with the reason, the rest is still read.

use crate::facts::{normalize_bus_id, NvmlDevice, NvmlInventory, Probed, Why};
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

fn fact<T>(r: Result<T, NvmlError>, call: &str) -> Probed<T> {
    match r {
        Ok(v) => Probed::Known(v),
        Err(NvmlError::FailedToLoadSymbol(s)) => Probed::unknown(
            Why::Absent,
            format!("{call}: not in this driver's libnvidia-ml ({s})"),
        ),
        Err(NvmlError::NotSupported) => {
            Probed::unknown(Why::Absent, format!("{call}: not supported on this GPU"))
        }
        Err(NvmlError::NoPermission) => Probed::unknown(Why::NeedsRoot, call.to_string()),
        Err(e) => Probed::unknown(Why::Failed, format!("{call}: {e}")),
    }
}

pub fn inventory() -> Probed<NvmlInventory> {
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(NvmlError::LibloadingError(e)) => {
            return Probed::unknown(Why::Absent, format!("libnvidia-ml.so.1 not loadable: {e}"))
        }
        Err(e) => return Probed::unknown(Why::Failed, format!("nvmlInit: {e}")),
    };
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => return Probed::unknown(Why::Failed, format!("nvmlDeviceGetCount: {e}")),
    };
    let devices = (0..count)
        .map(|index| match nvml.device_by_index(index) {
            Ok(d) => NvmlDevice {
                index,
                bus_id: fact(
                    d.pci_info().map(|p| normalize_bus_id(&p.bus_id)),
                    "nvmlDeviceGetPciInfo",
                ),
                name: fact(d.name(), "nvmlDeviceGetName"),
                uuid: fact(d.uuid(), "nvmlDeviceGetUUID"),
                brand: fact(d.brand().map(|b| format!("{b:?}")), "nvmlDeviceGetBrand"),
                memory_bytes: fact(d.memory_info().map(|m| m.total), "nvmlDeviceGetMemoryInfo"),
                bar1_bytes: fact(
                    d.bar1_memory_info().map(|b| b.total),
                    "nvmlDeviceGetBAR1MemoryInfo",
                ),
                pcie_gen: fact(
                    d.current_pcie_link_gen(),
                    "nvmlDeviceGetCurrPcieLinkGeneration",
                ),
                pcie_width: fact(
                    d.current_pcie_link_width(),
                    "nvmlDeviceGetCurrPcieLinkWidth",
                ),
                pcie_max_gen: fact(d.max_pcie_link_gen(), "nvmlDeviceGetMaxPcieLinkGeneration"),
                pcie_max_width: fact(d.max_pcie_link_width(), "nvmlDeviceGetMaxPcieLinkWidth"),
                power_limit_mw: fact(
                    d.power_management_limit(),
                    "nvmlDeviceGetPowerManagementLimit",
                ),
                temperature_c: fact(
                    d.temperature(TemperatureSensor::Gpu),
                    "nvmlDeviceGetTemperature",
                ),
                persistence_mode: fact(d.is_in_persistent_mode(), "nvmlDeviceGetPersistenceMode"),
            },
            Err(e) => {
                let why = Probed::unknown(
                    Why::Failed,
                    format!("nvmlDeviceGetHandleByIndex({index}): {e}"),
                );
                NvmlDevice {
                    index,
                    bus_id: why.clone(),
                    name: why.clone(),
                    uuid: why.clone(),
                    brand: why.clone(),
                    memory_bytes: why.clone().map(|_| 0),
                    bar1_bytes: why.clone().map(|_| 0),
                    pcie_gen: why.clone().map(|_| 0),
                    pcie_width: why.clone().map(|_| 0),
                    pcie_max_gen: why.clone().map(|_| 0),
                    pcie_max_width: why.clone().map(|_| 0),
                    power_limit_mw: why.clone().map(|_| 0),
                    temperature_c: why.clone().map(|_| 0),
                    persistence_mode: why.map(|_| false),
                }
            }
        })
        .collect();
    Probed::Known(NvmlInventory {
        driver_version: fact(nvml.sys_driver_version(), "nvmlSystemGetDriverVersion"),
        cuda_driver_version: fact(
            nvml.sys_cuda_driver_version(),
            "nvmlSystemGetCudaDriverVersion",
        ),
        devices,
    })
}
