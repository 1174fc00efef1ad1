//! NCCL facts: the library found, the all-reduce per size, the transports NCCL chose.

use super::{CallError, Probed, StepError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NcclLibrary {
    /// The file loaded.
    pub path: String,
    /// ncclGetVersion, e.g. "2.18.5".
    pub version: String,
}

/// The NCCL step of one run: one process, one rank per selected GPU (ncclCommInitAll).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NcclFacts {
    /// The library, or why none could be used (`absent`: not found anywhere looked).
    pub library: Probed<NcclLibrary>,
    /// CUDA ordinals, one rank each, in rank order.
    pub devices: Vec<i32>,
    pub results: Vec<AllReduce>,
    /// `NCCL INFO Channel ...` lines of NCCL_DEBUG=INFO: the transport per channel and peer.
    pub channels: Vec<NcclChannel>,
    /// How long a size could take before it was called hung.
    #[serde(with = "super::float")]
    pub deadline_s: f64,
    /// ncclCommInitAll failed after the library was loaded (its version is then known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_error: Option<StepError>,
    /// One process per GPU: a rank's ncclCommInitRank did not finish (which ranks, how long),
    /// while the library was loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_hang: Option<String>,
    /// One process per GPU (ncclCommInitRank): how each rank's process did, in rank order;
    /// empty for one process (ncclCommInitAll).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranks: Vec<NcclRankRun>,
    /// NCCL variables rigdoctor set for the run (its log goes to a file of rigdoctor's), and
    /// the user's values they replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_set: Vec<EnvSet>,
    /// NCCL's own WARN lines from its log (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The same all-reduce again with `NCCL_P2P_LEVEL=SYS`, in a worker of its own, when
    /// NCCL chose SHM between GPUs whose P2P this run verified (see [`p2p_unused`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p_level_sys: Option<Box<NcclFacts>>,
}

/// One rank's worker process in the one-process-per-GPU mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NcclRankRun {
    pub rank: usize,
    pub device: i32,
    /// "ok", or what went wrong: "init failed: ...", "hung in ...", "worker ...", "not run: ...".
    pub outcome: String,
}

impl NcclFacts {
    /// "4 ranks in one process" or "4 ranks, one process each".
    pub fn layout(&self) -> String {
        let n = self.devices.len();
        let ranks = if n == 1 { "rank" } else { "ranks" };
        if self.ranks.is_empty() {
            format!("{n} {ranks} in one process")
        } else {
            format!("{n} {ranks}, one process each")
        }
    }

    /// Each rank whose process did not end well: "rank 2 (GPU 2): ..."; nothing when every
    /// rank ended the same way (the results already say it for all).
    pub fn troubled_ranks(&self) -> Vec<String> {
        if self.ranks.windows(2).all(|w| w[0].outcome == w[1].outcome) {
            return Vec::new();
        }
        self.ranks
            .iter()
            .filter(|r| r.outcome != "ok")
            .map(|r| format!("rank {} (GPU {}): {}", r.rank, r.device, r.outcome))
            .collect()
    }

    /// The largest size whose sums were right on every rank: (bytes, busbw GB/s).
    pub fn largest_correct(&self) -> Option<(u64, f64)> {
        self.results
            .iter()
            .filter_map(|r| match &r.outcome {
                AllReduceOutcome::Measured {
                    busbw_gbps, wrong, ..
                } if wrong.iter().all(|&w| w == 0) => Some((r.bytes, *busbw_gbps)),
                _ => None,
            })
            .max_by_key(|(b, _)| *b)
    }

    /// Every size ran and summed right on every rank.
    pub fn all_correct(&self) -> bool {
        self.init_error.is_none()
            && !self.results.is_empty()
            && self.results.iter().all(|r| {
                matches!(&r.outcome, AllReduceOutcome::Measured { wrong, .. } if wrong.iter().all(|&w| w == 0))
            })
    }

    /// The (from, to) CUDA devices of the channel hops NCCL made over SHM, each once.
    pub fn shm_hops(&self) -> Vec<(i32, i32)> {
        let mut hops = Vec::new();
        for c in self.channels.iter().filter(|c| c.transport == "SHM") {
            let dev = |r: u32| self.devices.get(r as usize).copied();
            if let (Some(a), Some(b)) = (dev(c.from_rank), dev(c.to_rank)) {
                if !hops.contains(&(a, b)) {
                    hops.push((a, b));
                }
            }
        }
        hops
    }
}

/// NCCL went through host memory (SHM) where P2P works: the SHM hops, when there are some and
/// this run verified P2P correct in both directions between the GPUs of every one of them.
/// None when any of them was not verified (untested, or broken: then P2P must stay off).
pub fn p2p_unused(n: &NcclFacts, tests: &[super::PairTest]) -> Option<Vec<(i32, i32)>> {
    let hops = n.shm_hops();
    let ok = |a: i32, b: i32| super::verified(tests, a, b) && super::verified(tests, b, a);
    (!hops.is_empty() && hops.iter().all(|&(a, b)| ok(a, b))).then_some(hops)
}

/// An environment variable rigdoctor set for NCCL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvSet {
    pub name: String,
    pub value: String,
    /// The user's value, when rigdoctor replaced or extended one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllReduce {
    /// Bytes per rank (float32 elements x 4).
    pub bytes: u64,
    pub iters: u32,
    #[serde(flatten)]
    pub outcome: AllReduceOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum AllReduceOutcome {
    /// Timed and checked: microseconds per all-reduce, algbw = bytes / time, busbw = algbw x
    /// 2(n-1)/n (nccl-tests), GB = 1e9 bytes; `wrong` elements per rank.
    Measured {
        #[serde(with = "super::float")]
        time_us: f64,
        #[serde(with = "super::float")]
        algbw_gbps: f64,
        #[serde(with = "super::float")]
        busbw_gbps: f64,
        wrong: Vec<u64>,
    },
    /// Killed after the deadline, in `stage`.
    Hang { stage: Option<String> },
    Failed {
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<CallError>,
    },
}

/// One `Channel 00/02 : 0[0] -> 1[1] via P2P/IPC/read` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NcclChannel {
    pub channel: u32,
    pub from_rank: u32,
    pub to_rank: u32,
    /// P2P, SHM, NET, ... (the word before the first `/`).
    pub transport: String,
    /// Everything after `via`, e.g. "P2P/IPC/read", "SHM/direct/direct".
    pub via: String,
}

/// busbw factor of all-reduce over n ranks (nccl-tests PERFORMANCE.md): 2(n-1)/n.
pub fn allreduce_bus_factor(ranks: usize) -> f64 {
    if ranks == 0 {
        return 0.0;
    }
    2.0 * (ranks as f64 - 1.0) / ranks as f64
}

/// Parse an NCCL_DEBUG=INFO channel line, as NCCL prints it (`host:pid:tid [dev] NCCL INFO
/// Channel 01/0 : 8[0] -> 15[7] via P2P/IPC/read`; older releases `Channel 00 : 11[3e000] ->
/// 9[1b000] via P2P/direct pointer`; network peers add `[send]`/`[receive]` before `via`).
/// A `[receive]` line is the other end of a `[send]` line (net.cc prints both, one on each
/// rank): None, so that each connection counts once.
pub fn parse_channel(line: &str) -> Option<NcclChannel> {
    let rest = &line[line.find("NCCL INFO Channel ")? + "NCCL INFO Channel ".len()..];
    let (chan, rest) = rest.split_once(" : ")?;
    let channel = chan.split('/').next()?.trim().parse().ok()?;
    let (peers, via) = rest.split_once(" via ")?;
    if peers.contains("[receive]") {
        return None;
    }
    let mut ends = peers.split("->");
    let rank = |s: &str| -> Option<u32> { s.trim().split('[').next()?.trim().parse().ok() };
    let from_rank = rank(ends.next()?)?;
    let to_rank = rank(ends.next()?)?;
    let via = via.trim().to_string();
    let transport = via.split(['/', ' ']).next()?.to_string();
    Some(NcclChannel {
        channel,
        from_rank,
        to_rank,
        transport,
        via,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_lines_of_several_releases() {
        let c = parse_channel(
            "node:919:1150 [0] NCCL INFO Channel 01/0 : 8[0] -> 15[7] via P2P/IPC/read",
        )
        .unwrap();
        assert_eq!((c.channel, c.from_rank, c.to_rank), (1, 8, 15));
        assert_eq!(
            (c.transport.as_str(), c.via.as_str()),
            ("P2P", "P2P/IPC/read")
        );
        let c = parse_channel(
            "m:16194:18583 [3] NCCL INFO Channel 00 : 11[3e000] -> 9[1b000] via P2P/direct pointer",
        )
        .unwrap();
        assert_eq!(
            (c.channel, c.from_rank, c.to_rank, c.transport.as_str()),
            (0, 11, 9, "P2P")
        );
        let c = parse_channel(
            "h:926:1151 [7] NCCL INFO Channel 03/0 : 15[7] -> 6[6] [send] via NET/Socket/3",
        )
        .unwrap();
        assert_eq!((c.to_rank, c.transport.as_str()), (6, "NET"));
        assert_eq!(
            parse_channel(
                "h:926:1152 [6] NCCL INFO Channel 03/0 : 15[7] -> 6[6] [receive] via NET/Socket/3"
            ),
            None
        );
        let c =
            parse_channel("h:1:2 [0] NCCL INFO Channel 00/02 : 0[0] -> 1[1] via SHM/direct/direct")
                .unwrap();
        assert_eq!(c.transport, "SHM");
        assert_eq!(
            parse_channel("h:1:2 [0] NCCL INFO 8 coll channels, 0 nvls channels"),
            None
        );
        assert!((allreduce_bus_factor(4) - 1.5).abs() < 1e-12);
    }
}
