//! Findings from `rigdoctor nccl`: NCCL missing, a collective that hangs, fails or returns
//! wrong sums, and NCCL releases known to be broken for these GPUs.

use super::p2p::{device_label, explain};
use crate::code::Code;
use crate::facts::{AllReduceOutcome, Facts, NcclFacts, Probed, Why};
use crate::finding::{Finding, Severity};
use crate::knowledge::{Knowledge, Version};

const NCCL_INSTALL: &str = "https://docs.nvidia.com/deeplearning/nccl/install-guide/index.html";
const NCCL_TROUBLESHOOTING: &str =
    "https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/troubleshooting.html";
const NCCL_TESTS_PERF: &str = "https://github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md";

fn nccl(facts: &Facts) -> Option<&NcclFacts> {
    facts.gpu.as_ref()?.nccl.as_ref()
}

fn gpus(facts: &Facts, n: &NcclFacts) -> Vec<String> {
    n.devices
        .iter()
        .map(|&d| device_label(facts, d).1)
        .collect()
}

/// Where the transports went, e.g. "NCCL chose P2P/IPC/read for 8 of 8 channel hops".
fn transports(n: &NcclFacts) -> Option<String> {
    if n.channels.is_empty() {
        return None;
    }
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for c in &n.channels {
        match kinds.iter_mut().find(|k| k.0 == c.via) {
            Some(k) => k.1 += 1,
            None => kinds.push((c.via.clone(), 1)),
        }
    }
    let list: Vec<String> = kinds.iter().map(|(v, k)| format!("{v} x{k}")).collect();
    Some(format!(
        "NCCL_DEBUG=INFO transports per channel hop: {}",
        list.join(", ")
    ))
}

fn uses_p2p(n: &NcclFacts) -> bool {
    n.channels.is_empty() || n.channels.iter().any(|c| c.transport == "P2P")
}

/// No NCCL library could be loaded: said as info, since only multi-GPU jobs need it.
pub fn not_found(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(n) = nccl(facts) else {
        return Vec::new();
    };
    let Probed::Unknown {
        unknown: Why::Absent,
        detail,
        ..
    } = &n.library
    else {
        return Vec::new();
    };
    vec![Finding::new(
        Code::NcclNotFound,
        Severity::Info,
        "NCCL not found: the all-reduce test did not run",
    )
    .evidence(detail.clone())
    .evidence("looked for: --nccl-lib, libnccl.so.2 / libnccl.so on the loader path (LD_LIBRARY_PATH, ld.so.cache), nvidia/nccl/lib/libnccl.so.2 under $VIRTUAL_ENV, $CONDA_PREFIX, ~/.local and /usr{,/local}/lib/python3*/{site,dist}-packages")
    .fix("PyTorch's pip wheels bring it: point rigdoctor at it with --nccl-lib <venv>/lib/python3.X/site-packages/nvidia/nccl/lib/libnccl.so.2, or run rigdoctor inside the activated venv")
    .fix("or install the system package: sudo apt install libnccl2 (CUDA network repository)")
    .refs([NCCL_INSTALL])]
}

/// A collective (or NCCL's init) that did not finish within the deadline.
pub fn hang(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    hang_or_error(facts, kb, Code::NcclHang)
}

/// NCCL init or a collective returned an error.
pub fn error(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    hang_or_error(facts, kb, Code::NcclError)
}

/// The library was found, but NCCL (init or a collective) failed or hung: finding `which`.
fn hang_or_error(facts: &Facts, kb: &Knowledge, which: Code) -> Vec<Finding> {
    let Some(n) = nccl(facts) else {
        return Vec::new();
    };
    if super::host_limits::explains_gpu_failures(facts) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let lib = n
        .library
        .known()
        .map(|l| format!("NCCL {} ({})", l.version, l.path));
    let init_failed = match &n.library {
        // Never run because CUDA initialisation hung: that is cuda-unavailable's finding.
        Probed::Unknown {
            unknown, detail, ..
        } if *unknown != Why::Absent && *unknown != Why::NotRun => {
            Some((*unknown == Why::Hang, detail.clone()))
        }
        // Loaded, but ncclCommInitAll failed: the version is known.
        Probed::Known(_) => n.init_error.as_ref().map(|e| (false, e.to_string())),
        _ => None,
    };
    let mut hung: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    if let Some((is_hang, detail)) = init_failed {
        if is_hang {
            hung.push(format!("ncclCommInitAll: {detail}"));
        } else {
            errors.push(detail);
        }
    }
    if let Some(h) = &n.init_hang {
        hung.push(h.clone());
    }
    for r in &n.results {
        match &r.outcome {
            AllReduceOutcome::Hang { stage } => hung.push(format!(
                "all-reduce of {} bytes per rank: no completion within {:.1} s{}",
                r.bytes,
                n.deadline_s,
                stage
                    .as_ref()
                    .map(|s| format!(" (in: {s})"))
                    .unwrap_or_default()
            )),
            AllReduceOutcome::Failed { error, .. } => {
                errors.push(format!("all-reduce of {} bytes: {error}", r.bytes))
            }
            AllReduceOutcome::Measured { .. } => {}
        }
    }
    let (a, b) = (n.devices.first().copied(), n.devices.get(1).copied());
    for (id, lines, title) in [
        (
            Code::NcclHang,
            hung,
            "NCCL all-reduce hangs: a job using NCCL (DDP, FSDP, torchrun) freezes",
        ),
        (
            Code::NcclError,
            errors,
            "NCCL failed: a job using NCCL fails at init or at its first collective",
        ),
    ] {
        if lines.is_empty() || id != which {
            continue;
        }
        let mut f = Finding::new(id, Severity::Error, title).gpus(gpus(facts, n));
        if let Some(l) = &lib {
            f = f.evidence(format!("{l}, {}", n.layout()));
        }
        for l in lines {
            f = f.evidence(l);
        }
        // One process per GPU: how each rank's process ended, the one that failed first.
        for r in n.troubled_ranks() {
            f = f.evidence(r);
        }
        if let Some(t) = transports(n) {
            f = f.evidence(t);
        }
        // NCCL's own complaints, from the log rigdoctor had it write (NCCL_DEBUG=INFO).
        for w in n.warnings.iter().take(5) {
            f = f.evidence(format!("NCCL log: {w}"));
        }
        if let Some(p2p) = facts.gpu.as_ref().and_then(|g| g.p2p.as_ref()) {
            let bad = p2p.tests.iter().filter(|t| t.outcome.broken()).count();
            let skipped = p2p
                .tests
                .iter()
                .filter(|t| matches!(t.outcome, crate::facts::PairOutcome::Skipped { .. }))
                .count();
            f = f.evidence(format!(
                "P2P verification in this run: {bad} of {} directions failed or hung{}",
                p2p.tests.len() - skipped,
                if skipped > 0 {
                    format!(" ({skipped} more not tried: the other direction of a pair hung)")
                } else {
                    String::new()
                }
            ));
        }
        f = match (a, b) {
            (Some(a), Some(b)) => explain(facts, kb, f, a, b, uses_p2p(n)),
            _ => f.fix("read what the kernel saw: sudo dmesg | grep -i -e Xid -e 'IO_PAGE_FAULT'"),
        };
        out.push(f.refs([NCCL_TROUBLESHOOTING]));
    }
    out
}

/// The all-reduce completed but some rank's sum is wrong.
pub fn wrong_result(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    let Some(n) = nccl(facts) else {
        return Vec::new();
    };
    let bad: Vec<String> = n
        .results
        .iter()
        .filter_map(|r| match &r.outcome {
            AllReduceOutcome::Measured { wrong, .. } if wrong.iter().any(|&w| w > 0) => {
                let per: Vec<String> = wrong
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| **w > 0)
                    .map(|(rank, w)| {
                        let d = n.devices.get(rank).copied().unwrap_or(rank as i32);
                        format!("rank {rank} ({}): {w} wrong", device_label(facts, d).0)
                    })
                    .collect();
                Some(format!(
                    "all-reduce of {} bytes per rank: {}",
                    r.bytes,
                    per.join(", ")
                ))
            }
            _ => None,
        })
        .collect();
    if bad.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        Code::NcclWrongResult,
        Severity::Error,
        "NCCL all-reduce returned wrong sums: training on this rig silently corrupts gradients",
    )
    .gpus(gpus(facts, n))
    .evidence(
        "inputs are small integers, so every float32 sum is exact: any difference is corruption",
    );
    for l in bad {
        f = f.evidence(l);
    }
    if let Some(t) = transports(n) {
        f = f.evidence(t);
    }
    let (a, b) = (n.devices.first().copied(), n.devices.get(1).copied());
    if let (Some(a), Some(b)) = (a, b) {
        f = explain(facts, kb, f, a, b, uses_p2p(n));
    }
    vec![f.refs([NCCL_TROUBLESHOOTING, NCCL_TESTS_PERF])]
}

/// An NCCL release of checks/nccl.toml, for these GPUs.
pub fn known_bad(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    let Some(n) = nccl(facts) else {
        return Vec::new();
    };
    let Some(lib) = n.library.known() else {
        return Vec::new();
    };
    let Some(v) = Version::parse(&lib.version) else {
        return Vec::new();
    };
    let ccs: Vec<String> = facts
        .gpu
        .as_ref()
        .and_then(|g| g.cuda.known())
        .map(|c| {
            c.devices
                .iter()
                .filter(|d| n.devices.contains(&d.ordinal))
                .map(|d| format!("{}.{}", d.compute_capability[0], d.compute_capability[1]))
                .collect()
        })
        .unwrap_or_default();
    kb.nccl
        .iter()
        .filter(|e| e.versions.contains(&v))
        .filter(|e| {
            e.compute_capabilities.is_empty()
                || e.compute_capabilities.iter().any(|c| ccs.contains(c))
        })
        .map(|e| {
            let mut f = Finding::new(Code::NcclKnownBad, e.severity, e.title.clone())
                .gpus(gpus(facts, n))
                .evidence(format!("NCCL {} loaded from {}", lib.version, lib.path))
                .evidence(format!("symptom: {}", e.symptom))
                .evidence(format!("knowledge-base entry {}", e.id));
            if let Some(fixed) = &e.fixed_in {
                f = f.evidence(format!("fixed in {fixed}"));
            }
            for x in &e.fix {
                f = f.fix(x.clone());
            }
            f.refs(e.sources.clone())
        })
        .collect()
}

/// Bus bandwidth far below what the measured links predict: the slowest ring hop's measured
/// copy (P2P where NCCL used P2P, else the staged copy) bounds a ring all-reduce's busbw.
/// Needs the bandwidth run of the same report (`rigdoctor check`).
pub fn slow(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    use crate::facts::{Kind, Method};
    let (Some(n), Some(bw)) = (
        nccl(facts),
        facts.gpu.as_ref().and_then(|g| g.bandwidth.as_ref()),
    ) else {
        return Vec::new();
    };
    let ranks = n.devices.len();
    if ranks < 2 {
        return Vec::new();
    }
    let Some((bytes, busbw)) = n.largest_correct() else {
        return Vec::new();
    };
    let measured = |kind: Kind, a: i32, b: i32| -> Option<f64> {
        bw.measurements
            .iter()
            .filter(|m| m.kind == kind && m.method == Method::Ce && !m.latency && !m.bidirectional)
            .filter(|m| {
                (m.from, m.to) == (Some(a), Some(b)) || (m.from, m.to) == (Some(b), Some(a))
            })
            .find_map(|m| m.median())
    };
    let mut hops = Vec::new();
    for i in 0..ranks {
        let (ra, rb) = (i, (i + 1) % ranks);
        let (a, b) = (n.devices[ra], n.devices[rb]);
        let over_p2p = n.channels.iter().any(|c| {
            c.from_rank as usize == ra && c.to_rank as usize == rb && c.transport == "P2P"
        });
        let (kind, label) = if over_p2p {
            (Kind::P2p, "P2P")
        } else {
            (Kind::Staged, "staged through host memory")
        };
        let Some(gbps) = measured(kind, a, b) else {
            // A hop without a figure: no prediction.
            return Vec::new();
        };
        hops.push((gbps, a, b, label));
    }
    let Some(&(slowest, a, b, label)) = hops.iter().min_by(|x, y| x.0.total_cmp(&y.0)) else {
        return Vec::new();
    };
    if busbw >= SLOW_FRACTION * slowest {
        return Vec::new();
    }
    vec![Finding::new(
        Code::NcclSlow,
        Severity::Warn,
        format!("NCCL all-reduce reaches {busbw:.1} GB/s bus bandwidth where the links measured predict about {slowest:.1}"),
    )
    .gpus(gpus(facts, n))
    .evidence(format!("all-reduce of {bytes} bytes per rank over {ranks} ranks: busbw {busbw:.1} GB/s"))
    .evidence(format!(
        "slowest ring hop: GPU {a} -> GPU {b}, {label}, measured {slowest:.1} GB/s by the bandwidth run; a ring all-reduce's busbw approaches its slowest hop"
    ))
    .evidence(transports(n).unwrap_or_else(|| "NCCL's transports were not logged".into()))
    .fix("run the job once with NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,GRAPH: look for SHM or NET where P2P was expected, and for NCCL_P2P_LEVEL / NCCL_P2P_DISABLE / NCCL_ALGO overrides (see nccl-env-override)")
    .fix("compare with nccl-tests: all_reduce_perf -b 64M -e 256M -g <GPUs>")
    .refs([NCCL_TESTS_PERF, NCCL_TROUBLESHOOTING])]
}

const NCCL_P2P_LEVEL_DOC: &str =
    "https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html#nccl-p2p-level";

/// NCCL_P2P_LEVEL=SYS counts as faster from this gain on: below it, run-to-run noise.
const P2P_LEVEL_GAIN: f64 = 0.05;

/// NCCL went through host memory (SHM) between GPUs whose P2P this run verified correct both
/// ways, with NCCL_P2P_LEVEL and NCCL_P2P_DISABLE unset: NCCL's default P2P level left P2P
/// out (PXB since 2.23.4 unless an AMD CPU has two GPUs or fewer; PXB on Intel before). The
/// rerun with NCCL_P2P_LEVEL=SYS says whether P2P is correct and faster for NCCL too; only
/// then is setting it the fix.
pub fn p2p_unused(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    let Some(n) = nccl(facts) else {
        return Vec::new();
    };
    // The user's own level or switch is what ran (nccl-env-override speaks of it).
    if facts.env.lookup("NCCL_P2P_LEVEL").is_some()
        || facts.env.lookup("NCCL_P2P_DISABLE").is_some()
    {
        return Vec::new();
    }
    let Some(tests) = facts
        .gpu
        .as_ref()
        .and_then(|g| g.p2p.as_ref())
        .map(|p| &p.tests)
    else {
        return Vec::new();
    };
    // A failed all-reduce is its own finding; a P2P pair that failed verification keeps
    // NCCL's SHM the right choice.
    let Some(hops) = crate::facts::p2p_unused(n, tests).filter(|_| n.all_correct()) else {
        return Vec::new();
    };
    let Some((bytes, busbw)) = n.largest_correct() else {
        return Vec::new();
    };
    let version = n
        .library
        .known()
        .map(|l| l.version.clone())
        .unwrap_or_default();
    let shm = n.channels.iter().filter(|c| c.transport == "SHM").count();
    let list: Vec<String> = hops
        .iter()
        .map(|(a, b)| format!("GPU {a} -> GPU {b}"))
        .collect();
    let mut evidence = vec![
        format!(
            "NCCL {version} connected {shm} of {} channel hops through host memory (SHM): {}",
            n.channels.len(),
            list.join(", ")
        ),
        "P2P verified correct in both directions between the GPUs of each of those hops in this run".into(),
    ];
    let default = Version::parse(&version).and_then(|v| kb.p2p_default(&v));
    if let Some(d) = default {
        evidence.push(format!(
            "NCCL_P2P_LEVEL and NCCL_P2P_DISABLE are unset, so NCCL's default applies: since {} {}",
            d.since, d.summary
        ));
    }
    evidence.push(format!(
        "NCCL's default: busbw {busbw:.1} GB/s (all-reduce of {bytes} bytes per rank)"
    ));
    let mut refs: Vec<String> = default.map(|d| d.sources.clone()).unwrap_or_default();
    refs.push(NCCL_P2P_LEVEL_DOC.into());
    let gpu_list = gpus(facts, n);
    let finding = |severity, title: String, evidence: Vec<String>| {
        let f = Finding::new(Code::NcclP2pUnused, severity, title).gpus(gpu_list.clone());
        evidence
            .into_iter()
            .fold(f, Finding::evidence)
            .refs(refs.clone())
    };
    let Some(again) = n.p2p_level_sys.as_deref() else {
        return vec![finding(
            Severity::Info,
            "NCCL copies through host memory between GPUs whose P2P works".into(),
            evidence,
        )
        .fix("measure it: run the same job (or rigdoctor check) with NCCL_P2P_LEVEL=SYS and compare the all-reduce bus bandwidth; keep it only if it is faster and correct")];
    };
    evidence.push(format!(
        "again with NCCL_P2P_LEVEL=SYS: {}",
        transports(again).unwrap_or_else(|| "NCCL's transports were not logged".into())
    ));
    if !again.all_correct() {
        let what = if again.init_error.is_some() {
            "failed at init"
        } else if again.results.iter().any(|r| matches!(&r.outcome, AllReduceOutcome::Measured { wrong, .. } if wrong.iter().any(|&w| w > 0))) {
            "gave wrong sums"
        } else {
            "did not finish (hung or failed)"
        };
        return vec![finding(
            Severity::Warn,
            format!("NCCL copies through host memory where P2P works, but with NCCL_P2P_LEVEL=SYS its all-reduce {what}"),
            evidence,
        )
        .fix("keep NCCL's default (leave NCCL_P2P_LEVEL unset): NCCL's own P2P path fails on this rig although plain P2P copies verified; report it with this run's JSON")];
    }
    let same = again
        .results
        .iter()
        .find(|r| r.bytes == bytes)
        .and_then(|r| match &r.outcome {
            AllReduceOutcome::Measured { busbw_gbps, .. } => Some(*busbw_gbps),
            _ => None,
        });
    let Some(sys) = same else {
        return Vec::new();
    };
    evidence.push(format!(
        "with NCCL_P2P_LEVEL=SYS: busbw {sys:.1} GB/s (same size), sums correct on every rank"
    ));
    let used_p2p = again.shm_hops().is_empty() && uses_p2p(again);
    let gain = if busbw > 0.0 { sys / busbw - 1.0 } else { 0.0 };
    if !used_p2p || gain < P2P_LEVEL_GAIN {
        let why = if used_p2p {
            format!(
                "P2P was not faster for NCCL here ({:+.0}%): nothing to change",
                100.0 * gain
            )
        } else {
            "NCCL still used host memory with NCCL_P2P_LEVEL=SYS: nothing to gain from it".into()
        };
        return vec![finding(
            Severity::Info,
            format!("NCCL copies through host memory where P2P works; {why}"),
            evidence,
        )];
    }
    vec![finding(
        Severity::Warn,
        format!(
            "NCCL copies through host memory where P2P works: {busbw:.1} GB/s, {sys:.1} GB/s with NCCL_P2P_LEVEL=SYS ({:+.0}%)",
            100.0 * gain
        ),
        evidence,
    )
    .fix(format!(
        "export NCCL_P2P_LEVEL=SYS before starting the job (or add NCCL_P2P_LEVEL=SYS to /etc/nccl.conf): measured here {:+.0}% all-reduce bus bandwidth, sums correct",
        100.0 * gain
    ))]
}

/// busbw below this share of the slowest hop's measured bandwidth is `nccl-slow`. NCCL rings on
/// PCIe reach 70-90% of a hop's copy bandwidth at large sizes (research/reference-tools.md:
/// 8x5090 busbw 28 GB/s on Gen5); half leaves room for smaller sizes and protocol overhead.
const SLOW_FRACTION: f64 = 0.5;
