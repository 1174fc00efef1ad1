//! PCIe Advanced Error Reporting counters on the GPUs and the bridges above them.

use super::{gpu_label, KERNEL_SYSFS_PCI};
use crate::code::Code;
use crate::facts::{Aer, Facts, GpuPci, PciTopology};
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;

const AER_STATS: &str = "https://docs.kernel.org/ABI/testing/sysfs-bus-pci-devices-aer_stats";

/// The AER counters on a GPU's path that counted errors since boot: the GPU's and every
/// bridge's above it, since both ends of a link count its errors.
pub(super) fn counted_on_path<'a>(topo: &'a PciTopology, g: &'a GpuPci) -> Vec<(String, &'a Aer)> {
    let mut devices: Vec<(String, &Aer)> = Vec::new();
    if let Some(a) = g.aer.known() {
        devices.push((gpu_label(g), a));
    }
    for b in g.path.known().map(|p| p.bridges.as_slice()).unwrap_or(&[]) {
        if let Some(a) = topo.bridge(b).and_then(|br| br.aer.known()) {
            devices.push((b.clone(), a));
        }
    }
    devices.retain(|(_, a)| a.correctable_total() + a.nonfatal_total() + a.fatal_total() > 0);
    devices
}

/// One evidence line per device of [`counted_on_path`].
pub(super) fn describe_counted(counted: &[(String, &Aer)]) -> Vec<String> {
    counted
        .iter()
        .map(|(name, a)| {
            format!(
                "{name}: AER counters since boot: {} correctable, {} non-fatal, {} fatal ({})",
                a.correctable_total(),
                a.nonfatal_total(),
                a.fatal_total(),
                a.nonzero().join(", ")
            )
        })
        .collect()
}

pub fn errors(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(topo) = facts.pci.known() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for g in &topo.gpus {
        let bad = counted_on_path(topo, g);
        // The kernel log names reports the counters may not show (counters unreadable, an
        // older kernel without aer_stats): either is evidence.
        let logged = super::kernel_log::aer_evidence(facts, g);
        let logged_uncorrectable = super::kernel_log::aer_uncorrectable(facts, g) == Some(true);
        if bad.is_empty() && logged.is_empty() {
            continue;
        }
        let uncorrectable = logged_uncorrectable
            || bad
                .iter()
                .any(|(_, a)| a.nonfatal_total() + a.fatal_total() > 0);
        let (severity, title) = if uncorrectable {
            (
                Severity::Error,
                format!("uncorrectable PCIe errors on the path of GPU {}", g.bdf),
            )
        } else {
            (
                Severity::Warn,
                format!(
                    "corrected PCIe errors on the path of GPU {}: a marginal link",
                    g.bdf
                ),
            )
        };
        let mut f = Finding::new(Code::PcieAerErrors, severity, title).gpus([g.bdf.clone()]);
        for l in describe_counted(&bad) {
            f = f.evidence(l);
        }
        for e in logged {
            f = f.evidence(e);
        }
        if facts.host.kernel_log.known().is_none() {
            f = f.fix("see when they happened: sudo dmesg | grep -i -e 'PCIe Bus Error' -e AER");
        }
        f = f
            .fix("reseat or replace the riser, or set that slot to a lower PCIe generation in the BIOS (Gen3 is far more tolerant of risers than Gen4)")
            .fix("`rigdoctor bandwidth` shows whether the counters grow under load")
            .refs([AER_STATS, KERNEL_SYSFS_PCI]);
        out.push(f);
    }
    out
}
