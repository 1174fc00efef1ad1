//! PCIe link width and speed along each GPU's path, as sysfs reports them at idle.

use super::topology::links_of;
use super::{gpu_label, KERNEL_SYSFS_PCI};
use crate::code::Code;
use crate::facts::{describe_link, Facts, GpuPci, Link, PciTopology};
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;

fn each_link<'a>(
    topo: &'a PciTopology,
    mut visit: impl FnMut(&'a GpuPci, &super::topology::PathLink<'a>),
) {
    for g in &topo.gpus {
        for l in links_of(g, topo) {
            visit(g, &l);
        }
    }
}

fn min_known<T: PartialOrd + Copy>(a: Option<&T>, b: Option<&T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if *x < *y { *x } else { *y }),
        (Some(x), None) | (None, Some(x)) => Some(*x),
        (None, None) => None,
    }
}

fn end(name: &str, is_gpu: bool) -> String {
    if is_gpu {
        format!("GPU {name}")
    } else {
        format!("switch port {name}")
    }
}

/// A link trained narrower than both of its ends support. Width, unlike speed, is not lowered
/// to save power, so an idle reading already shows it; speed is judged under load by `bandwidth`.
pub fn degraded(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(topo) = facts.pci.known() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // A GPU whose link `bandwidth` read under load is judged from that reading.
    let measured = super::bandwidth::measured_links(facts);
    each_link(topo, |g, l| {
        if l.is_gpu && measured.contains(&g.bdf) {
            return;
        }
        let Some(&cur) = l.device_link.current_width.known() else {
            return;
        };
        let port_max = l.port_link.and_then(|p| p.max_width.known());
        let Some(capable) = min_known(l.device_link.max_width.known(), port_max) else {
            return;
        };
        if cur >= capable {
            return;
        }
        let mut f = Finding::new(
            Code::PcieLinkDegraded,
            Severity::Warn,
            format!(
                "PCIe link of {} trained at x{cur}, though both ends support x{capable}",
                end(l.device, l.is_gpu)
            ),
        )
        .gpus([g.bdf.clone()])
        .evidence(format!(
            "{}: current {} (sysfs current_link_*)",
            if l.is_gpu {
                gpu_label(g)
            } else {
                l.device.to_string()
            },
            l.device_link.describe_current()
        ))
        .evidence(format!(
            "{} supports {}; port {} supports {}",
            l.device,
            l.device_link.describe_max(),
            l.port,
            l.port_link.map_or("?".into(), Link::describe_max)
        ))
        .evidence("read at idle; `rigdoctor bandwidth` measures the link under load");
        for e in super::kernel_log::link_evidence(facts, g) {
            f = f.evidence(e);
        }
        out.push(
            f
            .fix("reseat the card (and the riser at both ends); a riser rated for a lower generation or too long often trains fewer lanes")
            .fix("try another slot, and check the board manual for slots sharing lanes with M.2/U.2 and the BIOS bifurcation setting (x16 vs x8x8 vs x4x4x4x4)")
            .refs([KERNEL_SYSFS_PCI]),
        );
    });
    out
}

/// A slot (port) that cannot run the card at its full width or generation: by design, not a
/// fault. One note for the whole rig, a line per limited link.
pub fn slot_limited(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(topo) = facts.pci.known() else {
        return Vec::new();
    };
    let mut gpus: Vec<String> = Vec::new();
    let mut evidence: Vec<String> = Vec::new();
    each_link(topo, |g, l| {
        let Some(port) = l.port_link else { return };
        let dev = l.device_link;
        let narrower =
            matches!((port.max_width.known(), dev.max_width.known()), (Some(p), Some(d)) if p < d);
        let slower = matches!((port.max_speed_gts.known(), dev.max_speed_gts.known()), (Some(p), Some(d)) if p < d);
        if !narrower && !slower {
            return;
        }
        let limit = describe_link(
            min_known(port.max_speed_gts.known(), dev.max_speed_gts.known()).as_ref(),
            min_known(port.max_width.known(), dev.max_width.known()).as_ref(),
        );
        let who = if l.is_gpu {
            gpu_label(g)
        } else {
            format!("switch port {} above GPU {}", l.device, g.bdf)
        };
        evidence.push(format!(
            "{who} supports {}, port {} supports {}: runs at most {limit}",
            dev.describe_max(),
            l.port,
            port.describe_max()
        ));
        if !gpus.contains(&g.bdf) {
            gpus.push(g.bdf.clone());
        }
    });
    if evidence.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        Code::PcieSlotLimited,
        Severity::Info,
        format!("{} PCIe link(s) are limited by the slot, not the card", evidence.len()),
    )
    .gpus(gpus)
    .fix("expected on boards that split lanes (x8/x8), on older platforms (Gen3) and on chipset slots; for more bandwidth use a slot wired x16 to the CPU (board manual) or a platform with more lanes")
    .refs([KERNEL_SYSFS_PCI]);
    for e in evidence {
        f = f.evidence(e);
    }
    vec![f]
}
