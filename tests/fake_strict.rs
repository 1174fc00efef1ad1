//! rigdoctor against the fake driver where it is as strict as the real one (cuda.h 12.9): the
//! current context is per thread and calls without one fail, cuCtxSynchronize waits for the
//! current context only, work runs on its stream when waited for, kernel launches are checked
//! against the PTX `.entry` and the launch limits, peer access returns 704/705/201 as cuda.h
//! says, and `spin_wait` really holds its stream until the latch is written or its timeout
//! passes on the host clock. A rigdoctor that leaned on the old, lenient fake fails here.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The three 3090s of the X399 rig, every pair granted and healthy.
fn x399_healthy() -> (common::sysroot::Rig, Value) {
    let (rig, mut fake) = x399_one_pair_hangs();
    for p in fake["pairs"].as_array_mut().unwrap() {
        p["fault"] = json!("none");
    }
    (rig, fake)
}

/// Every P2P path of every ordered pair verified, with nothing to report. Each step binds the
/// context of the device it works on (a call without a current context fails), waits for the
/// issuing context after a copy on its NULL stream before the destination's context reads back
/// (cuCtxSynchronize of another context would leave the copy queued and the read-back would see
/// the fill pattern), launches copy_v4 from the module that has it with its three parameters and
/// a legal block, and tolerates CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED between steps.
#[test]
fn p2p_verifies_every_path_with_the_strict_driver() {
    let (rig, fake) = x399_healthy();
    let r = run_gpu("p2p", &rig, &fake, &["--timeout", "10"]);
    let p2p = &r.report["facts"]["gpu"]["p2p"];
    let tests = p2p["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 6, "{p2p}");
    for t in tests {
        assert_eq!(t["status"], "tested", "{t}");
        let verdicts: Vec<String> = t["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| format!("{} {}", p["path"].as_str().unwrap(), p["verdict"]))
            .collect();
        assert_eq!(verdicts.len(), 4, "{verdicts:?}");
        assert!(
            verdicts.iter().all(|v| v.ends_with("\"ok\"")),
            "{verdicts:?}"
        );
    }
    let broken: Vec<String> = summary(&r.report)
        .into_iter()
        .filter(|s| s.contains("p2p") || s.contains("copy") || s.contains("worker"))
        .collect();
    assert!(broken.is_empty(), "{broken:?}\n{}", r.text);
    shows(&r, "GPU0  X       SYS ok  SYS ok");
}

/// The bandwidth battery with the spin kernel's own 10 s timeout (no FAKEGPU_SPIN_SCALE): the
/// host must release the latch before it waits for the copies, for every lane and sample, SM
/// kernels and both directions at once included. A latch released after the wait, or left
/// closed on a path, costs the spin's whole timeout per sample: the run would take 10 s or more.
#[test]
fn bandwidth_releases_the_spin_latch_before_it_waits() {
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"gpus": [gpu(name, "0000:03:00.0", 0), gpu(name, "0000:05:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "topology": "PXB"}]});
    let r = run_gpu(
        "bandwidth",
        &load_rig("x99-2x3090-plx"),
        &fake,
        &[
            "--size",
            "1M",
            "--iters",
            "4",
            "--samples",
            "3",
            "--method",
            "both",
            "--bidirectional",
        ],
    );
    assert!(r.took < Duration::from_secs(9), "{:?}", r.took);
    let ms = r.report["facts"]["gpu"]["bandwidth"]["measurements"]
        .as_array()
        .unwrap()
        .clone();
    assert!(ms.len() >= 12, "{}", ms.len());
    for m in &ms {
        assert_eq!(m["status"], "measured", "{m}");
    }
    assert!(ms.iter().any(|m| m["method"] == "sm"));
    assert!(ms.iter().any(|m| m["bidirectional"] == true));
}

/// `rigdoctor watchdog-test --json` with the fake driver: (exit code, verdict).
fn watchdog_test(timeout: &str, env: &[(&str, &str)]) -> (i32, Value) {
    let dir = tempfile::tempdir().unwrap();
    let rig = dir.path().join("fake-rig.json");
    let name = "NVIDIA GeForce RTX 3090";
    std::fs::write(
        &rig,
        json!({"gpus": [gpu(name, "0000:41:00.0", 0)]}).to_string(),
    )
    .unwrap();
    let mut c = rigdoctor();
    c.args([
        "watchdog-test",
        "--timeout",
        timeout,
        "--devices",
        "0",
        "--json",
    ])
    .env("LD_LIBRARY_PATH", fake_driver_dir())
    .env("FAKEGPU_RIG", &rig);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), v)
}

/// The spin kernel whose latch is never released really holds the worker in
/// cuStreamSynchronize, as on a GPU, so the watchdog has to kill it at the deadline. (The old
/// fake let the spin return at once, and the check could only have reported "finished".)
#[test]
fn watchdog_test_kills_a_spin_that_never_ends() {
    let (code, v) = watchdog_test("1.5", &[]);
    assert_eq!(v["outcome"], "killed", "{v}");
    assert_eq!(v["passed"], true, "{v}");
    assert_eq!(code, 0, "{v}");
    let took = v["elapsed_s"].as_f64().unwrap();
    assert!((1.4..4.0).contains(&took), "{v}");
}

/// When the kernel's own timeout (600 s, here scaled to 0.6 s) passes before the deadline, the
/// spin returns and the check fails: it did not show that the watchdog stops a stuck kernel.
#[test]
fn watchdog_test_fails_when_the_spin_times_out_first() {
    let (code, v) = watchdog_test("5", &[("FAKEGPU_SPIN_SCALE", "0.001")]);
    assert_eq!(v["outcome"], "finished", "{v}");
    assert_eq!(v["passed"], false, "{v}");
    assert_eq!(code, 1, "{v}");
    let took = v["elapsed_s"].as_f64().unwrap();
    assert!((0.5..4.0).contains(&took), "{v}");
}

/// The three-GPU X399 rig with a directed fault on 0->1 only.
fn x399_with_fault(fault: &str) -> (common::sysroot::Rig, Value) {
    let (rig, mut fake) = x399_healthy();
    let pairs = fake["pairs"].as_array_mut().unwrap();
    pairs.insert(
        0,
        json!({"a": 0, "b": 1, "fault": fault, "directed": true, "topology": "SYS"}),
    );
    (rig, fake)
}

/// The 0->1 pair test of a P2P report and the CUDA failure (`cause`) of its first failed path.
fn first_cause(report: &Value) -> (&Value, &Value) {
    let tests = report["facts"]["gpu"]["p2p"]["tests"].as_array().unwrap();
    let bad = tests
        .iter()
        .find(|t| t["from"] == 0 && t["to"] == 1)
        .unwrap();
    let cause = bad["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p.get("cause"))
        .unwrap_or_else(|| panic!("no cause in {bad}"));
    (bad, cause)
}

/// Each code cuda.h calls sticky ("the process must be terminated and relaunched"): the pair
/// that hit it reports it with its code, the worker leaves, and the pairs after it run in a
/// fresh worker instead of all failing with the same error.
#[test]
fn after_every_sticky_code_the_rest_runs_in_a_fresh_worker() {
    for (code, name) in [
        (226, "CUDA_ERROR_CONTAINED"),
        (721, "CUDA_ERROR_TENSOR_MEMORY_LEAK"),
        (810, "CUDA_ERROR_MPS_CLIENT_TERMINATED"),
        (911, "CUDA_ERROR_EXTERNAL_DEVICE"),
    ] {
        let fault = if code == 226 {
            "contained".to_string()
        } else {
            format!("sticky-{code}")
        };
        let (rig, fake) = x399_with_fault(&fault);
        let r = run_gpu("p2p", &rig, &fake, &["--timeout", "10"]);
        let p2p = &r.report["facts"]["gpu"]["p2p"];
        let tests = p2p["tests"].as_array().unwrap();
        let (_, cause) = first_cause(&r.report);
        assert_eq!(
            (cause["code"].as_i64(), cause["sticky"].as_bool()),
            (Some(code), Some(true)),
            "{cause}"
        );
        assert_eq!(cause["name"], name, "{cause}");
        // The other five directions ran, in another worker, and verified.
        let others: Vec<&Value> = tests
            .iter()
            .filter(|t| !(t["from"] == 0 && t["to"] == 1))
            .collect();
        assert_eq!(others.len(), 5);
        for t in &others {
            assert_eq!(t["status"], "tested", "{code}: {t}");
            assert!(
                t["paths"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["verdict"] == "ok"),
                "{code}: {t}"
            );
        }
        let workers = r.report["facts"]["gpu"]["workers"].as_array().unwrap();
        assert!(workers.len() >= 2, "{code}: {workers:?}");
        assert!(
            summary(&r.report).contains(&"error p2p-error".to_string()),
            "{code}: {:?}",
            summary(&r.report)
        );
        assert!(
            findings(&r.report, "worker-crashed").is_empty(),
            "leaving on purpose is no crash"
        );
    }
}

/// A CUresult the 12.9 bindings do not know (36, CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER of CUDA
/// 13.0): read as a raw integer, reported as "CUDA error 36", no undefined behaviour, no crash.
#[test]
fn an_unknown_cuda_code_is_reported_by_number() {
    let (rig, fake) = x399_with_fault("unknown-code");
    let r = run_gpu("p2p", &rig, &fake, &["--timeout", "10"]);
    let (bad, cause) = first_cause(&r.report);
    assert_eq!(cause["code"], 36);
    assert!(cause.get("name").is_none(), "{cause}");
    assert!(text(bad).contains("CUDA error 36"), "{bad}");
    assert!(findings(&r.report, "worker-crashed").is_empty());
    assert_eq!(
        r.report["facts"]["gpu"]["workers"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "not sticky"
    );
}

/// A copy that fails while the spin kernel holds the stream (its latch closed): the latch is
/// released and the streams drained before the buffers are freed, so the error costs
/// milliseconds. Left closed, every free waits out the spin's 10 s timeout.
#[test]
fn a_failure_while_the_latch_is_closed_releases_it() {
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"gpus": [gpu(name, "0000:03:00.0", 0), gpu(name, "0000:05:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "topology": "PXB", "fault": "unknown-code"}]});
    let r = run_gpu(
        "bandwidth",
        &load_rig("x99-2x3090-plx"),
        &fake,
        &["--timeout", "30", "--size", "1M", "--samples", "1"],
    );
    assert!(r.took < Duration::from_secs(9), "took {:?}", r.took);
    let m = r.report["facts"]["gpu"]["bandwidth"]["measurements"]
        .as_array()
        .unwrap();
    let p2p: Vec<&Value> = m.iter().filter(|x| x["kind"] == "p2p").collect();
    assert!(
        !p2p.is_empty() && p2p.iter().all(|x| x["status"] == "failed"),
        "{p2p:?}"
    );
    assert!(text(p2p[0]).contains("CUDA error 36"), "{}", p2p[0]);
    // The other phases still measured.
    assert!(m
        .iter()
        .any(|x| x["kind"] == "h2d" && x["status"] == "measured"));
}

/// The PTX JIT compiler library missing (CUDA_ERROR_JIT_COMPILER_NOT_FOUND): its own fix, not
/// "update your driver".
#[test]
fn a_missing_jit_compiler_gets_its_own_fix() {
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"faults": {"module_load": "no-jit-compiler"},
        "gpus": [gpu(name, "0000:0b:00.0", 0), gpu(name, "0000:0c:00.0", 1)]});
    let r = run_gpu("p2p", &load_rig("x570-2x3090-r535"), &fake, &[]);
    let f = text(findings(&r.report, "gpu-copy-failed")[0]);
    assert!(f.contains("CUDA_ERROR_JIT_COMPILER_NOT_FOUND"), "{f}");
    assert!(f.contains("libnvidia-ptxjitcompiler"), "{f}");
    assert!(!f.contains("update the driver"), "{f}");
}
