//! The GPU worker's messages: the steps the parent plans, the answers and progress notes the
//! worker sends back, and the run's settings. Shared by both sides of the boundary (the worker
//! in `crate::worker`, the parent's decoding in `crate::probe::gpu`); nothing here runs CUDA.

use super::protocol::Protocol;
use crate::facts::{
    BandwidthConfig, CudaInventory, EnableAttempt, Kind, Method, Mismatch, NvmlInventory,
    PathResult, PeerAccess, Probed, StepError,
};
use serde::{Deserialize, Serialize};

/// The GPU worker's protocol.
pub struct Gpu;

impl Protocol for Gpu {
    type Step = Step;
    type Answer = Answer;
    type Note = Note;
}

/// One unit of GPU work with its own deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    NvmlInventory,
    CudaInventory,
    /// What CUDA grants between the devices; plans the self-tests and pair tests.
    P2pMatrix {
        devices: Option<Vec<i32>>,
    },
    /// Copies within one GPU, kernel included, verified.
    GpuSelftest {
        device: i32,
    },
    /// Verified transfers from one GPU to another over every path.
    P2pPair {
        from: i32,
        to: i32,
    },
    /// The bandwidth battery's plan: the devices, peer access, links before any copy.
    BandwidthPlan {
        devices: Option<Vec<i32>>,
    },
    /// One timed, verified measurement.
    Bandwidth(Spec),
    /// The closing NVML reading of these devices.
    BandwidthEnd {
        devices: Vec<i32>,
    },
    /// Load NCCL, create the communicators.
    NcclInit,
    /// Load NCCL and join one communicator as `rank` of `nranks` on `device`, one process
    /// per GPU as DDP runs it (ncclCommInitRank). Rank 0 has no `id`: it makes the unique id
    /// (ncclGetUniqueId, whose bootstrap root lives in that process) and notes it, hex, for
    /// the parent to hand to the other ranks.
    NcclRank {
        rank: usize,
        nranks: usize,
        device: i32,
        id: Option<String>,
    },
    /// The all-reduce sweep (one step: a hang costs one deadline).
    NcclAllReduce,
    /// `rigdoctor watchdog-test`: a spin kernel whose latch is never released.
    SpinHang {
        device: i32,
    },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |d: &[i32]| d.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        match self {
            Step::NvmlInventory => f.write_str("nvml-inventory"),
            Step::CudaInventory => f.write_str("cuda-inventory"),
            Step::P2pMatrix { devices: None } => f.write_str("p2p-matrix"),
            Step::P2pMatrix { devices: Some(d) } => write!(f, "p2p-matrix {}", list(d)),
            Step::GpuSelftest { device } => write!(f, "gpu-selftest {device}"),
            Step::P2pPair { from, to } => write!(f, "p2p {from}->{to}"),
            Step::BandwidthPlan { devices: None } => f.write_str("bw-plan"),
            Step::BandwidthPlan { devices: Some(d) } => write!(f, "bw-plan {}", list(d)),
            Step::Bandwidth(s) => f.write_str(&s.label()),
            Step::BandwidthEnd { devices } => write!(f, "bw-end {}", list(devices)),
            Step::NcclInit => f.write_str("nccl-init"),
            Step::NcclRank {
                rank,
                nranks,
                device,
                ..
            } => write!(f, "nccl-rank {rank}/{nranks} (GPU {device})"),
            Step::NcclAllReduce => f.write_str("nccl-allreduce"),
            Step::SpinHang { device } => write!(f, "spin-hang {device}"),
        }
    }
}

/// The settings of the batteries a worker runs, passed once in [`CONFIG_ENV`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub bandwidth: Option<BandwidthConfig>,
    pub nccl: Option<NcclConfig>,
}

pub const CONFIG_ENV: &str = "RIGDOCTOR_WORKER_CONFIG";

impl WorkerConfig {
    pub fn from_env() -> Result<WorkerConfig, String> {
        match std::env::var(CONFIG_ENV) {
            Err(_) => Ok(WorkerConfig::default()),
            Ok(raw) => serde_json::from_str(&raw).map_err(|e| format!("{CONFIG_ENV}: {e}")),
        }
    }
}

/// What the NCCL step runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NcclConfig {
    /// All-reduce sizes in bytes, ascending.
    pub sizes: Vec<u64>,
    pub warmup: u32,
    pub iters: u32,
    /// `--nccl-lib`: the library to load instead of searching.
    pub library: Option<String>,
    /// CUDA ordinals (None: all).
    pub devices: Option<Vec<i32>>,
    /// The worker stops waiting for a collective this long after the sweep began, aborts the
    /// communicators (ncclCommAbort, as nccl.h asks after a timeout) and reports a hang; set
    /// a little under the parent's deadline, which stays the backstop.
    #[serde(default)]
    pub abort_after_s: Option<f64>,
    /// `--single-process`: every rank in one process (ncclCommInitAll) instead of one worker
    /// process per GPU (ncclCommInitRank).
    #[serde(default)]
    pub single_process: bool,
}

/// A worker's answer, one variant per kind of step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", content = "value", rename_all = "kebab-case")]
pub enum Answer {
    Nvml(Probed<NvmlInventory>),
    Cuda(Probed<CudaInventory>),
    Matrix(MatrixAnswer),
    Pair(PairAnswer),
    BandwidthPlan(PlanAnswer),
    Bandwidth(StepResult),
    BandwidthEnd(Vec<Reading>),
    NcclInit(NcclInit),
    NcclSweep(Vec<AllReduceResult>),
    Spin(SpinAnswer),
}

/// Progress of the running step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "note", content = "value", rename_all = "kebab-case")]
pub enum Note {
    /// The sub-step that begins now: where a hang happened.
    Stage(String),
    /// A P2P path that finished.
    Path(PathResult),
    /// An all-reduce size that finished.
    NcclResult(AllReduceResult),
    /// Cleaning up after the work (NCCL communicators destroyed or aborted).
    Teardown(String),
    /// Rank 0's ncclUniqueId, hex, for the other ranks (see [`Step::NcclRank`]).
    NcclUniqueId(String),
}

/// The sub-step the worker last announced, teardown included: where a hang happened.
pub fn last_stage(notes: &[Note]) -> Option<String> {
    notes.iter().rev().find_map(|n| match n {
        Note::Stage(s) | Note::Teardown(s) => Some(s.clone()),
        _ => None,
    })
}

/// The last sub-step of the work itself (what was running when the worker gave up).
pub fn last_work_stage(notes: &[Note]) -> Option<String> {
    notes.iter().rev().find_map(|n| match n {
        Note::Stage(s) => Some(s.clone()),
        _ => None,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatrixAnswer {
    pub devices: Vec<i32>,
    pub access: Vec<PeerAccess>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairAnswer {
    pub enable: Vec<EnableAttempt>,
    pub paths: Vec<PathResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanAnswer {
    pub devices: Vec<i32>,
    pub access: Vec<PeerAccess>,
    /// Each GPU's link before any copy.
    pub before: Vec<Reading>,
}

/// What `nccl-init` found: the library (kept even when the communicators failed, so the
/// known-bad releases can be matched) and the result of creating them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NcclInit {
    pub library: String,
    pub version: String,
    pub devices: Vec<i32>,
    /// ncclCommInitAll's failure, with ncclGetLastError's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
}

/// What one all-reduce size gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllReduceResult {
    pub bytes: u64,
    pub iters: u32,
    /// Milliseconds of the timed iterations, the slowest rank's events.
    #[serde(with = "crate::facts::float")]
    pub ms: f64,
    /// Elements not equal to the expected sum, per rank.
    pub wrong: Vec<u64>,
}

/// The watchdog test's answer: only reached when the spin kernel was NOT stuck (it returned).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpinAnswer {
    pub device: i32,
    #[serde(with = "crate::facts::float")]
    pub waited_ms: f64,
}

/// One measurement step: what is copied, how, and whether the reverse runs at the same time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub latency: bool,
    pub kind: Kind,
    pub method: Method,
    pub from: Option<i32>,
    pub to: Option<i32>,
    pub bidir: bool,
}

fn end_label(e: Option<i32>) -> String {
    e.map_or("host".into(), |d| d.to_string())
}

impl Spec {
    /// `bw p2p ce 0 1`, `lat h2d ce host 2`, `bw staged ce 1 0 bidir`.
    pub fn label(&self) -> String {
        format!(
            "{} {} {} {} {}{}",
            if self.latency { "lat" } else { "bw" },
            self.kind.label(),
            self.method.label(),
            end_label(self.from),
            end_label(self.to),
            if self.bidir { " bidir" } else { "" }
        )
    }

    /// The progress phase the step belongs to.
    pub fn phase(&self) -> &'static str {
        match (self.latency, self.kind) {
            (true, _) => "latency",
            (_, Kind::H2d | Kind::D2h) => "host<->device",
            (_, Kind::Local) => "within each GPU",
            (_, Kind::P2p) => "GPU<->GPU, P2P",
            (_, Kind::Staged) => "GPU<->GPU, staged",
        }
    }

    /// The directions this step measures: one, or both at once.
    pub fn lanes(&self) -> Vec<(Kind, Option<i32>, Option<i32>)> {
        let mut v = vec![(self.kind, self.from, self.to)];
        if self.bidir {
            let back = match self.kind {
                Kind::H2d => Kind::D2h,
                Kind::D2h => Kind::H2d,
                k => k,
            };
            v.push((back, self.to, self.from));
        }
        v
    }
}

/// One NVML reading of a GPU's link and clocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub device: i32,
    pub bus_id: Option<String>,
    pub gen: Option<u32>,
    pub width: Option<u32>,
    pub max_gen: Option<u32>,
    pub max_width: Option<u32>,
    pub throttle: Option<u64>,
    pub replays: Option<u64>,
    /// nvmlDeviceGetPowerUsage, milliwatts.
    #[serde(default)]
    pub power_mw: Option<u32>,
    /// With `full`: the enforced power limit, the board default and the settable range.
    #[serde(default)]
    pub power_limit_mw: Option<u32>,
    #[serde(default)]
    pub power_default_mw: Option<u32>,
    #[serde(default)]
    pub power_range_mw: Option<[u32; 2]>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<String>,
}

/// Result of one lane, as the parent reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaneResult {
    pub kind: Kind,
    pub from: Option<i32>,
    pub to: Option<i32>,
    /// Milliseconds per sample (between the events around the timed copies).
    #[serde(with = "crate::facts::float::seq")]
    pub samples_ms: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<Mismatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole answer of a measurement step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    pub bytes: u64,
    pub copies: u32,
    pub lanes: Vec<LaneResult>,
    /// NVML readings taken while the copies ran.
    pub load: Vec<Reading>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpus: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_and_read_as_before() {
        let steps = [
            Step::NvmlInventory,
            Step::P2pMatrix {
                devices: Some(vec![0, 2]),
            },
            Step::P2pPair { from: 0, to: 1 },
            Step::Bandwidth(Spec {
                latency: false,
                kind: Kind::Staged,
                method: Method::Ce,
                from: Some(1),
                to: Some(0),
                bidir: true,
            }),
            Step::NcclAllReduce,
        ];
        for s in &steps {
            let j = serde_json::to_string(s).unwrap();
            assert_eq!(&serde_json::from_str::<Step>(&j).unwrap(), s, "{j}");
        }
        assert_eq!(steps[3].to_string(), "bw staged ce 1 0 bidir");
        assert_eq!(steps[1].to_string(), "p2p-matrix 0,2");
        let n = vec![Note::Stage("a".into()), Note::Stage("b".into())];
        assert_eq!(last_stage(&n).as_deref(), Some("b"));
    }
}
