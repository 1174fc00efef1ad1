//! Which transport NCCL gives a connection from one rank's GPU to another's on one host, by
//! NCCL's own rules for the release the rig claims, so that rigdoctor's NCCL rules are tested
//! against NCCL's logic and not against what a rig file says NCCL chose:
//!
//! - `ncclTopoCheckP2p` (src/graph/paths.cc): P2P when the path between the GPUs is at most
//!   the P2P level, and NVML reports P2P read and write OK. The level: before 2.23.4 SYS,
//!   lowered to PXB on ARM and on Intel and Zhaoxin x86 CPUs (v2.21.5-1 paths.cc:278-299);
//!   since 2.23.4 (commit 68b5423) PXB, raised to SYS on AMD x86 with two GPUs or fewer
//!   (v2.23.4-1 paths.cc:273-279). `NCCL_P2P_DISABLE=1` (level LOC) or `NCCL_P2P_LEVEL` (a
//!   path name, or an old level number through `levelsOldToNew`) replaces it (`ncclGetLevel`,
//!   paths.cc:209-246). NVML refusing P2P on an NVLink path is an error (WARN, init fails
//!   with ncclUnhandledCudaError) unless `NCCL_IGNORE_DISABLED_P2P` is set; below SYS it is an
//!   INFO line.
//! - `p2pCanConnect` (src/transport/p2p.cc): the level check, then cudaDeviceCanAccessPeer;
//!   `p2pSendSetup` names the connection `P2P/direct pointer` between GPUs of one process
//!   (unless `NCCL_P2P_DIRECT_DISABLE=1`; then `P2P/CUMEM` with cuMem, else `P2P/IPC`), with
//!   `/read` on Ampere (cc 8.0) NVLink pairs or as `NCCL_P2P_READ_ENABLE` says.
//! - `shmCanConnect` (src/transport/shm.cc): same host and /dev/shm, unless
//!   `NCCL_SHM_DISABLE=1`.
//! - Neither: `ncclTopoComputePaths` marks the pair PATH_NET and NCCL connects it through the
//!   network transport (net.cc canConnect: always on one host), here the socket transport.
//!
//! In the fake, NVML's P2P status and cudaDeviceCanAccessPeer both come from the pair's
//! `access`, so they always agree, as they do on a healthy driver.

use super::log::{self, ALL};
use super::{env_int, param, version};
use crate::rig;
use std::sync::OnceLock;

/// NCCL's path types (src/graph/topo.h), nearest first. C2C (2.26) and P2C (2.27) are
/// accepted as level names in the releases that have them; the fake's paths are never of
/// those types. P2C and PXN swap places in 2.28, which no path of the fake can tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    Loc,
    Nvl,
    Nvb,
    C2c,
    Pix,
    Pxb,
    Pxn,
    P2c,
    Phb,
    Sys,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Loc => "LOC",
            Path::Nvl => "NVL",
            Path::Nvb => "NVB",
            Path::C2c => "C2C",
            Path::Pix => "PIX",
            Path::Pxb => "PXB",
            Path::Pxn => "PXN",
            Path::P2c => "P2C",
            Path::Phb => "PHB",
            Path::Sys => "SYS",
        }
    }

    /// topoPathTypeStr up to SYS in release `v` (src/graph/topo.cc): the names ncclGetLevel
    /// compares NCCL_P2P_LEVEL with.
    fn names(v: i32) -> Vec<Path> {
        use Path::*;
        let mut all = vec![Loc, Nvl, Nvb, C2c, Pix, Pxb, Pxn, P2c, Phb, Sys];
        all.retain(|p| match p {
            C2c => v >= 22600,
            P2c => v >= 22700,
            _ => true,
        });
        all
    }
}

/// The path between GPUs `x` and `y` (indices into the rig's GPUs) as NCCL's topology sees
/// it: NVL over active NVLinks, else the PCIe distance NVML reports (NVML's NODE, host
/// bridges of one NUMA node, is a path through the CPU: PHB).
pub fn path(x: Option<usize>, y: Option<usize>) -> Path {
    let (Some(x), Some(y)) = (x, y) else {
        return Path::Phb;
    };
    if x == y {
        return Path::Loc;
    }
    let r = rig();
    let Some(link) = r.link(x, y) else {
        return Path::Phb;
    };
    if link.nvlinks > link.nvlinks_down {
        return Path::Nvl;
    }
    match link.topology.as_str() {
        "PIX" => Path::Pix,
        "PXB" => Path::Pxb,
        "SYS" => Path::Sys,
        _ => Path::Phb,
    }
}

/// ncclGetLevel(&ncclTopoUserP2pLevel, "NCCL_P2P_DISABLE", "NCCL_P2P_LEVEL"): the level the
/// user set, read once per process as NCCL caches it, with the INFO line of the release
/// (none before 2.19; 2.19-2.22 name NCCL_P2P_LEVEL even for NCCL_P2P_DISABLE; 2.23 names
/// the variable that was read).
pub fn user_level() -> Option<Path> {
    static LEVEL: OnceLock<Option<Path>> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let v = version();
        let disabled = env_int("NCCL_P2P_DISABLE", 0) == 1;
        let level = if disabled {
            Some(Path::Loc)
        } else {
            std::env::var("NCCL_P2P_LEVEL")
                .ok()
                .and_then(|s| parse_level(v, &s))
        };
        if let Some(l) = level {
            if v >= 22300 && disabled {
                log::info(ALL, "NCCL_P2P_DISABLE set by environment to 1");
            } else if v >= 21900 {
                log::info(
                    ALL,
                    &format!("NCCL_P2P_LEVEL set by environment to {}", l.name()),
                );
            }
        }
        level
    })
}

/// NCCL_P2P_LEVEL as ncclGetLevel reads it: a path name of this release (exact, case
/// sensitive), else an old-style number (strtol, clamped to 5) through levelsOldToNew
/// {LOC, PIX, PXB, PHB, SYS, SYS}; anything else is ignored.
fn parse_level(v: i32, s: &str) -> Option<Path> {
    if let Some(p) = Path::names(v).into_iter().find(|p| p.name() == s) {
        return Some(p);
    }
    if !s.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    let old = digits.parse::<u64>().unwrap_or(u64::MAX).min(5);
    Some(
        [
            Path::Loc,
            Path::Pix,
            Path::Pxb,
            Path::Phb,
            Path::Sys,
            Path::Sys,
        ][old as usize],
    )
}

/// The CPU as ncclTopoCpuType sees it (arch from the build, vendor from cpuid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cpu {
    X86Intel,
    X86Amd,
    X86Zhaoxin,
    X86Other,
    Arm,
    Power,
}

fn cpu() -> Cpu {
    let r = rig();
    match (r.cpu.arch.as_str(), r.cpu.vendor.as_str()) {
        ("aarch64" | "arm64", _) => Cpu::Arm,
        ("ppc64le" | "ppc64", _) => Cpu::Power,
        // kvDictCpuVendor (graph/topo.cc).
        (_, "GenuineIntel") => Cpu::X86Intel,
        (_, "AuthenticAMD") => Cpu::X86Amd,
        (_, "CentaurHauls" | "  Shanghai  ") => Cpu::X86Zhaoxin,
        _ => Cpu::X86Other,
    }
}

/// The level ncclTopoCheckP2p compares a path with, for `ngpus` GPUs in this host's topology.
pub fn p2p_level(ngpus: usize) -> Path {
    if let Some(l) = user_level() {
        return l;
    }
    let c = cpu();
    if version() >= 22304 {
        if c == Cpu::X86Amd && ngpus <= 2 {
            Path::Sys
        } else {
            Path::Pxb
        }
    } else if matches!(c, Cpu::Arm | Cpu::X86Intel | Cpu::X86Zhaoxin) {
        Path::Pxb
    } else {
        Path::Sys
    }
}

/// How a connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// P2P transport; `read`: the receiver reads from the sender's buffer.
    P2p {
        read: bool,
    },
    Shm,
    /// The socket network transport (neither P2P nor SHM).
    Net,
}

impl Via {
    /// The `via ...` text of the connection line; P2P/direct pointer only between ranks of one
    /// process (P2P_SAME_PID in transport/p2p.cc), else the peer's buffers are mapped.
    pub fn text(self, same_process: bool) -> String {
        match self {
            Via::P2p { read } => {
                let read = if read { "/read" } else { "" };
                if same_process && param("NCCL_P2P_DIRECT_DISABLE", 0) == 0 {
                    format!("P2P/direct pointer{read}")
                } else if super::cumem() {
                    format!("P2P/CUMEM{read}")
                } else {
                    format!("P2P/IPC{read}")
                }
            }
            Via::Shm => "SHM/direct/direct".into(),
            Via::Net => "NET/Socket/0".into(),
        }
    }
}

/// What ncclTopoCheckP2p decides for a pair of ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    P2p,
    /// Beyond the P2P level.
    TooFar,
    /// Within the level, but NVML refuses P2P (INFO below SYS).
    Refused,
    /// NVML refuses P2P on an NVLink path: NCCL fails the init.
    NvlinkRefused,
}

/// ncclTopoCheckP2p from rank `a`'s GPU to rank `b`'s; `gpus`: each rank's GPU (index into
/// the rig's GPUs), all on this host.
pub fn check(gpus: &[Option<usize>], a: usize, b: usize) -> Check {
    let (x, y) = (gpus[a], gpus[b]);
    let p = path(x, y);
    if p > p2p_level(gpus.len()) {
        return Check::TooFar;
    }
    if x == y {
        return Check::P2p;
    }
    let ignore = param("NCCL_IGNORE_DISABLED_P2P", 0);
    if ignore == 2 {
        return Check::P2p;
    }
    if granted(x, y) {
        return Check::P2p;
    }
    if ignore == 0 && p <= Path::Nvb {
        Check::NvlinkRefused
    } else {
        Check::Refused
    }
}

/// NVML P2P read and write status OK (and cudaDeviceCanAccessPeer): the pair's `access`.
fn granted(x: Option<usize>, y: Option<usize>) -> bool {
    match (x, y) {
        (Some(x), Some(y)) => rig().pair(x, y).is_some_and(|p| p.access),
        _ => false,
    }
}

/// The transport of the connection from rank `a` to rank `b`: P2P, else SHM, else NET.
pub fn via(gpus: &[Option<usize>], a: usize, b: usize) -> Via {
    if check(gpus, a, b) == Check::P2p {
        return Via::P2p {
            read: read(gpus[a], gpus[b]),
        };
    }
    if param("NCCL_SHM_DISABLE", 0) == 1 {
        Via::Net
    } else {
        Via::Shm
    }
}

/// P2P read: Ampere A100-class (cc 8.0) GPUs on NVLink, unless NCCL_P2P_READ_ENABLE says.
fn read(x: Option<usize>, y: Option<usize>) -> bool {
    let e = param("NCCL_P2P_READ_ENABLE", -2);
    if e != -2 {
        return e != 0;
    }
    let r = rig();
    let cc = |g: Option<usize>| g.and_then(|g| r.gpus.get(g)).map(|g| g.cc);
    path(x, y) == Path::Nvl && cc(x) == Some([8, 0]) && cc(y) == Some([8, 0])
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn levels_parse_as_nccl_get_level_does() {
        assert_eq!(parse_level(22304, "SYS"), Some(Path::Sys));
        assert_eq!(parse_level(22304, "PHB"), Some(Path::Phb));
        // Exact and case-sensitive (strcmp); NODE is NVML's word, not NCCL's.
        assert_eq!(parse_level(22304, "sys"), None);
        assert_eq!(parse_level(22304, "NODE"), None);
        assert_eq!(parse_level(22304, "C2C"), None);
        assert_eq!(parse_level(22700, "C2C"), Some(Path::C2c));
        // Old numbering, clamped.
        assert_eq!(parse_level(22304, "0"), Some(Path::Loc));
        assert_eq!(parse_level(22304, "2"), Some(Path::Pxb));
        assert_eq!(parse_level(22304, "3"), Some(Path::Phb));
        assert_eq!(parse_level(22304, "9"), Some(Path::Sys));
        assert_eq!(
            parse_level(22304, "99999999999999999999999"),
            Some(Path::Sys)
        );
        assert_eq!(parse_level(22304, "-1"), None);
        assert_eq!(parse_level(22304, ""), None);
    }
}
