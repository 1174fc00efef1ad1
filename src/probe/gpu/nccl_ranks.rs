//! NCCL with one worker process per GPU, as DDP and torchrun run it (the parent's side).
//!
//! Rank 0's worker calls ncclGetUniqueId, whose bootstrap root lives in that process, notes
//! the id and then joins; the parent hands the id to one worker per other rank, started only
//! once the id has come. Every rank is a watchdog run of its own, with its own deadlines, so a
//! rank that hangs or dies is named and the others are killed at their deadlines; no rank
//! outlives rigdoctor (each worker has PDEATHSIG, and every run reaps its worker).

use super::settle_nccl::RankReports;
use super::GpuReport;
use crate::facts::{StepError, WorkerRecord};
use crate::measure::gpu::{Gpu, Note, Step};
use crate::measure::watchdog::{Outcome, Progress, StepReport, Watchdog};
use std::sync::mpsc;
use std::time::Duration;

/// What makes a configured watchdog for one rank (None: no worker can start).
pub type MakeWatchdog<'a> = &'a (dyn Fn() -> Option<Watchdog<Gpu>> + Sync);

/// Run rank 0, wait for its unique id, then the other ranks side by side; the reports of every
/// rank in rank order and every worker's record, numbered from 1.
pub fn run(
    make: MakeWatchdog<'_>,
    devices: &[i32],
    deadline: Duration,
    progress: &mut dyn FnMut(Progress<'_, Gpu>),
) -> (Vec<RankReports>, Vec<WorkerRecord>) {
    let n = devices.len();
    let step = |rank: usize, id: Option<String>| Step::NcclRank {
        rank,
        nranks: n,
        device: devices[rank],
        id,
    };
    let steps: Vec<Step> = (0..n).map(|r| step(r, None)).collect();
    progress(Progress::SideBySide {
        steps: &steps,
        deadline,
    });
    let (tx, rx) = mpsc::channel::<Option<String>>();
    let runs: Vec<(usize, Vec<GpuReport>, Vec<WorkerRecord>)> = std::thread::scope(|s| {
        let first = s.spawn(move || {
            let Some(dog) = make() else {
                let _ = tx.send(None);
                return (Vec::new(), Vec::new());
            };
            let mut id_out = |p: Progress<'_, Gpu>| {
                if let Progress::Noted {
                    note: Note::NcclUniqueId(id),
                    ..
                } = p
                {
                    let _ = tx.send(Some(id.clone()));
                }
            };
            let run = dog.run(&[step(0, None)], &mut id_out);
            // Without an id (no library, a failed ncclGetUniqueId) nobody waits in vain.
            let _ = tx.send(None);
            (run.reports, run.workers)
        });
        // Rank 0's run is bounded by its deadlines, and it always says something at its end.
        let id = rx.recv().ok().flatten();
        let others: Vec<_> = (1..n)
            .map(|r| {
                let id = id.clone();
                let step = step(r, id.clone());
                s.spawn(move || match (id, make()) {
                    (Some(_), Some(dog)) => {
                        let run = dog.run(&[step], &mut |_| {});
                        (run.reports, run.workers)
                    }
                    (None, _) => (
                        vec![not_run(step, "rank 0 gave no NCCL unique id")],
                        Vec::new(),
                    ),
                    (Some(_), None) => (vec![not_run(step, "no worker could start")], Vec::new()),
                })
            })
            .collect();
        let mut out = Vec::new();
        let (reports, workers) = first.join().unwrap_or_default();
        out.push((0, reports, workers));
        for (i, h) in others.into_iter().enumerate() {
            let (reports, workers) = h.join().unwrap_or_default();
            out.push((i + 1, reports, workers));
        }
        out
    });
    let mut all_workers = Vec::new();
    let mut ranks = Vec::new();
    for (rank, mut reports, workers) in runs {
        let offset = all_workers.len();
        for mut w in workers {
            w.index += offset;
            all_workers.push(w);
        }
        for r in &mut reports {
            r.worker += offset;
            progress(Progress::Settled(r));
        }
        ranks.push(RankReports {
            rank,
            device: devices[rank],
            reports,
        });
    }
    (ranks, all_workers)
}

fn not_run(step: Step, because: &str) -> GpuReport {
    StepReport {
        step,
        outcome: Outcome::Failed(StepError::NotRun {
            because: because.into(),
        }),
        elapsed: Duration::ZERO,
        worker: 0,
        notes: Vec::new(),
        added: Vec::new(),
    }
}
