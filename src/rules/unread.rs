//! Unknown is never healthy: a fact the rules need that could not be read is said as such, so
//! a run that could not look never ends in "no problems found".

use crate::code::Code;
use crate::facts::{Facts, Probed, Why};
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;

/// One line per unread fact: what could not be read, why, and which checks it costs.
pub fn not_checked(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let mut lines = Vec::new();
    let mut say = |p: Option<String>, what: &str, costs: &str| {
        if let Some(why) = p {
            lines.push(format!("{what} not read ({why}): {costs} not checked"));
        }
    };
    say(
        facts.pci.why_unknown(),
        "the PCI bus (/sys/bus/pci/devices)",
        "the GPUs' PCIe paths, IOMMU groups, ACS, link width/speed, AER counters and BAR1",
    );
    say(
        facts.host.cmdline.why_unknown(),
        "the kernel command line (/proc/cmdline)",
        "kernel parameters (iommu=, amd_iommu=, intel_iommu=, pcie_acs_override=)",
    );
    say(
        facts.host.iommu.units.why_unknown(),
        "the IOMMU units (/sys/class/iommu)",
        "whether an IOMMU is active",
    );
    say(
        facts.host.shm.why_unknown(),
        "/dev/shm (/proc/mounts)",
        "the size of NCCL's shared-memory transport",
    );
    // A bridge between GPUs whose config space reads all ones (not responding) or whose
    // capability list is broken: its ACS was not checked (root-only reads are acs-not-checked).
    if let Some(topo) = facts.pci.known() {
        for u in &topo.unidentified {
            say(
                Some(u.detail.clone()),
                &format!("the vendor and class of PCI device {}", u.bdf),
                "whether it is a GPU, and if it is, its path, IOMMU group, ACS, link, AER and BAR1",
            );
        }
        for b in &topo.bridges {
            let why = match &b.config {
                Probed::Unknown { unknown, .. } if *unknown != Why::NeedsRoot => {
                    b.config.why_unknown()
                }
                Probed::Known(c) => match &c.acs {
                    Probed::Unknown {
                        unknown: Why::Unparsable | Why::IoError,
                        ..
                    } => c.acs.why_unknown(),
                    _ => None,
                },
                _ => None,
            };
            say(
                why,
                &format!("the config space of bridge {}", b.bdf),
                "its ACS (P2P redirect) and port type",
            );
        }
    }
    let nvml_version = facts
        .gpu
        .as_ref()
        .and_then(|g| g.nvml.known())
        .and_then(|n| n.driver_version.known());
    if facts.driver.loaded && nvml_version.is_none() {
        say(
            facts.driver.version.why_unknown(),
            "the NVIDIA driver version (/proc/driver/nvidia/version)",
            "known-bad driver releases",
        );
    }
    let mut off = off_the_bus(facts);
    // The kernel log is root-only on most distributions (kernel.dmesg_restrict=1): like the
    // root-only config space, not reading it for that reason is a note; any other reason is
    // a warning like every other unread file.
    if let Some(why) = facts.host.kernel_log.why_unknown() {
        let line = format!("the kernel log (/dev/kmsg, journalctl -k) not read ({why}): Xid errors, GPUs fallen off the bus, IOMMU faults and the kernel's AER and link lines not checked");
        match &facts.host.kernel_log {
            Probed::Unknown {
                unknown: Why::NeedsRoot | Why::Absent,
                ..
            } => off.push(line),
            _ => lines.push(line),
        }
    }
    if lines.is_empty() && off.is_empty() {
        return Vec::new();
    }
    // Unread files are a warning (a run as root, or with the host's /sys, reads them); GPUs
    // that this kernel cannot see on its bus (WSL2) are a note: nothing here would change it.
    let mut f = if lines.is_empty() && off_the_bus(facts).is_empty() {
        Finding::new(
            Code::NotChecked,
            Severity::Info,
            "the kernel log could not be read: its checks did not run",
        )
    } else if lines.is_empty() {
        Finding::new(
            Code::NotChecked,
            Severity::Info,
            "GPUs CUDA uses are not on this kernel's PCI bus: their PCIe checks did not run",
        )
    } else {
        Finding::new(
            Code::NotChecked,
            Severity::Warn,
            format!(
                "{} part(s) of the machine could not be read: the checks that need them did not run",
                lines.len()
            ),
        )
    };
    for l in lines.iter().chain(&off) {
        f = f.evidence(l.clone());
    }
    if !lines.is_empty() {
        f = f.fix("run as root on the machine itself (sudo rigdoctor check); in a container, mount the host's /sys and /proc read-only, or run rigdoctor on the host");
    }
    if lines.is_empty() && facts.host.kernel_log.known().is_none() {
        f = f.fix("run as root (sudo rigdoctor check), or add your user to the adm or systemd-journal group so journalctl -k shows the kernel log");
    }
    if !off_the_bus(facts).is_empty() {
        f = f.fix(if wsl(facts) {
            "nothing inside WSL2 changes the PCIe path: IOMMU and ACS are set in the Windows host's BIOS, and kernel parameters of the WSL2 kernel (iommu=, pci=) do not apply; for these checks, run rigdoctor on Linux installed on the machine"
        } else {
            "for these checks, run rigdoctor where the GPUs are on the PCI bus: on the host, or in a container with the host's /sys mounted read-only (then --gpu)"
        });
    }
    vec![f.refs([
        "https://docs.kernel.org/PCI/sysfs-pci.html",
        "https://docs.nvidia.com/cuda/wsl-user-guide/index.html",
    ])]
}

/// A WSL2 kernel (its release names Microsoft).
fn wsl(facts: &Facts) -> bool {
    facts
        .host
        .kernel_release
        .known()
        .is_some_and(|k| k.to_ascii_lowercase().contains("microsoft"))
}

/// GPUs that CUDA ran on in this run but that this kernel's PCI bus does not list (WSL2's
/// paravirtualised GPUs, a container without the host's /sys): one line each, saying what of
/// theirs was not checked.
fn off_the_bus(facts: &Facts) -> Vec<String> {
    let (Some(cuda), Some(topo)) = (
        facts.gpu.as_ref().and_then(|g| g.cuda.known()),
        facts.pci.known(),
    ) else {
        return Vec::new();
    };
    let mut out: Vec<String> = cuda
        .devices
        .iter()
        .filter(|d| !topo.gpus.iter().any(|g| g.bdf.eq_ignore_ascii_case(&d.bus_id)))
        .map(|d| {
            format!(
                "CUDA device {} ({}, {}) is not on this kernel's PCI bus (/sys/bus/pci/devices): its PCIe link, path, ACS, IOMMU group, AER and BAR1 not checked",
                d.ordinal, d.name, d.bus_id
            )
        })
        .collect();
    if !out.is_empty() && wsl(facts) {
        out.push("a WSL2 kernel: the GPUs are paravirtualised through /dev/dxg, their PCIe path and IOMMU belong to the Windows host; the P2P and NCCL results of this run are what CUDA on WSL2 does".into());
    }
    out
}

/// `p2p-not-tested`: the P2P transfers were skipped on purpose (an accepted workaround makes
/// them moot). A note, so the pre-flight passes, but never silence.
pub fn p2p_not_tested(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let skipped: Vec<&String> = facts
        .collected
        .skipped
        .iter()
        .filter(|s| s.starts_with("P2P"))
        .collect();
    if skipped.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        Code::P2pNotTested,
        Severity::Info,
        "P2P transfers were not tested: the P2P workaround is accepted for this run",
    );
    for s in skipped {
        f = f.evidence(s.clone());
    }
    vec![f
        .fix("to test P2P again (after a driver change, say): run rigdoctor p2p, or check without --allow p2p-hang or with NCCL_P2P_DISABLE unset")
        .refs(["https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html#nccl-p2p-disable"])]
}
