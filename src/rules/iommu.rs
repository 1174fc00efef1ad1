//! IOMMU translation of GPU DMA, which breaks or slows peer-to-peer on many boards.

use super::{gpu_label, gpus, kernel_param_fix, KERNEL_PARAMS, NCCL_TROUBLESHOOTING};
use crate::code::Code;
use crate::facts::{Facts, Probed};
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;

const SYSFS_IOMMU_GROUPS: &str = "https://docs.kernel.org/ABI/testing/sysfs-kernel-iommu_groups";
const IOMMU_PARAMS: [&str; 5] = [
    "iommu",
    "amd_iommu",
    "intel_iommu",
    "iommu.passthrough",
    "iommu.strict",
];

pub fn translation(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    let gpus = gpus(facts);
    if gpus.len() < 2 {
        return Vec::new();
    }
    let translated: Vec<_> = gpus
        .iter()
        .filter_map(|g| {
            let group = g.iommu_group.known()?.as_ref()?;
            group.translated()?.then_some((g, group))
        })
        .collect();
    if translated.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        Code::IommuTranslation,
        Severity::Warn,
        "the IOMMU translates GPU DMA: peer-to-peer copies can hang, return garbage or crawl",
    )
    .gpus(translated.iter().map(|(g, _)| g.bdf.clone()))
    .refs([
        SYSFS_IOMMU_GROUPS,
        "https://github.com/pytorch/pytorch/issues/52142",
        "https://github.com/NVIDIA/nccl/issues/257",
        NCCL_TROUBLESHOOTING,
    ]);
    // A known-bad release on these GPUs whose reports say the IOMMU is not the cause: said here,
    // so "switch the IOMMU off" is not read as the fix for that release's hang.
    for (e, bad) in super::driver::known_bad_matches(facts, kb) {
        let shared = translated.iter().any(|(g, _)| bad.gpus.contains(&g.bdf));
        if shared && e.not_fixed_by.iter().any(|c| c == "iommu") {
            f = f.evidence(format!(
                "the reports behind {} (see driver-known-bad) say switching the IOMMU off does not cure that release's hang: fix the driver first",
                e.id
            ));
        }
    }
    for (g, group) in &translated {
        let t = group.domain_type.known().map_or("?", |s| s.as_str());
        f = f.evidence(format!(
            "{}: IOMMU group {}, domain type {t} (translated)",
            gpu_label(g),
            group.id
        ));
    }
    let mentioned = facts
        .host
        .cmdline
        .known()
        .map(|c| c.mentions(&IOMMU_PARAMS))
        .unwrap_or_default();
    f = f.evidence(match (&facts.host.cmdline, mentioned.is_empty()) {
        (Probed::Unknown { .. }, _) => format!(
            "kernel command line not read ({}): whether it sets an iommu parameter is not known",
            facts.host.cmdline.why_unknown().unwrap_or_default()
        ),
        (_, true) => {
            "kernel command line sets no iommu parameter: the kernel's default domain is translated"
                .to_string()
        }
        (_, false) => format!("kernel command line: {}", mentioned.join(" ")),
    });
    let faulted: Vec<(&&crate::facts::GpuPci, usize)> = translated
        .iter()
        .map(|(g, _)| (g, super::kernel_log::iommu_fault_count(facts, g)))
        .filter(|(_, n)| *n > 0)
        .collect();
    if !faulted.is_empty() {
        // The kernel saw the IOMMU refuse these GPUs' DMA: not a risk but a fault.
        f.severity = Severity::Error;
        for (g, n) in &faulted {
            f = f.evidence(format!(
                "the kernel logged {n} IOMMU fault(s) for {} this boot (see iommu-faults)",
                g.bdf
            ));
        }
    }
    if passthrough_requested(facts) {
        f = f.evidence(
            "passthrough is requested on the command line, yet the GPUs' domains are translated",
        );
    }
    for fix in fixes(facts) {
        f = f.fix(fix);
    }
    f = f.refs([KERNEL_PARAMS]);
    vec![f]
}

fn passthrough_requested(facts: &Facts) -> bool {
    facts.host.cmdline.known().is_some_and(|c| {
        c.get("iommu").as_deref() == Some("pt")
            || c.get("iommu.passthrough").as_deref() == Some("1")
    })
}

/// How to stop the IOMMU translating GPU DMA on this machine: passthrough, or off when
/// passthrough is already asked for and did not take.
pub fn fixes(facts: &Facts) -> Vec<String> {
    let has_pt = passthrough_requested(facts);
    let off_param = match facts.host.cpu.known() {
        Some(c) if c.is_amd() => "amd_iommu=off",
        Some(c) if c.is_intel() => "intel_iommu=off",
        _ => "iommu=off",
    };
    let off = format!(
        "in the BIOS (AMD: IOMMU = Disabled; Intel: VT-d = Disabled), or {}",
        kernel_param_fix(off_param)
    );
    let mut out = if has_pt {
        vec![format!("switch the IOMMU off instead: {off}")]
    } else {
        vec![
            format!(
                "keep the IOMMU for VMs but stop translating host devices: {}",
                kernel_param_fix("iommu=pt")
            ),
            format!("or switch it off: {off}"),
        ]
    };
    out.push("either way, `iommu=pt` does not switch PCIe ACS off: check `acs-redirect` too (run `sudo rigdoctor host`)".into());
    out
}
