//! Streams and events with modelled time. Every piece of work (copies, memsets, kernels, event
//! records) goes on a stream: a `cuStreamCreate` stream, or the NULL stream of the current
//! context. It runs when something waits for it (a synchronisation, an event query, a free of
//! memory it uses), in order, one operation after the other; each copy advances the stream's
//! clock by what the rig's bandwidth model says it takes, so CUDA events report times
//! consistent with the model while the tests run in milliseconds. The first query of an event
//! with work pending answers NOT_READY: the copies are "in flight", and NVML reads the links
//! under load then.
//!
//! What blocks blocks as on a GPU: `spin_wait` holds its stream until the host writes its flag
//! or its timeout passes on the host's wall clock (times `FAKEGPU_SPIN_SCALE`, default 1, so
//! tests can shorten it); a P2P transfer of a `hang` pair never completes. A wait for such a
//! stream (cuStreamSynchronize, cuCtxSynchronize, a cuMemFree of memory its work uses) does not
//! return until then, and cuEventQuery answers NOT_READY meanwhile.
//!
//! Not modelled: the legacy NULL stream's implicit synchronisation with blocking streams
//! (streams behave as CU_STREAM_NON_BLOCKING, the only kind rigdoctor creates).

use crate::cuda::{CUresult, INVALID_VALUE, SUCCESS};
use crate::memory::{effect, ret, state, transfer, Effect, State, HOST, INVALID_HANDLE};
use crate::rig;
use std::collections::{BTreeSet, VecDeque};
use std::ffi::{c_uint, c_void};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const NOT_READY: CUresult = 600;

/// How a caller waits for a stream.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Until the queue is empty (or a sticky error discards it).
    Wait,
    /// Run what can run now, return at the first operation that cannot complete yet.
    Poll,
}

#[derive(Clone, PartialEq)]
pub enum Op {
    /// spin_wait(flag, timeout_ns): `flag` is the host address of the word.
    Spin {
        flag: u64,
        timeout_ns: u64,
        launched: Instant,
    },
    Copy {
        from: usize,
        to: usize,
        p2p: bool,
        sm: bool,
        dst: usize,
        src: usize,
        len: usize,
        secs: f64,
    },
    /// cuMemsetD32.
    Fill {
        dst: usize,
        value: u32,
        words: usize,
        secs: f64,
    },
    /// An event record: (event, its record generation).
    Record(usize, u64),
    /// A fault that makes the process's CUDA state sticky-lost.
    Fault(CUresult),
    /// Time without a copy (a collective whose data was already moved).
    Delay(f64),
    /// Work that does not complete until `release_stall(token)` (a hung NCCL kernel): it and
    /// everything queued after it stay pending.
    Stall(u64),
}

impl Op {
    /// Whether the operation reads or writes `[base, base + len)`.
    fn touches(&self, base: u64, len: usize) -> bool {
        let overlaps = |p: usize, n: usize| {
            let (p, end) = (p as u64, base.saturating_add(len as u64));
            p < end && base < p.saturating_add(n as u64)
        };
        match *self {
            Op::Spin { flag, .. } => overlaps(flag as usize, 4),
            Op::Copy { dst, src, len, .. } => overlaps(dst, len) || overlaps(src, len),
            Op::Fill { dst, words, .. } => overlaps(dst, words * 4),
            _ => false,
        }
    }
}

pub struct Stream {
    gpu: usize,
    clock: f64,
    queue: VecDeque<Op>,
    /// An event of this stream was queried once while work was pending.
    polled: bool,
    /// cuStreamCreate's (false: a context's NULL stream).
    user: bool,
    /// cuStreamDestroy was called: gone for the caller, its work still runs (cuda.h: "the
    /// resources associated with hStream will be released automatically once the device has
    /// completed all work in hStream").
    destroyed: bool,
    /// An operation of the queue's front is running (its queue entry stays until it is done).
    running: bool,
    /// When the last spin of this stream ended (the next one starts no earlier).
    last_spin_end: Option<Instant>,
}

impl Stream {
    fn new(gpu: usize, user: bool) -> Stream {
        Stream {
            gpu,
            clock: 0.0,
            queue: VecDeque::new(),
            polled: false,
            user,
            destroyed: false,
            running: false,
            last_spin_end: None,
        }
    }
}

pub struct EventState {
    /// The context (GPU) it was created in.
    gpu: usize,
    /// Created without CU_EVENT_DISABLE_TIMING.
    timing: bool,
    /// The stream of the last record, None before the first.
    stream: Option<usize>,
    /// The stream clock when the last record completed.
    time: Option<f64>,
    generation: u64,
}

pub(crate) fn gpu_opt(g: usize) -> Option<usize> {
    (g != HOST).then_some(g)
}

/// The key of GPU `g`'s NULL stream (user handles start at 0x1000).
fn null_key(g: usize) -> usize {
    g + 1
}

/// Whether `stream` means the NULL stream: NULL, CU_STREAM_LEGACY (0x1) or
/// CU_STREAM_PER_THREAD (0x2) (cuda.h).
fn is_null_stream(stream: *mut c_void) -> bool {
    (stream as usize) <= 2
}

/// The queue work on `stream` goes to, for a call in the context of GPU `me`.
pub(crate) fn queue_of(s: &mut State, stream: *mut c_void, me: usize) -> Result<usize, CUresult> {
    if is_null_stream(stream) {
        let k = null_key(me);
        s.streams.entry(k).or_insert_with(|| Stream::new(me, false));
        return Ok(k);
    }
    user_stream(s, stream)
}

/// A live cuStreamCreate stream, else CUDA_ERROR_INVALID_HANDLE.
fn user_stream(s: &State, stream: *mut c_void) -> Result<usize, CUresult> {
    let h = stream as usize;
    match s.streams.get(&h) {
        Some(st) if st.user && !st.destroyed => Ok(h),
        _ => Err(INVALID_HANDLE),
    }
}

pub(crate) fn push(s: &mut State, q: usize, op: Op) {
    if let Some(st) = s.streams.get_mut(&q) {
        st.queue.push_back(op);
    }
}

/// Queue a copy timed by the rig's model.
#[allow(clippy::too_many_arguments)]
pub(crate) fn push_copy(
    s: &mut State,
    q: usize,
    from: usize,
    to: usize,
    p2p: bool,
    sm: bool,
    dst: *mut u8,
    src: *mut u8,
    len: usize,
) {
    let secs = rig().copy_seconds(gpu_opt(from), gpu_opt(to), p2p, sm, len);
    push(
        s,
        q,
        Op::Copy {
            from,
            to,
            p2p,
            sm,
            dst: dst as usize,
            src: src as usize,
            len,
            secs,
        },
    );
}

/// Queue time on `stream` (fake NCCL); false when it is not one of ours.
pub fn enqueue_delay(s: &mut State, stream: *mut c_void, secs: f64) -> bool {
    enqueue(s, stream, Op::Delay(secs))
}

/// Queue work on `stream` that completes only once `token` is released (fake NCCL); false
/// when it is not one of ours.
pub fn enqueue_stall(s: &mut State, stream: *mut c_void, token: u64) -> bool {
    enqueue(s, stream, Op::Stall(token))
}

fn enqueue(s: &mut State, stream: *mut c_void, op: Op) -> bool {
    let q = match crate::memory::current() {
        Some(me) => queue_of(s, stream, me),
        None => user_stream(s, stream),
    };
    match q {
        Ok(q) => {
            push(s, q, op);
            true
        }
        Err(_) => false,
    }
}

/// Stall tokens released (fake NCCL: the collective completed, or its communicator aborted).
static RELEASED: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

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

/// Whether copies touching GPU `g` are queued (in flight).
pub fn busy(g: usize) -> bool {
    state().streams.values().any(|st| {
        st.queue
            .iter()
            .any(|op| matches!(op, Op::Copy { from, to, .. } if *from == g || *to == g))
    })
}

/// FAKEGPU_SPIN_SCALE: the factor from a spin's timeout to the host time it waits (default 1).
fn spin_scale() -> f64 {
    static SCALE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *SCALE.get_or_init(|| {
        std::env::var("FAKEGPU_SPIN_SCALE")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .unwrap_or(1.0)
    })
}

/// The flag word of a spin.
fn flag_set(flag: u64) -> bool {
    // SAFETY: the word is inside a live allocation: resolved at launch, and a free of it waits
    // for the queued spin first.
    unsafe { std::ptr::read_volatile(flag as *const u32) != 0 }
}

/// Whether `op`, at the front of `st`, cannot complete yet.
fn blocked(op: &Op, st: &Stream) -> bool {
    match *op {
        Op::Spin {
            flag,
            timeout_ns,
            launched,
        } => {
            if flag_set(flag) {
                return false;
            }
            // On the GPU, %globaltimer counts from when the kernel starts: its launch, or the
            // end of the spin before it on the stream.
            let start = st.last_spin_end.map_or(launched, |t| t.max(launched));
            let wait = Duration::from_secs_f64(timeout_ns as f64 * 1e-9 * spin_scale());
            Instant::now() < start + wait
        }
        Op::Stall(t) => !is_released(t),
        Op::Copy {
            from, to, p2p, sm, ..
        } => effect(from, to, p2p, sm) == Effect::Hang,
        _ => false,
    }
}

/// Run `op` (not blocked): the model seconds it takes and the sticky fault it hits.
fn execute(op: &Op, repeated: bool) -> (f64, Option<CUresult>) {
    match *op {
        Op::Spin {
            flag, timeout_ns, ..
        } => {
            // Released at once, or it spun for its whole timeout.
            let secs = if flag_set(flag) {
                0.0
            } else {
                timeout_ns as f64 * 1e-9
            };
            (secs, None)
        }
        Op::Copy {
            from,
            to,
            p2p,
            sm,
            dst,
            src,
            len,
            secs,
        } => match effect(from, to, p2p, sm) {
            Effect::Sticky(code) => (0.0, Some(code)),
            e => {
                // The same copy again right after gives the same bytes: do it once.
                if !repeated {
                    // SAFETY: both ranges were resolved inside live allocations when queued,
                    // and a free waits for queued work on them.
                    unsafe { transfer(e, dst as *mut u8, src as *const u8, len) };
                }
                (secs, None)
            }
        },
        Op::Fill {
            dst,
            value,
            words,
            secs,
        } => {
            // SAFETY: as for copies.
            let out = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, words * 4) };
            for w in out.chunks_exact_mut(4) {
                w.copy_from_slice(&value.to_ne_bytes());
            }
            (secs, None)
        }
        Op::Fault(e) => (0.0, Some(e)),
        Op::Delay(secs) => (secs, None),
        Op::Record(..) | Op::Stall(_) => (0.0, None),
    }
}

/// Run the queue of stream `handle`; true when it is empty (or gone) afterwards. No lock is
/// held while an operation runs or while waiting.
pub(crate) fn drain(handle: usize, mode: Mode) -> bool {
    let mut touched = BTreeSet::new();
    let mut pause = Duration::from_micros(50);
    let done = loop {
        let mut s = state();
        let sticky = s.sticky.is_some();
        let Some(st) = s.streams.get_mut(&handle) else {
            break true;
        };
        if sticky {
            // The process's CUDA state is lost: queued work never runs.
            st.queue.clear();
        }
        if st.running {
            drop(s);
            if mode == Mode::Poll {
                break false;
            }
            std::thread::sleep(pause);
            continue;
        }
        let Some(op) = st.queue.front().cloned() else {
            st.polled = false;
            if st.destroyed {
                s.streams.remove(&handle);
            }
            break true;
        };
        if blocked(&op, st) {
            drop(s);
            if mode == Mode::Poll {
                break false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
            continue;
        }
        let repeated = st.queue.get(1) == Some(&op);
        st.running = true;
        drop(s);
        let (secs, fault) = execute(&op, repeated);
        let mut s = state();
        let Some(st) = s.streams.get_mut(&handle) else {
            break true;
        };
        st.running = false;
        st.queue.pop_front();
        st.clock += secs;
        let clock = st.clock;
        match op {
            Op::Spin { .. } => st.last_spin_end = Some(Instant::now()),
            Op::Copy { from, to, .. } => {
                touched.extend([from, to].into_iter().filter(|&g| g != HOST));
            }
            Op::Record(e, generation) => {
                if let Some(ev) = s.events.get_mut(&e) {
                    if ev.generation == generation {
                        ev.time = Some(clock);
                    }
                }
            }
            _ => {}
        }
        if let Some(code) = fault {
            s.sticky.get_or_insert(code);
        }
    };
    if !touched.is_empty() {
        // Each batch of copies counts the GPU's replays once.
        let mut s = state();
        for g in touched {
            let n = rig().gpus.get(g).map_or(0, |x| x.replays_under_load);
            *s.replays.entry(g).or_default() += n;
        }
    }
    done
}

/// cuCtxSynchronize: wait for every stream of GPU `g`'s context.
pub(crate) fn sync_context(g: usize) {
    let handles: Vec<usize> = state()
        .streams
        .iter()
        .filter(|(_, st)| st.gpu == g)
        .map(|(&h, _)| h)
        .collect();
    for h in handles {
        drain(h, Mode::Wait);
    }
}

/// Wait for the queued work that uses `[base, base + len)` (cuMemFree's implicit
/// synchronisation).
pub(crate) fn wait_for_range(base: u64, len: usize) {
    loop {
        let next = state()
            .streams
            .iter()
            .find(|(_, st)| st.queue.iter().any(|op| op.touches(base, len)))
            .map(|(&h, _)| h);
        match next {
            Some(h) => {
                drain(h, Mode::Wait);
            }
            None => return,
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(out: *mut *mut c_void, flags: c_uint) -> CUresult {
    let mut s = state();
    ret(s.live().and_then(|gpu| {
        // CU_STREAM_DEFAULT 0x0, CU_STREAM_NON_BLOCKING 0x1.
        if out.is_null() || flags & !0x1 != 0 {
            return Err(INVALID_VALUE);
        }
        let h = s.handle();
        s.streams.insert(h, Stream::new(gpu, true));
        *out = h as *mut c_void;
        Ok(())
    }))
}

/// cuda.h: "In case the device is still doing work in the stream hStream when cuStreamDestroy()
/// is called, the function will return immediately and the resources associated with hStream
/// will be released automatically once the device has completed all work in hStream."
#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: *mut c_void) -> CUresult {
    let h = {
        let mut s = state();
        if let Err(e) = s.alive() {
            return e;
        }
        let h = match user_stream(&s, stream) {
            Ok(h) => h,
            Err(e) => return e,
        };
        if let Some(st) = s.streams.get_mut(&h) {
            st.destroyed = true;
        }
        h
    };
    // What can run runs; what cannot stays queued until something waits for it.
    drain(h, Mode::Poll);
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(stream: *mut c_void) -> CUresult {
    let h = {
        let mut s = state();
        let r = if is_null_stream(stream) {
            s.live().and_then(|me| queue_of(&mut s, stream, me))
        } else {
            s.alive().and_then(|_| user_stream(&s, stream))
        };
        match r {
            Ok(h) => h,
            Err(e) => return e,
        }
    };
    drain(h, Mode::Wait);
    ret(state().alive())
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(out: *mut *mut c_void, flags: c_uint) -> CUresult {
    let mut s = state();
    ret(s.live().and_then(|gpu| {
        // CU_EVENT_DEFAULT 0, BLOCKING_SYNC 0x1, DISABLE_TIMING 0x2, INTERPROCESS 0x4.
        if out.is_null() || flags & !0x7 != 0 {
            return Err(INVALID_VALUE);
        }
        let h = s.handle();
        s.events.insert(
            h,
            EventState {
                gpu,
                timing: flags & 0x2 == 0,
                stream: None,
                time: None,
                generation: 0,
            },
        );
        *out = h as *mut c_void;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(e: *mut c_void) -> CUresult {
    let mut s = state();
    ret(s.alive().and_then(|_| {
        s.events
            .remove(&(e as usize))
            .map(|_| ())
            .ok_or(INVALID_HANDLE)
    }))
}

/// cuda.h: "hEvent and hStream must be from the same context otherwise
/// CUDA_ERROR_INVALID_HANDLE is returned."
#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(e: *mut c_void, stream: *mut c_void) -> CUresult {
    let mut s = state();
    let q = if is_null_stream(stream) {
        s.live().and_then(|me| queue_of(&mut s, stream, me))
    } else {
        s.alive().and_then(|_| user_stream(&s, stream))
    };
    ret(q.and_then(|q| {
        let e = e as usize;
        let gpu = s.streams.get(&q).map(|st| st.gpu);
        let ev = s.events.get_mut(&e).ok_or(INVALID_HANDLE)?;
        if Some(ev.gpu) != gpu {
            return Err(INVALID_HANDLE);
        }
        ev.generation += 1;
        ev.stream = Some(q);
        ev.time = None;
        let generation = ev.generation;
        push(&mut s, q, Op::Record(e, generation));
        Ok(())
    }))
}

/// cuda.h: "Returns CUDA_SUCCESS if all captured work has been completed, or
/// CUDA_ERROR_NOT_READY if any captured work is incomplete"; "Before the first call to
/// cuEventRecord(), an event represents an empty set of work, so for example cuEventQuery()
/// would return CUDA_SUCCESS."
#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(e: *mut c_void) -> CUresult {
    let handle = {
        let mut s = state();
        if let Err(err) = s.alive() {
            return err;
        }
        let Some(ev) = s.events.get(&(e as usize)) else {
            return INVALID_HANDLE;
        };
        let Some(h) = ev.stream else {
            return SUCCESS;
        };
        if ev.time.is_some() {
            return SUCCESS;
        }
        match s.streams.get_mut(&h) {
            Some(st) if !st.queue.is_empty() && !st.polled => {
                st.polled = true;
                return NOT_READY;
            }
            _ => h,
        }
    };
    drain(handle, Mode::Poll);
    let s = state();
    if let Err(err) = s.alive() {
        return err;
    }
    match s.events.get(&(e as usize)).and_then(|ev| ev.time) {
        Some(_) => SUCCESS,
        None => NOT_READY,
    }
}

/// cuda.h: "If cuEventRecord() has not been called on either event then
/// CUDA_ERROR_INVALID_HANDLE is returned. If cuEventRecord() has been called on both events but
/// one or both of them has not yet been completed [...] CUDA_ERROR_NOT_READY is returned. If
/// either event was created with the CU_EVENT_DISABLE_TIMING flag, then this function will
/// return CUDA_ERROR_INVALID_HANDLE."
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(
    ms: *mut f32,
    start: *mut c_void,
    end: *mut c_void,
) -> CUresult {
    let s = state();
    if let Err(e) = s.alive() {
        return e;
    }
    if ms.is_null() {
        return INVALID_VALUE;
    }
    let (Some(a), Some(b)) = (
        s.events.get(&(start as usize)),
        s.events.get(&(end as usize)),
    ) else {
        return INVALID_HANDLE;
    };
    if a.stream.is_none() || b.stream.is_none() || !a.timing || !b.timing {
        return INVALID_HANDLE;
    }
    match (a.time, b.time) {
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
