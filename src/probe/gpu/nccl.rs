//! The NCCL step's worker side: find and load libnccl at run time, one communicator per
//! selected GPU in this process (ncclCommInitAll), and an all-reduce (sum, float32) per size,
//! timed with CUDA events and checked against the expected sum on every rank.

use super::driver_api::{fail, DeviceBuffer, Event, Failure, Session, Stream};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};

pub const STEP_INIT: &str = "nccl-init";
pub const STEP_ALLREDUCE: &str = "nccl-allreduce";
/// The run's [`NcclConfig`] as JSON, for the worker.
pub const CONFIG_ENV: &str = "RIGDOCTOR_NCCL";

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
}

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

const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;

/// The loaded library and the few functions rigdoctor calls.
pub struct Nccl {
    _lib: libloading::Library,
    pub path: String,
    get_version: GetVersion,
    comm_init_all: CommInitAll,
    all_reduce: AllReduce,
    group_start: Group,
    group_end: Group,
    error_string: ErrorString,
}

impl Nccl {
    /// The first candidate that loads and has every symbol; or why none did.
    pub fn load(explicit: Option<&str>) -> Result<Nccl, String> {
        let mut tried = Vec::new();
        for c in candidates(explicit) {
            match Self::open(&c) {
                Ok(n) => return Ok(n),
                Err(e) => tried.push(format!("{}: {e}", c.display())),
            }
        }
        Err(format!(
            "no usable NCCL library; tried {}",
            tried.join("; ")
        ))
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
            all_reduce: sym!(b"ncclAllReduce\0", AllReduce),
            group_start: sym!(b"ncclGroupStart\0", Group),
            group_end: sym!(b"ncclGroupEnd\0", Group),
            error_string: sym!(b"ncclGetErrorString\0", ErrorString),
            path: resolved(path),
            _lib: lib,
        };
        Ok(n)
    }

    fn check(&self, call: &str, r: c_int) -> Result<(), String> {
        if r == 0 {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static string for any code.
        let s = unsafe { (self.error_string)(r) };
        let text = if s.is_null() {
            String::new()
        } else {
            // SAFETY: non-null, NUL-terminated static string.
            unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
        };
        Err(format!("{call}: ncclResult {r} ({text})"))
    }

    /// "2.18.5" from ncclGetVersion (code = major*10000 + minor*100 + patch since 2.9).
    pub fn version(&self) -> Result<String, String> {
        let mut v = 0;
        // SAFETY: valid out pointer.
        self.check("ncclGetVersion", unsafe { (self.get_version)(&mut v) })?;
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
    super::driver_api::mapped_file(name).unwrap_or_else(|| path.display().to_string())
}

/// One communicator per rank, kept for the worker's life.
pub struct Comms {
    nccl: Nccl,
    devices: Vec<i32>,
    comms: Vec<*mut c_void>,
}

/// `nccl-init`: load NCCL, create the communicators; the all-reduce steps to run next.
pub fn init(
    session: &mut Session,
    cfg: &NcclConfig,
) -> Result<(Value, Comms, Vec<String>), String> {
    // Without a usable CUDA driver NCCL cannot run either; that is cuda-unavailable's finding,
    // not an NCCL one.
    super::p2p::init().map_err(|e| {
        format!(
            "{}CUDA is not usable: {e}",
            crate::measure::watchdog::NOT_RUN
        )
    })?;
    let count = cudarc::driver::result::device::get_count()
        .map_err(|e| format!("cuDeviceGetCount: {}", super::driver_api::error_name(&e)))?;
    let devices: Vec<i32> = cfg.devices.clone().unwrap_or_else(|| (0..count).collect());
    if let Some(bad) = devices.iter().find(|&&d| d < 0 || d >= count) {
        return Err(format!("--devices: there is no CUDA device {bad}"));
    }
    let nccl = Nccl::load(cfg.library.as_deref())?;
    let version = nccl.version()?;
    for &d in &devices {
        // NCCL uses the primary contexts too; creating them first keeps ours the same.
        session
            .context(d)
            .map_err(|e| fail("cuDevicePrimaryCtxRetain", e).message)?;
    }
    let mut comms = vec![std::ptr::null_mut(); devices.len()];
    // SAFETY: one out slot per device, as counted.
    let r = unsafe {
        (nccl.comm_init_all)(comms.as_mut_ptr(), devices.len() as c_int, devices.as_ptr())
    };
    nccl.check("ncclCommInitAll", r)?;
    let value = json!({ "library": nccl.path, "version": version, "devices": devices });
    // One step for the sweep: a hung size ends it after one deadline, the sizes done before
    // it are kept from the step's notes.
    let steps = vec![STEP_ALLREDUCE.to_string()];
    Ok((
        value,
        Comms {
            nccl,
            devices,
            comms,
        },
        steps,
    ))
}

/// The sweep: every size of the config, each result also sent as a note `{"result": ..}`.
pub fn sweep(
    session: &mut Session,
    c: &Comms,
    cfg: &NcclConfig,
    note: &mut dyn FnMut(Value),
) -> Result<Value, Failure> {
    let mut results = Vec::new();
    for &bytes in &cfg.sizes {
        let r = all_reduce(session, c, bytes, cfg, note)?;
        note(json!({ "result": r }));
        results.push(r);
    }
    Ok(json!(results))
}

/// Element `i` of rank `r`'s input: small integers, so every sum is exact in float32.
fn input(rank: usize, i: usize) -> f32 {
    (rank + 1) as f32 + (i % 7) as f32
}

fn expected(ranks: usize, i: usize) -> f32 {
    (ranks * (ranks + 1) / 2) as f32 + (ranks * (i % 7)) as f32
}

/// What one all-reduce size gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllReduceResult {
    pub bytes: u64,
    pub iters: u32,
    /// Milliseconds of the timed iterations, the slowest rank's events.
    pub ms: f64,
    /// Elements not equal to the expected sum, per rank.
    pub wrong: Vec<u64>,
}

/// `nccl-allreduce BYTES`: warm-up, timed iterations, then every rank's result checked.
pub fn all_reduce(
    session: &mut Session,
    c: &Comms,
    bytes: u64,
    cfg: &NcclConfig,
    note: &mut dyn FnMut(Value),
) -> Result<AllReduceResult, Failure> {
    let n = c.devices.len();
    let count = (bytes / 4) as usize;
    let bytes = count * 4;
    let mut ranks = Vec::new();
    note(json!({ "stage": format!("{bytes} bytes: allocate") }));
    for (r, &d) in c.devices.iter().enumerate() {
        session.bind(d).map_err(|e| fail("cuCtxSetCurrent", e))?;
        let send = DeviceBuffer::new(bytes.max(4)).map_err(|e| fail("cuMemAlloc", e))?;
        let recv = DeviceBuffer::new(bytes.max(4)).map_err(|e| fail("cuMemAlloc", e))?;
        let data: Vec<u8> = (0..count).flat_map(|i| input(r, i).to_ne_bytes()).collect();
        if count > 0 {
            send.upload(&data).map_err(|e| fail("cuMemcpyHtoD", e))?;
        }
        let stream = Stream::new().map_err(|e| fail("cuStreamCreate", e))?;
        let start = Event::new().map_err(|e| fail("cuEventCreate", e))?;
        let end = Event::new().map_err(|e| fail("cuEventCreate", e))?;
        ranks.push((d, send, recv, stream, start, end));
    }
    let once = |session: &mut Session| -> Result<(), Failure> {
        let _ = session;
        // SAFETY: group calls bracket one all-reduce per rank, as NCCL requires in one thread.
        c.nccl
            .check("ncclGroupStart", unsafe { (c.nccl.group_start)() })
            .map_err(nccl_fail)?;
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
            c.nccl.check("ncclAllReduce", rc).map_err(nccl_fail)?;
        }
        // SAFETY: closes the group opened above.
        c.nccl
            .check("ncclGroupEnd", unsafe { (c.nccl.group_end)() })
            .map_err(nccl_fail)
    };
    note(json!({ "stage": format!("{bytes} bytes: warm-up") }));
    for _ in 0..cfg.warmup {
        once(session)?;
    }
    for (d, _, _, stream, start, _) in &ranks {
        session.bind(*d).map_err(|e| fail("cuCtxSetCurrent", e))?;
        start.record(stream).map_err(|e| fail("cuEventRecord", e))?;
    }
    note(json!({ "stage": format!("{bytes} bytes: timed iterations") }));
    for _ in 0..cfg.iters {
        once(session)?;
    }
    let mut ms: f64 = 0.0;
    for (d, _, _, stream, start, end) in &ranks {
        session.bind(*d).map_err(|e| fail("cuCtxSetCurrent", e))?;
        end.record(stream).map_err(|e| fail("cuEventRecord", e))?;
        while !end.done().map_err(|e| fail("cuEventQuery", e))? {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        ms = ms.max(
            end.since(start)
                .map_err(|e| fail("cuEventElapsedTime", e))?,
        );
    }
    note(json!({ "stage": format!("{bytes} bytes: check") }));
    let mut wrong = Vec::new();
    let mut got = vec![0u8; bytes.max(4)];
    for (d, _, recv, _, _, _) in &ranks {
        session.bind(*d).map_err(|e| fail("cuCtxSetCurrent", e))?;
        recv.download(&mut got)
            .map_err(|e| fail("cuMemcpyDtoH", e))?;
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

fn nccl_fail(message: String) -> Failure {
    Failure {
        message,
        sticky: false,
    }
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
