//! Contexts, device memory, copies, peer access, modules and kernels. Device memory is host
//! memory, so copies really copy and rigdoctor's verification is real; the rig's pair faults act
//! only on transfers that cross GPUs over P2P (peer access enabled), as on the machines they
//! model. Work goes on streams (`crate::stream`) and runs when something waits for it.
//!
//! Semantics follow cuda.h 12.9 (CUDA_VERSION 12090, from the nvidia-cuda-runtime-cu12 12.9.79
//! wheel); each rule cites the sentence it models.

use crate::cuda::{gpu_index, ready, CUresult, INVALID_VALUE, SUCCESS};
use crate::rig;
use crate::rig::PairFault;
use crate::stream::{self, Mode, Op};
use std::alloc::Layout;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

pub const OUT_OF_MEMORY: CUresult = 2;
pub const INVALID_CONTEXT: CUresult = 201;
pub const INVALID_PTX: CUresult = 218;
pub const UNSUPPORTED_PTX_VERSION: CUresult = 222;
pub const PEER_ACCESS_UNSUPPORTED: CUresult = 217;
pub const INVALID_HANDLE: CUresult = 400;
pub const NOT_FOUND: CUresult = 500;
pub const ILLEGAL_ADDRESS: CUresult = 700;
pub const PEER_ACCESS_ALREADY_ENABLED: CUresult = 704;
pub const PEER_ACCESS_NOT_ENABLED: CUresult = 705;
pub const MISALIGNED_ADDRESS: CUresult = 716;
pub const NOT_SUPPORTED: CUresult = 801;

const ATTR_PERF_RANK: c_int = 1;
const ATTR_ACCESS_SUPPORTED: c_int = 2;
const ATTR_NATIVE_ATOMIC: c_int = 3;

/// The kernels of rigdoctor's PTX that the fake runs (kernels/copy.ptx, kernels/spin.ptx), with
/// the parameter sizes of their `.entry` signatures.
const KERNEL_COPY: (&str, &[usize]) = ("copy_v4", &[8, 8, 8]);
const KERNEL_SPIN: (&str, &[usize]) = ("spin_wait", &[8, 8]);

/// The `gpu` of pinned host memory (cuMemHostAlloc), mapped into every GPU.
pub(crate) const HOST: usize = usize::MAX;

/// cuMemAlloc: "The allocated memory is suitably aligned for any kind of variable"; the CUDA
/// Programming Guide (Device Memory Accesses) says such memory "is always aligned to at least
/// 256 bytes". Pinned host memory is whole pages.
const DEVICE_ALIGN: usize = 256;
const HOST_ALIGN: usize = 4096;

/// Memory of one allocation, aligned as the driver's.
pub(crate) struct Alloc {
    pub(crate) gpu: usize,
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the allocation is plain bytes owned by this value; access is serialised by STATE.
unsafe impl Send for Alloc {}

impl Alloc {
    fn new(gpu: usize, len: usize, align: usize, fill: u8) -> Option<Alloc> {
        let layout = Layout::from_size_align(len, align).ok()?;
        // SAFETY: len > 0 (checked by the callers), a valid layout.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return None;
        }
        // SAFETY: ptr holds len bytes.
        unsafe { std::ptr::write_bytes(ptr, fill, len) };
        Some(Alloc { gpu, ptr, layout })
    }

    fn len(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for Alloc {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// A `.entry` of a loaded module: its name and the byte size of each `.param`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) params: Vec<usize>,
}

struct Module {
    entries: Vec<Entry>,
    /// Function handles handed out, by entry name (cuModuleGetFunction twice gives one handle).
    functions: BTreeMap<String, usize>,
}

struct Function {
    module: usize,
    entry: Entry,
}

pub(crate) struct State {
    /// (context's GPU, peer GPU) with peer access enabled.
    peers: BTreeSet<(usize, usize)>,
    pub(crate) allocs: BTreeMap<u64, Alloc>,
    modules: BTreeMap<usize, Module>,
    functions: BTreeMap<usize, Function>,
    /// A sticky error: the process's CUDA state is lost and every later call fails with it.
    pub(crate) sticky: Option<CUresult>,
    pub(crate) streams: BTreeMap<usize, crate::stream::Stream>,
    pub(crate) events: BTreeMap<usize, crate::stream::EventState>,
    /// PCIe replays counted per GPU.
    pub(crate) replays: BTreeMap<usize, u64>,
    pub(crate) next_handle: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    peers: BTreeSet::new(),
    allocs: BTreeMap::new(),
    modules: BTreeMap::new(),
    functions: BTreeMap::new(),
    sticky: None,
    streams: BTreeMap::new(),
    events: BTreeMap::new(),
    replays: BTreeMap::new(),
    next_handle: 0x1000,
});

pub(crate) fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn ret(r: Result<(), CUresult>) -> CUresult {
    r.err().unwrap_or(SUCCESS)
}

thread_local! {
    /// The context bound to this thread (cuCtxSetCurrent: "Binds the specified CUDA context
    /// to the calling CPU thread"): the GPU whose primary context it is.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The GPU (index into the rig's `gpus`) of the calling thread's current context.
pub(crate) fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// Context handles encode the GPU: (index + 1) << 12, never dereferenced.
pub(crate) fn ctx_handle(gpu: usize) -> *mut c_void {
    ((gpu + 1) << 12) as *mut c_void
}

pub(crate) fn ctx_gpu(ctx: *mut c_void) -> Result<usize, CUresult> {
    let v = ctx as usize;
    if v == 0 || v & 0xfff != 0 || (v >> 12) > rig().gpus.len() {
        return Err(INVALID_CONTEXT);
    }
    Ok((v >> 12) - 1)
}

impl State {
    /// The current context's GPU, for a call that works in it: CUDA_ERROR_INVALID_CONTEXT
    /// without one ("if there is no current context", cuCtxEnablePeerAccess and the others
    /// that list it), or the sticky error of an earlier fault.
    pub(crate) fn live(&self) -> Result<usize, CUresult> {
        self.alive()?;
        current().ok_or(INVALID_CONTEXT)
    }

    /// For a call on a handle that carries its context (stream, event, pointer): initialised,
    /// no sticky error.
    pub(crate) fn alive(&self) -> Result<(), CUresult> {
        ready()?;
        match self.sticky {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The allocation holding `[ptr, ptr + len)`: its GPU and a host pointer to `ptr`.
    pub(crate) fn resolve(&self, ptr: u64, len: usize) -> Result<(usize, *mut u8), CUresult> {
        let (base, a) = self.allocs.range(..=ptr).next_back().ok_or(INVALID_VALUE)?;
        let off = (ptr - base) as usize;
        if off >= a.len() || off.checked_add(len).is_none_or(|end| end > a.len()) {
            return Err(INVALID_VALUE);
        }
        Ok((a.gpu, (*base as usize + off) as *mut u8))
    }

    /// Whether a transfer from GPU `from` to GPU `to` goes over P2P.
    pub(crate) fn over_p2p(&self, from: usize, to: usize) -> bool {
        from != to
            && from != HOST
            && to != HOST
            && (self.peers.contains(&(from, to)) || self.peers.contains(&(to, from)))
    }

    pub(crate) fn handle(&mut self) -> usize {
        self.next_handle += 16;
        self.next_handle
    }
}

/// What the rig makes of one transfer when it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Effect {
    Copy,
    Corrupt,
    Zeros,
    /// The transfer never completes.
    Hang,
    /// The transfer faults: the process's CUDA state is lost with this code.
    Sticky(CUresult),
}

/// The rig's fault on a transfer from `from` to `to` (GPU indices or HOST), over P2P or not,
/// by the copy engine or an SM kernel (`sm`).
pub(crate) fn effect(from: usize, to: usize, p2p: bool, sm: bool) -> Effect {
    let fault = rig().pair(from, to).map_or(PairFault::None, |p| p.fault());
    match fault {
        // A bad link or GPU memory: every path between the two, staged too.
        PairFault::CorruptAlways if from != to => Effect::Corrupt,
        _ if !p2p => Effect::Copy,
        PairFault::Hang => Effect::Hang,
        PairFault::Zeros => Effect::Zeros,
        PairFault::Corrupt => Effect::Corrupt,
        // A kernel touching the peer faults (the copy engine is not affected).
        PairFault::IllegalAddress if sm => Effect::Sticky(ILLEGAL_ADDRESS),
        PairFault::Sticky(code) => Effect::Sticky(code),
        _ => Effect::Copy,
    }
}

/// Move the bytes of a transfer whose effect is `e` (not Hang or Sticky, handled by the caller).
pub(crate) unsafe fn transfer(e: Effect, dst: *mut u8, src: *const u8, len: usize) {
    std::ptr::copy(src, dst, len);
    let out = std::slice::from_raw_parts_mut(dst, len);
    match e {
        Effect::Zeros => out.fill(0),
        Effect::Corrupt => {
            // A burst of flipped bits past the first pages, as a mistranslated DMA page gives.
            let start = (len / 2 + 4100).min(len);
            let end = (start + 4096).min(len);
            for b in &mut out[start..end] {
                *b ^= 0x40;
            }
        }
        _ => {}
    }
}

fn hang_forever() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut *mut c_void, dev: c_int) -> CUresult {
    if ctx.is_null() {
        return INVALID_VALUE;
    }
    if !uva_reserved() {
        return OUT_OF_MEMORY;
    }
    ret(gpu_index(dev).map(|g| *ctx = ctx_handle(g)))
}

/// What the real driver does when the first context is created: reserve virtual address space
/// for the Unified Virtual Addressing range; under a tight RLIMIT_AS (`ulimit -v`) that fails
/// and context creation returns CUDA_ERROR_OUT_OF_MEMORY (NVIDIA MPS documentation, "Clients
/// may fail to start, returning ERROR_OUT_OF_MEMORY when the first CUDA context is created":
/// https://docs.nvidia.com/deploy/topics/topic_5_4.html). The fake reserves 64 GiB, PROT_NONE
/// and unbacked (the real range is larger), once per process, and keeps it.
fn uva_reserved() -> bool {
    static RESERVED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RESERVED.get_or_init(|| {
        // SAFETY: an anonymous PROT_NONE mapping touches no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                64 << 30,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        p != libc::MAP_FAILED
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: c_int) -> CUresult {
    ret(gpu_index(dev).map(|_| ()))
}

/// cuda.h: "Binds the specified CUDA context to the calling CPU thread. If ctx is NULL then the
/// CUDA context previously bound to the calling CPU thread is unbound and CUDA_SUCCESS is
/// returned." Per thread, as in the real driver.
#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: *mut c_void) -> CUresult {
    if let Err(e) = ready() {
        return e;
    }
    if ctx.is_null() {
        CURRENT.with(|c| c.set(None));
        return SUCCESS;
    }
    ret(ctx_gpu(ctx).map(|g| CURRENT.with(|c| c.set(Some(g)))))
}

/// The calling thread's context, NULL when none is bound.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut *mut c_void) -> CUresult {
    if let Err(e) = ready() {
        return e;
    }
    if ctx.is_null() {
        return INVALID_VALUE;
    }
    *ctx = current().map_or(std::ptr::null_mut(), ctx_handle);
    SUCCESS
}

/// cuda.h: "Blocks until the current context has completed all preceding requested tasks":
/// the streams of the current context only, the context's NULL stream included.
#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    let me = match state().live() {
        Ok(g) => g,
        Err(e) => return e,
    };
    stream::sync_context(me);
    ret(state().alive())
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(ptr: *mut u64, len: usize) -> CUresult {
    let mut s = state();
    ret(s.live().and_then(|gpu| {
        // cuda.h cuMemAlloc: "If bytesize is 0, cuMemAlloc() returns CUDA_ERROR_INVALID_VALUE."
        if len == 0 || ptr.is_null() {
            return Err(INVALID_VALUE);
        }
        let used: usize = s
            .allocs
            .values()
            .filter(|a| a.gpu == gpu)
            .map(Alloc::len)
            .sum();
        let total = (rig().gpus[gpu].memory_mib as usize) << 20;
        if used.saturating_add(len) > total {
            return Err(OUT_OF_MEMORY);
        }
        // Filled with a stand-in for the stale contents of fresh device memory.
        let a = Alloc::new(gpu, len, DEVICE_ALIGN, 0xCD).ok_or(OUT_OF_MEMORY)?;
        let p = a.ptr as u64;
        s.allocs.insert(p, a);
        *ptr = p;
        Ok(())
    }))
}

/// Pinned host memory: an allocation of `HOST`, at the same address for host and GPUs (cuda.h,
/// Unified Addressing: "All host memory allocated in all contexts using cuMemAllocHost() and
/// cuMemHostAlloc() is always directly accessible from all contexts on all devices").
#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(
    ptr: *mut *mut c_void,
    len: usize,
    flags: c_uint,
) -> CUresult {
    let mut s = state();
    ret(s.live().and_then(|_| {
        // CU_MEMHOSTALLOC_PORTABLE 0x01, DEVICEMAP 0x02, WRITECOMBINED 0x04.
        if len == 0 || ptr.is_null() || flags & !0x7 != 0 {
            return Err(INVALID_VALUE);
        }
        let a = Alloc::new(HOST, len, HOST_ALIGN, 0).ok_or(OUT_OF_MEMORY)?;
        let p = a.ptr as u64;
        s.allocs.insert(p, a);
        *ptr = p as *mut c_void;
        Ok(())
    }))
}

/// cuMemFree / cuMemFreeHost. cuda.h cuMemFree: `dptr` "must have been returned by a previous
/// call to" an allocation API (else CUDA_ERROR_INVALID_VALUE, as for a pointer freed already),
/// and "this API may perform implicit synchronization": the free waits for the queued work that
/// uses the memory (a copy behind a spinning kernel keeps it waiting until the spin ends).
/// Under unified addressing the driver finds the allocation from the pointer and frees it in
/// its own context, whichever context is current or none (NVIDIA/cuda-python#2750: "The driver
/// resolves the allocation from the pointer via unified addressing and frees it in its owning
/// context, with any context or none current"), so no current context is needed. After a
/// sticky error it fails with that error, like any further CUDA work.
unsafe fn free(ptr: u64, host: bool) -> CUresult {
    let len = {
        let s = state();
        if let Err(e) = s.alive() {
            return e;
        }
        match s.allocs.get(&ptr) {
            Some(a) if (a.gpu == HOST) == host => a.len(),
            _ => return INVALID_VALUE,
        }
    };
    stream::wait_for_range(ptr, len);
    let mut s = state();
    if let Err(e) = s.alive() {
        return e;
    }
    match s.allocs.remove(&ptr) {
        Some(_) => SUCCESS,
        None => INVALID_VALUE,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(ptr: u64) -> CUresult {
    free(ptr, false)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeHost(ptr: *mut c_void) -> CUresult {
    free(ptr as u64, true)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostGetDevicePointer_v2(
    d: *mut u64,
    p: *mut c_void,
    flags: c_uint,
) -> CUresult {
    let s = state();
    ret(s.live().and_then(|_| {
        // cuda.h: "Flags provided for future releases. For now, it must be set to 0."
        if flags != 0 || d.is_null() {
            return Err(INVALID_VALUE);
        }
        match s.resolve(p as u64, 1)? {
            (HOST, _) => {
                *d = p as u64;
                Ok(())
            }
            _ => Err(INVALID_VALUE),
        }
    }))
}

/// A copy involving host memory at `host` (`len` bytes): pinned memory (an allocation of
/// HOST) or pageable memory the driver does not know.
enum HostMem {
    Pinned(*mut u8),
    Pageable(*mut u8),
}

fn host_mem(s: &State, host: u64, len: usize) -> HostMem {
    match s.resolve(host, len) {
        Ok((HOST, p)) => HostMem::Pinned(p),
        _ => HostMem::Pageable(host as *mut u8),
    }
}

/// cuMemcpyHtoD(Async) / DtoH(Async): queued on `stream` (NULL: the current context's NULL
/// stream). With pageable host memory the call returns once the copy is done (CUDA Runtime API,
/// "API synchronization behavior": from pageable memory "a stream sync is performed before
/// the copy is initiated", to pageable memory "the function will return only once the copy
/// has completed"), and so do the synchronous calls.
unsafe fn host_copy(
    dst: u64,
    src: u64,
    len: usize,
    to_device: bool,
    stream: *mut c_void,
    synchronous: bool,
) -> CUresult {
    let mut s = state();
    let me = match s.live() {
        Ok(g) => g,
        Err(e) => return e,
    };
    let (dev, host) = if to_device { (dst, src) } else { (src, dst) };
    let (g, d) = match s.resolve(dev, len) {
        Ok(x) => x,
        Err(e) => return e,
    };
    let (h, pageable) = match host_mem(&s, host, len) {
        HostMem::Pinned(p) => (p, false),
        HostMem::Pageable(p) if !p.is_null() => (p, true),
        HostMem::Pageable(_) => return INVALID_VALUE,
    };
    let (from, to, dst_p, src_p) = if to_device {
        (HOST, g, d, h)
    } else {
        (g, HOST, h, d)
    };
    let q = match stream::queue_of(&mut s, stream, me) {
        Ok(q) => q,
        Err(e) => return e,
    };
    stream::push_copy(&mut s, q, from, to, false, false, dst_p, src_p, len);
    drop(s);
    if synchronous || pageable {
        stream::drain(q, Mode::Wait);
        return ret(state().alive());
    }
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: u64,
    src: *const c_void,
    len: usize,
    stream: *mut c_void,
) -> CUresult {
    host_copy(dst, src as u64, len, true, stream, false)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: u64,
    len: usize,
    stream: *mut c_void,
) -> CUresult {
    host_copy(dst as u64, src, len, false, stream, false)
}

/// cuda.h: "Note that this function is synchronous": queued on the current context's NULL
/// stream (after the work already there) and waited for.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(dst: u64, src: *const c_void, len: usize) -> CUresult {
    host_copy(dst, src as u64, len, true, std::ptr::null_mut(), true)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: u64, len: usize) -> CUresult {
    host_copy(dst as u64, src, len, false, std::ptr::null_mut(), true)
}

/// cuda.h (memset note): "this function is asynchronous with respect to the host unless
/// dstDevice refers to pinned host memory": queued on the current context's NULL stream.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: u64, value: c_uint, words: usize) -> CUresult {
    let mut s = state();
    let me = match s.live() {
        Ok(g) => g,
        Err(e) => return e,
    };
    let Some(bytes) = words.checked_mul(4) else {
        return INVALID_VALUE;
    };
    let (g, d) = match s.resolve(dst, bytes) {
        Ok(x) => x,
        Err(e) => return e,
    };
    if !dst.is_multiple_of(4) {
        return INVALID_VALUE;
    }
    let q = match stream::queue_of(&mut s, std::ptr::null_mut(), me) {
        Ok(q) => q,
        Err(e) => return e,
    };
    let secs = rig().copy_seconds(stream::gpu_opt(g), stream::gpu_opt(g), false, false, bytes);
    stream::push(
        &mut s,
        q,
        Op::Fill {
            dst: d as usize,
            value,
            words,
            secs,
        },
    );
    drop(s);
    if g == HOST {
        stream::drain(q, Mode::Wait);
        return ret(state().alive());
    }
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyPeerAsync(
    dst: u64,
    dst_ctx: *mut c_void,
    src: u64,
    src_ctx: *mut c_void,
    len: usize,
    stream: *mut c_void,
) -> CUresult {
    let mut s = state();
    let r = s.live().and_then(|me| {
        let (to, d) = s.resolve(dst, len)?;
        let (from, p) = s.resolve(src, len)?;
        if ctx_gpu(dst_ctx)? != to || ctx_gpu(src_ctx)? != from {
            return Err(INVALID_VALUE);
        }
        let p2p = s.over_p2p(from, to);
        // A code this driver's cuda.h does not have, returned by the call itself.
        if let (true, Some(PairFault::UnknownCode(code))) =
            (p2p, rig().pair(from, to).map(|p| p.fault()))
        {
            return Err(code);
        }
        let q = stream::queue_of(&mut s, stream, me)?;
        Ok((q, from, to, p2p, d, p))
    });
    let (q, from, to, p2p, d, p) = match r {
        Ok(x) => x,
        Err(e) => return e,
    };
    stream::push_copy(&mut s, q, from, to, p2p, false, d, p, len);
    SUCCESS
}

/// Peer access as the rig grants it, between CUDA ordinals.
fn granted(dev: c_int, peer: c_int) -> Result<bool, CUresult> {
    let (a, b) = (gpu_index(dev)?, gpu_index(peer)?);
    Ok(a != b && rig().pair(a, b).is_some_and(|p| p.access))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceCanAccessPeer(
    can: *mut c_int,
    dev: c_int,
    peer: c_int,
) -> CUresult {
    if can.is_null() {
        return INVALID_VALUE;
    }
    ret(granted(dev, peer).map(|g| *can = c_int::from(g)))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetP2PAttribute(
    v: *mut c_int,
    attr: c_int,
    src: c_int,
    dst: c_int,
) -> CUresult {
    if v.is_null() {
        return INVALID_VALUE;
    }
    ret(granted(src, dst).and_then(|g| {
        let nvlink = rig()
            .link(gpu_index(src)?, gpu_index(dst)?)
            .is_some_and(|p| p.nvlinks > p.nvlinks_down);
        *v = match attr {
            ATTR_ACCESS_SUPPORTED => c_int::from(g),
            ATTR_NATIVE_ATOMIC => c_int::from(g && nvlink),
            ATTR_PERF_RANK => c_int::from(!nvlink),
            4 => 0,
            _ => return Err(INVALID_VALUE),
        };
        Ok(())
    }))
}

/// cuda.h cuCtxEnablePeerAccess: "Returns CUDA_ERROR_PEER_ACCESS_UNSUPPORTED if
/// cuDeviceCanAccessPeer() indicates that the CUdevice of the current context cannot directly
/// access memory from the CUdevice of peerContext. Returns CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED
/// if direct access of peerContext from the current context has already been enabled. [...]
/// Returns CUDA_ERROR_INVALID_CONTEXT if there is no current context, peerContext is not a
/// valid context, or if the current context is peerContext. Returns CUDA_ERROR_INVALID_VALUE if
/// Flags is not 0."
#[no_mangle]
pub unsafe extern "C" fn cuCtxEnablePeerAccess(peer_ctx: *mut c_void, flags: c_uint) -> CUresult {
    let mut s = state();
    ret(s.live().and_then(|me| {
        let peer = ctx_gpu(peer_ctx)?;
        if peer == me {
            return Err(INVALID_CONTEXT);
        }
        if flags != 0 {
            return Err(INVALID_VALUE);
        }
        if s.peers.contains(&(me, peer)) {
            return Err(PEER_ACCESS_ALREADY_ENABLED);
        }
        let allowed = rig().pair(me, peer).filter(|p| p.access);
        match allowed.map(|p| p.fault()) {
            None | Some(PairFault::EnableFails) => Err(PEER_ACCESS_UNSUPPORTED),
            Some(PairFault::EnableHangs) => {
                drop(s);
                hang_forever()
            }
            Some(_) => {
                s.peers.insert((me, peer));
                Ok(())
            }
        }
    }))
}

/// cuda.h cuCtxDisablePeerAccess: "Returns CUDA_ERROR_PEER_ACCESS_NOT_ENABLED if direct peer
/// access has not yet been enabled from peerContext to the current context. Returns
/// CUDA_ERROR_INVALID_CONTEXT if there is no current context, or if peerContext is not a valid
/// context."
#[no_mangle]
pub unsafe extern "C" fn cuCtxDisablePeerAccess(peer_ctx: *mut c_void) -> CUresult {
    let mut s = state();
    ret(s.live().and_then(|me| {
        let peer = ctx_gpu(peer_ctx)?;
        if s.peers.remove(&(me, peer)) {
            Ok(())
        } else {
            Err(PEER_ACCESS_NOT_ENABLED)
        }
    }))
}

/// PTX text without its `//` and `/* */` comments.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Bytes of a PTX parameter declaration such as `.param .u64 name` or
/// `.param .align 8 .b8 name[16]` (PTX ISA, "Kernel Function Parameters").
fn param_bytes(decl: &str) -> Option<usize> {
    let mut words = decl.split_whitespace().peekable();
    if words.next()? != ".param" {
        return None;
    }
    if words.peek() == Some(&".align") {
        words.next();
        words.next();
    }
    let ty = words.next()?;
    let bits: usize = ty
        .trim_start_matches(['.', 'u', 's', 'b', 'f'])
        .parse()
        .ok()?;
    let name = words.next().unwrap_or("");
    let count = match name.split_once('[') {
        Some((_, n)) => n.trim_end_matches(']').parse().ok()?,
        None => 1,
    };
    Some(bits / 8 * count)
}

/// The `.entry` functions of a PTX module with their parameter sizes; None when malformed.
pub(crate) fn parse_entries(ptx: &str) -> Option<Vec<Entry>> {
    let text = strip_comments(ptx);
    let mut entries = Vec::new();
    for part in text.split(".entry").skip(1) {
        let part = part.trim_start();
        let name: String = part
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
            .collect();
        if name.is_empty() {
            return None;
        }
        let rest = part[name.len()..].trim_start();
        let params = match rest.strip_prefix('(') {
            Some(r) => {
                let list = &r[..r.find(')')?];
                list.split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(param_bytes)
                    .collect::<Option<Vec<usize>>>()?
            }
            None => Vec::new(),
        };
        entries.push(Entry { name, params });
    }
    Some(entries)
}

/// Accepts PTX text of the form rigdoctor ships (`.version`, `.target`, `.entry NAME(...)`).
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(
    module: *mut *mut c_void,
    image: *const c_void,
) -> CUresult {
    let mut s = state();
    ret(s.live().and_then(|_| {
        if image.is_null() || module.is_null() {
            return Err(INVALID_VALUE);
        }
        let text = CStr::from_ptr(image as *const c_char).to_string_lossy();
        if !text.contains(".version") || !text.contains(".target") {
            return Err(INVALID_PTX);
        }
        match rig().faults.module_load.as_deref() {
            Some("unsupported-ptx") => return Err(UNSUPPORTED_PTX_VERSION),
            // cuda.h: CUDA_ERROR_JIT_COMPILER_NOT_FOUND, "the PTX JIT compiler library was not
            // found" (libnvidia-ptxjitcompiler.so.1 missing, e.g. a container without it).
            Some("no-jit-compiler") => return Err(221),
            _ => {}
        }
        let entries = parse_entries(&text).ok_or(INVALID_PTX)?;
        let h = s.handle();
        s.modules.insert(
            h,
            Module {
                entries,
                functions: BTreeMap::new(),
            },
        );
        *module = h as *mut c_void;
        Ok(())
    }))
}

/// Unloads the module; its function handles are invalid from then on.
#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(module: *mut c_void) -> CUresult {
    let mut s = state();
    ret(s.alive().and_then(|_| {
        let m = s.modules.remove(&(module as usize)).ok_or(INVALID_HANDLE)?;
        for f in m.functions.values() {
            s.functions.remove(f);
        }
        Ok(())
    }))
}

/// cuda.h: "Returns in *hfunc the handle of the function of name name located in module hmod.
/// If no function of that name exists, cuModuleGetFunction() returns CUDA_ERROR_NOT_FOUND."
#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    f: *mut *mut c_void,
    module: *mut c_void,
    name: *const c_char,
) -> CUresult {
    let mut s = state();
    ret(s.live().and_then(|_| {
        if f.is_null() || name.is_null() {
            return Err(INVALID_VALUE);
        }
        let name = CStr::from_ptr(name).to_string_lossy().into_owned();
        let m = s.modules.get(&(module as usize)).ok_or(INVALID_HANDLE)?;
        if let Some(&h) = m.functions.get(&name) {
            *f = h as *mut c_void;
            return Ok(());
        }
        let entry = m
            .entries
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .ok_or(NOT_FOUND)?;
        let h = s.handle();
        s.functions.insert(
            h,
            Function {
                module: module as usize,
                entry,
            },
        );
        if let Some(m) = s.modules.get_mut(&(module as usize)) {
            m.functions.insert(name, h);
        }
        *f = h as *mut c_void;
        Ok(())
    }))
}

/// Launch limits of every GPU the fake models (compute capability 3.0 and later; cuda.h
/// CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK / MAX_BLOCK_DIM_* / MAX_GRID_DIM_* as the CUDA
/// Programming Guide's "Technical Specifications per Compute Capability" give them).
const MAX_THREADS_PER_BLOCK: u64 = 1024;
const MAX_BLOCK: [u32; 3] = [1024, 1024, 64];
const MAX_GRID: [u32; 3] = [i32::MAX as u32, 65535, 65535];

/// Runs the kernel `f` names, of the module it came from: `copy_v4(dst, src, n)` (n 16-byte
/// elements) or `spin_wait(flag, timeout_ns)`, on the current context's GPU, queued on `stream`.
/// Dimensions must be positive and within the limits above, and kernelParams must hold a
/// pointer to each parameter of the `.entry` (cuda.h: "If f has N parameters, then
/// kernelParams needs to be an array of N pointers"; "CUDA_ERROR_INVALID_VALUE will be
/// returned if kernel parameters are specified with both kernelParams and extra"); each
/// parameter is read with the size its PTX declares. A kernel touching another GPU's memory
/// without peer access is an illegal address, sticky as on hardware; the launch itself
/// succeeds and the fault surfaces at the next call ("this function may also return error
/// codes from previous, asynchronous launches").
#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: *mut c_void,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    _shared: c_uint,
    stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    let mut s = state();
    let me = match s.live() {
        Ok(g) => g,
        Err(e) => return e,
    };
    let Some(func) = s.functions.get(&(f as usize)) else {
        return INVALID_HANDLE;
    };
    if !s.modules.contains_key(&func.module) {
        return INVALID_HANDLE;
    }
    let entry = func.entry.clone();
    let (grid, block) = ([gx, gy, gz], [bx, by, bz]);
    let threads = block.iter().map(|&d| u64::from(d)).product::<u64>();
    if grid.contains(&0)
        || block.contains(&0)
        || threads > MAX_THREADS_PER_BLOCK
        || block.iter().zip(MAX_BLOCK).any(|(&d, m)| d > m)
        || grid.iter().zip(MAX_GRID).any(|(&d, m)| d > m)
    {
        return INVALID_VALUE;
    }
    if !params.is_null() && !extra.is_null() {
        return INVALID_VALUE;
    }
    if !extra.is_null() {
        eprintln!("fakegpu: cuLaunchKernel: `extra` parameter buffers are not emulated");
        return NOT_SUPPORTED;
    }
    if !entry.params.is_empty() && params.is_null() {
        return INVALID_VALUE;
    }
    // Each parameter, read with the size the PTX declares (little-endian, zero-extended).
    let mut args = Vec::with_capacity(entry.params.len());
    for (i, &size) in entry.params.iter().enumerate() {
        let p = *params.add(i) as *const u8;
        if p.is_null() {
            return INVALID_VALUE;
        }
        let mut v = [0u8; 8];
        std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), size.min(8));
        args.push(u64::from_le_bytes(v));
    }
    let q = match stream::queue_of(&mut s, stream, me) {
        Ok(q) => q,
        Err(e) => return e,
    };
    let sig = (entry.name.as_str(), entry.params.as_slice());
    let op = if sig == KERNEL_COPY {
        copy_kernel(&s, me, args[0], args[1], args[2])
    } else if sig == KERNEL_SPIN {
        spin_kernel(&s, me, args[0], args[1])
    } else {
        eprintln!(
            "fakegpu: kernel {}({} parameters) is not emulated (only kernels/copy.ptx copy_v4(u64, u64, u64) and kernels/spin.ptx spin_wait(u64, u64))",
            entry.name,
            entry.params.len()
        );
        return NOT_SUPPORTED;
    };
    match op {
        Some(Op::Copy {
            from,
            to,
            p2p,
            dst,
            src,
            len,
            ..
        }) => stream::push_copy(
            &mut s,
            q,
            from,
            to,
            p2p,
            true,
            dst as *mut u8,
            src as *mut u8,
            len,
        ),
        Some(op) => stream::push(&mut s, q, op),
        None => {}
    }
    SUCCESS
}

/// Whether a kernel on `me` may touch memory of `g` (its own, mapped host memory, or a peer's
/// with peer access enabled from `me`).
fn reachable(s: &State, me: usize, g: usize) -> bool {
    g == me || g == HOST || s.peers.contains(&(me, g))
}

/// copy_v4(dst, src, n): the copy it makes, or the fault it hits; None for n = 0.
fn copy_kernel(s: &State, me: usize, dst: u64, src: u64, n: u64) -> Option<Op> {
    let Some(len) = usize::try_from(n).ok().and_then(|n| n.checked_mul(16)) else {
        return Some(Op::Fault(ILLEGAL_ADDRESS));
    };
    if len == 0 {
        return None;
    }
    // ld/st.global.v4.u32 need 16-byte alignment (kernels/copy.ptx: "Both pointers must be
    // 16-byte aligned"); cuda.h CUDA_ERROR_MISALIGNED_ADDRESS: "a load or store instruction on
    // a memory address which is not aligned".
    if !dst.is_multiple_of(16) || !src.is_multiple_of(16) {
        return Some(Op::Fault(MISALIGNED_ADDRESS));
    }
    let ((to, d), (from, p)) = match (s.resolve(dst, len), s.resolve(src, len)) {
        (Ok(d), Ok(p)) => (d, p),
        // Outside any allocation: the kernel faults.
        _ => return Some(Op::Fault(ILLEGAL_ADDRESS)),
    };
    if !reachable(s, me, from) || !reachable(s, me, to) {
        return Some(Op::Fault(ILLEGAL_ADDRESS));
    }
    Some(Op::Copy {
        from,
        to,
        p2p: from != to && from != HOST && to != HOST,
        sm: true,
        dst: d as usize,
        src: p as usize,
        len,
        secs: 0.0,
    })
}

/// spin_wait(flag, timeout_ns): the spin on the 32-bit word at `flag`.
fn spin_kernel(s: &State, me: usize, flag: u64, timeout_ns: u64) -> Option<Op> {
    if !flag.is_multiple_of(4) {
        return Some(Op::Fault(MISALIGNED_ADDRESS));
    }
    match s.resolve(flag, 4) {
        Ok((g, p)) if reachable(s, me, g) => Some(Op::Spin {
            flag: p as u64,
            timeout_ns,
            launched: Instant::now(),
        }),
        _ => Some(Op::Fault(ILLEGAL_ADDRESS)),
    }
}
