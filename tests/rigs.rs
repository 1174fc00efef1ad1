//! Each fixture rig (tests/rigs/*.toml) yields exactly its expected findings, live and when its
//! saved report (tests/reports/*.json) is re-diagnosed.
//!
//! Regenerate the saved reports after a facts change with:
//!     RIGDOCTOR_WRITE_REPORTS=1 cargo test --test rigs live_findings_match

mod common;

use common::*;
use std::path::PathBuf;

/// (rig, exit code of `rigdoctor host`, findings as "severity id" in report order).
const EXPECTED: &[(&str, i32, &[&str])] = &[
    (
        "x399-3x3090-r545",
        1,
        &[
            "error driver-known-bad",
            "warn acs-redirect",
            "warn iommu-translation",
            "info pcie-slot-limited",
            "info small-bar1",
        ],
    ),
    ("x570-2x3090-r535", 0, &["info pcie-slot-limited"]),
    (
        "x99-2x3090-plx",
        0,
        &[
            "warn acs-redirect",
            "warn pcie-aer-errors",
            "warn pcie-link-degraded",
            "info pcie-slot-limited",
            "info small-bar1",
        ],
    ),
    ("epyc-2x4090-nonroot", 0, &["info acs-not-checked"]),
    (
        "z790-2x3090-nouveau",
        1,
        &[
            "error driver-not-loaded",
            "error nouveau-bound",
            "info acs-not-checked",
            "info pcie-slot-limited",
            "info small-bar1",
        ],
    ),
];

fn saved_report(rig: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/reports/{rig}.json"))
}

#[test]
fn every_rig_file_has_expectations() {
    let mut names: Vec<String> = std::fs::read_dir(rigs_dir())
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let mut expected: Vec<&str> = EXPECTED.iter().map(|e| e.0).collect();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn live_findings_match() {
    for (rig, code, want) in EXPECTED {
        let dir = sysroot_of(&load_rig(rig));
        let (got_code, report) = host_json(dir.path(), &[]);
        assert_eq!(summary(&report), *want, "{rig}");
        assert_eq!(got_code, *code, "{rig}: exit code");
        if std::env::var_os("RIGDOCTOR_WRITE_REPORTS").is_some() {
            std::fs::create_dir_all(saved_report(rig).parent().unwrap()).unwrap();
            std::fs::write(
                saved_report(rig),
                serde_json::to_string_pretty(&report).unwrap() + "\n",
            )
            .unwrap();
        }
    }
}

#[test]
fn saved_reports_rediagnose_to_the_same_findings() {
    for (rig, code, want) in EXPECTED {
        let out = rigdoctor()
            .args(["diagnose", "--json"])
            .arg(saved_report(rig))
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary(&report), *want, "{rig}");
        assert_eq!(out.status.code(), Some(*code), "{rig}");
        // The saved file's own findings agree with today's rules.
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(saved_report(rig)).unwrap()).unwrap();
        assert_eq!(
            summary(&saved),
            *want,
            "{rig}: saved findings are stale, regenerate them"
        );
    }
}

#[test]
fn healthy_rig_has_nothing_at_warn_or_above() {
    let dir = sysroot_of(&load_rig("x570-2x3090-r535"));
    rigdoctor()
        .args(["check", "--fail-on", "warn", "--sysroot"])
        .arg(dir.path())
        .assert()
        .code(0);
}

#[test]
fn story_rig_names_the_driver_first_with_the_downgrade() {
    let dir = sysroot_of(&load_rig("x399-3x3090-r545"));
    let out = rigdoctor()
        .args(["check", "--sysroot"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let verdict = text.lines().nth(1).unwrap();
    assert!(
        verdict.starts_with("✗ 1 error, 2 warnings, 2 notes: driver 545"),
        "{verdict}"
    );
    assert!(text.contains("sudo apt install nvidia-driver-535"));
    assert!(text.contains("NCCL_P2P_DISABLE=1"));
}
