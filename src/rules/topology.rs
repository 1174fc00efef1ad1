//! Paths between GPUs in the PCI tree, and the PCIe links along a GPU's path.

use crate::facts::{GpuPci, Link, PciPath, PciTopology};

/// The bridges a transfer between two GPUs crosses below their common ancestor: where an ACS
/// redirect would send peer traffic up to the root complex. GPUs under different root complexes
/// cross every bridge on both paths.
pub fn bridges_between(a: &PciPath, b: &PciPath) -> Vec<String> {
    let common = if a.root_complex == b.root_complex {
        a.bridges
            .iter()
            .zip(&b.bridges)
            .take_while(|(x, y)| x == y)
            .count()
    } else {
        0
    };
    a.bridges[common..]
        .iter()
        .chain(&b.bridges[common..])
        .cloned()
        .collect()
}

/// Every unordered pair of GPUs.
pub fn pairs(gpus: &[GpuPci]) -> impl Iterator<Item = (&GpuPci, &GpuPci)> {
    gpus.iter()
        .enumerate()
        .flat_map(move |(i, a)| gpus[i + 1..].iter().map(move |b| (a, b)))
}

/// One PCIe link: the upstream-facing device (the GPU, or a switch's upstream port) and the port above it.
pub struct PathLink<'a> {
    pub device: &'a str,
    pub device_link: &'a Link,
    pub is_gpu: bool,
    pub port: &'a str,
    pub port_link: Option<&'a Link>,
}

/// The links from the root port down to the GPU. Along a PCIe path upstream ports and
/// downstream/root ports alternate (a switch is one upstream port over downstream ports), so
/// counting back from the GPU, every second device is the lower end of a link.
pub fn links_of<'a>(gpu: &'a GpuPci, topo: &'a PciTopology) -> Vec<PathLink<'a>> {
    let Some(path) = gpu.path.known() else {
        return Vec::new();
    };
    let mut chain: Vec<&str> = path.bridges.iter().map(String::as_str).collect();
    chain.push(&gpu.bdf);
    let last = chain.len() - 1;
    (1..chain.len())
        .rev()
        .step_by(2)
        .filter_map(|i| {
            let is_gpu = i == last;
            let device_link = if is_gpu {
                &gpu.link
            } else {
                &topo.bridge(chain[i])?.link
            };
            Some(PathLink {
                device: chain[i],
                device_link,
                is_gpu,
                port: chain[i - 1],
                port_link: topo.bridge(chain[i - 1]).map(|b| &b.link),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(rc: &str, b: &[&str]) -> PciPath {
        PciPath {
            root_complex: rc.into(),
            bridges: b.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn bridges_below_common_ancestor() {
        let a = path("pci0000:00", &["r", "u", "d1"]);
        let b = path("pci0000:00", &["r", "u", "d2"]);
        assert_eq!(bridges_between(&a, &b), ["d1", "d2"]);
        let c = path("pci0000:00", &["r2"]);
        assert_eq!(bridges_between(&a, &c), ["r", "u", "d1", "r2"]);
        let d = path("pci0000:40", &["r"]);
        assert_eq!(bridges_between(&a, &d), ["r", "u", "d1", "r"]);
    }
}
