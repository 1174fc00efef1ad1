//! Causes on the host side of a GPU run: a limit of rigdoctor's own process or of its
//! command line that makes GPU steps fail or time out. When one explains the failures, the
//! GPU and P2P findings say nothing of them: the GPU is not blamed for the shell's limit.

use crate::code::Code;
use crate::facts::{
    AllReduceOutcome, BwOutcome, Facts, GpuRuntime, PairOutcome, Probed, Why, WorkerExit,
};
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;

/// A step deadline below this is no evidence of a hang: a step's first CUDA call creates a
/// primary context per device (hundreds of milliseconds each), and with persistence mode off
/// the driver first initialises the GPU (seconds).
pub const MIN_CONCLUSIVE_DEADLINE_S: f64 = 1.0;

const PERSISTENCE_DOC: &str = "https://docs.nvidia.com/deploy/driver-persistence/index.html";
const UVA_DOC: &str = "https://docs.nvidia.com/deploy/topics/topic_5_4.html";
const RLIMIT_DOC: &str = "https://man7.org/linux/man-pages/man2/getrlimit.2.html";

fn runtime(facts: &Facts) -> Option<&GpuRuntime> {
    facts.gpu.as_ref()
}

/// Steps killed as hung under a deadline too short to tell a hang from a slow start.
fn hung_steps(rt: &GpuRuntime) -> usize {
    rt.workers
        .iter()
        .filter(|w| matches!(w.exit, WorkerExit::KilledAfterHang { .. }))
        .count()
}

/// The deadline, when hangs were called under one too short to mean anything.
pub fn deadline_too_short(facts: &Facts) -> Option<f64> {
    let rt = runtime(facts)?;
    let d = rt.step_deadline_s?;
    (d < MIN_CONCLUSIVE_DEADLINE_S && hung_steps(rt) > 0).then_some(d)
}

/// Some GPU work failed, crashed or could not start in this run.
fn gpu_work_failed(rt: &GpuRuntime) -> bool {
    let cuda = matches!(&rt.cuda, Probed::Unknown { unknown, .. } if *unknown != Why::NotRun);
    let p2p = rt.p2p.as_ref().is_some_and(|p| {
        p.tests.iter().chain(&p.local).any(|t| {
            matches!(
                t.outcome,
                PairOutcome::Failed { .. } | PairOutcome::Hang { .. }
            ) || t.outcome.broken()
        })
    });
    let bw = rt.bandwidth.as_ref().is_some_and(|b| {
        b.measurements
            .iter()
            .any(|m| !matches!(m.outcome, BwOutcome::Measured { .. }))
    });
    let nccl = rt.nccl.as_ref().is_some_and(|n| {
        n.init_error.is_some()
            || n.results
                .iter()
                .any(|r| !matches!(r.outcome, AllReduceOutcome::Measured { .. }))
    });
    cuda || p2p || bw || nccl || rt.workers.iter().any(|w| w.crashed_mid_step())
}

/// The address-space limit, when GPU work failed under one.
pub fn address_space_broke_gpu(facts: &Facts) -> Option<u64> {
    let rt = runtime(facts)?;
    let limit = rt.limits.as_ref()?.address_space?;
    gpu_work_failed(rt).then_some(limit)
}

/// A host-side cause explains this run's GPU failures: the GPU findings leave them out.
pub fn explains_gpu_failures(facts: &Facts) -> bool {
    deadline_too_short(facts).is_some() || address_space_broke_gpu(facts).is_some()
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// `timeout-too-short`: steps were killed at a --timeout too short to mean a hang.
pub fn timeout_too_short(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let (Some(d), Some(rt)) = (deadline_too_short(facts), runtime(facts)) else {
        return Vec::new();
    };
    vec![Finding::new(
        Code::TimeoutTooShort,
        Severity::Warn,
        format!(
            "--timeout {d} s is too short to tell a hang from a slow start: the GPU steps killed at it are not checked"
        ),
    )
    .evidence(format!(
        "{} worker(s) killed after a step overran {d} s; below {MIN_CONCLUSIVE_DEADLINE_S} s a killed step says nothing about the GPU (context creation alone can take that long)",
        hung_steps(rt)
    ))
    .fix("rerun without --timeout (the default is 10 s), or with --timeout 5 or more")
    .refs([PERSISTENCE_DOC])]
}

/// `address-space-limited`: a virtual-memory limit (ulimit -v) that CUDA cannot live with.
pub fn address_space_limited(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(rt) = runtime(facts) else {
        return Vec::new();
    };
    let Some(limit) = rt.limits.as_ref().and_then(|l| l.address_space) else {
        return Vec::new();
    };
    let failed = gpu_work_failed(rt);
    let (severity, title) = if failed {
        (
            Severity::Error,
            format!(
                "virtual memory is limited to {} (ulimit -v): CUDA cannot reserve its address space, so the GPU steps failed, not the GPUs",
                gib(limit)
            ),
        )
    } else {
        (
            Severity::Warn,
            format!(
                "virtual memory is limited to {} (ulimit -v): a training job that maps more (PyTorch, NCCL) fails with 'out of memory' on the host side",
                gib(limit)
            ),
        )
    };
    let mut f = Finding::new(Code::AddressSpaceLimited, severity, title).evidence(format!(
        "RLIMIT_AS of rigdoctor and its GPU worker: {limit} bytes (soft limit)"
    ));
    if failed {
        f = f.evidence("CUDA reserves virtual address space for unified addressing when the first context is created; under the limit that fails with CUDA_ERROR_OUT_OF_MEMORY, and the GPU findings leave these failures out");
    }
    vec![f
        .fix("lift the limit for GPU jobs: `ulimit -v unlimited` in the shell (or remove LimitAS= from the systemd unit, or the scheduler's virtual-memory limit, e.g. Slurm's VSizeFactor), then rerun")
        .refs([UVA_DOC, RLIMIT_DOC])]
}
