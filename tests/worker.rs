//! The worker process as a fact: a worker killed mid-step is a finding naming the step, a
//! worker that hangs or crashes on exit is a finding, and no worker outlives rigdoctor.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// rigdoctor started on the X399 rig whose pair 0<->1 hangs, with the fake driver; not waited for.
fn start_hanging_p2p(root: &Path, timeout: &str) -> Child {
    let (_, fake) = x399_one_pair_hangs();
    let rig_file = root.join("fake-rig.json");
    std::fs::write(&rig_file, fake.to_string()).unwrap();
    Command::new(assert_cmd::cargo::cargo_bin("rigdoctor"))
        .args(["p2p", "--gpu", "--json", "--timeout", timeout, "--sysroot"])
        .arg(root)
        .env_clear()
        .env("LD_LIBRARY_PATH", fake_driver_dir())
        .env("FAKEGPU_RIG", &rig_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The pids of `rigdoctor __worker` processes whose parent is `parent`.
fn workers_of(parent: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("__worker") {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: the fields after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has left already; only its entry waits to be reaped.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_for_worker(parent: u32) -> i32 {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(&w) = workers_of(parent).first() {
            return w;
        }
        assert!(Instant::now() < end, "no worker appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigkill_of_the_worker_mid_step_is_a_worker_crashed_finding() {
    let root = sysroot_of(&load_rig("x399-3x3090-r545"));
    let child = start_hanging_p2p(root.path(), "8");
    let worker = wait_for_worker(child.id());
    // The fake's pairs take milliseconds; after a second the worker sits in the hung pair.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling a process this test started (through rigdoctor).
    assert_eq!(unsafe { libc::kill(worker, libc::SIGKILL) }, 0);
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let f = findings(&v, "worker-crashed");
    assert_eq!(f.len(), 1, "{:?}", summary(&v));
    let t = text(f[0]);
    assert!(t.contains("killed by signal 9"), "{t}");
    assert!(t.contains("p2p 0->1"), "{t}");
    assert!(t.contains("OOM killer"), "{t}");
    assert_eq!(out.status.code(), Some(1));
    let w = &v["facts"]["gpu"]["workers"][0];
    assert_eq!(
        w["exit"],
        json!({"status": "signaled", "signal": 9, "name": w["exit"]["name"]})
    );
    assert_eq!(w["during"], "p2p 0->1");
}

#[test]
fn no_worker_outlives_a_killed_rigdoctor() {
    let root = sysroot_of(&load_rig("x399-3x3090-r545"));
    let mut child = start_hanging_p2p(root.path(), "30");
    let worker = wait_for_worker(child.id());
    std::thread::sleep(Duration::from_millis(1000));
    assert!(alive(worker));
    child.kill().unwrap();
    child.wait().unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while alive(worker) {
        assert!(
            Instant::now() < end,
            "worker {worker} still runs after rigdoctor was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A report whose GPU facts record one worker ending as `exit`, re-diagnosed.
fn diagnose_with_worker(exit: Value, during: Value) -> Value {
    let mut report: Value = serde_json::from_str(
        &std::fs::read_to_string(rigs_dir().join("../reports/x570-2x3090-r535.json")).unwrap(),
    )
    .unwrap();
    report["facts"]["gpu"] = json!({
        "nvml": {"unknown": "not-run", "detail": "not run"},
        "cuda": {"unknown": "not-run", "detail": "not run"},
        "cuda_device_order": null,
        "workers": [{"index": 1, "steps": 4, "during": during, "exit": exit,
                     "log_tail": ["NCCL WARN Cuda failure 'an illegal memory access was encountered'"]}]
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.json");
    std::fs::write(&file, report.to_string()).unwrap();
    let out = rigdoctor()
        .args(["diagnose", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_worker_that_hangs_or_crashes_on_exit_is_a_warning() {
    let v = diagnose_with_worker(
        json!({"status": "hung-on-exit", "waited_s": 10.0, "unkillable": false}),
        Value::Null,
    );
    let f = findings(&v, "worker-exit-failed");
    assert_eq!(f.len(), 1, "{:?}", summary(&v));
    assert_eq!(f[0]["severity"], "warn");
    assert!(text(f[0]).contains("did not exit within 10.0 s"));
    assert!(
        text(f[0]).contains("illegal memory access"),
        "the log tail is evidence"
    );
    let v = diagnose_with_worker(
        json!({"status": "signaled", "signal": 11, "name": "Segmentation fault"}),
        Value::Null,
    );
    assert_eq!(findings(&v, "worker-exit-failed").len(), 1);
    assert!(findings(&v, "worker-crashed").is_empty());
}

#[test]
fn workers_that_exit_cleanly_or_after_a_hang_raise_nothing() {
    for (exit, during) in [
        (json!({"status": "exited", "code": 0}), Value::Null),
        (
            json!({"status": "killed-after-hang", "unkillable": false}),
            json!("p2p 0->1"),
        ),
        (json!({"status": "interrupted"}), json!("p2p 0->1")),
    ] {
        let v = diagnose_with_worker(exit.clone(), during);
        assert!(findings(&v, "worker-exit-failed").is_empty(), "{exit}");
        assert!(findings(&v, "worker-crashed").is_empty(), "{exit}");
    }
    let v = diagnose_with_worker(
        json!({"status": "exited", "code": 0}),
        json!("nccl-allreduce"),
    );
    assert_eq!(
        findings(&v, "worker-crashed").len(),
        1,
        "a worker that leaves mid-step crashed"
    );
}

/// SIGINT, SIGTERM and SIGHUP mid-step: the report of what was measured is still written,
/// marked interrupted, the exit status is 128+signal, and the worker is gone.
#[test]
fn each_stop_signal_still_reports_and_leaves_no_worker() {
    for (sig, name, code) in [
        (libc::SIGTERM, "SIGTERM", 143),
        (libc::SIGHUP, "SIGHUP", 129),
        (libc::SIGINT, "SIGINT", 130),
    ] {
        let root = sysroot_of(&load_rig("x399-3x3090-r545"));
        let child = start_hanging_p2p(root.path(), "30");
        let worker = wait_for_worker(child.id());
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let t = Instant::now();
        let out = child.wait_with_output().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            t.elapsed()
        );
        assert_eq!(out.status.code(), Some(code), "{name}");
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{name}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(v["facts"]["collected"]["interrupted"]["name"], name);
        // The self-tests finished before the hang: they are in the report.
        assert!(!v["facts"]["gpu"]["p2p"]["local"]
            .as_array()
            .unwrap()
            .is_empty());
        assert!(!alive(worker), "{name}: worker {worker} left running");
        let text = rigdoctor()
            .args(["diagnose", "-"])
            .write_stdin(out.stdout.clone())
            .output()
            .unwrap();
        let first = String::from_utf8_lossy(&text.stdout)
            .lines()
            .nth(1)
            .unwrap_or("")
            .to_string();
        assert!(first.contains(&format!("interrupted by {name}")), "{first}");
    }
}
