//! Bandwidth and latency facts: what was measured, how, and what the links did meanwhile.

use super::{Aer, Mismatch, PeerAccess, Probed};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How the copies were driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Copy engine (cuMemcpy*Async).
    Ce,
    /// A kernel's loads and stores (copy_v4 of kernels/).
    Sm,
}

impl Method {
    pub fn label(self) -> &'static str {
        match self {
            Method::Ce => "ce",
            Method::Sm => "sm",
        }
    }
}

/// What a copy crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Pinned host memory to a GPU.
    H2d,
    /// A GPU to pinned host memory.
    D2h,
    /// Within one GPU's memory.
    Local,
    /// GPU to GPU with peer access enabled (P2P over PCIe or NVLink).
    P2p,
    /// GPU to GPU with peer access disabled: the driver stages through host memory. The
    /// control P2P is compared with.
    Staged,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::H2d => "h2d",
            Kind::D2h => "d2h",
            Kind::Local => "local",
            Kind::P2p => "p2p",
            Kind::Staged => "staged",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::H2d, Kind::D2h, Kind::Local, Kind::P2p, Kind::Staged]
            .into_iter()
            .find(|k| k.label() == s)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::H2d => "host to device",
            Kind::D2h => "device to host",
            Kind::Local => "within the device",
            Kind::P2p => "P2P (peer access on)",
            Kind::Staged => "staged through host (peer access off)",
        }
    }
}

/// The run's settings (the command line, after defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BandwidthConfig {
    /// Bytes per copy.
    pub size_bytes: u64,
    /// Timed copies per sample.
    pub iters: u32,
    /// Untimed copies before each sample's start event.
    pub warmup: u32,
    pub samples: u32,
    pub methods: Vec<Method>,
    pub bidirectional: bool,
    /// Every ordered pair (otherwise, with --quick, one direction per pair).
    pub all_pairs: bool,
    pub latency: bool,
    /// Copies per latency sample (each of `latency_bytes`).
    pub latency_iters: u32,
    pub latency_bytes: u64,
}

/// min / median / max over the samples, and the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    #[serde(with = "super::float")]
    pub median: f64,
    #[serde(with = "super::float")]
    pub min: f64,
    #[serde(with = "super::float")]
    pub max: f64,
    #[serde(with = "super::float::seq")]
    pub samples: Vec<f64>,
}

impl Stats {
    pub fn of(samples: Vec<f64>) -> Option<Stats> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: s[0],
            max: s[n - 1],
            samples,
        })
    }
}

/// One measured direction. `from`/`to` are CUDA ordinals; `None` is host memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub kind: Kind,
    pub method: Method,
    pub from: Option<i32>,
    pub to: Option<i32>,
    /// Ran at the same time as the opposite direction (--bidirectional).
    pub bidirectional: bool,
    /// A latency measurement (microseconds per small copy) rather than bandwidth (GB/s).
    pub latency: bool,
    pub bytes: u64,
    pub copies: u32,
    #[serde(flatten)]
    pub outcome: BwOutcome,
}

impl Measurement {
    /// The GB/s (or µs) median, when measured.
    pub fn median(&self) -> Option<f64> {
        match &self.outcome {
            BwOutcome::Measured { stats, .. } => Some(stats.median),
            _ => None,
        }
    }

    pub fn unit(&self) -> &'static str {
        if self.latency {
            "us"
        } else {
            "GB/s"
        }
    }

    /// "GPU 0 -> GPU 1", "host -> GPU 2".
    pub fn route(&self) -> String {
        let end = |e: Option<i32>| e.map_or("host".to_string(), |d| format!("GPU {d}"));
        match self.kind {
            Kind::Local => format!("within GPU {}", self.from.unwrap_or(-1)),
            _ => format!("{} -> {}", end(self.from), end(self.to)),
        }
    }

    /// "P2P ce GPU 0 -> GPU 1 (bidirectional)".
    pub fn describe(&self) -> String {
        format!(
            "{} {} {}{}{}",
            if self.latency { "latency" } else { "bandwidth" },
            self.kind.label(),
            self.route(),
            if self.method == Method::Sm {
                " (SM kernel)"
            } else {
                ""
            },
            if self.bidirectional {
                " (both directions at once)"
            } else {
                ""
            }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum BwOutcome {
    /// Every sample verified; GB/s (GB = 1e9 bytes), or µs per copy for latency.
    Measured {
        stats: Stats,
        /// CPUs the host buffers were allocated from (the GPU's NUMA node), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host_cpus: Option<String>,
    },
    /// The destination did not hold what was sent after a timed sample: no number is given.
    Corrupt {
        mismatch: Mismatch,
    },
    Failed {
        error: String,
    },
    /// Killed after the step deadline; `stage` is the sub-step it was in.
    Hang {
        stage: Option<String>,
    },
    Skipped {
        reason: String,
    },
}

/// What one GPU's link did while copies ran, from NVML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkUnderLoad {
    /// CUDA ordinal.
    pub device: i32,
    pub bus_id: Option<String>,
    /// Best generation and width seen while copies ran (an idle GPU trains down; the best
    /// reading under load is what the link can do).
    pub gen: Option<u32>,
    pub width: Option<u32>,
    /// What NVML says the GPU and its slot can do (nvmlDeviceGetMaxPcieLink*).
    pub max_gen: Option<u32>,
    pub max_width: Option<u32>,
    /// Readings taken under load.
    pub samples: u32,
    /// nvmlDeviceGetCurrentClocksThrottleReasons bits seen under load, OR-ed.
    pub throttle_reasons: u64,
    /// The highest power draw read while copies ran, milliwatts (nvmlDeviceGetPowerUsage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_peak_mw: Option<u32>,
    /// The enforced power limit, the board's default and the range it may be set to
    /// (nvmlDeviceGetEnforcedPowerLimit, ...DefaultLimit, ...LimitConstraints), milliwatts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_limit_mw: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_default_mw: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_range_mw: Option<[u32; 2]>,
    /// nvmlDeviceGetPcieReplayCounter before the first and after the last copy.
    pub replays_before: Option<u64>,
    pub replays_after: Option<u64>,
    /// Why a reading is missing (NVML absent, a call not supported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<String>,
}

/// The bandwidth battery of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BandwidthFacts {
    pub config: BandwidthConfig,
    pub devices: Vec<i32>,
    /// What CUDA grants per ordered pair (decides P2P vs staged only).
    pub access: Probed<Vec<PeerAccess>>,
    pub measurements: Vec<Measurement>,
    pub links: Vec<LinkUnderLoad>,
    /// AER counters of each GPU and bridge on a GPU's path, re-read after the run (the
    /// before values are the ones in `pci`).
    #[serde(default)]
    pub aer_after: BTreeMap<String, Probed<Aer>>,
    /// Ctrl-C stopped the run: what is here was measured, the rest was not.
    #[serde(default)]
    pub interrupted: bool,
    /// Wall-clock seconds of the GPU part (worker start to last step).
    #[serde(with = "super::float")]
    pub wall_s: f64,
}

impl BandwidthFacts {
    pub fn link(&self, device: i32) -> Option<&LinkUnderLoad> {
        self.links.iter().find(|l| l.device == device)
    }
}

/// Per-direction rate of one PCIe lane in GB/s after line coding: Gen1/2 8b/10b, Gen3-5
/// 128b/130b, Gen6 FLIT mode (PCIe base specifications; Gen3 x16 = 15.75 GB/s).
pub fn pcie_lane_gbps(gen: u32) -> Option<f64> {
    Some(match gen {
        1 => 2.5 * 0.8 / 8.0,
        2 => 5.0 * 0.8 / 8.0,
        3 => 8.0 * 128.0 / 130.0 / 8.0,
        4 => 16.0 * 128.0 / 130.0 / 8.0,
        5 => 32.0 * 128.0 / 130.0 / 8.0,
        6 => 64.0 * 242.0 / 256.0 / 8.0,
        _ => return None,
    })
}

/// Theoretical GB/s per direction of a PCIe link.
pub fn pcie_gbps(gen: u32, width: u32) -> Option<f64> {
    pcie_lane_gbps(gen).map(|l| l * f64::from(width))
}
