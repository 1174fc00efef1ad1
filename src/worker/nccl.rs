//! The NCCL step's worker side: find and load libnccl at run time, one communicator per
//! selected GPU in this process (ncclCommInitAll), or this process's one rank of a
//! communicator whose ranks are processes of their own (ncclGetUniqueId / ncclCommInitRank,
//! as DDP runs it), and an all-reduce (sum, float32) per size, timed with CUDA events and
//! checked against the expected sum on every rank.
//!
//! Lifecycle as nccl.h asks: every failure carries ncclGetLastError's text (the real cause;
//! ncclGetErrorString only says "run with NCCL_DEBUG=INFO"), ncclCommGetAsyncError is polled
//! while a collective is waited for (an asynchronous error is an error, not a hang), the
//! communicators are destroyed after a clean run and aborted after an error, and the library is
//! never unloaded: NCCL's own threads (service, proxy, RAS) may still run its code.

use super::driver_api::{device_count, DeviceBuffer, Event, Session, Stream};
use crate::facts::{CallError, Library as Lib, StepError};
use crate::measure::gpu::{AllReduceResult, NcclConfig, NcclInit, Note};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};

/// Where libnccl.so.2 is looked for, in order: `--nccl-lib`, the loader's own search
/// (LD_LIBRARY_PATH, ld.so.cache: the libnccl2 package), then the `nvidia/nccl/lib` directory
/// of the pip wheels in the active virtualenv/conda env and the usual site-packages.
pub fn candidates(explicit: Option<&str>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![PathBuf::from(p)];
    }
    let mut out = vec![PathBuf::from("libnccl.so.2"), PathBuf::from("libnccl.so")];
    let mut roots: Vec<PathBuf> = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var) {
            roots.push(PathBuf::from(v).join("lib"));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join(".local/lib"));
    }
    roots.extend(["/usr/local/lib", "/usr/lib", "/opt/conda/lib"].map(PathBuf::from));
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pythons.sort();
        for py in pythons {
            for pkgs in ["site-packages", "dist-packages"] {
                let lib = py.join(pkgs).join("nvidia/nccl/lib/libnccl.so.2");
                if lib.exists() {
                    out.push(lib);
                }
            }
        }
    }
    out
}

type GetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type CommInitAll = unsafe extern "C" fn(*mut *mut c_void, c_int, *const c_int) -> c_int;
/// NCCL_UNIQUE_ID_BYTES (nccl.h).
const UNIQUE_ID_BYTES: usize = 128;
/// ncclUniqueId (nccl.h: `typedef struct { char internal[NCCL_UNIQUE_ID_BYTES]; }`), passed
/// to ncclCommInitRank by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    internal: [u8; UNIQUE_ID_BYTES],
}
type GetUniqueId = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type CommInitRank = unsafe extern "C" fn(*mut *mut c_void, c_int, UniqueId, c_int) -> c_int;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    *mut c_void,
    *mut c_void,
) -> c_int;
type Group = unsafe extern "C" fn() -> c_int;
type ErrorString = unsafe extern "C" fn(c_int) -> *const c_char;
type LastError = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type CommFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type AsyncError = unsafe extern "C" fn(*mut c_void, *mut c_int) -> c_int;

/// ncclResult_t (nccl.h).
const NCCL_IN_PROGRESS: c_int = 7;
/// ncclResult_t's names, by value (nccl.h).
pub const RESULT_NAMES: [&str; 8] = [
    "ncclSuccess",
    "ncclUnhandledCudaError",
    "ncclSystemError",
    "ncclInternalError",
    "ncclInvalidArgument",
    "ncclInvalidUsage",
    "ncclRemoteError",
    "ncclInProgress",
];

const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;

/// The loaded library and the few functions rigdoctor calls.
pub struct Nccl {
    pub path: String,
    get_version: GetVersion,
    comm_init_all: CommInitAll,
    get_unique_id: GetUniqueId,
    comm_init_rank: CommInitRank,
    all_reduce: AllReduce,
    group_start: Group,
    group_end: Group,
    error_string: ErrorString,
    /// Since NCCL 2.13; None in older releases.
    last_error: Option<LastError>,
    comm_destroy: CommFn,
    comm_abort: CommFn,
    async_error: AsyncError,
}

impl Nccl {
    /// The first candidate that loads and has every symbol; or why none did.
    pub fn load(explicit: Option<&str>) -> Result<Nccl, StepError> {
        let mut tried = Vec::new();
        for c in candidates(explicit) {
            match Self::open(&c) {
                Ok(n) => return Ok(n),
                Err(e) => tried.push(format!("{}: {e}", c.display())),
            }
        }
        Err(StepError::NotFound {
            what: "NCCL library".into(),
            tried,
        })
    }

    fn open(path: &Path) -> Result<Nccl, String> {
        // SAFETY: loading NCCL runs its (trusted, vendor) initialisers only.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
        macro_rules! sym {
            ($name:literal, $ty:ty) => {
                // SAFETY: the type is the symbol's C signature from nccl.h.
                *unsafe { lib.get::<$ty>($name) }.map_err(|e| e.to_string())?
            };
        }
        let n = Nccl {
            get_version: sym!(b"ncclGetVersion\0", GetVersion),
            comm_init_all: sym!(b"ncclCommInitAll\0", CommInitAll),
            get_unique_id: sym!(b"ncclGetUniqueId\0", GetUniqueId),
            comm_init_rank: sym!(b"ncclCommInitRank\0", CommInitRank),
            all_reduce: sym!(b"ncclAllReduce\0", AllReduce),
            group_start: sym!(b"ncclGroupStart\0", Group),
            group_end: sym!(b"ncclGroupEnd\0", Group),
            error_string: sym!(b"ncclGetErrorString\0", ErrorString),
            comm_destroy: sym!(b"ncclCommDestroy\0", CommFn),
            comm_abort: sym!(b"ncclCommAbort\0", CommFn),
            async_error: sym!(b"ncclCommGetAsyncError\0", AsyncError),
            // SAFETY: the type is ncclGetLastError's signature from nccl.h.
            last_error: unsafe { lib.get::<LastError>(b"ncclGetLastError\0") }
                .ok()
                .map(|f| *f),
            path: resolved(path),
        };
        // Never unloaded (see the module comment): the handle is leaked on purpose.
        std::mem::forget(lib);
        Ok(n)
    }

    /// `r` as a failure of `call`, with the real cause from ncclGetLastError when NCCL kept
    /// one (for `comm`, or the last global error with a null comm).
    fn check(&self, call: &str, r: c_int, comm: *mut c_void) -> Result<(), CallError> {
        if r == 0 {
            return Ok(());
        }
        Err(self.failure(call, r, comm))
    }

    fn failure(&self, call: &str, r: c_int, comm: *mut c_void) -> CallError {
        let text = |p: *const c_char| -> Option<String> {
            // SAFETY: NCCL returns NUL-terminated strings it owns, or null.
            (!p.is_null())
                .then(|| {
                    unsafe { CStr::from_ptr(p) }
                        .to_string_lossy()
                        .trim()
                        .to_string()
                })
                .filter(|s| !s.is_empty())
        };
        // SAFETY: ncclGetLastError accepts any comm or null (nccl.h).
        let last = self.last_error.and_then(|f| text(unsafe { f(comm) }));
        // SAFETY: ncclGetErrorString returns a static string for any code.
        let generic = text(unsafe { (self.error_string)(r) });
        CallError {
            library: Lib::Nccl,
            call: call.to_string(),
            code: i64::from(r),
            name: usize::try_from(r)
                .ok()
                .and_then(|i| RESULT_NAMES.get(i))
                .map(|n| n.to_string()),
            // The last error is the cause; the generic text only when it says more than
            // "run with NCCL_DEBUG=..." (which rigdoctor already does).
            text: match (last, generic) {
                (Some(l), Some(g)) if !g.contains("NCCL_DEBUG") => Some(format!("{l}: {g}")),
                (Some(l), _) => Some(l),
                (None, g) => g,
            },
            sticky: false,
        }
    }

    /// "2.18.5" from ncclGetVersion (code = major*10000 + minor*100 + patch since 2.9).
    pub fn version(&self) -> Result<String, CallError> {
        let mut v = 0;
        // SAFETY: valid out pointer.
        let r = unsafe { (self.get_version)(&mut v) };
        self.check("ncclGetVersion", r, std::ptr::null_mut())?;
        Ok(if v >= 10000 {
            format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
        } else {
            format!("{}.{}.{}", v / 1000, (v % 1000) / 100, v % 100)
        })
    }
}

/// The file the loader mapped for `path` (a bare soname resolves through /proc/self/maps).
fn resolved(path: &Path) -> String {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("libnccl");
    mapped_file(name).unwrap_or_else(|| path.display().to_string())
}

/// The first file this process mapped whose path contains `needle` (from /proc/self/maps):
/// which library the loader really chose for a bare soname.
fn mapped_file(needle: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains(needle))
        .map(String::from)
}

/// One communicator per rank of this process, kept for the worker's life (or until
/// [`Comms::close`]): every rank (ncclCommInitAll), or rank `first` of `nranks`.
pub struct Comms {
    nccl: Nccl,
    devices: Vec<i32>,
    comms: Vec<*mut c_void>,
    first: usize,
    nranks: usize,
}

/// A unique id as the protocol carries it: hex.
fn id_hex(id: &UniqueId) -> String {
    id.internal.iter().map(|b| format!("{b:02x}")).collect()
}

fn id_from_hex(s: &str) -> Option<UniqueId> {
    if s.len() != UNIQUE_ID_BYTES * 2 || !s.is_ascii() {
        return None;
    }
    let mut id = UniqueId {
        internal: [0; UNIQUE_ID_BYTES],
    };
    for (i, b) in id.internal.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

impl Comms {
    /// Destroy the communicators after a clean run, abort them after an error (nccl.h:
    /// ncclCommAbort for a communicator that may have outstanding operations).
    pub fn close(self, clean: bool) -> Result<(), CallError> {
        let (f, call) = if clean {
            (self.nccl.comm_destroy, "ncclCommDestroy")
        } else {
            (self.nccl.comm_abort, "ncclCommAbort")
        };
        let mut first = Ok(());
        for &c in &self.comms {
            // SAFETY: a communicator made by ncclCommInitAll, closed once.
            let r = unsafe { f(c) };
            if first.is_ok() {
                first = self.nccl.check(call, r, std::ptr::null_mut());
            }
        }
        first
    }

    /// The first asynchronous error any communicator reports (ncclCommGetAsyncError).
    fn async_error(&self) -> Option<CallError> {
        for &c in &self.comms {
            let mut state: c_int = 0;
            // SAFETY: a live communicator and a valid out pointer.
            let r = unsafe { (self.nccl.async_error)(c, &mut state) };
            if r != 0 {
                return Some(self.nccl.failure("ncclCommGetAsyncError", r, c));
            }
            if state != 0 && state != NCCL_IN_PROGRESS {
                return Some(self.nccl.failure("NCCL (asynchronous error)", state, c));
            }
        }
        None
    }
}

/// `nccl-init`: load NCCL, create the communicators. Once the library is loaded the answer is
/// always an [`NcclInit`] (with the init error, if any), so the version is never lost.
pub fn init(
    session: &mut Session,
    cfg: &NcclConfig,
) -> Result<(NcclInit, Option<Comms>), StepError> {
    // Without a usable CUDA driver NCCL cannot run either; that is cuda-unavailable's finding,
    // not an NCCL one (device_count says "not run").
    let count = device_count()?;
    let devices: Vec<i32> = cfg.devices.clone().unwrap_or_else(|| (0..count).collect());
    if let Some(bad) = devices.iter().find(|&&d| d < 0 || d >= count) {
        return Err(StepError::invalid(format!(
            "--devices: there is no CUDA device {bad}"
        )));
    }
    let (nccl, mut answer) = load(cfg, &devices)?;
    for &d in &devices {
        // NCCL uses the primary contexts too; creating them first keeps ours the same.
        if let Err(e) = session.context(d) {
            answer.error = Some(StepError::Call(e.at("cuDevicePrimaryCtxRetain")));
            return Ok((answer, None));
        }
    }
    let mut comms = vec![std::ptr::null_mut(); devices.len()];
    // SAFETY: one out slot per device, as counted.
    let r = unsafe {
        (nccl.comm_init_all)(comms.as_mut_ptr(), devices.len() as c_int, devices.as_ptr())
    };
    let nranks = devices.len();
    let comms = Comms {
        nccl,
        nranks,
        devices,
        comms,
        first: 0,
    };
    Ok(joined(answer, "ncclCommInitAll", r, comms))
}

/// The end of either init: the communicators when `call` returned success, else its error in
/// the answer (the communicators' slots are then not NCCL's to destroy).
fn joined(mut answer: NcclInit, call: &str, r: c_int, comms: Comms) -> (NcclInit, Option<Comms>) {
    match comms.nccl.check(call, r, std::ptr::null_mut()) {
        Ok(()) => (answer, Some(comms)),
        Err(e) => {
            answer.error = Some(StepError::Call(e));
            (answer, None)
        }
    }
}

/// Load NCCL and read its version: the answer of either init.
fn load(cfg: &NcclConfig, devices: &[i32]) -> Result<(Nccl, NcclInit), StepError> {
    let nccl = Nccl::load(cfg.library.as_deref())?;
    let version = nccl.version()?;
    let answer = NcclInit {
        library: nccl.path.clone(),
        version,
        devices: devices.to_vec(),
        error: None,
    };
    Ok((nccl, answer))
}

/// `nccl-rank`: this process's rank of a communicator of one process per GPU. Rank 0 makes
/// the unique id and notes it before it joins (ncclCommInitRank blocks until every rank has).
pub fn init_rank(
    session: &mut Session,
    cfg: &NcclConfig,
    (rank, nranks, device): (usize, usize, i32),
    id: Option<&str>,
    note: &mut dyn FnMut(Note),
) -> Result<(NcclInit, Option<Comms>), StepError> {
    let count = device_count()?;
    if device < 0 || device >= count {
        return Err(StepError::invalid(format!(
            "--devices: there is no CUDA device {device}"
        )));
    }
    let (nccl, mut answer) = load(cfg, &[device])?;
    let unique = match id {
        Some(hex) => id_from_hex(hex).ok_or_else(|| {
            StepError::invalid("the NCCL unique id from rank 0 is not 128 bytes of hex")
        })?,
        None => {
            let mut u = UniqueId {
                internal: [0; UNIQUE_ID_BYTES],
            };
            // SAFETY: a valid out pointer to a ncclUniqueId.
            let r = unsafe { (nccl.get_unique_id)(&mut u) };
            if let Err(e) = nccl.check("ncclGetUniqueId", r, std::ptr::null_mut()) {
                answer.error = Some(StepError::Call(e));
                return Ok((answer, None));
            }
            note(Note::NcclUniqueId(id_hex(&u)));
            u
        }
    };
    // ncclCommInitRank takes the device current on the calling thread (cudaGetDevice), as DDP
    // sets it with torch.cuda.set_device.
    if let Err(e) = session.bind(device) {
        answer.error = Some(StepError::Call(e.at("cuCtxSetCurrent")));
        return Ok((answer, None));
    }
    note(Note::Stage(format!(
        "ncclCommInitRank: rank {rank} of {nranks} joins"
    )));
    let mut comm = std::ptr::null_mut();
    // SAFETY: one out slot; the id by value as nccl.h declares it.
    let r = unsafe { (nccl.comm_init_rank)(&mut comm, nranks as c_int, unique, rank as c_int) };
    let comms = Comms {
        nccl,
        devices: vec![device],
        comms: vec![comm],
        first: rank,
        nranks,
    };
    Ok(joined(answer, "ncclCommInitRank", r, comms))
}

/// Why the sweep stopped.
pub enum SweepError {
    Call(CallError),
    /// No completion before the sweep's own deadline.
    TimedOut(f64),
}

impl From<CallError> for SweepError {
    fn from(c: CallError) -> Self {
        SweepError::Call(c)
    }
}

/// The sweep: every size of the config, each result also sent as a note.
pub fn sweep(
    session: &mut Session,
    c: &Comms,
    cfg: &NcclConfig,
    note: &mut dyn FnMut(Note),
) -> Result<Vec<AllReduceResult>, SweepError> {
    let mut results = Vec::new();
    let started = std::time::Instant::now();
    let deadline = cfg
        .abort_after_s
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| (started + std::time::Duration::from_secs_f64(s), s));
    for &bytes in &cfg.sizes {
        let r = all_reduce(session, c, bytes, cfg, deadline, note)?;
        note(Note::NcclResult(r.clone()));
        results.push(r);
    }
    Ok(results)
}

/// Element `i` of rank `r`'s input: small integers, so every sum is exact in float32.
fn input(rank: usize, i: usize) -> f32 {
    (rank + 1) as f32 + (i % 7) as f32
}

fn expected(ranks: usize, i: usize) -> f32 {
    (ranks * (ranks + 1) / 2) as f32 + (ranks * (i % 7)) as f32
}

/// `nccl-allreduce BYTES`: warm-up, timed iterations, then every rank's result checked.
pub fn all_reduce(
    session: &mut Session,
    c: &Comms,
    bytes: u64,
    cfg: &NcclConfig,
    deadline: Option<(std::time::Instant, f64)>,
    note: &mut dyn FnMut(Note),
) -> Result<AllReduceResult, SweepError> {
    let n = c.nranks;
    let count = (bytes / 4) as usize;
    let bytes = count * 4;
    let mut ranks = Vec::new();
    note(Note::Stage(format!("{bytes} bytes: allocate")));
    for (r, &d) in c.devices.iter().enumerate() {
        session.bind(d).map_err(|e| e.at("cuCtxSetCurrent"))?;
        let send = DeviceBuffer::new(bytes.max(4)).map_err(|e| e.at("cuMemAlloc"))?;
        let recv = DeviceBuffer::new(bytes.max(4)).map_err(|e| e.at("cuMemAlloc"))?;
        let data: Vec<u8> = (0..count)
            .flat_map(|i| input(c.first + r, i).to_ne_bytes())
            .collect();
        if count > 0 {
            send.upload(&data).map_err(|e| e.at("cuMemcpyHtoD"))?;
        }
        let stream = Stream::new().map_err(|e| e.at("cuStreamCreate"))?;
        let start = Event::new().map_err(|e| e.at("cuEventCreate"))?;
        let end = Event::new().map_err(|e| e.at("cuEventCreate"))?;
        ranks.push((d, send, recv, stream, start, end));
    }
    let null = std::ptr::null_mut();
    let once = |session: &mut Session| -> Result<(), CallError> {
        let _ = session;
        // An earlier collective failed asynchronously: that is the cause, and NCCL would
        // refuse this one with a less telling error.
        if let Some(e) = c.async_error() {
            return Err(e);
        }
        // SAFETY: group calls bracket one all-reduce per rank, as NCCL requires in one thread.
        let r = unsafe { (c.nccl.group_start)() };
        c.nccl.check("ncclGroupStart", r, null)?;
        for (r, (_, send, recv, stream, _, _)) in ranks.iter().enumerate() {
            // SAFETY: buffers of `count` floats on the rank's device; its own stream and comm.
            let rc = unsafe {
                (c.nccl.all_reduce)(
                    send.ptr as *const c_void,
                    recv.ptr as *mut c_void,
                    count,
                    NCCL_FLOAT32,
                    NCCL_SUM,
                    c.comms[r],
                    stream.0 as *mut c_void,
                )
            };
            c.nccl.check("ncclAllReduce", rc, c.comms[r])?;
        }
        // SAFETY: closes the group opened above.
        let r = unsafe { (c.nccl.group_end)() };
        c.nccl.check("ncclGroupEnd", r, null)
    };
    note(Note::Stage(format!("{bytes} bytes: warm-up")));
    for _ in 0..cfg.warmup {
        once(session)?;
    }
    for (d, _, _, stream, start, _) in &ranks {
        session.bind(*d).map_err(|e| e.at("cuCtxSetCurrent"))?;
        start.record(stream).map_err(|e| e.at("cuEventRecord"))?;
    }
    note(Note::Stage(format!("{bytes} bytes: timed iterations")));
    for _ in 0..cfg.iters {
        once(session)?;
    }
    let mut ms: f64 = 0.0;
    for (d, _, _, stream, start, end) in &ranks {
        session.bind(*d).map_err(|e| e.at("cuCtxSetCurrent"))?;
        end.record(stream).map_err(|e| e.at("cuEventRecord"))?;
        while !end.done().map_err(|e| e.at("cuEventQuery"))? {
            // A collective that failed asynchronously (a peer or proxy error) never completes
            // on the stream: NCCL says so here, and the step reports it instead of hanging.
            if let Some(e) = c.async_error() {
                return Err(e.into());
            }
            if let Some((at, secs)) = deadline {
                if std::time::Instant::now() >= at {
                    return Err(SweepError::TimedOut(secs));
                }
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        ms = ms.max(end.since(start).map_err(|e| e.at("cuEventElapsedTime"))?);
    }
    note(Note::Stage(format!("{bytes} bytes: check")));
    let mut wrong = Vec::new();
    let mut got = vec![0u8; bytes.max(4)];
    for (d, _, recv, _, _, _) in &ranks {
        session.bind(*d).map_err(|e| e.at("cuCtxSetCurrent"))?;
        recv.download(&mut got).map_err(|e| e.at("cuMemcpyDtoH"))?;
        let bad = got[..bytes]
            .chunks_exact(4)
            .enumerate()
            .filter(|(i, w)| f32::from_ne_bytes([w[0], w[1], w[2], w[3]]) != expected(n, *i))
            .count();
        wrong.push(bad as u64);
    }
    Ok(AllReduceResult {
        bytes: bytes as u64,
        iters: cfg.iters,
        ms,
        wrong,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_sum_exactly() {
        for n in 1..=8 {
            for i in 0..20 {
                let s: f32 = (0..n).map(|r| input(r, i)).sum();
                assert_eq!(s, expected(n, i));
            }
        }
        assert_eq!(
            candidates(Some("/x/libnccl.so.2")),
            [PathBuf::from("/x/libnccl.so.2")]
        );
    }
}
