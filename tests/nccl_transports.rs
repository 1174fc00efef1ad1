//! The transports NCCL picks per ring hop, end to end through `rigdoctor nccl`: the fake NCCL
//! decides them as NCCL's own rules do (topology, release, CPU vendor, GPU count, NCCL_*
//! environment; see fakegpu/src/nccl/transport.rs and docs/testing.md), and no rig file names
//! a transport.

mod common;

use common::*;
use serde_json::{json, Value};

const SMALL: [&str; 4] = ["--min-size", "1M", "--max-size", "4M"];

/// `n` RTX 3090s, every pair granted P2P at `topology` (NVML's word), on NCCL `version`.
fn rig(n: usize, topology: &str, version: i32) -> Value {
    let name = "NVIDIA GeForce RTX 3090";
    let buses = [
        "0000:0a:00.0",
        "0000:0b:00.0",
        "0000:41:00.0",
        "0000:42:00.0",
    ];
    let gpus: Vec<Value> = (0..n).map(|i| gpu(name, buses[i], i)).collect();
    let mut pairs = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            pairs.push(json!({"a": a, "b": b, "topology": topology}));
        }
    }
    json!({"gpus": gpus, "pairs": pairs, "nccl": {"version": version}})
}

/// `rigdoctor nccl --single-process` on an AMD (X570) or Intel (X99) host: the transport
/// rules are the same across processes, and within one process P2P reads `P2P/direct
/// pointer` in every release (across processes it is P2P/IPC or P2P/CUMEM by release).
fn nccl(host: &str, fake: &Value, env: &[(&str, &str)]) -> Run {
    let sysroot = match host {
        "amd" => load_rig("x570-2x3090-r535"),
        _ => load_rig("x99-2x3090-plx"),
    };
    let mut args = SMALL.to_vec();
    args.push("--single-process");
    run_gpu_env("nccl", &sysroot, fake, &args, env)
}

/// The distinct transports of the channel hops NCCL logged.
fn transports(r: &Run) -> Vec<String> {
    let mut t: Vec<String> = r.report["facts"]["gpu"]["nccl"]["channels"]
        .as_array()
        .unwrap_or_else(|| panic!("no channels: {}", r.text))
        .iter()
        .map(|c| c["via"].as_str().unwrap().to_string())
        .collect();
    t.sort();
    t.dedup();
    t
}

/// busbw of the largest size.
fn busbw(r: &Run) -> f64 {
    let res = r.report["facts"]["gpu"]["nccl"]["results"]
        .as_array()
        .unwrap();
    res.last().unwrap()["busbw_gbps"].as_f64().unwrap()
}

const P2P: &str = "P2P/direct pointer";
const SHM: &str = "SHM/direct/direct";

#[test]
fn four_gpus_across_amd_host_bridges_use_shm_since_2_23_4() {
    // NCCL 2.21: level SYS on AMD; 2.23.4+: PXB (commit 68b5423), the host bridge is beyond it.
    let old = nccl("amd", &rig(4, "PHB", 22105), &[]);
    assert_eq!(transports(&old), [P2P], "{}", old.text);
    for v in [22304, 22602, 22803] {
        let new = nccl("amd", &rig(4, "PHB", v), &[]);
        assert_eq!(transports(&new), [SHM], "{v}: {}", new.text);
    }
    // Across NUMA nodes (SYS) and host bridges of one node (NODE) alike.
    for topo in ["NODE", "SYS"] {
        assert_eq!(transports(&nccl("amd", &rig(4, topo, 22304), &[])), [SHM]);
        assert_eq!(transports(&nccl("amd", &rig(4, topo, 22105), &[])), [P2P]);
    }
    // busbw follows the transport: SHM hops run at the staged figure, P2P at the pair's.
    let shm = nccl("amd", &rig(4, "PHB", 22304), &[]);
    let (p2p_bw, shm_bw) = (busbw(&old), busbw(&shm));
    let gen4 = 16.0 * 128.0 / 130.0 / 8.0 * 16.0;
    assert!(
        (p2p_bw - 0.85 * 0.8 * gen4).abs() < 0.05 * p2p_bw,
        "{p2p_bw}"
    );
    assert!(
        shm_bw < 0.7 * p2p_bw,
        "SHM {shm_bw} GB/s vs P2P {p2p_bw} GB/s"
    );
}

#[test]
fn nccl_p2p_level_widens_and_narrows_the_choice() {
    let amd4 = rig(4, "PHB", 22304);
    assert_eq!(
        transports(&nccl("amd", &amd4, &[("NCCL_P2P_LEVEL", "SYS")])),
        [P2P]
    );
    assert_eq!(
        transports(&nccl("amd", &amd4, &[("NCCL_P2P_LEVEL", "PHB")])),
        [P2P]
    );
    // Old-style numbers (3 is PHB), and names NCCL does not know are ignored (NODE is NVML's).
    assert_eq!(
        transports(&nccl("amd", &amd4, &[("NCCL_P2P_LEVEL", "3")])),
        [P2P]
    );
    assert_eq!(
        transports(&nccl("amd", &amd4, &[("NCCL_P2P_LEVEL", "NODE")])),
        [SHM]
    );
    // Narrower than the path: SHM even where NCCL 2.21 would use P2P.
    let old = rig(4, "PHB", 22105);
    assert_eq!(
        transports(&nccl("amd", &old, &[("NCCL_P2P_LEVEL", "PXB")])),
        [SHM]
    );
    // Across NUMA nodes PHB is too narrow, SYS is not.
    let sys = rig(4, "SYS", 22304);
    assert_eq!(
        transports(&nccl("amd", &sys, &[("NCCL_P2P_LEVEL", "PHB")])),
        [SHM]
    );
    assert_eq!(
        transports(&nccl("amd", &sys, &[("NCCL_P2P_LEVEL", "SYS")])),
        [P2P]
    );
}

#[test]
fn plx_switch_rigs_use_p2p_on_every_release_and_cpu() {
    // Two GPUs per switch (PIX), the switches under one more (PXB).
    let mut fake = rig(4, "PXB", 22304);
    for (i, p) in fake["pairs"].as_array_mut().unwrap().iter_mut().enumerate() {
        // Pairs (0,1) and (2,3) are the first and last.
        if i == 0 || i == 5 {
            p["topology"] = json!("PIX");
        }
    }
    for v in [22105, 22304] {
        fake["nccl"]["version"] = json!(v);
        for host in ["amd", "intel"] {
            let r = nccl(host, &fake, &[]);
            assert_eq!(transports(&r), [P2P], "{host} {v}: {}", r.text);
        }
    }
}

#[test]
fn two_gpus_on_amd_keep_p2p_and_intel_never_had_it_across_host_bridges() {
    for v in [22105, 22304] {
        assert_eq!(
            transports(&nccl("amd", &rig(2, "PHB", v), &[])),
            [P2P],
            "{v}"
        );
        // Intel: PXB before 2.23.4 as after.
        assert_eq!(
            transports(&nccl("intel", &rig(2, "PHB", v), &[])),
            [SHM],
            "{v}"
        );
        assert_eq!(
            transports(&nccl("intel", &rig(4, "PHB", v), &[])),
            [SHM],
            "{v}"
        );
    }
    // Three GPUs on AMD: beyond the exception.
    assert_eq!(transports(&nccl("amd", &rig(3, "PHB", 22304), &[])), [SHM]);
}

#[test]
fn nvlink_pairs_use_p2p_at_any_default_level() {
    // Intel, PHB between the bridged pairs: only the NVLink hops (0-1, 2-3) are P2P.
    let mut fake = rig(4, "PHB", 22304);
    for (i, p) in fake["pairs"].as_array_mut().unwrap().iter_mut().enumerate() {
        if i == 0 || i == 5 {
            p["nvlinks"] = json!(4);
        }
    }
    let r = nccl("intel", &fake, &[]);
    let ch = r.report["facts"]["gpu"]["nccl"]["channels"]
        .as_array()
        .unwrap();
    for c in ch {
        let (a, b) = (
            c["from_rank"].as_u64().unwrap(),
            c["to_rank"].as_u64().unwrap(),
        );
        let bridged = a / 2 == b / 2;
        let want = if bridged { P2P } else { SHM };
        assert_eq!(c["via"], want, "{a}->{b}: {}", r.text);
    }
    // NVML refusing P2P on an NVLink pair fails NCCL's init (paths.cc WARN; its loop checks
    // the pair from the later GPU to the earlier first).
    fake["pairs"][0]["access"] = json!(false);
    let r = nccl("intel", &fake, &[]);
    let f = text(findings(&r.report, "nccl-error")[0]);
    assert!(
        f.contains("P2P is disabled between NVLINK connected GPUs 1 and 0"),
        "{f}"
    );
    // ... unless the user says to go on.
    let r = nccl("intel", &fake, &[("NCCL_IGNORE_DISABLED_P2P", "1")]);
    assert!(findings(&r.report, "nccl-error").is_empty(), "{}", r.text);
    assert_eq!(transports(&r), [P2P, SHM]);
}

#[test]
fn disabled_transports_are_never_used() {
    for v in [22105, 22304] {
        let mut fake = rig(2, "PIX", v);
        fake["pairs"][0]["nvlinks"] = json!(4);
        let r = nccl("amd", &fake, &[("NCCL_P2P_DISABLE", "1")]);
        assert_eq!(transports(&r), [SHM], "{v}");
        // Neither P2P nor SHM: NCCL's network transport (sockets) on one host.
        let r = nccl(
            "amd",
            &fake,
            &[("NCCL_P2P_DISABLE", "1"), ("NCCL_SHM_DISABLE", "1")],
        );
        assert_eq!(transports(&r), ["NET/Socket/0"], "{v}: {}", r.text);
        assert!(busbw(&r) < 2.0, "{}", busbw(&r));
    }
    // P2P refused by the driver: SHM, whatever the level.
    let mut fake = rig(2, "PIX", 22304);
    fake["pairs"][0]["access"] = json!(false);
    assert_eq!(transports(&nccl("amd", &fake, &[])), [SHM]);
}

/// `rigdoctor check` (P2P verified, then NCCL) on an AMD host.
fn check(fake: &Value, env: &[(&str, &str)]) -> Run {
    run_gpu_env("check", &load_rig("x570-2x3090-r535"), fake, &[], env)
}

fn p2p_unused(r: &Run) -> Vec<&Value> {
    findings(&r.report, "nccl-p2p-unused")
}

#[test]
fn nccl_p2p_unused_measures_the_fix_on_a_threadripper_with_four_gpus() {
    let r = check(&rig(4, "PHB", 22304), &[]);
    let f = p2p_unused(&r);
    assert_eq!(f.len(), 1, "{}", r.text);
    assert_eq!(f[0]["severity"], "warn");
    let t = text(f[0]);
    assert!(
        t.contains("NCCL 2.23.4 connected 8 of 8 channel hops through host memory (SHM)"),
        "{t}"
    );
    assert!(
        t.contains("since 2.23.4 P2P only through PCIe switches (level PXB)"),
        "{t}"
    );
    // One process per GPU (as check runs NCCL): P2P through cuMem handles on 2.23 with CUDA 12.4.
    assert!(t.contains("again with NCCL_P2P_LEVEL=SYS: NCCL_DEBUG=INFO transports per channel hop: P2P/CUMEM x8"), "{t}");
    assert!(t.contains("export NCCL_P2P_LEVEL=SYS"), "{t}");
    assert!(
        t.contains("https://github.com/NVIDIA/nccl/commit/68b54236"),
        "{t}"
    );
    // Both figures are the two runs' own, and the second is faster.
    let n = &r.report["facts"]["gpu"]["nccl"];
    let bw = |n: &Value| {
        n["results"].as_array().unwrap().last().unwrap()["busbw_gbps"]
            .as_f64()
            .unwrap()
    };
    let (shm, sys) = (bw(n), bw(&n["p2p_level_sys"]));
    assert!(sys > 1.3 * shm, "{shm} vs {sys}");
    assert!(
        t.contains(&format!(
            "{shm:.1} GB/s, {sys:.1} GB/s with NCCL_P2P_LEVEL=SYS"
        )),
        "{t}"
    );
    assert_eq!(
        n["p2p_level_sys"]["env_set"]
            .as_array()
            .unwrap()
            .last()
            .unwrap(),
        &json!({"name": "NCCL_P2P_LEVEL", "value": "SYS"})
    );
    // Every worker of both runs is accounted for, numbered on.
    let workers = r.report["facts"]["gpu"]["workers"].as_array().unwrap();
    let idx: Vec<u64> = workers
        .iter()
        .map(|w| w["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, (1..=idx.len() as u64).collect::<Vec<_>>());
    assert!(idx.len() >= 2);
}

#[test]
fn nccl_p2p_unused_stays_quiet_where_nccl_uses_p2p_or_p2p_is_broken() {
    // NCCL 2.21 on AMD, a PLX rig, two GPUs on AMD: NCCL uses P2P; no second run.
    let mut plx = rig(4, "PXB", 22304);
    plx["pairs"][0]["topology"] = json!("PIX");
    for fake in [rig(4, "PHB", 22105), plx, rig(2, "PHB", 22304)] {
        let r = check(&fake, &[]);
        assert!(p2p_unused(&r).is_empty(), "{}", r.text);
        assert!(r.report["facts"]["gpu"]["nccl"]
            .get("p2p_level_sys")
            .is_none());
    }
    // The user's choice ran: NCCL_P2P_DISABLE (nccl-env-override speaks of it) or a level.
    for env in [("NCCL_P2P_DISABLE", "1"), ("NCCL_P2P_LEVEL", "PXB")] {
        let r = check(&rig(4, "PHB", 22304), &[env]);
        assert!(p2p_unused(&r).is_empty(), "{env:?}: {}", r.text);
        assert!(r.report["facts"]["gpu"]["nccl"]
            .get("p2p_level_sys")
            .is_none());
    }
    // P2P corrupts between GPUs 1 and 2: never recommended, never tried.
    let mut bad = rig(4, "PHB", 22304);
    bad["pairs"][3]["fault"] = json!("corrupt");
    let r = check(&bad, &[]);
    assert!(!findings(&r.report, "p2p-corrupt").is_empty(), "{}", r.text);
    assert!(p2p_unused(&r).is_empty(), "{}", r.text);
    assert!(r.report["facts"]["gpu"]["nccl"]
        .get("p2p_level_sys")
        .is_none());
}

#[test]
fn nccl_p2p_unused_is_info_when_p2p_is_not_faster_for_nccl() {
    // P2P copies as slow as staged ones: NCCL's choice costs nothing.
    let mut fake = rig(4, "PHB", 22304);
    for p in fake["pairs"].as_array_mut().unwrap() {
        p["gbps"] = json!(5.0);
        p["staged_gbps"] = json!(5.0);
    }
    let r = check(&fake, &[]);
    let f = p2p_unused(&r);
    assert_eq!(f.len(), 1, "{}", r.text);
    assert_eq!(f[0]["severity"], "info");
    let t = text(f[0]);
    assert!(t.contains("P2P was not faster for NCCL here"), "{t}");
    assert!(!t.contains("export NCCL_P2P_LEVEL"), "{t}");
}
