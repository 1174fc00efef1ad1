//! Peer-to-peer facts: what NVML and CUDA claim between GPUs, and what a real transfer did.

use super::{CallError, Probed};
use serde::{Deserialize, Serialize};

/// NVML's view of an ordered GPU pair (NVML indices, which are PCI bus order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NvmlPair {
    pub a: u32,
    pub b: u32,
    /// Common PCIe ancestor as `nvidia-smi topo -m` names it: PIX, PXB, PHB, NODE, SYS.
    pub topology: Probed<String>,
    /// nvmlDeviceGetP2PStatus per capability, as nvidia-smi's codes: OK, CNS (chipset not
    /// supported), GNS (GPU not supported), TNS (topology not supported), DR (disabled by
    /// registry key), NS (not supported), U (unknown).
    pub read: Probed<String>,
    pub write: Probed<String>,
    pub nvlink: Probed<String>,
    pub atomics: Probed<String>,
}

/// One NVLink link of a GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NvLinkState {
    pub link: u32,
    pub active: bool,
    /// Normalised bus id of the device at the other end, when NVML says.
    pub remote_bus_id: Option<String>,
}

/// The P2P battery of one run, in CUDA ordinals (what `cuda:N` means to the user's job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct P2pFacts {
    /// The devices covered (all, or the --devices selection).
    pub devices: Vec<i32>,
    /// Bytes moved per transfer.
    pub bytes: u64,
    /// How long one pair could take before it was called hung (--timeout).
    #[serde(with = "super::float")]
    pub deadline_s: f64,
    /// What CUDA grants, per ordered pair of `devices`.
    pub access: Probed<Vec<PeerAccess>>,
    /// One per ordered pair that CUDA granted in at least one direction.
    pub tests: Vec<PairTest>,
    /// The self-test of each device (`from` == `to`): copies within the GPU, kernel included.
    #[serde(default)]
    pub local: Vec<PairTest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerAccess {
    pub from: i32,
    pub to: i32,
    /// cuDeviceCanAccessPeer(from, to): `from` may map `to`'s memory.
    pub can_access: Probed<bool>,
    /// cuDeviceGetP2PAttribute: ACCESS_SUPPORTED, PERFORMANCE_RANK, NATIVE_ATOMIC_SUPPORTED.
    pub access_supported: Probed<bool>,
    pub perf_rank: Probed<i32>,
    pub native_atomics: Probed<bool>,
}

/// Whether CUDA grants `from` access to `to`'s memory (cuDeviceCanAccessPeer said yes).
pub fn granted(access: &[PeerAccess], from: i32, to: i32) -> bool {
    access
        .iter()
        .any(|p| p.from == from && p.to == to && p.can_access == Probed::Known(true))
}

/// Whether CUDA grants P2P between `a` and `b` in at least one direction.
pub fn granted_either(access: &[PeerAccess], a: i32, b: i32) -> bool {
    granted(access, a, b) || granted(access, b, a)
}

/// P2P from `from` to `to` was verified correct in this run: its test ran to an answer,
/// nothing on it broke, and a P2P path (copy engine or SM kernel over peer access) moved the
/// data right.
pub fn verified(tests: &[PairTest], from: i32, to: i32) -> bool {
    tests.iter().any(|t| {
        t.from == from
            && t.to == to
            && matches!(t.outcome, PairOutcome::Tested { .. })
            && !t.outcome.broken()
            && t.outcome
                .paths()
                .iter()
                .any(|p| p.path.is_p2p() && p.verdict == Verdict::Ok)
    })
}

/// The verified transfer of data from GPU `from` to GPU `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairTest {
    pub from: i32,
    pub to: i32,
    #[serde(with = "super::float")]
    pub elapsed_ms: f64,
    #[serde(flatten)]
    pub outcome: PairOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum PairOutcome {
    /// Every sub-test ran to an answer (which may be a mismatch or an error).
    Tested {
        enable: Vec<EnableAttempt>,
        paths: Vec<PathResult>,
    },
    /// The worker stopped answering: killed after the deadline.
    Hang {
        /// The sub-test running when it stopped ("ce", "enable 1->0", ...).
        stage: Option<String>,
        /// Sub-tests finished before it.
        paths: Vec<PathResult>,
        /// SIGKILL did not remove the worker: it is stuck inside the kernel driver.
        unkillable: bool,
    },
    /// Not tried on purpose: the other direction of the pair hung, and a second deadline would
    /// say nothing new.
    Skipped { because: String },
    /// The test could not run (allocation failed, the worker died, ...).
    Failed {
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<CallError>,
        paths: Vec<PathResult>,
    },
}

impl PairOutcome {
    pub fn paths(&self) -> &[PathResult] {
        match self {
            PairOutcome::Tested { paths, .. }
            | PairOutcome::Hang { paths, .. }
            | PairOutcome::Failed { paths, .. } => paths,
            PairOutcome::Skipped { .. } => &[],
        }
    }

    /// The direction is broken: it hung, failed, or a path gave wrong data or a CUDA error.
    pub fn broken(&self) -> bool {
        match self {
            PairOutcome::Tested { paths, .. } => paths
                .iter()
                .any(|p| matches!(p.verdict, Verdict::Mismatch(_) | Verdict::Error { .. })),
            PairOutcome::Hang { .. } | PairOutcome::Failed { .. } => true,
            // Not tested: neither broken nor healthy (the report says why).
            PairOutcome::Skipped { .. } => false,
        }
    }
}

/// cuCtxEnablePeerAccess in `ctx`'s context for `peer`'s memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnableAttempt {
    pub ctx: i32,
    pub peer: i32,
    /// None when it worked (or was already enabled); the CUDA error otherwise.
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<CallError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransferPath {
    /// cuMemcpyPeerAsync with peer access off: the driver stages through host memory. The
    /// control: if this fails too, the fault is not P2P.
    Staged,
    /// cuMemcpyPeerAsync with peer access on: the copy engine moves data over P2P.
    Ce,
    /// A kernel on the destination GPU loads from the source GPU's memory.
    SmRead,
    /// A kernel on the source GPU stores into the destination GPU's memory.
    SmWrite,
    /// Within one GPU (the self-test): cuMemcpyPeerAsync inside one context, a device copy.
    LocalCe,
    /// Within one GPU: the copy kernel, which proves the driver JIT-compiled kernels/ PTX.
    LocalSm,
}

impl TransferPath {
    pub const ALL: [TransferPath; 4] = [
        TransferPath::Staged,
        TransferPath::Ce,
        TransferPath::SmRead,
        TransferPath::SmWrite,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TransferPath::Staged => "staged",
            TransferPath::Ce => "ce",
            TransferPath::SmRead => "sm-read",
            TransferPath::SmWrite => "sm-write",
            TransferPath::LocalCe => "local-ce",
            TransferPath::LocalSm => "local-sm",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            TransferPath::Staged => "staged copy through host memory (peer access off)",
            TransferPath::Ce => "copy engine over P2P (cuMemcpyPeerAsync, peer access on)",
            TransferPath::SmRead => "SM kernel on the destination reading peer memory",
            TransferPath::SmWrite => "SM kernel on the source writing peer memory",
            TransferPath::LocalCe => "device-to-device copy within the GPU (copy engine)",
            TransferPath::LocalSm => {
                "copy kernel within the GPU (kernels/copy.ptx, JIT-compiled by the driver)"
            }
        }
    }

    pub fn is_p2p(self) -> bool {
        matches!(
            self,
            TransferPath::Ce | TransferPath::SmRead | TransferPath::SmWrite
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathResult {
    pub path: TransferPath,
    #[serde(flatten)]
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Every byte arrived as sent.
    Ok,
    Mismatch(Mismatch),
    /// A CUDA call failed.
    Error {
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<CallError>,
    },
    /// Not run, and why (peer access not granted in that direction, say).
    Skipped {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mismatch {
    pub first_bad_offset: u64,
    pub bad_bytes: u64,
    /// Up to 16 bytes from the first bad offset, hex.
    pub expected: String,
    pub got: String,
    pub damage: Damage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Damage {
    /// The wrong bytes are all zero (what early RTX 4090 drivers delivered).
    Zeros,
    /// The destination kept its fill: the data never landed.
    Unchanged,
    /// Other values: corrupted in flight or written to the wrong place.
    Garbage,
}

impl Damage {
    pub fn describe(self) -> &'static str {
        match self {
            Damage::Zeros => "zeros",
            Damage::Unchanged => "nothing arrived (the destination kept its fill)",
            Damage::Garbage => "garbage",
        }
    }
}
