//! Findings from `rigdoctor bandwidth`: the links as they ran under load, replay and AER
//! counters that grew during the copies, figures below what the link should carry, P2P slower
//! than the staged control, clock throttling, and copies that did not verify or finish.

use super::p2p::{device_label, explain};
use super::KERNEL_SYSFS_PCI;
use crate::code::Code;
use crate::expect::{capable_link, expectation, low_fraction, slower_than_staged, staged_of};
use crate::facts::{
    normalize_bus_id, BandwidthFacts, BwOutcome, Facts, Kind, LinkUnderLoad, Measurement,
};
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;

const NVML_PCIE: &str = "https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html";
const NVBANDWIDTH: &str = "https://github.com/NVIDIA/nvbandwidth";
const NVML_THROTTLE: &str =
    "https://docs.nvidia.com/deploy/nvml-api/group__nvmlClocksEventReasons.html";

fn bw(facts: &Facts) -> Option<&BandwidthFacts> {
    facts.gpu.as_ref()?.bandwidth.as_ref()
}

fn measured(m: &Measurement) -> Option<f64> {
    match &m.outcome {
        BwOutcome::Measured { stats, .. } => Some(stats.median),
        _ => None,
    }
}

/// The bus id of a measured link, as `pci` names the GPU.
fn bdf(l: &LinkUnderLoad) -> Option<String> {
    l.bus_id.as_deref().map(normalize_bus_id)
}

/// GPUs whose link was read under load: the idle `pcie-link-degraded` guess defers to these.
pub fn measured_links(facts: &Facts) -> Vec<String> {
    bw(facts)
        .map(|b| {
            b.links
                .iter()
                .filter(|l| l.samples > 0)
                .filter_map(bdf)
                .collect()
        })
        .unwrap_or_default()
}

/// A GPU link that, while copies ran, stayed below the width or generation NVML says the card
/// and slot support.
pub fn link_degraded(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(b) = bw(facts) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for l in b.links.iter().filter(|l| l.samples > 0) {
        let (Some(g), Some(w), Some((mg, mw))) = (l.gen, l.width, capable_link(facts, b, l.device))
        else {
            continue;
        };
        if g >= mg && w >= mw {
            continue;
        }
        let (label, id) = device_label(facts, l.device);
        let host: Vec<String> = b
            .measurements
            .iter()
            .filter(|m| !m.latency && !m.bidirectional && matches!(m.kind, Kind::H2d | Kind::D2h))
            .filter(|m| m.to == Some(l.device) || m.from == Some(l.device))
            .filter_map(|m| {
                Some(format!(
                    "{} {:.1} GB/s",
                    m.kind.label().to_uppercase(),
                    measured(m)?
                ))
            })
            .collect();
        let what = match (w < mw, g < mg) {
            (true, true) => format!("x{w} Gen{g} instead of x{mw} Gen{mg}"),
            (true, false) => format!("x{w} instead of x{mw}"),
            _ => format!("Gen{g} instead of Gen{mg}"),
        };
        let full = crate::facts::pcie_gbps(mg, mw).unwrap_or(0.0);
        let now = crate::facts::pcie_gbps(g, w).unwrap_or(0.0);
        let mut f = Finding::new(
            Code::PcieLinkDegraded,
            Severity::Warn,
            format!("{label} ran its PCIe link at {what} while copies ran"),
        )
        .gpus([id])
        .evidence(format!(
            "NVML under load: best of {} reading(s) Gen{g} x{w} ({now:.1} GB/s per direction); card and slot support Gen{mg} x{mw} ({full:.1} GB/s: NVML maximum, capped by the port's sysfs maximum)",
            l.samples
        ));
        if !host.is_empty() {
            f = f.evidence(format!("measured: {}", host.join(", ")));
        }
        if let Some(gpu) = l
            .bus_id
            .as_deref()
            .and_then(|b| super::gpu_by_bdf(facts, b))
        {
            for e in super::kernel_log::link_evidence(facts, gpu) {
                f = f.evidence(e);
            }
        }
        if w < mw {
            f = f
                .fix("reseat the card and the riser at both ends; a riser or cable rated for a lower generation, or too long, trains fewer lanes")
                .fix("check the slot's wiring in the board manual (x16 slots wired x8/x4, lanes shared with M.2/U.2) and the BIOS bifurcation setting");
        }
        if g < mg {
            f = f
                .fix("a link that stays below its generation under load usually has signal-integrity trouble (riser, extension, dirty contacts): try without the riser, or force the slot's generation in the BIOS (Gen3 is often stable where Gen4 is not)");
        }
        out.push(
            f.fix("compare with: nvidia-smi -q -d PCIE (while a job runs)")
                .refs([NVML_PCIE, KERNEL_SYSFS_PCI]),
        );
    }
    out
}

/// PCIe replays counted by the GPU, or AER correctable errors on its path, that grew while
/// copies ran: a link retransmitting packets, typically a riser.
pub fn replay_errors(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(b) = bw(facts) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for l in &b.links {
        let (label, id) = device_label(facts, l.device);
        let mut evidence = Vec::new();
        if let (Some(x), Some(y)) = (l.replays_before, l.replays_after) {
            if y > x {
                evidence.push(format!(
                    "NVML PCIe replay counter {x} -> {y} (+{}) during the run",
                    y - x
                ));
            }
        }
        let gpu_pci =
            bdf(l).and_then(|b| facts.pci.known()?.gpus.iter().find(|g| g.bdf == b).cloned());
        if let (Some(g), Some(topo)) = (&gpu_pci, facts.pci.known()) {
            let mut devices: Vec<(String, Option<u64>)> =
                vec![(g.bdf.clone(), g.aer.known().map(|a| a.correctable_total()))];
            for br in g
                .path
                .known()
                .map(|p| p.bridges.clone())
                .unwrap_or_default()
            {
                let before = topo
                    .bridge(&br)
                    .and_then(|x| x.aer.known())
                    .map(|a| a.correctable_total());
                devices.push((br, before));
            }
            for (dev, before) in devices {
                let after = b
                    .aer_after
                    .get(&dev)
                    .and_then(|a| a.known())
                    .map(|a| a.correctable_total());
                if let (Some(x), Some(y)) = (before, after) {
                    if y > x {
                        evidence.push(format!(
                            "AER correctable errors of {dev}: {x} -> {y} (+{}) during the run",
                            y - x
                        ));
                    }
                }
            }
        }
        if evidence.is_empty() {
            continue;
        }
        let mut f = Finding::new(
            Code::PcieReplayErrors,
            Severity::Warn,
            format!("{label}'s PCIe link retransmitted packets while copies ran"),
        )
        .gpus([id]);
        for e in evidence {
            f = f.evidence(e);
        }
        out.push(
            f.evidence("each replay resends a packet the other end received damaged: the link works but loses bandwidth, and a worse one drops off the bus (Xid 79)")
                .fix("reseat or replace the riser/extension (shorter, rated for the slot's PCIe generation), and the card")
                .fix("if it persists, force the slot one generation lower in the BIOS (e.g. Gen3): fewer errors at a known bandwidth")
                .fix("watch it: nvidia-smi -q -d PCIE | grep -i replay; sudo dmesg | grep -i -e aer -e 'Xid'")
                .refs([NVML_PCIE, KERNEL_SYSFS_PCI]),
        );
    }
    out
}

/// What likely limits a low figure, from the facts read.
fn limiter(
    facts: &Facts,
    b: &BandwidthFacts,
    m: &Measurement,
    link: &str,
    capable: &str,
) -> String {
    if link.starts_with("NV") {
        return format!("the NVLink bridge ({link} active) carries less than its links should: a bridge not fully seated, or links running degraded (see nvidia-smi nvlink -s)");
    }
    if link != capable {
        return format!("the link ran {link} under load though card and slot support {capable}: riser, slot wiring, x8/x8 split or a link that trained down (see pcie-link-degraded)");
    }
    let devices: Vec<i32> = [m.from, m.to].into_iter().flatten().collect();
    let braked = |pick: fn(u64) -> u64| {
        devices
            .iter()
            .any(|&d| b.link(d).is_some_and(|l| pick(l.throttle_reasons) != 0))
    };
    if braked(power_bits) {
        return "the GPU's clocks were braked by its power supply while copies ran (see power-brake)".into();
    }
    if braked(|r| r & BRAKES) {
        return "the GPU's clocks were braked while copies ran (see throttling)".into();
    }
    if let Some(topo) = facts.pci.known() {
        for &d in &devices {
            let Some(bdf) = b.link(d).and_then(bdf) else {
                continue;
            };
            let Some(g) = topo.gpus.iter().find(|g| g.bdf == bdf) else {
                continue;
            };
            let gpu_w = g.link.max_width.known().copied().unwrap_or(0);
            for br in g
                .path
                .known()
                .map(|p| p.bridges.clone())
                .unwrap_or_default()
            {
                let Some(bridge) = topo.bridge(&br) else {
                    continue;
                };
                if let Some(&w) = bridge.link.current_width.known() {
                    if w < gpu_w {
                        return format!("the upstream link of {br} (a PCIe switch or chipset uplink above this GPU) is x{w}, narrower than the GPU's x{gpu_w}: every GPU behind it shares it");
                    }
                }
            }
        }
    }
    "not visible in the facts read: the link ran at full width and speed; look at the CPU/chipset the slot hangs off, IOMMU translation, the NUMA node of the host buffers, and other PCIe traffic".into()
}

/// Findings gathered per GPU (host copies) or per unordered pair (P2P), in first-seen order.
struct Groups<K: PartialEq> {
    items: Vec<Group<K>>,
}

/// Key, evidence lines, and the GPUs (or GPU and host) of the first measurement.
type Group<K> = (K, Vec<String>, Option<i32>, Option<i32>);

impl<K: PartialEq> Groups<K> {
    fn new() -> Self {
        Groups { items: Vec::new() }
    }

    /// Add `line` under `key`; true when the key is new.
    fn add(&mut self, key: K, line: String, x: Option<i32>, y: Option<i32>) -> bool {
        match self.items.iter_mut().find(|g| g.0 == key) {
            Some(g) => {
                g.1.push(line);
                false
            }
            None => {
                self.items.push((key, vec![line], x, y));
                true
            }
        }
    }
}

/// Figures below what the card and slot (or NVLinks) should carry, one finding per GPU for
/// host copies and per pair for P2P.
/// `bandwidth-impossible`: figures above what the link they crossed can carry. Such a copy did
/// not go where it was meant to (a mirrored aperture, misrouted writes), or the link facts are
/// wrong; either way the figure is not a result.
pub fn impossible(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(b) = bw(facts) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    let mut devices: Vec<i32> = Vec::new();
    let mut p2p_pairs: Vec<(i32, i32)> = Vec::new();
    for m in b.measurements.iter().filter(|m| !m.latency) {
        let (Some(v), Some(e)) = (measured(m), expectation(facts, m)) else {
            continue;
        };
        if !e.is_impossible(v) {
            continue;
        }
        lines.push(format!(
            "{}: {v:.1} GB/s measured, but {} carries {:.1} GB/s per direction (card and slot: {}, {:.1} GB/s)",
            m.describe(),
            e.link,
            e.theoretical,
            e.capable,
            e.capable_gbps
        ));
        for d in [m.from, m.to].into_iter().flatten() {
            if !devices.contains(&d) {
                devices.push(d);
            }
        }
        if let (Kind::P2p, Some(a), Some(c)) = (m.kind, m.from, m.to) {
            p2p_pairs.push((a.min(c), a.max(c)));
        }
    }
    if lines.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        Code::BandwidthImpossible,
        Severity::Error,
        format!(
            "{} bandwidth figure(s) exceed what their link can carry: the copies did not cross it",
            lines.len()
        ),
    )
    .gpus(devices.iter().map(|&d| device_label(facts, d).1));
    for l in lines {
        f = f.evidence(l);
    }
    f = f.evidence(format!(
        "a copy faster than {:.0}% of its link's rate went somewhere else: writes landing in a mirrored aperture (reported in VMs) or misrouted by a patched P2P driver; the tables mark these figures ??",
        crate::expect::IMPOSSIBLE_OVER * 100.0
    ));
    p2p_pairs.sort_unstable();
    p2p_pairs.dedup();
    for (a, c) in &p2p_pairs {
        f = f.fix(format!(
            "do not trust P2P between GPU {a} and GPU {c}: verify where the bytes go with rigdoctor p2p --devices {a},{c} (every byte compared), and check for a patched or community P2P driver"
        ));
    }
    vec![f
        .fix("in a VM, test on the host (or with the GPUs passed through whole): emulated or mirrored BARs give figures no PCIe link can carry")
        .refs([
            "https://github.com/NVIDIA/nccl/issues/2335",
            "https://github.com/aikitoria/open-gpu-kernel-modules/pull/36",
            KERNEL_SYSFS_PCI,
        ])]
}

pub fn low(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(b) = bw(facts) else {
        return Vec::new();
    };
    let mut groups = Groups::new();
    let mut why: Vec<String> = Vec::new();
    let considered = b
        .measurements
        .iter()
        .filter(|m| !m.latency && matches!(m.kind, Kind::H2d | Kind::D2h | Kind::P2p));
    for m in considered {
        let (Some(v), Some(e)) = (measured(m), expectation(facts, m)) else {
            continue;
        };
        if !e.is_low(v, m.method) {
            continue;
        }
        let (key, x, y) = match m.kind {
            Kind::P2p => {
                let (x, y) = (m.from.min(m.to), m.from.max(m.to));
                ((true, x, y), x, y)
            }
            _ => ((false, m.from.or(m.to), None), m.from.or(m.to), None),
        };
        let line = format!(
            "{}: {v:.1} GB/s = {:.0}% of {} ({:.1} GB/s per direction); {} supports {:.1}, a healthy link gives over {:.1} ({:.0}%)",
            m.describe(),
            e.percent(v),
            e.link,
            e.theoretical,
            e.capable,
            e.capable_gbps,
            low_fraction(m.method) * e.capable_gbps,
            low_fraction(m.method) * 100.0
        );
        if groups.add(key, line, x, y) {
            why.push(limiter(facts, b, m, &e.link, &e.capable));
        }
    }
    groups
        .items
        .into_iter()
        .zip(why)
        .map(|((_, lines, x, y), why)| {
            let (lx, ix) = device_label(facts, x.unwrap_or(-1));
            let (title, gpus) = match y {
                Some(y) => {
                    let (ly, iy) = device_label(facts, y);
                    (
                        format!("P2P between {lx} and {ly} is slower than the link should carry"),
                        vec![ix, iy],
                    )
                }
                None => (
                    format!("host <-> {lx} copies are slower than the link should carry"),
                    vec![ix],
                ),
            };
            let mut f = Finding::new(Code::BandwidthLow, Severity::Warn, title).gpus(gpus);
            for l in lines {
                f = f.evidence(l);
            }
            f.evidence(format!("likely limiter: {why}"))
                .fix("see the limiter above; re-measure after a change: rigdoctor bandwidth --devices <these GPUs>")
                .fix("compare with NVIDIA's tool: nvbandwidth -t host_to_device_memcpy_ce device_to_host_memcpy_ce")
                .refs([NVBANDWIDTH, KERNEL_SYSFS_PCI])
        })
        .collect()
}

/// P2P (peer access on) slower than the same copy staged through host memory: peer traffic
/// is being detoured, the classic ACS-redirect / IOMMU symptom.
pub fn slower_than_host(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    let Some(b) = bw(facts) else {
        return Vec::new();
    };
    let mut groups = Groups::new();
    let mut staged_ok = true;
    for m in b
        .measurements
        .iter()
        .filter(|m| m.kind == Kind::P2p && !m.bidirectional)
    {
        let (Some(from), Some(to)) = (m.from, m.to) else {
            continue;
        };
        let Some(staged) = slower_than_staged(b, m) else {
            continue;
        };
        staged_ok &= staged_of(b, m).is_some_and(|s| measured(s).is_some());
        let p2p = measured(m).unwrap_or(0.0);
        let line = format!(
            "{}: {p2p:.1} GB/s with peer access, {staged:.1} GB/s staged through host memory",
            m.describe()
        );
        groups.add((from.min(to), from.max(to)), line, Some(from), Some(to));
    }
    groups
        .items
        .into_iter()
        .map(|(_, lines, from, to)| {
            let (from, to) = (from.unwrap_or(-1), to.unwrap_or(-1));
            let (la, ia) = device_label(facts, from);
            let (lb, ib) = device_label(facts, to);
            let mut f = Finding::new(
                Code::P2pSlowerThanHost,
                Severity::Warn,
                format!("P2P between {la} and {lb} is slower than copying through host memory"),
            )
            .gpus([ia, ib]);
            for l in lines {
                f = f.evidence(l);
            }
            let f = f.evidence("direct P2P should beat a copy through host memory: traffic is being detoured (ACS redirect to the root complex, IOMMU translation) or P2P is emulated");
            explain(facts, kb, f, from, to, staged_ok).refs([NVBANDWIDTH])
        })
        .collect()
}

/// Clock-event reasons (nvmlClocksEventReasons, nvml.h): SW power cap 0x4, HW slowdown 0x8,
/// SW thermal 0x20, HW thermal 0x40, HW power brake 0x80.
const SW_POWER_CAP: u64 = 0x4;
const HW_SLOWDOWN: u64 = 0x8;
const SW_THERMAL: u64 = 0x20;
const HW_THERMAL: u64 = 0x40;
const HW_POWER_BRAKE: u64 = 0x80;
const BRAKES: u64 = SW_POWER_CAP | HW_SLOWDOWN | SW_THERMAL | HW_THERMAL | HW_POWER_BRAKE;

fn brake_names(bits: u64) -> Vec<&'static str> {
    [
        (SW_POWER_CAP, "SW power cap"),
        (HW_SLOWDOWN, "HW slowdown"),
        (SW_THERMAL, "SW thermal slowdown"),
        (HW_THERMAL, "HW thermal slowdown"),
        (HW_POWER_BRAKE, "HW power brake"),
    ]
    .into_iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| n)
    .collect()
}

/// The bits that point at the power supply: the external power brake (0x80), or HW slowdown
/// (0x8) without HW thermal slowdown (0x40). NVML: HW slowdown is engaged by high temperature,
/// an External Power Brake Assertion (e.g. by the system power supply) or power draw too high
/// for Fast Trigger protection; 0x40 and 0x80 say which of the first two it is.
fn power_bits(bits: u64) -> u64 {
    let slowdown = if bits & HW_SLOWDOWN != 0 && bits & HW_THERMAL == 0 {
        HW_SLOWDOWN
    } else {
        0
    };
    (bits & HW_POWER_BRAKE) | slowdown
}

/// Thermal and software caps: `throttling`. The power-supply brakes are `power-brake`'s.
pub fn throttling(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(b) = bw(facts) else {
        return Vec::new();
    };
    b.links
        .iter()
        .filter_map(|l| {
            let bits = l.throttle_reasons & BRAKES & !power_bits(l.throttle_reasons);
            (bits != 0).then_some((l, bits))
        })
        .map(|(l, bits)| {
            let (label, id) = device_label(facts, l.device);
            let names = brake_names(bits);
            let mut f = Finding::new(
                Code::Throttling,
                Severity::Warn,
                format!("{label} was braked while copies ran: {}", names.join(", ")),
            )
            .gpus([id])
            .evidence(format!(
                "NVML clock throttle reasons under load: 0x{:x} ({})",
                l.throttle_reasons,
                brake_names(l.throttle_reasons).join(", ")
            ))
            .evidence("a braked GPU gives lower and noisier figures, and slows training the same way");
            if bits & (SW_THERMAL | HW_THERMAL) != 0 {
                f = f.fix("check cooling: airflow between stacked cards, fan curves, a blocked intake (nvidia-smi -q -d TEMPERATURE)");
            }
            if bits & SW_POWER_CAP != 0 {
                f = f.fix("the GPU reached its power limit (a software cap, not a fault): see it with nvidia-smi -q -d POWER; a lower limit set on purpose costs this speed");
            }
            f.fix("watch it live: nvidia-smi -q -d PERFORMANCE").refs([NVML_THROTTLE])
        })
        .collect()
}

fn watts(mw: u32) -> String {
    format!("{:.0} W", f64::from(mw) / 1000.0)
}

/// `power-brake`: the clocks were braked by the power side (PSU, cables, slot power).
pub fn power_brake(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(b) = bw(facts) else {
        return Vec::new();
    };
    // Every GPU's peak, for the rig's total: they share one power supply on a home rig.
    let peaks: Vec<u32> = b.links.iter().filter_map(|l| l.power_peak_mw).collect();
    let total: u32 = peaks.iter().sum();
    let limits: u32 = b.links.iter().filter_map(|l| l.power_limit_mw).sum();
    b.links
        .iter()
        .filter(|l| power_bits(l.throttle_reasons) != 0)
        .map(|l| {
            let (label, id) = device_label(facts, l.device);
            let bits = power_bits(l.throttle_reasons);
            let mut f = Finding::new(
                Code::PowerBrake,
                Severity::Warn,
                format!("{label} was braked by its power supply while copies ran: {}", brake_names(bits).join(", ")),
            )
            .gpus([id.clone()])
            .evidence(format!(
                "NVML clock throttle reasons under load: 0x{:x} ({})",
                l.throttle_reasons,
                brake_names(l.throttle_reasons).join(", ")
            ));
            f = f.evidence(if bits & HW_POWER_BRAKE != 0 {
                "HW power brake: the board's external power-brake signal was asserted, which the power supply side raises (NVML clock event reasons), not heat and not a software limit"
            } else {
                "HW slowdown without HW thermal slowdown: the hardware halved the clocks for power (an external power brake, or draw too high for its fast-trigger protection), not for heat; NVML also shows it for a moment at a P-state change, so one run is a hint and a repeat is the evidence"
            });
            let draw = match (l.power_peak_mw, l.power_limit_mw) {
                (Some(p), Some(lim)) => Some(format!("power draw under load up to {} of its {} limit", watts(p), watts(lim))),
                (Some(p), None) => Some(format!("power draw under load up to {} (limit not read)", watts(p))),
                (None, Some(lim)) => Some(format!("power limit {} (draw not read)", watts(lim))),
                (None, None) => None,
            };
            if let Some(mut d) = draw {
                if let (Some(def), Some([lo, hi])) = (l.power_default_mw, l.power_range_mw) {
                    d.push_str(&format!(
                        " (default {}, settable {:.0}-{})",
                        watts(def),
                        f64::from(lo) / 1000.0,
                        watts(hi)
                    ));
                }
                f = f.evidence(d);
            }
            if peaks.len() > 1 {
                f = f.evidence(format!(
                    "all {} GPUs together drew up to {} while copies ran (their limits add up to {}); copies load a GPU far less than training, which draws near the limits",
                    peaks.len(),
                    watts(total),
                    watts(limits)
                ));
            }
            f = f
                .fix(format!("check the power supply: its rating against the GPUs' limits together ({} here) plus about 250 W for CPU and board; GPUs draw short spikes well above their limit, which trip a PSU sized to the average", watts(limits.max(l.power_limit_mw.unwrap_or(0)))))
                .fix("check the cables: each PCIe power connector on its own PSU cable (no daisy-chained pigtails), fully seated; on 12VHPWR/12V-2x6, the plug pushed in to the latch");
            if let Some(lim) = l.power_limit_mw {
                let lo = l.power_range_mw.map_or(0, |r| r[0]);
                let test = (lim / 1000 * 4 / 5).max(lo.div_ceil(1000));
                f = f.fix(format!(
                    "to see whether power is the cause, lower this GPU's limit for a run: sudo nvidia-smi -i {id} -pl {test} (about 80% of {}; lost at reboot); if the brake goes away, the supply or its cabling cannot hold the load. rigdoctor did not measure what the lower limit costs: compare your job's speed with it",
                    watts(lim)
                ));
            }
            f.refs([NVML_THROTTLE])
        })
        .collect()
}

/// Whether the P2P battery of this report found `from -> to` broken (hung, failed, or a path
/// with wrong data or an error).
fn p2p_battery_failed(facts: &Facts, from: Option<i32>, to: Option<i32>) -> bool {
    let Some(p2p) = facts.gpu.as_ref().and_then(|g| g.p2p.as_ref()) else {
        return false;
    };
    p2p.tests
        .iter()
        .any(|t| Some(t.from) == from && Some(t.to) == to && t.outcome.broken())
}

/// Measured copies that did not verify, hung or failed: the same ids as the P2P battery.
pub fn failures(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    let Some(b) = bw(facts) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in &b.measurements {
        let p2p = m.kind == Kind::P2p;
        if p2p && p2p_battery_failed(facts, m.from, m.to) {
            // The P2P battery's own finding already names this pair (same run, `check`).
            continue;
        }
        let (id, sev, what, detail) = match &m.outcome {
            BwOutcome::Corrupt { mismatch } => (
                if p2p {
                    Code::P2pCorrupt
                } else {
                    Code::CopyCorrupt
                },
                Severity::Error,
                "delivered wrong data",
                format!(
                    "first bad byte at offset {} ({} bytes wrong): expected {}, got {}",
                    mismatch.first_bad_offset, mismatch.bad_bytes, mismatch.expected, mismatch.got
                ),
            ),
            BwOutcome::Hang { stage } => (
                if p2p {
                    Code::P2pHang
                } else {
                    Code::GpuCopyFailed
                },
                Severity::Error,
                "never finished",
                format!(
                    "killed after the step deadline{}",
                    stage
                        .as_ref()
                        .map(|s| format!(", in: {s}"))
                        .unwrap_or_default()
                ),
            ),
            BwOutcome::Failed { error } => (
                if p2p {
                    Code::P2pError
                } else {
                    Code::GpuCopyFailed
                },
                Severity::Error,
                "failed",
                error.clone(),
            ),
            BwOutcome::Measured { .. } | BwOutcome::Skipped { .. } => continue,
        };
        let devices: Vec<i32> = [m.from, m.to].into_iter().flatten().collect();
        let mut f = Finding::new(id, sev, format!("{} {what}", m.describe()))
            .gpus(devices.iter().map(|&d| device_label(facts, d).1))
            .evidence(detail)
            .evidence(format!(
                "{} copies of {} bytes (rigdoctor bandwidth)",
                m.copies, m.bytes
            ));
        if let (true, Some(from), Some(to)) = (p2p, m.from, m.to) {
            let staged_ok = staged_of(b, m).is_some_and(|s| measured(s).is_some());
            f = explain(facts, kb, f, from, to, staged_ok);
        } else {
            f = f
                .fix("check the GPU alone: rigdoctor p2p --devices <it> (self-test), nvidia-smi -q -d ECC,PCIE, and the kernel log: sudo dmesg | grep -i -e Xid -e AER")
                .fix("reseat the card and its riser; a copy that corrupts or stalls without P2P points at the link, the GPU or host memory");
        }
        out.push(f);
    }
    out
}
