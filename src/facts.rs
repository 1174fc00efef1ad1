//! What the probes read from the machine, as plain data.
//!
//! Facts are what a report saves and what `rigdoctor diagnose` reads back, so every type here is
//! serialisable and nothing here decides anything. A value that could not be read is a
//! [`Probed::Unknown`] carrying the reason: "absent is not zero".

mod bandwidth;
mod failure;
pub mod float;
mod kernel_log;
mod nccl;
mod p2p;
mod worker;

pub use bandwidth::*;
pub use failure::*;
pub use kernel_log::*;
pub use nccl::*;
pub use p2p::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
pub use worker::*;

/// The most GPUs one machine's report may hold (CUDA ordinals 0..64): every matrix a report
/// renders or a rule walks is at most this squared.
pub const MAX_DEVICES: usize = 64;

/// Why a fact is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Why {
    /// The kernel hides it from non-root users (e.g. PCI config space past 64 bytes).
    NeedsRoot,
    /// The file or directory does not exist on this kernel/machine.
    Absent,
    /// It was read but its content is not what the kernel documents.
    Unparsable,
    /// Reading failed for another reason (the detail says which).
    IoError,
    /// The driver or library did not answer within the deadline; the worker was killed.
    Hang,
    /// A library call returned an error (the detail has its name).
    Failed,
    /// Not attempted: something it needs failed first (the detail says what).
    NotRun,
}

impl Why {
    pub fn describe(self) -> &'static str {
        match self {
            Why::NeedsRoot => "needs root",
            Why::Absent => "absent",
            Why::Unparsable => "unparsable",
            Why::IoError => "read error",
            Why::Hang => "hung",
            Why::Failed => "failed",
            Why::NotRun => "not run",
        }
    }
}

/// A fact that was read, or the reason it could not be.
///
/// Serialised untagged: a known value is written as itself, an unknown one as
/// `{"unknown": "needs-root", "detail": "..."}`. `Unknown` comes first so that deserialising tries
/// it before the value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Probed<T> {
    Unknown {
        unknown: Why,
        detail: String,
        /// The library call that failed, with its code: what rules match on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<Box<CallError>>,
    },
    Known(T),
}

impl<T> Probed<T> {
    pub fn unknown(why: Why, detail: impl Into<String>) -> Self {
        Probed::Unknown {
            unknown: why,
            detail: detail.into(),
            cause: None,
        }
    }

    /// Unknown because `cause` failed (its text is the detail).
    pub fn failed(cause: CallError) -> Self {
        Probed::Unknown {
            unknown: Why::Failed,
            detail: cause.to_string(),
            cause: Some(Box::new(cause)),
        }
    }

    /// Unknown because a step gave no result: its error as detail, a call failure as cause.
    pub fn from_step_error(e: StepError) -> Self {
        match e {
            StepError::Call(c) => Probed::failed(c),
            StepError::NotRun { because } => Probed::unknown(Why::NotRun, because),
            e @ StepError::NotFound { .. } => Probed::unknown(Why::Absent, e.to_string()),
            StepError::Invalid { message } => Probed::unknown(Why::Failed, message),
            e @ StepError::TimedOut { .. } => Probed::unknown(Why::Hang, e.to_string()),
        }
    }

    /// An unknown value as unknown of another type (same reason); a known one is a bug of the
    /// caller, answered as "unparsable" rather than a panic.
    pub fn retype<U>(self) -> Probed<U> {
        match self {
            Probed::Unknown {
                unknown,
                detail,
                cause,
            } => Probed::Unknown {
                unknown,
                detail,
                cause,
            },
            Probed::Known(_) => {
                Probed::unknown(Why::Unparsable, "internal: retype of a known value")
            }
        }
    }

    /// The failed call behind an unknown value.
    pub fn cause(&self) -> Option<&CallError> {
        match self {
            Probed::Unknown { cause, .. } => cause.as_deref(),
            Probed::Known(_) => None,
        }
    }

    pub fn known(&self) -> Option<&T> {
        match self {
            Probed::Known(v) => Some(v),
            Probed::Unknown { .. } => None,
        }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Probed<U> {
        match self {
            Probed::Known(v) => Probed::Known(f(v)),
            u @ Probed::Unknown { .. } => u.retype(),
        }
    }

    pub fn and_then<U>(self, f: impl FnOnce(T) -> Probed<U>) -> Probed<U> {
        match self {
            Probed::Known(v) => f(v),
            u @ Probed::Unknown { .. } => u.retype(),
        }
    }

    /// "needs root: config space readable to 64 bytes only", for evidence and summaries.
    pub fn why_unknown(&self) -> Option<String> {
        match self {
            Probed::Known(_) => None,
            Probed::Unknown {
                unknown, detail, ..
            } if detail.is_empty() => Some(unknown.describe().to_string()),
            Probed::Unknown {
                unknown, detail, ..
            } => Some(format!("{}: {detail}", unknown.describe())),
        }
    }
}

/// Everything one run read. Later steps (NVML, CUDA, measurements) add fields here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    pub collected: Collected,
    pub host: Host,
    pub pci: Probed<PciTopology>,
    pub driver: NvidiaDriver,
    pub env: EnvFacts,
    /// What NVML and the CUDA driver report; absent when the GPU steps did not run
    /// (`rigdoctor host`, or `--sysroot` without `--gpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuRuntime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuRuntime {
    pub nvml: Probed<NvmlInventory>,
    pub cuda: Probed<CudaInventory>,
    /// CUDA_DEVICE_ORDER as the rigdoctor process saw it.
    pub cuda_device_order: Option<String>,
    /// The P2P battery; absent when it did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p: Option<P2pFacts>,
    /// The bandwidth battery; absent when it did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<BandwidthFacts>,
    /// The NCCL all-reduce; absent when it did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nccl: Option<NcclFacts>,
    /// Every worker process the GPU steps used, and how each ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerRecord>,
    /// The resource limits the workers inherited (rigdoctor's own), when the steps ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ProcessLimits>,
    /// How long one step could take before it was called hung (--timeout), seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_deadline_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NvmlInventory {
    pub driver_version: Probed<String>,
    /// e.g. 12030 for CUDA 12.3.
    pub cuda_driver_version: Probed<i32>,
    /// In NVML order, which is PCI bus order.
    pub devices: Vec<NvmlDevice>,
    /// Every ordered pair of devices.
    #[serde(default)]
    pub pairs: Vec<NvmlPair>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NvmlDevice {
    pub index: u32,
    /// Normalised "0000:41:00.0", to match sysfs and CUDA.
    pub bus_id: Probed<String>,
    pub name: Probed<String>,
    pub uuid: Probed<String>,
    pub brand: Probed<String>,
    pub memory_bytes: Probed<u64>,
    pub bar1_bytes: Probed<u64>,
    pub pcie_gen: Probed<u32>,
    pub pcie_width: Probed<u32>,
    /// Device + system maximum (a Gen4 card in a Gen3 slot reports 3).
    pub pcie_max_gen: Probed<u32>,
    pub pcie_max_width: Probed<u32>,
    pub power_limit_mw: Probed<u32>,
    pub temperature_c: Probed<u32>,
    pub persistence_mode: Probed<bool>,
    /// nvmlDeviceGetDisplayActive: a display is initialised on the GPU (an X server or a
    /// console has memory for a screen), even with no monitor plugged in.
    #[serde(default = "not_in_report")]
    pub display_active: Probed<bool>,
    /// Links that exist on this GPU (empty: none, or NVLink not supported).
    #[serde(default = "not_in_report")]
    pub nvlinks: Probed<Vec<NvLinkState>>,
}

/// For fields added after a report was saved.
fn not_in_report<T>() -> Probed<T> {
    Probed::unknown(
        Why::Absent,
        "not in this report (written by an older rigdoctor)",
    )
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CudaInventory {
    /// The libcuda the worker loaded (from its memory map), to spot a toolkit stub.
    pub library: Option<String>,
    /// cuDriverGetVersion, e.g. 12030.
    pub driver_version: i32,
    /// In CUDA ordinal order.
    pub devices: Vec<CudaDevice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CudaDevice {
    pub ordinal: i32,
    pub name: String,
    /// Normalised "0000:41:00.0".
    pub bus_id: String,
    pub compute_capability: [i32; 2],
    pub memory_bytes: u64,
    pub multiprocessors: i32,
}

/// "00000000:0A:00.0" (NVML) or "0000:0A:00.0" (CUDA) -> "0000:0a:00.0" (sysfs).
pub fn normalize_bus_id(id: &str) -> String {
    let id = id.trim().to_ascii_lowercase();
    match id.split_once(':') {
        Some((dom, rest)) => match u32::from_str_radix(dom, 16) {
            Ok(d) => format!("{d:04x}:{rest}"),
            Err(_) => id,
        },
        None => id,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collected {
    /// The directory /proc and /sys were read under ("/" on a live machine).
    pub sysroot: String,
    /// Seconds since the Unix epoch when the probes ran.
    pub unix_time: u64,
    /// A signal (SIGINT, SIGTERM, SIGHUP) stopped the run: what follows is partial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interruption>,
    /// Checks skipped on purpose, and why (an accepted workaround makes them moot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interruption {
    pub signal: i32,
    /// e.g. "SIGTERM".
    pub name: String,
}

impl Interruption {
    pub fn of(signal: i32) -> Interruption {
        let name = match signal {
            1 => "SIGHUP",
            2 => "SIGINT",
            15 => "SIGTERM",
            _ => "a signal",
        };
        Interruption {
            signal,
            name: name.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub hostname: Probed<String>,
    pub kernel_release: Probed<String>,
    pub os: Probed<String>,
    pub cmdline: Probed<KernelCmdline>,
    pub cpu: Probed<Cpu>,
    pub mem_total_bytes: Probed<u64>,
    pub iommu: Iommu,
    pub virtualization: Virtualization,
    pub shm: Probed<Shm>,
    /// What the current boot's kernel log says about GPUs and their PCIe paths.
    #[serde(default = "not_in_report")]
    pub kernel_log: Probed<KernelLog>,
}

/// `/proc/cmdline`, kept whole; rules ask it for parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelCmdline {
    pub raw: String,
}

impl KernelCmdline {
    /// Every `key=value` parameter as (key, value); a bare flag has value "".
    /// Double quotes group a value with spaces, as the kernel's own parser allows. Ours, not
    /// procfs-core's `KernelCmdline`: that one splits at every ' ', so `dyndbg="file a.c +p"`
    /// becomes three words, and the trailing newline stays on the last parameter.
    pub fn params(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        for c in self.raw.chars().chain(std::iter::once(' ')) {
            match c {
                '"' => quoted = !quoted,
                c if c.is_whitespace() && !quoted => {
                    if !cur.is_empty() {
                        let (k, v) = cur.split_once('=').unwrap_or((cur.as_str(), ""));
                        out.push((k.to_string(), v.to_string()));
                        cur.clear();
                    }
                }
                c => cur.push(c),
            }
        }
        out
    }

    /// The value the kernel acts on: for repeated parameters the last one wins.
    pub fn get(&self, key: &str) -> Option<String> {
        self.params()
            .into_iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .next_back()
    }

    /// Parameters whose name is one of `keys`, formatted as written, for evidence.
    pub fn mentions(&self, keys: &[&str]) -> Vec<String> {
        self.params()
            .into_iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .map(|(k, v)| if v.is_empty() { k } else { format!("{k}={v}") })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    pub vendor: String,
    pub model: String,
    pub logical_cpus: usize,
    /// The `hypervisor` flag: the CPU reports that it runs under a hypervisor.
    pub hypervisor_flag: bool,
}

impl Cpu {
    pub fn is_amd(&self) -> bool {
        self.vendor == "AuthenticAMD"
    }
    pub fn is_intel(&self) -> bool {
        self.vendor == "GenuineIntel"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Iommu {
    /// Entries of /sys/class/iommu (dmar* on Intel, ivhd* on AMD). Empty: no IOMMU active.
    pub units: Probed<Vec<String>>,
    /// Number of /sys/kernel/iommu_groups entries.
    pub group_count: Probed<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Virtualization {
    pub dmi_sys_vendor: Probed<String>,
    pub dmi_product_name: Probed<String>,
    /// Markers of a container that were found (e.g. "/.dockerenv").
    pub container_markers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shm {
    /// False when /proc/mounts was read and has no /dev/shm line (size 0 then).
    #[serde(default = "yes")]
    pub mounted: bool,
    pub size_bytes: u64,
    /// Where the size came from: the mount's `size=` option or tmpfs' default (half of RAM).
    pub source: String,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PciTopology {
    /// NVIDIA display-class functions (VGA or 3D controller), in bus order.
    pub gpus: Vec<GpuPci>,
    /// Every bridge on a GPU's path to its root complex, in bus order.
    pub bridges: Vec<Bridge>,
    /// Functions whose vendor or class could not be read: any of them may be a GPU.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unidentified: Vec<Unidentified>,
}

/// A PCI function that could not be identified, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unidentified {
    pub bdf: String,
    pub detail: String,
}

impl PciTopology {
    pub fn bridge(&self, bdf: &str) -> Option<&Bridge> {
        self.bridges.iter().find(|b| b.bdf == bdf)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuPci {
    pub bdf: String,
    pub vendor_id: u16,
    pub device_id: u16,
    pub class: u32,
    /// Marketing name, from the driver (`/proc/driver/nvidia/gpus/*/information`) or pci.ids.
    pub name: Probed<String>,
    /// Path from the root complex: its name (e.g. "pci0000:40") and the bridges down to the GPU.
    pub path: Probed<PciPath>,
    pub link: Link,
    /// -1 when the platform reports no NUMA affinity.
    pub numa_node: Probed<i32>,
    /// Bound kernel driver ("nvidia", "nouveau", "vfio-pci"); `None` when unbound.
    pub driver: Probed<Option<String>>,
    pub bar1_bytes: Probed<u64>,
    /// BAR1's Resizable BAR capability: `None` when the GPU has none (its VBIOS cannot resize).
    #[serde(default = "not_in_report")]
    pub bar1_rebar: Probed<Option<ResizableBar>>,
    pub aer: Probed<Aer>,
    /// `None` when the device has no IOMMU group (IOMMU off).
    pub iommu_group: Probed<Option<IommuGroup>>,
    /// DRM connectors of this GPU whose `status` is `connected` (a display is attached), from
    /// `<device>/drm/card*/card*-*/status`. Empty also when the driver registers no DRM
    /// connectors (nvidia-drm without modeset): no proof that no display is attached.
    #[serde(default = "not_in_report")]
    pub displays: Probed<Vec<String>>,
}

/// What a BAR's Resizable BAR capability (PCIe extended capability 0x15) offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResizableBar {
    /// Every size the device supports, in bytes, smallest first.
    pub sizes: Vec<u64>,
    /// The size firmware programmed, when config space was read (sysfs gives the sizes only).
    pub current_bytes: Option<u64>,
    /// Where it was read: "config space" or "sysfs resource1_resize".
    pub source: String,
}

impl ResizableBar {
    pub fn largest(&self) -> Option<u64> {
        self.sizes.last().copied()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PciPath {
    pub root_complex: String,
    /// Bridges from the root port down to the GPU's parent, in order.
    pub bridges: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IommuGroup {
    pub id: u32,
    /// Kernel >= 5.11: "identity" (passthrough), "DMA" or "DMA-FQ" (translated), ...
    pub domain_type: Probed<String>,
}

impl IommuGroup {
    pub fn translated(&self) -> Option<bool> {
        self.domain_type.known().map(|t| t.starts_with("DMA"))
    }
}

/// The sysfs view of a PCIe link, as seen from the device it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub current_speed_gts: Probed<f64>,
    pub current_width: Probed<u32>,
    pub max_speed_gts: Probed<f64>,
    pub max_width: Probed<u32>,
}

/// PCIe generation for a per-lane rate in GT/s (2.5 -> 1, 5 -> 2, 8 -> 3, 16 -> 4, 32 -> 5, 64 -> 6).
pub fn pcie_gen(gts: f64) -> Option<u32> {
    [
        (2.5, 1),
        (5.0, 2),
        (8.0, 3),
        (16.0, 4),
        (32.0, 5),
        (64.0, 6),
    ]
    .iter()
    .find(|(rate, _)| (gts - rate).abs() < 0.01)
    .map(|&(_, g)| g)
}

impl Link {
    /// "Gen4 x16", with "?" where a part is unknown.
    pub fn describe_current(&self) -> String {
        describe_link(self.current_speed_gts.known(), self.current_width.known())
    }
    pub fn describe_max(&self) -> String {
        describe_link(self.max_speed_gts.known(), self.max_width.known())
    }
}

pub fn describe_link(speed: Option<&f64>, width: Option<&u32>) -> String {
    let gen = match speed {
        Some(s) => match pcie_gen(*s) {
            Some(g) => format!("Gen{g}"),
            None => format!("{s} GT/s"),
        },
        None => "Gen?".into(),
    };
    let width = width.map_or("x?".to_string(), |w| format!("x{w}"));
    format!("{gen} {width}")
}

/// AER counters since boot (`aer_dev_correctable`, `aer_dev_nonfatal`, `aer_dev_fatal`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Aer {
    pub correctable: BTreeMap<String, u64>,
    pub nonfatal: BTreeMap<String, u64>,
    pub fatal: BTreeMap<String, u64>,
}

impl Aer {
    fn total(map: &BTreeMap<String, u64>, total_key: &str) -> u64 {
        map.get(total_key)
            .copied()
            .unwrap_or_else(|| map.values().sum())
    }
    pub fn correctable_total(&self) -> u64 {
        Self::total(&self.correctable, "TOTAL_ERR_COR")
    }
    pub fn nonfatal_total(&self) -> u64 {
        Self::total(&self.nonfatal, "TOTAL_ERR_NONFATAL")
    }
    pub fn fatal_total(&self) -> u64 {
        Self::total(&self.fatal, "TOTAL_ERR_FATAL")
    }
    /// The non-zero counters other than the totals, e.g. "RxErr 12".
    pub fn nonzero(&self) -> Vec<String> {
        [&self.correctable, &self.nonfatal, &self.fatal]
            .iter()
            .flat_map(|m| m.iter())
            .filter(|(k, v)| **v > 0 && !k.starts_with("TOTAL_"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bridge {
    pub bdf: String,
    pub link: Link,
    pub aer: Probed<Aer>,
    pub config: Probed<BridgeConfig>,
}

/// What rigdoctor decodes from a bridge's PCI config space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BridgeConfig {
    pub vendor_id: u16,
    pub device_id: u16,
    /// PCIe port type from the PCI Express capability ("root-port", "switch-upstream", ...).
    pub port_type: Probed<String>,
    /// The ACS extended capability; `None` when the bridge has none.
    pub acs: Probed<Option<Acs>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Acs {
    pub offset: u16,
    pub capability: u16,
    pub control: u16,
    /// Read with the layout of Intel Sunrise/Union Point PCH root ports, whose ACS registers are
    /// dwords (control at +8), as Linux' `pci_quirk_intel_spt_pch_acs` does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub intel_pch_layout: bool,
}

impl Acs {
    pub const SOURCE_VALIDATION: u16 = 0x01;
    pub const TRANSLATION_BLOCKING: u16 = 0x02;
    pub const P2P_REQUEST_REDIRECT: u16 = 0x04;
    pub const P2P_COMPLETION_REDIRECT: u16 = 0x08;
    pub const UPSTREAM_FORWARDING: u16 = 0x10;
    pub const P2P_EGRESS_CONTROL: u16 = 0x20;
    pub const DIRECT_TRANSLATED_P2P: u16 = 0x40;

    /// The control bits that send peer traffic up to the root complex.
    pub fn redirecting(&self) -> bool {
        self.control
            & (Self::P2P_REQUEST_REDIRECT
                | Self::P2P_COMPLETION_REDIRECT
                | Self::P2P_EGRESS_CONTROL)
            != 0
    }

    /// `lspci -vvv` style: "SrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-".
    pub fn describe_control(&self) -> String {
        [
            (Self::SOURCE_VALIDATION, "SrcValid"),
            (Self::TRANSLATION_BLOCKING, "TransBlk"),
            (Self::P2P_REQUEST_REDIRECT, "ReqRedir"),
            (Self::P2P_COMPLETION_REDIRECT, "CmpltRedir"),
            (Self::UPSTREAM_FORWARDING, "UpstreamFwd"),
            (Self::P2P_EGRESS_CONTROL, "EgressCtrl"),
            (Self::DIRECT_TRANSLATED_P2P, "DirectTrans"),
        ]
        .iter()
        .map(|&(bit, name)| format!("{name}{}", if self.control & bit != 0 { '+' } else { '-' }))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NvidiaDriver {
    /// `/proc/driver/nvidia/version` exists: the kernel module is loaded.
    pub loaded: bool,
    pub version: Probed<String>,
    /// "open" or "proprietary" kernel module flavour.
    pub flavour: Probed<String>,
    /// `/proc/driver/nvidia/gpus/*/information`, one entry per GPU the driver manages.
    pub gpus: Vec<DriverGpu>,
    pub params: Probed<BTreeMap<String, String>>,
    /// `/sys/module/nouveau` exists.
    pub nouveau_loaded: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverGpu {
    pub bdf: String,
    pub model: Option<String>,
    pub uuid: Option<String>,
    pub vbios: Option<String>,
    /// The "GSP Firmware" line: a version when GSP-RM runs, "N/A" when it does not.
    pub gsp_firmware: Option<String>,
}

impl DriverGpu {
    pub fn gsp_enabled(&self) -> Option<bool> {
        self.gsp_firmware
            .as_deref()
            .map(|v| !v.eq_ignore_ascii_case("N/A") && !v.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvFacts {
    /// NCCL_*, TORCH_NCCL_* and CUDA_* variables of the rigdoctor process, which a training
    /// job started from the same shell inherits.
    pub vars: BTreeMap<String, String>,
    /// NCCL's configuration files (`/etc/nccl.conf`, `~/.nccl.conf`) that exist.
    pub nccl_conf: Vec<NcclConf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NcclConf {
    pub path: String,
    pub vars: Probed<BTreeMap<String, String>>,
}

impl EnvFacts {
    /// The effective value of a variable and where it was set. The environment overrides
    /// the files, and `~/.nccl.conf` overrides `/etc/nccl.conf` (NCCL's own order).
    pub fn lookup(&self, key: &str) -> Option<(String, String)> {
        if let Some(v) = self.vars.get(key) {
            return Some((v.clone(), "environment".into()));
        }
        self.nccl_conf.iter().rev().find_map(|c| {
            c.vars
                .known()
                .and_then(|m| m.get(key))
                .map(|v| (v.clone(), c.path.clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_last_value_wins_and_quotes_group() {
        let c = KernelCmdline {
            raw: "ro iommu=on quiet iommu=pt dyndbg=\"file a.c +p\" pci=noaer\n".into(),
        };
        assert_eq!(c.get("iommu").as_deref(), Some("pt"));
        assert_eq!(c.get("dyndbg").as_deref(), Some("file a.c +p"));
        assert_eq!(c.get("ro").as_deref(), Some(""));
        assert_eq!(c.get("amd_iommu"), None);
        assert_eq!(
            c.mentions(&["iommu", "pci"]),
            ["iommu=on", "iommu=pt", "pci=noaer"]
        );
    }

    #[test]
    fn probed_round_trips_untagged() {
        let k: Probed<u32> = Probed::Known(16);
        let u: Probed<u32> = Probed::unknown(Why::NeedsRoot, "config space is 64 bytes");
        assert_eq!(serde_json::to_string(&k).unwrap(), "16");
        let s = serde_json::to_string(&u).unwrap();
        assert_eq!(
            s,
            r#"{"unknown":"needs-root","detail":"config space is 64 bytes"}"#
        );
        assert_eq!(serde_json::from_str::<Probed<u32>>(&s).unwrap(), u);
        assert_eq!(serde_json::from_str::<Probed<u32>>("16").unwrap(), k);
        let none: Probed<Option<String>> = serde_json::from_str("null").unwrap();
        assert_eq!(none, Probed::Known(None));
    }

    #[test]
    fn acs_describes_like_lspci() {
        let a = Acs {
            offset: 0x148,
            capability: 0x5f,
            control: 0x1d,
            intel_pch_layout: false,
        };
        assert_eq!(
            a.describe_control(),
            "SrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-"
        );
        assert!(a.redirecting());
        assert!(!Acs { control: 0x01, ..a }.redirecting());
    }

    #[test]
    fn bus_ids_normalise() {
        assert_eq!(normalize_bus_id("00000000:0A:00.0"), "0000:0a:00.0");
        assert_eq!(normalize_bus_id("0000:41:00.0"), "0000:41:00.0");
        assert_eq!(normalize_bus_id("00010000:E1:00.0"), "10000:e1:00.0");
    }

    #[test]
    fn gens_from_rates() {
        assert_eq!(pcie_gen(16.0), Some(4));
        assert_eq!(pcie_gen(2.5), Some(1));
        assert_eq!(pcie_gen(3.0), None);
        assert_eq!(describe_link(Some(&8.0), Some(&4)), "Gen3 x4");
    }

    #[test]
    fn aer_totals_prefer_kernel_total_line() {
        let mut a = Aer::default();
        a.correctable.insert("RxErr".into(), 3);
        a.correctable.insert("BadTLP".into(), 2);
        assert_eq!(a.correctable_total(), 5);
        a.correctable.insert("TOTAL_ERR_COR".into(), 5);
        assert_eq!(a.correctable_total(), 5);
        assert_eq!(a.nonzero(), ["BadTLP 2", "RxErr 3"]);
    }
}
