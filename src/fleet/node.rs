//! The key facts of one node's saved report, as `compare` and `check --baseline` read them
//! (parent side; nothing here touches a GPU). Every value is what the report holds, or None
//! when the report could not read it: an unknown is shown as "?" and never compared.

use crate::facts::{normalize_bus_id, Facts, Kind, Measurement, Probed};
use serde::Serialize;

/// Kernel parameters that decide IOMMU translation and ACS (what fleet-config-drift compares).
pub const IOMMU_PARAMS: &[&str] = &[
    "iommu",
    "amd_iommu",
    "intel_iommu",
    "iommu.passthrough",
    "iommu.strict",
    "pci",
    "pcie_acs_override",
];

/// A measured figure: the median and the spread of its samples (GB/s), and the bytes per copy
/// (figures of other copy sizes are not compared: small copies do not reach the link's rate).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figure {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub bytes: u64,
}

impl Figure {
    /// A copy-engine figure (the method `check` measures; SM figures are not compared).
    fn of(m: &Measurement) -> Option<Figure> {
        if m.method != crate::facts::Method::Ce {
            return None;
        }
        match &m.outcome {
            crate::facts::BwOutcome::Measured { stats, .. } => Some(Figure {
                median: stats.median,
                min: stats.min,
                max: stats.max,
                bytes: m.bytes,
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeGpu {
    pub bus_id: String,
    pub name: String,
    pub persistence: Option<bool>,
    pub bar1_bytes: Option<u64>,
    /// The link's generation under load (idle links drop to Gen1 to save power: not read).
    pub link_gen: Option<u32>,
    /// The link's width under load, else NVML's current width.
    pub link_width: Option<u32>,
    pub h2d: Option<Figure>,
    pub d2h: Option<Figure>,
}

/// P2P between two of the node's GPUs, by bus id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairFigure {
    pub from: String,
    pub to: String,
    pub gbps: Figure,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// The node's name: its hostname, or its file's name when hostnames are missing or repeat.
    pub label: String,
    /// The report it was read from.
    pub source: String,
    pub hostname: Option<String>,
    /// Whether the report holds a GPU inventory (NVML's or CUDA's); without one `gpus` is
    /// empty and says nothing of the GPUs.
    pub inventory_read: bool,
    pub gpus: Vec<NodeGpu>,
    pub driver: Option<String>,
    /// The CUDA driver API version (e.g. 12040).
    pub cuda: Option<i32>,
    pub nccl: Option<String>,
    pub kernel: Option<String>,
    /// The IOMMU and ACS kernel parameters set (empty when none is; None: not read).
    pub iommu_params: Option<Vec<String>>,
    /// "on" (with units) or "off"; None: not read.
    pub iommu: Option<String>,
    pub p2p: Vec<PairFigure>,
    /// The largest correct all-reduce's busbw; its samples are not kept, so the figure has no
    /// spread.
    pub busbw: Option<Busbw>,
}

/// NCCL all-reduce busbw (GB/s) at `bytes` per rank.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Busbw {
    pub bytes: u64,
    pub gbps: f64,
}

fn known<T: Clone>(p: &Probed<T>) -> Option<T> {
    p.known().cloned()
}

impl Node {
    pub fn of(facts: &Facts, source: &str) -> Node {
        let rt = facts.gpu.as_ref();
        let nvml = rt.and_then(|r| r.nvml.known());
        let cuda = rt.and_then(|r| r.cuda.known());
        let bw = rt.and_then(|r| r.bandwidth.as_ref());
        let bus_of = |ordinal: i32| -> Option<String> {
            cuda.and_then(|c| c.devices.iter().find(|d| d.ordinal == ordinal))
                .map(|d| normalize_bus_id(&d.bus_id))
        };
        // NVML's GPUs (every GPU of the machine), else CUDA's (CUDA_VISIBLE_DEVICES may hide
        // some), in PCI order.
        let mut gpus: Vec<NodeGpu> = match (nvml, cuda) {
            (Some(n), _) => n
                .devices
                .iter()
                .filter_map(|d| Some((normalize_bus_id(d.bus_id.known()?), known(&d.name)?)))
                .collect::<Vec<_>>(),
            (None, Some(c)) => c
                .devices
                .iter()
                .map(|d| (normalize_bus_id(&d.bus_id), d.name.clone()))
                .collect(),
            _ => Vec::new(),
        }
        .into_iter()
        .map(|(bus_id, name)| {
            let nv = nvml.and_then(|n| {
                n.devices
                    .iter()
                    .find(|d| d.bus_id.known().map(|b| normalize_bus_id(b)) == Some(bus_id.clone()))
            });
            NodeGpu {
                persistence: nv.and_then(|d| known(&d.persistence_mode)),
                bar1_bytes: nv.and_then(|d| known(&d.bar1_bytes)),
                link_gen: None,
                link_width: nv.and_then(|d| known(&d.pcie_width)),
                h2d: None,
                d2h: None,
                bus_id,
                name,
            }
        })
        .collect();
        gpus.sort_by(|a, b| a.bus_id.cmp(&b.bus_id));
        let mut p2p = Vec::new();
        if let Some(bw) = bw {
            for l in &bw.links {
                let Some(bus) = bus_of(l.device) else {
                    continue;
                };
                if let Some(g) = gpus.iter_mut().find(|g| g.bus_id == bus) {
                    g.link_gen = l.gen.or(g.link_gen);
                    g.link_width = l.width.or(g.link_width);
                }
            }
            for m in bw
                .measurements
                .iter()
                .filter(|m| !m.latency && !m.bidirectional)
            {
                let Some(fig) = Figure::of(m) else { continue };
                match (m.kind, m.from, m.to) {
                    (Kind::H2d, _, Some(d)) | (Kind::D2h, Some(d), _) => {
                        let Some(bus) = bus_of(d) else { continue };
                        if let Some(g) = gpus.iter_mut().find(|g| g.bus_id == bus) {
                            let slot = if m.kind == Kind::H2d {
                                &mut g.h2d
                            } else {
                                &mut g.d2h
                            };
                            // One figure per GPU and direction: the copy engine's, measured
                            // first; an SM figure does not replace it.
                            slot.get_or_insert(fig);
                        }
                    }
                    (Kind::P2p, Some(a), Some(b)) => {
                        if let (Some(from), Some(to)) = (bus_of(a), bus_of(b)) {
                            if !p2p
                                .iter()
                                .any(|p: &PairFigure| p.from == from && p.to == to)
                            {
                                p2p.push(PairFigure {
                                    from,
                                    to,
                                    gbps: fig,
                                });
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let driver = nvml
            .and_then(|n| known(&n.driver_version))
            .or_else(|| known(&facts.driver.version));
        let h = &facts.host;
        let iommu = match h.iommu.units.known() {
            Some(u) if !u.is_empty() => Some("on".to_string()),
            Some(_) => Some("off".to_string()),
            None => None,
        };
        Node {
            label: String::new(),
            source: source.to_string(),
            hostname: known(&h.hostname),
            inventory_read: nvml.is_some() || cuda.is_some(),
            gpus,
            driver,
            cuda: cuda.map(|c| c.driver_version),
            nccl: rt
                .and_then(|r| r.nccl.as_ref())
                .and_then(|n| n.library.known())
                .map(|l| l.version.clone()),
            kernel: known(&h.kernel_release),
            iommu_params: h.cmdline.known().map(|c| c.mentions(IOMMU_PARAMS)),
            iommu,
            p2p,
            // One rank moves nothing between GPUs (busbw is 0 by definition): no figure.
            busbw: rt
                .and_then(|r| r.nccl.as_ref())
                .filter(|n| n.devices.len() > 1)
                .and_then(|n| n.largest_correct())
                .map(|(bytes, gbps)| Busbw { bytes, gbps }),
        }
    }

    /// The GPU models, sorted: nodes with the same list are compared for configuration.
    pub fn models(&self) -> Vec<String> {
        let mut m: Vec<String> = self.gpus.iter().map(|g| g.name.clone()).collect();
        m.sort();
        m
    }

    pub fn gpu(&self, bus_id: &str) -> Option<&NodeGpu> {
        self.gpus.iter().find(|g| g.bus_id == bus_id)
    }
}

/// Name each node: its hostname when every node has a distinct one, else its file's name
/// (reports copied from one machine, or redacted, repeat a hostname).
pub fn label(nodes: &mut [Node]) {
    let names: Vec<Option<&String>> = nodes.iter().map(|n| n.hostname.as_ref()).collect();
    let distinct = names.iter().all(Option::is_some)
        && names
            .iter()
            .enumerate()
            .all(|(i, a)| names[..i].iter().all(|b| b != a));
    let mut taken: Vec<String> = Vec::new();
    for n in nodes.iter_mut() {
        let base = match (&n.hostname, distinct) {
            (Some(h), true) => h.clone(),
            _ => std::path::Path::new(&n.source)
                .file_stem()
                .map_or_else(|| n.source.clone(), |s| s.to_string_lossy().into_owned()),
        };
        // Files of one name from two directories: number the later ones.
        let mut label = base.clone();
        let mut k = 2;
        while taken.contains(&label) {
            label = format!("{base}#{k}");
            k += 1;
        }
        taken.push(label.clone());
        n.label = label;
    }
}
