//! `rigdoctor check`: the whole battery (host, inventory, P2P, quick bandwidth, NCCL) in one
//! report, on the seed rigs with the fake driver.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// The seed story: 3x3090 on X399, IOMMU translating, driver 545; P2P between GPU 0 and 1
/// hangs, and so does NCCL's ring through them.
#[test]
fn x399_story_in_one_report() {
    let (rig, fake) = x399_one_pair_hangs();
    let r = run_gpu("check", &rig, &fake, &["--timeout", "1.5"]);
    assert_eq!(r.code, 1);
    let ids = summary(&r.report);
    for want in [
        "error p2p-hang",
        "error nccl-hang",
        "error driver-known-bad",
    ] {
        assert!(ids.iter().any(|i| i == want), "{want} not in {ids:?}");
    }
    // One p2p-hang: the bandwidth run's hung P2P steps are the same pairs.
    assert_eq!(
        ids.iter().filter(|i| *i == "error p2p-hang").count(),
        1,
        "{ids:?}"
    );
    let gpu = &r.report["facts"]["gpu"];
    assert_eq!(gpu["p2p"]["tests"].as_array().unwrap().len(), 6);
    assert_eq!(
        gpu["bandwidth"]["config"]["samples"], 1,
        "check runs bandwidth --quick"
    );
    assert!(gpu["bandwidth"]["measurements"].as_array().unwrap().len() >= 6);
    assert_eq!(gpu["nccl"]["results"][0]["status"], "hang");
    let f = text(findings(&r.report, "nccl-hang")[0]);
    // The knowledge base matched driver 545 and rules the IOMMU out as the cure.
    assert!(
        f.contains("likely cause 1: driver 545 hangs NCCL peer-to-peer"),
        "{f}"
    );
    assert!(f.contains("not ranked as a cause"), "{f}");
    assert!(
        f.contains("P2P verification in this run: 1 of 5 directions failed or hung (1 more not tried: the other direction of a pair hung)"),
        "{f}"
    );
    // Hung steps: 2 P2P directions, 2 bandwidth P2P steps (one per pair direction with
    // --quick: 1), NCCL: each about one deadline.
    assert!(r.took < Duration::from_secs(40), "{:?}", r.took);
    shows(&r, "NCCL all-reduce");
    shows(&r, "Host <-> GPU, copy engine");
}

#[test]
fn healthy_rig_quick_check_is_clean_and_fast() {
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"gpus": [gpu(name, "0000:41:00.0", 0), gpu(name, "0000:81:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "nvlinks": 4, "topology": "SYS"}]});
    let r = run_gpu(
        "check",
        &load_rig("epyc-2x4090-nonroot"),
        &fake,
        &["--quick"],
    );
    let gpu_ids: Vec<String> = summary(&r.report)
        .into_iter()
        .filter(|s| s.contains("nccl") || s.contains("p2p") || s.contains("bandwidth"))
        .collect();
    assert_eq!(gpu_ids, Vec::<String>::new(), "{}", r.text);
    let gpu = &r.report["facts"]["gpu"];
    assert!(
        gpu.get("bandwidth").is_none(),
        "--quick skips the bandwidth run"
    );
    assert_eq!(gpu["nccl"]["results"].as_array().unwrap().len(), 1);
    assert!(r.took < Duration::from_secs(10), "{:?}", r.took);
}

#[test]
fn no_nccl_still_reports_the_rest() {
    let name = "NVIDIA GeForce RTX 3090";
    let fake = json!({"gpus": [gpu(name, "0000:41:00.0", 0), gpu(name, "0000:81:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "nvlinks": 4}]});
    // A file that is there but is no library (a missing path is a usage error, exit 2).
    let not_a_library = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let r = run_gpu(
        "check",
        &load_rig("epyc-2x4090-nonroot"),
        &fake,
        &["--quick", "--nccl-lib", not_a_library],
    );
    let ids = summary(&r.report);
    assert!(ids.contains(&"info nccl-not-found".to_string()), "{ids:?}");
    assert_eq!(
        r.report["facts"]["gpu"]["p2p"]["tests"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    shows(&r, "not run: no usable NCCL library");
}

/// The 4090 story: an early driver grants P2P and delivers zeros; NCCL over P2P sums garbage.
#[test]
fn rtx4090_zeros_story_in_one_report() {
    let (rig, fake) = rtx4090_early_driver();
    let r = run_gpu("check", &rig, &fake, &["--quick"]);
    assert_eq!(r.code, 1);
    let ids = summary(&r.report);
    for want in ["error p2p-corrupt", "error nccl-wrong-result"] {
        assert!(ids.iter().any(|i| i == want), "{want} not in {ids:?}");
    }
    let f = text(findings(&r.report, "nccl-wrong-result")[0]);
    assert!(f.contains("NCCL_P2P_DISABLE=1"), "{f}");
}

fn four_3090s(nccl: serde_json::Value) -> serde_json::Value {
    let name = "NVIDIA GeForce RTX 3090";
    json!({"gpus": [gpu(name, "0000:41:00.0", 0), gpu(name, "0000:42:00.0", 1),
                    gpu(name, "0000:81:00.0", 2), gpu(name, "0000:82:00.0", 3)],
        "pairs": [{"a": 0, "b": 1}, {"a": 1, "b": 2}, {"a": 2, "b": 3}, {"a": 3, "b": 0},
                  {"a": 0, "b": 2}, {"a": 1, "b": 3}],
        "nccl": nccl})
}

fn ids_with(r: &Run, part: &str) -> Vec<String> {
    summary(&r.report)
        .into_iter()
        .filter(|s| s.contains(part))
        .collect()
}

#[test]
fn nccl_far_below_the_measured_links_is_slow() {
    let rig = load_rig("epyc-2x4090-nonroot");
    let healthy = run_gpu("check", &rig, &four_3090s(json!({})), &[]);
    assert_eq!(
        ids_with(&healthy, "nccl"),
        Vec::<String>::new(),
        "{}",
        healthy.text
    );
    // check runs NCCL as DDP does: one worker process per GPU, every rank's sums checked.
    let ranks = healthy.report["facts"]["gpu"]["nccl"]["ranks"]
        .as_array()
        .unwrap();
    assert_eq!(ranks.len(), 4, "{ranks:?}");
    assert!(ranks.iter().all(|x| x["outcome"] == "ok"), "{ranks:?}");
    let slow = run_gpu("check", &rig, &four_3090s(json!({"busbw_gbps": 3.0})), &[]);
    assert_eq!(ids_with(&slow, "nccl"), ["warn nccl-slow"], "{}", slow.text);
    let f = text(findings(&slow.report, "nccl-slow")[0]);
    assert!(
        f.contains("all-reduce of 67108864 bytes per rank over 4 ranks: busbw 3.0 GB/s"),
        "{f}"
    );
    assert!(f.contains(", P2P, measured 2"), "{f}");
}

#[test]
fn p2p_disabled_on_a_rig_where_p2p_verifies_costs_speed() {
    let mut rig = load_rig("epyc-2x4090-nonroot");
    rig.nccl_conf = Some("NCCL_P2P_DISABLE=1\n".into());
    let r = run_gpu("check", &rig, &four_3090s(json!({})), &["--quick"]);
    let f = findings(&r.report, "nccl-env-override");
    assert_eq!(f.len(), 1, "{}", r.text);
    assert_eq!(f[0]["severity"], "warn");
    assert!(
        text(f[0]).contains("yet P2P verified correct on all 12 tested directions"),
        "{}",
        text(f[0])
    );
    // Where P2P is broken, the same override is what keeps jobs working.
    let broken = json!({"gpus": four_3090s(json!({}))["gpus"].clone(),
        "pairs": [{"a": 0, "b": 1, "fault": "corrupt"}]});
    let r = run_gpu("check", &rig, &broken, &["--quick"]);
    let f = findings(&r.report, "nccl-env-override");
    assert_eq!(f[0]["severity"], "info");
    assert!(
        text(f[0]).contains("P2P failed in this run"),
        "{}",
        text(f[0])
    );
}

/// X99 with a PLX switch doing ACS redirect and a riser training x4: the host findings and the
/// measured ones land in one report.
#[test]
fn x99_riser_and_acs_story_in_one_report() {
    let name = "NVIDIA GeForce RTX 3090";
    let mut fake = json!({"gpus": [gpu(name, "0000:03:00.0", 0), gpu(name, "0000:05:00.0", 1)],
        "pairs": [{"a": 0, "b": 1, "topology": "PXB", "gbps": 2.2, "staged_gbps": 3.0}]});
    fake["gpus"][0]["pcie"] = json!({"gen": 1, "width": 16, "max_gen": 3, "max_width": 16});
    fake["gpus"][1]["pcie"] = json!({"gen": 1, "width": 4, "max_gen": 3, "max_width": 16});
    let r = run_gpu("check", &load_rig("x99-2x3090-plx"), &fake, &[]);
    let ids = summary(&r.report);
    for want in [
        "warn acs-redirect",
        "warn pcie-link-degraded",
        "warn bandwidth-low",
        "warn p2p-slower-than-host",
        "warn pcie-aer-errors",
    ] {
        assert!(ids.iter().any(|i| i == want), "{want} not in {ids:?}");
    }
    let f = text(findings(&r.report, "p2p-slower-than-host")[0]);
    assert!(
        f.contains("likely cause 1: PCIe ACS redirects peer traffic on 0000:02:08.0"),
        "{f}"
    );
    assert_eq!(
        r.report["facts"]["gpu"]["nccl"]["results"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

/// The headline case at its worst: eight GPUs, P2P hangs between every pair (and so NCCL).
/// Each pair costs one deadline, pairs on disjoint GPUs are then tested side by side, and the
/// bandwidth run skips the pairs that hung: the whole `check` costs about 10 deadlines, not
/// the 28 + 28 + NCCL of testing every direction twice. docs/testing.md has the figure at the
/// default timeout (bench/all-hang.sh).
#[test]
fn eight_gpus_that_all_hang_cost_rounds_of_deadlines_not_pairs() {
    let fake = many_gpus(8, "NVIDIA GeForce RTX 3090", "545.29.06", "hang");
    // bench/all-hang.sh sets the default timeout (10 s) to measure the real figure.
    let timeout: f64 = std::env::var("RIGDOCTOR_ALL_HANG_TIMEOUT")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1.0);
    let r = run_gpu(
        "check",
        &common::sysroot::load_rig("epyc-2x4090-nonroot"),
        &fake,
        &["--timeout", &timeout.to_string()],
    );
    println!(
        "check on 8 GPUs, all pairs hanging, --timeout {timeout}: {:.1} s",
        r.took.as_secs_f64()
    );
    assert_eq!(r.code, 1);
    let tests = r.report["facts"]["gpu"]["p2p"]["tests"].as_array().unwrap();
    let status = |s: &str| tests.iter().filter(|t| t["status"] == s).count();
    assert_eq!((status("hang"), status("skipped")), (28, 28), "{tests:?}");
    let bw = r.report["facts"]["gpu"]["bandwidth"]["measurements"]
        .as_array()
        .unwrap();
    let p2p_bw: Vec<_> = bw.iter().filter(|m| m["kind"] == "p2p").collect();
    assert!(!p2p_bw.is_empty());
    assert!(
        p2p_bw.iter().all(|m| m["status"] == "skipped"),
        "{p2p_bw:?}"
    );
    // Staged copies through host memory still ran: they are the control.
    assert!(bw
        .iter()
        .any(|m| m["kind"] == "staged" && m["status"] == "measured"));
    // 1 first hang, 7 or 8 rounds of disjoint pairs, NCCL's sweep: about 10 deadlines (and
    // slack for a loaded test machine); in turn, the 56 directions alone cost 28 or more.
    let bound = Duration::from_secs_f64(12.0 * timeout + 12.0);
    assert!(r.took < bound, "{:?} (bound {bound:?})", r.took);
}

/// A healthy 2-GPU rig: the whole `check` (bandwidth and NCCL included) on one screen of 40
/// lines and 80 columns; --verbose has every table.
#[test]
fn a_healthy_rig_fits_one_screen() {
    let name = "NVIDIA GeForce RTX 3090";
    let mut a = gpu(name, "0000:0b:00.0", 0);
    let mut b = gpu(name, "0000:0c:00.0", 1);
    for g in [&mut a, &mut b] {
        g["pcie"] = json!({"gen": 4, "width": 8, "max_gen": 4, "max_width": 16});
    }
    let fake = json!({"driver_version": "535.129.03", "cuda_version": 12020,
        "gpus": [a, b], "pairs": [{"a": 0, "b": 1, "topology": "PHB"}]});
    let r = run_gpu("check", &load_rig("x570-2x3090-r535"), &fake, &[]);
    let lines: Vec<&str> = r.screen.lines().collect();
    assert!(lines.len() < 40, "{} lines:\n{}", lines.len(), r.screen);
    assert!(
        lines
            .iter()
            .all(|l| rigdoctor::report::visible_width(l) <= 80),
        "{}",
        r.screen
    );
    for table in [
        "P2P, tested",
        "Host <-> GPU",
        "GPU -> GPU, P2P",
        "NCCL 2.18.5 all-reduce",
    ] {
        assert!(r.screen.contains(table), "{table}:\n{}", r.screen);
    }
    // The control and NCCL's transports are details.
    assert!(!r.screen.contains("staged through host memory"));
    assert!(r.text.contains("staged through host memory") && r.text.contains("NCCL transports"));
}

/// A rig on slow risers: at 0.4 GB/s of busbw, check's NCCL sweep needs about 4 s, more than
/// its planned deadline (3 s: the sweep's bytes at 2 GB/s). The bandwidth run measured links that
/// slow, so the ranks get a deadline that covers them: slow, not hung. (The fake charges its
/// modelled time to CUDA events, not the wall clock: what this checks is the deadline given.)
#[test]
fn nccl_on_slow_links_is_given_the_time_the_measured_links_need() {
    let rig = load_rig("epyc-2x4090-nonroot");
    let mut fake = four_3090s(json!({"busbw_gbps": 0.4}));
    for g in fake["gpus"].as_array_mut().unwrap() {
        g["h2d_gbps"] = json!(0.8);
        g["d2h_gbps"] = json!(0.8);
    }
    for p in fake["pairs"].as_array_mut().unwrap() {
        p["gbps"] = json!(0.8);
        p["staged_gbps"] = json!(0.6);
    }
    let r = run_gpu("check", &rig, &fake, &[]);
    assert_eq!(
        ids_with(&r, "nccl-hang"),
        Vec::<String>::new(),
        "{}",
        r.text
    );
    let n = &r.report["facts"]["gpu"]["nccl"];
    let res = n["results"].as_array().unwrap();
    assert_eq!(res.len(), 4, "{res:?}");
    assert!(res.iter().all(|x| x["status"] == "measured"), "{res:?}");
    // 2 s + 4 x the sweep's bytes (2 x 89 MB x 12 iterations) at the slowest figure, 0.6 GB/s.
    let d = n["deadline_s"].as_f64().unwrap();
    let want = 2.0 + 4.0 * 2.0 * 89_128_960.0 * 12.0 / 0.6e9;
    assert!((d - want).abs() < 0.05 * want, "{d} vs {want}");
    // Without a bandwidth run (--quick) the planned deadline stands.
    let q = run_gpu("check", &rig, &fake, &["--quick"]);
    let d = q.report["facts"]["gpu"]["nccl"]["deadline_s"]
        .as_f64()
        .unwrap();
    assert!(d < 3.0, "{d}");
}
