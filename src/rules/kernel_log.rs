//! What the kernel logged this boot: Xid errors, GPUs that fell off the bus, IOMMU faults,
//! and the AER and link lines other rules cite as evidence.

use super::gpu_label;
use crate::code::Code;
use crate::facts::{ago, same_device, AerEvent, Facts, GpuPci, KernelLog, XidEvent};
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;

/// Xids of one GPU less than this far apart are one burst: the first is the cause, the rest
/// are usually its consequences (NVIDIA's Xid catalogue, "Xid messages" introduction).
const BURST_GAP_S: f64 = 10.0;
/// The most bursts a finding lists one by one.
const SHOWN_BURSTS: usize = 8;
const XID_CATALOGUE: &str = "https://docs.nvidia.com/deploy/xid-errors/index.html";
const FALLEN_OFF: u32 = 79;

fn log(facts: &Facts) -> Option<&KernelLog> {
    facts.host.kernel_log.known()
}

fn when(log: &KernelLog, t: Option<f64>) -> String {
    ago(t, log.now_s, &log.now_is)
}

/// "3 min before this run", or "the first 2 h ..., the last 30 s ..." for several.
fn span(log: &KernelLog, n: usize, first: Option<f64>, last: Option<f64>) -> String {
    if n == 1 || first == last {
        when(log, first)
    } else {
        format!(
            "the first {}, the last {}",
            when(log, first),
            when(log, last)
        )
    }
}

/// The GPU an NVRM bus id names ("0000:0a:00"), if it is on the bus.
fn gpu_of<'a>(facts: &'a Facts, bus_id: &str) -> Option<&'a GpuPci> {
    super::gpus(facts)
        .iter()
        .find(|g| same_device(bus_id, &g.bdf))
}

/// "0000:0a:00.0 (NVIDIA GeForce RTX 3090)", or the bus id as logged for a GPU that is gone.
fn label_of(facts: &Facts, bus_id: &str) -> (String, String) {
    match gpu_of(facts, bus_id) {
        Some(g) => (gpu_label(g), g.bdf.clone()),
        None => {
            let bdf = if bus_id.contains('.') {
                bus_id.to_string()
            } else {
                format!("{bus_id}.0")
            };
            (format!("{bdf} (not on the PCI bus now)"), bdf)
        }
    }
}

/// The Xids of each GPU, in log order, split into bursts.
fn bursts(log: &KernelLog) -> Vec<(String, Vec<Vec<&XidEvent>>)> {
    let mut by_gpu: Vec<(String, Vec<&XidEvent>)> = Vec::new();
    for x in &log.xid {
        match by_gpu.iter_mut().find(|(b, _)| *b == x.bus_id) {
            Some((_, v)) => v.push(x),
            None => by_gpu.push((x.bus_id.clone(), vec![x])),
        }
    }
    by_gpu
        .into_iter()
        .map(|(bus, xs)| {
            let mut out: Vec<Vec<&XidEvent>> = Vec::new();
            for x in xs {
                let joins = out.last().and_then(|b| b.last()).is_some_and(|prev| {
                    match (prev.time_s, x.time_s) {
                        (Some(a), Some(b)) => b - a <= BURST_GAP_S,
                        // Without time stamps only a repeat of the same code is taken as a
                        // consequence.
                        _ => prev.code == x.code,
                    }
                });
                match out.last_mut() {
                    Some(b) if joins => b.push(x),
                    _ => out.push(vec![x]),
                }
            }
            (bus, out)
        })
        .collect()
}

fn describe_xid(x: &XidEvent, kb: &Knowledge) -> String {
    let name = kb
        .xid(x.code)
        .map_or("not in NVIDIA's catalogue", |e| e.name.as_str());
    let who = match (x.pid, &x.process) {
        (Some(p), Some(n)) => format!(", pid {p} ({n})"),
        (Some(p), None) => format!(", pid {p}"),
        (None, Some(n)) => format!(", {n}"),
        (None, None) => String::new(),
    };
    // Xid 79's text is its name: say it once.
    let same = x.text.trim_end_matches('.').eq_ignore_ascii_case(name);
    if same || x.text.is_empty() {
        format!("Xid {} ({name}{who})", x.code)
    } else {
        format!("Xid {} ({name}{who}): {}", x.code, x.text)
    }
}

pub fn xid_errors(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    let Some(log) = log(facts) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (bus, bursts) in bursts(log) {
        // A burst that begins with Xid 79 is gpu-fell-off-bus's.
        let own: Vec<&Vec<&XidEvent>> = bursts.iter().filter(|b| b[0].code != FALLEN_OFF).collect();
        if own.is_empty() {
            continue;
        }
        let firsts: Vec<&XidEvent> = own.iter().map(|b| b[0]).collect();
        let severity = firsts
            .iter()
            .map(|x| kb.xid(x.code).map_or(Severity::Warn, |e| e.severity))
            .max()
            .unwrap_or(Severity::Warn);
        let mut codes: Vec<u32> = firsts.iter().map(|x| x.code).collect();
        codes.dedup();
        let (label, bdf) = label_of(facts, &bus);
        let list = codes
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut f = Finding::new(
            Code::XidErrors,
            severity,
            format!("the NVIDIA driver logged Xid {list} for GPU {bdf} this boot"),
        )
        .gpus([bdf.clone()])
        .evidence(format!("{label}, from {}", log.source));
        for b in own.iter().take(SHOWN_BURSTS) {
            let x = b[0];
            let mut line = format!("{}: {}", when(log, x.time_s), describe_xid(x, kb));
            if b.len() > 1 {
                let mut then: Vec<u32> = b[1..].iter().map(|x| x.code).collect();
                then.dedup();
                line.push_str(&format!(
                    "; then {} more within the burst (Xid {}), usually consequences",
                    b.len() - 1,
                    then.iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            f = f.evidence(line);
        }
        if own.len() > SHOWN_BURSTS {
            f = f.evidence(format!("and {} more bursts", own.len() - SHOWN_BURSTS));
        }
        if bursts.len() > own.len() {
            f = f.evidence("it also fell off the bus (Xid 79): see gpu-fell-off-bus");
        }
        let mut hinted: Vec<u32> = Vec::new();
        for x in &firsts {
            if hinted.contains(&x.code) {
                continue;
            }
            hinted.push(x.code);
            f = match kb.xid(x.code) {
                Some(e) => f
                    .evidence(format!("Xid {}: {}", e.code, e.meaning))
                    .fix(format!("Xid {}: {}", e.code, e.hint))
                    .refs(e.sources.iter().cloned()),
                None => f.fix(format!(
                    "Xid {}: not in the catalogue this rigdoctor knows; look it up in NVIDIA's Xid catalogue for your driver",
                    x.code
                )),
            };
        }
        if let Some(p) = &log.partial {
            f = f.evidence(format!(
                "the log is incomplete ({p}): an earlier Xid may be missing"
            ));
        }
        out.push(
            f.fix(format!(
                "the lines themselves: sudo dmesg -T | grep 'Xid (PCI:{bus})'"
            ))
            .refs([kb.xids_source.clone(), XID_CATALOGUE.to_string()]),
        );
    }
    out
}

/// The AER reports of a device, one line: "12 corrected (Physical Layer: RxErr, BadTLP)
/// reports, the first 2 h before this run, the last 30 s before".
fn aer_summary(log: &KernelLog, device: &str) -> Option<String> {
    let evs: Vec<&AerEvent> = log.aer.iter().filter(|a| a.device == device).collect();
    let (first, last) = (evs.first()?, evs.last()?);
    let mut kinds: Vec<String> = Vec::new();
    for a in &evs {
        let k = format!("{} {}", a.severity, a.error_type);
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    let mut names: Vec<&str> = Vec::new();
    for n in evs.iter().flat_map(|a| a.errors.iter()) {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let names = if names.is_empty() {
        String::new()
    } else {
        format!(": {}", names.join(", "))
    };
    let span = span(log, evs.len(), first.time_s, last.time_s);
    Some(format!(
        "kernel log: {} AER report(s) from {device} ({}{names}), {span}",
        evs.len(),
        kinds.join(", ")
    ))
}

/// The devices whose errors count against a GPU's link: the GPU and the bridges above it.
fn path_devices(g: &GpuPci) -> Vec<String> {
    let mut d = vec![g.bdf.clone()];
    d.extend(
        g.path
            .known()
            .map(|p| p.bridges.clone())
            .unwrap_or_default(),
    );
    d
}

/// Kernel-log AER evidence for a GPU's path (for `pcie-aer-errors` and `gpu-fell-off-bus`).
pub fn aer_evidence(facts: &Facts, g: &GpuPci) -> Vec<String> {
    let Some(log) = log(facts) else {
        return Vec::new();
    };
    path_devices(g)
        .iter()
        .filter_map(|d| aer_summary(log, d))
        .collect()
}

/// The worst AER severity the kernel logged on a GPU's path: None, "corrected", or worse.
pub fn aer_uncorrectable(facts: &Facts, g: &GpuPci) -> Option<bool> {
    let log = log(facts)?;
    let devs = path_devices(g);
    let evs: Vec<&AerEvent> = log
        .aer
        .iter()
        .filter(|a| devs.contains(&a.device))
        .collect();
    (!evs.is_empty()).then(|| evs.iter().any(|a| a.severity != "corrected"))
}

/// The boot-time "limited by" line of a GPU or a device on its path (for `pcie-link-degraded`).
pub fn link_evidence(facts: &Facts, g: &GpuPci) -> Vec<String> {
    let Some(log) = log(facts) else {
        return Vec::new();
    };
    let devs = path_devices(g);
    log.link_limited
        .iter()
        .filter(|l| devs.contains(&l.device))
        .map(|l| {
            format!(
                "kernel log at enumeration: {} has {:.3} Gb/s, limited by a {} link at {} (capable of {:.3} Gb/s with {}); the speed may be an idle power state, the width is not",
                l.device, l.available_gbps, l.limited_by, l.at, l.capable_gbps, l.capable
            )
        })
        .collect()
}

pub fn fell_off_bus(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    let Some(log) = log(facts) else {
        return Vec::new();
    };
    // Each GPU once, with the first line that says it fell off.
    let mut lost: Vec<(String, Option<f64>, String)> = Vec::new();
    let falls = log
        .xid
        .iter()
        .filter(|x| x.code == FALLEN_OFF)
        .map(|x| (x.bus_id.as_str(), x.time_s, describe_xid(x, kb)))
        .chain(
            log.fell_off_bus
                .iter()
                .map(|b| (b.bus_id.as_str(), b.time_s, b.line.clone())),
        );
    for (bus, t, line) in falls {
        // "0000:0a:00.0" and NVRM's "0000:0a:00" are the same GPU.
        let dev = match bus.rsplit_once('.') {
            Some((d, _)) if bus.matches(':').count() == 2 => d,
            _ => bus,
        };
        if !lost.iter().any(|(b, _, _)| b == dev) {
            lost.push((dev.to_string(), t, line));
        }
    }
    lost.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal));
    lost.into_iter()
        .map(|(bus, t, line)| {
            let (label, bdf) = label_of(facts, &bus);
            let mut f = Finding::new(
                Code::GpuFellOffBus,
                Severity::Error,
                format!("GPU {bdf} fell off the bus: it stopped answering on PCIe"),
            )
            .gpus([bdf.clone()])
            .evidence(format!("{label}: {}, {line}", when(log, t)))
            .evidence(format!("from {}", log.source));
            let g = gpu_of(facts, &bus);
            let port = g.and_then(|g| g.path.known()).and_then(|p| p.bridges.last().cloned());
            if let Some(g) = g {
                for e in aer_evidence(facts, g) {
                    f = f.evidence(e);
                }
                if let Some(topo) = facts.pci.known() {
                    for e in super::aer::describe_counted(&super::aer::counted_on_path(topo, g)) {
                        f = f.evidence(e);
                    }
                }
            }
            if let Some(l) = facts.gpu.as_ref().and_then(|r| r.bandwidth.as_ref()).and_then(|b| {
                b.links.iter().find(|l| l.bus_id.as_deref().is_some_and(|id| same_device(&bus, &crate::facts::normalize_bus_id(id))))
            }) {
                if let (Some(a), Some(b)) = (l.replays_before, l.replays_after) {
                    f = f.evidence(format!("PCIe replays of this GPU while copies ran: {a} -> {b}"));
                }
            }
            let slot = port.map_or("its slot".to_string(), |p| format!("the slot behind port {p}"));
            f.fix(format!("reseat the card and the riser at both ends, or run it without the riser in {slot}: a riser or slot that loses contact under load is the usual cause"))
                .fix("if it runs at PCIe Gen4 or Gen5 through a riser, set that slot to Gen3 in the BIOS and see whether it holds")
                .fix("check its power: every PCIe power connector seated, one PSU cable per 8-pin connector (no daisy chain), and the PSU's rating against all GPUs at full load (transient spikes trip PSUs before their rating)")
                .fix("the GPU stays lost until the machine is rebooted; after the reboot, `rigdoctor check` shows whether it falls off again")
                .refs([kb.xids_source.clone(), XID_CATALOGUE.to_string()])
        })
        .collect()
}

pub fn iommu_faults(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let (Some(log), Some(topo)) = (log(facts), facts.pci.known()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for g in &topo.gpus {
        let devs = path_devices(g);
        let faults: Vec<_> = log
            .iommu_faults
            .iter()
            .filter(|f| devs.contains(&f.device))
            .collect();
        let (Some(first), Some(last)) = (faults.first(), faults.last()) else {
            continue;
        };
        let mut kinds: Vec<&str> = Vec::new();
        for x in &faults {
            if !kinds.contains(&x.kind.as_str()) {
                kinds.push(&x.kind);
            }
        }
        let mut f = Finding::new(
            Code::IommuFaults,
            Severity::Error,
            format!(
                "the IOMMU blocked DMA of GPU {}: {} fault(s) in the kernel log",
                g.bdf,
                faults.len()
            ),
        )
        .gpus([g.bdf.clone()])
        .evidence(format!(
            "{}: {} {} fault(s) naming {}, {} (from {})",
            gpu_label(g),
            faults.len(),
            kinds.join("/"),
            {
                let mut named: Vec<&str> = faults.iter().map(|x| x.device.as_str()).collect();
                named.dedup();
                named.join(", ")
            },
            span(log, faults.len(), first.time_s, last.time_s),
            log.source
        ));
        for x in faults.iter().take(3) {
            f = f.evidence(format!("{}: {}", when(log, x.time_s), x.line));
        }
        f = f.evidence("a DMA the IOMMU refused never reached memory: a peer-to-peer copy or an NCCL transfer through it hangs, fails or returns wrong data");
        for fix in super::iommu::fixes(facts) {
            f = f.fix(fix);
        }
        out.push(f.refs([
            "https://docs.kernel.org/arch/x86/iommu.html",
            super::KERNEL_PARAMS,
        ]));
    }
    out
}

/// How many IOMMU faults the kernel logged for this GPU or a bridge above it.
pub fn iommu_fault_count(facts: &Facts, g: &GpuPci) -> usize {
    log(facts).map_or(0, |l| {
        let devs = path_devices(g);
        l.iommu_faults
            .iter()
            .filter(|f| devs.contains(&f.device))
            .count()
    })
}
