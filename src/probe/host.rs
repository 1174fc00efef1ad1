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
        cpu: root
            .read_string("/proc/cpuinfo")
            .and_then(|s| match parse_cpuinfo(&s) {
                Ok(cpu) => Probed::Known(cpu),
                Err(why) => Probed::unknown(Why::Unparsable, format!("/proc/cpuinfo: {why}")),
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
        kernel_log: super::kernel_log::probe(root),
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

/// MemTotal in bytes. Ours, not procfs-core's `Meminfo`: that one panics on a field name
/// ending in a multi-byte character (`field[..len - 1]`), and it fails the whole file unless
/// some twenty other lines (MemFree, Buffers, ..., VmallocChunk) are there too, where we need
/// one line.
fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Fields a `processor` block of /proc/cpuinfo may have before it is refused: x86 prints
/// about 30, arm64 8. procfs-core compares a block's fields with every other block's through
/// `Vec::contains`, so a crafted file of one block with 100k fields would take a minute.
const CPUINFO_MAX_BLOCK_LINES: usize = 256;

/// Vendor, model, logical CPUs and the hypervisor flag, through procfs-core's `CpuInfo`.
fn parse_cpuinfo(text: &str) -> Result<Cpu, String> {
    use procfs_core::FromRead;
    let longest = text.split("\n\n").map(|b| b.lines().count()).max();
    if let Some(n) = longest.filter(|&n| n > CPUINFO_MAX_BLOCK_LINES) {
        return Err(format!(
            "a block of {n} lines (a processor has at most {CPUINFO_MAX_BLOCK_LINES})"
        ));
    }
    let info = procfs_core::CpuInfo::from_read(std::io::Cursor::new(text.as_bytes()))
        .map_err(|_| "not in the kernel's key: value format".to_string())?;
    // A block is one CPU only if it has a `processor` line: procfs-core also keeps an empty
    // block for text before a blank line that no `processor` line began.
    let cpus: Vec<usize> = (0..info.num_cores())
        .filter(|&i| info.get_field(i, "processor").is_some())
        .collect();
    let first = *cpus.first().ok_or("no processor line")?;
    let vendor = info.vendor_id(first).ok_or("no vendor_id line")?;
    Ok(Cpu {
        vendor: vendor.to_string(),
        model: info.model_name(first).unwrap_or_default().to_string(),
        logical_cpus: cpus.len(),
        hypervisor_flag: info.flags(first).is_some_and(|f| f.contains(&"hypervisor")),
    })
}

/// The size of the tmpfs on /dev/shm from /proc/mounts, through procfs-core's `MountEntry`
/// parser. Without a `size=` option tmpfs uses half of RAM (Documentation/filesystems/tmpfs.rst).
fn shm_size(mounts: &str, mem_total: Option<u64>) -> Probed<Shm> {
    use procfs_core::FromRead;
    // A mount table longer than Sysroot's read bound ends in a cut line: parse the whole
    // lines. A shorter file that does not end in a newline was not written by the kernel.
    let whole = match mounts.rfind('\n') {
        Some(i) if mounts.len() as u64 >= crate::sysroot::MAX_READ => &mounts[..=i],
        _ => mounts,
    };
    let entries =
        match Vec::<procfs_core::MountEntry>::from_read(std::io::Cursor::new(whole.as_bytes())) {
            Ok(e) => e,
            Err(_) => {
                return Probed::unknown(
                    Why::Unparsable,
                    "/proc/mounts: a line is not `device mountpoint type options freq passno`",
                )
            }
        };
    // The last mount on /dev/shm is the one on top.
    let Some(shm) = entries.iter().rev().find(|m| m.fs_file == "/dev/shm") else {
        return Probed::Known(Shm {
            mounted: false,
            size_bytes: 0,
            source: "no /dev/shm mount in /proc/mounts".into(),
        });
    };
    match shm.fs_mntops.get("size") {
        Some(Some(v)) => match parse_tmpfs_size(v, mem_total) {
            Some(size_bytes) => Probed::Known(Shm {
                mounted: true,
                size_bytes,
                source: format!("mount option size={v}"),
            }),
            None => Probed::unknown(Why::Unparsable, format!("/dev/shm size={v}")),
        },
        Some(None) => Probed::unknown(Why::Unparsable, "/dev/shm: a size option without a value"),
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
        return (mem_total? / 100).checked_mul(pct.parse::<u64>().ok()?);
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
        assert!(parse_cpuinfo("garbage").is_err());
    }

    /// Two vCPUs of a KVM guest (an AWS g5 instance): the hypervisor flag, and a model name
    /// with parentheses and an `@`. Each block ends in a blank line, as the kernel writes it.
    #[test]
    fn cpuinfo_of_a_kvm_guest() {
        let block = |i: u32| {
            format!(
                "processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\n\
                 model name\t: AMD EPYC 7R32\nstepping\t: 0\nmicrocode\t: 0x830107a\n\
                 cpu MHz\t\t: 2799.998\ncache size\t: 512 KB\nphysical id\t: 0\n\
                 siblings\t: 2\ncore id\t\t: {i}\ncpu cores\t: 2\napicid\t\t: {i}\n\
                 initial apicid\t: {i}\nfpu\t\t: yes\nfpu_exception\t: yes\ncpuid level\t: 13\n\
                 wp\t\t: yes\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge \
                 mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt \
                 pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid \
                 aperfmperf tsc_known_freq pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe \
                 popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm \
                 sse4a misalignsse 3dnowprefetch topoext perfctr_core ssbd ibrs ibpb stibp vmmcall \
                 fsgsbase bmi1 avx2 smep bmi2 rdseed adx smap clflushopt clwb sha_ni xsaveopt \
                 xsavec xgetbv1 clzero xsaveerptr rdpru wbnoinvd arat npt nrip_save rdpid\n\
                 bugs\t\t: sysret_ss_attrs null_seg spectre_v1 spectre_v2 spec_store_bypass retbleed smt_rsb\n\
                 bogomips\t: 5599.99\nTLB size\t: 3072 4K pages\nclflush size\t: 64\n\
                 cache_alignment\t: 64\naddress sizes\t: 48 bits physical, 48 bits virtual\n\
                 power management:\n\n"
            )
        };
        let c = parse_cpuinfo(&(block(0) + &block(1))).unwrap();
        assert_eq!(
            (c.vendor.as_str(), c.model.as_str(), c.logical_cpus),
            ("AuthenticAMD", "AMD EPYC 7R32", 2)
        );
        assert!(c.is_amd() && c.hypervisor_flag);
        // Bare metal: no hypervisor flag, Intel's model name with its (R) and @.
        let metal = block(0)
            .replace(" hypervisor", "")
            .replace("AuthenticAMD", "GenuineIntel")
            .replace("AMD EPYC 7R32", "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz");
        let c = parse_cpuinfo(&metal).unwrap();
        assert!(c.is_intel() && !c.hypervisor_flag);
        assert_eq!(c.model, "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz");
    }

    /// arm64 (a GH200's Neoverse V2) prints no vendor_id and no model name: the CPU stays
    /// unknown with that reason, as before. Junk before the first processor line does not
    /// count as a CPU.
    #[test]
    fn cpuinfo_of_arm64_and_junk() {
        let arm = "processor\t: 0\nBogoMIPS\t: 2000.00\nFeatures\t: fp asimd evtstrm aes pmull \
                   sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop \
                   sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca \
                   pacg dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint \
                   svei8mm svebf16 i8mm bf16 dgh bti\nCPU implementer\t: 0x41\n\
                   CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd4f\n\
                   CPU revision\t: 0\n\nprocessor\t: 1\nBogoMIPS\t: 2000.00\n\
                   CPU implementer\t: 0x41\nCPU part\t: 0xd4f\n\n";
        assert_eq!(parse_cpuinfo(arm).unwrap_err(), "no vendor_id line");
        let junk = "\u{fffd}\u{fffd}:\n\nprocessor\t: 0\nvendor_id\t: GenuineIntel\nflags\t: fpu\n";
        let c = parse_cpuinfo(junk).unwrap();
        assert_eq!((c.logical_cpus, c.is_intel()), (1, true));
        assert_eq!(parse_cpuinfo("").unwrap_err(), "no processor line");
    }

    /// A crafted block of many fields is refused at once instead of procfs-core's minute; the
    /// largest block that passes, repeated to Sysroot's read bound, still parses quickly.
    #[test]
    fn cpuinfo_blocks_are_bounded() {
        let mut one = String::from("processor\t: 0\nvendor_id\t: GenuineIntel\n");
        for i in 0..100_000 {
            one += &format!("k{i}: v\n");
        }
        assert!(parse_cpuinfo(&one)
            .unwrap_err()
            .contains("a block of 100002 lines"));
        let mut block = String::from("processor\t: 0\nvendor_id\t: GenuineIntel\n");
        for i in 0..CPUINFO_MAX_BLOCK_LINES - 2 {
            block += &format!("k{i}: v\n");
        }
        block += "\n";
        let many = block.repeat((crate::sysroot::MAX_READ as usize) / block.len());
        let t = std::time::Instant::now();
        let c = parse_cpuinfo(&many).unwrap();
        assert!(c.logical_cpus > 300);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
    }

    /// /proc/mounts inside a Docker container: overlay with its long options, a mount point
    /// with an escaped space, and /dev/shm at Docker's default 64 MiB.
    #[test]
    fn shm_in_a_docker_container() {
        let mounts = "overlay / overlay rw,relatime,lowerdir=/var/lib/docker/overlay2/l/ABC:/var/lib/docker/overlay2/l/DEF,upperdir=/var/lib/docker/overlay2/0f3/diff,workdir=/var/lib/docker/overlay2/0f3/work 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /dev tmpfs rw,nosuid,size=65536k,mode=755,inode64 0 0
devpts /dev/pts devpts rw,nosuid,noexec,relatime,gid=5,mode=620,ptmxmode=666 0 0
sysfs /sys sysfs ro,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup cgroup2 ro,nosuid,nodev,noexec,relatime 0 0
mqueue /dev/mqueue mqueue rw,nosuid,nodev,noexec,relatime 0 0
shm /dev/shm tmpfs rw,nosuid,nodev,noexec,relatime,size=65536k,inode64 0 0
/dev/nvme0n1p2 /data\\040sets ext4 rw,relatime 0 0
/dev/nvme0n1p2 /etc/hosts ext4 rw,relatime 0 0
nvidia /proc/driver/nvidia tmpfs rw,nosuid,nodev,noexec,relatime,mode=555,inode64 0 0
";
        let s = shm_size(mounts, Some(64 << 30));
        let s = s.known().unwrap();
        assert_eq!((s.mounted, s.size_bytes), (true, 64 << 20));
        assert_eq!(s.source, "mount option size=65536k");
        // Kubernetes over-mounts a bigger emptyDir: the last one is on top.
        let k8s = format!("{mounts}tmpfs /dev/shm tmpfs rw,relatime,size=8g 0 0\n");
        assert_eq!(shm_size(&k8s, None).known().unwrap().size_bytes, 8 << 30);
    }

    #[test]
    fn shm_from_odd_mount_tables() {
        // A line that is not the kernel's six fields: unknown, not a guess from the rest.
        let bad = "tmpfs /dev/shm tmpfs rw,size=1g 0 0\nproc /proc\n";
        assert!(matches!(
            shm_size(bad, None),
            Probed::Unknown {
                unknown: Why::Unparsable,
                ..
            }
        ));
        assert!(shm_size("tmpfs /dev/shm tmpfs rw,size 0 0\n", None)
            .known()
            .is_none());
        assert!(shm_size(
            "tmpfs /dev/shm tmpfs rw,size=18446744073709551615% 0 0\n",
            Some(1 << 40)
        )
        .known()
        .is_none());
        // A table cut at the read bound: the whole lines count, the cut one is dropped.
        let line = "tmpfs /run/user/1000 tmpfs rw,nosuid,nodev,relatime,size=3281200k,mode=700,uid=1000,gid=1000,inode64 0 0\n";
        let mut big = "tmpfs /dev/shm tmpfs rw,size=2g 0 0\n".to_string();
        while (big.len() as u64) < crate::sysroot::MAX_READ {
            big += line;
        }
        big.truncate(crate::sysroot::MAX_READ as usize);
        assert!(!big.ends_with('\n'));
        assert_eq!(shm_size(&big, None).known().unwrap().size_bytes, 2 << 30);
    }

    /// A real meminfo's first lines (MemTotal in kB), and values that would overflow bytes.
    #[test]
    fn meminfo_total() {
        let m = "MemTotal:       263782400 kB\nMemFree:        251234560 kB\nMemAvailable:   258012344 kB\n";
        assert_eq!(parse_meminfo_total(m), Some(263_782_400 * 1024));
        assert_eq!(
            parse_meminfo_total("é 5\nMemTotal: 18446744073709551615 kB\n"),
            None
        );
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
    }
}
