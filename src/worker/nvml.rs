//! NVML inventory (nvml-wrapper). Every call may fail on its own, e.g. a symbol missing from an
//! older driver's libnvidia-ml: that field is unknown with the reason, the rest is still read.

use crate::facts::{
    normalize_bus_id, CallError, Library, NvLinkState, NvmlDevice, NvmlInventory, NvmlPair, Probed,
    Why,
};
use nvml_wrapper::enum_wrappers::device::{
    P2pCapabilitiesIndex, P2pStatus, TemperatureSensor, TopologyLevel,
};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

/// NVML_NVLINK_MAX_LINKS in current drivers (an H100 has 18).
const MAX_NVLINKS: u32 = 18;

/// nvmlReturn_t names (nvml.h), by code.
const NVML_NAMES: [(u32, &str); 23] = [
    (1, "NVML_ERROR_UNINITIALIZED"),
    (2, "NVML_ERROR_INVALID_ARGUMENT"),
    (3, "NVML_ERROR_NOT_SUPPORTED"),
    (4, "NVML_ERROR_NO_PERMISSION"),
    (5, "NVML_ERROR_ALREADY_INITIALIZED"),
    (6, "NVML_ERROR_NOT_FOUND"),
    (7, "NVML_ERROR_INSUFFICIENT_SIZE"),
    (8, "NVML_ERROR_INSUFFICIENT_POWER"),
    (9, "NVML_ERROR_DRIVER_NOT_LOADED"),
    (10, "NVML_ERROR_TIMEOUT"),
    (11, "NVML_ERROR_IRQ_ISSUE"),
    (12, "NVML_ERROR_LIBRARY_NOT_FOUND"),
    (13, "NVML_ERROR_FUNCTION_NOT_FOUND"),
    (14, "NVML_ERROR_CORRUPTED_INFOROM"),
    (15, "NVML_ERROR_GPU_IS_LOST"),
    (16, "NVML_ERROR_RESET_REQUIRED"),
    (17, "NVML_ERROR_OPERATING_SYSTEM"),
    (18, "NVML_ERROR_LIB_RM_VERSION_MISMATCH"),
    (19, "NVML_ERROR_IN_USE"),
    (20, "NVML_ERROR_MEMORY"),
    (21, "NVML_ERROR_NO_DATA"),
    (22, "NVML_ERROR_VGPU_ECC_NOT_SUPPORTED"),
    (999, "NVML_ERROR_UNKNOWN"),
];

/// NVML_ERROR_LIB_RM_VERSION_MISMATCH: library and kernel module of different releases.
pub const LIB_RM_VERSION_MISMATCH: i64 = 18;
/// NVML_ERROR_DRIVER_NOT_LOADED.
pub const DRIVER_NOT_LOADED: i64 = 9;

/// An NVML failure as data: nvml-wrapper's error mapped back to nvmlReturn_t.
pub fn call_error(e: NvmlError, call: &str) -> CallError {
    let text = e.to_string();
    // nvml-wrapper maps its error back to the nvmlReturn_t it came from.
    let code: u32 = e.into();
    CallError {
        library: Library::Nvml,
        call: call.to_string(),
        code: i64::from(code),
        name: NVML_NAMES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, n)| n.to_string()),
        text: Some(text),
        sticky: false,
    }
}

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
        Err(e) => Probed::failed(call_error(e, call)),
    }
}

pub fn inventory() -> Probed<NvmlInventory> {
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(NvmlError::LibloadingError(e)) => {
            return Probed::unknown(Why::Absent, format!("libnvidia-ml.so.1 not loadable: {e}"))
        }
        Err(e) => return Probed::failed(call_error(e, "nvmlInit")),
    };
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => return Probed::failed(call_error(e, "nvmlDeviceGetCount")),
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
                display_active: fact(d.is_display_active(), "nvmlDeviceGetDisplayActive"),
                nvlinks: nvlinks(&d),
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
                    persistence_mode: why.clone().map(|_| false),
                    display_active: why.clone().map(|_| false),
                    nvlinks: why.map(|_| Vec::new()),
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
        pairs: pairs(&nvml, count),
        devices,
    })
}

fn nvlinks(d: &Device) -> Probed<Vec<NvLinkState>> {
    let mut links = Vec::new();
    for link in 0..MAX_NVLINKS {
        let w = d.link_wrapper_for(link);
        match w.is_active() {
            Ok(active) => links.push(NvLinkState {
                link,
                active,
                remote_bus_id: w
                    .remote_pci_info()
                    .ok()
                    .map(|p| normalize_bus_id(&p.bus_id)),
            }),
            // Links this GPU does not have.
            Err(NvmlError::NotSupported | NvmlError::InvalidArg) => {}
            Err(e) => return fact(Err(e), "nvmlDeviceGetNvLinkState"),
        }
    }
    Probed::Known(links)
}

fn level_name(l: TopologyLevel) -> String {
    match l {
        TopologyLevel::Internal => "INT",
        TopologyLevel::Single => "PIX",
        TopologyLevel::Multiple => "PXB",
        TopologyLevel::HostBridge => "PHB",
        TopologyLevel::Node => "NODE",
        TopologyLevel::System => "SYS",
    }
    .to_string()
}

fn status_code(s: P2pStatus) -> String {
    match s {
        P2pStatus::Ok => "OK",
        P2pStatus::ChipsetNotSupported => "CNS",
        P2pStatus::GpuNotSupported => "GNS",
        P2pStatus::IohTopologyNotSupported => "TNS",
        P2pStatus::DisabledByRegkey => "DR",
        P2pStatus::NotSupported => "NS",
        P2pStatus::Unknown => "U",
    }
    .to_string()
}

/// Every ordered pair: topology and the four P2P capabilities, each its own fact.
fn pairs(nvml: &Nvml, count: u32) -> Vec<NvmlPair> {
    let handles: Vec<Option<Device>> = (0..count).map(|i| nvml.device_by_index(i).ok()).collect();
    let mut out = Vec::new();
    for (a, da) in handles.iter().enumerate() {
        for (b, db) in handles.iter().enumerate() {
            let (Some(da), Some(db)) = (da, db) else {
                continue;
            };
            if a == b {
                continue;
            }
            let status = |i: P2pCapabilitiesIndex| {
                fact(
                    da.p2p_status(db, i).map(status_code),
                    "nvmlDeviceGetP2PStatus",
                )
            };
            out.push(NvmlPair {
                a: a as u32,
                b: b as u32,
                topology: fact(
                    nvml.device_by_index(b as u32)
                        .and_then(|other| da.topology_common_ancestor(other))
                        .map(level_name),
                    "nvmlDeviceGetTopologyCommonAncestor",
                ),
                read: status(P2pCapabilitiesIndex::Read),
                write: status(P2pCapabilitiesIndex::Write),
                nvlink: status(P2pCapabilitiesIndex::NvLink),
                atomics: status(P2pCapabilitiesIndex::Atomics),
            });
        }
    }
    out
}
