//! `p2p-gates`: which gate blocks or endangers peer-to-peer on each GPU and pair, in the order
//! a person should clear them. People otherwise find these one at a time on forums.

use super::p2p::{gpu, nvlinked, pci_gpu, Gpu};
use crate::code::Code;
use crate::facts::{granted, Facts, PeerAccess};
use crate::finding::{Finding, Severity};
use crate::knowledge::{is_geforce, Knowledge};

const OPEN_P2P: &str = "https://github.com/aikitoria/open-gpu-kernel-modules";
const TINYGRAD_P2P: &str = "https://github.com/tinygrad/open-gpu-kernel-modules";
const MIXED_PAIRS: &str = "https://github.com/vllm-project/vllm/issues/34437";

/// What CUDA granted, from the P2P battery or else the bandwidth run.
fn access(facts: &Facts) -> Option<(&[i32], &[PeerAccess])> {
    let g = facts.gpu.as_ref()?;
    if let Some(p) = g.p2p.as_ref() {
        if let Some(a) = p.access.known() {
            return Some((&p.devices, a));
        }
    }
    let b = g.bandwidth.as_ref()?;
    Some((&b.devices, b.access.known()?))
}

fn geforce(g: &Gpu) -> bool {
    g.name.is_some_and(is_geforce)
}

pub fn gates(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    let Some((devices, access)) = access(facts) else {
        return Vec::new();
    };
    let mut pairs: Vec<(i32, i32, bool)> = Vec::new();
    for (i, &a) in devices.iter().enumerate() {
        for &b in &devices[i + 1..] {
            pairs.push((a, b, granted(access, a, b) && granted(access, b, a)));
        }
    }
    if pairs.is_empty() {
        return Vec::new();
    }
    let denied = pairs.iter().filter(|p| !p.2).count();
    let open = facts.driver.flavour.known().map(String::as_str) == Some("open");
    let gpus: Vec<Gpu> = devices.iter().map(|&d| gpu(facts, d)).collect();
    let any_geforce = gpus.iter().any(geforce);
    let level = facts.env.lookup("NCCL_P2P_LEVEL");
    // Someone who tries to use P2P: the open module on GeForce (the community P2P builds are
    // open-module forks), NCCL_P2P_LEVEL set, or P2P on some pairs only.
    let mut trying: Vec<String> = Vec::new();
    if open && any_geforce {
        trying.push(
            "the open kernel module runs GeForce cards (the community P2P builds are forks of it)"
                .into(),
        );
    }
    if let Some((v, from)) = &level {
        trying.push(format!("NCCL_P2P_LEVEL={v} is set ({from})"));
    }
    if denied > 0 && denied < pairs.len() {
        trying.push(format!(
            "P2P is granted on {} of {} pairs only",
            pairs.len() - denied,
            pairs.len()
        ));
    }
    let mut lines: Vec<String> = Vec::new();
    let mut named: Vec<String> = Vec::new();
    let name = |bdf: Option<&str>, named: &mut Vec<String>| {
        if let Some(b) = bdf {
            if !named.iter().any(|n| n == b) {
                named.push(b.to_string());
            }
        }
    };
    // 1. Policy: GeForce without NVLink on the stock driver gets no P2P over PCIe.
    for &(a, b, ok) in &pairs {
        let (ga, gb) = (gpu(facts, a), gpu(facts, b));
        if !ok && geforce(&ga) && geforce(&gb) && !nvlinked(facts, ga.bdf, gb.bdf) {
            lines.push(format!(
                "policy: {} <-> {}: GeForce cards without NVLink; the {} driver grants no P2P over PCIe between them{}",
                ga.label(),
                gb.label(),
                if open { "open" } else { "stock (proprietary)" },
                if open { "" } else { " (the community P2P builds need the open module)" }
            ));
            name(ga.bdf, &mut named);
            name(gb.bdf, &mut named);
        }
    }
    // 2. BAR1 smaller than VRAM: the P2P builds map peer memory through BAR1.
    for g in &gpus {
        let Some(p) = pci_gpu(facts, g.bdf) else {
            continue;
        };
        let vram = facts
            .gpu
            .as_ref()
            .and_then(|r| r.cuda.known())
            .and_then(|c| c.devices.iter().find(|d| d.ordinal == g.ordinal))
            .map(|d| d.memory_bytes);
        if let (Some(&bar1), Some(vram)) = (p.bar1_bytes.known(), vram) {
            if bar1 > 0 && bar1 < vram {
                lines.push(format!(
                    "BAR1: {}: {} MiB of {} MiB of memory; {}",
                    g.label(),
                    bar1 >> 20,
                    vram >> 20,
                    super::bar::rebar_advice(p, bar1, Some(vram))
                ));
                name(g.bdf, &mut named);
            }
        }
    }
    // 3. A GPU that drives a display.
    for g in &gpus {
        let mut seen: Vec<String> = pci_gpu(facts, g.bdf)
            .and_then(|p| p.displays.known())
            .filter(|d| !d.is_empty())
            .map(|d| vec![format!("{} (DRM connector status connected)", d.join(", "))])
            .unwrap_or_default();
        // NVML also sees a screen that an X server set up without a DRM connector.
        if g.bdf
            .and_then(|b| super::driver::nvml_device(facts, b))
            .and_then(|d| d.display_active.known())
            == Some(&true)
        {
            seen.push("a display (nvmlDeviceGetDisplayActive)".into());
        }
        if !seen.is_empty() {
            lines.push(format!(
                "display: {} drives {}; the P2P builds need GPUs without a display",
                g.label(),
                seen.join(" and ")
            ));
            name(g.bdf, &mut named);
        }
    }
    // 4. IOMMU translation.
    for g in &gpus {
        let Some(p) = pci_gpu(facts, g.bdf) else {
            continue;
        };
        if p.iommu_group
            .known()
            .and_then(|g| g.as_ref())
            .and_then(|g| g.translated())
            == Some(true)
        {
            lines.push(format!(
                "IOMMU: {} is in a translated IOMMU domain (see iommu-translation)",
                g.label()
            ));
            name(g.bdf, &mut named);
        }
    }
    // 5. ACS redirect on the path between GPUs.
    for f in super::acs::redirect(facts, kb) {
        lines.push(format!("ACS: {} (see acs-redirect)", f.title));
        for b in &f.gpus {
            name(Some(b), &mut named);
        }
    }
    // 6. Mixed generations in a pair.
    for &(a, b, _) in &pairs {
        let fam = |g: &Gpu| pci_gpu(facts, g.bdf).and_then(|p| kb.family_of(p.device_id));
        let (ga, gb) = (gpu(facts, a), gpu(facts, b));
        if let (Some(fa), Some(fb)) = (fam(&ga), fam(&gb)) {
            if fa != fb {
                lines.push(format!(
                    "generations: {} is {fa}, {} is {fb}: P2P between generations is reported to deliver wrong data",
                    ga.label(),
                    gb.label()
                ));
                name(ga.bdf, &mut named);
                name(gb.bdf, &mut named);
            }
        }
    }
    // 7. Module and libraries from different releases.
    if !super::gpu::driver_library_mismatch(facts, kb).is_empty() {
        lines.push("module: the kernel module and the user-space libraries are different releases (see driver-library-mismatch)".into());
    }
    // P2P granted everywhere: IOMMU, ACS and the module have findings of their own; what
    // endangers working P2P beyond them is said here.
    if denied == 0 {
        lines.retain(|l| {
            ["BAR1:", "display:", "generations:"]
                .iter()
                .any(|p| l.starts_with(p))
        });
    }
    // Without an attempt at P2P, GeForce policy alone is p2p-not-supported's note.
    let only_policy = lines.iter().all(|l| l.starts_with("policy:"));
    if lines.is_empty() || (trying.is_empty() && (denied == 0 || only_policy)) {
        return Vec::new();
    }
    let severity = if trying.is_empty() {
        Severity::Info
    } else {
        Severity::Warn
    };
    let title = if denied == pairs.len() {
        "P2P is off between these GPUs: what stands in its way, in the order to clear it"
    } else if denied > 0 {
        "P2P is granted on some pairs only: what blocks the others, in the order to clear it"
    } else {
        "P2P is on, and these gates endanger it"
    };
    let mut f = Finding::new(Code::P2pGates, severity, title).gpus(named);
    for t in &trying {
        f = f.evidence(format!("you are using P2P: {t}"));
    }
    for l in lines {
        f = f.evidence(l);
    }
    if severity == Severity::Info {
        f = f.fix("nothing to do unless you want P2P: NCCL uses shared host memory without it");
    }
    vec![f
        .fix("clear the gates from the top: a gate lower in the list matters only once the ones above it are gone")
        .refs([OPEN_P2P, TINYGRAD_P2P, MIXED_PAIRS])]
}
