//! `rigdoctor compare`: which node of a fleet is the odd one out. Versions that differ
//! (fleet-version-drift), configuration that differs between nodes with the same GPUs
//! (fleet-config-drift), and figures well below their peers' (fleet-outlier).

use super::node::{Figure, Node};
use super::{fell, FELL_BY};
use crate::code::Code;
use crate::finding::{Finding, Severity};
use std::collections::BTreeMap;

/// Finding the odd node out is what cluster health checkers do.
const FLEET_DOC: &str = "https://github.com/imbue-ai/cluster-health";

/// Every finding of the fleet, in the order version, configuration, figures.
pub fn findings(nodes: &[Node]) -> Vec<Finding> {
    let mut out = Vec::new();
    out.extend(version_drift(nodes));
    out.extend(config_drift(nodes));
    out.extend(outliers(nodes));
    out
}

/// The nodes of each value, most common value first; unread values apart.
/// A value read from each node, with its name.
type Read = (&'static str, Box<dyn Fn(&Node) -> Option<String>>);
/// Nodes grouped by value.
type Groups<'a> = Vec<(String, Vec<&'a Node>)>;

fn groups<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    value: impl Fn(&Node) -> Option<String>,
) -> (Groups<'a>, Vec<&'a Node>) {
    let mut by: BTreeMap<String, Vec<&Node>> = BTreeMap::new();
    let mut unread = Vec::new();
    for n in nodes {
        match value(n) {
            Some(v) => by.entry(v).or_default().push(n),
            None => unread.push(n),
        }
    }
    let mut g: Groups = by.into_iter().collect();
    // Most nodes first; a tie keeps the value order (stable sort).
    g.sort_by_key(|x| std::cmp::Reverse(x.1.len()));
    (g, unread)
}

fn labels(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| n.label.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// "driver 550.54.14 on node-a, node-b, node-c; 555.42.02 on node-d": every group, and the
/// nodes outside the largest group (all of them when no group is the largest alone).
fn drift_lines(what: &str, groups: &Groups) -> (String, Vec<String>) {
    let line = groups
        .iter()
        .map(|(v, ns)| format!("{v} on {}", labels(ns)))
        .collect::<Vec<_>>()
        .join("; ");
    let odd: Vec<String> = if groups.len() > 1 && groups[0].1.len() > groups[1].1.len() {
        groups[1..]
            .iter()
            .flat_map(|(_, ns)| ns.iter().map(|n| n.label.clone()))
            .collect()
    } else {
        groups
            .iter()
            .flat_map(|(_, ns)| ns.iter().map(|n| n.label.clone()))
            .collect()
    };
    (format!("{what}: {line}"), odd)
}

fn version_drift(nodes: &[Node]) -> Option<Finding> {
    let checks: [Read; 4] = [
        ("NVIDIA driver", Box::new(|n: &Node| n.driver.clone())),
        (
            "CUDA driver API",
            Box::new(|n: &Node| n.cuda.map(cuda_version)),
        ),
        ("NCCL", Box::new(|n: &Node| n.nccl.clone())),
        ("kernel", Box::new(|n: &Node| n.kernel.clone())),
    ];
    let mut evidence = Vec::new();
    let mut odd: Vec<String> = Vec::new();
    let mut what = Vec::new();
    for (name, value) in &checks {
        let (g, unread) = groups(nodes, value);
        if g.len() > 1 {
            let (line, o) = drift_lines(name, &g);
            evidence.push(line);
            what.push(*name);
            for l in o {
                push_new(&mut odd, &l);
            }
        }
        if !unread.is_empty() && !g.is_empty() {
            evidence.push(format!("{name}: not read on {}", labels(&unread)));
        }
    }
    if what.is_empty() {
        return None;
    }
    Some(
        Finding::new(
            Code::FleetVersionDrift,
            Severity::Warn,
            format!(
                "{} not the same on every node: {}",
                what.join(", "),
                odd.join(", ")
            ),
        )
        .evidence_all(evidence)
        .fix(format!(
            "install the same {} on every node (pin them in the node image{}): ranks that load different releases can hang at init or mis-sum",
            what.join(", "),
            if what.contains(&"NCCL") {
                "; NCCL from the same pip wheel"
            } else {
                ""
            }
        ))
        .refs([
            "https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/troubleshooting.html",
            FLEET_DOC,
        ]),
    )
}

/// 12040 -> "12.4".
pub fn cuda_version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

fn config_drift(nodes: &[Node]) -> Option<Finding> {
    let mut evidence = Vec::new();
    let mut odd: Vec<String> = Vec::new();
    let mut gpus = Vec::new();
    // The GPUs themselves: a node with a GPU fewer (fallen off the bus, not bound) or another
    // model. Nodes whose report has no inventory are not counted either way.
    let (g, _) = groups(nodes.iter().filter(|n| n.inventory_read), |n| {
        Some(if n.gpus.is_empty() {
            "no GPU".to_string()
        } else {
            models_text(&n.models())
        })
    });
    if g.len() > 1 {
        let (line, o) = drift_lines("GPUs", &g);
        evidence.push(line);
        for l in o {
            push_new(&mut odd, &l);
        }
    }
    // Nodes with the same GPU models should be configured alike.
    let mut by_models: BTreeMap<Vec<String>, Vec<&Node>> = BTreeMap::new();
    for n in nodes {
        by_models.entry(n.models()).or_default().push(n);
    }
    for (models, same) in by_models
        .iter()
        .filter(|(m, s)| s.len() > 1 && !m.is_empty())
    {
        let host_checks: [Read; 3] = [
            ("IOMMU", Box::new(|n: &Node| n.iommu.clone())),
            (
                "IOMMU/ACS kernel parameters",
                Box::new(|n: &Node| {
                    n.iommu_params.as_ref().map(|p| {
                        if p.is_empty() {
                            "none".to_string()
                        } else {
                            p.join(" ")
                        }
                    })
                }),
            ),
            (
                "persistence mode",
                Box::new(|n: &Node| {
                    let v: Option<Vec<bool>> = n.gpus.iter().map(|g| g.persistence).collect();
                    v.map(|v| match (v.iter().all(|x| *x), v.iter().any(|x| *x)) {
                        (true, _) => "on".to_string(),
                        (false, true) => "on for some GPUs".to_string(),
                        (false, false) => "off".to_string(),
                    })
                }),
            ),
        ];
        let context = format!("nodes with {}", models_text(models));
        for (name, value) in &host_checks {
            let (g, _) = groups(same.iter().copied(), value);
            if g.len() > 1 {
                let (line, o) = drift_lines(name, &g);
                evidence.push(format!("{context}: {line}"));
                for l in o {
                    push_new(&mut odd, &l);
                }
            }
        }
        // Each GPU against the GPU in the same slot (bus id) of the other nodes: slots of
        // one board may differ by design (an x8 slot), the same slot on another node not.
        type Pick = fn(&super::node::NodeGpu) -> Option<String>;
        let per_gpu: [(&str, Pick); 3] = [
            ("BAR1", |g| g.bar1_bytes.map(|v| format!("{} MiB", v >> 20))),
            ("link width", |g| g.link_width.map(|v| format!("x{v}"))),
            ("link generation under load", |g| {
                g.link_gen.map(|v| format!("Gen{v}"))
            }),
        ];
        let slots: std::collections::BTreeSet<&str> = same
            .iter()
            .flat_map(|n| n.gpus.iter().map(|g| g.bus_id.as_str()))
            .collect();
        for bus in slots {
            for (name, pick) in &per_gpu {
                let (g, _) = groups(same.iter().copied(), |n| n.gpu(bus).and_then(pick));
                if g.len() > 1 {
                    let (line, o) = drift_lines(&format!("{name} of {bus}"), &g);
                    evidence.push(format!("{context}: {line}"));
                    for l in o {
                        gpus.push(format!("{bus}@{l}"));
                        push_new(&mut odd, &l);
                    }
                }
            }
        }
    }
    if evidence.is_empty() {
        return None;
    }
    Some(
        Finding::new(
            Code::FleetConfigDrift,
            Severity::Warn,
            format!("nodes are configured differently: {}", odd.join(", ")),
        )
        .evidence_all(evidence)
        .fix("run `rigdoctor check` on the nodes named and follow their findings (pcie-link-degraded, small-bar1, iommu-translation, persistence-off, gpu-fell-off-bus); then configure every node alike (kernel parameters, BIOS Above 4G decoding and Resizable BAR, `nvidia-smi -pm 1` or nvidia-persistenced)")
        .refs([FLEET_DOC, "https://docs.kernel.org/admin-guide/kernel-parameters.html"])
        .gpus(sorted_unique(gpus)),
    )
}

fn models_text(models: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in models {
        *counts.entry(m.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(m, c)| format!("{c}x {m}"))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// One figure of one member, with the key it is compared under.
struct Sample<'a> {
    node: &'a Node,
    what: String,
    gpus: Vec<String>,
    fig: Figure,
}

fn outliers(nodes: &[Node]) -> Option<Finding> {
    // Figures compared with the same figure of the other nodes: H2D and D2H of the GPU in the
    // same slot (bus id) and of the same model, P2P of the same pair of slots, busbw of nodes
    // with the same GPUs; each at the same copy or all-reduce size.
    let mut keyed: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for n in nodes {
        for g in &n.gpus {
            for (dir, fig) in [("H2D", g.h2d), ("D2H", g.d2h)] {
                if let Some(fig) = fig {
                    keyed
                        .entry(format!(
                            "{dir} of the {} at {}, {} MiB copies",
                            g.name,
                            g.bus_id,
                            fig.bytes >> 20
                        ))
                        .or_default()
                        .push(Sample {
                            node: n,
                            what: format!("{dir} of {}", g.bus_id),
                            gpus: vec![format!("{}@{}", g.bus_id, n.label)],
                            fig,
                        });
                }
            }
        }
        for p in &n.p2p {
            let name = |b: &str| n.gpu(b).map_or("?".to_string(), |g| g.name.clone());
            keyed
                .entry(format!(
                    "P2P {} {} -> {} {}, {} MiB copies",
                    name(&p.from),
                    p.from,
                    name(&p.to),
                    p.to,
                    p.gbps.bytes >> 20
                ))
                .or_default()
                .push(Sample {
                    node: n,
                    what: format!("P2P {} -> {}", p.from, p.to),
                    gpus: vec![
                        format!("{}@{}", p.from, n.label),
                        format!("{}@{}", p.to, n.label),
                    ],
                    fig: p.gbps,
                });
        }
        if let Some(super::node::Busbw { bytes, gbps: busbw }) = n.busbw {
            keyed
                .entry(format!(
                    "NCCL busbw at {} MiB on {}",
                    bytes >> 20,
                    models_text(&n.models())
                ))
                .or_default()
                .push(Sample {
                    node: n,
                    what: format!("NCCL all-reduce busbw at {} MiB", bytes >> 20),
                    gpus: Vec::new(),
                    fig: Figure {
                        median: busbw,
                        min: busbw,
                        max: busbw,
                        bytes,
                    },
                });
        }
    }
    let mut evidence = Vec::new();
    let mut odd: Vec<String> = Vec::new();
    let mut gpus = Vec::new();
    for (key, samples) in &keyed {
        // A median of peers needs at least two peers.
        if samples.len() < 3 {
            continue;
        }
        for (i, s) in samples.iter().enumerate() {
            let peers: Vec<Figure> = samples
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| p.fig)
                .collect();
            if let Some(peer) = fell(&peers, &s.fig) {
                let samples = if s.fig.max > s.fig.min {
                    format!(" (samples {:.1}-{:.1})", s.fig.min, s.fig.max)
                } else {
                    String::new()
                };
                evidence.push(format!(
                    "{} on {}: {:.1} GB/s{samples}, {:.0}% below the median of its {} peers ({key}), {:.1} GB/s",
                    s.what,
                    s.node.label,
                    s.fig.median,
                    100.0 * (1.0 - s.fig.median / peer),
                    peers.len(),
                    peer
                ));
                push_new(&mut odd, &s.node.label);
                gpus.extend(s.gpus.iter().cloned());
            }
        }
    }
    if evidence.is_empty() {
        return None;
    }
    Some(
        Finding::new(
            Code::FleetOutlier,
            Severity::Warn,
            format!("measured figures well below their peers' on {}", odd.join(", ")),
        )
        .evidence_all(evidence)
        .evidence(format!(
            "an outlier is more than {:.0}% below the median of its peers and below the spread of their samples",
            FELL_BY * 100.0
        ))
        .fix("run `rigdoctor check -v` on the nodes named: their bandwidth findings (pcie-link-degraded, bandwidth-low, throttling, power-brake) say why; a GPU whose copies fell while its link trained as its peers' needs its riser and power checked")
        .refs([FLEET_DOC, "https://github.com/NVIDIA/nvbandwidth"])
        .gpus(sorted_unique(gpus)),
    )
}

/// Add `s` to the names `v` holds unless it is there already (first mention keeps its place).
fn push_new(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

/// `v` sorted, each once.
fn sorted_unique(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}
