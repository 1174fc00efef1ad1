//! The NVIDIA kernel driver as /proc/driver/nvidia and /sys/module show it.

use crate::facts::{DriverGpu, NvidiaDriver, Probed, Why};
use crate::sysroot::Sysroot;
use std::collections::BTreeMap;

pub fn probe(root: &Sysroot) -> NvidiaDriver {
    let version_text = root.read_string("/proc/driver/nvidia/version");
    let loaded = version_text.known().is_some() || root.exists("/sys/module/nvidia/version");
    let (version, flavour) = match &version_text {
        Probed::Known(t) => match parse_version_file(t) {
            Some((v, f)) => (Probed::Known(v), Probed::Known(f.to_string())),
            None => {
                let why = Probed::unknown(
                    Why::Unparsable,
                    "/proc/driver/nvidia/version: no NVRM version line",
                );
                (why.clone(), why)
            }
        },
        Probed::Unknown { .. } => {
            // Without /proc/driver/nvidia the module's own version is still in sysfs.
            let v = root.read_attr("/sys/module/nvidia/version");
            (v, version_text.clone().map(|_| String::new()))
        }
    };
    NvidiaDriver {
        loaded,
        version,
        flavour,
        gpus: driver_gpus(root),
        params: root
            .read_string("/proc/driver/nvidia/params")
            .map(|t| parse_colon_pairs(&t)),
        // /sys/module/<name>, not /proc/modules (procfs-core's `KernelModules`): sysfs answers
        // with one lookup and also shows a driver built into the kernel, which /proc/modules
        // never lists.
        nouveau_loaded: root.exists("/sys/module/nouveau"),
    }
}

/// `NVRM version: NVIDIA UNIX x86_64 Kernel Module  545.29.06  Thu Nov 16 ...` (proprietary) or
/// `NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release Build ...` (open).
pub fn parse_version_file(text: &str) -> Option<(String, &'static str)> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    let version = line.split_whitespace().find(|w| {
        w.contains('.')
            && w.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    })?;
    let flavour = if line.contains("Open Kernel Module") {
        "open"
    } else {
        "proprietary"
    };
    Some((version.to_string(), flavour))
}

fn driver_gpus(root: &Sysroot) -> Vec<DriverGpu> {
    let Probed::Known(dirs) = root.list_dir("/proc/driver/nvidia/gpus") else {
        return Vec::new();
    };
    dirs.into_iter()
        .map(|bdf| {
            let info = root
                .read_string(&format!("/proc/driver/nvidia/gpus/{bdf}/information"))
                .known()
                .map(|t| parse_colon_pairs(t))
                .unwrap_or_default();
            DriverGpu {
                bdf: bdf.to_ascii_lowercase(),
                model: info.get("Model").cloned(),
                uuid: info.get("GPU UUID").cloned(),
                vbios: info.get("Video BIOS").cloned(),
                gsp_firmware: info.get("GSP Firmware").cloned(),
            }
        })
        .collect()
}

/// `Key: value` lines, as in the driver's `information` and `params` files.
fn parse_colon_pairs(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lines_of_both_flavours() {
        let prop = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  545.29.06  Thu Nov 16 01:59:08 UTC 2023\nGCC version:  gcc version 12.3.0\n";
        assert_eq!(
            parse_version_file(prop),
            Some(("545.29.06".into(), "proprietary"))
        );
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Feb 22 01:25:25 UTC 2024\n";
        assert_eq!(parse_version_file(open), Some(("550.54.14".into(), "open")));
        let arm =
            "NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  570.86.10  Release Build\n";
        assert_eq!(parse_version_file(arm), Some(("570.86.10".into(), "open")));
        assert_eq!(parse_version_file("garbage"), None);
    }

    #[test]
    fn information_file() {
        let t = "Model: \t\t NVIDIA GeForce RTX 3090\nIRQ:   \t\t 139\nGPU UUID: \t GPU-1a2b\nVideo BIOS: \t 94.02.42.00.a9\nGSP Firmware: \t N/A\nBus Location: \t 0000:41:00.0\n";
        let m = parse_colon_pairs(t);
        assert_eq!(m["Model"], "NVIDIA GeForce RTX 3090");
        assert_eq!(m["Bus Location"], "0000:41:00.0");
        let g = DriverGpu {
            bdf: "x".into(),
            model: None,
            uuid: None,
            vbios: None,
            gsp_firmware: m.get("GSP Firmware").cloned(),
        };
        assert_eq!(g.gsp_enabled(), Some(false));
    }
}
