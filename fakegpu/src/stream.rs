//! Streams and events with modelled time. Work queued on a stream runs when something waits
//! for it (an event query or a synchronisation); each copy advances the stream's clock by what
//! the rig's bandwidth model says it takes, so CUDA events report times consistent with the
//! model while the tests run in milliseconds. The first query of an event with work pending
//! answers NOT_READY: the copies are "in flight", and NVML reads the links under load then.

use crate::cuda::{CUresult, INVALID_VALUE, SUCCESS};
use crate::memory::{ret, state, transfer, State, HOST};
use crate::rig;
use std::ffi::{c_uint, c_void};

pub const NOT_READY: CUresult = 600;

/// What a kernel launch amounts to, when it is not a copy.
#[derive(Clone, Copy)]
pub enum Launch {
    /// spin_wait(flag, timeout_ns).
    Spin(u64, u64),
    /// A fault that makes the context sticky-lost.
    Fault(CUresult),
}

#[derive(Clone, PartialEq)]
enum Op {
    Spin {
        flag: u64,
        timeout_ns: u64,
    },
    Copy {
        from: usize,
        to: usize,
        p2p: bool,
        dst: usize,
        src: usize,
        len: usize,
        secs: f64,
    },
    Record(usize),
    Fault(CUresult),
    /// Time without a copy (a collective whose data was already moved).
    Delay(f64),
    /// Work that does not complete until `release_stall(token)` (a hung NCCL kernel): it and
    /// everything queued after it stay pending.
    Stall(u64),
}

/// Stall tokens released (fake NCCL: the collective completed, or its communicator aborted).
static RELEASED: std::sync::Mutex<std::collections::BTreeSet<u64>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Whether the work stalled on `token` may complete.
pub fn is_released(token: u64) -> bool {
    RELEASED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&token)
}

/// Let the work stalled on `token` complete.
pub fn release_stall(token: u64) {
    RELEASED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(token);
}

pub struct Stream {
    gpu: usize,
    clock: f64,
    queue: Vec<Op>,
    /// An event of this stream was queried once while work was pending.
    polled: bool,
}

pub struct EventState {
    stream: Option<usize>,
    time: Option<f64>,
}

fn gpu_opt(g: usize) -> Option<usize> {
    (g != HOST).then_some(g)
}

/// Queue a copy on `stream` when it is one of ours; false means "run it now" (null stream).
#[allow(clippy::too_many_arguments)]
pub unsafe fn enqueue_copy(
    s: &mut State,
    stream: *mut c_void,
    from: usize,
    to: usize,
    p2p: bool,
    sm: bool,
    dst: *mut u8,
    src: *mut u8,
    len: usize,
) -> bool {
    let Some(st) = s.streams.get_mut(&(stream as usize)) else {
        return false;
    };
    let secs = rig().copy_seconds(gpu_opt(from), gpu_opt(to), p2p, sm, len);
    st.queue.push(Op::Copy {
        from,
        to,
        p2p,
        dst: dst as usize,
        src: src as usize,
        len,
        secs,
    });
    true
}

pub fn enqueue_launch(s: &mut State, stream: *mut c_void, l: Launch) -> bool {
    let Some(st) = s.streams.get_mut(&(stream as usize)) else {
        return false;
    };
    st.queue.push(match l {
        Launch::Spin(flag, timeout_ns) => Op::Spin { flag, timeout_ns },
        Launch::Fault(e) => Op::Fault(e),
    });
    true
}

/// Queue time on `stream` (fake NCCL); false when it is not one of ours.
pub fn enqueue_delay(s: &mut State, stream: *mut c_void, secs: f64) -> bool {
    let Some(st) = s.streams.get_mut(&(stream as usize)) else {
        return false;
    };
    st.queue.push(Op::Delay(secs));
    true
}

/// Queue work on `stream` that completes only once `token` is released (fake NCCL); false
/// when it is not one of ours.
pub fn enqueue_stall(s: &mut State, stream: *mut c_void, token: u64) -> bool {
    let Some(st) = s.streams.get_mut(&(stream as usize)) else {
        return false;
    };
    st.queue.push(Op::Stall(token));
    true
}

/// Whether work of `stream` is still pending after running what can run (a stall).
fn stalled(handle: usize) -> bool {
    state()
        .streams
        .get(&handle)
        .is_some_and(|st| !st.queue.is_empty())
}

/// Whether copies touching GPU `g` are queued (in flight).
pub fn busy(g: usize) -> bool {
    state().streams.values().any(|st| {
        st.queue
            .iter()
            .any(|op| matches!(op, Op::Copy { from, to, .. } if *from == g || *to == g))
    })
}

/// Run `stream`'s queue.
fn flush(handle: usize) {
    let (ops, mut clock) = {
        let mut s = state();
        let Some(st) = s.streams.get_mut(&handle) else {
            return;
        };
        st.polled = false;
        (std::mem::take(&mut st.queue), st.clock)
    };
    let mut times = Vec::new();
    let mut touched = Vec::new();
    let mut fault = None;
    let mut rest = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Stall(t) if !is_released(*t) => {
                rest = ops[i..].to_vec();
                break;
            }
            Op::Stall(_) => {}
            Op::Spin { flag, timeout_ns } => {
                // SAFETY: the flag is pinned host memory the caller allocated.
                let released = unsafe { std::ptr::read_volatile(*flag as *const u32) } != 0;
                if !released {
                    clock += *timeout_ns as f64 * 1e-9;
                }
            }
            Op::Copy {
                from,
                to,
                p2p,
                dst,
                src,
                len,
                secs,
            } => {
                // The same copy again right after gives the same bytes: do it once.
                if ops.get(i + 1) != Some(op) {
                    // SAFETY: both ranges were resolved inside live allocations when queued.
                    unsafe { transfer(*from, *to, *p2p, *dst as *mut u8, *src as *const u8, *len) };
                }
                clock += secs;
                touched.extend([*from, *to].into_iter().filter(|&g| g != HOST));
            }
            Op::Record(e) => times.push((*e, clock)),
            Op::Delay(secs) => clock += secs,
            Op::Fault(e) => {
                fault = Some(*e);
                break;
            }
        }
    }
    let mut s = state();
    if let Some(st) = s.streams.get_mut(&handle) {
        st.clock = clock;
        // Stalled work stays queued, ahead of what was queued meanwhile.
        rest.append(&mut st.queue);
        st.queue = rest;
    }
    for (e, t) in times {
        if let Some(ev) = s.events.get_mut(&e) {
            ev.time = Some(t);
        }
    }
    touched.sort_unstable();
    touched.dedup();
    for g in touched {
        let n = rig().gpus.get(g).map_or(0, |x| x.replays_under_load);
        *s.replays.entry(g).or_default() += n;
    }
    if fault.is_some() {
        s.sticky = fault;
    }
}

/// cuCtxSynchronize: run every stream; like the real call it does not return while work is
/// stalled.
pub fn flush_all() {
    let handles: Vec<usize> = state().streams.keys().copied().collect();
    for h in handles {
        flush(h);
        while stalled(h) {
            std::thread::sleep(std::time::Duration::from_millis(1));
            flush(h);
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(out: *mut *mut c_void, _flags: c_uint) -> CUresult {
    let mut s = state();
    ret(s.live().map(|gpu| {
        s.next_handle += 16;
        let h = s.next_handle;
        s.streams.insert(
            h,
            Stream {
                gpu,
                clock: 0.0,
                queue: Vec::new(),
                polled: false,
            },
        );
        *out = h as *mut c_void;
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: *mut c_void) -> CUresult {
    flush(stream as usize);
    match state().streams.remove(&(stream as usize)) {
        Some(_) => SUCCESS,
        None => INVALID_VALUE,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(stream: *mut c_void) -> CUresult {
    flush(stream as usize);
    // Stalled work never completes: neither does the real call.
    while stalled(stream as usize) {
        std::thread::sleep(std::time::Duration::from_millis(1));
        flush(stream as usize);
    }
    ret(state().live().map(|_| ()))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(out: *mut *mut c_void, _flags: c_uint) -> CUresult {
    let mut s = state();
    ret(s.live().map(|_| {
        s.next_handle += 16;
        let h = s.next_handle;
        s.events.insert(
            h,
            EventState {
                stream: None,
                time: None,
            },
        );
        *out = h as *mut c_void;
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(e: *mut c_void) -> CUresult {
    match state().events.remove(&(e as usize)) {
        Some(_) => SUCCESS,
        None => INVALID_VALUE,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(e: *mut c_void, stream: *mut c_void) -> CUresult {
    let mut s = state();
    ret(s.live().and_then(|me| {
        let (e, h) = (e as usize, stream as usize);
        let st = s.streams.get_mut(&h).ok_or(INVALID_VALUE)?;
        if st.gpu != me {
            return Err(INVALID_VALUE);
        }
        st.queue.push(Op::Record(e));
        let ev = s.events.get_mut(&e).ok_or(INVALID_VALUE)?;
        ev.stream = Some(h);
        ev.time = None;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(e: *mut c_void) -> CUresult {
    let handle = {
        let mut s = state();
        if let Err(err) = s.live() {
            return err;
        }
        let Some(h) = s.events.get(&(e as usize)).and_then(|ev| ev.stream) else {
            return INVALID_VALUE;
        };
        match s.streams.get_mut(&h) {
            Some(st) if !st.queue.is_empty() && !st.polled => {
                st.polled = true;
                return NOT_READY;
            }
            _ => h,
        }
    };
    flush(handle);
    let s = state();
    // Recorded behind stalled work: not reached yet.
    let pending = s.streams.get(&handle).is_some_and(|st| {
        st.queue
            .iter()
            .any(|op| matches!(op, Op::Record(x) if *x == e as usize))
    });
    if pending {
        return NOT_READY;
    }
    ret(s.live().map(|_| ()))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(
    ms: *mut f32,
    start: *mut c_void,
    end: *mut c_void,
) -> CUresult {
    let s = state();
    let t = |e: *mut c_void| s.events.get(&(e as usize)).and_then(|ev| ev.time);
    match (t(start), t(end)) {
        (Some(a), Some(b)) => {
            *ms = ((b - a) * 1e3) as f32;
            SUCCESS
        }
        _ => NOT_READY,
    }
}

/// NVML's replay counter of rig GPU `g`.
pub fn replays(g: usize) -> u64 {
    state().replays.get(&g).copied().unwrap_or(0)
}
