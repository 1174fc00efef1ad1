//! The NVIDIA driver: loaded at all, bound to each GPU, and known-bad releases.

use super::{gpu_label, gpus};
use crate::code::Code;
use crate::facts::{Facts, GpuPci};
use crate::finding::{Finding, Severity};
use crate::knowledge::{is_geforce, DriverEntry, Knowledge, Version};

const BLACKLIST_NOUVEAU: &str = "printf 'blacklist nouveau\\noptions nouveau modeset=0\\n' | sudo tee /etc/modprobe.d/blacklist-nouveau.conf && sudo update-initramfs -u && sudo reboot";
const NVIDIA_INSTALL: &str =
    "https://docs.nvidia.com/datacenter/tesla/driver-installation-guide/index.html";

fn bound_to(g: &GpuPci) -> Option<&str> {
    g.driver.known().and_then(|d| d.as_deref())
}

pub fn not_loaded(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    if facts.driver.loaded {
        return Vec::new();
    }
    // CUDA ran and saw GPUs: the driver works, this tree just does not show its module (WSL2,
    // a container without the host's /proc and /sys). The verdict comes from what ran.
    let cuda_gpus = facts
        .gpu
        .as_ref()
        .and_then(|g| g.cuda.known())
        .map_or(0, |c| c.devices.len());
    if cuda_gpus > 0 {
        let wsl = facts
            .host
            .kernel_release
            .known()
            .is_some_and(|k| k.to_ascii_lowercase().contains("microsoft"));
        let mut f = Finding::new(
            Code::DriverNotLoaded,
            Severity::Info,
            format!(
                "CUDA works ({cuda_gpus} GPU(s)), but the NVIDIA kernel module is not visible here{}: the checks that read it did not run",
                if wsl { " (WSL2: the driver lives in Windows)" } else { "" }
            ),
        )
        .evidence("/proc/driver/nvidia/version and /sys/module/nvidia are absent; the GPU steps ran through CUDA and NVML")
        .refs([NVIDIA_INSTALL]);
        f = if wsl {
            f.evidence(format!(
                "kernel {}: a WSL2 kernel; GPUs reach it through /dev/dxg, so PCIe paths, ACS, IOMMU and AER are the Windows host's, not visible here",
                facts.host.kernel_release.known().map_or("?", String::as_str)
            ))
            .fix("the driver is the Windows NVIDIA driver: update it in Windows, and install no Linux NVIDIA driver inside WSL2 (the CUDA on WSL user guide)")
            .refs(["https://docs.nvidia.com/cuda/wsl-user-guide/index.html"])
        } else {
            f.fix("for the host checks (driver module, PCIe, ACS, IOMMU), run rigdoctor on the host, or mount the host's /proc and /sys read-only into the container")
        };
        return vec![f];
    }
    let gpus = gpus(facts);
    let title = if facts.pci.known().is_some() && gpus.is_empty() {
        "no NVIDIA driver is loaded, and no NVIDIA GPU is on the PCI bus"
    } else {
        "the NVIDIA driver is not loaded: CUDA, NVML and NCCL cannot run"
    };
    let mut f = Finding::new(Code::DriverNotLoaded, Severity::Error, title)
        .evidence("/proc/driver/nvidia/version and /sys/module/nvidia are absent")
        .gpus(gpus.iter().map(|g| g.bdf.clone()))
        .refs([NVIDIA_INSTALL]);
    match &facts.pci {
        crate::facts::Probed::Unknown { .. } => {
            f = f.evidence(format!(
                "PCI bus not readable: {}",
                facts.pci.why_unknown().unwrap_or_default()
            ));
        }
        _ if gpus.is_empty() => {
            f = f
                .evidence("no NVIDIA display-class device in /sys/bus/pci/devices")
                .fix("check that the card is seated and powered (`lspci -d 10de:` lists it); in a VM, that it is passed through; in a container, that it was started with the GPUs (docker run --gpus all)");
        }
        _ => {
            for g in gpus {
                f = f.evidence(format!(
                    "{} bound to: {}",
                    gpu_label(g),
                    bound_to(g).unwrap_or("no driver")
                ));
            }
            if gpus.iter().any(|g| bound_to(g) == Some("nouveau")) {
                f = f.fix(format!(
                    "nouveau holds the GPU: blacklist it first: {BLACKLIST_NOUVEAU}"
                ));
            }
            f = f
                .fix("install the driver: sudo ubuntu-drivers install (Ubuntu), or sudo apt install nvidia-driver-535, then reboot")
                .fix("if a driver is installed but did not load: sudo modprobe nvidia, then read the reason with sudo dmesg | grep -i -e nvrm -e nvidia (with Secure Boot on, `mokutil --sb-state`, the module must be signed)");
        }
    }
    vec![f]
}

pub fn nouveau_bound(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let held: Vec<&GpuPci> = gpus(facts)
        .iter()
        .filter(|g| bound_to(g) == Some("nouveau"))
        .collect();
    if held.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        Code::NouveauBound,
        Severity::Error,
        "the open-source nouveau driver holds the GPU: CUDA cannot use it",
    )
    .gpus(held.iter().map(|g| g.bdf.clone()))
    .fix(BLACKLIST_NOUVEAU)
    .fix("then install the NVIDIA driver if it is not installed: sudo ubuntu-drivers install")
    .refs([NVIDIA_INSTALL]);
    for g in held {
        f = f.evidence(format!(
            "{}: /sys/bus/pci/devices/{}/driver -> nouveau",
            gpu_label(g),
            g.bdf
        ));
    }
    vec![f]
}

pub fn gpu_not_bound(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    if !facts.driver.loaded {
        return Vec::new();
    }
    let mut out = Vec::new();
    for g in gpus(facts) {
        let f = match g.driver.known() {
            Some(None) => Finding::new(
                Code::GpuNotBound,
                Severity::Warn,
                format!("GPU {} has no driver bound: CUDA cannot see it", g.bdf),
            )
            .evidence(format!("{}: no /sys/bus/pci/devices/{}/driver link, although the nvidia module is loaded", gpu_label(g), g.bdf))
            .fix("read why the driver refused it: sudo dmesg | grep -i -e nvrm -e nvidia (e.g. 'fallen off the bus', or a GPU too new or too old for this driver branch)"),
            Some(Some(d)) if d.starts_with("vfio") || d == "pci-stub" => Finding::new(
                Code::GpuNotBound,
                Severity::Info,
                format!("GPU {} is reserved for VM passthrough ({d}): CUDA on this host cannot see it", g.bdf),
            )
            .evidence(format!("{}: bound to {d}", gpu_label(g)))
            .fix(format!("if this GPU should run CUDA here, remove its ID from vfio-pci.ids= (kernel command line or /etc/modprobe.d), or run: sudo driverctl unset-override {}", g.bdf)),
            _ => continue,
        };
        out.push(f.gpus([g.bdf.clone()]).refs([super::KERNEL_SYSFS_PCI]));
    }
    out
}

/// NVML's record of the GPU at `bdf`, when the GPU steps ran.
pub(super) fn nvml_device<'a>(facts: &'a Facts, bdf: &str) -> Option<&'a crate::facts::NvmlDevice> {
    facts
        .gpu
        .as_ref()?
        .nvml
        .known()?
        .devices
        .iter()
        .find(|d| d.bus_id.known().map(String::as_str) == Some(bdf))
}

/// How well a GPU fits an entry: every condition true, or some condition unknown.
enum Fit {
    Yes,
    Unsure(Vec<String>),
    No,
}

fn fit(entry: &DriverEntry, g: &GpuPci, facts: &Facts, kb: &Knowledge) -> Fit {
    let mut unsure = Vec::new();
    if !entry.families.is_empty() {
        match kb.family_of(g.device_id) {
            Some(fam) if entry.families.iter().any(|f| f == fam) => {}
            Some(_) => return Fit::No,
            None => return Fit::No,
        }
    }
    if entry.brands.iter().any(|b| b == "geforce") {
        // sysfs/pci.ids name first; NVML's name and brand when those are missing.
        let nvml = nvml_device(facts, &g.bdf);
        let name = g.name.known().or_else(|| nvml.and_then(|d| d.name.known()));
        let brand = nvml.and_then(|d| d.brand.known());
        match (name, brand) {
            (Some(n), _) if is_geforce(n) => {}
            (_, Some(b))
                if b.eq_ignore_ascii_case("geforce") || b.eq_ignore_ascii_case("titan") => {}
            (Some(_), _) | (None, Some(_)) => return Fit::No,
            (None, None) => unsure.push(format!(
                "{}: model name unknown, GeForce not confirmed",
                g.bdf
            )),
        }
    }
    if entry.gsp == Some(true) {
        match facts
            .driver
            .gpus
            .iter()
            .find(|d| d.bdf == g.bdf)
            .and_then(|d| d.gsp_enabled())
        {
            Some(true) => {}
            Some(false) => return Fit::No,
            None => unsure.push(format!("{}: GSP firmware state unknown", g.bdf)),
        }
    }
    if unsure.is_empty() {
        Fit::Yes
    } else {
        Fit::Unsure(unsure)
    }
}

pub fn known_bad(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    known_bad_matches(facts, kb)
        .into_iter()
        .map(|(_, f)| f)
        .collect()
}

/// Each knowledge-base entry that matches this driver and these GPUs, with its finding: other
/// rules rank causes by the entry itself (`not_fixed_by`), never by matching its text.
pub fn known_bad_matches<'k>(
    facts: &Facts,
    kb: &'k Knowledge,
) -> Vec<(&'k crate::knowledge::DriverEntry, Finding)> {
    // The kernel module's version; in a container without /proc/driver/nvidia, NVML's.
    let nvml_version = facts
        .gpu
        .as_ref()
        .and_then(|g| g.nvml.known())
        .and_then(|n| n.driver_version.known());
    let (text, source) = match (facts.driver.version.known(), nvml_version) {
        (Some(v), _) => (v, "/proc/driver/nvidia/version"),
        (None, Some(v)) => (v, "NVML"),
        (None, None) => return Vec::new(),
    };
    let Some(version) = Version::parse(text) else {
        return Vec::new();
    };
    let gpus = gpus(facts);
    let mut out = Vec::new();
    for entry in kb.drivers.iter().filter(|e| e.covers(&version)) {
        let mut matched = Vec::new();
        let mut unsure = Vec::new();
        for g in gpus {
            match fit(entry, g, facts, kb) {
                Fit::Yes => matched.push(g),
                Fit::Unsure(why) => {
                    matched.push(g);
                    unsure.extend(why);
                }
                Fit::No => {}
            }
        }
        // The PCI bus could not be read: which GPUs are installed is unknown, so the entry
        // may apply. Said as a warning, never silence (unknown is not healthy).
        let bus_unread = facts.pci.known().is_none() && matched.is_empty();
        if bus_unread {
            unsure.push(format!(
                "which GPUs are installed: the PCI bus was not read ({})",
                facts.pci.why_unknown().unwrap_or_default()
            ));
        } else if matched.len() < entry.min_gpus {
            continue;
        }
        let severity = if unsure.is_empty() {
            entry.severity
        } else {
            entry.severity.min(Severity::Warn)
        };
        let mut f = Finding::new(Code::DriverKnownBad, severity, entry.title.clone())
            .evidence(format!(
                "driver {version} ({source}) is in the affected range {}",
                entry.describe_range()
            ))
            .gpus(matched.iter().map(|g| g.bdf.clone()))
            .refs(entry.sources.iter().cloned());
        for g in &matched {
            let fam = kb.family_of(g.device_id).unwrap_or("unknown architecture");
            f = f.evidence(format!(
                "affected GPU: {} [10de:{:04x}, {fam}]",
                gpu_label(g),
                g.device_id
            ));
        }
        if !entry.observed_bad.is_empty() {
            let list: Vec<String> = entry.observed_bad.iter().map(|v| v.to_string()).collect();
            f = f.evidence(format!("reported bad: {}", list.join(", ")));
        }
        if let Some(good) = &entry.known_good {
            f = f.evidence(format!("reported good: {good}"));
        }
        f = f
            .evidence(format!("symptom: {}", entry.symptom))
            .evidence(format!(
                "knowledge-base entry {} (confidence {})",
                entry.id, entry.confidence
            ));
        for u in unsure {
            f = f.evidence(format!("not confirmed: {u}"));
        }
        for fix in &entry.fix {
            f = f.fix(fix.clone());
        }
        out.push((entry, f));
    }
    out
}
