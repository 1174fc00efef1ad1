//! The worker process (`rigdoctor __worker`): everything here runs on the far side of the
//! watchdog, where a wedged GPU may hang a call or a broken library may crash the process.
//! It reads its plan, runs the steps in order and reports each on the event pipe; the parent's
//! side (deadlines, decoding the answers into facts) is `crate::measure::watchdog` and
//! `crate::probe::gpu`.

pub mod bandwidth;
pub mod cu;
pub mod cuda;
mod driver_api;
pub mod nccl;
pub mod nvml;
pub mod p2p;
mod pattern;
mod spin;

use crate::facts::StepError;
use crate::measure::gpu::{Answer, Gpu, Note, Step, WorkerConfig};
use crate::measure::protocol::{read_plan, Event, EventOf, Sender, PARENT_ENV};
use std::collections::VecDeque;

/// Exit status of a worker that was started wrongly (not by rigdoctor).
const EXIT_USAGE: i32 = 2;

/// The worker's main loop; its exit status.
pub fn main() -> i32 {
    let started = (|| -> Result<_, String> {
        if let Ok(p) = std::env::var(PARENT_ENV) {
            // SAFETY: getppid has no preconditions.
            if p.parse::<i32>().ok() != Some(unsafe { libc::getppid() }) {
                return Err("the rigdoctor that started this worker is gone".into());
            }
        }
        Ok((
            read_plan::<Step>()?,
            WorkerConfig::from_env()?,
            Sender::from_env()?,
        ))
    })();
    let (steps, config, mut out) = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rigdoctor: error: {e} (the worker is started by rigdoctor itself)");
            return EXIT_USAGE;
        }
    };
    let mut gpu = GpuWorker::new(config);
    let mut queue: VecDeque<Step> = steps.into();
    while let Some(step) = queue.pop_front() {
        let start: EventOf<Gpu> = Event::Start { step: step.clone() };
        if out.send(&start).is_err() {
            // The parent is gone (its end of the pipe closed): nobody is waiting for results.
            break;
        }
        let r = gpu.run_step(&step, &mut |note| {
            let _ = out.send(&EventOf::<Gpu>::Note {
                step: step.clone(),
                note,
            });
        });
        if !r.more.is_empty() {
            let _ = out.send(&EventOf::<Gpu>::Plan {
                steps: r.more.clone(),
            });
            queue.extend(r.more);
        }
        let _ = match r.result {
            Ok(result) => out.send(&EventOf::<Gpu>::Done { step, result }),
            Err(error) => out.send(&EventOf::<Gpu>::Failed { step, error }),
        };
        if r.stop {
            // The CUDA context is lost; the parent gives the remaining steps to a new worker.
            break;
        }
    }
    // Communicators are closed while the process is whole (not by atexit handlers).
    gpu.finish();
    0
}

/// What a worker step produced.
pub struct StepOutput {
    pub result: Result<Answer, StepError>,
    /// Steps to append to the plan.
    pub more: Vec<Step>,
    /// The worker must stop after this step (its CUDA context is lost).
    pub stop: bool,
}

impl StepOutput {
    fn of(result: Result<Answer, StepError>) -> StepOutput {
        let stop = result.as_ref().err().is_some_and(StepError::sticky);
        StepOutput {
            result,
            more: Vec::new(),
            stop,
        }
    }

    fn planned(result: Result<(Answer, Vec<Step>), StepError>) -> StepOutput {
        match result {
            Ok((a, more)) => StepOutput {
                result: Ok(a),
                more,
                stop: false,
            },
            Err(e) => StepOutput::of(Err(e)),
        }
    }
}

fn pair_run(r: Result<p2p::PairRun, StepError>) -> StepOutput {
    match r {
        Ok(run) => StepOutput {
            result: Ok(Answer::Pair(run.answer)),
            more: Vec::new(),
            stop: run.context_lost,
        },
        Err(e) => StepOutput::of(Err(e)),
    }
}

/// The worker side: state kept across the steps of one worker (CUDA contexts, kernels, NVML,
/// NCCL communicators).
pub struct GpuWorker {
    config: WorkerConfig,
    session: driver_api::Session,
    /// NVML readings under load, opened by the first bandwidth step.
    sampler: Option<bandwidth::Sampler>,
    /// NCCL communicators, created by the init step.
    nccl: Option<nccl::Comms>,
}

impl GpuWorker {
    pub fn new(config: WorkerConfig) -> Self {
        GpuWorker {
            config,
            session: driver_api::Session::default(),
            sampler: None,
            nccl: None,
        }
    }

    /// Close what must be closed before the process exits.
    fn finish(&mut self) {
        if let Some(c) = self.nccl.take() {
            let _ = c.close(true);
        }
    }

    /// Run one step; `note` streams its progress.
    pub fn run_step(&mut self, step: &Step, note: &mut dyn FnMut(Note)) -> StepOutput {
        match step {
            Step::NvmlInventory => StepOutput::of(Ok(Answer::Nvml(nvml::inventory()))),
            Step::CudaInventory => StepOutput::of(Ok(Answer::Cuda(cuda::inventory()))),
            Step::P2pMatrix { devices } => StepOutput::planned(
                p2p::matrix(devices.clone()).map(|(a, more)| (Answer::Matrix(a), more)),
            ),
            Step::GpuSelftest { device } => pair_run(p2p::local(&mut self.session, *device, note)),
            Step::P2pPair { from, to } => pair_run(p2p::pair(&mut self.session, *from, *to, note)),
            Step::BandwidthPlan { .. } | Step::Bandwidth(_) | Step::BandwidthEnd { .. } => {
                self.bandwidth_step(step, note)
            }
            Step::NcclInit | Step::NcclRank { .. } | Step::NcclAllReduce => {
                self.nccl_step(step, note)
            }
            Step::SpinHang { device } => {
                StepOutput::of(spin::hang(&mut self.session, *device, note).map(Answer::Spin))
            }
        }
    }

    fn nccl_step(&mut self, step: &Step, note: &mut dyn FnMut(Note)) -> StepOutput {
        let Some(cfg) = self.config.nccl.clone() else {
            return StepOutput::of(Err(StepError::invalid("the NCCL settings are missing")));
        };
        let rank_step = matches!(step, Step::NcclRank { .. });
        if *step == Step::NcclInit || rank_step || self.nccl.is_none() {
            // A fresh worker (the last one was killed) makes its communicators first; a rank of
            // a communicator across processes cannot rejoin (its id is spent), so only the
            // ncclCommInitAll mode gets here without an init step.
            let fresh = match step {
                Step::NcclRank {
                    rank,
                    nranks,
                    device,
                    id,
                } => nccl::init_rank(
                    &mut self.session,
                    &cfg,
                    (*rank, *nranks, *device),
                    id.as_deref(),
                    note,
                ),
                _ => nccl::init(&mut self.session, &cfg),
            };
            let (answer, comms) = match fresh {
                Ok(x) => x,
                Err(e) => return StepOutput::of(Err(e)),
            };
            self.nccl = comms;
            if *step == Step::NcclInit || rank_step {
                let more = if self.nccl.is_some() {
                    // One step for the sweep: a hung size ends it after one deadline, the
                    // sizes done before it are kept from the step's notes.
                    vec![Step::NcclAllReduce]
                } else {
                    Vec::new()
                };
                return StepOutput {
                    result: Ok(Answer::NcclInit(answer)),
                    more,
                    stop: false,
                };
            }
            if let Some(e) = answer.error {
                return StepOutput::of(Err(e));
            }
        }
        let Some(comms) = self.nccl.take() else {
            return StepOutput::of(Err(StepError::invalid("no NCCL communicators")));
        };
        let r = nccl::sweep(&mut self.session, &comms, &cfg, note);
        note(Note::Teardown(if r.is_ok() {
            "destroy the communicators".into()
        } else {
            "abort the communicators".into()
        }));
        let closed = comms.close(r.is_ok());
        let r = match (r, closed) {
            (Ok(v), Ok(())) => Ok(Answer::NcclSweep(v)),
            (Ok(_), Err(c)) => Err(StepError::Call(c)),
            (Err(nccl::SweepError::Call(c)), _) => Err(StepError::Call(c)),
            (Err(nccl::SweepError::TimedOut(after_s)), _) => Err(StepError::TimedOut {
                what: "the NCCL all-reduce".into(),
                after_s,
            }),
        };
        StepOutput::of(r)
    }

    fn bandwidth_step(&mut self, step: &Step, note: &mut dyn FnMut(Note)) -> StepOutput {
        let Some(cfg) = self.config.bandwidth.clone() else {
            return StepOutput::of(Err(StepError::invalid(
                "the bandwidth settings are missing",
            )));
        };
        let sampler = self.sampler.get_or_insert_with(Default::default);
        match step {
            Step::BandwidthPlan { devices } => StepOutput::planned(
                bandwidth::plan(devices.clone(), &cfg, sampler)
                    .map(|(a, more)| (Answer::BandwidthPlan(a), more)),
            ),
            Step::Bandwidth(spec) => {
                let a = bandwidth::measure(&mut self.session, sampler, spec, &cfg, note);
                StepOutput {
                    result: a.result.map(Answer::Bandwidth),
                    more: Vec::new(),
                    stop: a.context_lost,
                }
            }
            Step::BandwidthEnd { devices } => {
                StepOutput::of(bandwidth::end(devices, sampler).map(Answer::BandwidthEnd))
            }
            _ => StepOutput::of(Err(StepError::invalid("not a bandwidth step"))),
        }
    }
}
