//! The rig description the fake driver emulates.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rig {
    /// e.g. "545.29.06"; what NVML reports for the user-space library.
    #[serde(default = "default_driver")]
    pub driver_version: String,
    /// cuDriverGetVersion, e.g. 12030.
    #[serde(default = "default_cuda")]
    pub cuda_version: i32,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    /// The order CUDA enumerates the GPUs in (indices into `gpus`); default: as listed.
    pub cuda_order: Option<Vec<usize>>,
    /// Faults of the whole driver.
    #[serde(default)]
    pub faults: Faults,
    /// GPU pairs (indices into `gpus`). A pair not listed has no peer access.
    #[serde(default)]
    pub pairs: Vec<Pair>,
    /// The fake libnccl.
    pub nccl: Option<Nccl>,
    /// The host CPU, as NCCL's topology reads it (its P2P level depends on it).
    #[serde(default)]
    pub cpu: Cpu,
}

/// The host CPU of the rig.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    /// cpuid's vendor string: "AuthenticAMD", "GenuineIntel", "CentaurHauls" (Zhaoxin).
    /// Default AuthenticAMD: the Threadripper/EPYC rigs rigdoctor is mostly run on (the test
    /// harness copies the vendor of the host sysroot it pairs the rig with).
    #[serde(default = "amd")]
    pub vendor: String,
    /// uname's machine: "x86_64", "aarch64", "ppc64le".
    #[serde(default = "x86_64")]
    pub arch: String,
}

impl Default for Cpu {
    fn default() -> Cpu {
        Cpu {
            vendor: amd(),
            arch: x86_64(),
        }
    }
}

fn amd() -> String {
    "AuthenticAMD".into()
}

fn x86_64() -> String {
    "x86_64".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nccl {
    /// ncclGetVersion's code, e.g. 21805 for 2.18.5; also picks the release's log lines and
    /// behaviour (connections at the first collective since 22200).
    #[serde(default = "nccl_version")]
    pub version: i32,
    /// "none"; "hang" (accepted, never completes on the stream); "wrong" (one element of the
    /// last rank is off by one); "error" (ncclGroupEnd returns ncclUnhandledCudaError, a CUDA
    /// launch failure as last error); "async-error" (accepted, never completes, and
    /// ncclCommGetAsyncError turns to ncclRemoteError); "init-error" (ncclCommInitAll fails
    /// with ncclUnhandledCudaError, "CUDA driver version is insufficient ..."); "hang-on-exit"
    /// (the process never finishes exiting once communicators were created).
    #[serde(default = "none")]
    pub fault: String,
    /// With communicators that span processes (ncclCommInitRank): the one rank whose process
    /// has the fault; absent: every rank. Also "crash": that rank's process aborts at its
    /// first collective.
    pub fault_rank: Option<usize>,
    /// All-reduce bus bandwidth; default 85% of the slowest ring hop of the model.
    pub busbw_gbps: Option<f64>,
    /// GB/s of a hop through the socket transport (neither P2P nor SHM, e.g.
    /// NCCL_P2P_DISABLE=1 with NCCL_SHM_DISABLE=1): a model figure, default 2.
    #[serde(default = "socket_gbps")]
    pub socket_gbps: f64,
}

fn socket_gbps() -> f64 {
    2.0
}

fn nccl_version() -> i32 {
    21805
}

/// What happens between two GPUs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    pub a: usize,
    pub b: usize,
    /// cuDeviceCanAccessPeer and NVML read/write status.
    #[serde(default = "yes")]
    pub access: bool,
    /// What a transfer over P2P does (see [`PairFault`]): "none", "corrupt", "zeros", "hang",
    /// "enable-fails", "enable-hangs", "corrupt-always", "illegal-address", "contained",
    /// "sticky-<N>", "unknown-code" / "unknown-code-<N>".
    #[serde(default = "none")]
    pub fault: String,
    /// NVML common ancestor: PIX, PXB, PHB, NODE or SYS.
    #[serde(default = "phb")]
    pub topology: String,
    /// The entry applies to a->b only (b->a then behaves as unlisted).
    #[serde(default)]
    pub directed: bool,
    /// NVLink links joining the pair (a 3090 bridge has 4) and how many of them are down.
    #[serde(default)]
    pub nvlinks: u32,
    #[serde(default)]
    pub nvlinks_down: u32,
    /// NVML P2P read/write status when `access` is false: "CNS", "GNS", "TNS", "NS", "DR".
    pub nvml_status: Option<String>,
    /// GB/s of a P2P copy (peer access on); default from the links (see `Rig::p2p_gbps`).
    pub gbps: Option<f64>,
    /// GB/s of a copy staged through host memory (peer access off).
    pub staged_gbps: Option<f64>,
    /// Microseconds a P2P copy costs besides its bytes.
    pub latency_us: Option<f64>,
}

/// A pair's `fault`, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFault {
    None,
    /// Some bytes of a P2P transfer flipped (4 KiB from the middle, bit 6).
    Corrupt,
    /// The destination of a P2P transfer receives zeros.
    Zeros,
    /// A P2P transfer never completes.
    Hang,
    /// cuCtxEnablePeerAccess returns CUDA_ERROR_PEER_ACCESS_UNSUPPORTED.
    EnableFails,
    /// cuCtxEnablePeerAccess never returns.
    EnableHangs,
    /// Corrupt on every path between the two GPUs, staged copies through host memory included.
    CorruptAlways,
    /// A kernel touching the peer's memory faults: sticky CUDA_ERROR_ILLEGAL_ADDRESS (700).
    IllegalAddress,
    /// A kernel or copy touching the peer over P2P fails with this code, sticky for the rest
    /// of the process: "contained" is 226 (CUDA_ERROR_CONTAINED), "sticky-<N>" is N.
    Sticky(u32),
    /// cuMemcpyPeerAsync over P2P returns this code at once, not sticky: "unknown-code" is 36
    /// (CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER, new in CUDA 13.0), "unknown-code-<N>" is N.
    UnknownCode(u32),
}

impl PairFault {
    pub fn parse(s: &str) -> Option<PairFault> {
        let code = |rest: &str| rest.parse::<u32>().ok();
        Some(match s {
            "none" => PairFault::None,
            "corrupt" => PairFault::Corrupt,
            "zeros" => PairFault::Zeros,
            "hang" => PairFault::Hang,
            "enable-fails" => PairFault::EnableFails,
            "enable-hangs" => PairFault::EnableHangs,
            "corrupt-always" => PairFault::CorruptAlways,
            "illegal-address" => PairFault::IllegalAddress,
            "contained" => PairFault::Sticky(226),
            "unknown-code" => PairFault::UnknownCode(36),
            _ => {
                if let Some(n) = s.strip_prefix("sticky-") {
                    PairFault::Sticky(code(n).filter(|&n| n != 0)?)
                } else if let Some(n) = s.strip_prefix("unknown-code-") {
                    PairFault::UnknownCode(code(n).filter(|&n| n != 0)?)
                } else {
                    return None;
                }
            }
        })
    }
}

impl Pair {
    /// The parsed fault (checked when the rig is read).
    pub fn fault(&self) -> PairFault {
        PairFault::parse(&self.fault).unwrap_or(PairFault::None)
    }
}

fn yes() -> bool {
    true
}
fn none() -> String {
    "none".into()
}
fn phb() -> String {
    "PHB".into()
}

fn default_driver() -> String {
    "550.54.14".into()
}
fn default_cuda() -> i32 {
    12040
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// cuInit: "hang" (never returns), "stub" (CUDA_ERROR_STUB_LIBRARY),
    /// "no-device" (CUDA_ERROR_NO_DEVICE), "mismatch" (CUDA_ERROR_SYSTEM_DRIVER_MISMATCH).
    pub cuda_init: Option<String>,
    /// nvmlInit: "mismatch" (NVML_ERROR_LIB_RM_VERSION_MISMATCH), "driver-not-loaded", "hang".
    pub nvml_init: Option<String>,
    /// cuModuleLoadData: "unsupported-ptx" (CUDA_ERROR_UNSUPPORTED_PTX_VERSION, a driver too
    /// old for the PTX ISA version).
    /// "no-jit-compiler": CUDA_ERROR_JIT_COMPILER_NOT_FOUND (221), the PTX JIT library missing.
    pub module_load: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    pub name: String,
    pub bus_id: String,
    pub uuid: String,
    pub memory_mib: u64,
    pub cc: [i32; 2],
    #[serde(default = "default_brand")]
    pub brand: String,
    pub pcie: Pcie,
    #[serde(default = "default_bar1")]
    pub bar1_mib: u64,
    #[serde(default = "default_power")]
    pub power_limit_w: u32,
    #[serde(default = "default_temp")]
    pub temperature_c: u32,
    #[serde(default)]
    pub persistence: bool,
    /// nvmlDeviceGetDisplayActive: an X server or console drives a screen from this GPU.
    #[serde(default)]
    pub display_active: bool,
    #[serde(default = "default_sms")]
    pub sms: i32,
    /// GB/s of pinned host -> GPU and GPU -> host copies; default 82% / 85% of the link
    /// under load.
    pub h2d_gbps: Option<f64>,
    pub d2h_gbps: Option<f64>,
    /// GB/s of a copy within the GPU (default 800).
    pub local_gbps: Option<f64>,
    /// PCIe replays the GPU counts per batch of copies (a marginal riser).
    #[serde(default)]
    pub replays_under_load: u64,
    /// NVML clock throttle reason bits while copies run (0x20 SW thermal, 0x8 HW slowdown).
    #[serde(default)]
    pub throttle_under_load: u64,
    /// Watts NVML reads while copies run (default 60% of the limit) and at rest (default 25).
    pub power_under_load_w: Option<u32>,
    pub power_idle_w: Option<u32>,
    /// The board's default power limit and the range `nvidia-smi -pl` may set (defaults: the
    /// limit; 2/7 of it to the limit, like a 3090's 100-350 W).
    pub power_default_w: Option<u32>,
    pub power_min_w: Option<u32>,
    pub power_max_w: Option<u32>,
}

impl Gpu {
    /// What NVML reads as power draw now, in milliwatts.
    pub fn power_now_mw(&self, busy: bool) -> u32 {
        let w = if busy {
            self.power_under_load_w
                .unwrap_or(self.power_limit_w * 3 / 5)
        } else {
            self.power_idle_w.unwrap_or(25)
        };
        w * 1000
    }
}

fn default_brand() -> String {
    "geforce".into()
}
fn default_bar1() -> u64 {
    256
}
fn default_power() -> u32 {
    350
}
fn default_temp() -> u32 {
    40
}
fn default_sms() -> i32 {
    82
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pcie {
    /// At idle (an idle GPU trains its link down to Gen1).
    pub gen: u32,
    pub width: u32,
    pub max_gen: u32,
    pub max_width: u32,
    /// While copies run; default: max_gen and the idle width.
    pub load_gen: Option<u32>,
    pub load_width: Option<u32>,
}

/// GB/s per direction of a PCIe link after line coding.
pub fn pcie_gbps(gen: u32, width: u32) -> f64 {
    let lane = match gen {
        1 => 0.25,
        2 => 0.5,
        3 => 8.0 * 128.0 / 130.0 / 8.0,
        4 => 16.0 * 128.0 / 130.0 / 8.0,
        _ => 32.0 * 128.0 / 130.0 / 8.0,
    };
    lane * f64::from(width)
}

/// A 3090's NVLink 3 link carries 14.0625 GB/s per direction.
const NVLINK_GBPS: f64 = 14.0625;

impl Gpu {
    /// (generation, width) while copies run.
    pub fn load_link(&self) -> (u32, u32) {
        (
            self.pcie.load_gen.unwrap_or(self.pcie.max_gen),
            self.pcie.load_width.unwrap_or(self.pcie.width),
        )
    }

    fn link_gbps(&self) -> f64 {
        let (g, w) = self.load_link();
        pcie_gbps(g, w)
    }

    pub fn h2d_gbps(&self) -> f64 {
        self.h2d_gbps.unwrap_or(0.82 * self.link_gbps())
    }

    pub fn d2h_gbps(&self) -> f64 {
        self.d2h_gbps.unwrap_or(0.85 * self.link_gbps())
    }
}

impl Rig {
    pub fn from_env() -> Result<Rig, String> {
        let path =
            std::env::var("FAKEGPU_RIG").map_err(|_| "FAKEGPU_RIG is not set".to_string())?;
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        Rig::parse(&text).map_err(|e| format!("{path}: {e}"))
    }

    /// A rig from its JSON text; an unknown pair fault is an error (a typo in a test).
    pub fn parse(text: &str) -> Result<Rig, String> {
        let rig: Rig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(p) = rig
            .pairs
            .iter()
            .find(|p| PairFault::parse(&p.fault).is_none())
        {
            return Err(format!(
                "pair {}-{}: unknown fault {:?} (docs/testing.md lists them)",
                p.a, p.b, p.fault
            ));
        }
        Ok(rig)
    }

    /// Index into `gpus` of CUDA ordinal `i`.
    pub fn cuda_index(&self, i: usize) -> Option<usize> {
        match &self.cuda_order {
            Some(order) => order.get(i).copied().filter(|&g| g < self.gpus.len()),
            None => (i < self.gpus.len()).then_some(i),
        }
    }

    /// The pair entry governing transfers from GPU `from` to GPU `to` (indices into `gpus`).
    pub fn pair(&self, from: usize, to: usize) -> Option<&Pair> {
        self.pairs
            .iter()
            .find(|p| (p.a == from && p.b == to) || (!p.directed && p.a == to && p.b == from))
    }

    /// The pair entry joining two GPUs in either direction (topology and NVLink are symmetric).
    pub fn link(&self, x: usize, y: usize) -> Option<&Pair> {
        self.pair(x, y).or_else(|| self.pair(y, x))
    }

    /// NVLink links of GPU `g`, in link order: (peer index, active).
    pub fn nvlinks(&self, g: usize) -> Vec<(usize, bool)> {
        let mut links = Vec::new();
        for p in self.pairs.iter().filter(|p| p.nvlinks > 0) {
            let peer = match (p.a == g, p.b == g) {
                (true, _) => p.b,
                (_, true) => p.a,
                _ => continue,
            };
            for l in 0..p.nvlinks {
                links.push((peer, l >= p.nvlinks_down));
            }
        }
        links
    }

    /// Seconds a copy of `len` bytes takes between GPUs `from` and `to` (None: host memory),
    /// over P2P or not, by the copy engine or an SM kernel (90% of the copy engine).
    pub fn copy_seconds(
        &self,
        from: Option<usize>,
        to: Option<usize>,
        p2p: bool,
        sm: bool,
        len: usize,
    ) -> f64 {
        let gpu = |i: usize| self.gpus.get(i);
        let (gbps, latency_us) = match (from, to) {
            (None, Some(t)) => (gpu(t).map_or(1.0, Gpu::h2d_gbps), 2.0),
            (Some(f), None) => (gpu(f).map_or(1.0, Gpu::d2h_gbps), 2.0),
            (Some(f), Some(t)) if f == t => {
                (gpu(f).and_then(|g| g.local_gbps).unwrap_or(800.0), 1.0)
            }
            (Some(f), Some(t)) => {
                let pair = self.pair(f, t);
                if p2p {
                    let gbps = pair
                        .and_then(|p| p.gbps)
                        .unwrap_or_else(|| self.p2p_gbps(f, t));
                    (gbps, pair.and_then(|p| p.latency_us).unwrap_or(2.0))
                } else {
                    let default = 0.45
                        * gpu(f)
                            .map_or(1.0, Gpu::d2h_gbps)
                            .min(gpu(t).map_or(1.0, Gpu::h2d_gbps));
                    (pair.and_then(|p| p.staged_gbps).unwrap_or(default), 15.0)
                }
            }
            (None, None) => (10.0, 1.0),
        };
        let gbps = if sm { 0.9 * gbps } else { gbps };
        latency_us * 1e-6 + len as f64 / (gbps * 1e9)
    }

    /// Default P2P GB/s: 93% of the active NVLink links, else 80% of the slower PCIe link.
    fn p2p_gbps(&self, f: usize, t: usize) -> f64 {
        let active = self
            .link(f, t)
            .map_or(0, |p| p.nvlinks.saturating_sub(p.nvlinks_down));
        if active > 0 {
            return 0.93 * NVLINK_GBPS * f64::from(active);
        }
        let link = |i: usize| self.gpus.get(i).map_or(1.0, Gpu::link_gbps);
        0.8 * link(f).min(link(t))
    }

    /// Index into `gpus` of the GPU NVML enumerates `i`-th.
    pub fn nvml_index(&self, i: usize) -> Option<usize> {
        let gpu = *self.nvml_order().get(i)?;
        self.gpus.iter().position(|g| std::ptr::eq(g, gpu))
    }

    /// NVML enumerates in PCI bus order, as the real library does.
    pub fn nvml_order(&self) -> Vec<&Gpu> {
        let mut g: Vec<&Gpu> = self.gpus.iter().collect();
        g.sort_by(|a, b| {
            a.bus_id
                .to_ascii_lowercase()
                .cmp(&b.bus_id.to_ascii_lowercase())
        });
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_format_parses_and_orders() {
        let r: Rig = serde_json::from_str(
            r#"{"driver_version":"545.29.06","cuda_version":12030,"cuda_order":[1,0],"gpus":[
            {"name":"NVIDIA GeForce RTX 3090","bus_id":"0000:41:00.0","uuid":"GPU-a","memory_mib":24576,"cc":[8,6],
             "pcie":{"gen":4,"width":16,"max_gen":4,"max_width":16}},
            {"name":"NVIDIA GeForce RTX 3090","bus_id":"0000:0A:00.0","uuid":"GPU-b","memory_mib":24576,"cc":[8,6],
             "pcie":{"gen":4,"width":16,"max_gen":4,"max_width":16}}]}"#,
        )
        .unwrap();
        assert_eq!(r.gpus[r.cuda_index(0).unwrap()].uuid, "GPU-b");
        assert_eq!(r.nvml_order()[0].uuid, "GPU-b");
        assert!(serde_json::from_str::<Rig>(r#"{"gpus":[],"bogus":1}"#).is_err());
    }

    #[test]
    fn pair_faults_parse_and_typos_are_refused() {
        assert_eq!(PairFault::parse("contained"), Some(PairFault::Sticky(226)));
        assert_eq!(PairFault::parse("sticky-721"), Some(PairFault::Sticky(721)));
        assert_eq!(
            PairFault::parse("unknown-code"),
            Some(PairFault::UnknownCode(36))
        );
        assert_eq!(
            PairFault::parse("unknown-code-9999"),
            Some(PairFault::UnknownCode(9999))
        );
        for bad in ["sticky-", "sticky-x", "sticky-0", "corupt", ""] {
            assert_eq!(PairFault::parse(bad), None, "{bad}");
        }
        let rig = |fault: &str| format!(r#"{{"pairs":[{{"a":0,"b":1,"fault":"{fault}"}}]}}"#);
        assert!(Rig::parse(&rig("sticky-810")).is_ok());
        let e = Rig::parse(&rig("contianed")).unwrap_err();
        assert!(e.contains("unknown fault"), "{e}");
    }
}
