//! Each rule fires on the rig change that should trigger it and stays quiet without it.
//! Variants start from the healthy X570 rig unless the rule needs another.

mod common;

use common::*;
use serde_json::Value;

const HEALTHY: &str = "x570-2x3090-r535";

fn ids(report: &Value) -> Vec<String> {
    summary(report)
}

fn has(report: &Value, entry: &str) -> bool {
    ids(report).iter().any(|s| s == entry)
}

/// The healthy rig after `edit`, cut down to one GPU: nothing between GPUs left to break.
fn with_one_gpu(edit: impl FnOnce(&mut Rig)) -> Value {
    rig_findings(
        HEALTHY,
        |r| {
            edit(r);
            r.gpu.truncate(1);
        },
        &[],
    )
}

fn quiet(report: &Value, id: &str) -> bool {
    findings(report, id).is_empty()
}

#[test]
fn healthy_rig_is_quiet_for_every_warning_rule() {
    let r = rig_findings(HEALTHY, |_| {}, &[]);
    assert_eq!(ids(&r), ["info pcie-slot-limited"]);
}

#[test]
fn iommu_translation() {
    let translated = |r: &mut Rig| {
        r.iommu_units = vec!["ivhd0".into()];
        r.iommu_domain = Some("DMA".into());
    };
    let r = rig_findings(HEALTHY, translated, &[]);
    assert!(has(&r, "warn iommu-translation"));
    // AMD CPU: the "off" fix names amd_iommu.
    assert!(text(&findings(&r, "iommu-translation")[0]["fix"]).contains("amd_iommu=off"));
    // Passthrough domains are fine.
    let r = rig_findings(
        HEALTHY,
        |r| {
            translated(r);
            r.iommu_domain = Some("identity".into());
        },
        &[],
    );
    assert!(quiet(&r, "iommu-translation"));
    // One GPU: no peer traffic to break.
    let r = with_one_gpu(|r| translated(r));
    assert!(quiet(&r, "iommu-translation"));
    // iommu=pt on the command line but still translated: say the parameter did not take.
    let r = rig_findings(
        HEALTHY,
        |r| {
            translated(r);
            r.cmdline.push_str(" iommu=pt");
        },
        &[],
    );
    let f = text(findings(&r, "iommu-translation")[0]);
    assert!(f.contains("passthrough is requested"), "{f}");
}

#[test]
fn acs_redirect_and_not_checked() {
    let r = rig_findings(HEALTHY, |r| r.bridge[1].acs_ctl = Some(0x1d), &[]);
    assert!(has(&r, "warn acs-redirect"));
    let f = text(findings(&r, "acs-redirect")[0]);
    assert!(f.contains("pci=disable_acs_redir=0000:00:01.2"), "{f}");
    assert!(
        f.contains("setpci -s 0000:00:01.2 ECAP_ACS+0x6.w=0000"),
        "{f}"
    );
    // SrcValid alone does not redirect.
    let r = rig_findings(HEALTHY, |r| r.bridge[1].acs_ctl = Some(0x01), &[]);
    assert!(quiet(&r, "acs-redirect"));
    // No ACS capability at all: nothing to redirect, and nothing unchecked.
    let r = rig_findings(
        HEALTHY,
        |r| r.bridge.iter_mut().for_each(|b| b.acs_ctl = None),
        &[],
    );
    assert!(quiet(&r, "acs-redirect") && quiet(&r, "acs-not-checked"));
    // Not root: say it was not checked, never guess.
    let r = rig_findings(
        HEALTHY,
        |r| {
            r.root = false;
            r.bridge[1].acs_ctl = Some(0x1d);
        },
        &[],
    );
    assert!(quiet(&r, "acs-redirect"));
    assert!(has(&r, "info acs-not-checked"));
    assert!(text(findings(&r, "acs-not-checked")[0]).contains("sudo rigdoctor host"));
    // A bridge that is not between two GPUs does not matter: move GPU 1 under GPU 0's port.
    let r = with_one_gpu(|r| r.bridge[1].acs_ctl = Some(0x1d));
    assert!(quiet(&r, "acs-redirect") && quiet(&r, "acs-not-checked"));
}

#[test]
fn acs_in_a_vm_is_a_host_matter() {
    let r = rig_findings(
        HEALTHY,
        |r| {
            r.bridge[1].acs_ctl = Some(0x1d);
            r.cpu.hypervisor = true;
        },
        &[],
    );
    let f = text(findings(&r, "acs-redirect")[0]);
    assert!(
        f.contains("never disable ACS inside a VM") && !f.contains("setpci"),
        "{f}"
    );
}

#[test]
fn driver_known_bad() {
    let r545 =
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  545.29.02  Thu Nov 16 01:59:08 UTC 2023";
    let r = rig_findings(
        HEALTHY,
        |r| r.driver.as_mut().unwrap().version_line = r545.into(),
        &[],
    );
    assert!(has(&r, "error driver-known-bad"));
    // The same branch on a professional Ampere card is not the known problem.
    let r = rig_findings(
        HEALTHY,
        |r| {
            r.driver.as_mut().unwrap().version_line = r545.into();
            r.gpu.iter_mut().for_each(|g| {
                g.device_id = 0x2230;
                g.name = "NVIDIA RTX A6000".into();
            });
        },
        &[],
    );
    assert!(quiet(&r, "driver-known-bad"));
    // One GPU: a P2P hang needs two.
    let r = with_one_gpu(|r| r.driver.as_mut().unwrap().version_line = r545.into());
    assert!(quiet(&r, "driver-known-bad"));
    // The fix branch, and a later one, are quiet.
    for v in ["535.154.05", "550.54.14"] {
        let line = format!(
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {v}  Thu Nov 16 01:59:08 UTC 2023"
        );
        let r = rig_findings(
            HEALTHY,
            |r| r.driver.as_mut().unwrap().version_line = line.clone(),
            &[],
        );
        assert!(quiet(&r, "driver-known-bad"), "{v}");
    }
}

#[test]
fn driver_known_bad_early_ada_and_gsp() {
    let r = rig_findings(
        "epyc-2x4090-nonroot",
        |r| {
            r.driver.as_mut().unwrap().version_line =
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  525.60.11  Wed Nov 23 23:04:03 UTC 2022".into();
            r.driver.as_mut().unwrap().gsp_firmware = Some("525.60.11".into());
        },
        &[],
    );
    let got = findings(&r, "driver-known-bad");
    let titles: Vec<String> = got
        .iter()
        .map(|f| f["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got.len(), 2, "{titles:?}");
    assert!(titles.iter().any(|t| t.contains("GeForce RTX 40")));
    assert!(titles.iter().any(|t| t.contains("Xid 119")));
    // GSP off: the GSP entry does not apply.
    let r = rig_findings(
        "epyc-2x4090-nonroot",
        |r| {
            r.driver.as_mut().unwrap().version_line =
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  525.85.05  Wed Nov 23 23:04:03 UTC 2022".into();
            r.driver.as_mut().unwrap().gsp_firmware = Some("N/A".into());
            r.gpu.truncate(1);
        },
        &[],
    );
    assert!(quiet(&r, "driver-known-bad"));
}

#[test]
fn unknown_gpu_model_lowers_confidence_not_silence() {
    // No model in the driver's information file and no pci.ids: GeForce cannot be confirmed.
    let r = rig_findings(
        "x399-3x3090-r545",
        |r| {
            r.gpu
                .iter_mut()
                .for_each(|g| g.driver = Some("nvidia-unlisted".into()))
        },
        &[],
    );
    let f = &findings(&r, "driver-known-bad")[0];
    assert_eq!(f["severity"], "warn");
    assert!(text(f).contains("not confirmed"));
}

#[test]
fn driver_not_loaded_and_nouveau() {
    let r = rig_findings(HEALTHY, |r| r.driver = None, &[]);
    assert!(has(&r, "error driver-not-loaded"));
    assert!(quiet(&r, "nouveau-bound"));
    let r = rig_findings(
        HEALTHY,
        |r| {
            r.driver = None;
            r.nouveau_loaded = true;
            r.gpu
                .iter_mut()
                .for_each(|g| g.driver = Some("nouveau".into()));
        },
        &[],
    );
    assert!(has(&r, "error nouveau-bound"));
    assert!(text(findings(&r, "nouveau-bound")[0]).contains("blacklist nouveau"));
    let r = rig_findings(HEALTHY, |_| {}, &[]);
    assert!(quiet(&r, "driver-not-loaded") && quiet(&r, "nouveau-bound"));
}

#[test]
fn gpu_not_bound() {
    let r = rig_findings(HEALTHY, |r| r.gpu[1].driver = None, &[]);
    assert!(has(&r, "warn gpu-not-bound"));
    let r = rig_findings(HEALTHY, |r| r.gpu[1].driver = Some("vfio-pci".into()), &[]);
    assert!(has(&r, "info gpu-not-bound"));
    assert!(quiet(&rig_findings(HEALTHY, |_| {}, &[]), "gpu-not-bound"));
}

#[test]
fn link_degraded_vs_idle_speed_vs_slot() {
    // Width below both ends: degraded.
    let r = rig_findings(HEALTHY, |r| r.gpu[0].link.width = 4, &[]);
    assert!(has(&r, "warn pcie-link-degraded"));
    // The healthy rig's GPU 1 idles at 2.5 GT/s: never a warning.
    let healthy = load_rig(HEALTHY);
    assert_eq!(healthy.gpu[1].link.speed, "2.5 GT/s PCIe");
    let r = rig_findings(HEALTHY, |_| {}, &[]);
    assert!(quiet(&r, "pcie-link-degraded"));
    // x8 slot with an x16 card: a note, not a warning.
    assert!(
        text(findings(&r, "pcie-slot-limited")[0]).contains("port 0000:00:01.1 supports Gen4 x8")
    );
    // Full-width slots: no note.
    let r = rig_findings(
        HEALTHY,
        |r| r.bridge.iter_mut().for_each(|b| b.link.max_width = 16),
        &[],
    );
    assert!(
        has(&r, "warn pcie-link-degraded"),
        "x8 trained in an x16 slot is degraded"
    );
    let r = rig_findings(
        HEALTHY,
        |r| {
            r.bridge.iter_mut().for_each(|b| b.link.max_width = 16);
            r.gpu.iter_mut().for_each(|g| g.link.width = 16);
        },
        &[],
    );
    assert!(quiet(&r, "pcie-slot-limited") && quiet(&r, "pcie-link-degraded"));
}

#[test]
fn switch_uplink_is_judged_too() {
    // X99 PLX: the switch's upstream link trained at x8 under a x16 root port.
    let r = rig_findings("x99-2x3090-plx", |r| r.bridge[1].link.width = 8, &[]);
    let f: Vec<String> = findings(&r, "pcie-link-degraded")
        .iter()
        .map(|f| f["title"].to_string())
        .collect();
    assert!(
        f.iter().any(|t| t.contains("switch port 0000:01:00.0")),
        "{f:?}"
    );
}

#[test]
fn aer_errors() {
    let r = rig_findings(
        HEALTHY,
        |r| {
            r.gpu[0].aer_correctable.insert("RxErr".into(), 3);
        },
        &[],
    );
    assert!(has(&r, "warn pcie-aer-errors"));
    let r = rig_findings(
        HEALTHY,
        |r| {
            r.gpu[0].aer_nonfatal.insert("CmpltTO".into(), 1);
        },
        &[],
    );
    assert!(has(&r, "error pcie-aer-errors"));
    assert!(quiet(
        &rig_findings(HEALTHY, |_| {}, &[]),
        "pcie-aer-errors"
    ));
}

#[test]
fn small_bar1() {
    // The card lists 32 GiB in its Resizable BAR capability (config space, read as root):
    // firmware left BAR1 small.
    let r = rig_findings(
        HEALTHY,
        |r| {
            r.gpu[0].bar1_mib = 256;
            r.gpu[0].rebar_max_mib = Some(32768);
        },
        &[],
    );
    assert!(has(&r, "info small-bar1"));
    let ev = findings(&r, "small-bar1")[0]["evidence"].to_string();
    assert!(
        ev.contains("BAR1 256 MiB (sysfs resource, line 1); the card offers BAR1 sizes up to 32 GiB (config space): firmware can enlarge it"),
        "{ev}"
    );
    // No capability at all: the VBIOS comes first.
    let r = rig_findings(
        HEALTHY,
        |r| {
            r.gpu[0].bar1_mib = 256;
            r.gpu[0].rebar_max_mib = Some(0);
        },
        &[],
    );
    let ev = findings(&r, "small-bar1")[0]["evidence"].to_string();
    assert!(
        ev.contains("the card has no Resizable BAR capability (config space)"),
        "{ev}"
    );
    assert!(quiet(&rig_findings(HEALTHY, |_| {}, &[]), "small-bar1"));
}

#[test]
fn virtual_machine() {
    let r = rig_findings(
        HEALTHY,
        |r| {
            r.dmi = Some(common::sysroot::RigDmi {
                sys_vendor: "QEMU".into(),
                product_name: "Standard PC (Q35 + ICH9, 2009)".into(),
            });
        },
        &[],
    );
    assert!(has(&r, "info virtual-machine"));
    let r = rig_findings(HEALTHY, |r| r.cpu.hypervisor = true, &[]);
    assert!(has(&r, "info virtual-machine"));
    assert!(quiet(
        &rig_findings(HEALTHY, |_| {}, &[]),
        "virtual-machine"
    ));
}

#[test]
fn shm_too_small() {
    let docker = |r: &mut Rig| {
        r.shm_options = Some("rw,nosuid,nodev,noexec,relatime,size=65536k".into());
        r.container_markers = vec!["/.dockerenv".into()];
    };
    let r = rig_findings(HEALTHY, docker, &[]);
    assert!(has(&r, "warn shm-too-small"));
    assert!(text(findings(&r, "shm-too-small")[0]).contains("--ipc=host"));
    let r = rig_findings(HEALTHY, |r| r.shm_options = None, &[]);
    assert!(has(&r, "warn shm-too-small"));
    let r = rig_findings(HEALTHY, |r| r.shm_options = Some("rw,size=8g".into()), &[]);
    assert!(quiet(&r, "shm-too-small"));
    // One GPU: NCCL needs no shared memory between local ranks.
    let r = with_one_gpu(|r| docker(r));
    assert!(quiet(&r, "shm-too-small"));
}

#[test]
fn nccl_env_override() {
    let r = rig_findings(HEALTHY, |_| {}, &[("NCCL_P2P_DISABLE", "1")]);
    assert!(has(&r, "info nccl-env-override"));
    let r = rig_findings(
        HEALTHY,
        |_| {},
        &[("NCCL_P2P_DISABLE", "1"), ("NCCL_SHM_DISABLE", "1")],
    );
    assert!(has(&r, "warn nccl-env-override"));
    let r = rig_findings(HEALTHY, |_| {}, &[("CUDA_LAUNCH_BLOCKING", "1")]);
    assert!(has(&r, "warn nccl-env-override"));
    let r = rig_findings(
        HEALTHY,
        |r| r.nccl_conf = Some("# site defaults\nNCCL_P2P_LEVEL=PXB\n".into()),
        &[],
    );
    let f = text(findings(&r, "nccl-env-override")[0]);
    assert!(f.contains("NCCL_P2P_LEVEL=PXB (/etc/nccl.conf)"), "{f}");
    // Harmless settings stay quiet.
    let r = rig_findings(
        HEALTHY,
        |_| {},
        &[
            ("NCCL_DEBUG", "INFO"),
            ("NCCL_P2P_DISABLE", "0"),
            ("NCCL_P2P_LEVEL", "SYS"),
        ],
    );
    assert!(quiet(&r, "nccl-env-override"));
}

#[test]
fn not_checked_fires_for_an_unreadable_bus_and_cmdline() {
    let dir = sysroot_of(&load_rig("x399-3x3090-r545"));
    std::fs::remove_dir_all(dir.path().join("sys/bus/pci/devices")).unwrap();
    std::fs::remove_file(dir.path().join("proc/cmdline")).unwrap();
    std::fs::remove_file(dir.path().join("proc/mounts")).unwrap();
    let (code, r) = host_json(dir.path(), &[]);
    let f = findings(&r, "not-checked");
    assert_eq!(f.len(), 1, "{:?}", ids(&r));
    assert_eq!(f[0]["severity"], "warn");
    let t = text(f[0]);
    assert!(
        t.contains("the PCI bus (/sys/bus/pci/devices) not read"),
        "{t}"
    );
    assert!(
        t.contains("the kernel command line (/proc/cmdline) not read"),
        "{t}"
    );
    assert!(t.contains("/dev/shm (/proc/mounts) not read"), "{t}");
    // A missing /proc/mounts is not "/dev/shm is not mounted".
    assert!(quiet(&r, "shm-too-small"));
    // Driver 545 without the GPU list: the known-bad entries may apply, said as warnings.
    let bad = findings(&r, "driver-known-bad");
    assert!(
        !bad.is_empty() && bad.iter().all(|f| f["severity"] == "warn"),
        "{:?}",
        ids(&r)
    );
    assert!(text(bad[0]).contains("PCI bus was not read"));
    assert_eq!(code, 0);
    let out = rigdoctor()
        .args(["host", "--fail-on", "warn", "--sysroot"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("no problems found"));
    // The unedited rig reads everything.
    let whole = sysroot_of(&load_rig("x399-3x3090-r545"));
    assert!(quiet(&host_json(whole.path(), &[]).1, "not-checked"));
}

#[test]
fn a_bridge_that_stopped_answering_is_not_checked_not_healthy() {
    let dir = sysroot_of(&load_rig("x399-3x3090-r545"));
    let (_, before) = host_json(dir.path(), &[]);
    let bdf = before["facts"]["pci"]["bridges"][0]["bdf"]
        .as_str()
        .unwrap()
        .to_string();
    // What a device that fell off the bus returns for every read.
    let config = dir.path().join(format!("sys/bus/pci/devices/{bdf}/config"));
    std::fs::write(&config, vec![0xFFu8; 4096]).unwrap();
    let (_, r) = host_json(dir.path(), &[]);
    let f = findings(&r, "not-checked");
    assert_eq!(f.len(), 1, "{:?}", ids(&r));
    let t = text(f[0]);
    assert!(
        t.contains(&format!("bridge {bdf}")) && t.contains("does not respond"),
        "{t}"
    );
}

#[test]
fn a_gpu_whose_vendor_or_class_cannot_be_read_is_found_or_said() {
    let rig = load_rig("x399-3x3090-r545");
    let bdf = rig.gpu[0].bdf.clone();
    let dir = sysroot_of(&rig);
    let dev = dir.path().join(format!("sys/bus/pci/devices/{bdf}"));
    std::fs::remove_file(dev.join("vendor")).unwrap();
    std::fs::remove_file(dev.join("class")).unwrap();
    // The config space header (readable by any user) still names it: the GPU is kept.
    let (_, r) = host_json(dir.path(), &[]);
    let gpus = r["facts"]["pci"]["gpus"].as_array().unwrap();
    assert!(gpus.iter().any(|g| g["bdf"] == bdf.as_str()), "{gpus:?}");
    assert!(quiet(&r, "not-checked"));
    // With the header unreadable too, it is neither dropped silently nor a pass.
    std::fs::remove_file(dev.join("config")).unwrap();
    let (_, r) = host_json(dir.path(), &[]);
    let f = findings(&r, "not-checked");
    assert_eq!(f.len(), 1, "{:?}", ids(&r));
    let t = text(f[0]);
    assert!(
        t.contains(&format!("PCI device {bdf} not read")) && t.contains("whether it is a GPU"),
        "{t}"
    );
    // A device that stopped answering is said as such.
    std::fs::write(dev.join("config"), vec![0xFFu8; 256]).unwrap();
    let (_, r) = host_json(dir.path(), &[]);
    assert!(text(findings(&r, "not-checked")[0]).contains("does not respond"));
}

#[test]
fn a_link_speed_of_inf_is_unparsable_and_the_report_reads_back() {
    let rig = load_rig("x399-3x3090-r545");
    let bdf = rig.gpu[0].bdf.clone();
    let dir = sysroot_of(&rig);
    let dev = dir.path().join(format!("sys/bus/pci/devices/{bdf}"));
    std::fs::write(dev.join("current_link_speed"), "inf GT/s PCIe\n").unwrap();
    std::fs::write(dev.join("max_link_speed"), "NaN GT/s PCIe\n").unwrap();
    let out = rigdoctor()
        .args(["host", "--json", "--sysroot"])
        .arg(dir.path())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = &report["facts"]["pci"]["gpus"][0]["link"];
    assert_eq!(g["current_speed_gts"]["unknown"], "unparsable", "{g}");
    let file = dir.path().join("report.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let back = rigdoctor().arg("diagnose").arg(&file).output().unwrap();
    assert_ne!(
        back.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
}
