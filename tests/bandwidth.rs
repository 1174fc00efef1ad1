//! `rigdoctor bandwidth` end to end: fixture sysroots for the host facts, the fake driver's
//! bandwidth model for the GPUs (CUDA events report times consistent with it), every copy
//! verified, the links read under load through NVML.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Small copies: the model's figures do not depend on the size, and the tests stay fast.
const FAST: [&str; 6] = ["--size", "1M", "--iters", "4", "--samples", "2"];

const BANDWIDTH_IDS: [&str; 11] = [
    "bandwidth-impossible",
    "pcie-link-degraded",
    "pcie-replay-errors",
    "bandwidth-low",
    "p2p-slower-than-host",
    "throttling",
    "power-brake",
    "p2p-corrupt",
    "p2p-hang",
    "copy-corrupt",
    "gpu-copy-failed",
];

/// The X99 rig with its PLX switch: GPUs 0000:03:00.0 and 0000:05:00.0 in Gen3 x16 slots.
fn x99(edit: impl FnOnce(&mut Value)) -> (common::sysroot::Rig, Value) {
    let name = "NVIDIA GeForce RTX 3090";
    let mut fake = json!({"gpus": [gpu(name, "0000:03:00.0", 0), gpu(name, "0000:05:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "topology": "PXB"}]});
    for g in 0..2 {
        fake["gpus"][g]["pcie"] = json!({"gen": 1, "width": 16, "max_gen": 3, "max_width": 16});
    }
    edit(&mut fake);
    (load_rig("x99-2x3090-plx"), fake)
}

fn bandwidth(rig: &(common::sysroot::Rig, Value), args: &[&str]) -> Run {
    let mut all = FAST.to_vec();
    all.extend_from_slice(args);
    run_gpu("bandwidth", &rig.0, &rig.1, &all)
}

/// "severity id gpus" of the bandwidth findings.
fn bw_ids(r: &Run) -> Vec<String> {
    r.report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| BANDWIDTH_IDS.contains(&f["id"].as_str().unwrap()))
        .map(|f| {
            let gpus: Vec<&str> = f["gpus"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap())
                .collect();
            format!(
                "{} {} {}",
                f["severity"].as_str().unwrap(),
                f["id"].as_str().unwrap(),
                gpus.join(",")
            )
        })
        .collect()
}

/// The median of a measurement: (kind, from, to) with from/to as JSON (null = host).
fn median(r: &Run, kind: &str, from: Value, to: Value) -> f64 {
    let m = r.report["facts"]["gpu"]["bandwidth"]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["kind"] == kind
                && m["from"] == from
                && m["to"] == to
                && m["bidirectional"] == false
                && m["latency"] == false
                && m["method"] == "ce"
        })
        .unwrap_or_else(|| panic!("no {kind} {from} {to}"));
    m["stats"]["median"]
        .as_f64()
        .unwrap_or_else(|| panic!("not measured: {m}"))
}

fn near(x: f64, want: f64) {
    assert!(
        (x - want).abs() <= 0.03 * want,
        "{x} is not within 3% of {want}"
    );
}

#[test]
fn healthy_pcie_rig_measures_the_model_and_stays_quiet() {
    let r = bandwidth(&x99(|_| {}), &[]);
    assert_eq!(bw_ids(&r), Vec::<String>::new(), "{}", r.text);
    // The fake's model: 82% / 85% of Gen3 x16 host copies, P2P 80% of the link, staged 45%
    // of the slower host direction; 1 MiB copies pay 2 / 2 / 15 us each.
    let link = 8.0 * 128.0 / 130.0 / 8.0 * 16.0;
    let at = |gbps: f64, us: f64| {
        (1u64 << 20) as f64 / ((1u64 << 20) as f64 / (gbps * 1e9) + us * 1e-6) / 1e9
    };
    near(
        median(&r, "h2d", Value::Null, json!(0)),
        at(0.82 * link, 2.0),
    );
    near(
        median(&r, "d2h", json!(1), Value::Null),
        at(0.85 * link, 2.0),
    );
    near(median(&r, "p2p", json!(0), json!(1)), at(0.8 * link, 2.0));
    near(
        median(&r, "staged", json!(1), json!(0)),
        at(0.45 * 0.82 * link, 15.0),
    );
    let bw = &r.report["facts"]["gpu"]["bandwidth"];
    assert_eq!(bw["config"]["size_bytes"], 1 << 20);
    assert_eq!(bw["links"][1]["gen"], 3, "{}", bw["links"]);
    assert_eq!(bw["links"][1]["width"], 16);
    // Both GPUs' host copies, local copies, P2P and staged both ways.
    assert_eq!(
        bw["measurements"].as_array().unwrap().len(),
        2 * 2 + 2 + 2 + 2
    );
    shows(&r, "Host <-> GPU, copy engine (GB/s, % of link)");
    shows(&r, "GPU1  Gen3 x16         Gen3 x16  12.6 80%  13.1 83%");
    shows(&r, "GPU -> GPU, P2P, copy engine (GB/s, % of link)");
}

#[test]
fn x4_riser_is_measured_degraded_and_low() {
    let r = bandwidth(
        &x99(|f| {
            f["gpus"][1]["pcie"] = json!({"gen": 1, "width": 4, "max_gen": 3, "max_width": 16})
        }),
        &[],
    );
    let ids = bw_ids(&r);
    assert!(
        ids.contains(&"warn pcie-link-degraded 0000:05:00.0".to_string()),
        "{ids:?}"
    );
    assert!(
        ids.contains(&"warn bandwidth-low 0000:05:00.0".to_string()),
        "{ids:?}"
    );
    // The measured verdict replaces the idle guess for that GPU: one finding, not two.
    let degraded: Vec<&Value> = findings(&r.report, "pcie-link-degraded")
        .into_iter()
        .filter(|f| f["gpus"][0] == "0000:05:00.0")
        .collect();
    assert_eq!(degraded.len(), 1);
    let f = text(degraded[0]);
    assert!(f.contains("x4 instead of x16 while copies ran"), "{f}");
    let low = text(
        findings(&r.report, "bandwidth-low")
            .into_iter()
            .find(|f| f["gpus"].as_array().unwrap().len() == 1)
            .unwrap(),
    );
    assert!(
        low.contains("= 81% of Gen3 x4 (3.9 GB/s per direction); Gen3 x16 supports 15.8"),
        "{low}"
    );
    assert!(
        low.contains("likely limiter: the link ran Gen3 x4 under load"),
        "{low}"
    );
    shows(&r, "GPU1  Gen3 x4          Gen3 x16  3.2 81% !");
    // GPU 0's own link is fine; only the pair through GPU 1's x4 link is low.
    assert!(
        !ids.contains(&"warn bandwidth-low 0000:03:00.0".to_string()),
        "{ids:?}"
    );
    assert!(
        ids.contains(&"warn bandwidth-low 0000:03:00.0,0000:05:00.0".to_string()),
        "{ids:?}"
    );
}

#[test]
fn a_link_stuck_at_gen1_under_load() {
    let r = bandwidth(
        &x99(|f| {
            f["gpus"][0]["pcie"] =
                json!({"gen": 1, "width": 16, "max_gen": 4, "max_width": 16, "load_gen": 1})
        }),
        &[],
    );
    let f = text(
        findings(&r.report, "pcie-link-degraded")
            .into_iter()
            .find(|f| f["gpus"][0] == "0000:03:00.0")
            .unwrap(),
    );
    assert!(f.contains("Gen1 instead of Gen3 while copies ran"), "{f}");
    assert!(f.contains("Gen1 x16 (4.0 GB/s per direction)"), "{f}");
    assert!(f.contains("force the slot's generation"), "{f}");
    assert!(bw_ids(&r).contains(&"warn bandwidth-low 0000:03:00.0".to_string()));
}

#[test]
fn replays_during_the_run_are_riser_trouble() {
    let r = bandwidth(&x99(|f| f["gpus"][1]["replays_under_load"] = json!(3)), &[]);
    assert_eq!(
        bw_ids(&r),
        ["warn pcie-replay-errors 0000:05:00.0"],
        "{}",
        r.text
    );
    let f = text(findings(&r.report, "pcie-replay-errors")[0]);
    assert!(f.contains("NVML PCIe replay counter 0 -> "), "{f}");
}

#[test]
fn aer_errors_that_grew_during_the_run() {
    let r = bandwidth(&x99(|_| {}), &[]);
    assert_eq!(bw_ids(&r), Vec::<String>::new());
    // The sysroot's counters do not move on their own: grow the re-read ones in the report,
    // as a marginal riser would, and let `diagnose` judge it.
    let mut report = r.report.clone();
    let after = &mut report["facts"]["gpu"]["bandwidth"]["aer_after"]["0000:05:00.0"];
    let before = after["correctable"]["TOTAL_ERR_COR"].as_u64().unwrap();
    after["correctable"]["TOTAL_ERR_COR"] = json!(before + 9);
    after["correctable"]["RxErr"] = json!(before + 9);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.json");
    std::fs::write(&file, report.to_string()).unwrap();
    let out = rigdoctor()
        .args(["diagnose", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = findings(&v, "pcie-replay-errors");
    assert_eq!(f.len(), 1, "{}", text(&v["findings"]));
    assert!(text(f[0]).contains(&format!(
        "AER correctable errors of 0000:05:00.0: {before} -> {}",
        before + 9
    )));
}

#[test]
fn p2p_slower_than_staged_names_the_redirect() {
    let r = bandwidth(
        &x99(|f| {
            f["pairs"][0] =
                json!({"a": 0, "b": 1, "topology": "PXB", "gbps": 3.0, "staged_gbps": 9.0})
        }),
        &[],
    );
    let ids = bw_ids(&r);
    assert!(
        ids.contains(&"warn p2p-slower-than-host 0000:03:00.0,0000:05:00.0".to_string()),
        "{ids:?}"
    );
    let f = text(findings(&r.report, "p2p-slower-than-host")[0]);
    assert!(
        f.contains("with peer access, 8.") || f.contains("with peer access, 9."),
        "{f}"
    );
    assert!(f.contains("likely cause 1:"), "{f}");
    shows(&r, "! <");
}

#[test]
fn healthy_nvlink_pair() {
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"gpus": [gpu(name, "0000:41:00.0", 0), gpu(name, "0000:81:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "nvlinks": 4, "topology": "SYS"}]});
    let r = run_gpu("bandwidth", &load_rig("epyc-2x4090-nonroot"), &fake, &FAST);
    assert_eq!(bw_ids(&r), Vec::<String>::new(), "{}", r.text);
    // 93% of 4 NVLink 3 links of 14.0625 GB/s.
    let p2p = median(&r, "p2p", json!(0), json!(1));
    assert!(p2p > 45.0 && p2p < 53.0, "{p2p}");
    shows(&r, "NVLink: GPU0-GPU1 NV4");
    // 1 MiB copies pay 2 us each: 85% of the four links.
    shows(&r, "GPU0  X         47.6 85%");
}

#[test]
fn throttled_gpu() {
    let r = bandwidth(
        &x99(|f| f["gpus"][0]["throttle_under_load"] = json!(0x20 | 0x4)),
        &[],
    );
    assert_eq!(bw_ids(&r), ["warn throttling 0000:03:00.0"], "{}", r.text);
    let f = text(findings(&r.report, "throttling")[0]);
    assert!(
        f.contains("0x24 (SW power cap, SW thermal slowdown)"),
        "{f}"
    );
    assert!(
        f.contains("check cooling") && f.contains("reached its power limit"),
        "{f}"
    );
    // Heat that engages the hardware slowdown (0x8 with 0x40) is still throttling.
    let r = bandwidth(
        &x99(|f| f["gpus"][1]["throttle_under_load"] = json!(0x8 | 0x40)),
        &[],
    );
    assert_eq!(bw_ids(&r), ["warn throttling 0000:05:00.0"], "{}", r.text);
}

#[test]
fn a_power_brake_points_at_the_supply_with_draw_and_limits() {
    let r = bandwidth(
        &x99(|f| {
            let g = &mut f["gpus"][0];
            g["throttle_under_load"] = json!(0x80 | 0x8);
            g["power_under_load_w"] = json!(341);
            g["power_max_w"] = json!(390);
        }),
        &[],
    );
    assert_eq!(bw_ids(&r), ["warn power-brake 0000:03:00.0"], "{}", r.text);
    let f = findings(&r.report, "power-brake")[0];
    let ev = text(&f["evidence"]);
    assert!(ev.contains("0x88 (HW slowdown, HW power brake)"), "{ev}");
    assert!(
        ev.contains("up to 341 W of its 350 W limit (default 350 W, settable 100-390 W)"),
        "{ev}"
    );
    // Both GPUs' peaks: the other ran at the fake's 60% of 350 W.
    assert!(ev.contains("all 2 GPUs together drew up to 551 W"), "{ev}");
    let fix = text(&f["fix"]);
    assert!(
        fix.contains("sudo nvidia-smi -i 0000:03:00.0 -pl 280"),
        "{fix}"
    );
    assert!(fix.contains("no daisy-chained"), "{fix}");
    assert!(findings(&r.report, "throttling").is_empty());
    // HW slowdown alone is the power side too; the software power cap alone is not.
    let r = bandwidth(
        &x99(|f| f["gpus"][0]["throttle_under_load"] = json!(0x8)),
        &[],
    );
    assert_eq!(bw_ids(&r), ["warn power-brake 0000:03:00.0"], "{}", r.text);
    let r = bandwidth(
        &x99(|f| f["gpus"][0]["throttle_under_load"] = json!(0x4)),
        &[],
    );
    assert_eq!(bw_ids(&r), ["warn throttling 0000:03:00.0"], "{}", r.text);
}

#[test]
fn corrupt_p2p_gives_no_number() {
    let r = bandwidth(&x99(|f| f["pairs"][0]["fault"] = json!("corrupt")), &[]);
    assert_eq!(r.code, 1);
    let ids = bw_ids(&r);
    assert!(
        ids.iter().all(|i| i.starts_with("error p2p-corrupt")),
        "{ids:?}"
    );
    assert_eq!(ids.len(), 2, "{ids:?}");
    let m = &r.report["facts"]["gpu"]["bandwidth"]["measurements"];
    let bad = m
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == "p2p")
        .unwrap();
    assert_eq!(bad["status"], "corrupt");
    assert!(bad.get("stats").is_none());
    shows(&r, "CORRUPT");
    // The staged control was measured and is correct.
    assert!(median(&r, "staged", json!(0), json!(1)) > 1.0);
}

#[test]
fn hung_copy_is_killed_and_the_rest_measured() {
    let r = bandwidth(
        &x99(|f| f["pairs"][0] = json!({"a": 0, "b": 1, "fault": "hang", "directed": true})),
        &["--timeout", "1"],
    );
    let ids = bw_ids(&r);
    assert_eq!(
        ids,
        ["error p2p-hang 0000:03:00.0,0000:05:00.0"],
        "{}",
        r.text
    );
    assert!(median(&r, "p2p", json!(1), json!(0)) > 1.0);
    assert!(r.took < Duration::from_secs(20), "{:?}", r.took);
    shows(&r, "HANG");
}

#[test]
fn quick_measures_one_direction_per_pair() {
    let r = run_gpu("bandwidth", &x99(|_| {}).0, &x99(|_| {}).1, &["--quick"]);
    let bw = &r.report["facts"]["gpu"]["bandwidth"];
    assert_eq!(bw["config"]["samples"], 1);
    assert_eq!(bw["config"]["all_pairs"], false);
    let pairs: Vec<&Value> = bw["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "p2p")
        .collect();
    assert_eq!(pairs.len(), 1);
    let all = run_gpu(
        "bandwidth",
        &x99(|_| {}).0,
        &x99(|_| {}).1,
        &["--quick", "--all-pairs"],
    );
    let n = all.report["facts"]["gpu"]["bandwidth"]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "p2p")
        .count();
    assert_eq!(n, 2);
}

#[test]
fn sm_bidirectional_and_latency() {
    let r = bandwidth(
        &x99(|_| {}),
        &["--method", "both", "--bidirectional", "--latency"],
    );
    assert_eq!(bw_ids(&r), Vec::<String>::new(), "{}", r.text);
    let ms = r.report["facts"]["gpu"]["bandwidth"]["measurements"]
        .as_array()
        .unwrap()
        .clone();
    let sm = ms
        .iter()
        .filter(|m| m["method"] == "sm" && m["status"] == "measured")
        .count();
    assert!(sm >= 6, "{sm}");
    assert!(ms
        .iter()
        .any(|m| m["bidirectional"] == true && m["kind"] == "d2h"));
    let lat = ms
        .iter()
        .find(|m| m["latency"] == true && m["kind"] == "staged")
        .unwrap();
    near(lat["stats"]["median"].as_f64().unwrap(), 15.0);
    shows(&r, "GPU -> GPU, P2P, SM kernel");
    shows(&r, "Latency host <-> GPU (µs per 16-byte copy)");
}

#[test]
fn no_driver_library_still_reports() {
    let root = sysroot_of(&load_rig("x99-2x3090-plx"));
    let out = rigdoctor()
        .args(["bandwidth", "--gpu", "--json", "--sysroot"])
        .arg(root.path())
        .env("LD_LIBRARY_PATH", root.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let access = text(&v["facts"]["gpu"]["bandwidth"]["access"]);
    assert!(access.contains("libcuda.so.1 not loadable"), "{access}");
}

#[test]
fn ctrl_c_stops_and_still_reports() {
    let (rig, fake) = x99(|f| f["pairs"][0] = json!({"a": 0, "b": 1, "fault": "hang"}));
    let root = sysroot_of(&rig);
    let rig_file = root.path().join("fake-rig.json");
    std::fs::write(&rig_file, fake.to_string()).unwrap();
    let exe = assert_cmd::cargo::cargo_bin("rigdoctor");
    let child = std::process::Command::new(exe)
        .args([
            "bandwidth",
            "--gpu",
            "--json",
            "--timeout",
            "30",
            "--size",
            "1M",
            "--sysroot",
        ])
        .arg(root.path())
        .env("LD_LIBRARY_PATH", fake_driver_dir())
        .env("FAKEGPU_RIG", &rig_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The host and local copies finish quickly; the P2P copy hangs until Ctrl-C.
    std::thread::sleep(Duration::from_secs(4));
    // SAFETY: signalling our own child.
    unsafe { libc_kill(child.id() as i32, 2) };
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let bw = &v["facts"]["gpu"]["bandwidth"];
    assert_eq!(bw["interrupted"], true);
    let measured = bw["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["status"] == "measured")
        .count();
    assert!(measured >= 4, "{}", bw["measurements"]);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Some drivers give the card's own maximum through NVML: the slot's (sysfs) caps it, so a
/// Gen4 card running Gen3 in a Gen3 slot is neither degraded nor low.
#[test]
fn card_maximum_is_capped_by_the_slot() {
    let r = bandwidth(
        &x99(|f| {
            for g in 0..2 {
                f["gpus"][g]["pcie"] =
                    json!({"gen": 1, "width": 16, "max_gen": 4, "max_width": 16, "load_gen": 3});
            }
        }),
        &[],
    );
    assert_eq!(bw_ids(&r), Vec::<String>::new(), "{}", r.text);
    shows(&r, "GPU0  Gen3 x16         Gen3 x16");
}

/// A P2P figure of 40 GB/s on a Gen4 x16 link (31.5 GB/s per direction) did not cross that
/// link: an error naming the pair, and the figure marked in the table. The healthy rigs above
/// (PCIe and NVLink) stay quiet.
#[test]
fn a_figure_above_the_link_is_impossible() {
    let name = "NVIDIA GeForce RTX 4090";
    let fake = json!({"gpus": [gpu(name, "0000:41:00.0", 0), gpu(name, "0000:81:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "topology": "SYS", "gbps": 40.0}]});
    let r = run_gpu("bandwidth", &load_rig("epyc-2x4090-nonroot"), &fake, &FAST);
    assert_eq!(
        bw_ids(&r),
        ["error bandwidth-impossible 0000:41:00.0,0000:81:00.0"],
        "{}",
        r.text
    );
    let f = text(findings(&r.report, "bandwidth-impossible")[0]);
    assert!(
        f.contains("but Gen4 x16 carries 31.5 GB/s per direction"),
        "{f}"
    );
    assert!(f.contains("rigdoctor p2p --devices 0,1"), "{f}");
    shows(&r, " ??");
    assert!(
        r.screen.contains("?? above what the link can carry"),
        "{}",
        r.screen
    );
    // At 30 GB/s (95% of the link) it is a fast link, not an impossible one.
    let fake = json!({"gpus": [gpu(name, "0000:41:00.0", 0), gpu(name, "0000:81:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "topology": "SYS", "gbps": 30.0}]});
    let r = run_gpu("bandwidth", &load_rig("epyc-2x4090-nonroot"), &fake, &FAST);
    assert!(
        findings(&r.report, "bandwidth-impossible").is_empty(),
        "{}",
        r.text
    );
}
