//! Findings about the GPU worker process itself: one that died while running a step (its
//! results are missing, and something outside the GPU tests may be to blame), and one that
//! finished but crashed or hung on its way out (library teardown: a training job can hang the
//! same way at exit).

use crate::code::Code;
use crate::facts::{Facts, WorkerExit, WorkerRecord};
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;

const SIGNAL_DOC: &str = "https://man7.org/linux/man-pages/man7/signal.7.html";
/// Log lines of a worker shown as evidence.
const LOG_LINES: usize = 8;

fn workers(facts: &Facts) -> &[WorkerRecord] {
    facts.gpu.as_ref().map_or(&[], |g| g.workers.as_slice())
}

/// What a signal or status most likely means for a worker, as a person would check it.
fn cause_hint(exit: &WorkerExit) -> Option<&'static str> {
    match exit {
        // SIGKILL that rigdoctor did not send: the OOM killer, a scheduler, a person.
        WorkerExit::Signaled { signal: 9, .. } => Some(
            "SIGKILL came from outside rigdoctor: the kernel's OOM killer (sudo dmesg | grep -i 'killed process'), a job scheduler's limit, or kill -9",
        ),
        WorkerExit::Signaled { signal: 11 | 7 | 4, .. } => Some(
            "a crash inside a library the worker called (libcuda, libnvidia-ml or libnccl): note the driver and NCCL versions, and look for Xid errors: sudo dmesg | grep -i xid",
        ),
        WorkerExit::Signaled { signal: 6, .. } => Some(
            "an abort: a library (or the C runtime, e.g. on an exhausted `ulimit -v`) gave up; the log lines say which",
        ),
        WorkerExit::Signaled { signal: 24 | 25, .. } => Some(
            "a resource limit of the shell (ulimit -t CPU time, ulimit -f file size) ended it: raise it for this run",
        ),
        _ => None,
    }
}

fn with_log(mut f: Finding, w: &WorkerRecord) -> Finding {
    let skip = w.log_tail.len().saturating_sub(LOG_LINES);
    for l in &w.log_tail[skip..] {
        f = f.evidence(format!("worker {} said: {l}", w.index));
    }
    f
}

/// A worker died on its own in the middle of a step.
pub fn crashed(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let dead: Vec<&WorkerRecord> = workers(facts)
        .iter()
        .filter(|w| w.crashed_mid_step())
        .collect();
    if dead.is_empty() {
        return Vec::new();
    }
    let steps: Vec<&str> = dead.iter().filter_map(|w| w.during.as_deref()).collect();
    let mut f = Finding::new(
        Code::WorkerCrashed,
        Severity::Error,
        format!(
            "the GPU test worker died while running {}: those results are missing",
            steps.join(", ")
        ),
    )
    .refs([SIGNAL_DOC]);
    let mut hints = Vec::new();
    for w in &dead {
        f = f.evidence(format!(
            "worker {} {} while running {} (after {} settled step(s))",
            w.index,
            w.exit,
            w.during.as_deref().unwrap_or("?"),
            w.steps.saturating_sub(1)
        ));
        f = with_log(f, w);
        if let Some(h) = cause_hint(&w.exit) {
            if !hints.contains(&h) {
                hints.push(h);
            }
        }
    }
    for h in hints {
        f = f.fix(h);
    }
    vec![f.fix("the steps after it ran in a fresh worker; rerun to see whether the crash repeats at the same step before blaming the GPU or the link")]
}

/// A worker finished its steps, then crashed, failed or hung on exit.
pub fn exit_failed(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let bad: Vec<&WorkerRecord> = workers(facts).iter().filter(|w| w.bad_exit()).collect();
    if bad.is_empty() {
        return Vec::new();
    }
    let hung = bad
        .iter()
        .any(|w| matches!(w.exit, WorkerExit::HungOnExit { .. }));
    let nccl = facts.gpu.as_ref().is_some_and(|g| g.nccl.is_some());
    let mut f = Finding::new(
        Code::WorkerExitFailed,
        Severity::Warn,
        if hung {
            "the GPU test worker hung on exit, after its last step: a training job may hang at exit the same way"
        } else {
            "the GPU test worker crashed or failed on exit, after its last step"
        },
    )
    .refs([SIGNAL_DOC]);
    for w in &bad {
        f = f.evidence(format!("worker {} {}", w.index, w.exit));
        f = with_log(f, w);
    }
    if nccl {
        f = f.fix("library teardown at exit (NCCL communicators, the CUDA context) is what runs then: check the NCCL release against known issues and try the newest NCCL wheel (pip install -U nvidia-nccl-cu12)");
    }
    vec![f.fix("the measured results above are complete; if it repeats, look for Xid errors: sudo dmesg | grep -i xid")]
}
