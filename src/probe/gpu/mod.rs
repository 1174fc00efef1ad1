//! GPU facts from NVML and the CUDA driver. Both run in a worker process under the watchdog:
//! a wedged GPU can hang `cuInit`, an NVML call or a P2P copy, and a missing library or symbol
//! makes cudarc panic; none of it may take rigdoctor down.

pub mod bandwidth;
mod bandwidth_settle;
pub mod cuda;
mod driver_api;
pub mod nccl;
mod nccl_settle;
pub mod nvml;
pub mod p2p;
mod pattern;

use crate::facts::{
    CudaInventory, GpuRuntime, NvmlInventory, P2pFacts, PairOutcome, PairTest, PathResult,
    PeerAccess, Probed, Why,
};
use crate::measure::watchdog::{Outcome, StepReport, Watchdog};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

pub const STEP_NVML: &str = "nvml-inventory";
pub const STEP_CUDA: &str = "cuda-inventory";

/// What the GPU steps should cover.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Run the P2P battery.
    pub p2p: bool,
    /// CUDA ordinals to cover (None: all).
    pub devices: Option<Vec<i32>>,
    /// Run the bandwidth battery with these settings.
    pub bandwidth: Option<crate::facts::BandwidthConfig>,
    /// Run the NCCL all-reduce with these settings.
    pub nccl: Option<nccl::NcclConfig>,
}

/// Run the GPU steps in a worker (this same binary, `__worker`). `progress` sees each step as
/// it settles.
pub fn collect(
    step_deadline: Duration,
    plan: &Plan,
    progress: &mut dyn FnMut(&StepReport),
) -> GpuRuntime {
    let cuda_device_order = std::env::var("CUDA_DEVICE_ORDER").ok();
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            let why = format!("cannot find the rigdoctor executable to run the GPU worker: {e}");
            return GpuRuntime {
                nvml: Probed::unknown(Why::IoError, why.clone()),
                cuda: Probed::unknown(Why::IoError, why),
                cuda_device_order,
                p2p: None,
                bandwidth: None,
                nccl: None,
            };
        }
    };
    let mut env = Vec::new();
    let mut steps = vec![STEP_NVML.to_string(), STEP_CUDA.to_string()];
    if plan.p2p {
        steps.push(p2p::matrix_step(plan.devices.as_deref()));
    }
    if let Some(cfg) = &plan.bandwidth {
        env.push((
            bandwidth::CONFIG_ENV.to_string(),
            serde_json::to_string(cfg).unwrap_or_default(),
        ));
        steps.push(bandwidth::plan_step(plan.devices.as_deref()));
    }
    if let Some(cfg) = &plan.nccl {
        env.push((
            nccl::CONFIG_ENV.to_string(),
            serde_json::to_string(cfg).unwrap_or_default(),
        ));
        // Which transport NCCL chose per channel, in its own words.
        env.push(("NCCL_DEBUG".into(), "INFO".into()));
        env.push(("NCCL_DEBUG_SUBSYS".into(), "INIT,P2P,GRAPH".into()));
        steps.push(nccl::STEP_INIT.to_string());
    }
    let (bw_deadline, nccl_deadline) = long_deadlines(plan);
    let dog = Watchdog {
        program,
        args: vec!["__worker".into()],
        env,
        step_deadline,
        long_steps: vec![
            ("bw ".into(), bw_deadline),
            ("lat ".into(), bw_deadline),
            (nccl::STEP_ALLREDUCE.into(), nccl_deadline),
        ],
        // A hung cuInit hangs every later CUDA step too: one deadline is enough.
        gates: vec![STEP_CUDA.into()],
    };
    let started = std::time::Instant::now();
    let mut log = Vec::new();
    let reports = dog.run(&steps, &mut log, progress);
    let wall_s = started.elapsed().as_secs_f64();
    let secs = step_deadline.as_secs_f64();
    let mut nvml = Probed::unknown(Why::IoError, "not run");
    let mut cuda = Probed::unknown(Why::IoError, "not run");
    let mut p2p_facts = plan.p2p.then(|| P2pFacts {
        devices: plan.devices.clone().unwrap_or_default(),
        bytes: p2p::TRANSFER_BYTES as u64,
        deadline_s: step_deadline.as_secs_f64(),
        access: Probed::unknown(Why::IoError, "not run"),
        tests: Vec::new(),
        local: Vec::new(),
    });
    let mut bw_reports = Vec::new();
    let mut nccl_reports = Vec::new();
    for r in reports {
        if is_bandwidth_step(&r.step) {
            bw_reports.push(r);
        } else if r.step == nccl::STEP_INIT || r.step == nccl::STEP_ALLREDUCE {
            nccl_reports.push(r);
        } else if r.step == STEP_NVML {
            nvml = settle::<NvmlInventory>(r.outcome, "NVML", secs);
        } else if r.step == STEP_CUDA {
            cuda = settle::<CudaInventory>(r.outcome, "the CUDA driver", secs);
        } else if let Some(facts) = p2p_facts.as_mut() {
            settle_p2p(facts, r, secs);
        }
    }
    let bandwidth = plan.bandwidth.as_ref().map(|cfg| {
        let selected = plan.devices.clone().unwrap_or_default();
        let mut f = bandwidth_settle::settle(cfg, &selected, bw_reports, secs);
        f.wall_s = wall_s;
        f.interrupted = crate::measure::interrupted();
        f
    });
    let nccl = plan
        .nccl
        .as_ref()
        .map(|cfg| nccl_settle::settle(cfg, nccl_reports, &log, nccl_deadline.as_secs_f64()));
    GpuRuntime {
        nvml,
        cuda,
        cuda_device_order,
        p2p: p2p_facts,
        bandwidth,
        nccl,
    }
}

/// Deadlines of the measurement steps: a bandwidth step may move its bytes at 0.2 GB/s (a slow
/// but working x1 Gen1 link moves 0.25) before it is called hung, and the NCCL sweep (one step
/// for all sizes) may run at 2 GB/s of bus bandwidth (a ring through host memory on Gen3).
fn long_deadlines(plan: &Plan) -> (Duration, Duration) {
    let bw = plan.bandwidth.as_ref().map_or(0.0, |c| {
        let per_sample = c.size_bytes as f64 * f64::from(c.iters + c.warmup);
        let lanes = if c.bidirectional { 2.0 } else { 1.0 };
        2.0 + lanes * per_sample * f64::from(c.samples) / 0.2e9
    });
    let sweep = plan.nccl.as_ref().map_or(0.0, |c| {
        let bytes: f64 = c.sizes.iter().map(|&s| s as f64).sum();
        2.0 + bytes * 2.0 * f64::from(c.warmup + c.iters) / 2e9
    });
    (Duration::from_secs_f64(bw), Duration::from_secs_f64(sweep))
}

/// A battery's settings, passed to the worker as JSON in `var`.
fn config_from_env<T: serde::de::DeserializeOwned>(var: &str) -> Result<T, String> {
    let raw = std::env::var(var).map_err(|_| format!("{var} is not set"))?;
    serde_json::from_str(&raw).map_err(|e| format!("{var}: {e}"))
}

fn is_bandwidth_step(step: &str) -> bool {
    bandwidth::parse_plan_step(step).is_some()
        || bandwidth::parse_end_step(step).is_some()
        || bandwidth::Spec::parse(step).is_some()
}

#[derive(Deserialize)]
struct MatrixAnswer {
    devices: Vec<i32>,
    access: Vec<PeerAccess>,
}

#[derive(Deserialize)]
struct PairAnswer {
    enable: Vec<crate::facts::EnableAttempt>,
    paths: Vec<PathResult>,
}

fn settle_p2p(facts: &mut P2pFacts, r: StepReport, secs: f64) {
    if p2p::parse_matrix_step(&r.step).is_some() {
        let m = settle::<MatrixAnswer>(r.outcome, "the P2P access matrix", secs);
        facts.access = match m {
            Probed::Known(m) => {
                facts.devices = m.devices;
                Probed::Known(m.access)
            }
            Probed::Unknown { unknown, detail } => Probed::Unknown { unknown, detail },
        };
        return;
    }
    let local = p2p::parse_local_step(&r.step);
    let Some((from, to)) = local
        .map(|d| (d, d))
        .or_else(|| p2p::parse_pair_step(&r.step))
    else {
        return;
    };
    // What finished before a hang or crash, from the step's notes.
    let noted: Vec<PathResult> = r
        .notes
        .iter()
        .filter_map(|n| serde_json::from_value(n.get("path")?.clone()).ok())
        .collect();
    let stage = r
        .last_stage()
        .filter(|s| !noted.iter().any(|p| p.path.label() == s));
    let outcome = match r.outcome {
        Outcome::Done(v) => match serde_json::from_value::<PairAnswer>(v) {
            Ok(a) => PairOutcome::Tested {
                enable: a.enable,
                paths: a.paths,
            },
            Err(e) => PairOutcome::Failed {
                error: format!("unreadable worker answer: {e}"),
                paths: noted,
            },
        },
        Outcome::Failed(error) => PairOutcome::Failed {
            error,
            paths: noted,
        },
        Outcome::Hang { unkillable, .. } => PairOutcome::Hang {
            stage,
            paths: noted,
            unkillable,
        },
        Outcome::Crashed(e) => PairOutcome::Failed {
            error: format!("the worker died: {e}"),
            paths: noted,
        },
    };
    let test = PairTest {
        from,
        to,
        elapsed_ms: r.elapsed.as_secs_f64() * 1e3,
        outcome,
    };
    if local.is_some() {
        facts.local.push(test);
    } else {
        facts.tests.push(test);
    }
}

/// A worker's answer as a fact: the value itself, or `{"unknown": why, "detail": ...}`.
fn settle<T: serde::de::DeserializeOwned>(o: Outcome, what: &str, secs: f64) -> Probed<T> {
    match o {
        Outcome::Done(v) => serde_json::from_value::<Probed<T>>(v).unwrap_or_else(|e| {
            Probed::unknown(Why::Unparsable, format!("worker answer for {what}: {e}"))
        }),
        Outcome::Failed(e) => Probed::unknown(Why::Failed, e),
        Outcome::Hang {
            started,
            unkillable,
        } => Probed::unknown(
            Why::Hang,
            format!(
                "{what} did not answer within {secs} s{}{}",
                if started {
                    ""
                } else {
                    " (stuck before the step began)"
                },
                if unkillable {
                    "; the worker could not be killed: it is stuck in the kernel driver"
                } else {
                    ""
                }
            ),
        ),
        Outcome::Crashed(e) => {
            Probed::unknown(Why::Failed, format!("the worker for {what} died: {e}"))
        }
    }
}

/// What a worker step produced.
pub struct StepOutput {
    pub result: Result<Value, String>,
    /// Steps to append to the plan.
    pub more: Vec<String>,
    /// The worker must stop after this step (its CUDA context is lost).
    pub stop: bool,
}

impl StepOutput {
    fn value(v: Result<Value, serde_json::Error>) -> StepOutput {
        StepOutput::of(v.map_err(|e| e.to_string()))
    }

    fn of(result: Result<Value, String>) -> StepOutput {
        StepOutput {
            result,
            more: Vec::new(),
            stop: false,
        }
    }
}

/// The worker side: state kept across the steps of one worker (CUDA contexts, kernels).
#[derive(Default)]
pub struct GpuWorker {
    session: driver_api::Session,
    /// NVML readings under load, opened by the first bandwidth step.
    sampler: Option<bandwidth::Sampler>,
    /// NCCL communicators, created by the init step.
    nccl: Option<nccl::Comms>,
}

impl GpuWorker {
    /// Run one step; `note` streams its progress.
    pub fn run_step(&mut self, step: &str, note: &mut dyn FnMut(Value)) -> StepOutput {
        if step == STEP_NVML {
            return StepOutput::value(serde_json::to_value(nvml::inventory()));
        }
        if step == STEP_CUDA {
            return StepOutput::value(serde_json::to_value(cuda::inventory()));
        }
        if let Some(out) = self.bandwidth_step(step, note) {
            return out;
        }
        if let Some(out) = self.nccl_step(step, note) {
            return out;
        }
        if let Some(devices) = p2p::parse_matrix_step(step) {
            return match p2p::matrix(devices) {
                Ok((v, more)) => StepOutput {
                    result: Ok(v),
                    more,
                    stop: false,
                },
                Err(e) => StepOutput {
                    result: Err(e),
                    more: Vec::new(),
                    stop: false,
                },
            };
        }
        let run = match (p2p::parse_local_step(step), p2p::parse_pair_step(step)) {
            (Some(d), _) => Some(p2p::local(&mut self.session, d, note)),
            (None, Some((from, to))) => Some(p2p::pair(&mut self.session, from, to, note)),
            _ => None,
        };
        if let Some(run) = run {
            return match run {
                Ok(a) => StepOutput {
                    result: Ok(a.value),
                    more: Vec::new(),
                    stop: a.context_lost,
                },
                Err(e) => StepOutput {
                    result: Err(e),
                    more: Vec::new(),
                    stop: false,
                },
            };
        }
        StepOutput {
            result: Err(format!("unknown step {step:?}")),
            more: Vec::new(),
            stop: false,
        }
    }

    fn nccl_step(&mut self, step: &str, note: &mut dyn FnMut(Value)) -> Option<StepOutput> {
        if step != nccl::STEP_INIT && step != nccl::STEP_ALLREDUCE {
            return None;
        }
        let cfg: nccl::NcclConfig = match config_from_env(nccl::CONFIG_ENV) {
            Ok(c) => c,
            Err(e) => return Some(StepOutput::of(Err(e))),
        };
        if step == nccl::STEP_ALLREDUCE {
            let out = match &self.nccl {
                // A fresh worker (the last one was killed): communicators again first.
                None => match nccl::init(&mut self.session, &cfg) {
                    Ok((_, comms, _)) => {
                        self.nccl = Some(comms);
                        None
                    }
                    Err(e) => Some(StepOutput::of(Err(e))),
                },
                Some(_) => None,
            };
            if let Some(o) = out {
                return Some(o);
            }
            let comms = self.nccl.as_ref()?;
            let r = nccl::sweep(&mut self.session, comms, &cfg, note);
            return Some(match r {
                Ok(v) => StepOutput::of(Ok(v)),
                Err(f) => StepOutput {
                    result: Err(f.message),
                    more: Vec::new(),
                    stop: f.sticky,
                },
            });
        }
        Some(match nccl::init(&mut self.session, &cfg) {
            Ok((v, comms, more)) => {
                self.nccl = Some(comms);
                StepOutput {
                    result: Ok(v),
                    more,
                    stop: false,
                }
            }
            Err(e) => StepOutput::of(Err(e)),
        })
    }

    fn bandwidth_step(&mut self, step: &str, note: &mut dyn FnMut(Value)) -> Option<StepOutput> {
        let plan = bandwidth::parse_plan_step(step);
        let spec = bandwidth::Spec::parse(step);
        let end = bandwidth::parse_end_step(step);
        if plan.is_none() && spec.is_none() && end.is_none() {
            return None;
        }
        let cfg: crate::facts::BandwidthConfig = match config_from_env(bandwidth::CONFIG_ENV) {
            Ok(c) => c,
            Err(e) => return Some(StepOutput::of(Err(e))),
        };
        let sampler = self.sampler.get_or_insert_with(Default::default);
        let out = if let Some(devices) = plan {
            match bandwidth::plan(devices, &cfg, sampler) {
                Ok((v, more)) => StepOutput {
                    result: Ok(v),
                    more,
                    stop: false,
                },
                Err(e) => StepOutput::of(Err(e)),
            }
        } else if let Some(spec) = spec {
            let a = bandwidth::measure(&mut self.session, sampler, &spec, &cfg, note);
            StepOutput {
                result: a.result,
                more: Vec::new(),
                stop: a.context_lost,
            }
        } else {
            StepOutput::of(bandwidth::end(end.unwrap_or_default(), sampler))
        };
        Some(out)
    }
}
