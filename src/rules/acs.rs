//! PCIe Access Control Services on the bridges between GPUs.

use super::topology::{bridges_between, pairs};
use super::{gpus, kernel_param_fix, KERNEL_PARAMS, NCCL_TROUBLESHOOTING};
use crate::code::Code;
use crate::facts::{Acs, Facts, Probed};
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;
use std::collections::BTreeMap;

/// Bridge -> the GPU pairs whose traffic crosses it.
fn bridges_on_gpu_paths(facts: &Facts) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (a, b) in pairs(gpus(facts)) {
        let (Some(pa), Some(pb)) = (a.path.known(), b.path.known()) else {
            continue;
        };
        for bridge in bridges_between(pa, pb) {
            out.entry(bridge)
                .or_default()
                .push((a.bdf.clone(), b.bdf.clone()));
        }
    }
    out
}

/// A bridge on a GPU path whose ACS control redirects peer traffic.
struct Redirecting<'a> {
    bdf: String,
    acs: &'a Acs,
    port_type: String,
    ids: String,
    pairs: Vec<(String, String)>,
}

pub fn redirect(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(topo) = facts.pci.known() else {
        return Vec::new();
    };
    let mut hits: Vec<Redirecting> = Vec::new();
    for (bdf, pairs) in bridges_on_gpu_paths(facts) {
        let Some(cfg) = topo.bridge(&bdf).and_then(|b| b.config.known()) else {
            continue;
        };
        if let Probed::Known(Some(acs)) = &cfg.acs {
            if acs.redirecting() {
                let port_type = cfg
                    .port_type
                    .known()
                    .cloned()
                    .unwrap_or_else(|| "bridge".into());
                hits.push(Redirecting {
                    bdf,
                    acs,
                    port_type,
                    ids: format!("{:04x}:{:04x}", cfg.vendor_id, cfg.device_id),
                    pairs,
                });
            }
        }
    }
    if hits.is_empty() {
        return Vec::new();
    }
    let mut gpus: Vec<String> = hits
        .iter()
        .flat_map(|h| h.pairs.iter().flat_map(|(a, b)| [a.clone(), b.clone()]))
        .collect();
    gpus.sort();
    gpus.dedup();
    let mut f = Finding::new(
        Code::AcsRedirect,
        Severity::Warn,
        "PCIe ACS redirects peer-to-peer traffic between GPUs up to the CPU: P2P is slow or hangs",
    )
    .gpus(gpus)
    .refs([
        NCCL_TROUBLESHOOTING,
        KERNEL_PARAMS,
        "https://github.com/pytorch/pytorch/issues/24081",
    ]);
    for h in &hits {
        let between: Vec<String> = h.pairs.iter().map(|(a, b)| format!("{a}<->{b}")).collect();
        f = f.evidence(format!(
            "{} [{}] ({}) ACSCtl: {} (on the path {})",
            h.bdf,
            h.ids,
            h.port_type,
            h.acs.describe_control(),
            between.join(", ")
        ));
    }
    let acs_params: Vec<String> = facts
        .host
        .cmdline
        .known()
        .map(|c| c.mentions(&["pci"]))
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.contains("acs"))
        .collect();
    if !acs_params.is_empty() {
        f = f.evidence(format!(
            "the kernel command line already has {}, yet these bridges still redirect: check that it names them (dmesg | grep -i acs)",
            acs_params.join(" ")
        ));
    }
    let bdfs: Vec<&str> = hits.iter().map(|h| h.bdf.as_str()).collect();
    if super::virt::is_virtual_machine(facts) {
        f = f.fix("this is a virtual machine: these bridges are virtual. Check and change ACS on the host; never disable ACS inside a VM (VMs need it)");
    } else {
        f = f
            .fix("lasting fix: disable ACS in the BIOS (often under PCIe/Chipset settings or next to VT-d/IOMMU)")
            .fix(format!("or at boot: {}", kernel_param_fix(&format!("pci=disable_acs_redir={}", bdfs.join(";")))))
            .fix(format!(
                "to test now (lost at reboot): {}",
                bdfs.iter().map(|b| format!("sudo setpci -s {b} ECAP_ACS+0x6.w=0000")).collect::<Vec<_>>().join("; ")
            ))
            .evidence("note: `iommu=pt` does not switch ACS off, and turning ACS off merges IOMMU groups: VFIO passthrough of these devices stops working");
    }
    vec![f]
}

pub fn not_checked(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let gpus = gpus(facts);
    if gpus.len() < 2 {
        return Vec::new();
    }
    let Some(topo) = facts.pci.known() else {
        return Vec::new();
    };
    let mut reasons: Vec<String> = gpus
        .iter()
        .filter_map(|g| {
            g.path
                .why_unknown()
                .map(|w| format!("path of {} unknown: {w}", g.bdf))
        })
        .collect();
    for bdf in bridges_on_gpu_paths(facts).keys() {
        let why = match topo.bridge(bdf).map(|b| &b.config) {
            None => Some("not read".to_string()),
            Some(Probed::Known(cfg)) => cfg.acs.why_unknown(),
            Some(other) => other.why_unknown(),
        };
        if let Some(w) = why {
            reasons.push(format!("{bdf}: {w}"));
        }
    }
    if reasons.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        Code::AcsNotChecked,
        Severity::Info,
        "ACS on the bridges between GPUs was not checked",
    )
    .gpus(gpus.iter().map(|g| g.bdf.clone()))
    .refs([super::KERNEL_SYSFS_PCI]);
    let needs_root = reasons.iter().any(|r| r.contains("needs root"));
    for r in reasons {
        f = f.evidence(r);
    }
    if needs_root {
        f = f.fix("run as root to read the bridges' extended config space: sudo rigdoctor host");
    }
    vec![f]
}
