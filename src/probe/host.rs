//! Kernel, command line, CPU, IOMMU, virtualisation, container and /dev/shm facts.

use crate::facts::{Cpu, Host, Iommu, KernelCmdline, Probed, Shm, Virtualization, Why};
use crate::sysroot::Sysroot;

pub fn probe(root: &Sysroot) -> Host {
    let mem_total_bytes = root.read_string("/proc/meminfo").and_then(|m| {
        parse_meminfo_total(&m).map_or_else(
            || Probed::unknown(Why::Unparsable, "/proc/meminfo: no MemTotal line"),
            Probed::Known,
        )
    });
    Host {
        hostname: root.read_attr("/proc/sys/kernel/hostname"),
        kernel_release: root.read_attr("/proc/sys/kernel/osrelease"),
        os: os_name(root),
        cmdline: root
            .read_attr("/proc/cmdline")
            .map(|raw| KernelCmdline { raw }),
        cpu: root.read_string("/proc/cpuinfo").and_then(|s| {
            parse_cpuinfo(&s).map_or_else(
                || Probed::unknown(Why::Unparsable, "/proc/cpuinfo: no vendor_id line"),
                Probed::Known,
            )
        }),
        shm: root
            .read_string("/proc/mounts")
            .and_then(|m| shm_size(&m, mem_total_bytes.known().copied())),
        mem_total_bytes,
        iommu: Iommu {
            units: root.list_dir("/sys/class/iommu"),
            group_count: root.list_dir("/sys/kernel/iommu_groups").map(|g| g.len()),
        },
        virtualization: Virtualization {
            dmi_sys_vendor: root.read_attr("/sys/class/dmi/id/sys_vendor"),
            dmi_product_name: root.read_attr("/sys/class/dmi/id/product_name"),
            container_markers: container_markers(root),
        },
    }
}

fn os_name(root: &Sysroot) -> Probed<String> {
    let text = match root.read_string("/etc/os-release") {
        Probed::Known(t) => Probed::Known(t),
        Probed::Unknown { .. } => root.read_string("/usr/lib/os-release"),
    };
    text.and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| Probed::Known(v.trim().trim_matches('"').to_string()))
            .unwrap_or_else(|| Probed::unknown(Why::Unparsable, "os-release: no PRETTY_NAME"))
    })
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn parse_cpuinfo(text: &str) -> Option<Cpu> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let vendor = field("vendor_id")?;
    Some(Cpu {
        model: field("model name").unwrap_or_default(),
        logical_cpus: text
            .lines()
            .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
            .count(),
        hypervisor_flag: field("flags")
            .is_some_and(|f| f.split_whitespace().any(|x| x == "hypervisor")),
        vendor,
    })
}

/// The size of the tmpfs on /dev/shm from /proc/mounts. Without a `size=` option tmpfs uses
/// half of RAM (Documentation/filesystems/tmpfs.rst).
fn shm_size(mounts: &str, mem_total: Option<u64>) -> Probed<Shm> {
    let Some(opts) = mounts.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 4 && f[1] == "/dev/shm").then(|| f[3].to_string())
    }) else {
        return Probed::Known(Shm {
            mounted: false,
            size_bytes: 0,
            source: "no /dev/shm mount in /proc/mounts".into(),
        });
    };
    let size_opt = opts.split(',').find_map(|o| o.strip_prefix("size="));
    match size_opt {
        Some(v) => match parse_tmpfs_size(v, mem_total) {
            Some(size_bytes) => Probed::Known(Shm {
                mounted: true,
                size_bytes,
                source: format!("mount option size={v}"),
            }),
            None => Probed::unknown(Why::Unparsable, format!("/dev/shm size={v}")),
        },
        None => match mem_total {
            Some(m) => Probed::Known(Shm {
                mounted: true,
                size_bytes: m / 2,
                source: "tmpfs default: half of RAM".into(),
            }),
            None => Probed::unknown(
                Why::Unparsable,
                "/dev/shm has no size= and MemTotal is unknown",
            ),
        },
    }
}

fn parse_tmpfs_size(v: &str, mem_total: Option<u64>) -> Option<u64> {
    if let Some(pct) = v.strip_suffix('%') {
        return Some(mem_total? / 100 * pct.parse::<u64>().ok()?);
    }
    let (num, mult) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1u64 << 10),
        'm' | 'M' => (&v[..v.len() - 1], 1 << 20),
        'g' | 'G' => (&v[..v.len() - 1], 1 << 30),
        't' | 'T' => (&v[..v.len() - 1], 1 << 40),
        _ => (v, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn container_markers(root: &Sysroot) -> Vec<String> {
    let mut found: Vec<String> = ["/.dockerenv", "/run/.containerenv"]
        .into_iter()
        .filter(|m| root.exists(m))
        .map(String::from)
        .collect();
    if let Probed::Known(cg) = root.read_string("/proc/1/cgroup") {
        for kw in ["docker", "kubepods", "containerd", "lxc", "libpod"] {
            if cg.contains(kw) {
                found.push(format!("/proc/1/cgroup mentions {kw}"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shm_sizes() {
        let docker = "shm /dev/shm tmpfs rw,nosuid,nodev,noexec,relatime,size=65536k 0 0\n";
        assert_eq!(shm_size(docker, None).known().unwrap().size_bytes, 64 << 20);
        let host = "tmpfs /dev/shm tmpfs rw,nosuid,nodev,inode64 0 0\n";
        assert_eq!(
            shm_size(host, Some(64 << 30)).known().unwrap().size_bytes,
            32 << 30
        );
        let pct = "tmpfs /dev/shm tmpfs rw,size=10% 0 0\n";
        assert_eq!(shm_size(pct, Some(1000)).known().unwrap().size_bytes, 100);
        // Read, and no /dev/shm line: known to be unmounted (not "unknown").
        assert!(
            !shm_size("proc /proc proc rw 0 0\n", None)
                .known()
                .unwrap()
                .mounted
        );
        assert!(shm_size(docker, None).known().unwrap().mounted);
        assert!(shm_size("x /dev/shm tmpfs rw,size=12q 0 0", None)
            .known()
            .is_none());
    }

    #[test]
    fn cpuinfo_fields() {
        let t = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD Ryzen Threadripper 1920X\nflags\t\t: fpu hypervisor sse\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\n";
        let c = parse_cpuinfo(t).unwrap();
        assert!(c.is_amd() && c.hypervisor_flag);
        assert_eq!(c.logical_cpus, 2);
        assert!(parse_cpuinfo("garbage").is_none());
    }
}
