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
mod link;
mod nccl;
mod p2p;
pub mod topology;
mod unread;
mod virt;
mod worker;

use crate::facts::{Facts, GpuPci};
use crate::finding::Finding;
use crate::knowledge::Knowledge;

type Rule = fn(&Facts, &Knowledge) -> Vec<Finding>;

/// Every rule with the finding ids it may emit, each documented in docs/findings.md. A rule
/// emitting an id it did not register is a bug: debug builds (every test) stop on it.
const RULES: &[(&[&str], Rule)] = &[
    (&["driver-not-loaded"], driver::not_loaded),
    (&["nouveau-bound"], driver::nouveau_bound),
    (&["gpu-not-bound"], driver::gpu_not_bound),
    (&["driver-known-bad"], driver::known_bad),
    (&["driver-library-mismatch"], gpu::driver_library_mismatch),
    (&["cuda-unavailable"], gpu::cuda_unavailable),
    (&["nvml-unavailable"], gpu::nvml_unavailable),
    (&["device-order-mismatch"], gpu::device_order_mismatch),
    (&["persistence-off"], gpu::persistence_off),
    (&["gpu-copy-failed"], p2p::gpu_copy_failed),
    (&["p2p-corrupt"], p2p::corrupt),
    (&["p2p-error"], p2p::error),
    (&["copy-corrupt"], p2p::copy_corrupt),
    (&["p2p-hang"], p2p::hang),
    (&["p2p-enable-failed"], p2p::enable_failed),
    (&["p2p-not-supported"], p2p::not_supported),
    (&["nvlink-inactive"], p2p::nvlink_inactive),
    (&["iommu-translation"], iommu::translation),
    (&["acs-redirect"], acs::redirect),
    (&["acs-not-checked"], acs::not_checked),
    (&["pcie-link-degraded"], link::degraded),
    (&["pcie-link-degraded"], bandwidth::link_degraded),
    (&["pcie-replay-errors"], bandwidth::replay_errors),
    (&["bandwidth-low"], bandwidth::low),
    (&["p2p-slower-than-host"], bandwidth::slower_than_host),
    (&["throttling"], bandwidth::throttling),
    (
        &[
            "p2p-corrupt",
            "copy-corrupt",
            "p2p-hang",
            "p2p-error",
            "gpu-copy-failed",
        ],
        bandwidth::failures,
    ),
    (&["pcie-slot-limited"], link::slot_limited),
    (&["pcie-aer-errors"], aer::errors),
    (&["small-bar1"], bar::small_bar1),
    (&["virtual-machine"], virt::virtual_machine),
    (&["nccl-not-found"], nccl::not_found),
    (&["nccl-hang"], nccl::hang),
    (&["nccl-error"], nccl::error),
    (&["nccl-wrong-result"], nccl::wrong_result),
    (&["nccl-known-bad"], nccl::known_bad),
    (&["nccl-slow"], nccl::slow),
    (&["shm-too-small"], env::shm_too_small),
    (&["nccl-env-override"], env::nccl_env_override),
    (&["not-checked"], unread::not_checked),
    (&["p2p-not-tested"], unread::p2p_not_tested),
    (&["worker-crashed"], worker::crashed),
    (&["worker-exit-failed"], worker::exit_failed),
    (&["timeout-too-short"], host_limits::timeout_too_short),
    (
        &["address-space-limited"],
        host_limits::address_space_limited,
    ),
];

/// The ids this version can emit.
pub fn finding_ids() -> impl Iterator<Item = &'static str> {
    let mut ids: Vec<&'static str> = RULES
        .iter()
        .flat_map(|(ids, _)| ids.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
}

/// Run every rule; findings sorted by severity (worst first), then id, then GPU.
pub fn diagnose(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    for (ids, rule) in RULES {
        for f in rule(facts, kb) {
            debug_assert!(
                ids.contains(&f.id.as_str()),
                "{} is not registered for its rule",
                f.id
            );
            out.push(f);
        }
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.id.cmp(&b.id))
            .then_with(|| a.gpus.cmp(&b.gpus))
    });
    out
}

/// The NVIDIA GPUs found on the PCI bus (none when the bus could not be read).
fn gpus(facts: &Facts) -> &[GpuPci] {
    facts.pci.known().map_or(&[], |p| p.gpus.as_slice())
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
    #[test]
    fn every_rule_id_is_documented() {
        let doc = include_str!("../../docs/findings.md");
        for id in super::finding_ids() {
            assert!(
                doc.contains(&format!("## `{id}`")),
                "{id} missing from docs/findings.md"
            );
        }
    }

    #[test]
    fn every_documented_id_is_a_rule_id() {
        let doc = include_str!("../../docs/findings.md");
        let ids: Vec<&str> = super::finding_ids().collect();
        for line in doc.lines().filter(|l| l.starts_with("## `")) {
            let id = line.trim_start_matches("## `").trim_end_matches('`');
            assert!(
                ids.contains(&id),
                "docs/findings.md documents {id:?}, which no rule emits"
            );
        }
    }
}
