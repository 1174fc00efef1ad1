//! Rules: pure functions of [`Facts`] and the [`Knowledge`] base that produce [`Finding`]s.
//!
//! A rule never reads the machine, so a saved report re-diagnoses exactly like a live run. A rule
//! whose facts are unknown stays silent unless not knowing is itself worth saying.

mod acs;
mod aer;
mod bandwidth;
mod bar;
mod driver;
mod env;
mod gpu;
mod host_limits;
mod iommu;
mod kernel_log;
mod link;
mod nccl;
mod p2p;
mod p2p_gates;
pub mod topology;
mod unread;
mod virt;
mod worker;

use crate::code::Code;
use crate::facts::{Facts, GpuPci};
use crate::finding::Finding;
use crate::knowledge::Knowledge;

type Rule = fn(&Facts, &Knowledge) -> Vec<Finding>;

/// Every rule with the finding ids it may emit, each documented in docs/findings.md. A rule
/// emitting an id it did not register is a bug: debug builds (every test) stop on it.
const RULES: &[(&[Code], Rule)] = &[
    (&[Code::DriverNotLoaded], driver::not_loaded),
    (&[Code::NouveauBound], driver::nouveau_bound),
    (&[Code::GpuNotBound], driver::gpu_not_bound),
    (&[Code::DriverKnownBad], driver::known_bad),
    (&[Code::DriverLibraryMismatch], gpu::driver_library_mismatch),
    (&[Code::CudaUnavailable], gpu::cuda_unavailable),
    (&[Code::NvmlUnavailable], gpu::nvml_unavailable),
    (&[Code::DeviceOrderMismatch], gpu::device_order_mismatch),
    (&[Code::PersistenceOff], gpu::persistence_off),
    (&[Code::GpuCopyFailed], p2p::gpu_copy_failed),
    (&[Code::P2pCorrupt], p2p::corrupt),
    (&[Code::P2pError], p2p::error),
    (&[Code::CopyCorrupt], p2p::copy_corrupt),
    (&[Code::P2pHang], p2p::hang),
    (&[Code::P2pEnableFailed], p2p::enable_failed),
    (&[Code::P2pNotSupported], p2p::not_supported),
    (&[Code::P2pGates], p2p_gates::gates),
    (&[Code::NvlinkInactive], p2p::nvlink_inactive),
    (&[Code::IommuTranslation], iommu::translation),
    (&[Code::AcsRedirect], acs::redirect),
    (&[Code::AcsNotChecked], acs::not_checked),
    (&[Code::PcieLinkDegraded], link::degraded),
    (&[Code::PcieLinkDegraded], bandwidth::link_degraded),
    (&[Code::PcieReplayErrors], bandwidth::replay_errors),
    (&[Code::BandwidthLow], bandwidth::low),
    (&[Code::BandwidthImpossible], bandwidth::impossible),
    (&[Code::P2pSlowerThanHost], bandwidth::slower_than_host),
    (&[Code::Throttling], bandwidth::throttling),
    (&[Code::PowerBrake], bandwidth::power_brake),
    (
        &[
            Code::P2pCorrupt,
            Code::CopyCorrupt,
            Code::P2pHang,
            Code::P2pError,
            Code::GpuCopyFailed,
        ],
        bandwidth::failures,
    ),
    (&[Code::PcieSlotLimited], link::slot_limited),
    (&[Code::PcieAerErrors], aer::errors),
    (&[Code::GpuFellOffBus], kernel_log::fell_off_bus),
    (&[Code::XidErrors], kernel_log::xid_errors),
    (&[Code::IommuFaults], kernel_log::iommu_faults),
    (&[Code::SmallBar1], bar::small_bar1),
    (&[Code::VirtualMachine], virt::virtual_machine),
    (&[Code::NcclNotFound], nccl::not_found),
    (&[Code::NcclHang], nccl::hang),
    (&[Code::NcclError], nccl::error),
    (&[Code::NcclWrongResult], nccl::wrong_result),
    (&[Code::NcclKnownBad], nccl::known_bad),
    (&[Code::NcclSlow], nccl::slow),
    (&[Code::NcclP2pUnused], nccl::p2p_unused),
    (&[Code::ShmTooSmall], env::shm_too_small),
    (&[Code::NcclEnvOverride], env::nccl_env_override),
    (&[Code::NotChecked], unread::not_checked),
    (&[Code::P2pNotTested], unread::p2p_not_tested),
    (&[Code::WorkerCrashed], worker::crashed),
    (&[Code::WorkerExitFailed], worker::exit_failed),
    (&[Code::TimeoutTooShort], host_limits::timeout_too_short),
    (
        &[Code::AddressSpaceLimited],
        host_limits::address_space_limited,
    ),
];

/// The ids this version can emit: the rules' and the comparisons' (`compare`, `--baseline`).
pub fn finding_ids() -> impl Iterator<Item = &'static str> {
    let mut ids: Vec<Code> = RULES
        .iter()
        .flat_map(|(codes, _)| codes.iter().copied())
        .chain(crate::fleet::CODES.iter().copied())
        .chain(crate::cluster::findings::CODES.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter().map(Code::id)
}

/// Run every rule; findings sorted by severity (worst first), then id, then GPU.
pub fn diagnose(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    for (codes, rule) in RULES {
        for f in rule(facts, kb) {
            debug_assert!(
                f.code().is_some_and(|c| codes.contains(&c)),
                "{} is not registered for its rule",
                f.id
            );
            debug_assert!(
                f.code()
                    .is_some_and(|c| c.severities().contains(&f.severity)),
                "{} at {:?} is not one of its code's severities",
                f.id,
                f.severity
            );
            out.push(f);
        }
    }
    sort(&mut out);
    out
}

/// Findings in report order: by severity (worst first), then id, then GPU.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.id.cmp(&b.id))
            .then_with(|| a.gpus.cmp(&b.gpus))
    });
}

/// The NVIDIA GPUs found on the PCI bus (none when the bus could not be read).
fn gpus(facts: &Facts) -> &[GpuPci] {
    facts.pci.known().map_or(&[], |p| p.gpus.as_slice())
}

/// The GPU on the PCI bus with this bus id (any spelling NVML or CUDA use).
fn gpu_by_bdf<'a>(facts: &'a Facts, bus_id: &str) -> Option<&'a GpuPci> {
    let id = crate::facts::normalize_bus_id(bus_id);
    gpus(facts).iter().find(|g| g.bdf == id)
}

/// "0000:41:00.0 (NVIDIA GeForce RTX 3090)".
fn gpu_label(g: &GpuPci) -> String {
    match g.name.known() {
        Some(n) => format!("{} ({n})", g.bdf),
        None => format!("{} (10de:{:04x})", g.bdf, g.device_id),
    }
}

/// How to add a kernel parameter on a GRUB system (Ubuntu, Debian, most home rigs).
fn kernel_param_fix(param: &str) -> String {
    format!(
        "add `{param}` to GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub, then: sudo update-grub && sudo reboot"
    )
}

const NCCL_TROUBLESHOOTING: &str =
    "https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/troubleshooting.html";
const KERNEL_PARAMS: &str = "https://docs.kernel.org/admin-guide/kernel-parameters.html";
const KERNEL_SYSFS_PCI: &str = "https://docs.kernel.org/ABI/testing/sysfs-bus-pci";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code is emitted by some rule (docs/findings.md is checked against the codes in
    /// `crate::code`).
    #[test]
    fn every_code_has_a_rule() {
        let registered: Vec<&str> = finding_ids().collect();
        for c in Code::ALL {
            assert!(registered.contains(&c.id()), "no rule emits {c}");
        }
    }
}
