//! Builds a fake sysroot (the /proc, /sys and /etc files rigdoctor reads) from a rig description
//! in tests/rigs/*.toml. The format is documented in docs/testing.md.
//!
//! Binary PCI config space is generated here from the description (PCI Express capability with
//! port type and link registers, AER and ACS extended capabilities), never copied from a machine.
//! A non-root rig gets 64-byte config files, as the kernel gives a non-root reader.

#![allow(dead_code)]

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rig {
    pub description: String,
    pub hostname: String,
    pub kernel: String,
    pub os: String,
    pub cmdline: String,
    pub mem_total_kib: u64,
    /// Options of the /dev/shm tmpfs mount; absent: /dev/shm is not mounted.
    pub shm_options: Option<String>,
    /// Whether rigdoctor ran as root (full config space) or not (64 bytes).
    pub root: bool,
    #[serde(default)]
    pub container_markers: Vec<String>,
    pub cpu: RigCpu,
    pub dmi: Option<RigDmi>,
    #[serde(default)]
    pub iommu_units: Vec<String>,
    /// Domain type of every IOMMU group ("DMA", "DMA-FQ", "identity"); absent: no IOMMU groups.
    pub iommu_domain: Option<String>,
    pub driver: Option<RigDriver>,
    #[serde(default)]
    pub nouveau_loaded: bool,
    /// Content of /etc/nccl.conf.
    pub nccl_conf: Option<String>,
    /// Kernel messages of this boot after a healthy start, each "<seconds> <message>";
    /// written as /dev/kmsg records to dev/kmsg.
    #[serde(default)]
    pub kmsg: Vec<String>,
    /// A var/log/kern.log (syslog format) written instead of dev/kmsg.
    pub kern_log: Option<String>,
    /// Write no kernel log at all (a tree captured without one).
    #[serde(default)]
    pub no_kernel_log: bool,
    /// Write a pci.ids with the NVIDIA names of the rig's GPUs to /usr/share/misc/pci.ids.
    #[serde(default)]
    pub pci_ids: bool,
    #[serde(default)]
    pub bridge: Vec<RigBridge>,
    #[serde(default)]
    pub gpu: Vec<RigGpu>,
    /// Other PCI functions (NVMe, NICs) that must not be mistaken for GPUs.
    #[serde(default)]
    pub other: Vec<RigOther>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigCpu {
    pub vendor: String,
    pub model: String,
    pub threads: usize,
    #[serde(default)]
    pub hypervisor: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigDmi {
    pub sys_vendor: String,
    pub product_name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigDriver {
    /// The first line of /proc/driver/nvidia/version.
    pub version_line: String,
    /// The "GSP Firmware" line of each GPU's information file; absent on old drivers.
    pub gsp_firmware: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigLink {
    pub speed: String,
    pub width: u32,
    pub max_speed: String,
    pub max_width: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigBridge {
    pub bdf: String,
    /// "pci0000:40" (a root complex) or the bdf of another bridge.
    pub parent: String,
    /// "root-port", "switch-upstream" or "switch-downstream".
    pub port: String,
    #[serde(default = "default_bridge_vendor")]
    pub vendor: u16,
    pub link: RigLink,
    /// ACS Control register; absent: the bridge has no ACS capability.
    pub acs_ctl: Option<u16>,
    #[serde(default)]
    pub aer_correctable: BTreeMap<String, u64>,
}

fn default_bridge_vendor() -> u16 {
    0x1022
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigGpu {
    pub bdf: String,
    pub parent: String,
    pub device_id: u16,
    pub name: String,
    pub uuid: String,
    pub link: RigLink,
    pub numa: i32,
    /// Bound driver ("nvidia", "nouveau", "vfio-pci"); absent: unbound.
    pub driver: Option<String>,
    pub bar1_mib: u64,
    /// The largest BAR1 size the card's Resizable BAR capability lists (0: no capability);
    /// absent: BAR1's size when it is above 256 MiB (resized), else 256 MiB (a VBIOS that
    /// offers nothing larger).
    pub rebar_max_mib: Option<u64>,
    /// DRM connectors with a monitor attached ("card0-DP-1"), under `<device>/drm/card0/`.
    #[serde(default)]
    pub displays: Vec<String>,
    #[serde(default)]
    pub aer_correctable: BTreeMap<String, u64>,
    #[serde(default)]
    pub aer_nonfatal: BTreeMap<String, u64>,
    /// Add the card's HDMI audio function (.1, class 0x040300), as real GPUs have.
    #[serde(default = "yes")]
    pub audio: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigOther {
    pub bdf: String,
    pub parent: String,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
}

pub fn rigs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rigs")
}

pub fn load_rig(name: &str) -> Rig {
    let path = rigs_dir().join(format!("{name}.toml"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write(root: &Path, rel: &str, content: impl AsRef<[u8]>) {
    let p = root.join(rel.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// A symlink at `link` (relative to the sysroot) pointing to `target` (relative to the
/// sysroot), written as a relative link like the kernel's sysfs links.
fn link(root: &Path, link: &str, target: &str) {
    let link = link.trim_start_matches('/');
    let depth = Path::new(link).components().count() - 1;
    let rel = format!("{}{}", "../".repeat(depth), target.trim_start_matches('/'));
    let p = root.join(link);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    symlink(rel, p).unwrap();
}

fn speed_code(speed: &str) -> u16 {
    match speed.split_whitespace().next().unwrap_or("") {
        "2.5" => 1,
        "5.0" | "5" => 2,
        "8.0" | "8" => 3,
        "16.0" | "16" => 4,
        "32.0" | "32" => 5,
        "64.0" | "64" => 6,
        _ => 0,
    }
}

fn port_code(port: &str) -> u16 {
    match port {
        "root-port" => 4,
        "switch-upstream" => 5,
        "switch-downstream" => 6,
        "endpoint" => 0,
        other => panic!("unknown port type {other}"),
    }
}

/// PCI config space of a bridge or endpoint, laid out as the PCIe spec and pci_regs.h say.
pub fn config_space(
    vendor: u16,
    device: u16,
    port: &str,
    l: &RigLink,
    acs_ctl: Option<u16>,
    root: bool,
) -> Vec<u8> {
    let mut c = vec![0u8; 4096];
    c[0..2].copy_from_slice(&vendor.to_le_bytes());
    c[2..4].copy_from_slice(&device.to_le_bytes());
    c[0x06] = 0x10; // status: capability list
    c[0x0E] = if port == "endpoint" { 0x00 } else { 0x01 };
    c[0x34] = 0x50;
    let e = 0x50;
    c[e] = 0x10; // PCI Express capability, last in the list
    c[e + 2..e + 4].copy_from_slice(&((port_code(port) << 4) | 2).to_le_bytes());
    let link_cap = u32::from(speed_code(&l.max_speed)) | (l.max_width << 4);
    c[e + 0x0C..e + 0x10].copy_from_slice(&link_cap.to_le_bytes());
    let link_sta = speed_code(&l.speed) | ((l.width as u16) << 4);
    c[e + 0x12..e + 0x14].copy_from_slice(&link_sta.to_le_bytes());
    // AER first, then ACS, as on most AMD/Intel/PLX ports.
    let next = if acs_ctl.is_some() { 0x148u32 } else { 0 };
    c[0x100..0x104].copy_from_slice(&(0x0001u32 | 2 << 16 | next << 20).to_le_bytes());
    if let Some(ctl) = acs_ctl {
        c[0x148..0x14C].copy_from_slice(&(0x000Du32 | 1 << 16).to_le_bytes());
        c[0x14C..0x14E].copy_from_slice(&0x005Fu16.to_le_bytes());
        c[0x14E..0x150].copy_from_slice(&ctl.to_le_bytes());
    }
    if !root {
        c.truncate(64);
    }
    c
}

/// Append a Resizable BAR capability for BAR1 to an endpoint's config space (PCIe r6.2 7.8.6):
/// sizes from 64 MiB to `max_mib`, `cur_mib` programmed. Returns the supported-size mask with
/// bit 0 = 1 MiB, as sysfs `resource1_resize` prints it.
fn add_rebar(c: &mut [u8], max_mib: u64, cur_mib: u64) -> u64 {
    let log = |mib: u64| 63 - mib.leading_zeros() as u64;
    let mask: u64 = (6..=log(max_mib)).map(|k| 1u64 << k).sum();
    // Chain it after the AER capability at 0x100.
    let aer = u32::from_le_bytes(c[0x100..0x104].try_into().unwrap());
    c[0x100..0x104].copy_from_slice(&(aer & 0x000F_FFFF | 0x200 << 20).to_le_bytes());
    c[0x200..0x204].copy_from_slice(&(0x0015u32 | 1 << 16).to_le_bytes());
    c[0x204..0x208].copy_from_slice(&((mask as u32) << 4).to_le_bytes());
    let ctrl = 1u32 | 1 << 5 | (log(cur_mib) as u32) << 8;
    c[0x208..0x20C].copy_from_slice(&ctrl.to_le_bytes());
    mask
}

fn aer_text(counts: &BTreeMap<String, u64>, names: &[&str], total: &str) -> String {
    let mut s = String::new();
    for n in names {
        s += &format!("{n} {}\n", counts.get(*n).copied().unwrap_or(0));
    }
    s + &format!("{total} {}\n", counts.values().sum::<u64>())
}

const AER_COR: [&str; 8] = [
    "RxErr",
    "BadTLP",
    "BadDLLP",
    "Rollover",
    "Timeout",
    "NonFatalErr",
    "CorrIntErr",
    "HeaderOF",
];
const AER_NONFATAL: [&str; 6] = ["Undefined", "DLP", "SDES", "TLP", "FCP", "CmpltTO"];

struct Dev<'a> {
    bdf: &'a str,
    parent: &'a str,
}

/// The sysfs directory of a device: /sys/devices/pci0000:40/<bridge>/.../<bdf>.
fn device_dir(rig: &Rig, bdf: &str, parent: &str) -> String {
    let mut chain = vec![bdf.to_string()];
    let mut p = parent.to_string();
    while !p.starts_with("pci") {
        chain.push(p.clone());
        p = rig
            .bridge
            .iter()
            .find(|b| b.bdf == p)
            .unwrap_or_else(|| panic!("{bdf}: parent {p} is not a bridge of the rig"))
            .parent
            .clone();
    }
    chain.push(p);
    chain.reverse();
    format!("sys/devices/{}", chain.join("/"))
}

/// dev/kmsg as `cat /dev/kmsg` prints it: "prio,seq,usec,-;message", a healthy boot of the
/// rig's kernel with the NVIDIA module loading, then the rig's own messages.
pub fn kmsg_records(rig: &Rig) -> String {
    let mut lines = vec![
        (0.0, format!("Linux version {} (buildd@lcy02-amd64-017) (x86_64-linux-gnu-gcc-12 (Ubuntu 12.3.0-1ubuntu1~22.04) 12.3.0, GNU ld (GNU Binutils for Ubuntu) 2.38) #14~22.04.1-Ubuntu SMP PREEMPT_DYNAMIC", rig.kernel)),
        (0.0, format!("Command line: {}", rig.cmdline)),
        (4.1, "nvidia: loading out-of-tree module taints kernel.".to_string()),
        (4.2, "nvidia-nvlink: Nvlink Core is being initialized, major device number 510".to_string()),
    ];
    for m in &rig.kmsg {
        let (t, msg) = m
            .split_once(' ')
            .unwrap_or_else(|| panic!("kmsg line without a time: {m}"));
        lines.push((
            t.parse().unwrap_or_else(|_| panic!("kmsg time {t:?}")),
            msg.to_string(),
        ));
    }
    lines
        .iter()
        .enumerate()
        .map(|(seq, (t, msg))| format!("6,{seq},{},-;{msg}\n", (t * 1e6) as u64))
        .collect()
}

pub fn build(rig: &Rig, root: &Path) {
    write(
        root,
        "proc/sys/kernel/hostname",
        format!("{}\n", rig.hostname),
    );
    write(
        root,
        "proc/sys/kernel/osrelease",
        format!("{}\n", rig.kernel),
    );
    write(root, "proc/cmdline", format!("{}\n", rig.cmdline));
    write(
        root,
        "etc/os-release",
        format!("NAME=\"x\"\nPRETTY_NAME=\"{}\"\n", rig.os),
    );
    let mut cpuinfo = String::new();
    for i in 0..rig.cpu.threads {
        cpuinfo += &format!(
            "processor\t: {i}\nvendor_id\t: {}\nmodel name\t: {}\nflags\t\t: fpu vme de pse tsc msr pae{}\n\n",
            rig.cpu.vendor,
            rig.cpu.model,
            if rig.cpu.hypervisor { " hypervisor" } else { "" }
        );
    }
    write(root, "proc/cpuinfo", cpuinfo);
    write(
        root,
        "proc/meminfo",
        format!(
            "MemTotal:       {} kB\nMemFree:        1000 kB\n",
            rig.mem_total_kib
        ),
    );
    let mut mounts = "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\nproc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n".to_string();
    if let Some(opts) = &rig.shm_options {
        mounts += &format!("tmpfs /dev/shm tmpfs {opts} 0 0\n");
    }
    write(root, "proc/mounts", mounts);
    for m in &rig.container_markers {
        write(root, m, "");
    }
    if let Some(d) = &rig.dmi {
        write(
            root,
            "sys/class/dmi/id/sys_vendor",
            format!("{}\n", d.sys_vendor),
        );
        write(
            root,
            "sys/class/dmi/id/product_name",
            format!("{}\n", d.product_name),
        );
    }
    fs::create_dir_all(root.join("sys/class/iommu")).unwrap();
    for u in &rig.iommu_units {
        fs::create_dir_all(root.join(format!("sys/class/iommu/{u}"))).unwrap();
    }
    fs::create_dir_all(root.join("sys/kernel/iommu_groups")).unwrap();
    fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
    if let Some(c) = &rig.nccl_conf {
        write(root, "etc/nccl.conf", c);
    }
    if let Some(k) = &rig.kern_log {
        write(root, "var/log/kern.log", k);
    } else if !rig.no_kernel_log {
        write(root, "dev/kmsg", kmsg_records(rig));
    }
    if rig.nouveau_loaded {
        fs::create_dir_all(root.join("sys/module/nouveau")).unwrap();
    }

    let mut group = 0u32;
    let mut add_device =
        |dev: Dev, vendor: u16, device: u16, class: u32, mut config: Vec<u8>| -> String {
            // The class code is also in the header (prog-if 0x09, subclass 0x0A, class 0x0B).
            config[9..12].copy_from_slice(&class.to_le_bytes()[..3]);
            let dir = device_dir(rig, dev.bdf, dev.parent);
            write(root, &format!("{dir}/vendor"), format!("0x{vendor:04x}\n"));
            write(root, &format!("{dir}/device"), format!("0x{device:04x}\n"));
            write(root, &format!("{dir}/class"), format!("0x{class:06x}\n"));
            write(root, &format!("{dir}/config"), config);
            link(root, &format!("sys/bus/pci/devices/{}", dev.bdf), &dir);
            if let Some(t) = &rig.iommu_domain {
                write(
                    root,
                    &format!("sys/kernel/iommu_groups/{group}/type"),
                    format!("{t}\n"),
                );
                link(
                    root,
                    &format!("{dir}/iommu_group"),
                    &format!("sys/kernel/iommu_groups/{group}"),
                );
                group += 1;
            }
            dir
        };
    let link_files = |dir: &str, l: &RigLink| {
        write(
            root,
            &format!("{dir}/current_link_speed"),
            format!("{}\n", l.speed),
        );
        write(
            root,
            &format!("{dir}/current_link_width"),
            format!("{}\n", l.width),
        );
        write(
            root,
            &format!("{dir}/max_link_speed"),
            format!("{}\n", l.max_speed),
        );
        write(
            root,
            &format!("{dir}/max_link_width"),
            format!("{}\n", l.max_width),
        );
    };
    for b in &rig.bridge {
        let cfg = config_space(b.vendor, 0x1453, &b.port, &b.link, b.acs_ctl, rig.root);
        let dir = add_device(
            Dev {
                bdf: &b.bdf,
                parent: &b.parent,
            },
            b.vendor,
            0x1453,
            0x060400,
            cfg,
        );
        link_files(&dir, &b.link);
        write(
            root,
            &format!("{dir}/aer_dev_correctable"),
            aer_text(&b.aer_correctable, &AER_COR, "TOTAL_ERR_COR"),
        );
        write(
            root,
            &format!("{dir}/aer_dev_nonfatal"),
            aer_text(&BTreeMap::new(), &AER_NONFATAL, "TOTAL_ERR_NONFATAL"),
        );
        write(
            root,
            &format!("{dir}/aer_dev_fatal"),
            aer_text(&BTreeMap::new(), &AER_NONFATAL, "TOTAL_ERR_FATAL"),
        );
    }
    for g in &rig.gpu {
        let mut cfg = config_space(0x10de, g.device_id, "endpoint", &g.link, None, true);
        let rebar_max = g
            .rebar_max_mib
            .unwrap_or(if g.bar1_mib > 256 { g.bar1_mib } else { 256 });
        let rebar_mask = (rebar_max > 0).then(|| add_rebar(&mut cfg, rebar_max, g.bar1_mib));
        if !rig.root {
            cfg.truncate(64);
        }
        let dir = add_device(
            Dev {
                bdf: &g.bdf,
                parent: &g.parent,
            },
            0x10de,
            g.device_id,
            0x030000,
            cfg,
        );
        link_files(&dir, &g.link);
        write(root, &format!("{dir}/numa_node"), format!("{}\n", g.numa));
        // drivers/gpu/drm/drm_sysfs.c: card<N>/card<N>-<type>-<n>/status; one disconnected
        // connector beside each connected one, as a card with several outputs has.
        for (i, conn) in g.displays.iter().enumerate() {
            let card = conn.split('-').next().unwrap_or("card0");
            write(
                root,
                &format!("{dir}/drm/{card}/{conn}/status"),
                "connected\n",
            );
            write(
                root,
                &format!("{dir}/drm/{card}/{card}-HDMI-A-{}/status", i + 1),
                "disconnected\n",
            );
        }
        if let Some(mask) = rebar_mask {
            write(
                root,
                &format!("{dir}/resource1_resize"),
                format!("{mask:016x}\n"),
            );
        }
        let bar1 = 0xe000000000u64;
        write(
            root,
            &format!("{dir}/resource"),
            format!(
                "0x00000000f6000000 0x00000000f6ffffff 0x0000000000040200\n0x{bar1:016x} 0x{:016x} 0x000000000014220c\n0x0000000000000000 0x0000000000000000 0x0000000000000000\n",
                bar1 + (g.bar1_mib << 20) - 1
            ),
        );
        write(
            root,
            &format!("{dir}/aer_dev_correctable"),
            aer_text(&g.aer_correctable, &AER_COR, "TOTAL_ERR_COR"),
        );
        write(
            root,
            &format!("{dir}/aer_dev_nonfatal"),
            aer_text(&g.aer_nonfatal, &AER_NONFATAL, "TOTAL_ERR_NONFATAL"),
        );
        write(
            root,
            &format!("{dir}/aer_dev_fatal"),
            aer_text(&BTreeMap::new(), &AER_NONFATAL, "TOTAL_ERR_FATAL"),
        );
        if let Some(d) = &g.driver {
            fs::create_dir_all(root.join(format!("sys/bus/pci/drivers/{d}"))).unwrap();
            link(
                root,
                &format!("{dir}/driver"),
                &format!("sys/bus/pci/drivers/{d}"),
            );
        }
        if g.audio {
            let audio_bdf = format!("{}.1", g.bdf.trim_end_matches(".0"));
            let cfg = config_space(0x10de, 0x1aef, "endpoint", &g.link, None, rig.root);
            add_device(
                Dev {
                    bdf: &audio_bdf,
                    parent: &g.parent,
                },
                0x10de,
                0x1aef,
                0x040300,
                cfg,
            );
        }
    }
    for o in &rig.other {
        let l = RigLink {
            speed: "8.0 GT/s PCIe".into(),
            width: 4,
            max_speed: "8.0 GT/s PCIe".into(),
            max_width: 4,
        };
        let cfg = config_space(o.vendor, o.device, "endpoint", &l, None, rig.root);
        add_device(
            Dev {
                bdf: &o.bdf,
                parent: &o.parent,
            },
            o.vendor,
            o.device,
            o.class,
            cfg,
        );
    }

    if let Some(d) = &rig.driver {
        write(
            root,
            "proc/driver/nvidia/version",
            format!(
                "{}\nGCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n",
                d.version_line
            ),
        );
        let version = d
            .version_line
            .split_whitespace()
            .find(|w| w.contains('.') && w.chars().all(|c| c.is_ascii_digit() || c == '.'))
            .unwrap_or("0");
        write(root, "sys/module/nvidia/version", format!("{version}\n"));
        let params: String = d
            .params
            .iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect();
        write(root, "proc/driver/nvidia/params", params);
        for (minor, g) in rig
            .gpu
            .iter()
            .enumerate()
            .filter(|(_, g)| g.driver.as_deref() == Some("nvidia"))
        {
            let mut info = format!(
                "Model: \t\t {}\nIRQ:   \t\t {}\nGPU UUID: \t {}\nVideo BIOS: \t 94.02.42.00.a9\nBus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\nBus Location: \t {}\nDevice Minor: \t {minor}\nGPU Excluded:\t No\n",
                g.name, 130 + minor, g.uuid, g.bdf
            );
            if let Some(gsp) = &d.gsp_firmware {
                info += &format!("GSP Firmware: \t {gsp}\n");
            }
            write(
                root,
                &format!("proc/driver/nvidia/gpus/{}/information", g.bdf),
                info,
            );
        }
    }
    if rig.pci_ids {
        let mut ids = "# pci.ids excerpt written by the test builder\n1002  Advanced Micro Devices, Inc. [AMD/ATI]\n\t2204  Not this one\n10de  NVIDIA Corporation\n".to_string();
        for g in &rig.gpu {
            ids += &format!("\t{:04x}  {}\n", g.device_id, g.name);
        }
        ids += "8086  Intel Corporation\n\t2204  Not this one either\n";
        write(root, "usr/share/misc/pci.ids", ids);
    }
}
