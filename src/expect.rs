//! What a link should carry: the expectation every measured bandwidth is compared with.
//! docs/bandwidth.md explains the model and its sources.

use crate::facts::{pcie_gbps, BandwidthFacts, Facts, Kind, Measurement, Method};

/// A measurement below this share of what the card and slot support (PCIe) or of the active
/// NVLinks is `bandwidth-low`. Copy engines reach 80-85% of PCIe (research/reference-tools.md:
/// Gen3 x16 9.6-12 of 15.75, Gen4 x16 23.9-27.1 of 31.5); SM copies run lower.
pub fn low_fraction(method: Method) -> f64 {
    match method {
        Method::Ce => 0.6,
        Method::Sm => 0.5,
    }
}

/// A figure this far over the link's rate cannot have crossed it (`bandwidth-impossible`).
pub const IMPOSSIBLE_OVER: f64 = 1.05;

/// NVLink per-link GB/s per direction by compute capability: GA102 (sm_86: RTX 3090, A6000,
/// A40) has 4 NVLink 3 links of 14.0625 GB/s (112.5 GB/s both ways); NVLink 2-4 on data-centre
/// parts (V100, A100, H100) carry 25 GB/s per link; NVLink 1 (P100) 20.
pub fn nvlink_gbps_per_link(cc: [i32; 2]) -> f64 {
    match cc {
        [8, 6] | [8, 7] => 14.0625,
        [6, _] => 20.0,
        _ => 25.0,
    }
}

/// The link a measurement crosses and what it should give.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// "Gen4 x16", "NV4".
    pub link: String,
    /// GB/s per direction of that link as it ran under load.
    pub theoretical: f64,
    /// What the hardware supports ("Gen4 x16": card and slot), and its GB/s.
    pub capable: String,
    pub capable_gbps: f64,
}

impl Expectation {
    pub fn percent(&self, gbps: f64) -> f64 {
        100.0 * gbps / self.theoretical
    }

    /// Above what the link can carry at all (5% over the larger of its rate under load and the
    /// rate card and slot support, for clock and rounding slack): the bytes did not cross it.
    pub fn is_impossible(&self, gbps: f64) -> bool {
        gbps > IMPOSSIBLE_OVER * self.theoretical.max(self.capable_gbps)
    }

    /// Below the share of the capable link that a healthy one reaches.
    pub fn is_low(&self, gbps: f64, method: Method) -> bool {
        gbps < low_fraction(method) * self.capable_gbps
    }
}

fn gen_width(gen: Option<u32>, width: Option<u32>) -> Option<(String, f64)> {
    let (g, w) = (gen?, width?);
    Some((format!("Gen{g} x{w}"), pcie_gbps(g, w)?))
}

/// (generation, width) the GPU's link can reach: NVML's maximum (which some drivers give for
/// the card alone), capped by the maximum of the port above the GPU when sysfs shows it.
pub fn capable_link(f: &Facts, bw: &BandwidthFacts, d: i32) -> Option<(u32, u32)> {
    let l = bw.link(d)?;
    let (mut gen, mut width) = (l.max_gen?, l.max_width?);
    let bdf = l.bus_id.as_deref().map(crate::facts::normalize_bus_id);
    let topo = f.pci.known();
    let gpu = topo.and_then(|t| t.gpus.iter().find(|g| Some(&g.bdf) == bdf.as_ref()));
    if let (Some(t), Some(g)) = (topo, gpu) {
        let port = crate::rules::topology::links_of(g, t)
            .into_iter()
            .find(|pl| pl.is_gpu)
            .and_then(|pl| pl.port_link);
        if let Some(p) = port {
            if let Some(pg) = p
                .max_speed_gts
                .known()
                .and_then(|&s| crate::facts::pcie_gen(s))
            {
                gen = gen.min(pg);
            }
            if let Some(&pw) = p.max_width.known() {
                width = width.min(pw);
            }
        }
    }
    Some((gen, width))
}

/// A GPU's PCIe link: (under load, capable).
fn pcie(f: &Facts, bw: &BandwidthFacts, d: i32) -> Option<((String, f64), (String, f64))> {
    let l = bw.link(d)?;
    let (g, w) = capable_link(f, bw, d)?;
    Some((gen_width(l.gen, l.width)?, gen_width(Some(g), Some(w))?))
}

/// Active NVLinks joining CUDA devices `a` and `b`, and the per-link rate.
pub fn nvlinks_between(f: &Facts, a: i32, b: i32) -> Option<(usize, f64)> {
    let rt = f.gpu.as_ref()?;
    let cuda = rt.cuda.known()?;
    let bus = |o: i32| cuda.devices.iter().find(|d| d.ordinal == o);
    let (da, db) = (bus(a)?, bus(b)?);
    let nvml = rt.nvml.known()?;
    let dev = nvml
        .devices
        .iter()
        .find(|d| d.bus_id.known() == Some(&da.bus_id))?;
    let n = dev
        .nvlinks
        .known()?
        .iter()
        .filter(|l| l.active && l.remote_bus_id.as_deref() == Some(db.bus_id.as_str()))
        .count();
    (n > 0).then(|| (n, nvlink_gbps_per_link(da.compute_capability)))
}

/// The expectation of a bandwidth measurement, when the link is known; None for latency,
/// copies within a GPU and the staged control (no single link bounds them).
pub fn expectation(f: &Facts, m: &Measurement) -> Option<Expectation> {
    let bw = f.gpu.as_ref()?.bandwidth.as_ref()?;
    if m.latency {
        return None;
    }
    let make =
        |(link, theoretical): (String, f64), (capable, capable_gbps): (String, f64)| Expectation {
            link,
            theoretical,
            capable,
            capable_gbps,
        };
    match m.kind {
        Kind::H2d | Kind::D2h => {
            let (now, max) = pcie(f, bw, m.to.or(m.from)?)?;
            Some(make(now, max))
        }
        Kind::P2p => {
            let (a, b) = (m.from?, m.to?);
            if let Some((n, per)) = nvlinks_between(f, a, b) {
                let nv = (format!("NV{n}"), n as f64 * per);
                return Some(make(nv.clone(), nv));
            }
            let (na, ma) = pcie(f, bw, a)?;
            let (nb, mb) = pcie(f, bw, b)?;
            let slower = |x: (String, f64), y: (String, f64)| if x.1 <= y.1 { x } else { y };
            Some(make(slower(na, nb), slower(ma, mb)))
        }
        Kind::Local | Kind::Staged => None,
    }
}

/// The measurement of this kind, method, route and mode.
pub fn find(
    bw: &BandwidthFacts,
    kind: Kind,
    method: Method,
    from: Option<i32>,
    to: Option<i32>,
    bidir: bool,
    latency: bool,
) -> Option<&Measurement> {
    bw.measurements.iter().find(|m| {
        m.kind == kind
            && m.method == method
            && m.from == from
            && m.to == to
            && m.bidirectional == bidir
            && m.latency == latency
    })
}

/// The staged control of a P2P measurement.
pub fn staged_of<'a>(bw: &'a BandwidthFacts, m: &Measurement) -> Option<&'a Measurement> {
    find(
        bw,
        Kind::Staged,
        Method::Ce,
        m.from,
        m.to,
        m.bidirectional,
        m.latency,
    )
}

/// A P2P figure below its staged control (5% margin for noise).
pub fn slower_than_staged(bw: &BandwidthFacts, m: &Measurement) -> Option<f64> {
    if m.kind != Kind::P2p || m.latency {
        return None;
    }
    let staged = staged_of(bw, m)?.median()?;
    (m.median()? < 0.95 * staged).then_some(staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcie_figures_match_the_spec() {
        assert!((pcie_gbps(3, 16).unwrap() - 15.75).abs() < 0.01);
        assert!((pcie_gbps(4, 16).unwrap() - 31.51).abs() < 0.01);
        assert!((pcie_gbps(5, 16).unwrap() - 63.02).abs() < 0.01);
        assert!((pcie_gbps(1, 16).unwrap() - 4.0).abs() < 0.01);
        assert_eq!(pcie_gbps(9, 16), None);
        assert!((4.0 * nvlink_gbps_per_link([8, 6]) - 56.25).abs() < 1e-9);
    }
}
