//! `rigdoctor nccl` against the fake libnccl as it behaves like the real one (see
//! docs/testing.md): NCCL's log arrives through C stdio in 4 KiB blocks, connections come at
//! the first collective since 2.22, communicators have threads and a lifecycle, and
//! `FAKEGPU_NCCL_TRACE` records every NCCL call rigdoctor makes.
//!
//! The `#[ignore]`d tests are what rigdoctor must do with such a library and does not do yet;
//! each says why. Run them with `cargo test --test fake_nccl -- --ignored`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SMALL: [&str; 4] = ["--min-size", "1M", "--max-size", "4M"];

/// Four 3090s on Gen4 x16, P2P granted between all of them (as tests/nccl.rs).
fn four(nccl: Value) -> Value {
    let name = "NVIDIA GeForce RTX 3090";
    json!({"driver_version": "535.129.03", "cuda_version": 12020,
        "gpus": [gpu(name, "0000:0a:00.0", 0), gpu(name, "0000:0b:00.0", 1),
                 gpu(name, "0000:41:00.0", 2), gpu(name, "0000:42:00.0", 3)],
        "pairs": [{"a": 0, "b": 1}, {"a": 1, "b": 2}, {"a": 2, "b": 3}, {"a": 3, "b": 0},
                  {"a": 0, "b": 2}, {"a": 1, "b": 3}],
        "nccl": nccl})
}

struct NcclRun {
    report: Value,
    took: Duration,
    trace: String,
}

impl NcclRun {
    fn nccl(&self) -> &Value {
        &self.report["facts"]["gpu"]["nccl"]
    }
    fn ids(&self) -> Vec<String> {
        summary(&self.report)
            .into_iter()
            .filter(|s| s.contains("nccl"))
            .collect()
    }
    fn finding(&self, id: &str) -> String {
        findings(&self.report, id)
            .first()
            .map(|f| text(f))
            .unwrap_or_default()
    }
}

/// Processes still running with this rig file in their environment (leftover workers).
fn processes_with(rig: &Path) -> Vec<u32> {
    let needle = format!("FAKEGPU_RIG={}", rig.display());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = status
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            !zombie
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
        })
        .collect()
}

/// `rigdoctor nccl --gpu --json` with the fake NCCL tracing its calls; any worker left
/// behind is reported in `leftover` and killed.
fn run(fake: &Value, args: &[&str]) -> (NcclRun, Vec<u32>) {
    let root = sysroot_of(&load_rig("x570-2x3090-r535"));
    let rig_file: PathBuf = root.path().join("fake-rig.json");
    let trace_file = root.path().join("nccl-trace.txt");
    std::fs::write(&rig_file, fake.to_string()).unwrap();
    let t = Instant::now();
    let out = rigdoctor()
        // The fake's ncclCommInitAll lifecycle, traced call by call: one process.
        .args(["nccl", "--gpu", "--json", "--single-process", "--sysroot"])
        .arg(root.path())
        .args(SMALL)
        .args(args)
        .env("LD_LIBRARY_PATH", fake_driver_dir())
        .env("FAKEGPU_RIG", &rig_file)
        .env("FAKEGPU_NCCL_TRACE", &trace_file)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    // A worker that outlives rigdoctor (still running, or stuck exiting) is a bug of its own.
    std::thread::sleep(Duration::from_millis(200));
    let leftover = processes_with(&rig_file);
    for pid in &leftover {
        // SAFETY: a plain kill of a process this test started (through rigdoctor).
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    // The trace is complete once every process that loaded the fake has gone.
    let trace = std::fs::read_to_string(&trace_file).unwrap_or_default();
    (
        NcclRun {
            report,
            took,
            trace,
        },
        leftover,
    )
}

#[test]
fn the_trace_records_rigdoctors_nccl_calls() {
    let (r, _) = run(&four(json!({})), &[]);
    let t = &r.trace;
    assert!(t.contains("ncclGetVersion -> 0"), "{t}");
    assert!(t.contains("ncclCommInitAll ndev=4 comms=0x"), "{t}");
    assert!(t.contains("ncclGroupStart -> 0"), "{t}");
    // 1 MiB per rank of float32.
    assert!(t.contains("rank=3 count=262144 -> 0"), "{t}");
}

#[test]
fn a_clean_run_destroys_every_communicator() {
    let (r, leftover) = run(&four(json!({})), &[]);
    assert!(leftover.is_empty());
    assert_eq!(
        r.trace.matches("ncclCommDestroy comm=").count(),
        4,
        "{}",
        r.trace
    );
    assert!(r.trace.contains("fini live=0"), "{}", r.trace);
    assert!(!r.trace.contains("leaked"), "{}", r.trace);
}

#[test]
fn the_protocol_survives_nccls_log() {
    // 2.18 prints its ring and tree connections at init, 2.22 at the first all-reduce; NCCL's
    // log is block-buffered C stdio on the worker's stdout. 20 runs: every one complete.
    for (version, connections) in [(21805, 14), (22203, 8)] {
        for _ in 0..10 {
            let (r, leftover) = run(&four(json!({"version": version})), &[]);
            assert!(leftover.is_empty(), "worker left behind");
            assert_eq!(r.ids(), Vec::<String>::new(), "{}", r.report);
            let res = r.nccl()["results"].as_array().unwrap();
            assert_eq!(res.len(), 2, "{}", r.nccl());
            assert!(res.iter().all(|x| x["status"] == "measured"));
            let ch = r.nccl()["channels"].as_array().unwrap();
            assert_eq!(ch.len(), connections, "{}", r.nccl());
        }
    }
}

#[test]
fn a_hang_keeps_the_transports_nccl_chose() {
    let (r, _) = run(&four(json!({"fault": "hang"})), &["--timeout", "1.5"]);
    assert_eq!(r.ids(), ["error nccl-hang"]);
    assert!(
        r.finding("nccl-hang").contains("P2P/direct pointer"),
        "{}",
        r.finding("nccl-hang")
    );
}

#[test]
fn a_hang_is_aborted_in_the_worker() {
    let (r, leftover) = run(&four(json!({"fault": "hang"})), &["--timeout", "1.5"]);
    assert!(leftover.is_empty());
    assert_eq!(r.ids(), ["error nccl-hang"]);
    assert_eq!(
        r.trace.matches("ncclCommAbort comm=").count(),
        4,
        "{}",
        r.trace
    );
    assert!(
        !r.trace.contains("-> blocked"),
        "destroy behind a hang: {}",
        r.trace
    );
}

#[test]
fn an_error_is_reported_with_the_last_error_and_aborted() {
    let (r, _) = run(&four(json!({"fault": "error"})), &[]);
    assert_eq!(r.ids(), ["error nccl-error"]);
    let f = r.finding("nccl-error");
    assert!(
        f.contains("no kernel image is available for execution on the device"),
        "{f}"
    );
    assert_eq!(
        r.trace.matches("ncclCommAbort comm=").count(),
        4,
        "{}",
        r.trace
    );
    assert!(r.trace.contains("fini live=0"), "{}", r.trace);
}

#[test]
fn an_async_error_is_an_error_not_a_hang() {
    let (r, _) = run(&four(json!({"fault": "async-error"})), &["--timeout", "10"]);
    assert!(r.took < Duration::from_secs(8), "{:?}", r.took);
    assert_eq!(r.ids(), ["error nccl-error"], "{}", r.report);
    let f = r.finding("nccl-error");
    assert!(
        f.contains("remote process exited or there was a network error"),
        "{f}"
    );
    assert!(f.contains("Connection closed by remote peer"), "{f}");
    assert!(r.trace.contains("ncclCommGetAsyncError"), "{}", r.trace);
    assert_eq!(
        r.trace.matches("ncclCommAbort comm=").count(),
        4,
        "{}",
        r.trace
    );
}

#[test]
fn an_init_error_names_the_cuda_failure() {
    let (r, _) = run(&four(json!({"fault": "init-error"})), &[]);
    // The library loaded: its version is kept, and the init failure carries NCCL's cause.
    assert_eq!(r.nccl()["library"]["version"], "2.18.5");
    let init = &r.nccl()["init_error"];
    assert!(
        init.to_string()
            .contains("CUDA driver version is insufficient for CUDA runtime version"),
        "{init}"
    );
    assert_eq!(r.ids(), ["error nccl-error"], "{}", r.report);
}

#[test]
fn a_worker_stuck_at_exit_is_killed() {
    let (r, leftover) = run(&four(json!({"fault": "hang-on-exit"})), &[]);
    assert!(leftover.is_empty(), "workers left running: {leftover:?}");
    assert_eq!(r.nccl()["results"].as_array().unwrap().len(), 2);
    // The results stand; the hang at exit is a finding of its own.
    assert_eq!(r.ids(), Vec::<String>::new(), "{}", r.report);
    assert!(r
        .finding("worker-exit-failed")
        .contains("did not exit within"));
}
