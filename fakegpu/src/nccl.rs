//! The NCCL calls rigdoctor makes, over the fake device memory: all-reduce really sums the
//! ranks' float32 buffers (so rigdoctor's check is real), its time goes on each rank's stream
//! clock from the rig's model, and with NCCL_DEBUG=INFO the init prints the version and
//! channel lines in NCCL's own format on stdout, where NCCL writes them.

use crate::memory::state;
use crate::rig;
use std::ffi::{c_char, c_int, c_void};
use std::sync::Mutex;

const SUCCESS: c_int = 0;
const INVALID_ARGUMENT: c_int = 4;

/// CUDA ordinal of each rank, in rank order.
static COMMS: Mutex<Vec<c_int>> = Mutex::new(Vec::new());
/// (rank, send, recv, count, stream) of the calls inside the open group.
type Call = (usize, u64, u64, usize, usize);
static GROUP: Mutex<(u32, Vec<Call>)> = Mutex::new((0, Vec::new()));

fn version() -> c_int {
    rig().nccl.as_ref().map_or(21805, |n| n.version)
}

#[no_mangle]
pub unsafe extern "C" fn ncclGetVersion(v: *mut c_int) -> c_int {
    *v = version();
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn ncclGetErrorString(r: c_int) -> *const c_char {
    match r {
        1 => c"unhandled cuda error (run with NCCL_DEBUG=INFO for details)".as_ptr(),
        _ => c"invalid argument (fake NCCL)".as_ptr(),
    }
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommInitAll(
    comms: *mut *mut c_void,
    n: c_int,
    devs: *const c_int,
) -> c_int {
    if n <= 0 || comms.is_null() || devs.is_null() {
        return INVALID_ARGUMENT;
    }
    let list: Vec<c_int> = (0..n as usize).map(|i| *devs.add(i)).collect();
    for r in 0..n as usize {
        *comms.add(r) = (r + 1) as *mut c_void;
    }
    if std::env::var("NCCL_DEBUG").is_ok_and(|v| v.eq_ignore_ascii_case("INFO")) {
        print_channels(&list);
    }
    *COMMS.lock().unwrap_or_else(|e| e.into_inner()) = list;
    SUCCESS
}

/// GPU index of CUDA ordinal `d`.
fn gpu(d: c_int) -> Option<usize> {
    crate::cuda::gpu_index(d).ok()
}

/// How NCCL would connect rank r to r+1: P2P when the rig grants it (and NCCL_P2P_DISABLE is
/// not set), else shared memory through the host.
fn p2p_between(a: c_int, b: c_int) -> bool {
    let off = std::env::var("NCCL_P2P_DISABLE").is_ok_and(|v| v == "1");
    !off && match (gpu(a), gpu(b)) {
        (Some(x), Some(y)) => rig().pair(x, y).is_some_and(|p| p.access),
        _ => false,
    }
}

fn print_channels(devs: &[c_int]) {
    let v = version();
    let pid = std::process::id();
    log_line(format!(
        "fakehost:{pid}:{pid} [0] NCCL INFO NCCL version {}.{}.{}+cuda12.4",
        v / 10000,
        (v % 10000) / 100,
        v % 100
    ));
    let n = devs.len();
    if n < 2 {
        return;
    }
    for c in 0..2 {
        for r in 0..n {
            let next = (r + 1) % n;
            let via = if p2p_between(devs[r], devs[next]) {
                "P2P/IPC/read"
            } else {
                "SHM/direct/direct"
            };
            log_line(format!(
                "fakehost:{pid}:{pid} [{}] NCCL INFO Channel {c:02}/02 : {r}[{}] -> {next}[{}] via {via}",
                devs[r], devs[r], devs[next]
            ));
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn ncclGroupStart() -> c_int {
    GROUP.lock().unwrap_or_else(|e| e.into_inner()).0 += 1;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn ncclGroupEnd() -> c_int {
    let calls = {
        let mut g = GROUP.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(1);
        if g.0 > 0 {
            return SUCCESS;
        }
        std::mem::take(&mut g.1)
    };
    run(calls)
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
    let n = COMMS.lock().unwrap_or_else(|e| e.into_inner()).len();
    let rank = (comm as usize).wrapping_sub(1);
    // float32 sum only: what rigdoctor asks for.
    if datatype != 7 || op != 0 || rank >= n {
        return INVALID_ARGUMENT;
    }
    let call = (rank, send as u64, recv as u64, count, stream as usize);
    let mut g = GROUP.lock().unwrap_or_else(|e| e.into_inner());
    g.1.push(call);
    if g.0 == 0 && g.1.len() == n {
        let calls = std::mem::take(&mut g.1);
        drop(g);
        return run(calls);
    }
    SUCCESS
}

/// Sum every rank's input into every rank's output, and charge the model's time.
unsafe fn run(calls: Vec<Call>) -> c_int {
    let devs = COMMS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let n = devs.len();
    if calls.len() != n {
        return INVALID_ARGUMENT;
    }
    // A ring hop over a P2P pair whose transfers hang or corrupt does the same to NCCL.
    let hop_fault = (0..n).find_map(|i| {
        let (a, b) = (devs[i], devs[(i + 1) % n]);
        let pair = rig().pair(gpu(a)?, gpu(b)?)?;
        if n < 2 || !p2p_between(a, b) {
            return None;
        }
        match pair.fault.as_str() {
            "hang" | "enable-hangs" => Some("hang".to_string()),
            "corrupt" | "zeros" | "corrupt-always" => Some("wrong".to_string()),
            _ => None,
        }
    });
    let fault = rig()
        .nccl
        .as_ref()
        .map(|x| x.fault.clone())
        .filter(|f| f != "none")
        .or(hop_fault)
        .unwrap_or_else(|| "none".into());
    if fault == "error" {
        // ncclUnhandledCudaError, as a collective whose kernel faulted returns.
        return 1;
    }
    if fault == "hang" {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    let count = calls[0].3;
    let mut s = state();
    let mut sum = vec![0f32; count];
    for &(_, send, _, c, _) in &calls {
        let Ok((_, p)) = s.resolve(send, c * 4) else {
            return INVALID_ARGUMENT;
        };
        let src = std::slice::from_raw_parts(p as *const f32, c);
        for (a, b) in sum.iter_mut().zip(src) {
            *a += *b;
        }
    }
    for &(rank, _, recv, c, _) in &calls {
        let Ok((_, p)) = s.resolve(recv, c * 4) else {
            return INVALID_ARGUMENT;
        };
        let dst = std::slice::from_raw_parts_mut(p as *mut f32, c);
        dst.copy_from_slice(&sum);
        if fault == "wrong" && rank == n - 1 && c > 5 {
            dst[5] += 1.0;
        }
    }
    let secs = seconds(&devs, count * 4);
    for &(_, _, _, _, stream) in &calls {
        crate::stream::enqueue_delay(&mut s, stream as *mut c_void, secs);
    }
    SUCCESS
}

/// Ring all-reduce time: bytes x 2(n-1)/n at the slowest hop's bus bandwidth (the rig's
/// `nccl.busbw_gbps`, else 85% of the slowest neighbour link: P2P where granted, else staged).
fn seconds(devs: &[c_int], bytes: usize) -> f64 {
    let n = devs.len();
    if n < 2 {
        return 10e-6 + bytes as f64 / 800e9;
    }
    let r = rig();
    let busbw = r
        .nccl
        .as_ref()
        .and_then(|x| x.busbw_gbps)
        .unwrap_or_else(|| {
            let hop = |a: c_int, b: c_int| -> f64 {
                let (Some(x), Some(y)) = (gpu(a), gpu(b)) else {
                    return 1.0;
                };
                let p2p = p2p_between(a, b);
                1e-9 / r.copy_seconds(Some(x), Some(y), p2p, false, 1 << 30) * (1u64 << 30) as f64
            };
            0.85 * (0..n)
                .map(|i| hop(devs[i], devs[(i + 1) % n]))
                .fold(f64::INFINITY, f64::min)
        });
    let factor = 2.0 * (n as f64 - 1.0) / n as f64;
    10e-6 + bytes as f64 * factor / (busbw * 1e9)
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommDestroy(_comm: *mut c_void) -> c_int {
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommAbort(_comm: *mut c_void) -> c_int {
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommGetAsyncError(_comm: *mut c_void, state: *mut c_int) -> c_int {
    *state = SUCCESS;
    SUCCESS
}

/// NCCL_DEBUG_FILE (with %h and %p expanded) when set, else stdout.
fn log_line(line: String) {
    use std::io::Write;
    match std::env::var("NCCL_DEBUG_FILE") {
        Ok(p) => {
            let p = p
                .replace("%h", "fakehost")
                .replace("%p", &std::process::id().to_string());
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                let _ = writeln!(f, "{line}");
            }
        }
        Err(_) => println!("{line}"),
    }
}
