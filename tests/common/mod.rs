//! Shared test helpers: build a rig's sysroot, run the real binary on it, read its findings.

#![allow(dead_code)]

pub mod sysroot;

use assert_cmd::Command;
use serde_json::Value;
use std::path::Path;
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
        for name in ["libcuda.so.1", "libnvidia-ml.so.1"] {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&lib, &link).unwrap();
        }
        dir
    })
    .clone()
}
