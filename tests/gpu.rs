//! GPU inventory end to end: the real binary, its watchdog worker, and the fake driver
//! (fakegpu) standing in for libcuda and libnvidia-ml.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const HEALTHY: &str = "x570-2x3090-r535";

/// A fake rig matching the healthy X570 sysroot: two 3090s at 0b and 0c, driver 535.129.03.
fn fake_rig() -> Value {
    let gpu = |bus: &str, uuid: &str| {
        json!({"name": "NVIDIA GeForce RTX 3090", "bus_id": bus, "uuid": uuid, "memory_mib": 24576, "cc": [8, 6],
               "pcie": {"gen": 4, "width": 8, "max_gen": 4, "max_width": 8}, "bar1_mib": 32768, "persistence": true})
    };
    json!({"driver_version": "535.129.03", "cuda_version": 12020,
           "gpus": [gpu("0000:0b:00.0", "GPU-6a1b2c3d-0000-1111-2222-333344445555"), gpu("0000:0c:00.0", "GPU-7a1b2c3d-0000-1111-2222-333344445555")]})
}

/// `rigdoctor check --gpu --json` on the healthy sysroot with the fake driver emulating `rig`.
fn check(rig: &Value, extra_env: &[(&str, &str)], timeout: &str) -> (i32, Value, Duration) {
    let root = sysroot_of(&load_rig(HEALTHY));
    let rig_file = root.path().join("fake-rig.json");
    std::fs::write(&rig_file, rig.to_string()).unwrap();
    let mut c = rigdoctor();
    c.args([
        "check",
        "--gpu",
        "--json",
        "--timeout",
        timeout,
        "--sysroot",
    ])
    .arg(root.path())
    .env("LD_LIBRARY_PATH", fake_driver_dir())
    .env("FAKEGPU_RIG", &rig_file);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let t = Instant::now();
    let out = c.output().unwrap();
    let took = t.elapsed();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), report, took)
}

#[test]
fn healthy_rig_inventory_matches_sysfs_and_adds_nothing() {
    let (code, r, _) = check(&fake_rig(), &[], "10");
    assert_eq!(code, 0);
    // GeForce 3090s on 535 without NVLink: no P2P granted, which is normal and only a note.
    assert_eq!(
        summary(&r),
        ["info p2p-not-supported", "info pcie-slot-limited"]
    );
    let gpu = &r["facts"]["gpu"];
    let cuda: Vec<&str> = gpu["cuda"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["bus_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        cuda,
        ["0000:0b:00.0", "0000:0c:00.0"],
        "CUDA's upper-case ids normalised to sysfs form"
    );
    assert_eq!(
        gpu["cuda"]["devices"][0]["compute_capability"],
        json!([8, 6])
    );
    assert_eq!(gpu["nvml"]["driver_version"], "535.129.03");
    assert_eq!(gpu["nvml"]["devices"][1]["bus_id"], "0000:0c:00.0");
    assert_eq!(
        gpu["nvml"]["devices"][0]["bar1_bytes"],
        json!(32768u64 << 20)
    );
}

#[test]
fn device_order_mismatch() {
    let mut rig = fake_rig();
    rig["gpus"][1]["name"] = json!("NVIDIA GeForce RTX 4090");
    rig["gpus"][1]["cc"] = json!([8, 9]);
    rig["cuda_order"] = json!([1, 0]);
    let (_, r, _) = check(&rig, &[], "10");
    assert_eq!(
        summary(&r),
        [
            "warn device-order-mismatch",
            "info p2p-not-supported",
            "info pcie-slot-limited"
        ]
    );
    let f = text(findings(&r, "device-order-mismatch")[0]);
    assert!(
        f.contains("CUDA device 0 is 0000:0c:00.0 (NVIDIA GeForce RTX 4090)"),
        "{f}"
    );
    let (_, r, _) = check(&rig, &[("CUDA_DEVICE_ORDER", "PCI_BUS_ID")], "10");
    assert!(findings(&r, "device-order-mismatch").is_empty());
}

#[test]
fn kernel_module_and_library_mismatch() {
    let mut rig = fake_rig();
    rig["faults"] = json!({"nvml_init": "mismatch"});
    let (code, r, _) = check(&rig, &[], "10");
    assert_eq!(code, 1);
    assert_eq!(summary(&r)[0], "error driver-library-mismatch");
    assert!(
        findings(&r, "nvml-unavailable").is_empty() && findings(&r, "cuda-unavailable").is_empty()
    );
    // Versions that simply differ say the same.
    let mut rig = fake_rig();
    rig["driver_version"] = json!("545.29.06");
    let (_, r, _) = check(&rig, &[], "10");
    let f = text(findings(&r, "driver-library-mismatch")[0]);
    assert!(
        f.contains("kernel module 535.129.03") && f.contains("user-space library 545.29.06"),
        "{f}"
    );
}

#[test]
fn stub_libcuda_is_named() {
    let mut rig = fake_rig();
    rig["faults"] = json!({"cuda_init": "stub"});
    let (code, r, _) = check(&rig, &[], "10");
    assert_eq!(code, 1);
    let f = text(findings(&r, "cuda-unavailable")[0]);
    assert!(
        f.contains("CUDA_ERROR_STUB_LIBRARY") && f.contains("stubs directory"),
        "{f}"
    );
}

#[test]
fn hung_cuda_init_costs_one_deadline_and_nvml_still_reports() {
    let mut rig = fake_rig();
    rig["faults"] = json!({"cuda_init": "hang"});
    let (code, r, took) = check(&rig, &[], "1");
    assert_eq!(code, 1);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let f = findings(&r, "cuda-unavailable")[0];
    assert!(f["title"].as_str().unwrap().contains("hung"));
    assert_eq!(r["facts"]["gpu"]["cuda"]["unknown"], "hang");
    assert_eq!(
        r["facts"]["gpu"]["nvml"]["devices"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// `rigdoctor check --gpu --json` on a fixture rig with no NVIDIA libraries on the loader path.
fn check_without_libraries(rig: &str) -> Value {
    let empty = tempfile::tempdir().unwrap();
    let root = sysroot_of(&load_rig(rig));
    let out = rigdoctor()
        .args(["check", "--gpu", "--json", "--sysroot"])
        .arg(root.path())
        .env("LD_LIBRARY_PATH", empty.path())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn missing_libraries_with_a_loaded_module() {
    let r = check_without_libraries(HEALTHY);
    // This machine has no NVIDIA libraries (CI); a developer machine with them would find the real ones.
    if r["facts"]["gpu"]["cuda"]["unknown"] == "absent" {
        assert!(summary(&r).contains(&"error cuda-unavailable".to_string()));
        assert!(text(findings(&r, "cuda-unavailable")[0]).contains("libnvidia-compute"));
        assert!(summary(&r).contains(&"warn nvml-unavailable".to_string()));
    }
}

#[test]
fn persistence_off_is_a_note() {
    let mut rig = fake_rig();
    rig["gpus"][0]["persistence"] = json!(false);
    let (_, r, _) = check(&rig, &[], "10");
    assert!(summary(&r).contains(&"info persistence-off".to_string()));
    assert_eq!(
        findings(&r, "persistence-off")[0]["gpus"],
        json!(["0000:0b:00.0"])
    );
}

#[test]
fn sysroot_without_gpu_flag_runs_host_checks_only() {
    let root = sysroot_of(&load_rig(HEALTHY));
    let out = rigdoctor()
        .args(["check", "--json", "--sysroot"])
        .arg(root.path())
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["facts"].get("gpu").is_none());
}

#[test]
fn without_the_driver_loaded_gpu_rules_stay_quiet() {
    // nouveau box: no NVIDIA module; the GPU steps find nothing, and only driver-not-loaded speaks.
    let r = check_without_libraries("z790-2x3090-nouveau");
    for id in [
        "cuda-unavailable",
        "nvml-unavailable",
        "driver-library-mismatch",
        // `check` also runs bandwidth and NCCL: without CUDA they are "not run", not findings.
        "nccl-error",
        "nccl-hang",
        "nccl-not-found",
        "gpu-copy-failed",
    ] {
        assert!(findings(&r, id).is_empty(), "{id}");
    }
    if r["facts"]["gpu"]["cuda"]["unknown"] == "absent" {
        let lib = &r["facts"]["gpu"]["nccl"]["library"];
        assert_eq!(lib["unknown"], "not-run", "{lib}");
        assert!(text(lib).contains("CUDA is not usable"), "{lib}");
    }
}

/// WSL2 and containers: no module in this tree's /proc and /sys, but CUDA ran. The verdict
/// comes from what ran: a note that the module checks did not run, never a hard error.
#[test]
fn cuda_that_works_without_a_visible_module_is_a_note_not_an_error() {
    let mut rig = load_rig("epyc-2x4090-nonroot");
    rig.driver = None;
    rig.kernel = "5.15.153.1-microsoft-standard-WSL2".into();
    let name = "NVIDIA GeForce RTX 4090";
    let fake = serde_json::json!({"driver_version": "550.127.05", "cuda_version": 12040,
        "gpus": [gpu(name, "0000:41:00.0", 0), gpu(name, "0000:81:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "topology": "SYS"}]});
    let r = run_gpu("p2p", &rig, &fake, &[]);
    let f = findings(&r.report, "driver-not-loaded");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["severity"], "info", "{}", f[0]);
    let t = text(f[0]);
    assert!(
        t.contains("CUDA works (2 GPU(s))") && t.contains("WSL2"),
        "{t}"
    );
    assert_eq!(r.code, 0, "{:?}", summary(&r.report));
    // Without CUDA it stays the error it was.
    let r = host_json(sysroot_of(&rig).path(), &[]).1;
    assert_eq!(findings(&r, "driver-not-loaded")[0]["severity"], "error");
}

/// WSL2: CUDA runs on GPUs that the Linux kernel's PCI bus does not list. The PCIe checks did
/// not run, and the report says so in a note (the verdict is not a plain pass); with the GPUs
/// on the bus the note stays quiet.
#[test]
fn gpus_off_the_pci_bus_are_a_not_checked_note_on_wsl2() {
    let mut rig = load_rig("epyc-2x4090-nonroot");
    rig.driver = None;
    rig.kernel = "5.15.153.1-microsoft-standard-WSL2".into();
    rig.gpu.clear();
    let name = "NVIDIA GeForce RTX 4090";
    let fake = serde_json::json!({"driver_version": "550.127.05", "cuda_version": 12040,
        "gpus": [gpu(name, "0000:41:00.0", 0), gpu(name, "0000:81:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "topology": "SYS"}]});
    let r = run_gpu("p2p", &rig, &fake, &[]);
    let f = findings(&r.report, "not-checked");
    assert_eq!(f.len(), 1, "{:?}", summary(&r.report));
    assert_eq!(f[0]["severity"], "info");
    let t = text(f[0]);
    assert!(
        t.contains(
            "CUDA device 0 (NVIDIA GeForce RTX 4090, 0000:41:00.0) is not on this kernel's PCI bus"
        ),
        "{t}"
    );
    assert!(
        t.contains("paravirtualised through /dev/dxg") && t.contains("Windows host"),
        "{t}"
    );
    assert!(
        !t.contains("sudo"),
        "no root fix for what root cannot read: {t}"
    );
    assert_eq!(r.code, 0);
    let verdict = r.report["summary"]["verdict"].as_str().unwrap();
    assert!(verdict.contains("in what could be read"), "{verdict}");
    // The same GPUs on the bus: quiet.
    let (rig, _) = (load_rig("epyc-2x4090-nonroot"), ());
    let r = run_gpu("p2p", &rig, &fake, &[]);
    assert!(findings(&r.report, "not-checked").is_empty());
}
