//! What NCCL prints while it initialises, connects and tears down a single-node communicator,
//! message by message from the format strings of NVIDIA/nccl (tags v2.18.5-1, v2.19.3-1,
//! v2.20.3-1, v2.21.5-1, v2.22.3-1, v2.23.4-1; later releases print as 2.23 does), each with
//! the subsystem flags of its INFO() call: src/misc/cudawrap.cc (cudaDriverVersion),
//! src/bootstrap.cc, src/net.cc (NET/Plugin), src/misc/ibvsymbols.cc,
//! src/transport/net_socket.cc, src/init.cc (Init START/COMPLETE, nNodes, Trees, P2P Chunksize,
//! channel counts, Init timings, Destroy/Abort COMPLETE), src/graph/topo.cc, paths.cc,
//! search.cc (GRAPH dumps), src/graph/rings.cc (the ring order, rank 0), src/graph/connect.cc,
//! src/graph/tuning.cc (threadThresholds), src/transport/nvls.cc, src/misc/tuner.cc,
//! src/transport/p2p.cc and shm.cc (the `Channel` connection lines), src/transport/generic.cc
//! ("Connected all rings/trees").
//!
//! The host's network (interface name and address) and CPU sockets are not in the rig: the lines name
//! a fixed `enp5s0` interface and one CPU socket. WARN line numbers are those of the tagged
//! sources (nearest release at or below the claimed one).

use super::log::{self, BOOTSTRAP, ENV, GRAPH, INIT, NET, P2P, PROFILE, SHM, TUNING};
use super::transport::{self, Via};
use std::sync::Once;

/// Bootstrap / socket interface, as `Bootstrap : Using%s` and `NET/Socket : Using%s` print it.
const IFACE: &str = "enp5s0:192.168.1.20<0>";

/// One rank as the lines need it.
#[derive(Clone)]
pub struct RankView {
    pub addr: usize,
    pub rank: usize,
    pub cuda_dev: i32,
    pub nvml_dev: u32,
    pub bus_id: u64,
    pub gpu: Option<usize>,
}

/// A communicator clique being set up.
pub struct Topo {
    pub version: i32,
    pub ranks: Vec<RankView>,
    pub comm_id: u64,
    pub nchannels: usize,
    /// via[a][b]: how rank a sends to rank b ([`transport::via`]).
    pub via: Vec<Vec<Via>>,
    /// Every rank in this process (ncclCommInitAll), or one per process (ncclCommInitRank).
    pub same_process: bool,
    /// The init call NCCL 2.23+ names in its lines.
    pub caller: &'static str,
}

/// (release code, line) of a WARN or INFO site: the entry at or below `version`.
fn site(version: i32, table: &[(i32, u32)]) -> u32 {
    table
        .iter()
        .rev()
        .find(|(v, _)| *v <= version)
        .or(table.first())
        .map_or(0, |(_, l)| *l)
}

// WARN/INFO sites (file:line) per release, read from the tagged sources.
pub const ARGCHECK_NULL_LINE: u32 = 30; // misc/argcheck.cc PtrCheck, 2.18 .. 2.28
pub const ARGCHECK_CORRUPT_LINE: u32 = 39; // misc/argcheck.cc CommCheck, 2.21 .. 2.28
pub const PROXY_PROGRESS_LINE: u32 = 897; // proxy.cc progress thread, v2.23.4-1
const INIT_NDEV: &[(i32, u32)] = &[
    (21805, 1657),
    (21903, 1700),
    (22003, 1804),
    (22105, 1858),
    (22203, 1727),
    (22304, 1809),
    (22403, 1813),
    (22501, 1748),
    (22602, 1754),
    (22703, 1876),
    (22803, 2007),
];
const INIT_ATTEMPT: &[(i32, u32)] = &[
    (21805, 283),
    (21903, 303),
    (22003, 290),
    (22203, 298),
    (22304, 308),
    (22403, 311),
    (22501, 314),
    (22602, 307),
    (22703, 318),
    (22803, 362),
];
const INIT_DESTROYED: &[(i32, u32)] = &[
    (21805, 1940),
    (21903, 1988),
    (22003, 2092),
    (22105, 2146),
    (22203, 1969),
    (22304, 2104),
    (22403, 2087),
    (22501, 2043),
    (22602, 2048),
    (22703, 2169),
    (22803, 2301),
];
const INIT_INVALID_DEV: &[(i32, u32)] = &[
    (22304, 1820),
    (22403, 1824),
    (22501, 1759),
    (22602, 1765),
    (22703, 1887),
    (22803, 2018),
];
/// ncclCommInitAll's first CUDA runtime call (cudaGetDeviceCount; cudaGetDevice since 2.23).
const INIT_FIRST_CUDA: &[(i32, u32)] = &[
    (21805, 1662),
    (21903, 1705),
    (22003, 1809),
    (22105, 1863),
    (22203, 1732),
    (22304, 1806),
    (22403, 1810),
    (22501, 1745),
    (22602, 1751),
    (22703, 1873),
    (22803, 2004),
];
const GROUP_NOT_IN: &[(i32, u32)] = &[
    (21805, 365),
    (21903, 372),
    (22203, 488),
    (22304, 508),
    (22403, 513),
    (22602, 521),
    (22703, 615),
    (22803, 657),
];
/// enqueue.cc: the kernel launch (cudaLaunchKernel*; cuLaunchKernelEx since 2.26).
const ENQUEUE_LAUNCH: &[(i32, u32)] = &[
    (21805, 1087),
    (21903, 1085),
    (22003, 1366),
    (22105, 1402),
    (22203, 1450),
    (22304, 1685),
    (22403, 1489),
    (22501, 1499),
    (22602, 1556),
    (22703, 1626),
    (22803, 1637),
];
/// misc/socket.cc: "socketProgress: Connection closed by remote peer %s".
const SOCKET_CLOSED: &[(i32, u32)] = &[(21805, 49), (21903, 50), (22403, 71)];

/// graph/paths.cc ncclTopoCheckP2p: "P2P is disabled between NVLINK connected GPUs".
const NVLINK_REFUSED: &[(i32, u32)] = &[
    (21805, 324),
    (21903, 323),
    (22003, 323),
    (22105, 325),
    (22203, 327),
    (22304, 318),
    (22403, 339),
    (22501, 339),
    (22602, 339),
    (22703, 343),
    (22803, 350),
];
pub fn nvlink_refused_line(v: i32) -> u32 {
    site(v, NVLINK_REFUSED)
}
pub fn init_ndev_line(v: i32) -> u32 {
    site(v, INIT_NDEV)
}
pub fn attempt_line(v: i32) -> u32 {
    site(v, INIT_ATTEMPT)
}
pub fn destroyed_line(v: i32) -> u32 {
    site(v, INIT_DESTROYED)
}
/// init.cc's "Duplicate GPU detected" (v2.18.5-1, v2.23.4-1; releases between take the
/// earlier line).
pub fn duplicate_gpu_line(v: i32) -> u32 {
    site(v, &[(0, 795), (22304, 783)])
}
/// init.cc's "Invalid rank requested" in ncclCommInitRankDev (v2.18.5-1, v2.23.4-1).
pub fn invalid_rank_line(v: i32) -> u32 {
    site(v, &[(0, 1578), (22304, 1707)])
}
pub fn invalid_dev_line(v: i32) -> u32 {
    site(v, INIT_INVALID_DEV)
}
pub fn first_cuda_line(v: i32) -> u32 {
    site(v, INIT_FIRST_CUDA)
}
pub fn group_line(v: i32) -> u32 {
    site(v, GROUP_NOT_IN)
}
pub fn launch_line(v: i32) -> u32 {
    site(v, ENQUEUE_LAUNCH)
}
pub fn socket_line(v: i32) -> u32 {
    site(v, SOCKET_CLOSED)
}

/// `NCCL version 2.18.5+cuda12.2`: the CUDA release the library was built with is that of
/// NVIDIA's pip wheel of the same NCCL release.
pub fn version_string(v: i32) -> String {
    let (major, minor, patch) = (v / 10000, (v % 10000) / 100, v % 100);
    let cuda = match minor {
        ..=18 => "12.2",
        19 => "12.3",
        20 | 21 => "12.4",
        22 => "12.5",
        23 | 24 => "12.6",
        25 | 26 => "12.8",
        _ => "12.9",
    };
    format!("NCCL version {major}.{minor}.{patch}+cuda{cuda}")
}

/// ncclCudaLibraryInit (misc/cudawrap.cc), once per process.
pub fn cuda_library_init(driver_version: i32) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| log::info(INIT, &format!("cudaDriverVersion {driver_version}")));
}

/// ncclInit: bootstrapNetInit and the network plugin search, once per process.
pub fn nccl_init(v: i32) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // INFO(NCCL_INIT, ..) until 2.22, INFO(NCCL_BOOTSTRAP, ..) since 2.23.
        let flags = if v >= 22300 { BOOTSTRAP } else { INIT };
        log::info(flags, &format!("Bootstrap : Using {IFACE}"));
        let missing = "libnccl-net.so: cannot open shared object file: No such file or directory";
        if v < 21900 {
            log::info(
                INIT | NET,
                &format!("NET/Plugin : Plugin load (libnccl-net.so) returned 2 : {missing}"),
            );
            log::info(
                INIT | NET,
                "NET/Plugin : No plugin found, using internal implementation",
            );
        } else if v < 22200 {
            log::info(
                INIT | NET,
                &format!(
                    "NET/Plugin : dlerror={missing} No plugin found (libnccl-net.so), using internal implementation"
                ),
            );
        } else {
            log::info(
                INIT | NET,
                "NET/Plugin: Could not find: libnccl-net.so. Using internal network plugin.",
            );
        }
    });
}

/// `NAME set by environment to VALUE.` of NCCL_PARAM (misc/param.cc), the first time NCCL
/// reads a parameter that is set.
pub fn param_from_env(name: &str, value: i64) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.iter().any(|s| s == name) {
        seen.push(name.to_string());
        drop(seen);
        log::info(ENV, &format!("{name} set by environment to {value}."));
    }
}

/// PCI bandwidth of a link as NCCL's topology prints it (12.0 for Gen3 x16).
fn pci_bw(gpu: Option<usize>) -> f64 {
    let Some(g) = gpu.and_then(|g| crate::rig().gpus.get(g)) else {
        return 12.0;
    };
    let gen = g.pcie.max_gen.max(1) as i32;
    12.0 * f64::from(g.pcie.max_width) / 16.0 * 2f64.powi(gen - 3)
}

/// NCCL's path type between two ranks' GPUs ("NVL", "PIX", "PXB", "PHB", "SYS").
fn path_type(a: &RankView, b: &RankView) -> &'static str {
    transport::path(a.gpu, b.gpu).name()
}

/// ncclCpusetToStr of this process' CPU affinity: 32-bit hex words, high first.
fn affinity() -> String {
    // SAFETY: a zeroed cpu_set_t filled by the kernel.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return "ff".into();
        }
        set
    };
    let bits = std::mem::size_of::<libc::cpu_set_t>() * 8;
    let mut words = vec![0u32; bits / 32];
    for cpu in 0..bits {
        // SAFETY: cpu is below the set's size.
        if unsafe { libc::CPU_ISSET(cpu, &set) } {
            words[cpu / 32] |= 1 << (cpu % 32);
        }
    }
    let mut out = String::new();
    for w in words.iter().rev().skip_while(|&&w| w == 0) {
        if out.is_empty() {
            out = format!("{w:x}");
        } else {
            out.push_str(&format!(",{w:08x}"));
        }
    }
    if out.is_empty() {
        "0".into()
    } else {
        out
    }
}

/// NET init of the first communicator (misc/ibvsymbols.cc, transport/net_socket.cc), once.
fn net_transports(v: i32) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::info(INIT, "Failed to open libibverbs.so[.1]");
        log::info(INIT | NET, &format!("NET/Socket : Using [0]{IFACE}"));
        if (21900..22200).contains(&v) {
            log::info(INIT, "Using non-device net plugin version 0");
        }
    });
}

impl Topo {
    fn n(&self) -> usize {
        self.ranks.len()
    }

    fn init_line(&self, r: &RankView, what: &str) -> String {
        let body = format!(
            "comm {:#x} rank {} nranks {} cudaDev {} nvmlDev {} busId {:x} commId {:#x} - Init {what}",
            r.addr,
            r.rank,
            self.n(),
            r.cuda_dev,
            r.nvml_dev,
            r.bus_id,
            self.comm_id
        );
        match self.version {
            ..=22099 => body,
            22100..=22299 => format!("ncclCommInitRank {body}"),
            _ => format!("{} {body}", self.caller),
        }
    }

    /// The ring's next rank and the single-node tree (a chain: up r-1, down r+1).
    fn next(&self, r: usize) -> usize {
        (r + 1) % self.n()
    }
    fn prev(&self, r: usize) -> usize {
        (r + self.n() - 1) % self.n()
    }
    fn up(&self, r: usize) -> i64 {
        r as i64 - 1
    }
    fn down(&self, r: usize) -> i64 {
        if r + 1 < self.n() {
            r as i64 + 1
        } else {
            -1
        }
    }

    /// What a rank prints from Init START to the connections (its own init thread).
    pub fn rank_start(&self, r: usize) {
        let v = self.version;
        let me = &self.ranks[r];
        let n = self.n();
        net_transports(v);
        log::info(INIT, "Using network Socket");
        log::info(INIT, &self.init_line(me, "START"));
        if (22200..22400).contains(&v) {
            log::info(INIT, "CC Off, Multi-GPU CC Off, workFifoBytes 1048576");
        }
        // ncclTopoPrint (graph/topo.cc) and the paths (graph/paths.cc, non-TRACE build).
        let bw = self
            .ranks
            .iter()
            .map(|x| pci_bw(x.gpu))
            .fold(f64::INFINITY, f64::min);
        log::info(
            GRAPH,
            &format!("=== System : maxBw {bw:.1} totalBw {bw:.1} ==="),
        );
        log::info(GRAPH, "CPU/0 (1/1/1)");
        for x in &self.ranks {
            log::info(
                GRAPH,
                &format!(
                    "+ PCI[{:.1}] - GPU/{:X} ({})",
                    pci_bw(x.gpu),
                    x.bus_id,
                    x.rank
                ),
            );
        }
        log::info(GRAPH, "==========================================");
        for x in &self.ranks {
            let mut line = format!("GPU/{:X} :", x.bus_id);
            for y in &self.ranks {
                let (hops, t, b) = if x.rank == y.rank {
                    (0, "LOC", 5000.0)
                } else {
                    let t = path_type(x, y);
                    let hops = match t {
                        "NVL" => 1,
                        "PIX" => 2,
                        "PXB" => 3,
                        "PHB" => 4,
                        _ => 5,
                    };
                    (hops, t, pci_bw(x.gpu).min(pci_bw(y.gpu)))
                };
                line.push_str(&format!("GPU/{:X} ({hops}/{b:.6}/{t}) ", y.bus_id));
            }
            line.push_str(&format!("CPU/0 (1/{:.6}/PHB) ", pci_bw(x.gpu)));
            log::info(GRAPH, &line);
        }
        log::info(
            INIT,
            &format!("Setting affinity for GPU {} to {}", me.cuda_dev, affinity()),
        );
        log::info(
            INIT,
            &format!(
                "NVLS multicast support is not available on dev {}",
                me.cuda_dev
            ),
        );
        if v >= 22000 {
            log::info(
                INIT,
                &format!(
                    "comm {:#x} rank {} nRanks {n} nNodes 1 localRanks {n} localRank {} MNNVL 0",
                    me.addr, me.rank, me.rank
                ),
            );
        }
        // ncclTopoPrintGraph (graph/search.cc): ring (pattern 4) and tree (pattern 1) graphs;
        // NCCL then duplicates the graph's channels.
        let worst = (0..n)
            .map(|i| {
                let j = self.next(i);
                if i == j {
                    "LOC"
                } else {
                    path_type(&self.ranks[i], &self.ranks[j])
                }
            })
            .max_by_key(|t| {
                ["LOC", "NVL", "PIX", "PXB", "PHB", "SYS"]
                    .iter()
                    .position(|x| x == t)
            })
            .unwrap_or("LOC");
        let graph_channels = (self.nchannels / 2).max(1);
        for pattern in [4, 1] {
            log::info(
                GRAPH,
                &format!(
                    "Pattern {pattern}, crossNic 0, nChannels {graph_channels}, bw {bw:.6}/{bw:.6}, type {worst}/PIX, sameChannels 1"
                ),
            );
            for c in 0..graph_channels {
                let gpus: Vec<String> = (0..n).map(|i| format!("GPU/{i}")).collect();
                log::info(GRAPH, &format!("{c:2} : {}", gpus.join(" ")));
            }
        }
        for c in 0..self.nchannels {
            log::info(
                GRAPH,
                &format!("Ring {c:02} : {} -> {r} -> {}", self.prev(r), self.next(r)),
            );
        }
        for c in 0..self.nchannels {
            log::info(
                GRAPH,
                &format!("Tree {c} : {} -> {r} -> {}/-1/-1", self.up(r), self.down(r)),
            );
        }
        // rings.cc dumpLine: rank 0 prints each channel's ring order.
        if r == 0 {
            for c in 0..self.nchannels {
                log::info(INIT, &ring_order(v, c, self.nchannels, n));
            }
        }
        let mut trees = String::from("Trees");
        for c in 0..self.nchannels {
            trees.push_str(&format!(
                " [{c}] {}/-1/-1->{r}->{}",
                self.down(r),
                self.up(r)
            ));
        }
        log::info(INIT, &trees);
        let nvlink = (0..n).any(|j| j != r && path_type(me, &self.ranks[j]) == "NVL");
        log::info(
            INIT,
            &format!(
                "P2P Chunksize set to {}",
                if nvlink { 524288 } else { 131072 }
            ),
        );
    }

    /// Rank a's send connection to rank b: p2p.cc's or shm.cc's line (p2pSendSetup,
    /// shmSendSetup), or net.cc's `[send]` line.
    fn connection(&self, c: usize, a: usize, b: usize) {
        let (x, y) = (&self.ranks[a], &self.ranks[b]);
        let via = self.via[a][b];
        let text = via.text(self.same_process);
        match via {
            Via::P2p { .. } => log::info(
                INIT | P2P,
                &format!(
                    "Channel {c:02}/0 : {}[{}] -> {}[{}] via {text}",
                    x.rank, x.nvml_dev, y.rank, y.nvml_dev
                ),
            ),
            Via::Shm => log::info(
                INIT | SHM,
                &format!(
                    "Channel {c:02} : {}[{}] -> {}[{}] via {text}",
                    x.rank, x.nvml_dev, y.rank, y.nvml_dev
                ),
            ),
            Via::Net => log::info(
                INIT | NET,
                &format!(
                    "Channel {c:02}/0 : {}[{}] -> {}[{}] [send] via {text}",
                    x.rank, x.nvml_dev, y.rank, y.nvml_dev
                ),
            ),
        }
    }

    /// Rank b's receive side of a connection from rank a: only the network transport logs
    /// it (netRecvSetup; p2p.cc and shm.cc trace it).
    fn reception(&self, c: usize, a: usize, b: usize) {
        if self.via[a][b] == Via::Net {
            let (x, y) = (&self.ranks[a], &self.ranks[b]);
            log::info(
                INIT | NET,
                &format!(
                    "Channel {c:02}/0 : {}[{}] -> {}[{}] [receive] via {}",
                    x.rank,
                    x.nvml_dev,
                    y.rank,
                    y.nvml_dev,
                    Via::Net.text(self.same_process)
                ),
            );
        }
    }

    /// ncclTransportRingConnect (transport/generic.cc; at init before 2.22): rank r's send
    /// connection to the next rank on every channel.
    pub fn connect_rings(&self, r: usize) {
        if self.n() < 2 {
            return;
        }
        for c in 0..self.nchannels {
            self.reception(c, self.prev(r), r);
            self.connection(c, r, self.next(r));
        }
        log::info(INIT, "Connected all rings");
        // The proxy's progress thread starts with the first connection (proxy.cc, 2.23+).
        if self.version >= 22300 {
            // SAFETY: sched_getcpu has no arguments.
            let cpu = unsafe { libc::sched_getcpu() };
            log::info(
                INIT,
                &format!(
                    "[Proxy Progress] Device {} CPU core {cpu}",
                    self.ranks[r].cuda_dev
                ),
            );
        }
    }

    /// ncclTransportTreeConnect: the tree's connections the ring did not make (up, r -> r-1).
    pub fn connect_trees(&self, r: usize) {
        if self.n() < 2 {
            return;
        }
        let up = self.up(r);
        if up >= 0 && up as usize != self.next(r) {
            for c in 0..self.nchannels {
                self.connection(c, r, up as usize);
            }
        }
        let down = self.down(r);
        if down >= 0 && down as usize != self.prev(r) {
            for c in 0..self.nchannels {
                self.reception(c, down as usize, r);
            }
        }
        log::info(INIT, "Connected all trees");
    }

    /// From the tuning model to Init COMPLETE.
    pub fn rank_end(&self, r: usize, secs: f64) {
        let v = self.version;
        let me = &self.ranks[r];
        let n = self.n();
        log::info(
            INIT,
            &format!(
                "threadThresholds 8/8/64 | {}/8/64 | 512 | 512",
                8 * n.max(1)
            ),
        );
        let p2p = self.nchannels;
        let per_peer = (self.nchannels * 2 / n.next_power_of_two().max(1)).max(1);
        let c = self.nchannels;
        if v >= 22000 {
            log::info(INIT, &format!("{c} coll channels, {c} collnet channels, 0 nvls channels, {p2p} p2p channels, {per_peer} p2p channels per peer"));
        } else {
            log::info(
                INIT,
                &format!("{c} coll channels, 0 nvls channels, {p2p} p2p channels, {per_peer} p2p channels per peer"),
            );
        }
        if v >= 22200 {
            log::info(
                ENV | TUNING,
                "TUNER/Plugin: Could not find: libnccl-tuner.so libnccl-net.so. Using internal tuner plugin.",
            );
        }
        log::info(INIT, &self.init_line(me, "COMPLETE"));
        let t = [0.35, 0.05, 0.1, 0.1, 0.25, 0.15].map(|f| f * secs);
        if v >= 22300 {
            log::info(INIT | PROFILE, &format!(
                "Init timings - {}: rank {r} nranks {n} total {secs:.2} (kernels {:.2}, alloc {:.2}, bootstrap {:.2}, allgathers {:.2}, topo {:.2}, graphs 0.00, connections {:.2}, rest 0.00)",
                self.caller, t[0], t[1], t[2], t[3], t[4], t[5]));
        } else if v >= 22200 {
            log::info(INIT | PROFILE, &format!(
                "Init timings: rank {r} nranks {n} total {secs:.2} (kernels {:.2}, bootstrap {:.2}, allgathers {:.2}, topo {:.2}, graphs 0.00, connections {:.2}, rest {:.2})",
                t[0], t[2], t[3], t[4], t[5], t[1]));
        }
    }
}

/// rings.cc dumpLine: `Channel 00/02 :    0   1` (a 15-character prefix, then " %3d" from
/// column 16) before 2.23; since, the prefix then " %*d" as wide as the largest rank.
fn ring_order(v: i32, c: usize, nchannels: usize, n: usize) -> String {
    let mut line = format!("Channel {c:02}/{nchannels:02} :");
    if v < 22300 {
        line.push(' ');
        for i in 0..n.min(20) {
            line.push_str(&format!(" {i:3}"));
        }
    } else {
        let w = (n.max(1) - 1).to_string().len();
        for i in 0..n {
            line.push_str(&format!(" {i:w$}"));
        }
    }
    line
}

/// commReclaim / commFree (init.cc): `comm %p rank %d nranks %d cudaDev %d busId %lx - Destroy
/// COMPLETE` (or Abort), printed in the calling thread.
pub fn teardown_complete(
    addr: usize,
    rank: usize,
    nranks: usize,
    cuda_dev: i32,
    bus_id: u64,
    abort: bool,
) {
    log::info(
        INIT,
        &format!(
            "comm {addr:#x} rank {rank} nranks {nranks} cudaDev {cuda_dev} busId {bus_id:x} - {} COMPLETE",
            if abort { "Abort" } else { "Destroy" }
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_take_the_release_at_or_below() {
        assert_eq!(init_ndev_line(21805), 1657);
        assert_eq!(init_ndev_line(21806), 1657);
        assert_eq!(init_ndev_line(22304), 1809);
        assert_eq!(init_ndev_line(23203), 2007);
        assert_eq!(init_ndev_line(21000), 1657);
        assert_eq!(socket_line(22203), 50);
    }

    #[test]
    fn ring_order_lines_of_both_eras() {
        assert_eq!(
            ring_order(21805, 0, 2, 4),
            "Channel 00/02 :    0   1   2   3"
        );
        assert_eq!(ring_order(22304, 1, 2, 4), "Channel 01/02 : 0 1 2 3");
        assert_eq!(
            ring_order(22304, 0, 2, 12).len(),
            "Channel 00/02 :".len() + 12 * 3
        );
    }

    #[test]
    fn version_strings_name_the_wheel_cuda() {
        assert_eq!(version_string(21805), "NCCL version 2.18.5+cuda12.2");
        assert_eq!(version_string(22203), "NCCL version 2.22.3+cuda12.5");
    }
}
