//! The P2P battery's worker side: what CUDA grants between devices, and a verified transfer per
//! ordered pair over every path (staged control, copy engine, SM read, SM write).

use super::cu::{self, check};
use super::driver_api::{device, device_count, init, synchronize, DeviceBuffer, Session};
use super::pattern::{compare, pattern, seed, FILL};
use crate::facts::{
    CallError, EnableAttempt, PathResult, PeerAccess, Probed, StepError, TransferPath, Verdict,
};
use crate::measure::gpu::{MatrixAnswer, Note, PairAnswer, Step};
use cudarc::driver::sys::CUdevice_P2PAttribute as P2pAttr;
use std::ffi::c_void;

/// Bytes per transfer: 4096 pages of 4 KiB and 8 large pages of 2 MiB, so a mistranslated or
/// unmapped page is hit, yet the whole matrix of an 8-GPU rig takes well under a second.
pub const TRANSFER_BYTES: usize = 16 << 20;

/// The devices to cover: all of CUDA's, or the selection, each checked to exist.
pub fn select(devices: Option<Vec<i32>>) -> Result<Vec<i32>, StepError> {
    let count = device_count()?;
    match devices {
        None => Ok((0..count).collect()),
        Some(d) => match d.iter().find(|&&x| x < 0 || x >= count) {
            Some(bad) => Err(StepError::invalid(format!(
                "--devices: there is no CUDA device {bad} (CUDA sees {count}: 0..{})",
                count - 1
            ))),
            None => Ok(d),
        },
    }
}

/// The matrix step: the devices covered, what CUDA grants per ordered pair, and the steps to
/// run next (each GPU's self-test, then every ordered pair granted in at least one direction).
pub fn matrix(devices: Option<Vec<i32>>) -> Result<(MatrixAnswer, Vec<Step>), StepError> {
    let devices = select(devices)?;
    let mut access = Vec::new();
    for &from in &devices {
        for &to in devices.iter().filter(|&&t| t != from) {
            access.push(peer_access(from, to));
        }
    }
    let granted = |a: i32, b: i32| crate::facts::granted(&access, a, b);
    let mut steps: Vec<Step> = devices
        .iter()
        .map(|&d| Step::GpuSelftest { device: d })
        .collect();
    // Both directions of a pair next to each other: when one hangs, the parent reports the
    // other as not tried instead of paying a second deadline.
    for (i, &a) in devices.iter().enumerate() {
        for &b in &devices[i + 1..] {
            if granted(a, b) || granted(b, a) {
                steps.push(Step::P2pPair { from: a, to: b });
                steps.push(Step::P2pPair { from: b, to: a });
            }
        }
    }
    Ok((MatrixAnswer { devices, access }, steps))
}

fn peer_access(from: i32, to: i32) -> PeerAccess {
    let probe = |r: Result<i32, CallError>| match r {
        Ok(v) => Probed::Known(v),
        Err(c) => Probed::failed(c),
    };
    let devs = device(from).and_then(|a| Ok((a, device(to)?)));
    let (a, b, api) = match (devs, cu::api()) {
        (Ok((a, b)), Ok(api)) => (a, b, api),
        (Err(e), _) => {
            let why: Probed<()> = Probed::failed(e.at("cuDeviceGet"));
            return PeerAccess {
                from,
                to,
                can_access: why.clone().map(|_| false),
                access_supported: why.clone().map(|_| false),
                perf_rank: why.clone().map(|_| 0),
                native_atomics: why.map(|_| false),
            };
        }
        (_, Err(e)) => {
            let why: Probed<()> = Probed::unknown(crate::facts::Why::NotRun, e);
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
    let can_access = check(unsafe { (api.cuDeviceCanAccessPeer)(&mut can, a, b) })
        .map(|_| can)
        .map_err(|e| e.at("cuDeviceCanAccessPeer"));
    let attr = |attr: P2pAttr| {
        let mut v = 0;
        // SAFETY: as above.
        check(unsafe { (api.cuDeviceGetP2PAttribute)(&mut v, attr as i32, a, b) })
            .map(|_| v)
            .map_err(|e| e.at(format!("cuDeviceGetP2PAttribute({attr:?})")))
    };
    PeerAccess {
        from,
        to,
        can_access: probe(can_access).map(|v| v != 0),
        access_supported: probe(attr(P2pAttr::CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED))
            .map(|v| v != 0),
        perf_rank: probe(attr(P2pAttr::CU_DEVICE_P2P_ATTRIBUTE_PERFORMANCE_RANK)),
        native_atomics: probe(attr(
            P2pAttr::CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED,
        ))
        .map(|v| v != 0),
    }
}

/// Whether CUDA grants `a` access to `b`'s memory.
pub fn can_access(a: i32, b: i32) -> bool {
    let (Ok(da), Ok(db), Ok(api)) = (device(a), device(b), cu::api()) else {
        return false;
    };
    let mut v = 0;
    // SAFETY: devices from cuDeviceGet, valid out pointer.
    check(unsafe { (api.cuDeviceCanAccessPeer)(&mut v, da, db) }).is_ok() && v != 0
}

/// A path's failure as its verdict.
fn error_verdict(c: CallError) -> Verdict {
    Verdict::Error {
        error: c.to_string(),
        cause: Some(c),
    }
}

/// What a pair step answers.
pub struct PairRun {
    pub answer: PairAnswer,
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
        transfer: impl FnOnce(&mut Self) -> Result<(), CallError>,
    ) -> Result<Verdict, CallError> {
        self.session
            .bind(self.to)
            .map_err(|e| e.at("cuCtxSetCurrent"))?;
        self.dst
            .fill(FILL)
            .map_err(|e| e.at("cuMemsetD32 (destination fill)"))?;
        transfer(self)?;
        self.session
            .bind(self.to)
            .map_err(|e| e.at("cuCtxSetCurrent"))?;
        self.dst
            .download(&mut self.got)
            .map_err(|e| e.at("cuMemcpyDtoH (read back)"))?;
        Ok(match compare(&self.sent, &self.got) {
            None => Verdict::Ok,
            Some(m) => Verdict::Mismatch(m),
        })
    }

    fn peer_copy(&mut self) -> Result<(), CallError> {
        let src_ctx = self
            .session
            .bind(self.from)
            .map_err(|e| e.at("cuCtxSetCurrent"))?;
        let dst_ctx = self
            .session
            .context(self.to)
            .map_err(|e| e.at("cuDevicePrimaryCtxRetain"))?;
        let api = cu::api()
            .map_err(|_| cu::CuError(cu::code::INVALID_CONTEXT).at("cuMemcpyPeerAsync"))?;
        // SAFETY: both buffers hold `bytes` bytes in their contexts; the null stream of the
        // current (source) context, waited for just below.
        check(unsafe {
            (api.cuMemcpyPeerAsync)(
                self.dst.ptr,
                dst_ctx,
                self.src.ptr,
                src_ctx,
                self.src.bytes,
                std::ptr::null_mut(),
            )
        })
        .map_err(|e| e.at("cuMemcpyPeerAsync"))?;
        synchronize().map_err(|e| e.at("cuCtxSynchronize after cuMemcpyPeerAsync"))
    }

    /// `copy_v4(dst, src)` on device `on`.
    fn kernel_copy(&mut self, on: i32) -> Result<(), CallError> {
        let f = self.session.copy_kernel(on)?;
        self.session.bind(on).map_err(|e| e.at("cuCtxSetCurrent"))?;
        let n = (self.src.bytes / 16) as u64;
        let (mut dst, mut src, mut n_arg) = (self.dst.ptr, self.src.ptr, n);
        let mut params: [*mut c_void; 3] = [
            &mut dst as *mut u64 as *mut c_void,
            &mut src as *mut u64 as *mut c_void,
            &mut n_arg as *mut u64 as *mut c_void,
        ];
        let blocks = n.div_ceil(256).clamp(1, 1024) as u32;
        // copy_v4 takes (u64, u64, u64), as passed; both buffers hold n 16-byte elements and
        // are reachable from `on` (local, or peer with access enabled).
        Session::launch(f, blocks, 256, std::ptr::null_mut(), &mut params)
            .map_err(|e| e.at("cuLaunchKernel(copy_v4)"))?;
        synchronize().map_err(|e| e.at("cuCtxSynchronize after copy_v4"))
    }
}

/// Enable peer access in `ctx`'s context to `peer`'s memory.
pub(super) fn enable(
    session: &mut Session,
    ctx: i32,
    peer: i32,
) -> Result<EnableAttempt, CallError> {
    let peer_ctx = session
        .context(peer)
        .map_err(|e| e.at("cuDevicePrimaryCtxRetain"))?;
    session.bind(ctx).map_err(|e| e.at("cuCtxSetCurrent"))?;
    let api = cu::api()
        .map_err(|_| cu::CuError(cu::code::INVALID_CONTEXT).at("cuCtxEnablePeerAccess"))?;
    // SAFETY: peer_ctx is a retained primary context; flags must be 0.
    let r = check(unsafe { (api.cuCtxEnablePeerAccess)(peer_ctx, 0) });
    let cause = match r {
        Ok(()) => None,
        Err(e) if e.0 == cu::code::PEER_ACCESS_ALREADY_ENABLED => None,
        Err(e) if e.sticky() => return Err(e.at("cuCtxEnablePeerAccess")),
        Err(e) => Some(e.at("cuCtxEnablePeerAccess")),
    };
    Ok(EnableAttempt {
        ctx,
        peer,
        error: cause.as_ref().map(CallError::code_name),
        cause,
    })
}

pub(super) fn disable(session: &mut Session, ctx: i32, peer: i32) {
    if let (Ok(peer_ctx), Ok(_), Ok(api)) = (session.context(peer), session.bind(ctx), cu::api()) {
        // SAFETY: as in enable; failure (not enabled) is harmless.
        let _ = unsafe { (api.cuCtxDisablePeerAccess)(peer_ctx) };
    }
}

/// The self-test of one device: a device copy and the copy kernel within it, verified. On a
/// one-GPU machine this is what proves the driver can JIT and run kernels/ PTX.
pub fn local(
    session: &mut Session,
    device: i32,
    note: &mut dyn FnMut(Note),
) -> Result<PairRun, StepError> {
    init()?;
    session.bind(device).map_err(|e| e.at("cuCtxSetCurrent"))?;
    let alloc = || {
        DeviceBuffer::new(TRANSFER_BYTES).map_err(|e| {
            e.at(format!(
                "cuMemAlloc of {TRANSFER_BYTES} bytes on device {device}"
            ))
        })
    };
    let (src, dst) = (alloc()?, alloc()?);
    let sent = pattern(seed(device, device), TRANSFER_BYTES);
    src.upload(&sent)
        .map_err(|e| e.at("cuMemcpyHtoD (pattern)"))?;
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
            note(Note::Stage(path.label().into()));
            let r = p.check(|p| match path {
                TransferPath::LocalCe => p.peer_copy(),
                _ => p.kernel_copy(device),
            });
            r.unwrap_or_else(|c| {
                lost |= c.sticky;
                error_verdict(c)
            })
        };
        let r = PathResult { path, verdict };
        note(Note::Path(r.clone()));
        paths.push(r);
    }
    if lost {
        std::mem::forget(p.src);
        std::mem::forget(p.dst);
    }
    Ok(PairRun {
        answer: PairAnswer {
            enable: Vec::new(),
            paths,
        },
        context_lost: lost,
    })
}

/// The verified transfer from `from` to `to`. `note` streams progress: `{"stage": ..}` before
/// each sub-test and `{"path": ..}` after it, so that a hang is pinned to its sub-test.
pub fn pair(
    session: &mut Session,
    from: i32,
    to: i32,
    note: &mut dyn FnMut(Note),
) -> Result<PairRun, StepError> {
    init()?;
    let alloc = |session: &mut Session, on: i32| -> Result<DeviceBuffer, CallError> {
        session.bind(on).map_err(|e| e.at("cuCtxSetCurrent"))?;
        DeviceBuffer::new(TRANSFER_BYTES).map_err(|e| {
            e.at(format!(
                "cuMemAlloc of {TRANSFER_BYTES} bytes on device {on}"
            ))
        })
    };
    let src = alloc(session, from)?;
    let dst = alloc(session, to)?;
    let sent = pattern(seed(from, to), TRANSFER_BYTES);
    session.bind(from).map_err(|e| e.at("cuCtxSetCurrent"))?;
    src.upload(&sent)
        .map_err(|e| e.at("cuMemcpyHtoD (pattern)"))?;
    let (read_granted, write_granted) = (can_access(to, from), can_access(from, to));
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
    let mut record = |note: &mut dyn FnMut(Note), path: TransferPath, verdict: Verdict| {
        let r = PathResult { path, verdict };
        note(Note::Path(r.clone()));
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
                note(Note::Stage(format!("enable {ctx}->{peer}")));
                match enable(p.session, ctx, peer) {
                    Ok(a) => enable_attempts.push(a),
                    Err(c) => {
                        lost = Some(format!("the CUDA context was lost: {c}"));
                        enable_attempts.push(EnableAttempt {
                            ctx,
                            peer,
                            error: Some(c.to_string()),
                            cause: Some(c),
                        });
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
        note(Note::Stage(path.label().into()));
        let verdict = p.check(|p| match path {
            TransferPath::Staged | TransferPath::Ce | TransferPath::LocalCe => p.peer_copy(),
            TransferPath::SmRead => p.kernel_copy(p.to),
            TransferPath::SmWrite | TransferPath::LocalSm => p.kernel_copy(p.from),
        });
        match verdict {
            Ok(v) => record(note, path, v),
            Err(c) => {
                if c.sticky {
                    lost = Some(format!("the CUDA context was lost after {}", path.label()));
                }
                record(note, path, error_verdict(c));
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
    Ok(PairRun {
        answer: PairAnswer {
            enable: enable_attempts,
            paths,
        },
        context_lost,
    })
}
