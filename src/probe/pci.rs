//! NVIDIA GPUs on the PCI bus and the bridges on their paths, from sysfs.

use super::config_space::{decode_bridge_config, decode_rebar, rebar_sizes};
use crate::facts::{
    Aer, Bridge, GpuPci, IommuGroup, Link, NvidiaDriver, PciPath, PciTopology, Probed,
    ResizableBar, Unidentified, Why,
};
use crate::sysroot::{file_name, Sysroot};
use std::collections::BTreeMap;

const DEVICES: &str = "/sys/bus/pci/devices";
pub const NVIDIA_VENDOR: u16 = 0x10de;
/// PCI base class 0x03: display controller (VGA 0x0300, 3D controller 0x0302). A GPU's other
/// functions (HDMI audio 0x0403, USB 0x0c03, UCSI 0x0c80) are not GPUs.
const DISPLAY_CLASS: u32 = 0x03;

pub fn probe(root: &Sysroot, driver: &NvidiaDriver) -> Probed<PciTopology> {
    let names = match root.list_dir(DEVICES) {
        Probed::Known(n) => n,
        Probed::Unknown {
            unknown,
            detail,
            cause,
        } => {
            return Probed::Unknown {
                unknown,
                detail,
                cause,
            }
        }
    };
    let pci_ids = read_pci_ids_nvidia(root);
    let mut gpus = Vec::new();
    let mut unidentified = Vec::new();
    for bdf in names {
        let dir = format!("{DEVICES}/{bdf}");
        let hex = |attr: &str| root.read_parsed(&format!("{dir}/{attr}"), parse_hex);
        let (vendor, class) = match identify(root, &dir, hex("vendor"), hex("class")) {
            Ok(id) => id,
            Err(detail) => {
                // Not known to be a GPU, not known not to be one: said, never dropped.
                unidentified.push(Unidentified { bdf, detail });
                continue;
            }
        };
        if vendor != u32::from(NVIDIA_VENDOR) || class >> 16 != DISPLAY_CLASS {
            continue;
        }
        let device_id = hex("device").known().copied().unwrap_or(0) as u16;
        gpus.push(GpuPci {
            name: gpu_name(driver, &bdf, device_id, &pci_ids),
            path: gpu_path(root, &bdf),
            link: read_link(root, &dir),
            numa_node: root.read_parsed(&format!("{dir}/numa_node"), |s| s.parse().ok()),
            driver: match root.read_link(&format!("{dir}/driver")) {
                Probed::Known(p) => Probed::Known(file_name(&p)),
                Probed::Unknown {
                    unknown: Why::Absent,
                    ..
                } => Probed::Known(None),
                u @ Probed::Unknown { .. } => u.retype(),
            },
            bar1_bytes: root
                .read_string(&format!("{dir}/resource"))
                .and_then(|t| bar_size(&t, 1)),
            bar1_rebar: bar1_rebar(root, &dir, &bdf),
            aer: read_aer(root, &dir),
            iommu_group: iommu_group(root, &dir),
            displays: displays(root, &dir),
            vendor_id: NVIDIA_VENDOR,
            device_id,
            class,
            bdf,
        });
    }
    let mut bridge_bdfs: Vec<String> = gpus
        .iter()
        .filter_map(|g| g.path.known())
        .flat_map(|p| p.bridges.iter().cloned())
        .collect();
    bridge_bdfs.sort();
    bridge_bdfs.dedup();
    let bridges = bridge_bdfs
        .into_iter()
        .map(|bdf| {
            let dir = format!("{DEVICES}/{bdf}");
            Bridge {
                link: read_link(root, &dir),
                aer: read_aer(root, &dir),
                config: root
                    .read_bytes(&format!("{dir}/config"))
                    .and_then(|c| decode_bridge_config(&bdf, &c)),
                bdf,
            }
        })
        .collect();
    Probed::Known(PciTopology {
        gpus,
        bridges,
        unidentified,
    })
}

/// BAR1's Resizable BAR capability: decoded from config space when it can be read in full
/// (root), else from sysfs `resource1_resize`, which any user may read (Linux >= 5.15,
/// drivers/pci/pci-sysfs.c: the `pci_rebar_get_possible_sizes` mask as %016llx, present only
/// for a resizable BAR). Without either, whether the card can resize is not known.
fn bar1_rebar(root: &Sysroot, dir: &str, bdf: &str) -> Probed<Option<ResizableBar>> {
    let config = root
        .read_bytes(&format!("{dir}/config"))
        .and_then(|c| decode_rebar(bdf, &c, 1));
    if config.known().is_some() {
        return config;
    }
    match root.read_attr(&format!("{dir}/resource1_resize")) {
        Probed::Known(t) => match u64::from_str_radix(t.trim(), 16) {
            Ok(mask) => Probed::Known(Some(ResizableBar {
                sizes: rebar_sizes(mask),
                current_bytes: None,
                source: "sysfs resource1_resize".into(),
            })),
            Err(_) => Probed::unknown(
                Why::Unparsable,
                format!("{bdf}: resource1_resize reads {t:?}"),
            ),
        },
        // No attribute: a BAR that cannot resize, or a kernel before 5.15; config space says.
        Probed::Unknown {
            unknown: Why::Absent,
            ..
        } => config,
        u => u.retype(),
    }
}

/// The connected DRM connectors of a device (drivers/gpu/drm/drm_sysfs.c: each connector is
/// `card<N>-<type>-<n>` under `card<N>`, with a `status` of connected/disconnected/unknown).
fn displays(root: &Sysroot, dir: &str) -> Probed<Vec<String>> {
    let cards = match root.list_dir(&format!("{dir}/drm")) {
        Probed::Known(c) => c,
        Probed::Unknown {
            unknown: Why::Absent,
            ..
        } => return Probed::Known(Vec::new()),
        u => return u.retype(),
    };
    let mut out = Vec::new();
    for card in cards.iter().filter(|c| c.starts_with("card")) {
        let Probed::Known(entries) = root.list_dir(&format!("{dir}/drm/{card}")) else {
            continue;
        };
        for conn in entries
            .iter()
            .filter(|e| e.starts_with(&format!("{card}-")))
        {
            if root
                .read_attr(&format!("{dir}/drm/{card}/{conn}/status"))
                .known()
                .map(String::as_str)
                == Some("connected")
            {
                out.push(conn.clone());
            }
        }
    }
    Probed::Known(out)
}

/// Vendor and class of a function: the sysfs attributes, else the same fields of the config
/// space header (vendor at 0x00, class code at 0x09..0x0B, in the 64 bytes any user may read;
/// PCI Local Bus Spec 3.0, 6.2.1). Err says why neither could be read.
fn identify(
    root: &Sysroot,
    dir: &str,
    vendor: Probed<u32>,
    class: Probed<u32>,
) -> Result<(u32, u32), String> {
    if let (Probed::Known(v), Probed::Known(c)) = (&vendor, &class) {
        return Ok((*v, *c));
    }
    let why = [&vendor, &class]
        .iter()
        .filter_map(|p| p.why_unknown())
        .collect::<Vec<_>>()
        .join("; ");
    match root.read_bytes(&format!("{dir}/config")) {
        Probed::Known(c) if c.len() >= 12 => {
            let v = u32::from(u16::from_le_bytes([c[0], c[1]]));
            if v == 0xFFFF {
                return Err(format!(
                    "{why}; config space reads all 0xFF: the device does not respond"
                ));
            }
            let cls = u32::from(c[9]) | u32::from(c[10]) << 8 | u32::from(c[11]) << 16;
            Ok((
                vendor.known().copied().unwrap_or(v),
                class.known().copied().unwrap_or(cls),
            ))
        }
        Probed::Known(c) => Err(format!("{why}; config space is {} bytes", c.len())),
        other => Err(format!(
            "{why}; {}",
            other.why_unknown().unwrap_or_default()
        )),
    }
}

fn parse_hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// "0000:41:00.0" (the domain may be longer than 4 digits behind Intel VMD).
pub fn is_bdf(s: &str) -> bool {
    let mut parts = s.split(':');
    let (Some(dom), Some(bus), Some(devfn), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let Some((dev, func)) = devfn.split_once('.') else {
        return false;
    };
    dom.len() >= 4
        && dom.bytes().all(|b| b.is_ascii_hexdigit())
        && hex(bus, 2)
        && hex(dev, 2)
        && matches!(func, "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7")
}

/// The `/sys/bus/pci/devices/<bdf>` symlink points into `/sys/devices/pci<dom>:<bus>/<bridge>/.../<bdf>`.
/// Its components give the bridge chain without following links out of the sysroot.
fn gpu_path(root: &Sysroot, bdf: &str) -> Probed<PciPath> {
    root.read_link(&format!("{DEVICES}/{bdf}"))
        .and_then(|target| parse_device_path(bdf, &target.to_string_lossy()))
}

pub fn parse_device_path(bdf: &str, target: &str) -> Probed<PciPath> {
    let comps: Vec<&str> = target.split('/').collect();
    let Some(root_pos) = comps
        .iter()
        .position(|c| c.starts_with("pci") && c.contains(':'))
    else {
        return Probed::unknown(
            Why::Unparsable,
            format!("{bdf}: no root complex in {target}"),
        );
    };
    let chain: Vec<String> = comps[root_pos..]
        .iter()
        .filter(|c| is_bdf(c))
        .map(|c| c.to_string())
        .collect();
    match chain.split_last() {
        Some((last, bridges)) if last == bdf => Probed::Known(PciPath {
            root_complex: comps[root_pos].to_string(),
            bridges: bridges.to_vec(),
        }),
        _ => Probed::unknown(
            Why::Unparsable,
            format!("{bdf}: unexpected sysfs path {target}"),
        ),
    }
}

fn gpu_name(
    driver: &NvidiaDriver,
    bdf: &str,
    device_id: u16,
    pci_ids: &BTreeMap<u16, String>,
) -> Probed<String> {
    if let Some(model) = driver
        .gpus
        .iter()
        .find(|g| g.bdf == bdf)
        .and_then(|g| g.model.clone())
    {
        return Probed::Known(model);
    }
    match pci_ids.get(&device_id) {
        Some(n) => Probed::Known(n.clone()),
        None => Probed::unknown(
            Why::Absent,
            format!("10de:{device_id:04x} not named by the driver or a pci.ids file"),
        ),
    }
}

/// NVIDIA's device names from the pci.ids database shipped by pciutils/hwdata, e.g.
/// 0x2204 -> "GA102 [GeForce RTX 3090]".
fn read_pci_ids_nvidia(root: &Sysroot) -> BTreeMap<u16, String> {
    [
        "/usr/share/misc/pci.ids",
        "/usr/share/hwdata/pci.ids",
        "/usr/share/pci.ids",
    ]
    .iter()
    .find_map(|p| root.read_string(p).known().map(|t| parse_pci_ids_nvidia(t)))
    .unwrap_or_default()
}

pub fn parse_pci_ids_nvidia(text: &str) -> BTreeMap<u16, String> {
    let mut out = BTreeMap::new();
    let mut in_nvidia = false;
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if !line.starts_with('\t') {
            if in_nvidia {
                break;
            }
            in_nvidia = line.starts_with("10de ");
        } else if in_nvidia && !line.starts_with("\t\t") {
            let l = line.trim_start();
            if let (Some(id), Some(name)) = (l.get(..4), l.get(4..)) {
                if let Ok(id) = u16::from_str_radix(id, 16) {
                    out.insert(id, name.trim().to_string());
                }
            }
        }
    }
    out
}

fn read_link(root: &Sysroot, dir: &str) -> Link {
    let speed = |a: &str| root.read_parsed(&format!("{dir}/{a}"), parse_link_speed);
    let width = |a: &str| {
        root.read_parsed(&format!("{dir}/{a}"), |s| {
            s.parse::<u32>().ok().filter(|w| *w > 0)
        })
    };
    Link {
        current_speed_gts: speed("current_link_speed"),
        current_width: width("current_link_width"),
        max_speed_gts: speed("max_link_speed"),
        max_width: width("max_link_width"),
    }
}

/// "16.0 GT/s PCIe" (newer kernels), "16 GT/s" (older), "2.5 GT/s"; "Unknown" is not a speed.
pub fn parse_link_speed(s: &str) -> Option<f64> {
    s.split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        // "inf" and "NaN" parse as f64 but are no link speed.
        .filter(|v| v.is_finite() && *v > 0.0)
}

/// Size of BAR `index` from sysfs `resource` ("0xstart 0xend 0xflags" per line); 0 when unset.
fn bar_size(text: &str, index: usize) -> Probed<u64> {
    let line = text.lines().nth(index);
    let parsed = line.and_then(|l| {
        let mut f = l
            .split_whitespace()
            .map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16));
        let (Some(Ok(start)), Some(Ok(end))) = (f.next(), f.next()) else {
            return None;
        };
        Some(if start == 0 && end == 0 {
            0
        } else {
            end.saturating_sub(start) + 1
        })
    });
    match parsed {
        Some(v) => Probed::Known(v),
        None => Probed::unknown(Why::Unparsable, format!("resource line {index}: {line:?}")),
    }
}

/// AER counters of every GPU and bridge of `topo`, read again now (after a load run).
pub fn reread_aer(root: &Sysroot, topo: &PciTopology) -> BTreeMap<String, Probed<Aer>> {
    let bdfs = topo
        .gpus
        .iter()
        .map(|g| &g.bdf)
        .chain(topo.bridges.iter().map(|b| &b.bdf));
    bdfs.map(|bdf| (bdf.clone(), read_aer(root, &format!("{DEVICES}/{bdf}"))))
        .collect()
}

fn read_aer(root: &Sysroot, dir: &str) -> Probed<Aer> {
    let counters = |name: &str| {
        root.read_string(&format!("{dir}/{name}"))
            .map(|t| parse_aer(&t))
    };
    let correctable = counters("aer_dev_correctable");
    let Probed::Known(correctable) = correctable else {
        // Absent when the kernel predates 4.19, or firmware owns AER (GHES), or pci=noaer.
        return correctable.map(|_| Aer::default());
    };
    Probed::Known(Aer {
        correctable,
        nonfatal: counters("aer_dev_nonfatal")
            .known()
            .cloned()
            .unwrap_or_default(),
        fatal: counters("aer_dev_fatal")
            .known()
            .cloned()
            .unwrap_or_default(),
    })
}

/// Lines "RxErr 0", "TOTAL_ERR_COR 5".
fn parse_aer(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().rsplit_once(' ')?;
            Some((k.trim().to_string(), v.parse().ok()?))
        })
        .collect()
}

fn iommu_group(root: &Sysroot, dir: &str) -> Probed<Option<IommuGroup>> {
    match root.read_link(&format!("{dir}/iommu_group")) {
        Probed::Known(p) => {
            let Some(id) = file_name(&p).and_then(|n| n.parse::<u32>().ok()) else {
                return Probed::unknown(
                    Why::Unparsable,
                    format!("{dir}/iommu_group -> {}", p.display()),
                );
            };
            Probed::Known(Some(IommuGroup {
                id,
                domain_type: root.read_attr(&format!("/sys/kernel/iommu_groups/{id}/type")),
            }))
        }
        Probed::Unknown {
            unknown: Why::Absent,
            ..
        } => Probed::Known(None),
        u @ Probed::Unknown { .. } => u.retype(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_shapes() {
        assert!(is_bdf("0000:41:00.0"));
        assert!(is_bdf("10000:e1:00.0"));
        assert!(!is_bdf("pci0000:40"));
        assert!(!is_bdf("0000:41:00.8"));
        assert!(!is_bdf("0000:41:00"));
    }

    #[test]
    fn device_paths() {
        let p = parse_device_path(
            "0000:43:00.0",
            "../../../devices/pci0000:40/0000:40:03.1/0000:42:00.0/0000:43:00.0",
        );
        let p = p.known().unwrap();
        assert_eq!(p.root_complex, "pci0000:40");
        assert_eq!(p.bridges, ["0000:40:03.1", "0000:42:00.0"]);
        let vmd = parse_device_path(
            "10000:e1:00.0",
            "../../../devices/pci0000:00/0000:00:0e.0/pci10000:e0/10000:e0:1d.0/10000:e1:00.0",
        );
        assert_eq!(
            vmd.known().unwrap().bridges,
            ["0000:00:0e.0", "10000:e0:1d.0"]
        );
        assert!(
            parse_device_path("0000:01:00.0", "../../devices/platform/foo")
                .known()
                .is_none()
        );
        assert!(
            parse_device_path("0000:01:00.0", "../../devices/pci0000:00/0000:02:00.0")
                .known()
                .is_none()
        );
    }

    #[test]
    fn speeds_bars_aer() {
        assert_eq!(parse_link_speed("16.0 GT/s PCIe"), Some(16.0));
        assert_eq!(parse_link_speed("2.5 GT/s"), Some(2.5));
        assert_eq!(parse_link_speed("Unknown"), None);
        let res = "0x00000000fb000000 0x00000000fbffffff 0x0000000000040200\n0x000000e000000000 0x000000e00fffffff 0x000000000014220c\n";
        assert_eq!(bar_size(res, 1), Probed::Known(256 << 20));
        assert!(bar_size(res, 5).known().is_none());
        let aer = parse_aer("RxErr 3\nBadTLP 0\nTOTAL_ERR_COR 3\n");
        assert_eq!(aer["RxErr"], 3);
    }

    #[test]
    fn pci_ids_nvidia_section_only() {
        let t = "# c\n1002  AMD\n\t2204  Not NVIDIA\n10de  NVIDIA Corporation\n\t2204  GA102 [GeForce RTX 3090]\n\t\t1458 4024  Sub\n\t2684  AD102 [GeForce RTX 4090]\n8086  Intel\n\t2204  Intel thing\n";
        let m = parse_pci_ids_nvidia(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[&0x2204], "GA102 [GeForce RTX 3090]");
    }
}
