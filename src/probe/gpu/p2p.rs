//! The P2P battery's worker side: what CUDA grants between devices, and a verified transfer per
//! ordered pair over every path (staged control, copy engine, SM read, SM write).

use super::driver_api::{error_name, fail, is_sticky, unusable, DeviceBuffer, Failure, Session};
use super::pattern::{compare, pattern, seed, FILL};
use crate::facts::{EnableAttempt, PathResult, PeerAccess, Probed, TransferPath, Verdict, Why};
use cudarc::driver::sys::{self, CUdevice_P2PAttribute as P2pAttr, CUresult};
use cudarc::driver::{result, DriverError};
use serde_json::{json, Value};
use std::ffi::c_void;

/// Bytes per transfer: 4096 pages of 4 KiB and 8 large pages of 2 MiB, so a mistranslated or
/// unmapped page is hit, yet the whole matrix of an 8-GPU rig takes well under a second.
pub const TRANSFER_BYTES: usize = 16 << 20;

pub const STEP_MATRIX: &str = "p2p-matrix";
pub const STEP_PAIR: &str = "p2p";
pub const STEP_LOCAL: &str = "gpu-selftest";

pub fn local_step(device: i32) -> String {
    format!("{STEP_LOCAL} {device}")
}

/// `"gpu-selftest 2"` -> 2.
pub fn parse_local_step(step: &str) -> Option<i32> {
    step.strip_prefix(STEP_LOCAL)?.trim().parse().ok()
}

/// `p2p-matrix` or `p2p-matrix 0,2,3`.
pub fn matrix_step(devices: Option<&[i32]>) -> String {
    match devices {
        Some(d) => {
            let list: Vec<String> = d.iter().map(|x| x.to_string()).collect();
            format!("{STEP_MATRIX} {}", list.join(","))
        }
        None => STEP_MATRIX.to_string(),
    }
}

pub fn pair_step(from: i32, to: i32) -> String {
    format!("{STEP_PAIR} {from} {to}")
}

/// `"p2p 0 1"` -> (0, 1).
pub fn parse_pair_step(step: &str) -> Option<(i32, i32)> {
    let mut w = step.strip_prefix(STEP_PAIR)?.split_whitespace();
    let from = w.next()?.parse().ok()?;
    let to = w.next()?.parse().ok()?;
    w.next().is_none().then_some((from, to))
}

/// The devices a matrix step covers: `None` for all of them.
pub fn parse_matrix_step(step: &str) -> Option<Option<Vec<i32>>> {
    let rest = step.strip_prefix(STEP_MATRIX)?.trim();
    if rest.is_empty() {
        return Some(None);
    }
    rest.split(',')
        .map(|x| x.trim().parse().ok())
        .collect::<Option<Vec<i32>>>()
        .map(Some)
}

fn cuda(what: &str, e: DriverError) -> String {
    format!("{what}: {}", error_name(&e))
}

/// The matrix step: the devices covered, what CUDA grants per ordered pair, and the pair steps
/// to run next (every ordered pair granted in at least one direction).
pub fn matrix(devices: Option<Vec<i32>>) -> Result<(Value, Vec<String>), String> {
    init()?;
    let count = result::device::get_count().map_err(|e| cuda("cuDeviceGetCount", e))?;
    let devices = match devices {
        None => (0..count).collect(),
        Some(d) => {
            if let Some(bad) = d.iter().find(|&&x| x < 0 || x >= count) {
                return Err(format!(
                    "--devices: there is no CUDA device {bad} (CUDA sees {count}: 0..{})",
                    count - 1
                ));
            }
            d
        }
    };
    let mut access = Vec::new();
    for &from in &devices {
        for &to in devices.iter().filter(|&&t| t != from) {
            access.push(peer_access(from, to));
        }
    }
    let granted = |a: i32, b: i32| {
        access
            .iter()
            .any(|p| p.from == a && p.to == b && p.can_access.known() == Some(&true))
    };
    let mut steps: Vec<String> = devices.iter().map(|&d| local_step(d)).collect();
    for &from in &devices {
        for &to in devices.iter().filter(|&&t| t != from) {
            if granted(from, to) || granted(to, from) {
                steps.push(pair_step(from, to));
            }
        }
    }
    let value = json!({ "devices": devices, "access": access });
    Ok((value, steps))
}

/// Check the library, then cuInit (cheap when done already: a restarted worker starts here).
pub(super) fn init() -> Result<(), String> {
    if let Some(why) =
        unusable(&super::cuda::SYMBOLS).or_else(|| unusable(&super::driver_api::TRANSFER_SYMBOLS))
    {
        return Err(why);
    }
    result::init().map_err(|e| cuda("cuInit", e))
}

fn peer_access(from: i32, to: i32) -> PeerAccess {
    let probe = |r: Result<i32, DriverError>, call: &str| match r {
        Ok(v) => Probed::Known(v),
        Err(e) => Probed::unknown(Why::Failed, cuda(call, e)),
    };
    let devs = result::device::get(from).and_then(|a| Ok((a, result::device::get(to)?)));
    let (a, b) = match devs {
        Ok(d) => d,
        Err(e) => {
            let why: Probed<()> = Probed::unknown(Why::Failed, cuda("cuDeviceGet", e));
            return PeerAccess {
                from,
                to,
                can_access: why.clone().map(|_| false),
                access_supported: why.clone().map(|_| false),
                perf_rank: why.clone().map(|_| 0),
                native_atomics: why.map(|_| false),
            };
        }
    };
    let mut can = 0;
    // SAFETY: a and b come from cuDeviceGet; `can` is a valid out pointer.
    let can_access = unsafe { sys::cuDeviceCanAccessPeer(&mut can, a, b) }
        .result()
        .map(|_| can);
    let attr = |attr: P2pAttr| {
        let mut v = 0;
        // SAFETY: as above.
        unsafe { sys::cuDeviceGetP2PAttribute(&mut v, attr, a, b) }
            .result()
            .map(|_| v)
    };
    let call = "cuDeviceGetP2PAttribute";
    PeerAccess {
        from,
        to,
        can_access: probe(can_access, "cuDeviceCanAccessPeer").map(|v| v != 0),
        access_supported: probe(
            attr(P2pAttr::CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED),
            call,
        )
        .map(|v| v != 0),
        perf_rank: probe(
            attr(P2pAttr::CU_DEVICE_P2P_ATTRIBUTE_PERFORMANCE_RANK),
            call,
        ),
        native_atomics: probe(
            attr(P2pAttr::CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED),
            call,
        )
        .map(|v| v != 0),
    }
}

/// What a pair step answers.
pub struct PairAnswer {
    pub value: Value,
    /// The CUDA context was lost (sticky error): this worker must not run further steps.
    pub context_lost: bool,
}

struct Pair<'a> {
    session: &'a mut Session,
    from: i32,
    to: i32,
    src: DeviceBuffer,
    dst: DeviceBuffer,
    sent: Vec<u8>,
    got: Vec<u8>,
}

impl Pair<'_> {
    /// Fill the destination, run `transfer`, read the destination back and judge it.
    fn check(
        &mut self,
        transfer: impl FnOnce(&mut Self) -> Result<(), Failure>,
    ) -> Result<Verdict, Failure> {
        self.session
            .bind(self.to)
            .map_err(|e| fail("cuCtxSetCurrent", e))?;
        self.dst
            .fill(FILL)
            .map_err(|e| fail("cuMemsetD32 (destination fill)", e))?;
        transfer(self)?;
        self.session
            .bind(self.to)
            .map_err(|e| fail("cuCtxSetCurrent", e))?;
        self.dst
            .download(&mut self.got)
            .map_err(|e| fail("cuMemcpyDtoH (read back)", e))?;
        Ok(match compare(&self.sent, &self.got) {
            None => Verdict::Ok,
            Some(m) => Verdict::Mismatch(m),
        })
    }

    fn peer_copy(&mut self) -> Result<(), Failure> {
        let src_ctx = self
            .session
            .bind(self.from)
            .map_err(|e| fail("cuCtxSetCurrent", e))?;
        let dst_ctx = self
            .session
            .context(self.to)
            .map_err(|e| fail("cuDevicePrimaryCtxRetain", e))?;
        // SAFETY: both buffers hold `bytes` bytes in their contexts; the null stream of the
        // current (source) context, waited for just below.
        unsafe {
            result::memcpy_peer_async(
                dst_ctx,
                self.dst.ptr,
                src_ctx,
                self.src.ptr,
                self.src.bytes,
                std::ptr::null_mut(),
            )
        }
        .map_err(|e| fail("cuMemcpyPeerAsync", e))?;
        result::ctx::synchronize().map_err(|e| fail("cuCtxSynchronize after cuMemcpyPeerAsync", e))
    }

    /// `copy_v4(dst, src)` on device `on`.
    fn kernel_copy(&mut self, on: i32) -> Result<(), Failure> {
        let f = self.session.copy_kernel(on).map_err(|message| Failure {
            message,
            sticky: false,
        })?;
        self.session
            .bind(on)
            .map_err(|e| fail("cuCtxSetCurrent", e))?;
        let n = (self.src.bytes / 16) as u64;
        let (mut dst, mut src, mut n_arg) = (self.dst.ptr, self.src.ptr, n);
        let mut params: [*mut c_void; 3] = [
            &mut dst as *mut u64 as *mut c_void,
            &mut src as *mut u64 as *mut c_void,
            &mut n_arg as *mut u64 as *mut c_void,
        ];
        let blocks = n.div_ceil(256).clamp(1, 1024) as u32;
        // SAFETY: copy_v4 takes (u64, u64, u64), as passed; both buffers hold n 16-byte
        // elements and are reachable from `on` (local, or peer with access enabled).
        unsafe {
            result::launch_kernel(
                f,
                (blocks, 1, 1),
                (256, 1, 1),
                0,
                std::ptr::null_mut(),
                &mut params,
            )
        }
        .map_err(|e| fail("cuLaunchKernel(copy_v4)", e))?;
        result::ctx::synchronize().map_err(|e| fail("cuCtxSynchronize after copy_v4", e))
    }
}

/// Enable peer access in `ctx`'s context to `peer`'s memory.
pub(super) fn enable(session: &mut Session, ctx: i32, peer: i32) -> Result<EnableAttempt, Failure> {
    let peer_ctx = session
        .context(peer)
        .map_err(|e| fail("cuDevicePrimaryCtxRetain", e))?;
    session.bind(ctx).map_err(|e| fail("cuCtxSetCurrent", e))?;
    // SAFETY: peer_ctx is a retained primary context; flags must be 0.
    let r = unsafe { sys::cuCtxEnablePeerAccess(peer_ctx, 0) }.result();
    let error = match r {
        Ok(()) => None,
        Err(e) if e.0 == CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => None,
        Err(e) if is_sticky(&e) => return Err(fail("cuCtxEnablePeerAccess", e)),
        Err(e) => Some(error_name(&e)),
    };
    Ok(EnableAttempt { ctx, peer, error })
}

pub(super) fn disable(session: &mut Session, ctx: i32, peer: i32) {
    if let (Ok(peer_ctx), Ok(_)) = (session.context(peer), session.bind(ctx)) {
        // SAFETY: as in enable; failure (not enabled) is harmless.
        let _ = unsafe { sys::cuCtxDisablePeerAccess(peer_ctx) };
    }
}

/// The self-test of one device: a device copy and the copy kernel within it, verified. On a
/// one-GPU machine this is what proves the driver can JIT and run kernels/ PTX.
pub fn local(
    session: &mut Session,
    device: i32,
    note: &mut dyn FnMut(Value),
) -> Result<PairAnswer, String> {
    init()?;
    session
        .bind(device)
        .map_err(|e| cuda("cuCtxSetCurrent", e))?;
    let alloc = || {
        DeviceBuffer::new(TRANSFER_BYTES).map_err(|e| {
            cuda(
                &format!("cuMemAlloc of {TRANSFER_BYTES} bytes on device {device}"),
                e,
            )
        })
    };
    let (src, dst) = (alloc()?, alloc()?);
    let sent = pattern(seed(device, device), TRANSFER_BYTES);
    src.upload(&sent)
        .map_err(|e| cuda("cuMemcpyHtoD (pattern)", e))?;
    let mut p = Pair {
        session,
        from: device,
        to: device,
        src,
        dst,
        sent,
        got: vec![0; TRANSFER_BYTES],
    };
    let mut paths = Vec::new();
    let mut lost = false;
    for path in [TransferPath::LocalCe, TransferPath::LocalSm] {
        let verdict = if lost {
            Verdict::Skipped {
                reason: "the CUDA context was lost".into(),
            }
        } else {
            note(json!({ "stage": path.label() }));
            let r = p.check(|p| match path {
                TransferPath::LocalCe => p.peer_copy(),
                _ => p.kernel_copy(device),
            });
            r.unwrap_or_else(|f| {
                lost |= f.sticky;
                Verdict::Error { error: f.message }
            })
        };
        let r = PathResult { path, verdict };
        note(json!({ "path": r }));
        paths.push(r);
    }
    if lost {
        std::mem::forget(p.src);
        std::mem::forget(p.dst);
    }
    Ok(PairAnswer {
        value: json!({ "enable": [], "paths": paths }),
        context_lost: lost,
    })
}

/// The verified transfer from `from` to `to`. `note` streams progress: `{"stage": ..}` before
/// each sub-test and `{"path": ..}` after it, so that a hang is pinned to its sub-test.
pub fn pair(
    session: &mut Session,
    from: i32,
    to: i32,
    note: &mut dyn FnMut(Value),
) -> Result<PairAnswer, String> {
    init()?;
    let alloc = |session: &mut Session, on: i32| -> Result<DeviceBuffer, String> {
        session.bind(on).map_err(|e| cuda("cuCtxSetCurrent", e))?;
        DeviceBuffer::new(TRANSFER_BYTES).map_err(|e| {
            cuda(
                &format!("cuMemAlloc of {TRANSFER_BYTES} bytes on device {on}"),
                e,
            )
        })
    };
    let src = alloc(session, from)?;
    let dst = alloc(session, to)?;
    let sent = pattern(seed(from, to), TRANSFER_BYTES);
    session.bind(from).map_err(|e| cuda("cuCtxSetCurrent", e))?;
    src.upload(&sent)
        .map_err(|e| cuda("cuMemcpyHtoD (pattern)", e))?;
    let can = |a: i32, b: i32| -> bool {
        let (Ok(da), Ok(db)) = (result::device::get(a), result::device::get(b)) else {
            return false;
        };
        let mut v = 0;
        // SAFETY: devices from cuDeviceGet, valid out pointer.
        unsafe { sys::cuDeviceCanAccessPeer(&mut v, da, db) }
            .result()
            .is_ok()
            && v != 0
    };
    let (read_granted, write_granted) = (can(to, from), can(from, to));
    let mut p = Pair {
        session,
        from,
        to,
        src,
        dst,
        sent,
        got: vec![0; TRANSFER_BYTES],
    };
    let mut paths: Vec<PathResult> = Vec::new();
    let mut enable_attempts: Vec<EnableAttempt> = Vec::new();
    let mut lost: Option<String> = None;
    let mut record = |note: &mut dyn FnMut(Value), path: TransferPath, verdict: Verdict| {
        let r = PathResult { path, verdict };
        note(json!({ "path": r }));
        paths.push(r);
    };

    for path in TransferPath::ALL {
        if path == TransferPath::Ce && lost.is_none() {
            // Peer access on, in each direction CUDA grants: the destination reads the source
            // (SM read), the source writes the destination (SM write).
            for (ctx, peer, granted) in [(to, from, read_granted), (from, to, write_granted)] {
                if !granted {
                    continue;
                }
                note(json!({ "stage": format!("enable {ctx}->{peer}") }));
                match enable(p.session, ctx, peer) {
                    Ok(a) => enable_attempts.push(a),
                    Err(f) => {
                        enable_attempts.push(EnableAttempt {
                            ctx,
                            peer,
                            error: Some(f.message.clone()),
                        });
                        lost = Some(format!("the CUDA context was lost: {}", f.message));
                    }
                }
            }
        }
        if let Some(why) = &lost {
            let reason = why.clone();
            record(note, path, Verdict::Skipped { reason });
            continue;
        }
        let enabled = |ctx: i32| {
            enable_attempts
                .iter()
                .any(|a| a.ctx == ctx && a.error.is_none())
        };
        let skip = match path {
            TransferPath::Staged => None,
            TransferPath::Ce if !enabled(from) && !enabled(to) => {
                Some("peer access could not be enabled in either direction")
            }
            TransferPath::SmRead if !read_granted => {
                Some("CUDA grants no access to the source's memory from the destination")
            }
            TransferPath::SmRead if !enabled(to) => {
                Some("peer access from the destination could not be enabled")
            }
            TransferPath::SmWrite if !write_granted => {
                Some("CUDA grants no access to the destination's memory from the source")
            }
            TransferPath::SmWrite if !enabled(from) => {
                Some("peer access from the source could not be enabled")
            }
            _ => None,
        };
        if let Some(reason) = skip {
            record(
                note,
                path,
                Verdict::Skipped {
                    reason: reason.into(),
                },
            );
            continue;
        }
        note(json!({ "stage": path.label() }));
        let verdict = p.check(|p| match path {
            TransferPath::Staged | TransferPath::Ce | TransferPath::LocalCe => p.peer_copy(),
            TransferPath::SmRead => p.kernel_copy(p.to),
            TransferPath::SmWrite | TransferPath::LocalSm => p.kernel_copy(p.from),
        });
        match verdict {
            Ok(v) => record(note, path, v),
            Err(f) => {
                if f.sticky {
                    lost = Some(format!("the CUDA context was lost after {}", path.label()));
                }
                record(note, path, Verdict::Error { error: f.message });
            }
        }
    }
    if lost.is_none() {
        disable(p.session, to, from);
        disable(p.session, from, to);
    }
    let context_lost = lost.is_some();
    if context_lost {
        // Freeing on a lost context can block or fail; the worker exits right after this step.
        std::mem::forget(p.src);
        std::mem::forget(p.dst);
    }
    Ok(PairAnswer {
        value: json!({ "enable": enable_attempts, "paths": paths }),
        context_lost,
    })
}
