//! Shared test helpers: build a rig's sysroot, run the real binary on it, read its findings.

#![allow(dead_code)]

pub mod sysroot;

use assert_cmd::Command;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

#[allow(unused_imports)]
pub use sysroot::{build, load_rig, rigs_dir, Rig};

/// The binary with an empty environment, so the developer's NCCL_* variables do not leak in.
pub fn rigdoctor() -> Command {
    let mut c = Command::cargo_bin("rigdoctor").unwrap();
    c.env_clear().env("NO_COLOR", "1");
    c
}

pub fn sysroot_of(rig: &Rig) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    build(rig, dir.path());
    dir
}

/// `rigdoctor host --json` on a sysroot: (exit code, report).
pub fn host_json(root: &Path, env: &[(&str, &str)]) -> (i32, Value) {
    let mut c = rigdoctor();
    c.args(["host", "--json", "--sysroot"]).arg(root);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// "severity id" for each finding, in report order.
pub fn summary(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f["severity"].as_str().unwrap(),
                f["id"].as_str().unwrap()
            )
        })
        .collect()
}

/// The findings with this id.
pub fn findings<'a>(report: &'a Value, id: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == id)
        .collect()
}

/// Findings of a rig after `edit`, with `env` as the process environment.
pub fn rig_findings(name: &str, edit: impl FnOnce(&mut Rig), env: &[(&str, &str)]) -> Value {
    let mut rig = load_rig(name);
    edit(&mut rig);
    let dir = sysroot_of(&rig);
    host_json(dir.path(), env).1
}

pub fn text(v: &Value) -> String {
    v.to_string()
}

/// A directory with `libcuda.so.1` and `libnvidia-ml.so.1` pointing at the fake driver
/// (the `fakegpu` workspace crate), built once per test binary.
pub fn fake_driver_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "-p", "fakegpu"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build -p fakegpu");
        assert!(status.success(), "building the fake driver failed");
        // The test binary lives in target/<profile>/deps; the library in target/<profile>.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let lib = profile_dir.join("libfakegpu.so");
        assert!(lib.exists(), "{} missing", lib.display());
        let dir = profile_dir.join("fakegpu-libs");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["libcuda.so.1", "libnvidia-ml.so.1", "libnccl.so.2"] {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&lib, &link).unwrap();
        }
        dir
    })
    .clone()
}

pub fn gpu(name: &str, bus: &str, n: usize) -> Value {
    serde_json::json!({"name": name, "bus_id": bus, "uuid": format!("GPU-{n}a1b2c3d-0000-1111-2222-333344445555"),
           "memory_mib": 24576, "cc": [8, 6], "persistence": true, "bar1_mib": 32768,
           "pcie": {"gen": 4, "width": 16, "max_gen": 4, "max_width": 16}})
}

/// stdout of `rigdoctor diagnose FILE ARGS` (exit 0 or 1: findings or none, never an error).
pub fn diagnose_file(file: &Path, args: &[&str]) -> String {
    let out = rigdoctor()
        .arg("diagnose")
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A fake rig of `n` identical GPUs (bus 11, 21, 31, ...), every pair across NUMA nodes (SYS)
/// with `fault` ("none", "hang", ...).
pub fn many_gpus(n: usize, name: &str, driver: &str, fault: &str) -> Value {
    let gpus: Vec<Value> = (0..n)
        .map(|i| gpu(name, &format!("0000:{:02x}:00.0", 0x11 + i * 0x10), i))
        .collect();
    let pairs: Vec<Value> = (0..n)
        .flat_map(|a| {
            ((a + 1)..n).map(
                move |b| serde_json::json!({"a": a, "b": b, "fault": fault, "topology": "SYS"}),
            )
        })
        .collect();
    serde_json::json!({"driver_version": driver, "cuda_version": 12040, "gpus": gpus, "pairs": pairs})
}

/// The binary with the fake driver emulating `fake` (its rig file written under `root`).
pub fn on_fake(root: &Path, fake: &Value) -> Command {
    let rig_file = root.join("fake-rig.json");
    std::fs::write(&rig_file, fake.to_string()).unwrap();
    let mut c = rigdoctor();
    // The fake NCCL's rendezvous directories go under the test's own directory: a rank a
    // test kills leaves its directory behind, and the test's tempdir takes it away.
    c.env("LD_LIBRARY_PATH", fake_driver_dir())
        .env("FAKEGPU_RIG", &rig_file)
        .env("TMPDIR", root);
    c
}

pub struct Run {
    pub code: i32,
    pub report: Value,
    pub took: Duration,
    /// The whole text report (--verbose).
    pub text: String,
    /// The default screen.
    pub screen: String,
}

/// `rigdoctor COMMAND --gpu` on `sysroot` with the fake driver emulating `fake`: once as
/// JSON, and the JSON re-rendered as text by `diagnose` (no second GPU run).
pub fn run_gpu(command: &str, sysroot: &Rig, fake: &Value, args: &[&str]) -> Run {
    run_gpu_env(command, sysroot, fake, args, &[])
}

/// [`run_gpu`] with these environment variables set for rigdoctor (and so its workers).
pub fn run_gpu_env(
    command: &str,
    sysroot: &Rig,
    fake: &Value,
    args: &[&str],
    env: &[(&str, &str)],
) -> Run {
    let root = sysroot_of(sysroot);
    // One machine: the fake NCCL reads the CPU vendor of the host sysroot (NCCL's P2P level
    // depends on it) unless the test gives the fake rig its own.
    let mut fake = fake.clone();
    if fake.get("cpu").is_none() {
        fake["cpu"] = serde_json::json!({"vendor": sysroot.cpu.vendor});
    }
    let fake = &fake;
    let report_file = root.path().join("report.json");
    let t = Instant::now();
    let out = on_fake(root.path(), fake)
        .envs(env.iter().copied())
        .args([command, "--gpu", "--json", "--sysroot"])
        .arg(root.path())
        .args(args)
        .output()
        .unwrap();
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    std::fs::write(&report_file, &out.stdout).unwrap();
    let render = |extra: &[&str]| {
        let out = rigdoctor()
            .args(["diagnose", "--color", "never"])
            .args(extra)
            .arg(&report_file)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    Run {
        code: out.status.code().unwrap(),
        report,
        took,
        text: render(&["--verbose"]),
        screen: render(&[]),
    }
}

/// The text report has this line (or part of a line).
pub fn shows(r: &Run, line: &str) {
    assert!(r.text.contains(line), "{line:?} not in:\n{}", r.text);
}

/// The seed story of the RTX 4090s: an early driver (525) that grants P2P and delivers zeros.
pub fn rtx4090_early_driver() -> (Rig, Value) {
    let mut rig = load_rig("epyc-2x4090-nonroot");
    if let Some(d) = rig.driver.as_mut() {
        d.version_line = d.version_line.replace("550.127.05", "525.60.11");
    }
    let name = "NVIDIA GeForce RTX 4090";
    let fake = serde_json::json!({"driver_version": "525.60.11", "cuda_version": 12000,
        "gpus": [gpu(name, "0000:41:00.0", 0), gpu(name, "0000:81:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "fault": "zeros", "topology": "SYS"}]});
    (rig, fake)
}

/// The seed story of the three 3090s on X399 (IOMMU translating, driver 545): P2P between GPU 0
/// and GPU 1 hangs both ways.
pub fn x399_one_pair_hangs() -> (Rig, Value) {
    let name = "NVIDIA GeForce RTX 3090";
    let fake = serde_json::json!({"driver_version": "545.29.06", "cuda_version": 12030,
        "gpus": [gpu(name, "0000:0a:00.0", 0), gpu(name, "0000:42:00.0", 1), gpu(name, "0000:43:00.0", 2)],
        "pairs": [{"a": 0, "b": 1, "fault": "hang", "topology": "SYS"},
                  {"a": 0, "b": 2, "topology": "SYS"},
                  {"a": 1, "b": 2, "topology": "PHB"}]});
    (load_rig("x399-3x3090-r545"), fake)
}
