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

/// Where this process's ranks sit in a communicator whose other ranks may live on other
/// machines (`rigdoctor cluster`), and where its unique id comes from.
pub struct Span<'a> {
    /// The global rank of the first local device; the others follow in order.
    pub first: usize,
    pub nranks: usize,
    pub id: IdSource<'a>,
}

pub enum IdSource<'a> {
    /// Global rank 0 is this process's first device: its worker makes the id, and `publish`
    /// is told it (None: no id was made, so nobody else waits in vain).
    Make(&'a (dyn Fn(Option<&str>) + Sync)),
    /// Another process made it: `fetch` blocks, under its own deadline, until it comes.
    Await(&'a (dyn Fn() -> Option<String> + Sync)),
}

/// Run rank 0, wait for its unique id, then the other ranks side by side; the reports of every
/// rank in rank order and every worker's record, numbered from 1.
pub fn run(
    make: MakeWatchdog<'_>,
    devices: &[i32],
    deadline: Duration,
    progress: &mut dyn FnMut(Progress<'_, Gpu>),
) -> (Vec<RankReports>, Vec<WorkerRecord>) {
    let span = Span {
        first: 0,
        nranks: devices.len(),
        id: IdSource::Make(&|_| {}),
    };
    run_span(make, devices, &span, deadline, progress)
}

/// This process's ranks of `span`, one worker each: when it holds rank 0, that rank's worker
/// first (its id is published and handed to the others), else every rank once the id came.
pub fn run_span(
    make: MakeWatchdog<'_>,
    devices: &[i32],
    span: &Span<'_>,
    deadline: Duration,
    progress: &mut dyn FnMut(Progress<'_, Gpu>),
) -> (Vec<RankReports>, Vec<WorkerRecord>) {
    let n = span.nranks;
    let step = |local: usize, id: Option<String>| Step::NcclRank {
        rank: span.first + local,
        nranks: n,
        device: devices[local],
        id,
    };
    let steps: Vec<Step> = (0..devices.len()).map(|r| step(r, None)).collect();
    progress(Progress::SideBySide {
        steps: &steps,
        deadline,
    });
    let makes_id = matches!(span.id, IdSource::Make(_)) && !devices.is_empty();
    let (tx, rx) = mpsc::channel::<Option<String>>();
    let runs: Vec<(usize, Vec<GpuReport>, Vec<WorkerRecord>)> = std::thread::scope(|s| {
        let first = makes_id.then(|| {
            s.spawn(move || {
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
            })
        });
        // Rank 0's run is bounded by its deadlines, and it always says something at its end;
        // a fetch from another process is bounded by its own.
        let id = match &span.id {
            IdSource::Make(publish) => {
                let id = if makes_id {
                    rx.recv().ok().flatten()
                } else {
                    None
                };
                publish(id.as_deref());
                id
            }
            IdSource::Await(fetch) => fetch(),
        };
        let rest = usize::from(makes_id)..devices.len();
        let others: Vec<_> = rest
            .clone()
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
        if let Some(h) = first {
            let (reports, workers) = h.join().unwrap_or_default();
            out.push((0, reports, workers));
        }
        for (r, h) in rest.zip(others) {
            let (reports, workers) = h.join().unwrap_or_default();
            out.push((r, reports, workers));
        }
        out
    });
    let mut all_workers = Vec::new();
    let mut ranks = Vec::new();
    for (local, mut reports, workers) in runs {
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
            rank: span.first + local,
            device: devices[local],
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
