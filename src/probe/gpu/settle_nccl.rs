//! The parent's side of the NCCL step: step reports and NCCL's own log into [`NcclFacts`].

use super::GpuReport;
use crate::facts::{
    allreduce_bus_factor, parse_channel, AllReduce, AllReduceOutcome, NcclFacts, NcclLibrary,
    Probed, StepError, Why,
};
use crate::measure::gpu::{
    last_stage, last_work_stage, AllReduceResult, Answer, NcclConfig, Note, Step,
};
use crate::measure::watchdog::Outcome;

/// NCCL's WARN lines kept as evidence.
const MAX_WARNINGS: usize = 20;

pub fn settle(cfg: &NcclConfig, reports: Vec<GpuReport>, log: &[String], secs: f64) -> NcclFacts {
    let mut facts = NcclFacts {
        library: Probed::unknown(Why::NotRun, "not run"),
        devices: cfg.devices.clone().unwrap_or_default(),
        results: Vec::new(),
        channels: Vec::new(),
        deadline_s: secs,
        init_error: None,
        env_set: Vec::new(),
        warnings: Vec::new(),
        p2p_level_sys: None,
    };
    // Channel lines come at init (before NCCL 2.22) or at the first collective (2.22+, lazy
    // connection): wherever they are in the log, each is counted once.
    for c in log.iter().filter_map(|l| parse_channel(l)) {
        if !facts.channels.contains(&c) {
            facts.channels.push(c);
        }
    }
    facts.warnings = log
        .iter()
        .filter(|l| l.contains(" NCCL WARN "))
        .take(MAX_WARNINGS)
        .cloned()
        .collect();
    for r in reports {
        match r.step {
            Step::NcclInit => settle_init(&mut facts, r.outcome, secs),
            Step::NcclAllReduce => settle_sweep(&mut facts, cfg, r.outcome, &r.notes),
            _ => {}
        }
    }
    facts
}

fn settle_init(facts: &mut NcclFacts, outcome: Outcome<Answer>, secs: f64) {
    facts.library = match outcome {
        Outcome::Done(Answer::NcclInit(i)) => {
            facts.devices = i.devices;
            facts.init_error = i.error;
            Probed::Known(NcclLibrary {
                path: i.library,
                version: i.version,
            })
        }
        Outcome::Done(other) => Probed::unknown(
            Why::Unparsable,
            format!("worker protocol: unexpected answer {other:?}"),
        ),
        Outcome::Failed(e) => Probed::from_step_error(e),
        Outcome::Hang { .. } => Probed::unknown(
            Why::Hang,
            format!("NCCL initialisation (ncclCommInitAll) did not finish within {secs} s"),
        ),
        Outcome::Crashed(e) => Probed::unknown(Why::Failed, format!("the worker {e}")),
    };
}

fn settle_sweep(facts: &mut NcclFacts, cfg: &NcclConfig, outcome: Outcome<Answer>, notes: &[Note]) {
    let n = facts.devices.len();
    // Sizes that finished before a hang or failure, from the notes.
    let done: Vec<&AllReduceResult> = notes
        .iter()
        .filter_map(|v| match v {
            Note::NcclResult(r) => Some(r),
            _ => None,
        })
        .collect();
    let stage = last_stage(notes);
    // The size a failure happened at: the first one without a result.
    let next = cfg.sizes.get(done.len()).copied().unwrap_or(0);
    let failed = |outcome: AllReduceOutcome| AllReduce {
        bytes: next,
        iters: cfg.iters,
        outcome,
    };
    let push = |a: &AllReduceResult, facts: &mut NcclFacts| {
        facts.results.push(AllReduce {
            bytes: a.bytes,
            iters: a.iters,
            outcome: measured(a, n),
        })
    };
    match outcome {
        Outcome::Done(Answer::NcclSweep(all)) => all.iter().for_each(|a| push(a, facts)),
        Outcome::Done(other) => facts.results.push(failed(AllReduceOutcome::Failed {
            error: format!("worker protocol: unexpected answer {other:?}"),
            cause: None,
        })),
        other => {
            done.iter().for_each(|a| push(a, facts));
            facts.results.push(failed(match other {
                // The worker timed out itself and aborted NCCL: a hang all the same.
                Outcome::Failed(StepError::TimedOut { .. }) => AllReduceOutcome::Hang {
                    stage: last_work_stage(notes),
                },
                Outcome::Failed(e) => failure(e),
                Outcome::Crashed(e) => AllReduceOutcome::Failed {
                    error: format!("the worker {e}"),
                    cause: None,
                },
                _ => AllReduceOutcome::Hang { stage },
            }));
        }
    }
}

fn failure(e: StepError) -> AllReduceOutcome {
    AllReduceOutcome::Failed {
        error: e.to_string(),
        cause: e.call().cloned(),
    }
}

fn measured(a: &AllReduceResult, ranks: usize) -> AllReduceOutcome {
    let time_us = a.ms * 1e3 / f64::from(a.iters.max(1));
    let algbw = if time_us > 0.0 {
        a.bytes as f64 / (time_us * 1e-6) / 1e9
    } else {
        0.0
    };
    AllReduceOutcome::Measured {
        time_us,
        algbw_gbps: algbw,
        busbw_gbps: algbw * allreduce_bus_factor(ranks),
        wrong: a.wrong.clone(),
    }
}
