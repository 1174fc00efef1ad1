//! A fake libnccl.so.2 over the fake device memory, modelled on NVIDIA/nccl's sources (tags
//! v2.18.5-1 .. v2.23.4-1, cited per behaviour in the submodules):
//!
//! - all-reduce really sums the ranks' float32 buffers (so rigdoctor's check is real) and its
//!   time goes on each rank's stream clock from the rig's model;
//! - the log is NCCL's: `NCCL_DEBUG`, `NCCL_DEBUG_SUBSYS`, `NCCL_DEBUG_FILE`, through C stdio,
//!   never flushed ([`log`]), with the lines real NCCL prints at init ([`lines`]);
//! - connections are made at init before 2.22, at the first collective since
//!   (`NCCL_RUNTIME_CONNECT`, default 1, with cuMem support);
//! - communicators have a service thread and a lifecycle ([`comm`]): ncclCommDestroy,
//!   ncclCommAbort, ncclCommGetAsyncError, ncclGetLastError;
//! - `FAKEGPU_NCCL_TRACE` records every call ([`trace`]);
//! - each hop's transport by NCCL's rules for the release, topology, CPU and environment
//!   ([`transport`]);
//! - rig faults (`nccl.fault`): none, hang, wrong, error, async-error, init-error,
//!   hang-on-exit.
//!
//! Signatures are nccl.h's (src/nccl.h.in, v2.23.4-1).

mod comm;
mod lines;
mod log;
mod span;
mod trace;
mod transport;

use crate::memory::state;
use crate::rig;
use comm::{registry, Clique, Comm, Span};
use lines::{RankView, Topo};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};

// ncclResult_t (nccl.h).
const SUCCESS: c_int = 0;
const UNHANDLED_CUDA_ERROR: c_int = 1;
const INVALID_ARGUMENT: c_int = 4;
const INVALID_USAGE: c_int = 5;
const REMOTE_ERROR: c_int = 6;

/// ncclFloat32, ncclSum: the one all-reduce the fake emulates.
const FLOAT32: c_int = 7;
const SUM: c_int = 0;

/// Channels of the rings (PCIe 3090s get 2).
const CHANNELS: usize = 2;

/// ncclGetVersion's code of the emulated release (rig `nccl.version`, default 2.18.5).
pub(crate) fn version() -> c_int {
    rig().nccl.as_ref().map_or(21805, |n| n.version)
}

/// The rig's NCCL fault ("none" when there is none).
pub(crate) fn fault() -> String {
    rig()
        .nccl
        .as_ref()
        .map_or_else(|| "none".into(), |n| n.fault.clone())
}

/// An integer parameter as NCCL reads it (strtoll base 0; unset or empty: the default).
pub(crate) fn env_int(name: &str, default: i64) -> i64 {
    match std::env::var(name) {
        Ok(s) if !s.is_empty() => {
            let t = s.trim_start();
            let (neg, t) = match t.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, t.strip_prefix('+').unwrap_or(t)),
            };
            let (radix, digits) = if let Some(h) = t.strip_prefix("0x").or(t.strip_prefix("0X")) {
                (16, h)
            } else if t.len() > 1 && t.starts_with('0') {
                (8, &t[1..])
            } else {
                (10, t)
            };
            let end = digits
                .find(|c: char| !c.is_digit(radix))
                .unwrap_or(digits.len());
            let v = i64::from_str_radix(&digits[..end], radix).unwrap_or(0);
            if neg {
                -v
            } else {
                v
            }
        }
        _ => default,
    }
}

/// An NCCL_PARAM read: the value, logged as "set by environment" the first time when set.
fn param(name: &str, default: i64) -> i64 {
    let v = env_int(name, default);
    if std::env::var(name).is_ok_and(|s| !s.is_empty()) {
        lines::param_from_env(name, v);
    }
    v
}

/// ncclCuMemEnable (misc/cudawrap.cc): NCCL_CUMEM_ENABLE, default 0 (off) before 2.19 and -2
/// (auto) since v2.19.3-1, auto meaning a driver of CUDA 12.0 or later (ncclIsCuMemSupported).
fn cumem() -> bool {
    let p = param("NCCL_CUMEM_ENABLE", if version() >= 21900 { -2 } else { 0 });
    if p >= 0 {
        p != 0
    } else {
        p == -2 && rig().cuda_version >= 12000
    }
}

/// comm->runtimeConn = cuMemSupport && NCCL_RUNTIME_CONNECT (init.cc, since 2.22.3; default
/// 1): connections are made at the first collective instead of at init.
fn runtime_connect() -> bool {
    version() >= 22200 && cumem() && param("NCCL_RUNTIME_CONNECT", 1) != 0
}

/// GPU index of CUDA ordinal `d`.
fn gpu(d: c_int) -> Option<usize> {
    usize::try_from(d).ok().and_then(|d| rig().cuda_index(d))
}

/// Each CUDA device's GPU (index into the rig's GPUs).
fn gpus_of(devs: &[c_int]) -> Vec<Option<usize>> {
    devs.iter().map(|&d| gpu(d)).collect()
}

/// The transport from rank `a` to rank `b`: between ranks of two hosts (other host hashes)
/// the network, as ncclTopoComputePaths leaves them PATH_NET; within a host, NCCL's rules.
fn hop_via(gpus: &[Option<usize>], hosts: &[u64], a: usize, b: usize) -> transport::Via {
    if hosts.get(a) != hosts.get(b) {
        return transport::Via::Net;
    }
    transport::via(gpus, a, b)
}

/// NCCL's host hash (misc/utils.cc getHostHashOnce, v2.23.4-1): the hash of the full host
/// name followed by the boot id (/proc/sys/kernel/random/boot_id), or of `NCCL_HOSTID` alone
/// when that is set. Ranks with the same hash are one node: their GPUs must differ ("Duplicate
/// GPU detected") and their hops use P2P or SHM; ranks of two hosts talk over the network.
fn host_hash() -> u64 {
    let id = match std::env::var("NCCL_HOSTID") {
        Ok(h) => h,
        Err(_) => {
            let boot =
                std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
            format!("{}{}", log::full_hostname(), boot.trim())
        }
    };
    // FNV-1a: any stable hash serves; NCCL's own (getHash) is not reproduced.
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn topo_of(clique: &Clique, reg: &comm::Registry) -> Topo {
    let ranks: Vec<RankView> = match &clique.span {
        Some(s) => s
            .peers
            .iter()
            .map(|p| RankView {
                addr: p.addr,
                rank: p.rank,
                cuda_dev: p.cuda_dev,
                nvml_dev: p.nvml_dev,
                bus_id: p.bus_id,
                gpu: p.gpu,
            })
            .collect(),
        None => clique
            .comms
            .iter()
            .map(|a| {
                let c = &reg.comms[a];
                RankView {
                    addr: c.addr,
                    rank: c.rank,
                    cuda_dev: c.cuda_dev,
                    nvml_dev: c.nvml_dev,
                    bus_id: c.bus_id,
                    gpu: c.gpu,
                }
            })
            .collect(),
    };
    let gpus = gpus_of(&clique.devs);
    let n = gpus.len();
    let via = (0..n)
        .map(|a| {
            (0..n)
                .map(|b| hop_via(&gpus, &clique.hosts, a, b))
                .collect()
        })
        .collect();
    Topo {
        version: version(),
        ranks,
        comm_id: clique.comm_id,
        nchannels: CHANNELS,
        via,
        same_process: clique.span.is_none(),
        caller: if clique.span.is_some() {
            "ncclCommInitRank"
        } else {
            "ncclCommInitAll"
        },
    }
}

/// ncclTopoComputePaths in each rank's init: ncclTopoCheckP2p for every pair of GPUs
/// (graph/paths.cc), with its INFO line where NVML refuses P2P below SYS, and its WARN and
/// failure where it refuses it on NVLink. False when a rank's init fails.
fn paths_ok(devs: &[c_int], mine: Option<usize>) -> bool {
    let gpus = gpus_of(devs);
    let r = rig();
    let nvml = |g: Option<usize>| {
        g.and_then(|g| (0..r.gpus.len()).find(|&i| r.nvml_index(i) == Some(g)))
            .unwrap_or(0)
    };
    let failed = std::sync::atomic::AtomicBool::new(false);
    let each = |_: usize| {
        for g in 0..gpus.len() {
            for p in 0..gpus.len() {
                let (a, b) = (nvml(gpus[p]), nvml(gpus[g]));
                match transport::check(&gpus, p, g) {
                    transport::Check::Refused
                        if transport::path(gpus[p], gpus[g]) < transport::Path::Sys =>
                    {
                        log::info(log::INIT, &format!("P2P is disabled between connected GPUs {a} and {b}. You can repress this message with NCCL_IGNORE_DISABLED_P2P=1."));
                    }
                    transport::Check::NvlinkRefused => {
                        log::warn("graph/paths.cc", lines::nvlink_refused_line(version()), &format!("P2P is disabled between NVLINK connected GPUs {a} and {b}. This should not be the case given their connectivity, and is probably due to a hardware issue. If you still want to proceed, you can set NCCL_IGNORE_DISABLED_P2P=1."));
                        failed.store(true, Ordering::SeqCst);
                        return;
                    }
                    _ => {}
                }
            }
        }
    };
    match mine {
        // One rank of a communicator that spans processes checks in its own init.
        Some(r) => each(r),
        None => per_rank_threads(devs, &each),
    }
    !failed.load(Ordering::SeqCst)
}

/// Run `f(rank)` in one thread per rank, each on its rank's device, as NCCL's group jobs run
/// ncclCommInitRankFunc (and the runtime connection) in a thread per communicator.
fn per_rank_threads(devs: &[c_int], f: &(dyn Fn(usize) + Sync)) {
    std::thread::scope(|s| {
        for (r, &d) in devs.iter().enumerate() {
            s.spawn(move || {
                log::set_thread_device(d);
                f(r)
            });
        }
    });
}

#[no_mangle]
pub unsafe extern "C" fn ncclGetVersion(v: *mut c_int) -> c_int {
    let rc = if v.is_null() {
        INVALID_ARGUMENT
    } else {
        *v = version();
        SUCCESS
    };
    trace::call("ncclGetVersion", None, "", rc);
    rc
}

/// ncclGetErrorString (init.cc): NCCL's text for each ncclResult_t (ncclTimeout since 2.30).
#[no_mangle]
pub unsafe extern "C" fn ncclGetErrorString(r: c_int) -> *const c_char {
    trace::call("ncclGetErrorString", None, &format!("code={r}"), SUCCESS);
    error_string(r, version()).as_ptr()
}

fn error_string(r: c_int, v: i32) -> &'static std::ffi::CStr {
    match r {
        0 => c"no error",
        1 => c"unhandled cuda error (run with NCCL_DEBUG=INFO for details)",
        2 => c"unhandled system error (run with NCCL_DEBUG=INFO for details)",
        3 => c"internal error - please report this issue to the NCCL developers",
        4 => c"invalid argument (run with NCCL_DEBUG=WARN for details)",
        5 => c"invalid usage (run with NCCL_DEBUG=WARN for details)",
        6 => c"remote process exited or there was a network error",
        7 => c"NCCL operation in progress",
        8 if v >= 23000 => c"timeout",
        _ => c"unknown result code",
    }
}

/// ncclGetLastError (init.cc): the last WARN's text, whatever the communicator.
#[no_mangle]
pub unsafe extern "C" fn ncclGetLastError(comm: *mut c_void) -> *const c_char {
    let who = rank_of(comm).map(|r| (comm as usize, r));
    trace::call("ncclGetLastError", who, "", SUCCESS);
    log::last_error_ptr()
}

fn rank_of(comm: *mut c_void) -> Option<usize> {
    registry().comms.get(&(comm as usize)).map(|c| c.rank)
}

/// CommCheck (misc/argcheck.cc): NULL, or not a live communicator ("corrupted comm object",
/// as a destroyed one is poisoned).
fn comm_check(comm: *mut c_void, op: &str) -> Result<(), c_int> {
    if comm.is_null() {
        log::warn(
            "misc/argcheck.cc",
            lines::ARGCHECK_NULL_LINE,
            &format!("{op} : comm argument is NULL"),
        );
        return Err(INVALID_ARGUMENT);
    }
    let reg = registry();
    match reg.comms.get(&(comm as usize)) {
        Some(c) if !c.destroyed => Ok(()),
        _ => {
            drop(reg);
            log::warn(
                "misc/argcheck.cc",
                lines::ARGCHECK_CORRUPT_LINE,
                "Error: corrupted comm object detected",
            );
            Err(INVALID_ARGUMENT)
        }
    }
}

/// ncclCommEnsureReady (init.cc): a communicator with an async error refuses work.
fn ensure_ready(comm: *mut c_void) -> Result<(), c_int> {
    let err = registry()
        .comms
        .get(&(comm as usize))
        .map_or(0, |c| c.shared.async_result.load(Ordering::SeqCst));
    if err != SUCCESS {
        log::warn(
            "init.cc",
            lines::attempt_line(version()),
            "Attempt to use communicator before the previous operation returned ncclSuccess",
        );
        return Err(err);
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommGetAsyncError(comm: *mut c_void, result: *mut c_int) -> c_int {
    let rc = (|| {
        comm_check(comm, "ncclGetAsyncError")?;
        if result.is_null() {
            log::warn(
                "misc/argcheck.cc",
                lines::ARGCHECK_NULL_LINE,
                "ncclGetAsyncError : asyncError argument is NULL",
            );
            return Err(INVALID_ARGUMENT);
        }
        let r = registry()
            .comms
            .get(&(comm as usize))
            .map_or(0, |c| c.shared.async_result.load(Ordering::SeqCst));
        *result = r;
        Ok(r)
    })();
    let who = rank_of(comm).map(|r| (comm as usize, r));
    match rc {
        Ok(r) => {
            trace::call("ncclCommGetAsyncError", who, &format!("async={r}"), SUCCESS);
            SUCCESS
        }
        Err(e) => {
            trace::call("ncclCommGetAsyncError", who, "", e);
            e
        }
    }
}

/// ncclCommCount / ncclCommCuDevice / ncclCommUserRank: CommCheck, PtrCheck, the value.
unsafe fn comm_query(
    name: &str,
    op: &str,
    what: &str,
    comm: *mut c_void,
    out: *mut c_int,
    f: fn(&Comm) -> c_int,
) -> c_int {
    let rc = (|| {
        comm_check(comm, op)?;
        if out.is_null() {
            log::warn(
                "misc/argcheck.cc",
                lines::ARGCHECK_NULL_LINE,
                &format!("{op} : {what} argument is NULL"),
            );
            return Err(INVALID_ARGUMENT);
        }
        *out = f(&registry().comms[&(comm as usize)]);
        Ok(())
    })()
    .err()
    .unwrap_or(SUCCESS);
    trace::call(name, rank_of(comm).map(|r| (comm as usize, r)), "", rc);
    rc
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommCount(comm: *mut c_void, count: *mut c_int) -> c_int {
    comm_query("ncclCommCount", "CommCount", "count", comm, count, |c| {
        c.nranks as c_int
    })
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommCuDevice(comm: *mut c_void, dev: *mut c_int) -> c_int {
    comm_query(
        "ncclCommCuDevice",
        "CommCuDevice",
        "devid",
        comm,
        dev,
        |c| c.cuda_dev,
    )
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommUserRank(comm: *mut c_void, rank: *mut c_int) -> c_int {
    comm_query(
        "ncclCommUserRank",
        "CommUserRank",
        "rank",
        comm,
        rank,
        |c| c.rank as c_int,
    )
}

/// What cudart answers for the fake driver's cuInit outcome, as `cudaGetErrorString` words it.
fn cudart_failure() -> Option<&'static str> {
    if fault() == "init-error" {
        return Some("CUDA driver version is insufficient for CUDA runtime version");
    }
    // The runtime initialises the driver itself (a cuInit fault hangs here too).
    // SAFETY: plain call into the fake driver.
    match unsafe { crate::cuda::cuInit(0) } {
        0 => None,
        34 => Some("CUDA driver is a stub library"),
        100 => Some("no CUDA-capable device is detected"),
        803 => Some("system has unsupported display driver / cuda driver combination"),
        _ => Some("initialization error"),
    }
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommInitAll(
    comms: *mut *mut c_void,
    n: c_int,
    devs: *const c_int,
) -> c_int {
    let (rc, made) = init_all(comms, n, devs);
    let list: Vec<String> = made.iter().map(|a| format!("{a:#x}")).collect();
    trace::call(
        "ncclCommInitAll",
        None,
        &format!("ndev={n} comms={}", list.join(",")),
        rc,
    );
    rc
}

unsafe fn init_all(comms: *mut *mut c_void, n: c_int, devs: *const c_int) -> (c_int, Vec<usize>) {
    let v = version();
    lines::cuda_library_init(rig().cuda_version);
    if comms.is_null() {
        log::warn(
            "misc/argcheck.cc",
            lines::ARGCHECK_NULL_LINE,
            "CommInitAll : comms argument is NULL",
        );
        return (INVALID_ARGUMENT, Vec::new());
    }
    if n < 0 {
        log::warn(
            "init.cc",
            lines::init_ndev_line(v),
            &format!("Invalid device count requested : {n}"),
        );
        return (INVALID_ARGUMENT, Vec::new());
    }
    // CUDACHECK of cudaGetDeviceCount (cudaGetDevice since 2.23) (checks.h: "Cuda failure
    // '%s'").
    if let Some(why) = cudart_failure() {
        log::warn(
            "init.cc",
            lines::first_cuda_line(v),
            &format!("Cuda failure '{why}'"),
        );
        return (UNHANDLED_CUDA_ERROR, Vec::new());
    }
    let total = rig().gpus.len() as c_int;
    let list: Vec<c_int> = if devs.is_null() {
        (0..n).collect()
    } else {
        (0..n as usize).map(|i| *devs.add(i)).collect()
    };
    let mut seen = Vec::new();
    for &d in &list {
        if d < 0 || d >= total {
            // 2.18 .. 2.22: ncclUnhandledCudaError without a WARN; since 2.23 a WARN and
            // ncclInvalidArgument.
            if v >= 22300 {
                log::warn(
                    "init.cc",
                    lines::invalid_dev_line(v),
                    &format!("Invalid device {d} (totalnDev={total})"),
                );
                return (INVALID_ARGUMENT, Vec::new());
            }
            return (UNHANDLED_CUDA_ERROR, Vec::new());
        }
        if seen.contains(&d) {
            return (INVALID_USAGE, Vec::new());
        }
        seen.push(d);
    }
    // ncclGetUniqueId -> ncclInit; ncclCommInitRankDev of rank 0 shows the version.
    lines::nccl_init(v);
    if !list.is_empty() {
        log::show_version(&lines::version_string(v));
    }
    // ncclTopoComputePaths: the level of NCCL_P2P_DISABLE / NCCL_P2P_LEVEL, read once, then
    // every rank checks P2P between every pair of the host's GPUs.
    transport::user_level();
    if !paths_ok(&list, None) {
        return (UNHANDLED_CUDA_ERROR, Vec::new());
    }
    static COMM_IDS: AtomicU64 = AtomicU64::new(0x6b1f_03c2_9e4d_7a55);
    let comm_id = COMM_IDS.fetch_add(0x1_0000_0001, Ordering::SeqCst);
    let connect_now = !runtime_connect();
    let _ = param("NCCL_SET_THREAD_NAME", 0);
    let started = std::time::Instant::now();
    let (topo, addrs) = {
        let mut reg = registry();
        let clique = reg.cliques.len();
        let mut addrs = Vec::new();
        for (r, &d) in list.iter().enumerate() {
            let c = Comm::new(r, list.len(), d, gpu(d), clique);
            addrs.push(c.addr);
            reg.comms.insert(c.addr, c);
        }
        reg.cliques.push(Clique {
            comms: addrs.clone(),
            hosts: vec![0; list.len()],
            devs: list.clone(),
            comm_id,
            connected: connect_now,
            span: None,
        });
        let topo = topo_of(&reg.cliques[clique], &reg);
        (topo, addrs)
    };
    per_rank_threads(&list, &|r| {
        topo.rank_start(r);
        if let Some(c) = registry().comms.get_mut(&addrs[r]) {
            c.start_service();
        }
        if connect_now {
            topo.connect_rings(r);
            topo.connect_trees(r);
        }
        topo.rank_end(r, started.elapsed().as_secs_f64() + 0.3);
    });
    for (r, a) in addrs.iter().enumerate() {
        *comms.add(r) = *a as *mut c_void;
    }
    (SUCCESS, addrs)
}

/// ncclGetUniqueId (init.cc -> bootstrapGetUniqueId): ncclInit, then a bootstrap root in this
/// process whose address the id carries.
#[no_mangle]
pub unsafe extern "C" fn ncclGetUniqueId(out: *mut span::UniqueId) -> c_int {
    let v = version();
    let rc = if out.is_null() {
        log::warn(
            "misc/argcheck.cc",
            lines::ARGCHECK_NULL_LINE,
            "GetUniqueId : out argument is NULL",
        );
        INVALID_ARGUMENT
    } else {
        lines::nccl_init(v);
        match span::new_id() {
            Ok(id) => {
                *out = id;
                SUCCESS
            }
            Err(e) => {
                log::warn("bootstrap.cc", 0, &format!("Bootstrap : {e}"));
                2
            }
        }
    };
    trace::call("ncclGetUniqueId", None, "", rc);
    rc
}

/// ncclCommInitRank(comm, nranks, commId, rank): this process's rank of a communicator whose
/// ranks are processes of their own, on the calling thread's current CUDA device
/// (cudaGetDevice: device 0 when none was made current).
#[no_mangle]
pub unsafe extern "C" fn ncclCommInitRank(
    comm: *mut *mut c_void,
    nranks: c_int,
    id: span::UniqueId,
    rank: c_int,
) -> c_int {
    let (rc, addr) = init_rank(comm, nranks, &id, rank);
    trace::call(
        "ncclCommInitRank",
        None,
        &format!("nranks={nranks} rank={rank} comm={addr:#x}"),
        rc,
    );
    rc
}

unsafe fn init_rank(
    comm: *mut *mut c_void,
    nranks: c_int,
    id: &span::UniqueId,
    rank: c_int,
) -> (c_int, usize) {
    let v = version();
    lines::cuda_library_init(rig().cuda_version);
    if comm.is_null() {
        log::warn(
            "misc/argcheck.cc",
            lines::ARGCHECK_NULL_LINE,
            "CommInitRank : comm argument is NULL",
        );
        return (INVALID_ARGUMENT, 0);
    }
    if nranks < 1 || rank < 0 || rank >= nranks {
        log::warn(
            "init.cc",
            lines::invalid_rank_line(v),
            &format!("Invalid rank requested : {rank}/{nranks}"),
        );
        return (INVALID_ARGUMENT, 0);
    }
    if let Some(why) = cudart_failure() {
        log::warn(
            "init.cc",
            lines::first_cuda_line(v),
            &format!("Cuda failure '{why}'"),
        );
        return (UNHANDLED_CUDA_ERROR, 0);
    }
    let Some(dir) = span::dir_of(id) else {
        // A real id whose root is gone: the bootstrap connection is refused.
        log::warn(
            "misc/socket.cc",
            lines::socket_line(v),
            "socketStartConnect: Connect to 127.0.0.1<0> failed : Connection refused",
        );
        return (2, 0);
    };
    let (rank, n) = (rank as usize, nranks as usize);
    lines::nccl_init(v);
    if rank == 0 {
        log::show_version(&lines::version_string(v));
    }
    transport::user_level();
    let r = rig();
    let dev = crate::memory::current()
        .and_then(|g| (0..r.gpus.len()).find(|&d| r.cuda_index(d) == Some(g)))
        .unwrap_or(0) as c_int;
    log::set_thread_device(dev);
    let started = std::time::Instant::now();
    let me = Comm::new(rank, n, dev, gpu(dev), usize::MAX);
    let addr = me.addr;
    let peer = span::Peer {
        rank,
        cuda_dev: dev,
        nvml_dev: me.nvml_dev,
        bus_id: me.bus_id,
        gpu: me.gpu,
        addr,
        pid: std::process::id(),
        host: host_hash(),
    };
    // The bootstrap allgather: blocks until every rank has joined.
    let peers = match span::join(&dir, &peer, n) {
        Ok(p) => p,
        Err(e) => {
            log::warn("bootstrap.cc", 0, &format!("Bootstrap : {e}"));
            return (INVALID_USAGE, 0);
        }
    };
    // init.cc: two ranks on one GPU (a job that did not set each rank's device).
    for p in &peers {
        if p.rank != rank && p.host == peer.host && p.bus_id == peer.bus_id {
            log::warn(
                "init.cc",
                lines::duplicate_gpu_line(v),
                &format!(
                    "Duplicate GPU detected : rank {rank} and rank {} both on CUDA device {:x}",
                    p.rank, peer.bus_id
                ),
            );
            return (INVALID_USAGE, 0);
        }
    }
    // A rank of another host has a GPU of that host, none of this rig's.
    let devs: Vec<c_int> = peers
        .iter()
        .map(|p| if p.host == peer.host { p.cuda_dev } else { -1 })
        .collect();
    let hosts: Vec<u64> = peers.iter().map(|p| p.host).collect();
    if !paths_ok(&devs, Some(rank)) {
        return (UNHANDLED_CUDA_ERROR, 0);
    }
    let exchange = match span::Exchange::open(&dir, rank, n) {
        Ok(x) => x,
        Err(e) => {
            log::warn(
                "transport/shm.cc",
                0,
                &format!("Error while creating shared memory segment {e}"),
            );
            return (2, 0);
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let comm_id = peers.iter().fold(0x6b1f_03c2_9e4d_7a55u64, |h, p| {
        h.rotate_left(7) ^ p.addr as u64
    });
    let connect_now = !runtime_connect();
    let _ = param("NCCL_SET_THREAD_NAME", 0);
    let topo = {
        let mut reg = registry();
        let clique = reg.cliques.len();
        let mut me = me;
        me.clique = clique;
        reg.comms.insert(addr, me);
        reg.cliques.push(Clique {
            comms: vec![addr],
            hosts: hosts.clone(),
            devs: devs.clone(),
            comm_id,
            connected: connect_now,
            span: Some(Span {
                rank,
                peers,
                queue: tx,
                dir: dir.clone(),
            }),
        });
        topo_of(&reg.cliques[clique], &reg)
    };
    topo.rank_start(rank);
    if let Some(c) = registry().comms.get_mut(&addr) {
        c.start_service();
    }
    if connect_now {
        topo.connect_rings(rank);
        topo.connect_trees(rank);
    }
    topo.rank_end(rank, started.elapsed().as_secs_f64() + 0.3);
    let spawned = std::thread::Builder::new()
        .spawn(move || exchanger(rx, exchange, addr, rank, n, (devs, hosts)));
    if spawned.is_err() {
        return (2, 0);
    }
    *comm = addr as *mut c_void;
    (SUCCESS, addr)
}

/// The collectives of one spanning communicator, in order: each rank's input goes to the
/// others and the sum comes back, then its kernel on the stream completes. A fault of this
/// rank (rig `nccl.fault`, for `nccl.fault_rank` or every rank) or of a P2P hop of the ring
/// applies here, so the other processes meet it as real peers would: they wait.
fn exchanger(
    rx: std::sync::mpsc::Receiver<(u64, u64, usize, u64)>,
    mut ex: span::Exchange,
    addr: usize,
    rank: usize,
    n: usize,
    (devs, hosts): (Vec<c_int>, Vec<u64>),
) {
    log::set_thread_device(devs[rank]);
    let fault_rank = rig().nccl.as_ref().and_then(|x| x.fault_rank);
    let mine = fault_rank.is_none_or(|f| f == rank);
    let own = if mine { fault() } else { "none".into() };
    let hop = hop_fault(&devs, &hosts);
    for (send, recv, count, token) in rx {
        match (own.as_str(), hop.as_deref()) {
            ("crash", _) => std::process::abort(),
            ("hang", _) | (_, Some("hang")) => continue,
            ("async-error", _) => {
                if let Some(c) = registry().comms.get(&addr) {
                    c.fail_async(
                        REMOTE_ERROR,
                        "misc/socket.cc",
                        lines::socket_line(version()),
                        "socketProgress: Connection closed by remote peer 192.168.1.20<43215>"
                            .into(),
                    );
                }
                continue;
            }
            _ => {}
        }
        // The fake's device memory is the global state's: fill and empty the shared buffers
        // under its lock, and wait for the peers without it (a stuck peer must not stop this
        // process's other CUDA calls, as it does not with real NCCL).
        if ex.next(count).is_err() {
            continue;
        }
        {
            let s = state();
            let input = ex.input();
            match s.resolve(send, count * 4) {
                // SAFETY: resolved inside a live allocation of count floats.
                Ok((_, p)) => input
                    .copy_from_slice(unsafe { std::slice::from_raw_parts(p as *const f32, count) }),
                Err(_) => input.fill(0.0),
            }
        }
        if ex.reduce().is_err() {
            continue;
        }
        // One element of one rank's output is off: the faulty rank's, else the last rank's.
        let wrong_here = (own == "wrong" && rank == fault_rank.unwrap_or(n - 1))
            || (hop.as_deref() == Some("wrong") && rank == n - 1);
        {
            let s = state();
            if let Ok((_, p)) = s.resolve(recv, count * 4) {
                // SAFETY: as above, the output buffer.
                let out = unsafe { std::slice::from_raw_parts_mut(p as *mut f32, count) };
                if ex.gather(out).is_err() {
                    continue;
                }
                if wrong_here && count > 5 {
                    out[5] += 1.0;
                }
            } else {
                let mut out = vec![0.0; count];
                if ex.gather(&mut out).is_err() {
                    continue;
                }
            }
        }
        crate::stream::release_stall(token);
        if let Some(c) = registry().comms.get_mut(&addr) {
            c.stalls.retain(|t| *t != token);
        }
    }
}

/// A ring hop over a P2P pair whose transfers hang or corrupt does the same to NCCL.
fn hop_fault(devs: &[c_int], hosts: &[u64]) -> Option<String> {
    let n = devs.len();
    let gpus = gpus_of(devs);
    (0..n).find_map(|i| {
        let (a, b) = (devs[i], devs[(i + 1) % n]);
        let pair = rig().pair(gpu(a)?, gpu(b)?)?;
        if n < 2
            || !matches!(
                hop_via(&gpus, hosts, i, (i + 1) % n),
                transport::Via::P2p { .. }
            )
        {
            return None;
        }
        match pair.fault.as_str() {
            "hang" | "enable-hangs" => Some("hang".to_string()),
            "corrupt" | "zeros" | "corrupt-always" => Some("wrong".to_string()),
            _ => None,
        }
    })
}

/// Destroy or abort one communicator.
fn finish(comm: *mut c_void, abort: bool) -> c_int {
    let name = if abort {
        "ncclCommAbort"
    } else {
        "ncclCommDestroy"
    };
    if comm.is_null() {
        trace::call(name, None, "comm=0x0", SUCCESS);
        return SUCCESS;
    }
    let addr = comm as usize;
    let state = registry().comms.get(&addr).map(|c| (c.rank, c.destroyed));
    let rank = match state {
        Some((rank, false)) => rank,
        Some((rank, true)) => {
            // init.cc: "comm %p has already been destroyed" (ncclCommDestroy; for
            // ncclCommAbort a use after free in the real library).
            log::warn(
                "init.cc",
                lines::destroyed_line(version()),
                &format!("comm {addr:#x} has already been destroyed"),
            );
            trace::call(name, Some((addr, rank)), "", INVALID_ARGUMENT);
            return INVALID_ARGUMENT;
        }
        None => {
            log::warn(
                "misc/argcheck.cc",
                lines::ARGCHECK_CORRUPT_LINE,
                "Error: corrupted comm object detected",
            );
            trace::call(name, None, &format!("comm={addr:#x}"), INVALID_ARGUMENT);
            return INVALID_ARGUMENT;
        }
    };
    if abort {
        // abortFlag: the kernels still running see it and quit.
        let stalls = registry()
            .comms
            .get_mut(&addr)
            .map(|c| std::mem::take(&mut c.stalls))
            .unwrap_or_default();
        for t in stalls {
            crate::stream::release_stall(t);
        }
    } else {
        // ncclCommDestroy -> ncclCommEnsureReady: an async error is returned, the comm stays.
        if let Err(e) = ensure_ready(comm) {
            trace::call(name, Some((addr, rank)), "", e);
            return e;
        }
        // commDestroySync synchronises the communicator's streams and frees its device memory:
        // behind a collective that never completes it never returns (abort it instead).
        let pending = |addr: usize| {
            registry()
                .comms
                .get(&addr)
                .is_some_and(|c| c.stalls.iter().any(|t| !crate::stream::is_released(*t)))
        };
        if pending(addr) {
            trace::blocked(name, Some((addr, rank)));
            while pending(addr) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
    // Stop the service thread outside the registry lock: it may be logging.
    let taken = registry().comms.get_mut(&addr).map(|c| {
        c.destroyed = true;
        (c.take_stopper(), c.rank, c.nranks, c.cuda_dev, c.bus_id)
    });
    if let Some((stopper, rank, nranks, dev, bus)) = taken {
        stopper.stop();
        let dir = {
            let reg = registry();
            reg.comms
                .get(&addr)
                .and_then(|c| reg.cliques.get(c.clique))
                .and_then(|k| k.span.as_ref())
                .map(|s| s.dir.clone())
        };
        if let Some(d) = dir {
            span::leave(&d, rank);
        }
        lines::teardown_complete(addr, rank, nranks, dev, bus, abort);
    }
    trace::call(name, Some((addr, rank)), "", SUCCESS);
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommDestroy(comm: *mut c_void) -> c_int {
    finish(comm, false)
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommAbort(comm: *mut c_void) -> c_int {
    finish(comm, true)
}

/// One ncclAllReduce of one rank.
#[derive(Clone, Copy)]
struct Call {
    comm: usize,
    send: u64,
    recv: u64,
    count: usize,
    stream: usize,
}

thread_local! {
    /// ncclGroupDepth and the group's operations are per thread in NCCL (group.cc).
    static GROUP: RefCell<(u32, Vec<Call>)> = const { RefCell::new((0, Vec::new())) };
}

#[no_mangle]
pub unsafe extern "C" fn ncclGroupStart() -> c_int {
    GROUP.with(|g| g.borrow_mut().0 += 1);
    trace::call("ncclGroupStart", None, "", SUCCESS);
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn ncclGroupEnd() -> c_int {
    let calls = GROUP.with(|g| {
        let mut g = g.borrow_mut();
        if g.0 == 0 {
            return None;
        }
        g.0 -= 1;
        Some(if g.0 == 0 {
            std::mem::take(&mut g.1)
        } else {
            Vec::new()
        })
    });
    let rc = match calls {
        None => {
            log::warn(
                "group.cc",
                lines::group_line(version()),
                "ncclGroupEnd: not in a group call.",
            );
            INVALID_USAGE
        }
        Some(calls) if calls.is_empty() => SUCCESS,
        Some(calls) => launch(calls),
    };
    trace::call("ncclGroupEnd", None, "", rc);
    rc
}

#[no_mangle]
pub unsafe extern "C" fn ncclAllReduce(
    send: *const c_void,
    recv: *mut c_void,
    count: usize,
    datatype: c_int,
    op: c_int,
    comm: *mut c_void,
    stream: *mut c_void,
) -> c_int {
    let call = Call {
        comm: comm as usize,
        send: send as u64,
        recv: recv as u64,
        count,
        stream: stream as usize,
    };
    let rc = (|| {
        comm_check(comm, "AllReduce")?;
        ensure_ready(comm)?;
        // float32 sum only: what rigdoctor asks for (other types and ops are not emulated).
        if datatype != FLOAT32 || op != SUM {
            return Err(INVALID_ARGUMENT);
        }
        // ArgsCheck -> CudaPtrCheck (misc/argcheck.cc).
        for (what, p) in [("sendbuff", call.send), ("recvbuff", call.recv)] {
            if count > 0 && state().resolve(p, count * 4).is_err() {
                log::warn(
                    "misc/argcheck.cc",
                    14,
                    &format!("AllReduce : {what} {p:#x} is not a valid pointer"),
                );
                return Err(INVALID_ARGUMENT);
            }
        }
        let grouped = GROUP.with(|g| {
            let mut g = g.borrow_mut();
            if g.0 > 0 {
                g.1.push(call);
                true
            } else {
                false
            }
        });
        if grouped {
            Ok(())
        } else {
            match launch(vec![call]) {
                SUCCESS => Ok(()),
                e => Err(e),
            }
        }
    })()
    .err()
    .unwrap_or(SUCCESS);
    let who = rank_of(comm).map(|r| (comm as usize, r));
    trace::call("ncclAllReduce", who, &format!("count={count}"), rc);
    rc
}

/// Collectives launched on some ranks and waiting for the others, per clique: the k-th
/// collective of every rank is one all-reduce.
struct Open {
    clique: usize,
    /// Each rank's call and the stall token of its kernel.
    calls: Vec<(Call, u64)>,
}

static OPEN: std::sync::Mutex<Vec<Open>> = std::sync::Mutex::new(Vec::new());
static TOKENS: AtomicU64 = AtomicU64::new(1);

/// Launch the calls (a group's, or one outside a group): each rank's kernel goes on its
/// stream and stays there until every rank of its clique has launched the same collective.
fn launch(calls: Vec<Call>) -> c_int {
    let v = version();
    let f = fault();
    if f == "error" {
        // The kernel launch fails: CUDACHECK / CUCHECK of enqueue.cc.
        let text = if v >= 22600 {
            "Cuda failure 209 'no kernel image is available for execution on the device'"
        } else {
            "Cuda failure 'no kernel image is available for execution on the device'"
        };
        log::warn("enqueue.cc", lines::launch_line(v), text);
        return UNHANDLED_CUDA_ERROR;
    }
    // Runtime connection of each clique at its first collective, in a thread per rank.
    let mut cliques: Vec<usize> = Vec::new();
    {
        let reg = registry();
        for c in &calls {
            if let Some(k) = reg.comms.get(&c.comm).map(|c| c.clique) {
                if !cliques.contains(&k) {
                    cliques.push(k);
                }
            }
        }
    }
    for &k in &cliques {
        let (topo, devs, mine) = {
            let mut reg = registry();
            if reg.cliques[k].connected {
                continue;
            }
            reg.cliques[k].connected = true;
            let mine = reg.cliques[k].span.as_ref().map(|s| s.rank);
            (
                topo_of(&reg.cliques[k], &reg),
                reg.cliques[k].devs.clone(),
                mine,
            )
        };
        match mine {
            Some(r) => topo.connect_rings(r),
            None => per_rank_threads(&devs, &|r| topo.connect_rings(r)),
        }
    }
    for call in calls {
        let Some((clique, rank)) = registry().comms.get(&call.comm).map(|c| (c.clique, c.rank))
        else {
            continue;
        };
        let n = registry().cliques[clique].comms.len();
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        let rank_of_call = |c: &Call| registry().comms.get(&c.comm).map(|x| x.rank);
        let slot = open.iter().position(|o| {
            o.clique == clique && !o.calls.iter().any(|(c, _)| rank_of_call(c) == Some(rank))
        });
        let idx = match slot {
            Some(i) => i,
            None => {
                open.push(Open {
                    clique,
                    calls: Vec::new(),
                });
                open.len() - 1
            }
        };
        let token = TOKENS.fetch_add(1, Ordering::SeqCst);
        open[idx].calls.push((call, token));
        let (devs, hosts) = {
            let reg = registry();
            (
                reg.cliques[clique].devs.clone(),
                reg.cliques[clique].hosts.clone(),
            )
        };
        let secs = seconds(&devs, &hosts, call.count * 4);
        {
            let mut s = state();
            crate::stream::enqueue_stall(&mut s, call.stream as *mut c_void, token);
            crate::stream::enqueue_delay(&mut s, call.stream as *mut c_void, secs);
        }
        if let Some(c) = registry().comms.get_mut(&call.comm) {
            c.stalls.push(token);
        }
        if open[idx].calls.len() == n {
            let done = open.remove(idx);
            drop(open);
            let queue = registry().cliques[clique]
                .span
                .as_ref()
                .map(|s| s.queue.clone());
            match queue {
                // The other ranks are processes of their own: the exchanger meets them.
                Some(q) => {
                    for (c, t) in done.calls {
                        let _ = q.send((c.send, c.recv, c.count, t));
                    }
                }
                None => complete(done, &devs),
            }
        }
    }
    SUCCESS
}

/// Every rank launched: sum into every output, then let the streams go on, unless the fault
/// keeps the collective from ever completing.
fn complete(done: Open, devs: &[c_int]) {
    let n = devs.len();
    let f = Some(fault())
        .filter(|f| f == "hang" || f == "wrong" || f == "async-error")
        .or(hop_fault(devs, &vec![0; devs.len()]))
        .unwrap_or_else(|| "none".into());
    let mut calls: Vec<(usize, Call)> = done
        .calls
        .iter()
        .filter_map(|(c, _)| registry().comms.get(&c.comm).map(|x| (x.rank, *c)))
        .collect();
    calls.sort_by_key(|(r, _)| *r);
    if f != "hang" && f != "async-error" {
        let count = calls.first().map_or(0, |(_, c)| c.count);
        let s = state();
        let mut sum = vec![0f32; count];
        for (_, c) in &calls {
            if let Ok((_, p)) = s.resolve(c.send, c.count * 4) {
                // SAFETY: resolved inside a live allocation of count floats.
                let src = unsafe { std::slice::from_raw_parts(p as *const f32, c.count) };
                for (a, b) in sum.iter_mut().zip(src) {
                    *a += *b;
                }
            }
        }
        for (rank, c) in &calls {
            if let Ok((_, p)) = s.resolve(c.recv, c.count * 4) {
                // SAFETY: as above, the output buffer.
                let dst = unsafe { std::slice::from_raw_parts_mut(p as *mut f32, c.count) };
                dst.copy_from_slice(&sum[..c.count.min(count)]);
                if f == "wrong" && *rank == n - 1 && c.count > 5 {
                    dst[5] += 1.0;
                }
            }
        }
        drop(s);
        let mut reg = registry();
        for (c, token) in &done.calls {
            crate::stream::release_stall(*token);
            if let Some(x) = reg.comms.get_mut(&c.comm) {
                x.stalls.retain(|t| t != token);
            }
        }
        return;
    }
    if f == "async-error" {
        // A peer's connection drops: each rank's proxy reports it (misc/socket.cc, then
        // proxy.cc's "-> 6 [Progress Thread]"), ncclCommGetAsyncError answers ncclRemoteError.
        let v = version();
        let reg = registry();
        for (_, c) in &calls {
            if let Some(x) = reg.comms.get(&c.comm) {
                x.fail_async(
                    REMOTE_ERROR,
                    "misc/socket.cc",
                    lines::socket_line(v),
                    "socketProgress: Connection closed by remote peer 192.168.1.20<43215>".into(),
                );
            }
        }
    }
}

/// Ring all-reduce time: bytes x 2(n-1)/n at the slowest hop's bus bandwidth (the rig's
/// `nccl.busbw_gbps`, else 85% of the slowest ring hop by the transport NCCL chose for it:
/// a P2P hop at the pair's P2P copy rate, SHM at the rate of a copy staged through host
/// memory, the socket transport at `nccl.socket_gbps`).
fn seconds(devs: &[c_int], hosts: &[u64], bytes: usize) -> f64 {
    let n = devs.len();
    if n < 2 {
        return 10e-6 + bytes as f64 / 800e9;
    }
    let r = rig();
    let gpus = gpus_of(devs);
    let busbw = r
        .nccl
        .as_ref()
        .and_then(|x| x.busbw_gbps)
        .unwrap_or_else(|| {
            let hop = |i: usize| -> f64 {
                let j = (i + 1) % n;
                let via = hop_via(&gpus, hosts, i, j);
                let socket = r.nccl.as_ref().map_or(2.0, |x| x.socket_gbps);
                if via == transport::Via::Net {
                    return socket;
                }
                let (Some(x), Some(y)) = (gpus[i], gpus[j]) else {
                    return 1.0;
                };
                let p2p = match via {
                    transport::Via::P2p { .. } => true,
                    transport::Via::Shm => false,
                    transport::Via::Net => return socket,
                };
                1e-9 / r.copy_seconds(Some(x), Some(y), p2p, false, 1 << 30) * (1u64 << 30) as f64
            };
            0.85 * (0..n).map(hop).fold(f64::INFINITY, f64::min)
        });
    let factor = 2.0 * (n as f64 - 1.0) / n as f64;
    10e-6 + bytes as f64 * factor / (busbw * 1e9)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn error_strings_are_nccls() {
        assert_eq!(
            error_string(1, 21805).to_str().unwrap(),
            "unhandled cuda error (run with NCCL_DEBUG=INFO for details)"
        );
        assert_eq!(
            error_string(6, 22304).to_str().unwrap(),
            "remote process exited or there was a network error"
        );
        assert_eq!(
            error_string(8, 22304).to_str().unwrap(),
            "unknown result code"
        );
        assert_eq!(error_string(8, 23003).to_str().unwrap(), "timeout");
        assert_eq!(
            error_string(99, 22304).to_str().unwrap(),
            "unknown result code"
        );
    }
}
