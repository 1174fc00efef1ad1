//! What the verified P2P transfers showed, with the likely cause ranked from the other facts.

use super::topology::bridges_between;
use super::{kernel_param_fix, NCCL_TROUBLESHOOTING};
use crate::code::Code;
use crate::facts::{
    Facts, GpuPci, Library, PairOutcome, PairTest, PathResult, Probed, TransferPath, Verdict,
};
use crate::finding::{Finding, Severity};
use crate::knowledge::{is_geforce, Knowledge};

const SIMPLE_P2P: &str =
    "https://github.com/NVIDIA/cuda-samples/tree/master/Samples/0_Introduction/simpleP2P";
const NCCL_ENV: &str = "https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html";
const WORKAROUND: &str = "workaround until the cause is fixed: export NCCL_P2P_DISABLE=1 before starting the job (NCCL then copies through host memory: correct, slower)";

/// A CUDA device as the findings name it: "GPU 1 (0000:41:00.0)".
pub(super) struct Gpu<'a> {
    pub(super) ordinal: i32,
    pub(super) bdf: Option<&'a str>,
    pub(super) name: Option<&'a str>,
}

impl Gpu<'_> {
    pub(super) fn label(&self) -> String {
        match self.bdf {
            Some(b) => format!("GPU {} ({b})", self.ordinal),
            None => format!("GPU {}", self.ordinal),
        }
    }
}

pub(super) fn gpu(facts: &Facts, ordinal: i32) -> Gpu<'_> {
    let d = facts
        .gpu
        .as_ref()
        .and_then(|g| g.cuda.known())
        .and_then(|c| c.devices.iter().find(|d| d.ordinal == ordinal));
    Gpu {
        ordinal,
        bdf: d.map(|d| d.bus_id.as_str()),
        name: d.map(|d| d.name.as_str()),
    }
}

fn tests(facts: &Facts) -> &[PairTest] {
    facts
        .gpu
        .as_ref()
        .and_then(|g| g.p2p.as_ref())
        .map_or(&[], |p| p.tests.as_slice())
}

pub(super) fn pci_gpu<'a>(facts: &'a Facts, bdf: Option<&str>) -> Option<&'a GpuPci> {
    let bdf = bdf?;
    facts.pci.known()?.gpus.iter().find(|g| g.bdf == bdf)
}

/// Whether an active NVLink joins the two GPUs (NVML link states, by remote bus id).
pub(super) fn nvlinked(facts: &Facts, a: Option<&str>, b: Option<&str>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return false;
    };
    let Some(nvml) = facts.gpu.as_ref().and_then(|g| g.nvml.known()) else {
        return false;
    };
    nvml.devices
        .iter()
        .filter(|d| d.bus_id.known().map(String::as_str) == Some(a))
        .filter_map(|d| d.nvlinks.known())
        .flatten()
        .any(|l| l.active && l.remote_bus_id.as_deref() == Some(b))
}

/// The likely causes of a P2P failure between two GPUs, most likely first, and what was ruled
/// out or could not be checked. Each cause comes with its fix.
struct Causes {
    likely: Vec<(String, Vec<String>)>,
    notes: Vec<String>,
}

fn causes(facts: &Facts, kb: &Knowledge, a: &Gpu, b: &Gpu) -> Causes {
    let mut c = Causes {
        likely: Vec::new(),
        notes: Vec::new(),
    };
    let (pa, pb) = (pci_gpu(facts, a.bdf), pci_gpu(facts, b.bdf));

    // 1. A driver release known to break P2P on these GPUs: the knowledge base matched this
    //    exact release and GPU family, the most specific evidence there is.
    let mut ruled_out: Vec<(String, String)> = Vec::new();
    for (e, f) in super::driver::known_bad_matches(facts, kb) {
        let hit = [a.bdf, b.bdf]
            .into_iter()
            .flatten()
            .any(|x| f.gpus.iter().any(|g| g == x));
        if hit {
            ruled_out.extend(e.not_fixed_by.iter().map(|c| (c.clone(), e.id.clone())));
            c.likely
                .push((format!("{} (see driver-known-bad)", f.title), f.fix.clone()));
        }
    }
    let ruled_out_by = |cause: &str| {
        ruled_out
            .iter()
            .find(|(c, _)| c == cause)
            .map(|(_, id)| id.clone())
    };

    // 2. The IOMMU translating either GPU's DMA.
    let translated: Vec<&str> = [pa, pb]
        .into_iter()
        .flatten()
        .filter(|g| {
            g.iommu_group
                .known()
                .and_then(|grp| grp.as_ref()?.translated())
                == Some(true)
        })
        .map(|g| g.bdf.as_str())
        .collect();
    if let (false, Some(entry)) = (translated.is_empty(), ruled_out_by("iommu")) {
        c.notes.push(format!(
            "the IOMMU translates the DMA of {}, but the reports behind {entry} say switching it off does not help: not ranked as a cause",
            translated.join(", ")
        ));
    } else if !translated.is_empty() {
        c.likely.push((
            format!(
                "the IOMMU translates the DMA of {} (see iommu-translation)",
                translated.join(", ")
            ),
            vec![format!(
                "stop IOMMU translation of host devices: {}, or switch the IOMMU off in the BIOS",
                kernel_param_fix("iommu=pt")
            )],
        ));
    } else if pa.is_none() || pb.is_none() {
        c.notes
            .push("IOMMU not checked: the GPUs were not found on the PCI bus".into());
    }

    // 3. ACS redirecting peer traffic on a bridge between them.
    if let (Some(ga), Some(gb), Some(topo)) = (pa, pb, facts.pci.known()) {
        if let (Some(path_a), Some(path_b)) = (ga.path.known(), gb.path.known()) {
            let mut redirecting = Vec::new();
            let mut unread = 0;
            for bdf in bridges_between(path_a, path_b) {
                match topo.bridge(&bdf).map(|b| &b.config) {
                    Some(Probed::Known(cfg)) => {
                        if let Probed::Known(Some(acs)) = &cfg.acs {
                            if acs.redirecting() {
                                redirecting.push(bdf);
                            }
                        } else if cfg.acs.known().is_none() {
                            unread += 1;
                        }
                    }
                    _ => unread += 1,
                }
            }
            if let (false, Some(entry)) = (redirecting.is_empty(), ruled_out_by("acs")) {
                c.notes.push(format!(
                    "PCIe ACS redirects peer traffic on {}, but the reports behind {entry} say changing it does not help: not ranked as a cause",
                    redirecting.join(", ")
                ));
            } else if !redirecting.is_empty() {
                c.likely.push((
                    format!(
                        "PCIe ACS redirects peer traffic on {} between them (see acs-redirect)",
                        redirecting.join(", ")
                    ),
                    vec![crate::report::fixes_of("acs-redirect")],
                ));
            } else if unread > 0 {
                c.notes.push(format!(
                    "ACS not checked on {unread} bridge(s) between them: needs root (run with sudo)"
                ));
            }
        }
    }

    // 4. GeForce over PCIe: NVIDIA does not support P2P there, whatever the driver grants.
    let geforce = [a.name, b.name].iter().all(|n| n.is_some_and(is_geforce));
    if geforce && !nvlinked(facts, a.bdf, b.bdf) {
        c.likely.push((
            "GeForce GPUs without NVLink: NVIDIA does not support PCIe P2P on them, and drivers that grant it anyway have shipped broken (FM-01/02)".into(),
            vec!["keep P2P off for these cards (NCCL_P2P_DISABLE=1), or use a driver release reported good for P2P on them".into()],
        ));
    }
    c
}

/// Add ranked causes and the closing fixes to a finding.
fn with_causes(mut f: Finding, c: Causes, staged_ok: bool) -> Finding {
    if c.likely.is_empty() {
        f = f.evidence("no cause visible in the facts read: look for IOMMU faults and Xid errors in the kernel log");
    }
    for (i, (why, _)) in c.likely.iter().enumerate() {
        f = f.evidence(format!("likely cause {}: {why}", i + 1));
    }
    for n in c.notes {
        f = f.evidence(n);
    }
    for (_, fixes) in c.likely {
        for fix in fixes {
            f = f.fix(fix);
        }
    }
    f = f.fix("read what the kernel saw: sudo dmesg | grep -i -e 'IO_PAGE_FAULT' -e DMAR -e AMD-Vi -e Xid");
    if !staged_ok {
        f.fix.retain(|x| !x.contains("NCCL_P2P_DISABLE"));
    }
    if staged_ok && !f.fix.iter().any(|x| x.contains("NCCL_P2P_DISABLE=1")) {
        f = f.fix(WORKAROUND);
    }
    f
}

fn path_result(t: &PairTest, p: TransferPath) -> Option<&PathResult> {
    t.outcome.paths().iter().find(|r| r.path == p)
}

fn staged_ok(t: &PairTest) -> bool {
    path_result(t, TransferPath::Staged).is_some_and(|r| r.verdict == Verdict::Ok)
}

/// "GPU 0 (0000:0a:00.0) -> GPU 1 (0000:41:00.0)".
fn direction(facts: &Facts, t: &PairTest) -> String {
    format!(
        "{} -> {}",
        gpu(facts, t.from).label(),
        gpu(facts, t.to).label()
    )
}

fn involved(facts: &Facts, list: &[&PairTest]) -> Vec<String> {
    let mut g: Vec<String> = list
        .iter()
        .flat_map(|t| [t.from, t.to])
        .map(|o| {
            gpu(facts, o)
                .bdf
                .map_or_else(|| format!("GPU {o}"), String::from)
        })
        .collect();
    g.sort();
    g.dedup();
    g
}

/// The causes for the first failing pair (pairs of one rig share their causes, mostly).
fn ranked(facts: &Facts, kb: &Knowledge, list: &[&PairTest]) -> Causes {
    let t = list[0];
    causes(facts, kb, &gpu(facts, t.from), &gpu(facts, t.to))
}

pub fn corrupt(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    let staged_bad = |t: &PairTest| {
        matches!(
            path_result(t, TransferPath::Staged).map(|r| &r.verdict),
            Some(Verdict::Mismatch(_))
        )
    };
    let bytes = facts
        .gpu
        .as_ref()
        .and_then(|g| g.p2p.as_ref())
        .map_or(0, |p| p.bytes);
    path_failures(
        facts,
        kb,
        |t, r| !staged_bad(t) && matches!(r.verdict, Verdict::Mismatch(_)),
        |n, total| {
            Finding::new(
                Code::P2pCorrupt,
                Severity::Error,
                format!("peer-to-peer transfers deliver wrong data ({n} of {total} directions tested): training silently learns garbage or NCCL fails"),
            )
            .refs([SIMPLE_P2P, NCCL_TROUBLESHOOTING, "https://github.com/pytorch/pytorch/issues/96600"])
        },
        |r| match &r.verdict {
            Verdict::Mismatch(m) => format!(
                "{} of {bytes} bytes wrong from offset {} (expected {}, got {}): {}",
                m.bad_bytes,
                m.first_bad_offset,
                m.expected,
                m.got,
                m.damage.describe()
            ),
            _ => String::new(),
        },
    )
}

/// One finding over every direction with a failing P2P path (`fails`): a line per failing path
/// (`says`), whether the staged control was correct, and the ranked causes. Pairs with a GPU
/// that fails its own self-test are left to `gpu-copy-failed`.
fn path_failures(
    facts: &Facts,
    kb: &Knowledge,
    fails: impl Fn(&PairTest, &PathResult) -> bool,
    finding: impl FnOnce(usize, usize) -> Finding,
    says: impl Fn(&PathResult) -> String,
) -> Vec<Finding> {
    let bad: Vec<&PairTest> = tests(facts)
        .iter()
        .filter(|t| local_ok(facts, t.from) && local_ok(facts, t.to))
        .filter(|t| {
            t.outcome
                .paths()
                .iter()
                .any(|r| r.path.is_p2p() && fails(t, r))
        })
        .collect();
    if bad.is_empty() {
        return Vec::new();
    }
    let mut f = finding(bad.len(), tests(facts).len()).gpus(involved(facts, &bad));
    for t in &bad {
        let label = direction(facts, t);
        for r in t
            .outcome
            .paths()
            .iter()
            .filter(|r| r.path.is_p2p() && fails(t, r))
        {
            f = f.evidence(format!("{label}, {}: {}", r.path.describe(), says(r)));
        }
        if staged_ok(t) {
            f = f.evidence(format!(
                "{label}, staged copy through host memory (the control): correct, so the P2P path is at fault"
            ));
        }
    }
    let all_staged_ok = bad.iter().all(|t| staged_ok(t));
    vec![with_causes(f, ranked(facts, kb, &bad), all_staged_ok)]
}

fn local_tests(facts: &Facts) -> &[PairTest] {
    facts
        .gpu
        .as_ref()
        .and_then(|g| g.p2p.as_ref())
        .map_or(&[], |p| p.local.as_slice())
}

/// Whether device `d` passed its self-test (or had none): a failure there is the GPU's, and
/// must not be blamed on P2P.
fn local_ok(facts: &Facts, d: i32) -> bool {
    local_tests(facts).iter().filter(|t| t.from == d).all(|t| {
        matches!(t.outcome, PairOutcome::Tested { .. })
            && t.outcome.paths().iter().all(|r| r.verdict == Verdict::Ok)
    })
}

/// A GPU fails copies within itself: the kernel cannot be loaded (driver JIT), or the GPU's
/// memory or the GPU is faulty.
pub fn gpu_copy_failed(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    if super::host_limits::explains_gpu_failures(facts) {
        return Vec::new();
    }
    let bad: Vec<&PairTest> = local_tests(facts)
        .iter()
        .filter(|t| !local_ok(facts, t.from))
        .collect();
    if bad.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        Code::GpuCopyFailed,
        Severity::Error,
        "a GPU fails copies within itself: kernels or its memory do not work, whatever the P2P path",
    )
    .gpus(involved(facts, &bad))
    .refs([
        "https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__MODULE.html",
        "https://docs.nvidia.com/deploy/xid-errors/index.html",
    ]);
    let mut ptx = false;
    let mut no_jit = false;
    let mut data = false;
    for t in &bad {
        let g = gpu(facts, t.from).label();
        match &t.outcome {
            PairOutcome::Hang { stage, .. } => {
                f = f.evidence(format!(
                    "{g}: the self-test hung ({}) and was killed",
                    stage.as_deref().unwrap_or("before the first copy")
                ))
            }
            PairOutcome::Failed { error, .. } => f = f.evidence(format!("{g}: {error}")),
            PairOutcome::Tested { .. } | PairOutcome::Skipped { .. } => {}
        }
        for r in t.outcome.paths() {
            match &r.verdict {
                Verdict::Error { error, cause } => {
                    // Which call failed, by its code: loading the module means the PTX.
                    let c = cause.as_ref();
                    no_jit |= c.is_some_and(|c| c.is_cuda(CUDA_ERROR_JIT_COMPILER_NOT_FOUND));
                    ptx |= c.is_some_and(|c| {
                        c.library == Library::Cuda
                            && (c.call.starts_with("cuModule") || PTX_CODES.contains(&c.code))
                    });
                    f = f.evidence(format!("{g}, {}: {error}", r.path.describe()));
                }
                Verdict::Mismatch(m) => {
                    data = true;
                    f = f.evidence(format!(
                        "{g}, {}: {} bytes wrong from offset {} ({})",
                        r.path.describe(),
                        m.bad_bytes,
                        m.first_bad_offset,
                        m.damage.describe()
                    ));
                }
                Verdict::Ok | Verdict::Skipped { .. } => {}
            }
        }
    }
    if no_jit {
        f = f.fix("the driver's PTX JIT compiler library (libnvidia-ptxjitcompiler.so.1) is missing: install the driver's compute package matching the module (Ubuntu: libnvidia-compute-<branch>); in a container, give it the compute capability (NVIDIA_DRIVER_CAPABILITIES=compute,utility)");
    } else if ptx {
        f = f.fix("the driver cannot JIT-compile rigdoctor's PTX (ISA 7.0, sm_52): drivers before R450 (CUDA 11.0) are too old for it; update the driver (sudo apt install nvidia-driver-535 or newer), and clear a corrupt JIT cache: rm -rf ~/.nv/ComputeCache");
    }
    if data {
        f = f.fix("wrong data inside one GPU points at its memory: look for Xid 48/63/94/95 (sudo dmesg | grep -i xid), check temperatures, and stress-test the card alone (e.g. gpu-burn)");
    }
    vec![f.fix("P2P results involving this GPU are not conclusive until it passes: the P2P findings leave its failures out")]
}

/// CUresult codes of a module the driver cannot load (cuda.h): INVALID_IMAGE 200,
/// NO_BINARY_FOR_GPU 209, INVALID_PTX 218, UNSUPPORTED_PTX_VERSION 222.
const PTX_CODES: [i64; 4] = [200, 209, 218, 222];
/// CUDA_ERROR_JIT_COMPILER_NOT_FOUND: the PTX JIT compiler library is missing.
const CUDA_ERROR_JIT_COMPILER_NOT_FOUND: i64 = 221;

/// A P2P path failed with a CUDA error (an MMU fault from a kernel touching peer memory, say).
pub fn error(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    path_failures(
        facts,
        kb,
        |_, r| matches!(r.verdict, Verdict::Error { .. }),
        |n, total| {
            Finding::new(
                Code::P2pError,
                Severity::Error,
                format!("peer-to-peer transfers fail with CUDA errors ({n} of {total} directions tested): jobs using P2P crash"),
            )
            .refs([SIMPLE_P2P, "https://docs.nvidia.com/deploy/xid-errors/index.html"])
        },
        |r| match &r.verdict {
            Verdict::Error { error, .. } => error.clone(),
            _ => String::new(),
        },
    )
}

/// Wrong data even with peer access off: not P2P, but the GPUs, their memory or their links.
pub fn copy_corrupt(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let bad: Vec<&PairTest> = tests(facts)
        .iter()
        .filter(|t| {
            matches!(
                path_result(t, TransferPath::Staged).map(|r| &r.verdict),
                Some(Verdict::Mismatch(_))
            )
        })
        .collect();
    if bad.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        Code::CopyCorrupt,
        Severity::Error,
        "copies between GPUs deliver wrong data even through host memory (peer access off): the GPUs, their memory or PCIe links are faulty, not P2P",
    )
    .gpus(involved(facts, &bad))
    .refs(["https://docs.nvidia.com/deploy/xid-errors/index.html"]);
    for t in &bad {
        let label = direction(facts, t);
        if let Some(Verdict::Mismatch(m)) = path_result(t, TransferPath::Staged).map(|r| &r.verdict)
        {
            f = f.evidence(format!(
                "{label}, {}: {} bytes wrong from offset {} (expected {}, got {}): {}",
                TransferPath::Staged.describe(),
                m.bad_bytes,
                m.first_bad_offset,
                m.expected,
                m.got,
                m.damage.describe()
            ));
        }
    }
    vec![f
        .fix("NCCL_P2P_DISABLE does not help here: every path is affected")
        .fix("check the links: sudo rigdoctor host (AER error counters, link width), reseat risers and cables")
        .fix("look for memory or bus errors: sudo dmesg | grep -i -e Xid -e AER; test each GPU alone with a memory stress test (e.g. gpu-burn)")]
}

pub fn hang(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    if super::host_limits::deadline_too_short(facts).is_some() {
        return Vec::new();
    }
    let hung: Vec<&PairTest> = tests(facts)
        .iter()
        .filter(|t| local_ok(facts, t.from) && local_ok(facts, t.to))
        .filter(|t| matches!(t.outcome, PairOutcome::Hang { .. }))
        .collect();
    if hung.is_empty() {
        return Vec::new();
    }
    let deadline = facts.gpu.as_ref().and_then(|g| g.p2p.as_ref()).map_or_else(
        || "the deadline".to_string(),
        |p| format!("{} s", p.deadline_s),
    );
    let mut f = Finding::new(
        Code::P2pHang,
        Severity::Error,
        format!(
            "peer-to-peer transfers hang ({} of {} directions tested): a job using P2P (NCCL, DDP) freezes after init",
            hung.len(),
            tests(facts)
                .iter()
                .filter(|t| !matches!(t.outcome, PairOutcome::Skipped { .. }))
                .count()
        ),
    )
    .gpus(involved(facts, &hung))
    .refs([NCCL_TROUBLESHOOTING, "https://github.com/NVIDIA/nccl/issues/1127"]);
    let mut unkillable = false;
    for t in &hung {
        let label = direction(facts, t);
        let PairOutcome::Hang {
            stage,
            unkillable: stuck,
            ..
        } = &t.outcome
        else {
            continue;
        };
        unkillable |= stuck;
        let what = match stage.as_deref() {
            Some(s) => match s.strip_prefix("enable ").and_then(|x| x.split_once("->")) {
                Some((ctx, peer)) => format!(
                    "peer-access enable (cuCtxEnablePeerAccess in GPU {ctx}'s context for GPU {peer})"
                ),
                None => TransferPath::ALL
                    .iter()
                    .find(|p| p.label() == s)
                    .map_or_else(|| s.to_string(), |p| p.describe().to_string()),
            },
            None => "setup before the first transfer (allocation, pattern upload)".into(),
        };
        f = f.evidence(format!(
            "{label}: no answer from the {what} within {deadline}; the worker was killed"
        ));
        if staged_ok(t) {
            f = f.evidence(format!(
                "{label}, staged copy through host memory (the control): correct, so the P2P path is at fault"
            ));
        }
    }
    for t in tests(facts) {
        if let PairOutcome::Skipped { because } = &t.outcome {
            f = f.evidence(format!("{}: {because}", direction(facts, t)));
        }
    }
    if unkillable {
        f = f.evidence("a killed worker stayed stuck inside the kernel driver: the GPU may need a reboot before the next job");
    }
    let all_staged_ok = hung.iter().all(|t| staged_ok(t));
    vec![with_causes(f, ranked(facts, kb, &hung), all_staged_ok)]
}

pub fn enable_failed(facts: &Facts, kb: &Knowledge) -> Vec<Finding> {
    let mut failed: Vec<(&PairTest, String)> = Vec::new();
    for t in tests(facts) {
        if let PairOutcome::Tested { enable, .. } = &t.outcome {
            for a in enable {
                if let Some(e) = &a.error {
                    failed.push((
                        t,
                        format!(
                            "cuCtxEnablePeerAccess in {}'s context for {}'s memory: {e}, although cuDeviceCanAccessPeer said yes",
                            gpu(facts, a.ctx).label(),
                            gpu(facts, a.peer).label()
                        ),
                    ));
                }
            }
        }
    }
    if failed.is_empty() {
        return Vec::new();
    }
    let list: Vec<&PairTest> = failed.iter().map(|(t, _)| *t).collect();
    let mut f = Finding::new(
        Code::P2pEnableFailed,
        Severity::Error,
        "CUDA reports peer access between GPUs but refuses to enable it: frameworks that trust the report fail",
    )
    .gpus(involved(facts, &list))
    .refs(["https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__PEER__ACCESS.html"]);
    let mut seen = Vec::new();
    for (_, e) in failed {
        if !seen.contains(&e) {
            f = f.evidence(e.clone());
            seen.push(e);
        }
    }
    let all_staged_ok = list.iter().all(|t| staged_ok(t));
    vec![with_causes(f, ranked(facts, kb, &list), all_staged_ok)]
}

/// Pairs CUDA grants no P2P in either direction: normal for GeForce without NVLink, and NCCL
/// falls back to shared memory by itself.
pub fn not_supported(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(p2p) = facts.gpu.as_ref().and_then(|g| g.p2p.as_ref()) else {
        return Vec::new();
    };
    let Some(access) = p2p.access.known() else {
        return Vec::new();
    };
    let denied = |a: i32, b: i32| {
        access
            .iter()
            .any(|p| p.from == a && p.to == b && p.can_access.known() == Some(&false))
    };
    let nvml_reason = |a: &Gpu, b: &Gpu| -> Option<String> {
        let nvml = facts.gpu.as_ref()?.nvml.known()?;
        let idx = |bdf: Option<&str>| {
            nvml.devices
                .iter()
                .find(|d| d.bus_id.known().map(String::as_str) == bdf)
                .map(|d| d.index)
        };
        let (ia, ib) = (idx(a.bdf)?, idx(b.bdf)?);
        let p = nvml.pairs.iter().find(|p| p.a == ia && p.b == ib)?;
        Some(format!(
            "NVML read {}, write {}, topology {}",
            p.read.known().map_or("?", |s| s.as_str()),
            p.write.known().map_or("?", |s| s.as_str()),
            p.topology.known().map_or("?", |s| s.as_str())
        ))
    };
    let mut lines = Vec::new();
    let mut bdfs = Vec::new();
    let mut all_geforce = true;
    for (i, &a) in p2p.devices.iter().enumerate() {
        for &b in &p2p.devices[i + 1..] {
            if denied(a, b) && denied(b, a) {
                let (ga, gb) = (gpu(facts, a), gpu(facts, b));
                all_geforce &= [ga.name, gb.name].iter().all(|n| n.is_some_and(is_geforce));
                let why = nvml_reason(&ga, &gb)
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                lines.push(format!("{} <-> {}: no P2P{why}", ga.label(), gb.label()));
                bdfs.extend([ga.bdf, gb.bdf].into_iter().flatten().map(String::from));
            }
        }
    }
    if lines.is_empty() {
        return Vec::new();
    }
    bdfs.sort();
    bdfs.dedup();
    let title = if all_geforce {
        "no peer-to-peer between these GeForce GPUs: normal without NVLink; NCCL uses shared host memory instead"
    } else {
        "the driver grants no peer-to-peer between these GPUs: NCCL uses shared host memory instead (slower)"
    };
    let mut f = Finding::new(Code::P2pNotSupported, Severity::Info, title)
        .gpus(bdfs)
        .refs([NCCL_ENV, "https://github.com/NVIDIA/nccl-tests/issues/287"]);
    for l in lines {
        f = f.evidence(l);
    }
    f = f.evidence("NVML codes: CNS chipset not supported, GNS GPU not supported, TNS topology not supported, DR disabled by registry key, NS not supported");
    if !all_geforce {
        f = f.fix("P2P between GPUs under different CPU sockets (SYS) or behind some chipsets is not offered; place the GPUs that talk most under one root complex or PCIe switch");
    }
    vec![f.fix("nothing to change for correctness; NCCL_P2P_DISABLE=1 is not needed (NCCL detects this itself)")]
}

/// NVLink links that exist but are down beside active ones: a bridge badly seated or worn.
pub fn nvlink_inactive(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(nvml) = facts.gpu.as_ref().and_then(|g| g.nvml.known()) else {
        return Vec::new();
    };
    let mut f = Finding::new(
        Code::NvlinkInactive,
        Severity::Warn,
        "some NVLink links are down while others on the same GPU are up: the bridge is badly seated or faulty, and P2P bandwidth drops",
    )
    .refs([
        "https://docs.nvidia.com/deploy/nvml-api/group__NvLink.html",
        "https://docs.nvidia.com/deploy/xid-errors/index.html",
    ]);
    let mut gpus = Vec::new();
    for d in &nvml.devices {
        let Some(links) = d.nvlinks.known() else {
            continue;
        };
        let up = links.iter().filter(|l| l.active).count();
        let down: Vec<String> = links
            .iter()
            .filter(|l| !l.active)
            .map(|l| l.link.to_string())
            .collect();
        if up == 0 || down.is_empty() {
            continue;
        }
        let bdf = d
            .bus_id
            .known()
            .cloned()
            .unwrap_or_else(|| format!("NVML GPU {}", d.index));
        f = f.evidence(format!(
            "{bdf}: {up} of {} links active; down: link {}",
            links.len(),
            down.join(", ")
        ));
        gpus.push(bdf);
    }
    if gpus.is_empty() {
        return Vec::new();
    }
    vec![f
        .gpus(gpus)
        .fix("power off, reseat the NVLink bridge firmly on both cards (RTX 3090 bridges need the cards at the bridge's exact slot spacing), then check: nvidia-smi nvlink --status")
        .fix("look for NVLink errors: sudo dmesg | grep -i 'Xid.*74'")]
}

/// A finding about the pair `from` -> `to` with its ranked causes and fixes (for the
/// bandwidth rules, which see the same pairs through measurements).
pub(super) fn explain(
    facts: &Facts,
    kb: &Knowledge,
    f: Finding,
    from: i32,
    to: i32,
    staged_ok: bool,
) -> Finding {
    with_causes(
        f,
        causes(facts, kb, &gpu(facts, from), &gpu(facts, to)),
        staged_ok,
    )
}

/// "GPU 1 (0000:41:00.0)" and the bus id (or "GPU 1") of a CUDA device.
pub(super) fn device_label(facts: &Facts, ordinal: i32) -> (String, String) {
    let g = gpu(facts, ordinal);
    (
        g.label(),
        g.bdf.map_or_else(|| format!("GPU {ordinal}"), String::from),
    )
}
