//! `check --baseline OLD.json`: this run against a saved report of the same machine ("the day
//! it worked"): figures that fell beyond the threshold and facts that changed.

use super::compare::cuda_version;
use super::node::{Figure, Node};
use super::{fell, FELL_BY};
use crate::code::Code;
use crate::finding::{Finding, Severity};

/// baseline-regression when something fell or changed; None when nothing did. What could not
/// be compared (a figure one of the runs did not measure) is said in the finding's evidence.
pub fn findings(old: &Node, new: &Node) -> Vec<Finding> {
    let mut changed = Vec::new();
    let mut fallen = Vec::new();
    let mut unread = Vec::new();
    let mut gpus = Vec::new();
    let mut version = |what: &str, a: Option<String>, b: Option<String>| match (a, b) {
        (Some(a), Some(b)) if a != b => changed.push(format!("{what}: {a} then, {b} now")),
        (Some(a), None) => unread.push(format!("{what} ({a} then) not read now")),
        _ => {}
    };
    version("hostname", old.hostname.clone(), new.hostname.clone());
    version("NVIDIA driver", old.driver.clone(), new.driver.clone());
    version(
        "CUDA driver API",
        old.cuda.map(cuda_version),
        new.cuda.map(cuda_version),
    );
    version("NCCL", old.nccl.clone(), new.nccl.clone());
    version("kernel", old.kernel.clone(), new.kernel.clone());
    version("IOMMU", old.iommu.clone(), new.iommu.clone());
    version(
        "IOMMU/ACS kernel parameters",
        old.iommu_params.as_ref().map(|p| params(p)),
        new.iommu_params.as_ref().map(|p| params(p)),
    );
    // GPUs gone or new only when both reports hold an inventory (a host-only report, or a run
    // where NVML and CUDA failed, says nothing of the GPUs).
    let inventories = old.inventory_read && new.inventory_read;
    if old.inventory_read && !new.inventory_read {
        unread.push(format!(
            "the {} GPU(s) of the baseline: this run read no GPU inventory",
            old.gpus.len()
        ));
    }
    for g in &old.gpus {
        let Some(n) = new.gpu(&g.bus_id) else {
            if inventories {
                changed.push(format!("GPU {} ({}) is gone", g.bus_id, g.name));
                gpus.push(g.bus_id.clone());
            }
            continue;
        };
        let mut fact = |what: &str, worse: bool, then: String, now: String| {
            if worse {
                changed.push(format!("{what} of {}: {then} then, {now} now", g.bus_id));
                gpus.push(g.bus_id.clone());
            }
        };
        if let (Some(a), Some(b)) = (g.link_width, n.link_width) {
            fact("link width", b < a, format!("x{a}"), format!("x{b}"));
        }
        if let (Some(a), Some(b)) = (g.link_gen, n.link_gen) {
            fact(
                "link generation under load",
                b < a,
                format!("Gen{a}"),
                format!("Gen{b}"),
            );
        }
        if let (Some(a), Some(b)) = (g.bar1_bytes, n.bar1_bytes) {
            fact("BAR1", b < a, mib(a), mib(b));
        }
        if let (Some(a), Some(b)) = (g.persistence, n.persistence) {
            fact("persistence mode", a && !b, "on".into(), "off".into());
        }
        for (dir, a, b) in [("H2D", g.h2d, n.h2d), ("D2H", g.d2h, n.d2h)] {
            figure(
                &format!("{dir} of {}", g.bus_id),
                a,
                b,
                &mut fallen,
                &mut unread,
            )
            .then(|| gpus.push(g.bus_id.clone()));
        }
    }
    for g in new
        .gpus
        .iter()
        .filter(|g| inventories && old.gpu(&g.bus_id).is_none())
    {
        changed.push(format!("GPU {} ({}) is new", g.bus_id, g.name));
    }
    for p in &old.p2p {
        let now = new
            .p2p
            .iter()
            .find(|q| q.from == p.from && q.to == p.to)
            .map(|q| q.gbps);
        if figure(
            &format!("P2P {} -> {}", p.from, p.to),
            Some(p.gbps),
            now,
            &mut fallen,
            &mut unread,
        ) {
            gpus.extend([p.from.clone(), p.to.clone()]);
        }
    }
    match (
        old.busbw.map(|b| (b.bytes, b.gbps)),
        new.busbw.map(|b| (b.bytes, b.gbps)),
    ) {
        (Some((bytes, a)), Some((now_bytes, _))) if now_bytes != bytes => unread.push(format!(
            "NCCL busbw ({a:.1} GB/s then at {} MiB): this run's largest correct size is {} MiB",
            bytes >> 20,
            now_bytes >> 20
        )),
        (Some((bytes, a)), Some((_, b))) => {
            let one = |v| Figure {
                median: v,
                min: v,
                max: v,
                bytes,
            };
            if fell(&[one(a)], &one(b)).is_some() {
                fallen.push(format!(
                    "NCCL all-reduce busbw: {a:.1} GB/s then (at {} MiB), {b:.1} GB/s now",
                    bytes >> 20
                ));
            }
        }
        (Some((_, a)), None) => {
            unread.push(format!("NCCL busbw ({a:.1} GB/s then) not measured now"))
        }
        _ => {}
    }
    if changed.is_empty() && fallen.is_empty() {
        // Unknown is not unchanged: say what this run did not measure or read.
        if unread.is_empty() {
            return Vec::new();
        }
        return vec![Finding::new(
            Code::BaselineRegression,
            Severity::Info,
            format!(
                "nothing fell or changed since the baseline ({}) in what both runs hold; {} not compared",
                old.source,
                unread.len()
            ),
        )
        .evidence_all(unread.into_iter().map(|u| format!("not compared: {u}")))
        .fix("run the same command as the baseline (e.g. `rigdoctor check` without --quick) to compare every figure")];
    }
    gpus.sort();
    gpus.dedup();
    let mut title = Vec::new();
    if !fallen.is_empty() {
        title.push(format!("{} figure(s) fell", fallen.len()));
    }
    if !changed.is_empty() {
        title.push(format!("{} fact(s) changed", changed.len()));
    }
    // A hint per kind of change seen, what changed being the first suspect.
    let said = |k: &str| changed.iter().any(|c| c.starts_with(k) || c.contains(k));
    let mut hints = Vec::new();
    if said("NVIDIA driver") || said("NCCL") || said("CUDA driver API") {
        hints.push("a driver or NCCL upgrade is the first suspect: roll it back and run again (the driver-known-bad and nccl-known-bad findings list releases reported broken)".to_string());
    }
    if said("link width") || said("link generation") || said("is gone") {
        hints.push("reseat the GPU named and its riser or cable, and check its power connectors; then `rigdoctor check` again".to_string());
    }
    if said("BAR1") {
        hints.push("restore Above 4G decoding and Resizable BAR in the BIOS (a BIOS update or CMOS reset turns them off)".to_string());
    }
    if said("IOMMU") || said("kernel") {
        hints.push("the kernel or its parameters changed: compare /proc/cmdline with the baseline's (`rigdoctor diagnose BASELINE -v`)".to_string());
    }
    if said("persistence mode") {
        hints.push(
            "persistence mode is off: `sudo nvidia-smi -pm 1` or enable nvidia-persistenced"
                .to_string(),
        );
    }
    if hints.is_empty() {
        hints.push("nothing in the facts changed: the figures fell on the same setup; run `rigdoctor check -v` for the bandwidth findings (throttling, power-brake, replays) that say why".to_string());
    }
    let mut f = Finding::new(
        Code::BaselineRegression,
        Severity::Warn,
        format!("since the baseline ({}): {}", old.source, title.join(", ")),
    )
    .evidence_all(fallen)
    .evidence_all(changed)
    .evidence_all(unread.into_iter().map(|u| format!("not compared: {u}")))
    .evidence(format!(
        "a figure fell when it is more than {:.0}% below the baseline's and even its best sample is below the baseline's median less the baseline's spread",
        FELL_BY * 100.0
    ))
    .fix_all(hints)
    .fix(format!(
        "`rigdoctor diagnose {} -v` shows the baseline's own findings and figures",
        old.source
    ))
    .refs(["https://github.com/NVIDIA/nvbandwidth"]);
    f = f.gpus(gpus);
    vec![f]
}

/// Compare one figure: true when it fell (pushed to `fallen`); a figure measured then and not
/// now goes to `unread`.
fn figure(
    what: &str,
    then: Option<Figure>,
    now: Option<Figure>,
    fallen: &mut Vec<String>,
    unread: &mut Vec<String>,
) -> bool {
    match (then, now) {
        (Some(a), Some(b)) if a.bytes != b.bytes => {
            unread.push(format!(
                "{what}: {} MiB copies then, {} MiB now",
                a.bytes >> 20,
                b.bytes >> 20
            ));
            false
        }
        (Some(a), Some(b)) if fell(&[a], &b).is_some() => {
            fallen.push(format!(
                "{what}: {:.1} GB/s then, {:.1} GB/s now ({:.0}% less)",
                a.median,
                b.median,
                100.0 * (1.0 - b.median / a.median)
            ));
            true
        }
        (Some(a), None) => {
            unread.push(format!(
                "{what} ({:.1} GB/s then) not measured now",
                a.median
            ));
            false
        }
        _ => false,
    }
}

fn params(p: &[String]) -> String {
    if p.is_empty() {
        "none".into()
    } else {
        p.join(" ")
    }
}

fn mib(b: u64) -> String {
    format!("{} MiB", b >> 20)
}
