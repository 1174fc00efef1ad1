//! `rigdoctor compare` and `check --baseline` on reports made by running rigdoctor on the fake
//! driver (one `check --json` per fake node), never on reports written by hand.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const NAME: &str = "NVIDIA GeForce RTX 3090";

/// A node: two 3090s on Gen4 x16, driver 550.54.14, as `edit` changes it.
fn node(edit: impl FnOnce(&mut Value)) -> Value {
    let mut fake = json!({"driver_version": "550.54.14", "cuda_version": 12040,
        "gpus": [gpu(NAME, "0000:0b:00.0", 0), gpu(NAME, "0000:0c:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "topology": "PHB"}]});
    edit(&mut fake);
    fake
}

/// `check --json` of a fake node on the X570 sysroot; the report JSON.
fn check(fake: &Value, args: &[&str]) -> Value {
    run_gpu("check", &load_rig("x570-2x3090-r535"), fake, args).report
}

/// Four nodes' reports (node-a..node-d): node-b's second GPU trained x8, node-d runs a newer
/// driver; made once for the tests of this file.
fn fleet() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    static FLEET: OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = OnceLock::new();
    FLEET.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let fakes = [
            ("node-a", node(|_| {})),
            ("node-b", node(|f| f["gpus"][1]["pcie"]["width"] = json!(8))),
            ("node-c", node(|_| {})),
            ("node-d", node(|f| f["driver_version"] = json!("555.42.02"))),
        ];
        let files = std::thread::scope(|s| {
            let hs: Vec<_> = fakes
                .iter()
                .map(|(name, fake)| {
                    let path = dir.path().join(format!("{name}.json"));
                    s.spawn(move || {
                        std::fs::write(&path, check(fake, &[]).to_string()).unwrap();
                        path
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        (dir, files)
    })
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn compare(args: &[&str], files: &[&Path]) -> Out {
    let out = rigdoctor()
        .arg("compare")
        .args(args)
        .args(files)
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json_of(o: &Out) -> Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", o.stdout))
}

/// Every node a finding is about: named in its title or its GPUs (its evidence also shows the
/// other nodes' values, for comparison).
fn named(f: &Value) -> Vec<&'static str> {
    let t = format!("{} {}", f["title"], f["gpus"]);
    ["node-a", "node-b", "node-c", "node-d"]
        .into_iter()
        .filter(|n| t.contains(n))
        .collect()
}

#[test]
fn compare_names_the_newer_driver_and_the_narrow_link() {
    let (_dir, files) = fleet();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    // Warnings: exit 0 under the default --fail-on error, 1 with --fail-on warn.
    assert_eq!(compare(&[], &paths).code, 0);
    let o = compare(&["--json", "--fail-on", "warn"], &paths);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    let r = json_of(&o);
    assert_eq!(r["schema"], "rigdoctor.compare/1");
    assert_eq!(r["nodes"].as_array().unwrap().len(), 4);
    let drift = findings(&r, "fleet-version-drift");
    assert_eq!(drift.len(), 1, "{}", o.stdout);
    assert_eq!(named(drift[0]), ["node-d"], "{}", drift[0]);
    assert!(
        text(drift[0]).contains("555.42.02 on node-d"),
        "{}",
        drift[0]
    );
    let config = findings(&r, "fleet-config-drift");
    assert_eq!(config.len(), 1, "{}", o.stdout);
    assert_eq!(named(config[0]), ["node-b"], "{}", config[0]);
    assert_eq!(config[0]["gpus"], json!(["0000:0c:00.0@node-b"]));
    assert!(
        text(config[0]).contains(
            "nodes with 2x NVIDIA GeForce RTX 3090: link width of 0000:0c:00.0: x16 on node-a, node-c, node-d; x8 on node-b"
        ),
        "{}",
        config[0]
    );
    // The x8 link carries half: its H2D and D2H fall out of the peers' range.
    let out = findings(&r, "fleet-outlier");
    assert_eq!(out.len(), 1, "{}", o.stdout);
    assert_eq!(named(out[0]), ["node-b"], "{}", out[0]);
    assert!(
        text(out[0]).contains("H2D of 0000:0c:00.0 on node-b"),
        "{}",
        out[0]
    );
    // Nothing else, and nothing on node-a or node-c.
    let ids: Vec<String> = summary(&r);
    assert!(ids.iter().all(|i| i.starts_with("warn fleet-")), "{ids:?}");
    // The table marks the odd values.
    let t = compare(&[], &paths);
    if std::env::var_os("FLEET_SHOW").is_some() {
        eprintln!("{}", t.stdout);
    }
    let row = |n: &str| {
        t.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(n))
            .unwrap_or_else(|| panic!("{n} not in:\n{}", t.stdout))
            .to_string()
    };
    assert!(row("node-d").contains("555.42.02 *"), "{}", t.stdout);
    assert!(row("node-b").contains("x16, Gen4 x8 *"), "{}", t.stdout);
    assert!(!row("node-a").contains('*'), "{}", t.stdout);
    assert!(
        t.stdout.contains("warning[fleet-version-drift]"),
        "{}",
        t.stdout
    );
    // One line for a health checker.
    let one = compare(&["--format", "oneline", "--fail-on", "warn"], &paths);
    assert_eq!(one.code, 1);
    assert_eq!(one.stdout.lines().count(), 1, "{}", one.stdout);
    assert!(
        one.stdout.starts_with("rigdoctor compare: WARNING: 4 nodes, 3 warnings: NVIDIA driver not the same on every node: node-d ["),
        "{}",
        one.stdout
    );
    for id in ["fleet-version-drift", "fleet-config-drift", "fleet-outlier"] {
        assert!(one.stdout.contains(id), "{}", one.stdout);
    }
    // Markdown: the same table and findings, as a post.
    let md = compare(&["--format", "markdown"], &paths);
    assert!(md.stdout.contains("| Node | GPUs |"), "{}", md.stdout);
    assert!(
        md.stdout.contains("#### warning `fleet-config-drift`"),
        "{}",
        md.stdout
    );
}

#[test]
fn compare_of_alike_nodes_is_quiet() {
    let (_dir, files) = fleet();
    // node-a and node-c are alike; a directory of reports reads the same as its files.
    let alike = tempfile::tempdir().unwrap();
    for f in [&files[0], &files[2]] {
        std::fs::copy(f, alike.path().join(f.file_name().unwrap())).unwrap();
    }
    let o = compare(&["--json"], &[alike.path()]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let r = json_of(&o);
    assert_eq!(r["findings"], json!([]));
    assert_eq!(
        r["summary"]["verdict"],
        "2 nodes: no differences found in what the reports hold"
    );
    // Three alike: still quiet (peers enough for outliers, and none).
    let o = compare(&["--json"], &[&files[0], &files[2], &files[0]]);
    assert_eq!(json_of(&o)["findings"], json!([]), "{}", o.stdout);
}

#[test]
fn compare_refuses_what_it_cannot_compare() {
    let (_dir, files) = fleet();
    let one = compare(&[], &[&files[0]]);
    assert_eq!(one.code, 2);
    assert!(one.stderr.contains("two nodes or more"), "{}", one.stderr);
    let redact = compare(&["--redact"], &[&files[0], &files[1]]);
    assert_eq!(redact.code, 2);
    assert!(
        redact.stderr.contains("redact each first"),
        "{}",
        redact.stderr
    );
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"not\": \"a report\"}").unwrap();
    let bad = compare(&[], &[&files[0], &junk]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("junk.json"), "{}", bad.stderr);
    // -o never overwrites an input.
    let over = compare(&["-o"], &[&files[0], &files[0], &files[1]]);
    assert_eq!(over.code, 2, "{}", over.stderr);
    assert!(over.stderr.contains("overwrite"), "{}", over.stderr);
}

/// `check --baseline OLD` on a node whose H2D is `h2d` GB/s now.
fn with_baseline(old: &Path, now: Value, args: &[&str]) -> Value {
    let mut all = vec!["--baseline", old.to_str().unwrap()];
    all.extend_from_slice(args);
    check(&now, &all)
}

/// The H2D median of CUDA device `d` in a report.
fn h2d_of(report: &Value, d: i64) -> f64 {
    report["facts"]["gpu"]["bandwidth"]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == "h2d" && m["to"] == d)
        .and_then(|m| m["stats"]["median"].as_f64())
        .unwrap()
}

fn h2d(gbps: f64) -> Value {
    node(|f| {
        for g in f["gpus"].as_array_mut().unwrap() {
            g["h2d_gbps"] = json!(gbps);
        }
    })
}

#[test]
fn baseline_flags_h2d_that_halved() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("good.json");
    let good = check(&h2d(25.0), &[]);
    std::fs::write(&old, good.to_string()).unwrap();
    // What the baseline measured (the fake's model: 25 GB/s less 2 us per copy).
    let then = h2d_of(&good, 0);
    assert!((then - 25.0).abs() < 0.5, "{then}");
    let r = with_baseline(&old, h2d(12.0), &[]);
    let f = findings(&r, "baseline-regression");
    assert_eq!(f.len(), 1, "{:?}", summary(&r));
    assert_eq!(f[0]["severity"], "warn");
    let t = text(f[0]);
    assert!(
        t.contains(&format!(
            "H2D of 0000:0b:00.0: {then:.1} GB/s then, {:.1} GB/s now",
            h2d_of(&r, 0)
        )),
        "{t}"
    );
    assert!(t.contains("H2D of 0000:0c:00.0"), "{t}");
    assert!(!t.contains("D2H of"), "D2H did not change: {t}");
    assert_eq!(f[0]["gpus"], json!(["0000:0b:00.0", "0000:0c:00.0"]));
}

#[test]
fn baseline_of_the_same_run_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("good.json");
    std::fs::write(&old, check(&h2d(25.0), &[]).to_string()).unwrap();
    let r = with_baseline(&old, h2d(25.0), &[]);
    assert!(
        findings(&r, "baseline-regression").is_empty(),
        "{:?}",
        summary(&r)
    );
    // A driver upgrade since is a changed fact.
    let r = with_baseline(
        &old,
        {
            let mut n = h2d(25.0);
            n["driver_version"] = json!("555.42.02");
            n
        },
        &[],
    );
    let f = findings(&r, "baseline-regression");
    assert_eq!(f.len(), 1, "{:?}", summary(&r));
    assert!(
        text(f[0]).contains("NVIDIA driver: 550.54.14 then, 555.42.02 now"),
        "{}",
        f[0]
    );
}

#[test]
fn baseline_without_bandwidth_now_says_not_compared() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("good.json");
    std::fs::write(&old, check(&h2d(25.0), &[]).to_string()).unwrap();
    let good: Value = serde_json::from_slice(&std::fs::read(&old).unwrap()).unwrap();
    let r = with_baseline(&old, h2d(25.0), &["--quick"]);
    let f = findings(&r, "baseline-regression");
    assert_eq!(f.len(), 1, "{:?}", summary(&r));
    assert_eq!(f[0]["severity"], "info");
    assert!(
        text(f[0]).contains(&format!(
            "not compared: H2D of 0000:0b:00.0 ({:.1} GB/s then) not measured now",
            h2d_of(&good, 0)
        )),
        "{}",
        f[0]
    );
    // A baseline that is no report stops before any GPU work.
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "[]").unwrap();
    let out = rigdoctor()
        .args(["check", "--baseline"])
        .arg(&junk)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Hostnames are the machines' own strings: a report can carry escape sequences or markdown;
/// compare shows them inert.
#[test]
fn hostile_hostnames_are_shown_inert() {
    let (_dir, files) = fleet();
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, (f, host)) in [
        (&files[0], "evil\u{1b}]0;pwned\u{7}"),
        (&files[3], "b|<img src=x>"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
        r["facts"]["host"]["hostname"] = json!(host);
        let p = dir.path().join(format!("{i}.json"));
        std::fs::write(&p, r.to_string()).unwrap();
        paths.push(p);
    }
    let paths: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let t = compare(&[], &paths);
    assert!(
        !t.stdout.contains('\u{1b}') && !t.stdout.contains('\u{7}'),
        "{:?}",
        t.stdout
    );
    assert!(t.stdout.contains("evil\\x1b]0;pwned\\u{7}"), "{}", t.stdout);
    let md = compare(&["--format", "markdown"], &paths);
    assert!(!md.stdout.contains("<img"), "{}", md.stdout);
    assert!(
        !md.stdout.contains('\u{1b}') && !md.stdout.contains('\u{7}'),
        "{:?}",
        md.stdout
    );
    assert!(md.stdout.contains("b\\|&lt;img src=x&gt;"), "{}", md.stdout);
    let j = compare(&["--json"], &paths);
    assert!(!j.stdout.contains('\u{1b}'), "{:?}", j.stdout);
    assert_eq!(json_of(&j)["nodes"][0]["label"], "evil\u{1b}]0;pwned\u{7}");
}

/// A node whose report lists a GPU fewer (fallen off the bus) is named; with two nodes that
/// differ, neither is the odd one: both are named.
#[test]
fn compare_names_a_node_with_a_gpu_fewer() {
    let (_dir, files) = fleet();
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("node-e.json");
    let one = node(|f| {
        f["gpus"].as_array_mut().unwrap().pop();
        f["pairs"] = json!([]);
    });
    std::fs::write(&short, check(&one, &[]).to_string()).unwrap();
    let o = compare(&["--json"], &[&files[0], &files[2], &short]);
    let r = json_of(&o);
    let f = findings(&r, "fleet-config-drift");
    assert_eq!(f.len(), 1, "{}", o.stdout);
    assert!(
        f[0]["title"].as_str().unwrap().ends_with(": node-e"),
        "{}",
        f[0]
    );
    assert!(
        text(f[0]).contains(
            "GPUs: 2x NVIDIA GeForce RTX 3090 on node-a, node-c; 1x NVIDIA GeForce RTX 3090 on node-e"
        ),
        "{}",
        f[0]
    );
    // Two nodes, x16 and x8 in one slot: no majority, both named.
    let o = compare(&["--json"], &[&files[0], &files[1]]);
    let r = json_of(&o);
    let f = findings(&r, "fleet-config-drift");
    assert_eq!(f.len(), 1, "{}", o.stdout);
    assert_eq!(named(f[0]), ["node-a", "node-b"], "{}", f[0]);
}

/// A host-only report holds no GPU inventory: its GPUs are not "gone", they were not read.
#[test]
fn baseline_of_a_host_report_compares_no_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let root = sysroot_of(&load_rig("x570-2x3090-r535"));
    let out = rigdoctor()
        .args(["host", "--json", "--sysroot"])
        .arg(root.path())
        .output()
        .unwrap();
    let host = dir.path().join("host.json");
    std::fs::write(&host, &out.stdout).unwrap();
    // This run (a check) against the host report: none of its GPUs is "new".
    let r = with_baseline(&host, h2d(25.0), &[]);
    for f in findings(&r, "baseline-regression") {
        assert!(!text(f).contains("is new"), "{f}");
    }
}
