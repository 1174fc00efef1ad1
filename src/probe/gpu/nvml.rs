//! NVML inventory (nvml-wrapper). Every call may fail on its own, e.g. a symbol missing from an
//! older driver's libnvidia-ml: that field is unknown with the reason, the rest is still read.

use crate::facts::{
    normalize_bus_id, NvLinkState, NvmlDevice, NvmlInventory, NvmlPair, Probed, Why,
};
use nvml_wrapper::enum_wrappers::device::{
    P2pCapabilitiesIndex, P2pStatus, TemperatureSensor, TopologyLevel,
};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

/// NVML_NVLINK_MAX_LINKS in current drivers (an H100 has 18).
const MAX_NVLINKS: u32 = 18;

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
