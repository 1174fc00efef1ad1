//! The bandwidth battery's worker side: timed, verified copies between host and GPUs and
//! between GPUs, with the links read under load.
//!
//! Method (nvbandwidth's): per sample, a one-thread `spin_wait` kernel holds each stream on a
//! word of pinned host memory while the warm-up and timed copies queue behind it; the host
//! releases the word and CUDA events around the timed copies give the time. The destination is
//! pre-filled and compared with the sent pattern after every sample: a mismatch is a finding,
//! never a number.

use super::cu::{self, check, CuError};
use super::driver_api::{init, DeviceBuffer, Event, HostBuffer, Kernel, Session, Stream};
use super::pattern::{compare, pattern, seed, FILL};
use crate::facts::{BandwidthConfig, CallError, Kind, Method, PeerAccess, StepError};
use crate::measure::gpu::{LaneResult, Note, PlanAnswer, Reading, Spec, Step, StepResult};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::time::Duration;

/// How long `spin_wait` holds a stream if the host never releases it (a crashed worker).
const SPIN_TIMEOUT_NS: u64 = 10_000_000_000;
/// NVML readings per sample while the copies run.
const LOAD_READINGS: usize = 4;

/// NVML for readings under load, opened once per worker.
pub struct Sampler {
    nvml: Result<nvml_wrapper::Nvml, String>,
    bus_ids: BTreeMap<i32, Option<String>>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            nvml: nvml_wrapper::Nvml::init().map_err(|e| format!("NVML: {e}")),
            bus_ids: BTreeMap::new(),
        }
    }
}

impl Sampler {
    fn bus_id(&mut self, device: i32) -> Option<String> {
        self.bus_ids
            .entry(device)
            .or_insert_with(|| super::cuda::bus_id(device))
            .clone()
    }

    /// Link generation/width, throttle reasons and power draw of `device`; with `full`, also
    /// the maximum link, the replay counter and the power limits.
    pub fn read(&mut self, device: i32, full: bool) -> Reading {
        let bus_id = self.bus_id(device);
        let mut r = Reading {
            device,
            bus_id: bus_id.clone(),
            ..Reading::default()
        };
        let nvml = match &self.nvml {
            Ok(n) => n,
            Err(e) => {
                r.unread.push(e.clone());
                return r;
            }
        };
        let Some(bus) = bus_id else {
            r.unread.push("no PCI bus id from CUDA".into());
            return r;
        };
        let d = match nvml.device_by_pci_bus_id(bus.as_str()) {
            Ok(d) => d,
            Err(e) => {
                r.unread
                    .push(format!("nvmlDeviceGetHandleByPciBusId({bus}): {e}"));
                return r;
            }
        };
        let mut unread = Vec::new();
        let u = &mut unread;
        r.gen = nvml_read(d.current_pcie_link_gen(), "CurrPcieLinkGeneration", u);
        r.width = nvml_read(d.current_pcie_link_width(), "CurrPcieLinkWidth", u);
        r.throttle = nvml_read(
            d.current_throttle_reasons(),
            "CurrentClocksThrottleReasons",
            u,
        )
        .map(|t| t.bits());
        r.power_mw = nvml_read(d.power_usage(), "PowerUsage", u);
        if full {
            r.power_limit_mw = nvml_read(d.enforced_power_limit(), "EnforcedPowerLimit", u);
            r.power_default_mw = nvml_read(
                d.power_management_limit_default(),
                "PowerManagementDefaultLimit",
                u,
            );
            r.power_range_mw = nvml_read(
                d.power_management_limit_constraints(),
                "PowerManagementLimitConstraints",
                u,
            )
            .map(|c| [c.min_limit, c.max_limit]);
            r.max_gen = nvml_read(d.max_pcie_link_gen(), "MaxPcieLinkGeneration", u);
            r.max_width = nvml_read(d.max_pcie_link_width(), "MaxPcieLinkWidth", u);
            r.replays = nvml_read(d.pcie_replay_counter(), "PcieReplayCounter", u).map(u64::from);
        }
        r.unread = unread;
        r
    }
}

/// The value, or None with "nvmlDeviceGet<call>: why" noted.
fn nvml_read<T>(
    v: Result<T, nvml_wrapper::error::NvmlError>,
    call: &str,
    unread: &mut Vec<String>,
) -> Option<T> {
    v.map_err(|e| unread.push(format!("nvmlDeviceGet{call}: {e}")))
        .ok()
}

/// The plan step: the devices and what CUDA grants between them (the P2P matrix's own step),
/// each GPU's link before any copy, and the measurement steps to run.
pub fn plan(
    devices: Option<Vec<i32>>,
    cfg: &BandwidthConfig,
    sampler: &mut Sampler,
) -> Result<(PlanAnswer, Vec<Step>), StepError> {
    let (m, _) = super::p2p::matrix(devices)?;
    let before: Vec<Reading> = m.devices.iter().map(|&d| sampler.read(d, true)).collect();
    let steps = measurement_steps(&m.devices, &m.access, cfg);
    Ok((
        PlanAnswer {
            devices: m.devices,
            access: m.access,
            before,
        },
        steps,
    ))
}

/// Every measurement the config asks for, phase by phase, then the closing reading.
pub fn measurement_steps(
    devices: &[i32],
    access: &[PeerAccess],
    cfg: &BandwidthConfig,
) -> Vec<Step> {
    let granted = |a: i32, b: i32| crate::facts::granted(access, a, b);
    let pairs: Vec<(i32, i32)> = devices
        .iter()
        .flat_map(|&a| devices.iter().map(move |&b| (a, b)))
        .filter(|&(a, b)| a != b && (cfg.all_pairs || a < b))
        .collect();
    let spec = |latency, kind, method, from, to, bidir| Spec {
        latency,
        kind,
        method,
        from,
        to,
        bidir,
    };
    let mut specs: Vec<Spec> = Vec::new();
    for &m in &cfg.methods {
        for &d in devices {
            specs.push(spec(false, Kind::H2d, m, None, Some(d), false));
            specs.push(spec(false, Kind::D2h, m, Some(d), None, false));
            if cfg.bidirectional {
                specs.push(spec(false, Kind::H2d, m, None, Some(d), true));
            }
        }
    }
    for &m in &cfg.methods {
        for &d in devices {
            specs.push(spec(false, Kind::Local, m, Some(d), Some(d), false));
        }
    }
    for &m in &cfg.methods {
        for &(a, b) in &pairs {
            // The SM kernel runs on the source and writes the peer: it needs that direction.
            let ok = match m {
                Method::Ce => granted(a, b) || granted(b, a),
                Method::Sm => granted(a, b),
            };
            if ok {
                specs.push(spec(false, Kind::P2p, m, Some(a), Some(b), false));
                if cfg.bidirectional && a < b && (m == Method::Ce || granted(b, a)) {
                    specs.push(spec(false, Kind::P2p, m, Some(a), Some(b), true));
                }
            }
        }
    }
    for &(a, b) in &pairs {
        specs.push(spec(
            false,
            Kind::Staged,
            Method::Ce,
            Some(a),
            Some(b),
            false,
        ));
        if cfg.bidirectional && a < b {
            specs.push(spec(
                false,
                Kind::Staged,
                Method::Ce,
                Some(a),
                Some(b),
                true,
            ));
        }
    }
    if cfg.latency {
        for &d in devices {
            specs.push(spec(true, Kind::H2d, Method::Ce, None, Some(d), false));
            specs.push(spec(true, Kind::D2h, Method::Ce, Some(d), None, false));
        }
        for &(a, b) in &pairs {
            if granted(a, b) || granted(b, a) {
                specs.push(spec(true, Kind::P2p, Method::Ce, Some(a), Some(b), false));
            }
            specs.push(spec(
                true,
                Kind::Staged,
                Method::Ce,
                Some(a),
                Some(b),
                false,
            ));
        }
    }
    let mut steps: Vec<Step> = specs.into_iter().map(Step::Bandwidth).collect();
    steps.push(Step::BandwidthEnd {
        devices: devices.to_vec(),
    });
    steps
}

/// The closing step: each GPU's replay counter after the last copy.
pub fn end(devices: &[i32], sampler: &mut Sampler) -> Result<Vec<Reading>, StepError> {
    init()?;
    Ok(devices.iter().map(|&d| sampler.read(d, true)).collect())
}

/// What a measurement step answers.
pub struct Answer {
    pub result: Result<StepResult, StepError>,
    /// A sticky CUDA error: this worker must stop.
    pub context_lost: bool,
}

enum Buf {
    Device { on: i32, mem: DeviceBuffer },
    Host(HostBuffer),
}

impl Buf {
    fn new(session: &mut Session, on: Option<i32>, bytes: usize) -> Result<Buf, CallError> {
        match on {
            Some(d) => {
                session.bind(d).map_err(|e| e.at("cuCtxSetCurrent"))?;
                let mem = DeviceBuffer::new(bytes)
                    .map_err(|e| e.at(format!("cuMemAlloc of {bytes} bytes on GPU {d}")))?;
                Ok(Buf::Device { on: d, mem })
            }
            // The caller has bound the GPU whose context allocates it.
            None => HostBuffer::new(bytes)
                .map(Buf::Host)
                .map_err(|e| e.at(format!("cuMemHostAlloc of {bytes} bytes"))),
        }
    }

    fn write(&mut self, session: &mut Session, data: &[u8]) -> Result<(), CallError> {
        match self {
            Buf::Device { on, mem } => {
                session.bind(*on).map_err(|e| e.at("cuCtxSetCurrent"))?;
                mem.upload(data).map_err(|e| e.at("cuMemcpyHtoD (pattern)"))
            }
            Buf::Host(h) => {
                h.as_mut_slice().copy_from_slice(data);
                Ok(())
            }
        }
    }

    fn fill(&mut self, session: &mut Session) -> Result<(), CallError> {
        match self {
            Buf::Device { on, mem } => {
                session.bind(*on).map_err(|e| e.at("cuCtxSetCurrent"))?;
                mem.fill(FILL)
                    .map_err(|e| e.at("cuMemsetD32 (destination fill)"))
            }
            Buf::Host(h) => {
                for w in h.as_mut_slice().chunks_exact_mut(4) {
                    w.copy_from_slice(&FILL.to_ne_bytes());
                }
                Ok(())
            }
        }
    }

    fn read(&self, session: &mut Session, out: &mut [u8]) -> Result<(), CallError> {
        match self {
            Buf::Device { on, mem } => {
                session.bind(*on).map_err(|e| e.at("cuCtxSetCurrent"))?;
                mem.download(out)
                    .map_err(|e| e.at("cuMemcpyDtoH (read back)"))
            }
            Buf::Host(h) => {
                out.copy_from_slice(h.as_slice());
                Ok(())
            }
        }
    }

    /// The address a kernel on the current context uses.
    fn kernel_ptr(&self) -> Result<u64, CallError> {
        match self {
            Buf::Device { mem, .. } => Ok(mem.ptr),
            Buf::Host(h) => h
                .device_ptr()
                .map_err(|e| e.at("cuMemHostGetDevicePointer")),
        }
    }
}

/// One direction of a step: its own stream and events on the issuing GPU.
struct Lane {
    kind: Kind,
    from: Option<i32>,
    to: Option<i32>,
    issuer: i32,
    src: Buf,
    dst: Buf,
    sent: Vec<u8>,
    stream: Stream,
    start: Event,
    end: Event,
}

/// Run one measurement step. `note` marks the sub-step, so that a hang names it.
pub fn measure(
    session: &mut Session,
    sampler: &mut Sampler,
    spec: &Spec,
    cfg: &BandwidthConfig,
    note: &mut dyn FnMut(Note),
) -> Answer {
    if let Err(e) = init() {
        return Answer {
            result: Err(e),
            context_lost: false,
        };
    }
    let (bytes, copies) = if spec.latency {
        (cfg.latency_bytes as usize, cfg.latency_iters)
    } else {
        (cfg.size_bytes as usize, cfg.iters)
    };
    let gpus: Vec<i32> = {
        let mut g: Vec<i32> = [spec.from, spec.to].into_iter().flatten().collect();
        g.dedup();
        g
    };
    // Host buffers from the CPUs next to the (first) GPU, as nvbandwidth allocates them.
    // The thread's CPU mask is put back when the step ends (the guard), so later steps and
    // NCCL's threads do not inherit this GPU's node.
    let _affinity = Affinity::save();
    let host_cpus = if spec.from.is_none() || spec.to.is_none() {
        gpus.first()
            .and_then(|&g| pin_to_gpu_node(sampler.bus_id(g).as_deref()))
    } else {
        None
    };
    let peer_enabled = match spec.kind {
        Kind::P2p => {
            note(Note::Stage("enable peer access".into()));
            enable_both(session, spec)
        }
        Kind::Staged => {
            disable_both(session, spec);
            Vec::new()
        }
        _ => Vec::new(),
    };
    let outcome = run_lanes(session, sampler, spec, cfg, bytes, copies, &gpus, note);
    for (ctx, peer) in peer_enabled {
        super::p2p::disable(session, ctx, peer);
    }
    match outcome {
        Ok((lanes, load)) => Answer {
            result: Ok(StepResult {
                bytes: bytes as u64,
                copies,
                lanes,
                load,
                host_cpus,
            }),
            context_lost: false,
        },
        Err(c) => Answer {
            context_lost: c.sticky,
            result: Err(StepError::Call(c)),
        },
    }
}

/// Peer access in each direction CUDA grants; the (context, peer) pairs now enabled.
fn enable_both(session: &mut Session, spec: &Spec) -> Vec<(i32, i32)> {
    let (Some(a), Some(b)) = (spec.from, spec.to) else {
        return Vec::new();
    };
    [(a, b), (b, a)]
        .into_iter()
        .filter(|&(ctx, peer)| {
            super::p2p::enable(session, ctx, peer).is_ok_and(|e| e.error.is_none())
        })
        .collect()
}

/// The staged control must run with peer access off, whatever an earlier step left.
fn disable_both(session: &mut Session, spec: &Spec) {
    if let (Some(a), Some(b)) = (spec.from, spec.to) {
        super::p2p::disable(session, a, b);
        super::p2p::disable(session, b, a);
    }
}

type LaneRun = (Vec<LaneResult>, Vec<Reading>);

#[allow(clippy::too_many_arguments)]
fn run_lanes(
    session: &mut Session,
    sampler: &mut Sampler,
    spec: &Spec,
    cfg: &BandwidthConfig,
    bytes: usize,
    copies: u32,
    gpus: &[i32],
    note: &mut dyn FnMut(Note),
) -> Result<LaneRun, CallError> {
    note(Note::Stage("allocate".into()));
    let mut lanes = Vec::new();
    for (kind, from, to) in spec.lanes() {
        // The copy is issued by the source GPU (it pushes), or by the GPU of a host copy.
        let issuer = from.or(to).unwrap_or(0);
        // Pinned host memory is allocated in (and portable from) the issuer's context.
        session.bind(issuer).map_err(|e| e.at("cuCtxSetCurrent"))?;
        let mut src = Buf::new(session, from, bytes)?;
        let dst = Buf::new(session, to, bytes)?;
        let sent = pattern(seed(from.unwrap_or(-1), to.unwrap_or(-1)), bytes);
        src.write(session, &sent)?;
        session.bind(issuer).map_err(|e| e.at("cuCtxSetCurrent"))?;
        let stream = Stream::new().map_err(|e| e.at("cuStreamCreate"))?;
        let start = Event::new().map_err(|e| e.at("cuEventCreate"))?;
        let end = Event::new().map_err(|e| e.at("cuEventCreate"))?;
        lanes.push(Lane {
            kind,
            from,
            to,
            issuer,
            src,
            dst,
            sent,
            stream,
            start,
            end,
        });
    }
    let mut latch = HostBuffer::new(64).map_err(|e| e.at("cuMemHostAlloc (latch)"))?;
    let mut results: Vec<LaneResult> = lanes
        .iter()
        .map(|l| LaneResult {
            kind: l.kind,
            from: l.from,
            to: l.to,
            samples_ms: Vec::new(),
            mismatch: None,
            error: None,
        })
        .collect();
    let mut load = Vec::new();
    let mut got = vec![0u8; bytes];
    for sample in 0..cfg.samples {
        note(Note::Stage(format!(
            "sample {} of {}",
            sample + 1,
            cfg.samples
        )));
        for l in lanes.iter_mut() {
            l.dst.fill(session)?;
        }
        set_latch(&mut latch, 0);
        let queued = lanes
            .iter()
            .try_for_each(|l| enqueue(session, spec.method, l, &latch, cfg.warmup, copies));
        // Released whatever happened: a latch left closed keeps spin kernels running under
        // buffers about to be freed (or a free waits out the spin, and an error becomes a hang).
        set_latch(&mut latch, 1);
        if let Err(e) = queued {
            drain(session, &lanes);
            return Err(e);
        }
        // Read the links while the copies run: an idle GPU trains its link down.
        let mut readings = 0;
        loop {
            let mut all = true;
            for l in &lanes {
                let polled = session
                    .bind(l.issuer)
                    .map_err(|e| e.at("cuCtxSetCurrent"))
                    .and_then(|_| l.end.done().map_err(|e| e.at("cuEventQuery")));
                match polled {
                    Ok(done) => all &= done,
                    Err(e) => {
                        drain(session, &lanes);
                        return Err(e);
                    }
                }
            }
            if all {
                break;
            }
            if readings < LOAD_READINGS {
                readings += 1;
                load.extend(gpus.iter().map(|&g| sampler.read(g, false)));
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        for (l, r) in lanes.iter().zip(results.iter_mut()) {
            session
                .bind(l.issuer)
                .map_err(|e| e.at("cuCtxSetCurrent"))?;
            let ms = l
                .end
                .since(&l.start)
                .map_err(|e| e.at("cuEventElapsedTime"))?;
            l.dst.read(session, &mut got)?;
            match compare(&l.sent, &got) {
                None => r.samples_ms.push(ms),
                Some(m) => r.mismatch = Some(m),
            }
        }
        if results.iter().any(|r| r.mismatch.is_some()) {
            break;
        }
    }
    Ok((results, load))
}

/// Wait for what is queued on every lane's stream before its buffers are freed (errors are
/// ignored: after a sticky error the wait returns at once).
fn drain(session: &mut Session, lanes: &[Lane]) {
    for l in lanes {
        if session.bind(l.issuer).is_ok() {
            let _ = l.stream.synchronize();
        }
    }
}

fn set_latch(latch: &mut HostBuffer, v: u32) {
    let p = latch.as_mut_slice().as_mut_ptr() as *mut u32;
    // SAFETY: the latch holds at least 4 bytes, 4-aligned (page-aligned allocation); volatile
    // because a GPU kernel reads it concurrently.
    unsafe { std::ptr::write_volatile(p, v) };
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// Queue spin, warm-up copies, start event, timed copies, end event on the lane's stream.
fn enqueue(
    session: &mut Session,
    method: Method,
    l: &Lane,
    latch: &HostBuffer,
    warmup: u32,
    copies: u32,
) -> Result<(), CallError> {
    let spin = session.kernel(l.issuer, Kernel::Spin)?;
    let copy_kernel = match method {
        Method::Sm => Some(session.kernel(l.issuer, Kernel::Copy)?),
        Method::Ce => None,
    };
    session
        .bind(l.issuer)
        .map_err(|e| e.at("cuCtxSetCurrent"))?;
    let flag = latch
        .device_ptr()
        .map_err(|e| e.at("cuMemHostGetDevicePointer (latch)"))?;
    let (mut flag_arg, mut timeout) = (flag, SPIN_TIMEOUT_NS);
    let mut params: [*mut c_void; 2] = [
        &mut flag_arg as *mut u64 as *mut c_void,
        &mut timeout as *mut u64 as *mut c_void,
    ];
    // spin_wait takes (u64, u64), as passed; one thread.
    Session::launch(spin, 1, 1, l.stream.0, &mut params)
        .map_err(|e| e.at("cuLaunchKernel(spin_wait)"))?;
    let (src, dst) = match copy_kernel {
        Some(_) => (l.src.kernel_ptr()?, l.dst.kernel_ptr()?),
        None => (0, 0),
    };
    let copy = |session: &mut Session| -> Result<(), CallError> {
        match copy_kernel {
            Some(f) => launch_copy(f, dst, src, l.src_bytes(), &l.stream),
            None => ce_copy(session, l),
        }
    };
    for _ in 0..warmup {
        copy(session)?;
    }
    l.start
        .record(&l.stream)
        .map_err(|e| e.at("cuEventRecord"))?;
    for _ in 0..copies {
        copy(session)?;
    }
    l.end.record(&l.stream).map_err(|e| e.at("cuEventRecord"))
}

impl Lane {
    fn src_bytes(&self) -> usize {
        self.sent.len()
    }
}

fn launch_copy(
    f: cu::CUfunction,
    dst: u64,
    src: u64,
    bytes: usize,
    stream: &Stream,
) -> Result<(), CallError> {
    let n = (bytes / 16) as u64;
    let (mut d, mut s, mut n_arg) = (dst, src, n);
    let mut params: [*mut c_void; 3] = [
        &mut d as *mut u64 as *mut c_void,
        &mut s as *mut u64 as *mut c_void,
        &mut n_arg as *mut u64 as *mut c_void,
    ];
    let blocks = n.div_ceil(256).clamp(1, 2048) as u32;
    // copy_v4 takes (u64, u64, u64); both buffers hold n 16-byte elements reachable from the
    // current context (local, mapped host, or peer with access enabled).
    Session::launch(f, blocks, 256, stream.0, &mut params)
        .map_err(|e| e.at("cuLaunchKernel(copy_v4)"))
}

fn ce_copy(session: &mut Session, l: &Lane) -> Result<(), CallError> {
    let bytes = l.src_bytes();
    let api = cu::api().map_err(|_| CuError(cu::code::INVALID_CONTEXT).at("cuMemcpyAsync"))?;
    match (&l.src, &l.dst) {
        (Buf::Host(h), Buf::Device { mem, .. }) => {
            // SAFETY: both hold `bytes` bytes; the host buffer is pinned and outlives the stream work.
            check(unsafe { (api.cuMemcpyHtoDAsync_v2)(mem.ptr, h.host_ptr(), bytes, l.stream.0) })
                .map_err(|e| e.at("cuMemcpyHtoDAsync"))
        }
        (Buf::Device { mem, .. }, Buf::Host(h)) => {
            // SAFETY: as above.
            check(unsafe { (api.cuMemcpyDtoHAsync_v2)(h.host_ptr(), mem.ptr, bytes, l.stream.0) })
                .map_err(|e| e.at("cuMemcpyDtoHAsync"))
        }
        (Buf::Device { on: a, mem: s }, Buf::Device { on: b, mem: d }) => {
            let src_ctx = session
                .context(*a)
                .map_err(|e| e.at("cuDevicePrimaryCtxRetain"))?;
            let dst_ctx = session
                .context(*b)
                .map_err(|e| e.at("cuDevicePrimaryCtxRetain"))?;
            // SAFETY: both buffers hold `bytes` bytes in their contexts.
            check(unsafe {
                (api.cuMemcpyPeerAsync)(d.ptr, dst_ctx, s.ptr, src_ctx, bytes, l.stream.0)
            })
            .map_err(|e| e.at("cuMemcpyPeerAsync"))
        }
        (Buf::Host(_), Buf::Host(_)) => {
            Err(CuError(cu::code::INVALID_CONTEXT).at("host to host is not a GPU copy"))
        }
    }
}

/// The thread's CPU mask when the guard was made, put back when it drops.
struct Affinity(Option<libc::cpu_set_t>);

impl Affinity {
    fn save() -> Affinity {
        // SAFETY: cpu_set_t is plain data; pid 0 is this thread; the size is the set's.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } == 0;
        Affinity(ok.then_some(set))
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        if let Some(set) = &self.0 {
            // SAFETY: a set read by sched_getaffinity, sized as passed.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(set), set) };
        }
    }
}

/// The CPUs this thread may run on.
pub fn current_cpus() -> Vec<usize> {
    let Affinity(Some(set)) = Affinity::save() else {
        return Vec::new();
    };
    let max = libc::CPU_SETSIZE as usize;
    // SAFETY: c is below CPU_SETSIZE.
    (0..max)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Bind this thread to the CPUs of the GPU's NUMA node (sysfs local_cpulist), so pinned host
/// memory is allocated there; the list applied, or None when unknown.
fn pin_to_gpu_node(bus_id: Option<&str>) -> Option<String> {
    let bus = bus_id?.to_ascii_lowercase();
    let list = std::fs::read_to_string(format!("/sys/bus/pci/devices/{bus}/local_cpulist")).ok()?;
    let list = list.trim().to_string();
    let cpus = parse_cpulist(&list)?;
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in cpus.into_iter().filter(|&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: c is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is this thread; the set is initialised and sized as passed.
    let ok = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } == 0;
    ok.then_some(list)
}

/// "0-15,32-47" -> [0..=15, 32..=47].
pub fn parse_cpulist(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65536 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_mask_is_restored_after_a_pinned_step() {
        // In a thread of its own: the mask is per thread.
        std::thread::spawn(|| {
            let before = current_cpus();
            assert!(!before.is_empty());
            {
                let _guard = Affinity::save();
                // SAFETY: plain data; pins this thread to the first CPU it may use.
                let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
                unsafe { libc::CPU_SET(before[0], &mut set) };
                let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
                assert_eq!(r, 0);
                assert_eq!(current_cpus(), [before[0]]);
            }
            assert_eq!(current_cpus(), before);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn cpulists() {
        assert_eq!(parse_cpulist("0-3,8"), Some(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse_cpulist("\n"), None);
        assert_eq!(parse_cpulist("3-1"), None);
    }
}
