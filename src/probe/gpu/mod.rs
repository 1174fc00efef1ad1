//! GPU facts, the parent's side: plan the worker's steps, run them under the watchdog, and
//! decode the typed answers into facts. The worker itself is `crate::worker`.

mod nccl_log;
mod nccl_ranks;
mod settle_bandwidth;
mod settle_nccl;

use crate::facts::{BandwidthFacts, Kind};
use crate::facts::{GpuRuntime, P2pFacts, PairOutcome, PairTest, Probed, StepError, Why};
use crate::measure::gpu::{
    last_stage, Answer, Gpu, NcclConfig, Note, Step, WorkerConfig, CONFIG_ENV,
};
use crate::measure::watchdog::{Outcome, Progress, StepReport, Watchdog};
use std::time::Duration;

pub use crate::worker::p2p::TRANSFER_BYTES;
pub use nccl_ranks::{IdSource, Span};
pub use settle_nccl::{combine as combine_ranks, SettledRank};

/// NCCL facts of a run that has no reports (yet): nothing loaded, nothing measured.
pub fn empty_nccl_facts(cfg: &NcclConfig, secs: f64) -> crate::facts::NcclFacts {
    settle_nccl::settle(cfg, Vec::new(), &[], secs)
}

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
    pub nccl: Option<NcclConfig>,
    /// Neither NCCL_P2P_LEVEL nor NCCL_P2P_DISABLE is set (environment or nccl.conf): when
    /// NCCL then chooses SHM between GPUs whose P2P this run verified, run the all-reduce
    /// again with NCCL_P2P_LEVEL=SYS to measure what NCCL's default costs.
    pub try_p2p_level_sys: bool,
    /// Run NCCL with one worker process per GPU (ncclGetUniqueId / ncclCommInitRank, as DDP
    /// does) instead of one process for all ranks (ncclCommInitAll).
    pub nccl_per_process: bool,
}

pub type GpuReport = StepReport<Gpu>;

fn not_run<T>() -> Probed<T> {
    Probed::unknown(Why::NotRun, "not run")
}

/// The watchdog for this binary's own worker (`__worker`), or why there is none.
pub fn watchdog(step_deadline: Duration) -> Result<Watchdog<Gpu>, String> {
    let program = std::env::current_exe()
        .map_err(|e| format!("cannot find the rigdoctor executable to run the GPU worker: {e}"))?;
    Ok(Watchdog::new(
        program,
        vec!["__worker".into()],
        step_deadline,
    ))
}

/// The GPU facts of a run that did not start the GPU steps, and why.
pub fn not_started(why: &str) -> GpuRuntime {
    GpuRuntime {
        nvml: Probed::unknown(Why::NotRun, why),
        cuda: Probed::unknown(Why::NotRun, why),
        cuda_device_order: std::env::var("CUDA_DEVICE_ORDER").ok(),
        p2p: None,
        bandwidth: None,
        nccl: None,
        workers: Vec::new(),
        limits: None,
        step_deadline_s: None,
    }
}

/// This process's soft limits, which every worker inherits (reading them changes nothing).
fn process_limits() -> crate::facts::ProcessLimits {
    let soft = |resource| {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit struct we own.
        let ok = unsafe { libc::getrlimit(resource, &mut r) } == 0;
        (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
    };
    crate::facts::ProcessLimits {
        address_space: soft(libc::RLIMIT_AS),
        data: soft(libc::RLIMIT_DATA),
    }
}

/// Run the GPU steps in a worker (this same binary, `__worker`). `progress` sees each step
/// start and settle.
pub fn collect(
    step_deadline: Duration,
    plan: &Plan,
    progress: &mut dyn FnMut(Progress<'_, Gpu>),
) -> GpuRuntime {
    let cuda_device_order = std::env::var("CUDA_DEVICE_ORDER").ok();
    let mut dog = match watchdog(step_deadline) {
        Ok(d) => d,
        Err(why) => {
            return GpuRuntime {
                nvml: Probed::unknown(Why::IoError, why.clone()),
                cuda: Probed::unknown(Why::IoError, why),
                cuda_device_order,
                p2p: None,
                bandwidth: None,
                nccl: None,
                workers: Vec::new(),
                limits: Some(process_limits()),
                step_deadline_s: Some(step_deadline.as_secs_f64()),
            };
        }
    };
    let mut steps = vec![Step::NvmlInventory, Step::CudaInventory];
    if plan.p2p {
        steps.push(Step::P2pMatrix {
            devices: plan.devices.clone(),
        });
    }
    if plan.bandwidth.is_some() {
        steps.push(Step::BandwidthPlan {
            devices: plan.devices.clone(),
        });
    }
    let (bw_deadline, nccl_deadline) = long_deadlines(plan);
    let config = WorkerConfig {
        bandwidth: plan.bandwidth.clone(),
        nccl: plan.nccl.as_ref().map(|c| nccl_plan(step_deadline, c).0),
    };
    dog.env.push((
        CONFIG_ENV.to_string(),
        serde_json::to_string(&config).unwrap_or_default(),
    ));
    // NCCL's log goes to files of ours (NCCL_DEBUG_FILE), never into the worker's stdout.
    let log_dir = plan.nccl.as_ref().and_then(|_| nccl_log::LogDir::new());
    let mut env_set = Vec::new();
    if plan.nccl.is_some() && !plan.nccl_per_process {
        env_set = nccl_log::environment(log_dir.as_ref(), |k| std::env::var(k).ok());
        dog.env
            .extend(env_set.iter().map(|e| (e.name.clone(), e.value.clone())));
        steps.push(Step::NcclInit);
    }
    dog.long_step = Box::new(move |s| match s {
        Step::Bandwidth(_) => Some(bw_deadline),
        Step::NcclAllReduce => Some(nccl_deadline),
        _ => None,
    });
    // A hung cuInit hangs every later CUDA step too: one deadline is enough.
    dog.gates = vec![Step::CudaInventory];
    dog.skip_after_hang = Box::new(skip_after_hang);
    dog.side_by_side = Box::new(pair_devices);
    let started = std::time::Instant::now();
    let run = dog.run(&steps, progress);
    let wall_s = started.elapsed().as_secs_f64();
    let secs = step_deadline.as_secs_f64();
    let mut nvml = not_run();
    let mut cuda = not_run();
    let mut p2p_facts = plan.p2p.then(|| P2pFacts {
        devices: plan.devices.clone().unwrap_or_default(),
        bytes: TRANSFER_BYTES as u64,
        deadline_s: step_deadline.as_secs_f64(),
        access: not_run(),
        tests: Vec::new(),
        local: Vec::new(),
    });
    let mut bw_reports = Vec::new();
    let mut nccl_reports = Vec::new();
    for r in run.reports {
        match &r.step {
            Step::BandwidthPlan { .. } | Step::Bandwidth(_) | Step::BandwidthEnd { .. } => {
                bw_reports.push(r)
            }
            Step::NcclInit | Step::NcclRank { .. } | Step::NcclAllReduce => nccl_reports.push(r),
            Step::NvmlInventory => {
                nvml = settle(r.outcome, "NVML", secs, |a| match a {
                    Answer::Nvml(n) => Some(n),
                    _ => None,
                })
            }
            Step::CudaInventory => {
                cuda = settle(r.outcome, "the CUDA driver", secs, |a| match a {
                    Answer::Cuda(c) => Some(c),
                    _ => None,
                })
            }
            Step::P2pMatrix { .. } | Step::GpuSelftest { .. } | Step::P2pPair { .. } => {
                if let Some(facts) = p2p_facts.as_mut() {
                    settle_p2p(facts, r, secs);
                }
            }
            Step::SpinHang { .. } => {}
        }
    }
    let bandwidth = plan.bandwidth.as_ref().map(|cfg| {
        let selected = plan.devices.clone().unwrap_or_default();
        let mut f = settle_bandwidth::settle(cfg, &selected, bw_reports, secs);
        f.wall_s = wall_s;
        f.interrupted = crate::measure::interrupted();
        f
    });
    let mut workers = run.workers;
    // One process per GPU: the ranks of CUDA's devices (or --devices), once CUDA answered;
    // without a device count the one-process init reports why NCCL cannot run.
    let rank_devices: Option<Vec<i32>> = plan
        .nccl_per_process
        .then(|| {
            plan.devices.clone().or_else(|| {
                cuda.known()
                    .map(|c| c.devices.iter().map(|d| d.ordinal).collect())
            })
        })
        .flatten()
        .filter(|d| !d.is_empty());
    let nccl = plan.nccl.as_ref().map(|cfg| {
        let worker_cfg = config.nccl.as_ref().unwrap_or(cfg);
        // The NCCL workers start after the bandwidth run: its figures can lengthen the deadline.
        let nccl_deadline = nccl_deadline_measured(nccl_deadline, cfg, bandwidth.as_ref());
        let mut f = match (&rank_devices, plan.nccl_per_process) {
            (Some(devices), _) => {
                let (f, more) = nccl_processes(
                    step_deadline,
                    worker_cfg,
                    nccl_deadline,
                    devices,
                    &[],
                    progress,
                );
                append_workers(&mut workers, more);
                f
            }
            (None, true) => {
                // No CUDA devices to give ranks to: NCCL is not run, for CUDA's reason (the
                // one rank's worker would meet the same cuInit or cuDeviceGetCount failure).
                let mut f = settle_nccl::settle(cfg, Vec::new(), &[], nccl_deadline.as_secs_f64());
                let because = match &cuda {
                    Probed::Unknown { detail, .. } => format!("CUDA is not usable: {detail}"),
                    Probed::Known(_) => "CUDA reported no devices to run NCCL ranks on".into(),
                };
                f.library = Probed::unknown(crate::facts::Why::NotRun, because);
                f
            }
            (None, false) => {
                let log = log_dir
                    .as_ref()
                    .map(nccl_log::LogDir::read)
                    .unwrap_or_default();
                let mut f =
                    settle_nccl::settle(cfg, nccl_reports, &log, nccl_deadline.as_secs_f64());
                f.env_set = env_set;
                f
            }
        };
        let tests = p2p_facts.as_ref().map_or(&[][..], |p| &p.tests[..]);
        if plan.try_p2p_level_sys
            && f.all_correct()
            && crate::facts::p2p_unused(&f, tests).is_some()
            && !crate::measure::interrupted()
        {
            if let Some(cfg) = &config.nccl {
                let sys = [("NCCL_P2P_LEVEL", "SYS")];
                let (again, more) = match &rank_devices {
                    Some(devices) => {
                        let (f, more) = nccl_processes(
                            step_deadline,
                            cfg,
                            nccl_deadline,
                            devices,
                            &sys,
                            progress,
                        );
                        (Some(f), more)
                    }
                    None => nccl_again(step_deadline, cfg, nccl_deadline, &sys, progress),
                };
                append_workers(&mut workers, more);
                f.p2p_level_sys = again.map(Box::new);
            }
        }
        f
    });
    GpuRuntime {
        nvml,
        cuda,
        cuda_device_order,
        p2p: p2p_facts,
        bandwidth,
        nccl,
        workers,
        limits: Some(process_limits()),
        step_deadline_s: Some(step_deadline.as_secs_f64()),
    }
}

/// The NCCL sweep's config as its workers get it (they abort a little before the parent's
/// deadline, which stays the backstop) and that deadline.
pub fn nccl_plan(step_deadline: Duration, cfg: &NcclConfig) -> (NcclConfig, Duration) {
    let plan = Plan {
        nccl: Some(cfg.clone()),
        ..Default::default()
    };
    let (_, nccl_deadline) = long_deadlines(&plan);
    let d = nccl_deadline.max(step_deadline).as_secs_f64();
    let mut c = cfg.clone();
    c.abort_after_s = Some(d - (0.15 * d).max(0.4));
    (c, nccl_deadline)
}

/// A line of NCCL's log that says which network it chose at init, after "NCCL INFO ":
/// `NET/Socket : Using [0]eth0:10.0.0.1<0>` (transport/net_socket.cc), `NET/IB : Using
/// [0]mlx5_0:1/IB ...` or `NET/IB : No device found.` (transport/net_ib.cc), `NET/Plugin ...`.
pub fn net_choice(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once(" NCCL INFO ")?;
    let rest = rest.trim();
    (rest.starts_with("NET/Socket : Using")
        || rest.starts_with("NET/IB : ")
        || rest.starts_with("NET/Plugin"))
    .then_some(rest)
}

/// This machine's ranks of a communicator whose other ranks run on other machines
/// (`rigdoctor cluster`): one worker per device in `devices`, each rank settled on its own
/// (named with `host`) for the coordinator to combine, with the channel and WARN lines of
/// this machine's NCCL log.
pub fn nccl_span(
    step_deadline: Duration,
    cfg: &NcclConfig,
    devices: &[i32],
    span: &Span<'_>,
    host: &str,
    progress: &mut dyn FnMut(Progress<'_, Gpu>),
) -> (Vec<SettledRank>, Vec<String>) {
    let (worker_cfg, nccl_deadline) = nccl_plan(step_deadline, cfg);
    let log_dir = nccl_log::LogDir::new();
    let env_set = nccl_env(log_dir.as_ref(), &[]);
    let make = || nccl_watchdog(step_deadline, &worker_cfg, nccl_deadline, &env_set);
    let (ranks, _) = nccl_ranks::run_span(&make, devices, span, step_deadline, progress);
    let secs = nccl_deadline.as_secs_f64();
    let settled = ranks
        .into_iter()
        .map(|r| settle_nccl::settle_rank(&worker_cfg, r, Some(host), secs))
        .collect();
    let log = log_dir
        .as_ref()
        .map(nccl_log::LogDir::read)
        .unwrap_or_default()
        .into_iter()
        .filter(|l| {
            crate::facts::parse_channel(l).is_some()
                || l.contains(" NCCL WARN ")
                || net_choice(l).is_some()
        })
        .take(2000)
        .collect();
    (settled, log)
}

/// Workers of a later run, numbered on from those before.
fn append_workers(
    workers: &mut Vec<crate::facts::WorkerRecord>,
    more: Vec<crate::facts::WorkerRecord>,
) {
    let offset = workers.len();
    workers.extend(more.into_iter().map(|mut w| {
        w.index += offset;
        w
    }));
}

/// The NCCL variables of a run: rigdoctor's log settings, then `extra` (set by rigdoctor).
fn nccl_env(
    log_dir: Option<&nccl_log::LogDir>,
    extra: &[(&str, &str)],
) -> Vec<crate::facts::EnvSet> {
    let mut env_set = nccl_log::environment(log_dir, |k| std::env::var(k).ok());
    env_set.extend(extra.iter().map(|(k, v)| crate::facts::EnvSet {
        name: k.to_string(),
        value: v.to_string(),
        replaced: None,
    }));
    env_set
}

/// A watchdog for an NCCL worker: its config, the NCCL variables `env_set`, and the sweep's
/// own deadline; None when no worker can start.
fn nccl_watchdog(
    step_deadline: Duration,
    cfg: &NcclConfig,
    nccl_deadline: Duration,
    env_set: &[crate::facts::EnvSet],
) -> Option<Watchdog<Gpu>> {
    let mut dog = watchdog(step_deadline).ok()?;
    let config = WorkerConfig {
        bandwidth: None,
        nccl: Some(cfg.clone()),
    };
    dog.env.push((
        CONFIG_ENV.to_string(),
        serde_json::to_string(&config).unwrap_or_default(),
    ));
    dog.env
        .extend(env_set.iter().map(|e| (e.name.clone(), e.value.clone())));
    dog.long_step = Box::new(move |s| (*s == Step::NcclAllReduce).then_some(nccl_deadline));
    Some(dog)
}

/// The NCCL sweep with one worker process per GPU in `devices` (rank order), logged to a
/// directory of its own, with `extra` NCCL variables.
fn nccl_processes(
    step_deadline: Duration,
    cfg: &NcclConfig,
    nccl_deadline: Duration,
    devices: &[i32],
    extra: &[(&str, &str)],
    progress: &mut dyn FnMut(Progress<'_, Gpu>),
) -> (crate::facts::NcclFacts, Vec<crate::facts::WorkerRecord>) {
    let log_dir = nccl_log::LogDir::new();
    let env_set = nccl_env(log_dir.as_ref(), extra);
    let make = || nccl_watchdog(step_deadline, cfg, nccl_deadline, &env_set);
    let (ranks, workers) = nccl_ranks::run(&make, devices, step_deadline, progress);
    let log = log_dir
        .as_ref()
        .map(nccl_log::LogDir::read)
        .unwrap_or_default();
    let mut f = settle_nccl::settle_ranks(cfg, ranks, &log, nccl_deadline.as_secs_f64());
    f.env_set = env_set;
    (f, workers)
}

/// The NCCL sweep in one worker of its own (ncclCommInitAll) with `extra` NCCL variables (NCCL
/// reads NCCL_P2P_LEVEL once per process), logged to a directory of its own; None when no
/// worker could start.
fn nccl_again(
    step_deadline: Duration,
    cfg: &NcclConfig,
    nccl_deadline: Duration,
    extra: &[(&str, &str)],
    progress: &mut dyn FnMut(Progress<'_, Gpu>),
) -> (
    Option<crate::facts::NcclFacts>,
    Vec<crate::facts::WorkerRecord>,
) {
    let log_dir = nccl_log::LogDir::new();
    let env_set = nccl_env(log_dir.as_ref(), extra);
    let Some(dog) = nccl_watchdog(step_deadline, cfg, nccl_deadline, &env_set) else {
        return (None, Vec::new());
    };
    let run = dog.run(&[Step::NcclInit], progress);
    let log = log_dir
        .as_ref()
        .map(nccl_log::LogDir::read)
        .unwrap_or_default();
    let mut f = settle_nccl::settle(cfg, run.reports, &log, nccl_deadline.as_secs_f64());
    f.env_set = env_set;
    (Some(f), run.workers)
}

/// One deadline per GPU pair in the P2P verification: after a to b hung, b to a is not tried
/// (said as not run, never as passed). The bandwidth battery then skips that pair's P2P
/// copies (both directions, the copy engine and the SM kernel): they take the same path that
/// just hung. Its staged copies, through host memory, still run: they are the control.
fn skip_after_hang(hung: &Step, next: &Step) -> Option<String> {
    let Step::P2pPair { from: a, to: b } = hung else {
        return None;
    };
    let (a, b) = (*a, *b);
    let same_pair = |c: i32, d: i32| (a, b) == (c, d) || (a, b) == (d, c);
    match next {
        Step::P2pPair { from, to } if same_pair(*from, *to) && hung != next => Some(format!(
            "not tried: P2P {a}->{b} hung, so this pair costs one deadline, not two"
        )),
        Step::Bandwidth(s) if s.kind == crate::facts::Kind::P2p => match (s.from, s.to) {
            (Some(c), Some(d)) if same_pair(c, d) => Some(format!(
                "not measured: P2P {a}->{b} hung in the P2P test; the same path would hang again"
            )),
            _ => None,
        },
        _ => None,
    }
}

/// The GPUs a P2P pair test uses: after a hang, pairs on disjoint GPUs are tested side by side,
/// each in a worker of its own, so an 8-GPU rig where every pair hangs pays 7 rounds of
/// deadlines, not 28 (both directions of a pair stay together, in one worker). Nothing else
/// runs side by side: bandwidth figures would then measure the contention.
fn pair_devices(step: &Step) -> Option<Vec<i32>> {
    match step {
        Step::P2pPair { from, to } => Some(vec![(*from).min(*to), (*from).max(*to)]),
        _ => None,
    }
}

/// The NCCL sweep's deadline once this run's bandwidth battery has measured the links: a
/// ring's busbw is bounded by its slowest hop, and a hop through host memory by the copies to
/// and from the GPUs, so the sweep may run at a quarter of the slowest measured host<->GPU or
/// GPU<->GPU figure before it is called hung (a rig on x1 risers is slow, not stuck). Never
/// shorter than the plan's deadline; at most an hour.
fn nccl_deadline_measured(
    planned: Duration,
    cfg: &NcclConfig,
    bandwidth: Option<&BandwidthFacts>,
) -> Duration {
    let slowest = bandwidth
        .into_iter()
        .flat_map(|b| &b.measurements)
        .filter(|m| !m.latency && m.kind != Kind::Local)
        .filter_map(|m| m.median())
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    if !slowest.is_finite() {
        return planned;
    }
    let bytes: f64 = cfg.sizes.iter().map(|&s| s as f64).sum();
    let secs = 2.0 + 4.0 * bytes * 2.0 * f64::from(cfg.warmup + cfg.iters) / (slowest * 1e9);
    planned.max(Duration::from_secs_f64(secs.min(3600.0)))
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

fn settle_p2p(facts: &mut P2pFacts, r: GpuReport, secs: f64) {
    let (from, to, local) = match r.step {
        Step::P2pMatrix { .. } => {
            let m = settle(r.outcome, "the P2P access matrix", secs, |a| match a {
                Answer::Matrix(m) => Some(Probed::Known(m)),
                _ => None,
            });
            facts.access = match m {
                Probed::Known(m) => {
                    facts.devices = m.devices;
                    Probed::Known(m.access)
                }
                u @ Probed::Unknown { .. } => u.retype(),
            };
            return;
        }
        Step::GpuSelftest { device } => (device, device, true),
        Step::P2pPair { from, to } => (from, to, false),
        _ => return,
    };
    // What finished before a hang or crash, from the step's notes.
    let noted: Vec<_> = r
        .notes
        .iter()
        .filter_map(|n| match n {
            Note::Path(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    let stage = last_stage(&r.notes).filter(|s| !noted.iter().any(|p| p.path.label() == s));
    let outcome = match r.outcome {
        Outcome::Done(Answer::Pair(a)) => PairOutcome::Tested {
            enable: a.enable,
            paths: a.paths,
        },
        Outcome::Done(other) => PairOutcome::Failed {
            error: format!("worker protocol: unexpected answer {other:?}"),
            cause: None,
            paths: noted,
        },
        Outcome::Failed(StepError::NotRun { because }) if !local => {
            PairOutcome::Skipped { because }
        }
        Outcome::Failed(error) => PairOutcome::Failed {
            error: error.to_string(),
            cause: error.call().cloned(),
            paths: noted,
        },
        Outcome::Hang { unkillable, .. } => PairOutcome::Hang {
            stage,
            paths: noted,
            unkillable,
        },
        Outcome::Crashed(e) => PairOutcome::Failed {
            error: format!("the worker {e}"),
            cause: None,
            paths: noted,
        },
    };
    let test = PairTest {
        from,
        to,
        elapsed_ms: r.elapsed.as_secs_f64() * 1e3,
        outcome,
    };
    if local {
        facts.local.push(test);
    } else {
        facts.tests.push(test);
    }
}

/// A step's outcome as a fact: the answer `pick` takes from it, or why there is none.
fn settle<T>(
    o: Outcome<Answer>,
    what: &str,
    secs: f64,
    pick: impl FnOnce(Answer) -> Option<Probed<T>>,
) -> Probed<T> {
    match o {
        Outcome::Done(a) => pick(a).unwrap_or_else(|| {
            Probed::unknown(
                Why::Unparsable,
                format!("worker protocol: wrong answer for {what}"),
            )
        }),
        Outcome::Failed(e) => Probed::from_step_error(e),
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
        Outcome::Crashed(e) => Probed::unknown(Why::Failed, format!("the worker for {what} {e}")),
    }
}

/// The step error behind a failed outcome (for the decoders of the other batteries).
pub fn step_error(o: &Outcome<Answer>) -> Option<&StepError> {
    match o {
        Outcome::Failed(e) => Some(e),
        _ => None,
    }
}
