//! Contexts, device memory, copies, peer access and kernels. Device memory is host memory, so
//! copies really copy and rigdoctor's verification is real; the rig's pair faults act only on
//! transfers that cross GPUs over P2P (peer access enabled), as on the machines they model.

use crate::cuda::{gpu_index, ready, CUresult, INVALID_VALUE, SUCCESS};
use crate::rig;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::{Mutex, MutexGuard};

pub const INVALID_CONTEXT: CUresult = 201;
pub const INVALID_PTX: CUresult = 218;
pub const UNSUPPORTED_PTX_VERSION: CUresult = 222;
pub const PEER_ACCESS_UNSUPPORTED: CUresult = 217;
pub const INVALID_HANDLE: CUresult = 400;
pub const NOT_FOUND: CUresult = 500;
pub const ILLEGAL_ADDRESS: CUresult = 700;
pub const PEER_ACCESS_ALREADY_ENABLED: CUresult = 704;
pub const PEER_ACCESS_NOT_ENABLED: CUresult = 705;

const ATTR_PERF_RANK: c_int = 1;
const ATTR_ACCESS_SUPPORTED: c_int = 2;
const ATTR_NATIVE_ATOMIC: c_int = 3;

/// The kernel of rigdoctor's PTX that the fake runs (kernels/copy.ptx).
const KERNEL_COPY: &str = "copy_v4";
const KERNEL_SPIN: &str = "spin_wait";

/// The `gpu` of pinned host memory (cuMemHostAlloc), mapped into every GPU.
pub(crate) const HOST: usize = usize::MAX;

pub(crate) struct Alloc {
    pub(crate) gpu: usize,
    bytes: Box<[u8]>,
}

pub(crate) struct State {
    /// Current context: index into the rig's `gpus`.
    pub(crate) current: Option<usize>,
    /// (context's GPU, peer GPU) with peer access enabled.
    peers: BTreeSet<(usize, usize)>,
    pub(crate) allocs: BTreeMap<u64, Alloc>,
    /// Kernel names, a function handle being its index + 1.
    functions: Vec<String>,
    /// A sticky error: the context is lost and every later call fails with it.
    pub(crate) sticky: Option<CUresult>,
    pub(crate) streams: BTreeMap<usize, crate::stream::Stream>,
    pub(crate) events: BTreeMap<usize, crate::stream::EventState>,
    /// PCIe replays counted per GPU.
    pub(crate) replays: BTreeMap<usize, u64>,
    pub(crate) next_handle: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    current: None,
    peers: BTreeSet::new(),
    allocs: BTreeMap::new(),
    functions: Vec::new(),
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

/// Context handles encode the GPU: (index + 1) << 12, never dereferenced.
fn ctx_handle(gpu: usize) -> *mut c_void {
    ((gpu + 1) << 12) as *mut c_void
}

fn ctx_gpu(ctx: *mut c_void) -> Result<usize, CUresult> {
    let v = ctx as usize;
    if v == 0 || v & 0xfff != 0 || (v >> 12) > rig().gpus.len() {
        return Err(INVALID_CONTEXT);
    }
    Ok((v >> 12) - 1)
}

impl State {
    pub(crate) fn live(&self) -> Result<usize, CUresult> {
        ready()?;
        if let Some(e) = self.sticky {
            return Err(e);
        }
        self.current.ok_or(INVALID_CONTEXT)
    }

    /// The allocation holding `[ptr, ptr + len)`: its GPU and a host pointer to `ptr`.
    pub(crate) fn resolve(&self, ptr: u64, len: usize) -> Result<(usize, *mut u8), CUresult> {
        let (base, a) = self.allocs.range(..=ptr).next_back().ok_or(INVALID_VALUE)?;
        let off = (ptr - base) as usize;
        if off.checked_add(len).is_none_or(|end| end > a.bytes.len()) {
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
}

/// Copy `len` bytes; across GPUs over P2P, the rig's fault for that direction applies.
pub(crate) unsafe fn transfer(
    from: usize,
    to: usize,
    p2p: bool,
    dst: *mut u8,
    src: *const u8,
    len: usize,
) {
    std::ptr::copy(src, dst, len);
    let fault = rig()
        .pair(from, to)
        .map_or("none", |p| p.fault.as_str())
        .to_string();
    // "corrupt-always" models a bad link or GPU memory: every path between the two, staged too.
    let fault = match fault.as_str() {
        "corrupt-always" if from != to => "corrupt".to_string(),
        _ if !p2p => return,
        _ => fault,
    };
    let out = std::slice::from_raw_parts_mut(dst, len);
    match fault.as_str() {
        "hang" => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        "zeros" => out.fill(0),
        "corrupt" => {
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

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut *mut c_void, dev: c_int) -> CUresult {
    ret(gpu_index(dev).map(|g| *ctx = ctx_handle(g)))
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: c_int) -> CUresult {
    ret(gpu_index(dev).map(|_| ()))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: *mut c_void) -> CUresult {
    ret(ctx_gpu(ctx).map(|g| state().current = Some(g)))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    crate::stream::flush_all();
    ret(state().live().map(|_| ()))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(ptr: *mut u64, len: usize) -> CUresult {
    let mut s = state();
    ret(s.live().and_then(|gpu| {
        if len == 0 || ptr.is_null() {
            return Err(INVALID_VALUE);
        }
        // Filled with a stand-in for the stale contents of fresh device memory.
        let bytes = vec![0xCD_u8; len].into_boxed_slice();
        let p = bytes.as_ptr() as u64;
        s.allocs.insert(p, Alloc { gpu, bytes });
        *ptr = p;
        Ok(())
    }))
}

/// Pinned host memory: an allocation of `HOST`, at the same address for host and GPUs.
#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(
    ptr: *mut *mut c_void,
    len: usize,
    _flags: c_uint,
) -> CUresult {
    let mut s = state();
    ret(s.live().and_then(|_| {
        if len == 0 || ptr.is_null() {
            return Err(INVALID_VALUE);
        }
        let bytes = vec![0u8; len].into_boxed_slice();
        let p = bytes.as_ptr() as u64;
        s.allocs.insert(p, Alloc { gpu: HOST, bytes });
        *ptr = p as *mut c_void;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeHost(ptr: *mut c_void) -> CUresult {
    cuMemFree_v2(ptr as u64)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostGetDevicePointer_v2(
    d: *mut u64,
    p: *mut c_void,
    _flags: c_uint,
) -> CUresult {
    let s = state();
    ret(s.live().and_then(|_| match s.resolve(p as u64, 1)? {
        (HOST, _) => {
            *d = p as u64;
            Ok(())
        }
        _ => Err(INVALID_VALUE),
    }))
}

/// cuMemcpyHtoDAsync / DtoHAsync: like the peer copy, host memory being `HOST`.
unsafe fn host_copy(dst: u64, src: u64, len: usize, stream: *mut c_void) -> CUresult {
    let mut s = state();
    let r = s.live().and_then(|_| {
        let (to, d) = s.resolve(dst, len)?;
        let (from, p) = s.resolve(src, len)?;
        Ok((from, to, d, p))
    });
    let Ok((from, to, d, p)) = r else {
        return ret(r.map(|_| ()));
    };
    if crate::stream::enqueue_copy(&mut s, stream, from, to, false, false, d, p, len) {
        return SUCCESS;
    }
    drop(s);
    transfer(from, to, false, d, p, len);
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: u64,
    src: *const c_void,
    len: usize,
    stream: *mut c_void,
) -> CUresult {
    host_copy(dst, src as u64, len, stream)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: u64,
    len: usize,
    stream: *mut c_void,
) -> CUresult {
    host_copy(dst as u64, src, len, stream)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(ptr: u64) -> CUresult {
    let mut s = state();
    // Freeing works on a lost context too, as the real driver lets cleanup run.
    match s.allocs.remove(&ptr) {
        Some(_) => SUCCESS,
        None => INVALID_VALUE,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(dst: u64, src: *const c_void, len: usize) -> CUresult {
    let s = state();
    ret(s.live().and_then(|_| {
        let (_, d) = s.resolve(dst, len)?;
        std::ptr::copy(src as *const u8, d, len);
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: u64, len: usize) -> CUresult {
    let s = state();
    ret(s.live().and_then(|_| {
        let (_, p) = s.resolve(src, len)?;
        std::ptr::copy(p, dst as *mut u8, len);
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: u64, value: c_uint, words: usize) -> CUresult {
    let s = state();
    ret(s.live().and_then(|_| {
        let (_, d) = s.resolve(dst, words * 4)?;
        let out = std::slice::from_raw_parts_mut(d, words * 4);
        for w in out.chunks_exact_mut(4) {
            w.copy_from_slice(&value.to_ne_bytes());
        }
        Ok(())
    }))
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
    let r = s.live().and_then(|_| {
        let (to, d) = s.resolve(dst, len)?;
        let (from, p) = s.resolve(src, len)?;
        if ctx_gpu(dst_ctx)? != to || ctx_gpu(src_ctx)? != from {
            return Err(INVALID_VALUE);
        }
        Ok((from, to, s.over_p2p(from, to), d, p))
    });
    let Ok((from, to, p2p, d, p)) = r else {
        return ret(r.map(|_| ()));
    };
    if crate::stream::enqueue_copy(&mut s, stream, from, to, p2p, false, d, p, len) {
        return SUCCESS;
    }
    drop(s);
    transfer(from, to, p2p, d, p, len);
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
    ret(granted(dev, peer).map(|g| *can = c_int::from(g)))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetP2PAttribute(
    v: *mut c_int,
    attr: c_int,
    src: c_int,
    dst: c_int,
) -> CUresult {
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

#[no_mangle]
pub unsafe extern "C" fn cuCtxEnablePeerAccess(peer_ctx: *mut c_void, _flags: c_uint) -> CUresult {
    let mut s = state();
    ret(s.live().and_then(|me| {
        let peer = ctx_gpu(peer_ctx)?;
        let allowed = rig().pair(me, peer).filter(|p| p.access);
        match allowed {
            None => Err(PEER_ACCESS_UNSUPPORTED),
            Some(p) if p.fault == "enable-fails" => Err(PEER_ACCESS_UNSUPPORTED),
            Some(p) if p.fault == "enable-hangs" => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            Some(_) if !s.peers.insert((me, peer)) => Err(PEER_ACCESS_ALREADY_ENABLED),
            Some(_) => Ok(()),
        }
    }))
}

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

/// Accepts PTX text of the form rigdoctor ships (`.version`, `.target`, `.entry NAME(`).
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(
    module: *mut *mut c_void,
    image: *const c_void,
) -> CUresult {
    let mut s = state();
    ret(s.live().and_then(|_| {
        if image.is_null() {
            return Err(INVALID_VALUE);
        }
        let text = CStr::from_ptr(image as *const c_char).to_string_lossy();
        if !text.contains(".version") || !text.contains(".target") {
            return Err(INVALID_PTX);
        }
        if rig().faults.module_load.as_deref() == Some("unsupported-ptx") {
            return Err(UNSUPPORTED_PTX_VERSION);
        }
        let first = s.functions.len();
        for part in text.split(".entry").skip(1) {
            let name: String = part
                .trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            s.functions.push(name);
        }
        *module = (first + 1) as *mut c_void;
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(_module: *mut c_void) -> CUresult {
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    f: *mut *mut c_void,
    _module: *mut c_void,
    name: *const c_char,
) -> CUresult {
    let s = state();
    ret(s.live().and_then(|_| {
        let name = CStr::from_ptr(name).to_string_lossy();
        let i = s
            .functions
            .iter()
            .position(|n| *n == name)
            .ok_or(NOT_FOUND)?;
        *f = (i + 1) as *mut c_void;
        Ok(())
    }))
}

/// Runs `copy_v4(dst, src, n)`: n 16-byte elements, on the current context's GPU. Touching
/// another GPU's memory without peer access is an illegal address, sticky as on hardware.
#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: *mut c_void,
    _gx: c_uint,
    _gy: c_uint,
    _gz: c_uint,
    _bx: c_uint,
    _by: c_uint,
    _bz: c_uint,
    _shared: c_uint,
    stream: *mut c_void,
    params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    let mut s = state();
    let r = s.live().and_then(|me| {
        let name = (f as usize)
            .checked_sub(1)
            .and_then(|i| s.functions.get(i))
            .ok_or(INVALID_HANDLE)?;
        if name == KERNEL_SPIN && !params.is_null() {
            let arg = |i: usize| *(*params.add(i) as *const u64);
            return Ok(Err(crate::stream::Launch::Spin(arg(0), arg(1))));
        }
        if name != KERNEL_COPY || params.is_null() {
            return Err(INVALID_VALUE);
        }
        let arg = |i: usize| *(*params.add(i) as *const u64);
        let (dst, src, n) = (arg(0), arg(1), arg(2));
        let len = (n as usize).checked_mul(16).ok_or(INVALID_VALUE)?;
        let ((to, d), (from, p)) = match (s.resolve(dst, len), s.resolve(src, len)) {
            (Ok(d), Ok(p)) => (d, p),
            // Outside any allocation: the kernel faults.
            _ => return Ok(Err(crate::stream::Launch::Fault(ILLEGAL_ADDRESS))),
        };
        // Mapped host memory is reachable from every GPU.
        for other in [from, to].into_iter().filter(|&g| g != me && g != HOST) {
            let faulty = rig()
                .pair(from, to)
                .is_some_and(|p| p.fault == "illegal-address");
            if !s.peers.contains(&(me, other)) || faulty {
                return Ok(Err(crate::stream::Launch::Fault(ILLEGAL_ADDRESS)));
            }
        }
        Ok(Ok((from, to, from != to, d, p, len)))
    });
    match r {
        Err(e) => e,
        Ok(Err(launch)) => {
            if !crate::stream::enqueue_launch(&mut s, stream, launch) {
                if let crate::stream::Launch::Fault(sticky) = launch {
                    // Launch succeeds; the fault surfaces at the next synchronisation.
                    s.sticky = Some(sticky);
                }
            }
            SUCCESS
        }
        Ok(Ok((from, to, p2p, d, p, len))) => {
            if crate::stream::enqueue_copy(&mut s, stream, from, to, p2p, true, d, p, len) {
                return SUCCESS;
            }
            drop(s);
            transfer(from, to, p2p, d, p, len);
            SUCCESS
        }
    }
}
