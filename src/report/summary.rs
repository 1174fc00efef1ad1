//! The machine summary shared by the text and markdown renderers.

use crate::facts::{Facts, Probed};

fn show<T: std::fmt::Display>(p: &Probed<T>) -> String {
    match p {
        Probed::Known(v) => v.to_string(),
        Probed::Unknown { .. } => format!("unknown ({})", p.why_unknown().unwrap_or_default()),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// (label, value) lines describing the host.
/// `brief`: the default screen leaves out what repeats another row (NVML answering with the
/// driver's own version and CUDA's device count) and a /dev/shm of 1 GiB or more.
pub fn machine_rows(f: &Facts, brief: bool) -> Vec<(&'static str, String)> {
    let h = &f.host;
    let mut rows = vec![(
        "System",
        format!(
            "{} · {} · kernel {}",
            show(&h.hostname),
            show(&h.os),
            show(&h.kernel_release)
        ),
    )];
    let board = match (
        h.virtualization.dmi_sys_vendor.known(),
        h.virtualization.dmi_product_name.known(),
    ) {
        (Some(v), Some(p)) => format!("{v} {p}"),
        _ => "unknown".into(),
    };
    rows.push(("Board", board));
    rows.push((
        "CPU",
        match h.cpu.known() {
            Some(c) => format!(
                "{} ({} threads{})",
                c.model,
                c.logical_cpus,
                if c.hypervisor_flag {
                    ", under a hypervisor"
                } else {
                    ""
                }
            ),
            None => show(&h.cpu.clone().map(|_| String::new())),
        },
    ));
    let d = &f.driver;
    rows.push((
        "Driver",
        if d.loaded {
            format!(
                "NVIDIA {} ({} kernel module)",
                show(&d.version),
                show(&d.flavour)
            )
        } else if d.nouveau_loaded {
            "NVIDIA driver not loaded (nouveau is)".into()
        } else {
            "NVIDIA driver not loaded".into()
        },
    ));
    if let Some(rt) = &f.gpu {
        rows.push((
            "CUDA",
            match rt.cuda.known() {
                Some(c) => {
                    let names: Vec<String> = c
                        .devices
                        .iter()
                        .map(|d| format!("{}={}", d.ordinal, d.bus_id))
                        .collect();
                    format!(
                        "driver API {}.{}, {} device(s): {}",
                        c.driver_version / 1000,
                        c.driver_version % 1000 / 10,
                        c.devices.len(),
                        names.join(" ")
                    )
                }
                None => format!(
                    "unavailable ({})",
                    rt.cuda.why_unknown().unwrap_or_default()
                ),
            },
        ));
        let agrees = match (rt.nvml.known(), rt.cuda.known(), d.version.known()) {
            (Some(n), Some(c), Some(v)) => {
                n.driver_version.known() == Some(v) && n.devices.len() == c.devices.len()
            }
            _ => false,
        };
        if !(brief && agrees) {
            rows.push((
                "NVML",
                match rt.nvml.known() {
                    Some(n) => format!(
                        "driver {}, {} device(s)",
                        show(&n.driver_version),
                        n.devices.len()
                    ),
                    None => format!(
                        "unavailable ({})",
                        rt.nvml.why_unknown().unwrap_or_default()
                    ),
                },
            ));
        }
    }
    let iommu = match (h.iommu.units.known(), h.iommu.group_count.known()) {
        (Some(u), g) if !u.is_empty() => format!(
            "on: {} ({} groups)",
            if u.len() <= 2 {
                u.join(", ")
            } else {
                format!("{} units", u.len())
            },
            g.map_or("?".into(), |g| g.to_string())
        ),
        (Some(_), _) => "off (no IOMMU units)".into(),
        (None, _) => show(&h.iommu.units.clone().map(|_| String::new())),
    };
    let cmd = h
        .cmdline
        .known()
        .map(|c| {
            c.mentions(&[
                "iommu",
                "amd_iommu",
                "intel_iommu",
                "iommu.passthrough",
                "pci",
                "pcie_aspm",
            ])
        })
        .unwrap_or_default();
    rows.push((
        "IOMMU",
        if cmd.is_empty() {
            iommu
        } else {
            format!("{iommu}; command line: {}", cmd.join(" "))
        },
    ));
    // NCCL's shared-memory transport needs room in /dev/shm (Docker's default 64 MiB is
    // not); the screen names it only when it is small or unread.
    let roomy = h.shm.known().is_some_and(|s| s.size_bytes >= 1 << 30);
    if !(brief && roomy) {
        rows.push((
            "/dev/shm",
            match &h.shm {
                Probed::Known(s) => format!("{} ({})", gib(s.size_bytes), s.source),
                other => show(&other.clone().map(|_| String::new())),
            },
        ));
    }
    if !h.virtualization.container_markers.is_empty() {
        rows.push(("Container", h.virtualization.container_markers.join(", ")));
    }
    let mut env: Vec<String> = f.env.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for c in &f.env.nccl_conf {
        if let Some(vars) = c.vars.known() {
            env.extend(vars.iter().map(|(k, v)| format!("{k}={v} ({})", c.path)));
        }
    }
    if !env.is_empty() {
        rows.push(("NCCL/CUDA env", env.join(" ")));
    }
    rows
}

pub const GPU_HEADER: [&str; 8] = [
    "BUS ID", "NAME", "LINK NOW", "LINK MAX", "BAR1", "NUMA", "DRIVER", "IOMMU",
];

/// One row per GPU, in the order of [`GPU_HEADER`]. Bus ids lose their domain when every GPU
/// is in domain 0000 (as lspci shows them), and names their "NVIDIA " prefix, so that the
/// table fits 80 columns.
pub fn gpu_rows(f: &Facts) -> Vec<[String; 8]> {
    let Some(topo) = f.pci.known() else {
        return Vec::new();
    };
    let one_domain = topo.gpus.iter().all(|g| g.bdf.starts_with("0000:"));
    topo.gpus
        .iter()
        .map(|g| {
            let iommu = match g.iommu_group.known() {
                Some(Some(grp)) => format!(
                    "{} {}",
                    grp.id,
                    grp.domain_type.known().map_or("?", |s| s.as_str())
                ),
                Some(None) => "no group".into(),
                None => "?".into(),
            };
            let driver = match g.driver.known() {
                Some(Some(d)) => d.clone(),
                Some(None) => "none".into(),
                None => "?".into(),
            };
            let bdf = match g.bdf.strip_prefix("0000:") {
                Some(short) if one_domain => short.to_string(),
                _ => g.bdf.clone(),
            };
            let name = g
                .name
                .known()
                .map(|n| n.strip_prefix("NVIDIA ").unwrap_or(n).to_string())
                .unwrap_or_else(|| format!("10de:{:04x}", g.device_id));
            [
                bdf,
                name,
                g.link.describe_current(),
                g.link.describe_max(),
                g.bar1_bytes.known().map_or("?".into(), |b| {
                    if *b >= 1 << 30 {
                        format!("{} GiB", b >> 30)
                    } else {
                        format!("{} MiB", b >> 20)
                    }
                }),
                g.numa_node.known().map_or("?".into(), |n| {
                    if *n < 0 {
                        "none".into()
                    } else {
                        n.to_string()
                    }
                }),
                driver,
                iommu,
            ]
        })
        .collect()
}

/// Why the GPU list is empty, when it is.
pub fn no_gpu_reason(f: &Facts) -> Option<String> {
    match &f.pci {
        Probed::Known(t) if t.gpus.is_empty() => Some("no NVIDIA GPU on the PCI bus".into()),
        Probed::Known(_) => None,
        other => Some(format!(
            "PCI bus not readable: {}",
            other.why_unknown().unwrap_or_default()
        )),
    }
}
