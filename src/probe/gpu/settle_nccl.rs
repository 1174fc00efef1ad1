//! The parent's side of the NCCL step: step reports and NCCL's own log into [`NcclFacts`].

use super::GpuReport;
use crate::facts::{
    allreduce_bus_factor, parse_channel, AllReduce, AllReduceOutcome, NcclFacts, NcclLibrary,
    NcclRankRun, Probed, StepError, Why,
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
        init_hang: None,
        ranks: Vec::new(),
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
            Step::NcclInit => settle_init(&mut facts, r.outcome, secs, "ncclCommInitAll"),
            Step::NcclRank { .. } => settle_init(&mut facts, r.outcome, secs, "ncclCommInitRank"),
            Step::NcclAllReduce => settle_sweep(&mut facts, cfg, r.outcome, &r.notes),
            _ => {}
        }
    }
    facts
}

fn settle_init(facts: &mut NcclFacts, outcome: Outcome<Answer>, secs: f64, call: &str) {
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
            format!("NCCL initialisation ({call}) did not finish within {secs} s"),
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

/// One rank's worker run in the one-process-per-GPU mode: its reports (rank step and sweep).
pub struct RankReports {
    pub rank: usize,
    pub device: i32,
    pub reports: Vec<GpuReport>,
}

/// One rank's run settled on its own, as the machine that ran it sends it to `rigdoctor
/// cluster`'s coordinator: which rank, on which GPU, named how in the merged facts.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SettledRank {
    pub rank: usize,
    pub device: i32,
    /// "rank 3 (GPU 1)", or with the host in a cluster: "rank 3 (node-b GPU 1)".
    pub label: String,
    pub facts: NcclFacts,
}

/// One rank's reports as facts of its own (the library it loaded, its init, its sizes).
pub fn settle_rank(cfg: &NcclConfig, r: RankReports, host: Option<&str>, secs: f64) -> SettledRank {
    let one = NcclConfig {
        devices: Some(vec![r.device]),
        ..cfg.clone()
    };
    SettledRank {
        rank: r.rank,
        device: r.device,
        label: match host {
            Some(h) => format!("rank {} ({h} GPU {})", r.rank, r.device),
            None => format!("rank {} (GPU {})", r.rank, r.device),
        },
        facts: settle(&one, r.reports, &[], secs),
    }
}

/// The ranks' runs as one communicator's facts: the library any rank loaded, each size
/// measured only when every rank measured it (the slowest rank's time, every rank's check), and
/// a failure or hang named by its rank. A rank that failed is the cause; the ranks that then
/// waited for it are said as waiting.
pub fn settle_ranks(
    cfg: &NcclConfig,
    runs: Vec<RankReports>,
    log: &[String],
    secs: f64,
) -> NcclFacts {
    let per = runs
        .into_iter()
        .map(|r| settle_rank(cfg, r, None, secs))
        .collect();
    combine(cfg, per, log, secs)
}

/// Settled ranks (of one machine or of many) as one communicator's facts; see
/// [`settle_ranks`].
pub fn combine(cfg: &NcclConfig, ranks: Vec<SettledRank>, log: &[String], secs: f64) -> NcclFacts {
    let n = ranks.len();
    let mut facts = settle(cfg, Vec::new(), log, secs);
    facts.devices = ranks.iter().map(|r| r.device).collect();
    let ids: Vec<(usize, i32)> = ranks.iter().map(|r| (r.rank, r.device)).collect();
    let per: Vec<(String, NcclFacts)> = ranks.into_iter().map(|r| (r.label, r.facts)).collect();
    facts.library = per
        .iter()
        .find_map(|(_, f)| f.library.known().cloned())
        .map(Probed::Known)
        .unwrap_or_else(|| {
            per.first().map_or_else(
                || Probed::unknown(Why::NotRun, "not run"),
                |(_, f)| f.library.clone(),
            )
        });
    let loaded = facts.library.known().is_some();
    let mut hung_init = Vec::new();
    for ((l, f), &(rank, device)) in per.iter().zip(&ids) {
        let outcome = if let Some(e) = &f.init_error {
            if facts.init_error.is_none() {
                facts.init_error = Some(e.clone());
            }
            format!("init failed: {e}")
        } else if let Probed::Unknown {
            unknown, detail, ..
        } = &f.library
        {
            if *unknown == Why::Hang {
                hung_init.push(l.clone());
            } else if loaded && facts.init_error.is_none() {
                facts.init_error = Some(StepError::invalid(format!("{l}: {detail}")));
            }
            detail.clone()
        } else {
            match f
                .results
                .iter()
                .find(|r| !matches!(r.outcome, AllReduceOutcome::Measured { .. }))
            {
                Some(AllReduce {
                    bytes,
                    outcome: AllReduceOutcome::Hang { stage },
                    ..
                }) => format!(
                    "hung at {bytes} bytes{}",
                    stage
                        .as_ref()
                        .map(|s| format!(" (in: {s})"))
                        .unwrap_or_default()
                ),
                Some(AllReduce {
                    bytes,
                    outcome: AllReduceOutcome::Failed { error, .. },
                    ..
                }) => {
                    format!("failed at {bytes} bytes: {error}")
                }
                _ => "ok".into(),
            }
        };
        facts.ranks.push(NcclRankRun {
            rank,
            device,
            outcome,
        });
    }
    if loaded && !hung_init.is_empty() {
        facts.init_hang = Some(format!(
            "ncclCommInitRank did not finish within {secs} s on {} of {n} ranks: {}",
            hung_init.len(),
            hung_init.join(", ")
        ));
    }
    let sizes = per.iter().map(|(_, f)| f.results.len()).max().unwrap_or(0);
    for k in 0..sizes {
        let at: Vec<(&String, &AllReduce)> = per
            .iter()
            .filter_map(|(l, f)| f.results.get(k).map(|r| (l, r)))
            .collect();
        let Some((_, first)) = at.first() else { break };
        let (bytes, iters) = (first.bytes, first.iters);
        let measured: Vec<(f64, Vec<u64>)> = at
            .iter()
            .filter_map(|(_, r)| match &r.outcome {
                AllReduceOutcome::Measured { time_us, wrong, .. } => {
                    Some((*time_us, wrong.clone()))
                }
                _ => None,
            })
            .collect();
        if measured.len() == n {
            let time_us = measured.iter().map(|m| m.0).fold(0.0, f64::max);
            let algbw = if time_us > 0.0 {
                bytes as f64 / (time_us * 1e-6) / 1e9
            } else {
                0.0
            };
            facts.results.push(AllReduce {
                bytes,
                iters,
                outcome: AllReduceOutcome::Measured {
                    time_us,
                    algbw_gbps: algbw,
                    busbw_gbps: algbw * allreduce_bus_factor(n),
                    wrong: measured.into_iter().flat_map(|m| m.1).collect(),
                },
            });
            continue;
        }
        let failed: Vec<String> = at
            .iter()
            .filter_map(|(l, r)| match &r.outcome {
                AllReduceOutcome::Failed { error, .. } => Some(format!("{l}: {error}")),
                _ => None,
            })
            .collect();
        let hung: Vec<String> = at
            .iter()
            .filter_map(|(l, r)| match &r.outcome {
                AllReduceOutcome::Hang { stage } => Some(match stage {
                    Some(s) => format!("{l}: {s}"),
                    None => l.to_string(),
                }),
                _ => None,
            })
            .collect();
        let waiting = |what: &str| {
            if hung.is_empty() {
                String::new()
            } else {
                format!("; {what}: {}", hung.join(", "))
            }
        };
        let stages: Vec<Option<&String>> = at
            .iter()
            .filter_map(|(_, r)| match &r.outcome {
                AllReduceOutcome::Hang { stage } => Some(stage.as_ref()),
                _ => None,
            })
            .collect();
        let outcome = if failed.is_empty() {
            AllReduceOutcome::Hang {
                // Every rank stuck at the same place: said once.
                stage: if stages.len() == n && stages.windows(2).all(|w| w[0] == w[1]) {
                    stages[0].map(|s| format!("every rank: {s}"))
                } else {
                    Some(hung.join("; "))
                },
            }
        } else {
            AllReduceOutcome::Failed {
                error: format!(
                    "{}{}",
                    failed.join("; "),
                    waiting("the other ranks waited for it")
                ),
                cause: at.iter().find_map(|(_, r)| match &r.outcome {
                    AllReduceOutcome::Failed { cause, .. } => cause.clone(),
                    _ => None,
                }),
            }
        };
        facts.results.push(AllReduce {
            bytes,
            iters,
            outcome,
        });
        break;
    }
    facts
}
