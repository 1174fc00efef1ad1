//! The parent's side of the NCCL step: step reports and NCCL's own log into [`NcclFacts`].

use super::nccl::{AllReduceResult, NcclConfig, STEP_ALLREDUCE, STEP_INIT};
use crate::facts::{
    allreduce_bus_factor, parse_channel, AllReduce, AllReduceOutcome, NcclFacts, NcclLibrary,
    Probed, Why,
};
use crate::measure::watchdog::{Outcome, StepReport};
use serde::Deserialize;

/// The error text of a failed load (see `Nccl::load`): the library is absent, not broken.
const NOT_FOUND: &str = "no usable NCCL library";

pub fn settle(cfg: &NcclConfig, reports: Vec<StepReport>, log: &[String], secs: f64) -> NcclFacts {
    let mut facts = NcclFacts {
        library: Probed::unknown(Why::IoError, "not run"),
        devices: cfg.devices.clone().unwrap_or_default(),
        results: Vec::new(),
        channels: log.iter().filter_map(|l| parse_channel(l)).collect(),
        deadline_s: secs,
    };
    let mut seen = Vec::new();
    facts.channels.retain(|c| {
        let fresh = !seen.contains(c);
        if fresh {
            seen.push(c.clone());
        }
        fresh
    });
    for r in reports {
        if r.step == STEP_INIT {
            facts.library = match r.outcome {
                Outcome::Done(v) => {
                    #[derive(Deserialize)]
                    struct Init {
                        library: String,
                        version: String,
                        devices: Vec<i32>,
                    }
                    match serde_json::from_value::<Init>(v) {
                        Ok(i) => {
                            facts.devices = i.devices;
                            Probed::Known(NcclLibrary {
                                path: i.library,
                                version: i.version,
                            })
                        }
                        Err(e) => Probed::unknown(Why::Unparsable, e.to_string()),
                    }
                }
                Outcome::Failed(e) if e.starts_with(NOT_FOUND) => Probed::unknown(Why::Absent, e),
                Outcome::Failed(e) => Probed::unknown(Why::Failed, e),
                Outcome::Hang { .. } => Probed::unknown(
                    Why::Hang,
                    format!("NCCL initialisation (ncclCommInitAll) did not finish within {secs} s"),
                ),
                Outcome::Crashed(e) => {
                    Probed::unknown(Why::Failed, format!("the worker died: {e}"))
                }
            };
            continue;
        }
        if r.step != STEP_ALLREDUCE {
            continue;
        }
        let n = facts.devices.len();
        let push = |a: &AllReduceResult, facts: &mut NcclFacts| {
            facts.results.push(AllReduce {
                bytes: a.bytes,
                iters: a.iters,
                outcome: measured(a, n),
            })
        };
        // Sizes that finished before a hang or failure, from the notes.
        let done: Vec<AllReduceResult> = r
            .notes
            .iter()
            .filter_map(|v| serde_json::from_value(v.get("result")?.clone()).ok())
            .collect();
        let stage = r.last_stage();
        // The size a failure happened at: the first one without a result.
        let next = cfg.sizes.get(done.len()).copied().unwrap_or(0);
        let failed = |outcome: AllReduceOutcome| AllReduce {
            bytes: next,
            iters: cfg.iters,
            outcome,
        };
        match r.outcome {
            Outcome::Done(v) => match serde_json::from_value::<Vec<AllReduceResult>>(v) {
                Ok(all) => all.iter().for_each(|a| push(a, &mut facts)),
                Err(e) => facts.results.push(failed(AllReduceOutcome::Failed {
                    error: format!("unreadable worker answer: {e}"),
                })),
            },
            other => {
                done.iter().for_each(|a| push(a, &mut facts));
                facts.results.push(failed(match other {
                    Outcome::Failed(error) => AllReduceOutcome::Failed { error },
                    Outcome::Crashed(e) => AllReduceOutcome::Failed {
                        error: format!("the worker died: {e}"),
                    },
                    _ => AllReduceOutcome::Hang { stage },
                }));
            }
        }
    }
    facts
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
