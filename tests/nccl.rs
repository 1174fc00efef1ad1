//! `rigdoctor nccl` end to end: the fake driver's libnccl sums the ranks' buffers for real (so
//! the check is real), charges the rig model's time on each rank's stream, and prints channel
//! lines in NCCL's NCCL_DEBUG=INFO format.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const SMALL: [&str; 4] = ["--min-size", "1M", "--max-size", "4M"];

/// Four 3090s on Gen4 x16, P2P granted between all of them.
fn four(edit: impl FnOnce(&mut Value)) -> Value {
    let name = "NVIDIA GeForce RTX 3090";
    let mut rig = json!({"gpus": [gpu(name, "0000:0a:00.0", 0), gpu(name, "0000:0b:00.0", 1),
                                   gpu(name, "0000:41:00.0", 2), gpu(name, "0000:42:00.0", 3)],
        "pairs": [{"a": 0, "b": 1}, {"a": 1, "b": 2}, {"a": 2, "b": 3}, {"a": 3, "b": 0},
                  {"a": 0, "b": 2}, {"a": 1, "b": 3}]});
    edit(&mut rig);
    rig
}

fn nccl(fake: &Value, args: &[&str]) -> Run {
    let mut all = SMALL.to_vec();
    all.extend_from_slice(args);
    run_gpu("nccl", &load_rig("x570-2x3090-r535"), fake, &all)
}

fn nccl_ids(r: &Run) -> Vec<String> {
    summary(&r.report)
        .into_iter()
        .filter(|s| s.contains("nccl"))
        .collect()
}

fn results(r: &Run) -> Vec<Value> {
    r.report["facts"]["gpu"]["nccl"]["results"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn healthy_four_gpus_match_the_model() {
    let r = nccl(&four(|_| {}), &[]);
    assert_eq!(nccl_ids(&r), Vec::<String>::new(), "{}", r.text);
    let n = &r.report["facts"]["gpu"]["nccl"];
    assert_eq!(n["library"]["version"], "2.18.5");
    assert_eq!(n["devices"], json!([0, 1, 2, 3]));
    let res = results(&r);
    assert_eq!(res.len(), 2, "{res:?}");
    // The fake: 10 us + bytes x 2(n-1)/n at 85% of the slowest ring hop (P2P, 80% of Gen4 x16).
    let busbw = 0.85 * 0.8 * 16.0 * 128.0 / 130.0 / 8.0 * 16.0;
    for x in &res {
        assert_eq!(x["status"], "measured");
        assert_eq!(x["wrong"], json!([0, 0, 0, 0]));
        let bytes = x["bytes"].as_f64().unwrap();
        let want_us = 10.0 + bytes * 1.5 / (busbw * 1e9) * 1e6;
        let got = x["time_us"].as_f64().unwrap();
        assert!((got - want_us).abs() < 0.03 * want_us, "{got} vs {want_us}");
        let bus = x["busbw_gbps"].as_f64().unwrap();
        let alg = x["algbw_gbps"].as_f64().unwrap();
        assert!((bus - 1.5 * alg).abs() < 1e-9, "busbw = algbw x 2(n-1)/n");
    }
    // Transports parsed from every rank's NCCL log: NCCL 2.18 prints a ring of 4 on 2
    // channels and the tree's reverse hops (3 per channel) at init: 14 hops, all P2P, and
    // between processes over CUDA IPC (cuMem is off by default before 2.19).
    let ch = n["channels"].as_array().unwrap();
    assert_eq!(ch.len(), 14);
    assert!(ch.iter().all(|c| c["via"] == "P2P/IPC"), "{ch:?}");
    assert_eq!(n["ranks"].as_array().unwrap().len(), 4);
    assert!(n["ranks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["outcome"] == "ok"));
    // One worker process per rank, each ended cleanly.
    let workers = r.report["facts"]["gpu"]["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 5, "the inventory's worker and one per rank");
    shows(
        &r,
        "NCCL 2.18.5 all-reduce (libnccl.so.2, 4 ranks, one process each)",
    );
    shows(&r, "4194304   1048576");
    shows(&r, "00       0 -> 1        P2P/IPC");
}

/// --single-process: every rank in one process (ncclCommInitAll), P2P by direct pointer.
#[test]
fn single_process_runs_every_rank_in_one_worker() {
    let r = nccl(&four(|_| {}), &["--single-process"]);
    assert_eq!(nccl_ids(&r), Vec::<String>::new(), "{}", r.text);
    let n = &r.report["facts"]["gpu"]["nccl"];
    let ch = n["channels"].as_array().unwrap();
    assert_eq!(ch.len(), 14);
    assert!(ch.iter().all(|c| c["via"] == "P2P/direct pointer"));
    assert!(n.get("ranks").is_none(), "{n}");
    assert_eq!(results(&r)[0]["wrong"], json!([0, 0, 0, 0]));
    assert_eq!(
        r.report["facts"]["gpu"]["workers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    shows(
        &r,
        "NCCL 2.18.5 all-reduce (libnccl.so.2, 4 ranks in one process)",
    );
    shows(&r, "00       0 -> 1        P2P/direct pointer");
}

#[test]
fn hanging_collective_costs_one_deadline() {
    let r = nccl(
        &four(|f| f["nccl"] = json!({"fault": "hang"})),
        &["--timeout", "1.5"],
    );
    assert_eq!(r.code, 1);
    assert_eq!(nccl_ids(&r), ["error nccl-hang"]);
    // The sweep's deadline: --timeout, or 2 s plus the sweep's bytes at 2 GB/s.
    assert!(r.took < Duration::from_secs(10), "{:?}", r.took);
    let f = text(findings(&r.report, "nccl-hang")[0]);
    assert!(
        f.contains("all-reduce of 1048576 bytes per rank: no completion within"),
        "{f}"
    );
    // A collective that never completes is seen where the host waits for it.
    assert!(
        f.contains("(in: every rank: 1048576 bytes: timed iterations)"),
        "{f}"
    );
    assert!(f.contains("P2P/IPC x14"), "{f}");
    assert!(f.contains("NCCL_P2P_DISABLE=1"), "{f}");
    assert_eq!(results(&r).len(), 1);
    shows(&r, "HANG");
}

#[test]
fn wrong_sums_are_counted_per_rank() {
    let r = nccl(&four(|f| f["nccl"] = json!({"fault": "wrong"})), &[]);
    assert_eq!(nccl_ids(&r), ["error nccl-wrong-result"]);
    let f = text(findings(&r.report, "nccl-wrong-result")[0]);
    assert!(f.contains("rank 3 (GPU 3 (0000:42:00.0)): 1 wrong"), "{f}");
    assert_eq!(results(&r)[0]["wrong"], json!([0, 0, 0, 1]));
    shows(&r, "WRONG");
}

#[test]
fn missing_nccl_is_a_note_and_the_rest_reports() {
    // A file that is there but is no library (a missing path is a usage error, exit 2).
    let not_a_library = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let r = nccl(&four(|_| {}), &["--nccl-lib", not_a_library]);
    assert_eq!(nccl_ids(&r), ["info nccl-not-found"]);
    let f = text(findings(&r.report, "nccl-not-found")[0]);
    assert!(f.contains(not_a_library), "{f}");
    assert!(f.contains("--nccl-lib"), "{f}");
    // The inventory still ran.
    assert_eq!(
        r.report["facts"]["gpu"]["cuda"]["devices"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn known_bad_release_for_these_gpus() {
    let blackwell = |f: &mut Value| {
        f["nccl"] = json!({"version": 22501});
        for g in 0..4 {
            f["gpus"][g]["cc"] = json!([12, 0]);
        }
    };
    let r = nccl(&four(blackwell), &[]);
    assert_eq!(nccl_ids(&r), ["error nccl-known-bad"], "{}", r.text);
    assert!(text(findings(&r.report, "nccl-known-bad")[0]).contains("nccl-2.25.1-sm120"));
    // The same release on Ampere is not that bug.
    let r = nccl(&four(|f| f["nccl"] = json!({"version": 22501})), &[]);
    assert_eq!(nccl_ids(&r), Vec::<String>::new());
}

#[test]
fn one_gpu_runs_one_rank() {
    let r = nccl(&four(|_| {}), &["--devices", "0"]);
    assert_eq!(nccl_ids(&r), Vec::<String>::new(), "{}", r.text);
    let res = results(&r);
    assert_eq!(res[0]["wrong"], json!([0]));
    assert_eq!(res[0]["busbw_gbps"], 0.0);
}

#[test]
fn nccl_error_is_reported_with_its_text() {
    // A generous step deadline: four ranks' workers start and rendezvous before the error, and
    // on a loaded 2-core CI machine that once took longer than the default 10 s (a hang).
    let r = nccl(
        &four(|f| f["nccl"] = json!({"fault": "error"})),
        &["--timeout", "60"],
    );
    assert_eq!(nccl_ids(&r), ["error nccl-error"]);
    let f = text(findings(&r.report, "nccl-error")[0]);
    assert!(
        // NCCL's own cause (ncclGetLastError), not the generic "run with NCCL_DEBUG=INFO".
        f.contains("ncclGroupEnd: ncclUnhandledCudaError (Cuda failure 'no kernel image"),
        "{f}"
    );
    shows(&r, "ERROR");
}

/// One process per GPU, as DDP runs it: a rank whose process dies mid-sweep is named as the
/// cause, the ranks that waited for it are said as waiting, all within one deadline, and every
/// worker is gone afterwards.
#[test]
fn a_rank_that_dies_is_named_and_the_others_waited() {
    let r = nccl(
        &four(|f| f["nccl"] = json!({"fault": "crash", "fault_rank": 2})),
        &["--timeout", "1.5"],
    );
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(r.took < Duration::from_secs(12), "{:?}", r.took);
    assert_eq!(nccl_ids(&r), ["error nccl-error"], "{}", r.text);
    let f = text(findings(&r.report, "nccl-error")[0]);
    assert!(f.contains("rank 2 (GPU 2): the worker"), "{f}");
    assert!(
        f.contains("the other ranks waited for it: rank 0 (GPU 0)"),
        "{f}"
    );
    let ranks = r.report["facts"]["gpu"]["nccl"]["ranks"]
        .as_array()
        .unwrap()
        .clone();
    assert!(ranks[2]["outcome"]
        .as_str()
        .unwrap()
        .contains("failed at 1048576 bytes: the worker"));
    assert!(ranks[0]["outcome"]
        .as_str()
        .unwrap()
        .starts_with("hung at 1048576 bytes"));
    // The crashed rank's worker was killed by SIGABRT; the others were killed after their hang.
    let workers = r.report["facts"]["gpu"]["workers"].as_array().unwrap();
    let ends: Vec<&str> = workers
        .iter()
        .map(|w| w["exit"]["status"].as_str().unwrap())
        .collect();
    assert!(ends.contains(&"signaled"), "{ends:?}");
    assert!(!ends.contains(&"hung-on-exit"), "{ends:?}");
}

/// A wrong sum on one rank's process is counted on that rank only.
#[test]
fn a_wrong_sum_on_one_process_is_that_ranks() {
    let r = nccl(
        &four(|f| f["nccl"] = json!({"fault": "wrong", "fault_rank": 1})),
        &[],
    );
    assert_eq!(nccl_ids(&r), ["error nccl-wrong-result"]);
    assert_eq!(results(&r)[0]["wrong"], json!([0, 1, 0, 0]));
    let f = text(findings(&r.report, "nccl-wrong-result")[0]);
    assert!(f.contains("rank 1 (GPU 1 (0000:0b:00.0)): 1 wrong"), "{f}");
}
