//! `rigdoctor p2p` end to end: fixture sysroots for the host facts, the fake driver for the
//! GPUs, real transfers verified byte for byte, the watchdog killing hung pairs.

mod common;

use common::sysroot::Rig;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// `rigdoctor p2p --gpu` on `sysroot` with the fake driver emulating `fake`.
fn p2p(sysroot: &Rig, fake: &Value, args: &[&str]) -> Run {
    run_gpu("p2p", sysroot, fake, args)
}

/// "path verdict" per sub-test of a test of the JSON report.
fn verdicts(test: &Value) -> Vec<String> {
    test["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p["path"].as_str().unwrap(),
                p["verdict"].as_str().unwrap()
            )
        })
        .collect()
}

fn ids(r: &Value) -> Vec<String> {
    summary(r)
        .into_iter()
        .filter(|s| s.contains("p2p") || s.contains("nvlink") || s.contains("copy-corrupt"))
        .collect()
}

fn tests_of(r: &Value) -> Vec<(i64, i64, String)> {
    r["facts"]["gpu"]["p2p"]["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["from"].as_i64().unwrap(),
                t["to"].as_i64().unwrap(),
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The seed story: 3x3090 on X399, IOMMU translating, driver 545; one pair hangs both ways.
#[test]
fn x399_three_3090s_one_pair_hangs() {
    let (rig, fake) = x399_one_pair_hangs();
    let deadline = 1.5;
    let r = p2p(&rig, &fake, &["--timeout", "1.5"]);
    assert_eq!(r.code, 1);
    assert_eq!(ids(&r.report), ["error p2p-hang"]);
    let statuses = tests_of(&r.report);
    assert_eq!(statuses.len(), 6);
    // One deadline per pair: 0->1 hung, so 1->0 was not tried (and is said so).
    for (from, to, status) in &statuses {
        let want = match (from, to) {
            (0, 1) => "hang",
            (1, 0) => "skipped",
            _ => "tested",
        };
        assert_eq!(status, want, "{from}->{to}");
    }
    assert!(
        r.took < Duration::from_secs_f64(deadline + 6.0),
        "{:?}",
        r.took
    );
    let workers = r.report["facts"]["gpu"]["workers"].as_array().unwrap();
    let killed = workers
        .iter()
        .filter(|w| w["exit"]["status"] == "killed-after-hang")
        .count();
    assert_eq!(killed, 1, "{workers:?}");
    let f = text(findings(&r.report, "p2p-hang")[0]);
    assert!(
        f.contains(
            "GPU 0 (0000:0a:00.0) -> GPU 1 (0000:42:00.0): no answer from the copy engine over P2P"
        ),
        "{f}"
    );
    assert!(
        f.contains("GPU 1 (0000:42:00.0) -> GPU 0 (0000:0a:00.0): not tried: P2P 0->1 hung, so this pair costs one deadline, not two"),
        "{f}"
    );
    assert!(
        f.contains("staged copy through host memory (the control): correct"),
        "{f}"
    );
    // The knowledge base matched this release and says the IOMMU does not help: the driver is
    // cause 1 and the IOMMU, although translating, is not ranked.
    assert!(
        f.contains("likely cause 1: driver 545 hangs NCCL peer-to-peer on GeForce Ampere GPUs (see driver-known-bad)"),
        "{f}"
    );
    assert!(
        f.contains("the IOMMU translates the DMA of 0000:0a:00.0, 0000:42:00.0, but the reports behind r545-geforce-ampere-p2p-hang say switching it off does not help"),
        "{f}"
    );
    assert!(!f.contains("iommu=pt"), "{f}");
    assert!(f.contains("NCCL_P2P_DISABLE=1"), "{f}");
    // The matrix says it at a glance.
    shows(&r, "GPU0  X         SYS HANG  SYS ok");
    shows(&r, "GPU1  SYS SKIP  X         PHB ok");
}

/// An early RTX 4090 driver grants P2P and delivers zeros.
#[test]
fn rtx4090_early_driver_returns_zeros() {
    let (rig, fake) = rtx4090_early_driver();
    let r = p2p(&rig, &fake, &[]);
    assert_eq!(r.code, 1);
    assert_eq!(ids(&r.report), ["error p2p-corrupt"]);
    let f = text(findings(&r.report, "p2p-corrupt")[0]);
    assert!(f.contains("(2 of 2 directions tested)"), "{f}");
    for path in [
        "copy engine over P2P",
        "SM kernel on the destination reading",
        "SM kernel on the source writing",
    ] {
        assert!(
            f.contains(&format!(
                "GPU 0 (0000:41:00.0) -> GPU 1 (0000:81:00.0), {path}"
            )),
            "{path}: {f}"
        );
    }
    // Every byte but the pattern's own zero bytes.
    assert!(f.contains(" of 16777216 bytes wrong from offset 0"), "{f}");
    assert!(
        f.contains(&format!("got {}): zeros", "00".repeat(16))),
        "{f}"
    );
    assert!(f.contains("GeForce GPUs without NVLink"), "{f}");
    assert!(
        !f.contains("IOMMU translates"),
        "iommu=pt: identity domains: {f}"
    );
    assert!(f.contains("ACS not checked"), "non-root run: {f}");
    shows(&r, "SYS ZEROS");
}

/// Two NVLinked 3090s: everything works, nothing to say about P2P.
#[test]
fn nvlinked_3090s_are_healthy() {
    let rig = load_rig("x570-2x3090-r535");
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"driver_version": "535.129.03", "cuda_version": 12020,
        "gpus": [gpu(name, "0000:0b:00.0", 0), gpu(name, "0000:0c:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "nvlinks": 4, "topology": "PHB"}]});
    let r = p2p(&rig, &fake, &[]);
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(ids(&r.report).is_empty(), "{:?}", summary(&r.report));
    for (_, _, status) in tests_of(&r.report) {
        assert_eq!(status, "tested");
    }
    assert_eq!(
        verdicts(&r.report["facts"]["gpu"]["p2p"]["tests"][0]),
        ["staged ok", "ce ok", "sm-read ok", "sm-write ok"]
    );
    shows(&r, "GPU0  X       NV4 ok");
    let md = rigdoctor()
        .args(["diagnose", "--format", "markdown", "-"])
        .write_stdin(r.report.to_string())
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(
        md.contains("**P2P, tested**\n\n|  | GPU0 | GPU1 |\n|---|---|---|\n| GPU0 | X | NV4 ok |"),
        "{md}"
    );
    shows(&r, "GPU0  X       yes OK");
    let local = r.report["facts"]["gpu"]["p2p"]["local"].as_array().unwrap();
    assert_eq!(local.len(), 2, "a self-test per GPU");
    for t in local {
        assert_eq!(verdicts(t), ["local-ce ok", "local-sm ok"], "{t}");
    }
    let links = &r.report["facts"]["gpu"]["nvml"]["devices"][0]["nvlinks"];
    assert_eq!(links.as_array().unwrap().len(), 4);
    assert_eq!(links[0]["remote_bus_id"], "0000:0c:00.0");
}

/// Four GPUs, one direction of one pair corrupts: exactly that direction is named.
#[test]
fn four_gpus_one_corrupt_direction() {
    let mut rig = load_rig("x399-3x3090-r545");
    let mut bridge = rig.bridge.last().unwrap().clone();
    bridge.bdf = "0000:40:07.1".into();
    let mut fourth = rig.gpu.last().unwrap().clone();
    fourth.bdf = "0000:44:00.0".into();
    fourth.parent = bridge.bdf.clone();
    rig.bridge.push(bridge);
    rig.gpu.push(fourth);
    let name = "NVIDIA GeForce RTX 3090";
    let gpus: Vec<Value> = ["0a", "42", "43", "44"]
        .iter()
        .enumerate()
        .map(|(i, b)| gpu(name, &format!("0000:{b}:00.0"), i))
        .collect();
    // 2 -> 3 corrupts; 3 -> 2 (the next entry, first match wins) and every other pair work.
    let mut pairs = vec![
        json!({"a": 2, "b": 3, "fault": "corrupt", "directed": true}),
        json!({"a": 3, "b": 2}),
    ];
    for a in 0..4 {
        for b in a + 1..4 {
            if (a, b) != (2, 3) {
                pairs.push(json!({"a": a, "b": b}));
            }
        }
    }
    let fake =
        json!({"driver_version": "545.29.06", "cuda_version": 12030, "gpus": gpus, "pairs": pairs});
    let r = p2p(&rig, &fake, &[]);
    assert_eq!(r.code, 1);
    assert_eq!(ids(&r.report), ["error p2p-corrupt"]);
    assert_eq!(tests_of(&r.report).len(), 12);
    let f = findings(&r.report, "p2p-corrupt")[0];
    let ev: Vec<&str> = f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .filter(|e| e.contains("bytes wrong"))
        .collect();
    assert_eq!(ev.len(), 3, "CE, SM read and SM write: {ev:?}");
    for e in &ev {
        assert!(
            e.starts_with("GPU 2 (0000:43:00.0) -> GPU 3 (0000:44:00.0)"),
            "{e}"
        );
        assert!(e.contains("4096 of 16777216 bytes wrong"), "{e}");
        assert!(e.ends_with("garbage"), "{e}");
    }
    assert!(text(f).contains("(1 of 12 directions tested)"));
    shows(&r, "GPU2  PHB ok  PHB ok  X       PHB CORRUPT");
}

#[test]
fn staged_copy_corrupt_is_not_blamed_on_p2p() {
    let rig = load_rig("x570-2x3090-r535");
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"driver_version": "535.129.03", "gpus": [gpu(name, "0000:0b:00.0", 0), gpu(name, "0000:0c:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "fault": "corrupt-always", "nvlinks": 4}]});
    let r = p2p(&rig, &fake, &[]);
    assert_eq!(ids(&r.report), ["error copy-corrupt"]);
    let f = text(findings(&r.report, "copy-corrupt")[0]);
    assert!(f.contains("staged copy through host memory"), "{f}");
    assert!(!f.contains("export NCCL_P2P_DISABLE"), "{f}");
}

#[test]
fn enable_fails_is_reported() {
    let rig = load_rig("x570-2x3090-r535");
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"driver_version": "535.129.03",
        "gpus": [gpu(name, "0000:0b:00.0", 0), gpu(name, "0000:0c:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "fault": "enable-fails"}]});
    let r = p2p(&rig, &fake, &[]);
    assert_eq!(r.code, 1);
    assert_eq!(ids(&r.report), ["error p2p-enable-failed"]);
    let f = text(findings(&r.report, "p2p-enable-failed")[0]);
    assert!(f.contains("cuCtxEnablePeerAccess in GPU 1 (0000:0c:00.0)'s context for GPU 0 (0000:0b:00.0)'s memory: CUDA_ERROR_PEER_ACCESS_UNSUPPORTED"), "{f}");
    shows(&r, "NO-ENABLE");
}

#[test]
fn geforce_without_p2p_is_a_note() {
    let rig = load_rig("x570-2x3090-r535");
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"driver_version": "535.129.03", "gpus": [gpu(name, "0000:0b:00.0", 0), gpu(name, "0000:0c:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "access": false, "nvml_status": "CNS"}]});
    let r = p2p(&rig, &fake, &[]);
    assert_eq!(r.code, 0, "{:?}", summary(&r.report));
    assert_eq!(ids(&r.report), ["info p2p-not-supported"]);
    let f = text(findings(&r.report, "p2p-not-supported")[0]);
    assert!(f.contains("GPU 0 (0000:0b:00.0) <-> GPU 1 (0000:0c:00.0): no P2P (NVML read CNS, write CNS, topology PHB)"), "{f}");
    assert!(tests_of(&r.report).is_empty());
    shows(&r, "GPU0  X      PHB -");
}

#[test]
fn half_seated_nvlink_bridge() {
    let rig = load_rig("x570-2x3090-r535");
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"driver_version": "535.129.03", "gpus": [gpu(name, "0000:0b:00.0", 0), gpu(name, "0000:0c:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "nvlinks": 4, "nvlinks_down": 2}]});
    let r = p2p(&rig, &fake, &[]);
    assert_eq!(ids(&r.report), ["warn nvlink-inactive"]);
    let f = text(findings(&r.report, "nvlink-inactive")[0]);
    assert!(
        f.contains("0000:0b:00.0: 2 of 4 links active; down: link 0, 1"),
        "{f}"
    );
    shows(&r, "NV2 ok");
}

#[test]
fn devices_select_the_pairs_and_bad_ordinals_are_explained() {
    let rig = load_rig("x399-3x3090-r545");
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"gpus": [gpu(name, "0000:0a:00.0", 0), gpu(name, "0000:42:00.0", 1), gpu(name, "0000:43:00.0", 2)],
        "pairs": [{"a": 0, "b": 1, "fault": "hang"}, {"a": 1, "b": 2}, {"a": 0, "b": 2}]});
    let r = p2p(&rig, &fake, &["--devices", "2,1"]);
    assert_eq!(
        tests_of(&r.report),
        [(2, 1, "tested".to_string()), (1, 2, "tested".to_string())]
    );
    shows(&r, "        GPU2    GPU1");
    // A device CUDA does not have is a usage error (exit 2, one line naming the devices), never
    // "no problems found".
    let root = sysroot_of(&rig);
    let rig_file = root.path().join("fake-rig.json");
    std::fs::write(&rig_file, fake.to_string()).unwrap();
    let out = rigdoctor()
        .args(["p2p", "--gpu", "--devices", "0,7", "--sysroot"])
        .arg(root.path())
        .env("LD_LIBRARY_PATH", fake_driver_dir())
        .env("FAKEGPU_RIG", &rig_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--devices 7: CUDA sees 3 device(s): 0: NVIDIA GeForce RTX 3090"),
        "{err}"
    );
    // One error line, the last; before it only the log's progress lines.
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("rigdoctor: error: --devices 7"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn no_gpu_and_no_library_give_clear_answers() {
    let rig = load_rig("x570-2x3090-r535");
    let r = p2p(
        &rig,
        &json!({"driver_version": "535.129.03", "gpus": []}),
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(
        summary(&r.report).contains(&"error cuda-unavailable".to_string()),
        "{:?}",
        summary(&r.report)
    );
    assert!(
        r.text
            .contains("P2P not tested: CUDA is not usable: cuInit: CUDA_ERROR_NO_DEVICE"),
        "{}",
        r.text
    );

    let root = sysroot_of(&rig);
    let empty = tempfile::tempdir().unwrap();
    let out = rigdoctor()
        .args(["p2p", "--gpu", "--sysroot"])
        .arg(root.path())
        .env("LD_LIBRARY_PATH", empty.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("P2P not tested: CUDA is not usable: libcuda.so.1 not loadable"),
        "{stdout}"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// A kernel fault over P2P poisons the worker's context: that pair reports it, the worker
/// leaves, and the remaining pairs run in a fresh one.
#[test]
fn sticky_kernel_fault_loses_one_worker_not_the_run() {
    let rig = load_rig("x399-3x3090-r545");
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"driver_version": "545.29.06",
        "gpus": [gpu(name, "0000:0a:00.0", 0), gpu(name, "0000:42:00.0", 1), gpu(name, "0000:43:00.0", 2)],
        "pairs": [{"a": 0, "b": 1, "fault": "illegal-address", "directed": true}, {"a": 1, "b": 0}, {"a": 1, "b": 2}, {"a": 0, "b": 2}]});
    let r = p2p(&rig, &fake, &[]);
    assert_eq!(ids(&r.report), ["error p2p-error"]);
    let statuses = tests_of(&r.report);
    assert_eq!(statuses.len(), 6);
    assert!(
        statuses.iter().all(|(_, _, s)| s == "tested"),
        "{statuses:?}"
    );
    assert_eq!(
        verdicts(&r.report["facts"]["gpu"]["p2p"]["tests"][0]),
        ["staged ok", "ce ok", "sm-read error", "sm-write skipped"]
    );
    let f = text(findings(&r.report, "p2p-error")[0]);
    assert!(f.contains("GPU 0 (0000:0a:00.0) -> GPU 1 (0000:42:00.0), SM kernel on the destination reading peer memory: cuCtxSynchronize after copy_v4: CUDA_ERROR_ILLEGAL_ADDRESS"), "{f}");
    shows(&r, "GPU0  X       PHB ERROR  PHB ok");
}

/// sysfs has no model name (no pci.ids, no driver information file): NVML's name confirms the
/// GeForce condition of the known-bad entry, so the finding keeps its full severity.
#[test]
fn nvml_confirms_what_sysfs_cannot() {
    let mut rig = load_rig("x399-3x3090-r545");
    rig.gpu
        .iter_mut()
        .for_each(|g| g.driver = Some("nvidia-unlisted".into()));
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"driver_version": "545.29.06",
        "gpus": [gpu(name, "0000:0a:00.0", 0), gpu(name, "0000:42:00.0", 1), gpu(name, "0000:43:00.0", 2)]});
    let r = p2p(&rig, &fake, &["--devices", "0"]);
    let f = findings(&r.report, "driver-known-bad");
    assert_eq!(f.len(), 1, "{:?}", summary(&r.report));
    assert_eq!(f[0]["severity"], "error");
    assert!(!text(f[0]).contains("not confirmed"), "{}", text(f[0]));
    assert!(
        r.text
            .contains("P2P 1 CUDA device(s) selected, nothing to pair"),
        "{}",
        r.text
    );
}

/// A driver that cannot JIT the PTX fails each GPU's self-test; that is the GPU's finding, and
/// the SM paths of the pairs are not blamed on P2P.
#[test]
fn ptx_the_driver_cannot_load_is_a_gpu_finding_not_a_p2p_one() {
    let rig = load_rig("x570-2x3090-r535");
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"driver_version": "535.129.03", "faults": {"module_load": "unsupported-ptx"},
        "gpus": [gpu(name, "0000:0b:00.0", 0), gpu(name, "0000:0c:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "nvlinks": 4}]});
    let r = p2p(&rig, &fake, &[]);
    assert_eq!(r.code, 1);
    assert_eq!(
        summary(&r.report)
            .iter()
            .filter(|s| s.starts_with("error"))
            .collect::<Vec<_>>(),
        ["error gpu-copy-failed"]
    );
    let f = text(findings(&r.report, "gpu-copy-failed")[0]);
    assert!(f.contains("GPU 0 (0000:0b:00.0), copy kernel within the GPU (kernels/copy.ptx, JIT-compiled by the driver): cuModuleLoadData (kernels/copy.ptx): CUDA_ERROR_UNSUPPORTED_PTX_VERSION"), "{f}");
    assert!(f.contains("rm -rf ~/.nv/ComputeCache"), "{f}");
    shows(&r, "GPU0  X ERROR    NV4 ERROR");
}

#[test]
fn a_hang_in_peer_access_enable_is_named() {
    let rig = load_rig("x570-2x3090-r535");
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"driver_version": "535.129.03",
        "gpus": [gpu(name, "0000:0b:00.0", 0), gpu(name, "0000:0c:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "fault": "enable-hangs"}]});
    let r = p2p(&rig, &fake, &["--timeout", "1"]);
    assert_eq!(ids(&r.report), ["error p2p-hang"]);
    let f = text(findings(&r.report, "p2p-hang")[0]);
    assert!(f.contains("GPU 0 (0000:0b:00.0) -> GPU 1 (0000:0c:00.0): no answer from the peer-access enable (cuCtxEnablePeerAccess in GPU 1's context for GPU 0) within 1 s"), "{f}");
}

/// Feed `diagnose` the report `r` after `edit`; its exit code, stderr and how long it took.
fn diagnose_edited(r: &Value, edit: impl FnOnce(&mut Value)) -> (Option<i32>, String, Duration) {
    let mut v = r.clone();
    edit(&mut v);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edited.json");
    std::fs::write(&file, v.to_string()).unwrap();
    let t = std::time::Instant::now();
    let out = rigdoctor().arg("diagnose").arg(&file).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed(),
    )
}

#[test]
fn a_report_is_checked_against_its_inventory_before_rendering() {
    let (rig, fake) = rtx4090_early_driver();
    let r = p2p(&rig, &fake, &[]).report;
    // The report as written reads back.
    assert_eq!(diagnose_edited(&r, |_| {}).0, Some(1));
    // 10,000 ordinals once took a minute and 12 GB: now one line, at once.
    let (code, err, took) = diagnose_edited(&r, |v| {
        v["facts"]["gpu"]["p2p"]["devices"] = json!((0..10_000).collect::<Vec<i32>>())
    });
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("gpu.p2p.devices has 10000 entries"), "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    type Edit = fn(&mut Value);
    let bad: [(&str, Edit); 5] = [
        ("device 7 is not in the inventory", |v| {
            v["facts"]["gpu"]["p2p"]["devices"] = json!([0, 7])
        }),
        ("device -1 is not in the inventory", |v| {
            v["facts"]["gpu"]["p2p"]["tests"][0]["to"] = json!(-1)
        }),
        ("listed twice", |v| {
            v["facts"]["gpu"]["p2p"]["devices"] = json!([1, 1])
        }),
        ("has ordinal 5", |v| {
            v["facts"]["gpu"]["cuda"]["devices"][1]["ordinal"] = json!(5)
        }),
        ("is not a number", |v| {
            v["facts"]["gpu"]["p2p"]["deadline_s"] = json!("nan")
        }),
    ];
    for (what, edit) in bad {
        let (code, err, _) = diagnose_edited(&r, edit);
        assert_eq!(code, Some(2), "{what}: {err}");
        assert!(
            err.contains(what) && err.lines().count() == 1,
            "{what}: {err}"
        );
    }
    // An infinite time is a value rigdoctor can write: it reads back.
    let (code, err, _) = diagnose_edited(&r, |v| {
        v["facts"]["gpu"]["p2p"]["tests"][0]["elapsed_ms"] = json!("inf")
    });
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn a_timeout_too_short_is_said_not_blamed_on_the_gpu() {
    let (rig, fake) = rtx4090_early_driver();
    let fake = json!({"driver_version": fake["driver_version"], "cuda_version": fake["cuda_version"],
        "gpus": fake["gpus"], "pairs": [{"a": 0, "b": 1, "topology": "SYS"}]});
    // The fake answers in milliseconds, but 1 ms is shorter than a step's own bookkeeping.
    let r = p2p(&rig, &fake, &["--timeout", "0.001"]);
    let got = summary(&r.report);
    assert!(
        got.contains(&"warn timeout-too-short".to_string()),
        "{got:?}"
    );
    for blame in ["gpu-copy-failed", "p2p-hang", "cuda-unavailable"] {
        assert!(!got.iter().any(|i| i.ends_with(blame)), "{got:?}");
    }
    shows(&r, "--timeout 0.001 s is too short");
    // At an ordinary deadline the same rig is quiet about it.
    let r = p2p(&rig, &fake, &["--timeout", "5"]);
    assert!(
        !summary(&r.report)
            .iter()
            .any(|i| i.ends_with("timeout-too-short")),
        "{:?}",
        summary(&r.report)
    );
}

/// `rigdoctor p2p --gpu` under a virtual-memory limit (`ulimit -v`), as a shell would set it.
fn p2p_under_address_limit(rig: &Rig, fake: &Value, bytes: u64) -> Value {
    use std::os::unix::process::CommandExt;
    let root = sysroot_of(rig);
    let rig_file = root.path().join("fake-rig.json");
    std::fs::write(&rig_file, fake.to_string()).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rigdoctor"));
    cmd.args(["p2p", "--gpu", "--json", "--sysroot"])
        .arg(root.path())
        .env("LD_LIBRARY_PATH", fake_driver_dir())
        .env("FAKEGPU_RIG", &rig_file);
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn an_address_space_limit_is_named_not_the_gpu() {
    let (rig, fake) = rtx4090_early_driver();
    let fake = json!({"driver_version": fake["driver_version"], "cuda_version": fake["cuda_version"],
        "gpus": fake["gpus"], "pairs": [{"a": 0, "b": 1, "topology": "SYS"}]});
    // 4 GiB: rigdoctor runs, CUDA's address-space reservation (the fake's: 64 GiB) does not.
    let r = p2p_under_address_limit(&rig, &fake, 4 << 30);
    let got = summary(&r);
    assert!(
        got.contains(&"error address-space-limited".to_string()),
        "{got:?}"
    );
    for blame in [
        "gpu-copy-failed",
        "p2p-error",
        "p2p-hang",
        "cuda-unavailable",
    ] {
        assert!(!got.iter().any(|i| i.ends_with(blame)), "{got:?}");
    }
    assert_eq!(r["facts"]["gpu"]["limits"]["address_space"], 4u64 << 30);
    // A limit CUDA fits under is still said: a training job maps far more.
    let r = p2p_under_address_limit(&rig, &fake, 200 << 30);
    let got = summary(&r);
    assert!(
        got.contains(&"warn address-space-limited".to_string()),
        "{got:?}"
    );
    assert!(!got.iter().any(|i| i.starts_with("error")), "{got:?}");
    // Without a limit, nothing is said.
    let r = p2p(&rig, &fake, &[]).report;
    assert!(
        !summary(&r)
            .iter()
            .any(|i| i.ends_with("address-space-limited")),
        "{:?}",
        summary(&r)
    );
}

/// The Threadripper story: the screen starts with the verdict and one plan whose first action
/// is the driver downgrade, says each fix once and fits 80 lines of 80 columns; --verbose has
/// the evidence, and its findings point at the plan instead of repeating it.
#[test]
fn the_story_reads_as_one_plan_with_the_driver_first() {
    let (rig, fake) = x399_one_pair_hangs();
    let r = p2p(&rig, &fake, &["--timeout", "1.5"]);
    let screen = &r.screen;
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines.len() < 80, "{} lines:\n{screen}", lines.len());
    let wide: Vec<&&str> = lines
        .iter()
        .filter(|l| rigdoctor::report::visible_width(l) > 80)
        .collect();
    assert!(wide.is_empty(), "{wide:#?}");
    assert!(lines[1].starts_with("✗"), "{screen}");
    let plan = lines.iter().position(|l| *l == "What to do").unwrap();
    assert!(plan <= 4, "{screen}");
    assert!(
        lines[plan + 1].starts_with("  1. install the 535 branch"),
        "{screen}"
    );
    for fix in [
        "sudo apt install nvidia-driver-535 && sudo reboot",
        "export NCCL_P2P_DISABLE=1",
        "amd_iommu=off",
    ] {
        assert_eq!(screen.matches(fix).count(), 1, "{fix}:\n{screen}");
    }
    // One line per finding (wrapped), naming its steps; the tested matrix; no evidence.
    assert!(screen.contains("error   p2p-hang"), "{screen}");
    assert!(screen.contains("→ steps 1, 2"), "{screen}");
    assert!(screen.contains("SYS HANG"), "{screen}");
    assert!(!screen.contains("likely cause"), "{screen}");
    // The whole text: the evidence, and the plan referenced instead of repeated.
    let full = &r.text;
    assert_eq!(full.matches("install the 535 branch").count(), 1, "{full}");
    assert_eq!(
        full.matches("export NCCL_P2P_DISABLE=1").count(),
        1,
        "{full}"
    );
    assert!(full.contains("= help: What to do, steps 1, 2"), "{full}");
    assert!(full.contains("likely cause 1: driver 545"), "{full}");
    // JSON carries the plan for scripts, the findings their full fixes.
    let plan = r.report["plan"].as_array().unwrap();
    assert_eq!(plan[0]["findings"], json!(["driver-known-bad", "p2p-hang"]));
    let hang = findings(&r.report, "p2p-hang")[0];
    assert!(text(hang).contains("install the 535 branch"));
}

#[test]
fn allowed_findings_are_shown_but_never_counted() {
    let (rig, fake) = x399_one_pair_hangs();
    let r = p2p(
        &rig,
        &fake,
        &[
            "--timeout",
            "1.5",
            "--allow",
            "p2p-hang",
            "--allow",
            "driver-known-bad",
        ],
    );
    // The JSON run's exit code: both errors accepted.
    assert_eq!(r.code, 0, "{}", r.text);
    let hang = findings(&r.report, "p2p-hang")[0];
    assert_eq!(hang["allowed"], "--allow p2p-hang");
    assert_eq!(r.report["summary"]["exit_code"], 0);
    assert!(r.report["summary"]["verdict"]
        .as_str()
        .unwrap()
        .contains("2 allowed"));
    // diagnose applies its own --allow (and config file): the saved report judged again.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.json");
    std::fs::write(&file, r.report.to_string()).unwrap();
    let out = rigdoctor()
        .args([
            "diagnose",
            "--color",
            "never",
            "--verbose",
            "--allow",
            "p2p-hang",
            "--allow",
            "driver-known-bad",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("error[p2p-hang] (allowed by --allow p2p-hang):"),
        "{text}"
    );
    // Accepted findings leave the plan.
    assert!(!text.contains("(driver-known-bad, p2p-hang)"), "{text}");
    // Without it, the same report fails again.
    let out = rigdoctor().arg("diagnose").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Scoped to one GPU, it does not cover a hang between two.
    let r = p2p(
        &rig,
        &fake,
        &[
            "--timeout",
            "1.5",
            "--allow",
            "p2p-hang@0000:0a:00.0",
            "--allow",
            "driver-known-bad",
        ],
    );
    assert_eq!(r.code, 1);
    assert!(findings(&r.report, "p2p-hang")[0].get("allowed").is_none());
}

#[test]
fn a_preflight_with_the_accepted_workaround_pays_no_p2p_deadline() {
    let (rig, fake) = x399_one_pair_hangs();
    let root = sysroot_of(&rig);
    let t = std::time::Instant::now();
    let out = on_fake(root.path(), &fake)
        .args(["check", "--quick", "--gpu", "--json", "--timeout", "5"])
        .args([
            "--allow",
            "p2p-hang",
            "--allow",
            "driver-known-bad",
            "--sysroot",
        ])
        .arg(root.path())
        .env("NCCL_P2P_DISABLE", "1")
        .output()
        .unwrap();
    let took = t.elapsed();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["facts"]["gpu"].get("p2p").is_none(), "P2P ran");
    let ids = summary(&r);
    assert!(ids.contains(&"info p2p-not-tested".to_string()), "{ids:?}");
    assert!(
        took < Duration::from_secs(5),
        "{took:?}: a deadline was paid"
    );
    assert!(
        r["summary"]["not_checked"][0]
            .as_str()
            .unwrap()
            .contains("p2p-not-tested"),
        "{}",
        r["summary"]
    );
    // Without the workaround in effect the transfers run (and the hang is found).
    let out = on_fake(root.path(), &fake)
        .args(["check", "--quick", "--gpu", "--json", "--timeout", "1.5"])
        .args(["--allow", "p2p-hang", "--sysroot"])
        .arg(root.path())
        .env_remove("NCCL_P2P_DISABLE")
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["facts"]["gpu"]["p2p"]["tests"]
        .as_array()
        .is_some_and(|t| !t.is_empty()));
    assert!(
        findings(&r, "p2p-not-tested").is_empty(),
        "{:?}",
        summary(&r)
    );
}

/// Off a terminal (a log, CI), progress is one line per finished phase and one per hang,
/// naming the GPUs and counting the hangs; after the first hang, pairs on disjoint GPUs run
/// side by side: 4 GPUs that all hang cost 4 deadlines, not 6.
#[test]
fn progress_in_a_log_is_a_line_per_phase_and_per_hang() {
    let fake = many_gpus(4, "NVIDIA GeForce RTX 3090", "550.127.05", "hang");
    let dir = sysroot_of(&load_rig("epyc-2x4090-nonroot"));
    let t = std::time::Instant::now();
    let out = on_fake(dir.path(), &fake)
        .args(["p2p", "--gpu", "--timeout", "1", "-o"])
        .arg(dir.path().join("r.json"))
        .arg("--sysroot")
        .arg(dir.path())
        .output()
        .unwrap();
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines[0].starts_with("rigdoctor: GPU inventory: 2 step(s), 2 done"),
        "{log}"
    );
    assert!(
        log.contains("rigdoctor: P2P GPU 0 (RTX 3090) -> GPU 1 (RTX 3090) did not finish in 1.0 s"),
        "{log}"
    );
    assert!(
        log.contains("(6 hangs so far)") && !log.contains("7 hangs"),
        "{log}"
    );
    assert!(
        log.contains("rigdoctor: P2P test: 17 step(s), 5 done, 6 hung, 6 not run"),
        "{log}"
    );
    // 1 + 3 rounds of one deadline each, and no spinner text in a log.
    assert!(took < std::time::Duration::from_secs(9), "{took:?}");
    assert!(!log.contains("GPU tests"), "{log}");
}

/// Two 4090s on the open module (a community P2P build is a fork of it), ReBAR on one card only:
/// p2p-gates lists the gates in order and names the card whose BAR1 is small.
#[test]
fn p2p_gates_name_the_card_without_resizable_bar() {
    let mut rig = load_rig("epyc-2x4090-nonroot");
    rig.gpu[1].bar1_mib = 256;
    // The card can do 32 GiB (sysfs resource1_resize says so to a non-root reader): firmware
    // left it small.
    rig.gpu[1].rebar_max_mib = Some(32768);
    let name = "NVIDIA GeForce RTX 4090";
    let fake = |access: bool| {
        json!({"driver_version": "550.127.05", "cuda_version": 12040,
            "gpus": [gpu(name, "0000:41:00.0", 0), gpu(name, "0000:81:00.0", 1)],
            "pairs": [{"a": 0, "b": 1, "access": access, "topology": "SYS", "nvml_status": "GNS"}]})
    };
    let r = p2p(&rig, &fake(false), &[]);
    let f = findings(&r.report, "p2p-gates");
    assert_eq!(f.len(), 1, "{}", r.text);
    assert_eq!(
        f[0]["severity"], "warn",
        "the open module on GeForce is an attempt at P2P"
    );
    let ev = text(&f[0]["evidence"]);
    let policy = ev
        .find("policy: GPU 0 (0000:41:00.0) <-> GPU 1 (0000:81:00.0)")
        .expect(&ev);
    let bar = ev
        .find("BAR1: GPU 1 (0000:81:00.0): 256 MiB of 24576 MiB")
        .expect(&ev);
    assert!(policy < bar, "policy first: {ev}");
    assert!(!ev.contains("BAR1: GPU 0"), "{ev}");
    assert!(
        ev.contains("the card offers BAR1 sizes up to 32 GiB (sysfs resource1_resize): firmware can enlarge it"),
        "{ev}"
    );
    // A card whose VBIOS offers nothing larger needs the VBIOS first.
    rig.gpu[1].rebar_max_mib = None;
    let r = p2p(&rig, &fake(false), &[]);
    let ev = text(&findings(&r.report, "p2p-gates")[0]["evidence"]);
    assert!(
        ev.contains(
            "up to 256 MiB only (sysfs resource1_resize): firmware cannot enlarge it; a VBIOS"
        ),
        "{ev}"
    );
    // No capability and no root: not known, and said so.
    rig.gpu[1].rebar_max_mib = Some(0);
    let r = p2p(&rig, &fake(false), &[]);
    let ev = text(&findings(&r.report, "p2p-gates")[0]["evidence"]);
    assert!(
        ev.contains("which BAR1 sizes the card supports was not read (needs root: 0000:81:00.0 config space readable to 64 bytes only (run as root))"),
        "{ev}"
    );
    // Granted both ways, nothing in the way: quiet.
    rig.gpu[1].bar1_mib = 32768;
    rig.gpu[1].rebar_max_mib = None;
    let r = p2p(&rig, &fake(true), &[]);
    assert!(findings(&r.report, "p2p-gates").is_empty(), "{}", r.text);
}

/// A GPU that drives a display is a P2P gate, whether the kernel's DRM connector says so or
/// NVML's display-active flag (an X server's screen without a connector): both are named, and
/// the GPU without one is not.
#[test]
fn p2p_gates_name_the_gpu_that_drives_a_display() {
    let mut rig = load_rig("epyc-2x4090-nonroot");
    rig.gpu[0].displays = vec!["card0-DP-1".into()];
    let name = "NVIDIA GeForce RTX 4090";
    let mut g0 = gpu(name, "0000:41:00.0", 0);
    g0["display_active"] = json!(true);
    let fake = json!({"driver_version": "550.127.05", "cuda_version": 12040,
        "gpus": [g0, gpu(name, "0000:81:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "access": false, "topology": "SYS", "nvml_status": "GNS"}]});
    let r = p2p(&rig, &fake, &[]);
    let f = findings(&r.report, "p2p-gates");
    assert_eq!(f.len(), 1, "{}", r.text);
    let ev = text(&f[0]["evidence"]);
    assert!(
        ev.contains("display: GPU 0 (0000:41:00.0) drives card0-DP-1 (DRM connector status connected) and a display (nvmlDeviceGetDisplayActive)"),
        "{ev}"
    );
    assert!(!ev.contains("display: GPU 1"), "{ev}");
    assert!(
        !ev.contains("HDMI"),
        "a disconnected connector is no display: {ev}"
    );
    // NVML alone is enough.
    rig.gpu[0].displays.clear();
    let r = p2p(&rig, &fake, &[]);
    let ev = text(&findings(&r.report, "p2p-gates")[0]["evidence"]);
    assert!(
        ev.contains("display: GPU 0 (0000:41:00.0) drives a display (nvmlDeviceGetDisplayActive)"),
        "{ev}"
    );
}
