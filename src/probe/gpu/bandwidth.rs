//! The bandwidth battery's worker side: timed, verified copies between host and GPUs and
//! between GPUs, with the links read under load.
//!
//! Method (nvbandwidth's): per sample, a one-thread `spin_wait` kernel holds each stream on a
//! word of pinned host memory while the warm-up and timed copies queue behind it; the host
//! releases the word and CUDA events around the timed copies give the time. The destination is
//! pre-filled and compared with the sent pattern after every sample: a mismatch is a finding,
//! never a number.

use super::driver_api::{fail, DeviceBuffer, Event, Failure, HostBuffer, Kernel, Session, Stream};
use super::pattern::{compare, pattern, seed, FILL};
use crate::facts::{BandwidthConfig, Kind, Method, PeerAccess};
use cudarc::driver::result;
use cudarc::driver::sys;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::time::Duration;

pub const STEP_PLAN: &str = "bw-plan";
pub const STEP_END: &str = "bw-end";
/// The run's [`BandwidthConfig`] as JSON, for the worker.
pub const CONFIG_ENV: &str = "RIGDOCTOR_BANDWIDTH";
/// How long `spin_wait` holds a stream if the host never releases it (a crashed worker).
const SPIN_TIMEOUT_NS: u64 = 10_000_000_000;
/// NVML readings per sample while the copies run.
const LOAD_READINGS: usize = 4;

/// One measurement step: what is copied, how, and whether the reverse runs at the same time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub latency: bool,
    pub kind: Kind,
    pub method: Method,
    pub from: Option<i32>,
    pub to: Option<i32>,
    pub bidir: bool,
}

fn end_label(e: Option<i32>) -> String {
    e.map_or("host".into(), |d| d.to_string())
}

fn parse_end(s: &str) -> Option<Option<i32>> {
    if s == "host" {
        return Some(None);
    }
    s.parse().ok().filter(|d: &i32| *d >= 0).map(Some)
}

impl Spec {
    /// `bw p2p ce 0 1`, `lat h2d ce host 2`, `bw staged ce 1 0 bidir`.
    pub fn step(&self) -> String {
        format!(
            "{} {} {} {} {}{}",
            if self.latency { "lat" } else { "bw" },
            self.kind.label(),
            self.method.label(),
            end_label(self.from),
            end_label(self.to),
            if self.bidir { " bidir" } else { "" }
        )
    }

    pub fn parse(step: &str) -> Option<Spec> {
        let w: Vec<&str> = step.split_whitespace().collect();
        let latency = match *w.first()? {
            "bw" => false,
            "lat" => true,
            _ => return None,
        };
        let method = match *w.get(2)? {
            "ce" => Method::Ce,
            "sm" => Method::Sm,
            _ => return None,
        };
        let bidir = match w.get(5) {
            None => false,
            Some(&"bidir") => true,
            _ => return None,
        };
        (w.len() <= 6).then_some(())?;
        Some(Spec {
            latency,
            kind: Kind::parse(w.get(1)?)?,
            method,
            from: parse_end(w.get(3)?)?,
            to: parse_end(w.get(4)?)?,
            bidir,
        })
    }

    /// The progress phase the step belongs to.
    pub fn phase(&self) -> &'static str {
        match (self.latency, self.kind) {
            (true, _) => "latency",
            (_, Kind::H2d | Kind::D2h) => "host<->device",
            (_, Kind::Local) => "within each GPU",
            (_, Kind::P2p) => "GPU<->GPU, P2P",
            (_, Kind::Staged) => "GPU<->GPU, staged",
        }
    }

    /// The directions this step measures: one, or both at once.
    pub fn lanes(&self) -> Vec<(Kind, Option<i32>, Option<i32>)> {
        let mut v = vec![(self.kind, self.from, self.to)];
        if self.bidir {
            let back = match self.kind {
                Kind::H2d => Kind::D2h,
                Kind::D2h => Kind::H2d,
                k => k,
            };
            v.push((back, self.to, self.from));
        }
        v
    }
}

/// `bw-plan` or `bw-plan 0,2`.
pub fn plan_step(devices: Option<&[i32]>) -> String {
    super::p2p::matrix_step(devices).replacen(super::p2p::STEP_MATRIX, STEP_PLAN, 1)
}

pub fn parse_plan_step(step: &str) -> Option<Option<Vec<i32>>> {
    let rest = step.strip_prefix(STEP_PLAN)?;
    super::p2p::parse_matrix_step(&format!("{}{rest}", super::p2p::STEP_MATRIX))
}

/// One NVML reading of a GPU's link and clocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub device: i32,
    pub bus_id: Option<String>,
    pub gen: Option<u32>,
    pub width: Option<u32>,
    pub max_gen: Option<u32>,
    pub max_width: Option<u32>,
    pub throttle: Option<u64>,
    pub replays: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<String>,
}

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

    /// Link generation/width and throttle reasons of `device`; with `full`, also the maximum
    /// link and the replay counter.
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
        if full {
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

/// cuInit, with every symbol the measurements call checked first (cudarc panics on a missing one).
fn init() -> Result<(), String> {
    super::p2p::init()?;
    match super::driver_api::unusable(&super::driver_api::BANDWIDTH_SYMBOLS) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// The plan step: the devices and what CUDA grants between them (the P2P matrix's own step),
/// each GPU's link before any copy, and the measurement steps to run.
pub fn plan(
    devices: Option<Vec<i32>>,
    cfg: &BandwidthConfig,
    sampler: &mut Sampler,
) -> Result<(Value, Vec<String>), String> {
    let (matrix, _) = super::p2p::matrix(devices)?;
    init()?;
    #[derive(Deserialize)]
    struct Matrix {
        devices: Vec<i32>,
        access: Vec<PeerAccess>,
    }
    let m: Matrix = serde_json::from_value(matrix.clone()).map_err(|e| e.to_string())?;
    let before: Vec<Reading> = m.devices.iter().map(|&d| sampler.read(d, true)).collect();
    let steps = measurement_steps(&m.devices, &m.access, cfg);
    let mut value = matrix;
    value["before"] = json!(before);
    Ok((value, steps))
}

/// Every measurement the config asks for, phase by phase, then the closing reading.
pub fn measurement_steps(
    devices: &[i32],
    access: &[PeerAccess],
    cfg: &BandwidthConfig,
) -> Vec<String> {
    let granted = |a: i32, b: i32| {
        access
            .iter()
            .any(|p| p.from == a && p.to == b && p.can_access.known() == Some(&true))
    };
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
    let mut steps: Vec<String> = specs.iter().map(Spec::step).collect();
    steps.push(end_step(devices));
    steps
}

/// `bw-end 0,1,2`: the closing reading of these devices.
pub fn end_step(devices: &[i32]) -> String {
    let list: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
    format!("{STEP_END} {}", list.join(","))
}

pub fn parse_end_step(step: &str) -> Option<Vec<i32>> {
    let rest = step.strip_prefix(STEP_END)?.trim();
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.split(',').map(|x| x.trim().parse().ok()).collect()
}

/// The closing step: each GPU's replay counter after the last copy.
pub fn end(devices: Vec<i32>, sampler: &mut Sampler) -> Result<Value, String> {
    init()?;
    let after: Vec<Reading> = devices.iter().map(|&d| sampler.read(d, true)).collect();
    Ok(json!({ "after": after }))
}

/// What a measurement step answers.
pub struct Answer {
    pub result: Result<Value, String>,
    /// A sticky CUDA error: this worker must stop.
    pub context_lost: bool,
}

enum Buf {
    Device { on: i32, mem: DeviceBuffer },
    Host(HostBuffer),
}

impl Buf {
    fn new(session: &mut Session, on: Option<i32>, bytes: usize) -> Result<Buf, Failure> {
        match on {
            Some(d) => {
                session.bind(d).map_err(|e| fail("cuCtxSetCurrent", e))?;
                let mem = DeviceBuffer::new(bytes)
                    .map_err(|e| fail(&format!("cuMemAlloc of {bytes} bytes on GPU {d}"), e))?;
                Ok(Buf::Device { on: d, mem })
            }
            // The caller has bound the GPU whose context allocates it.
            None => HostBuffer::new(bytes)
                .map(Buf::Host)
                .map_err(|e| fail(&format!("cuMemHostAlloc of {bytes} bytes"), e)),
        }
    }

    fn write(&mut self, session: &mut Session, data: &[u8]) -> Result<(), Failure> {
        match self {
            Buf::Device { on, mem } => {
                session.bind(*on).map_err(|e| fail("cuCtxSetCurrent", e))?;
                mem.upload(data)
                    .map_err(|e| fail("cuMemcpyHtoD (pattern)", e))
            }
            Buf::Host(h) => {
                h.as_mut_slice().copy_from_slice(data);
                Ok(())
            }
        }
    }

    fn fill(&mut self, session: &mut Session) -> Result<(), Failure> {
        match self {
            Buf::Device { on, mem } => {
                session.bind(*on).map_err(|e| fail("cuCtxSetCurrent", e))?;
                mem.fill(FILL)
                    .map_err(|e| fail("cuMemsetD32 (destination fill)", e))
            }
            Buf::Host(h) => {
                for w in h.as_mut_slice().chunks_exact_mut(4) {
                    w.copy_from_slice(&FILL.to_ne_bytes());
                }
                Ok(())
            }
        }
    }

    fn read(&self, session: &mut Session, out: &mut [u8]) -> Result<(), Failure> {
        match self {
            Buf::Device { on, mem } => {
                session.bind(*on).map_err(|e| fail("cuCtxSetCurrent", e))?;
                mem.download(out)
                    .map_err(|e| fail("cuMemcpyDtoH (read back)", e))
            }
            Buf::Host(h) => {
                out.copy_from_slice(h.as_slice());
                Ok(())
            }
        }
    }

    /// The address a kernel on the current context uses.
    fn kernel_ptr(&self) -> Result<u64, Failure> {
        match self {
            Buf::Device { mem, .. } => Ok(mem.ptr),
            Buf::Host(h) => h
                .device_ptr()
                .map_err(|e| fail("cuMemHostGetDevicePointer", e)),
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

/// Result of one lane, as the parent reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaneResult {
    pub kind: Kind,
    pub from: Option<i32>,
    pub to: Option<i32>,
    /// Milliseconds per sample (between the events around the timed copies).
    pub samples_ms: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<crate::facts::Mismatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole answer of a measurement step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    pub bytes: u64,
    pub copies: u32,
    pub lanes: Vec<LaneResult>,
    /// NVML readings taken while the copies ran.
    pub load: Vec<Reading>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpus: Option<String>,
}

/// Run one measurement step. `note` marks the sub-step, so that a hang names it.
pub fn measure(
    session: &mut Session,
    sampler: &mut Sampler,
    spec: &Spec,
    cfg: &BandwidthConfig,
    note: &mut dyn FnMut(Value),
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
    let host_cpus = if spec.from.is_none() || spec.to.is_none() {
        gpus.first()
            .and_then(|&g| pin_to_gpu_node(sampler.bus_id(g).as_deref()))
    } else {
        None
    };
    let peer_enabled = match spec.kind {
        Kind::P2p => {
            note(json!({ "stage": "enable peer access" }));
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
            result: Ok(json!(StepResult {
                bytes: bytes as u64,
                copies,
                lanes,
                load,
                host_cpus,
            })),
            context_lost: false,
        },
        Err(f) => Answer {
            result: Err(f.message),
            context_lost: f.sticky,
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
    note: &mut dyn FnMut(Value),
) -> Result<LaneRun, Failure> {
    note(json!({ "stage": "allocate" }));
    let mut lanes = Vec::new();
    for (kind, from, to) in spec.lanes() {
        // The copy is issued by the source GPU (it pushes), or by the GPU of a host copy.
        let issuer = from.or(to).unwrap_or(0);
        // Pinned host memory is allocated in (and portable from) the issuer's context.
        session
            .bind(issuer)
            .map_err(|e| fail("cuCtxSetCurrent", e))?;
        let mut src = Buf::new(session, from, bytes)?;
        let dst = Buf::new(session, to, bytes)?;
        let sent = pattern(seed(from.unwrap_or(-1), to.unwrap_or(-1)), bytes);
        src.write(session, &sent)?;
        session
            .bind(issuer)
            .map_err(|e| fail("cuCtxSetCurrent", e))?;
        let stream = Stream::new().map_err(|e| fail("cuStreamCreate", e))?;
        let start = Event::new().map_err(|e| fail("cuEventCreate", e))?;
        let end = Event::new().map_err(|e| fail("cuEventCreate", e))?;
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
    let mut latch = HostBuffer::new(64).map_err(|e| fail("cuMemHostAlloc (latch)", e))?;
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
        note(json!({ "stage": format!("sample {} of {}", sample + 1, cfg.samples) }));
        for l in lanes.iter_mut() {
            l.dst.fill(session)?;
        }
        set_latch(&mut latch, 0);
        for l in lanes.iter() {
            enqueue(session, spec.method, l, &latch, cfg.warmup, copies)?;
        }
        set_latch(&mut latch, 1);
        // Read the links while the copies run: an idle GPU trains its link down.
        let mut readings = 0;
        loop {
            let mut all = true;
            for l in &lanes {
                session
                    .bind(l.issuer)
                    .map_err(|e| fail("cuCtxSetCurrent", e))?;
                all &= l.end.done().map_err(|e| fail("cuEventQuery", e))?;
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
                .map_err(|e| fail("cuCtxSetCurrent", e))?;
            let ms = l
                .end
                .since(&l.start)
                .map_err(|e| fail("cuEventElapsedTime", e))?;
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
) -> Result<(), Failure> {
    let spin = session
        .kernel(l.issuer, Kernel::Spin)
        .map_err(|message| Failure {
            message,
            sticky: false,
        })?;
    let copy_kernel = match method {
        Method::Sm => Some(
            session
                .kernel(l.issuer, Kernel::Copy)
                .map_err(|message| Failure {
                    message,
                    sticky: false,
                })?,
        ),
        Method::Ce => None,
    };
    session
        .bind(l.issuer)
        .map_err(|e| fail("cuCtxSetCurrent", e))?;
    let flag = latch
        .device_ptr()
        .map_err(|e| fail("cuMemHostGetDevicePointer (latch)", e))?;
    let (mut flag_arg, mut timeout) = (flag, SPIN_TIMEOUT_NS);
    let mut params: [*mut c_void; 2] = [
        &mut flag_arg as *mut u64 as *mut c_void,
        &mut timeout as *mut u64 as *mut c_void,
    ];
    // SAFETY: spin_wait takes (u64, u64), as passed; one thread.
    unsafe { result::launch_kernel(spin, (1, 1, 1), (1, 1, 1), 0, l.stream.0, &mut params) }
        .map_err(|e| fail("cuLaunchKernel(spin_wait)", e))?;
    let (src, dst) = match copy_kernel {
        Some(_) => (l.src.kernel_ptr()?, l.dst.kernel_ptr()?),
        None => (0, 0),
    };
    let copy = |session: &mut Session| -> Result<(), Failure> {
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
        .map_err(|e| fail("cuEventRecord", e))?;
    for _ in 0..copies {
        copy(session)?;
    }
    l.end
        .record(&l.stream)
        .map_err(|e| fail("cuEventRecord", e))
}

impl Lane {
    fn src_bytes(&self) -> usize {
        self.sent.len()
    }
}

fn launch_copy(
    f: sys::CUfunction,
    dst: u64,
    src: u64,
    bytes: usize,
    stream: &Stream,
) -> Result<(), Failure> {
    let n = (bytes / 16) as u64;
    let (mut d, mut s, mut n_arg) = (dst, src, n);
    let mut params: [*mut c_void; 3] = [
        &mut d as *mut u64 as *mut c_void,
        &mut s as *mut u64 as *mut c_void,
        &mut n_arg as *mut u64 as *mut c_void,
    ];
    let blocks = n.div_ceil(256).clamp(1, 2048) as u32;
    // SAFETY: copy_v4 takes (u64, u64, u64); both buffers hold n 16-byte elements reachable
    // from the current context (local, mapped host, or peer with access enabled).
    unsafe { result::launch_kernel(f, (blocks, 1, 1), (256, 1, 1), 0, stream.0, &mut params) }
        .map_err(|e| fail("cuLaunchKernel(copy_v4)", e))
}

fn ce_copy(session: &mut Session, l: &Lane) -> Result<(), Failure> {
    let bytes = l.src_bytes();
    match (&l.src, &l.dst) {
        (Buf::Host(h), Buf::Device { mem, .. }) => {
            // SAFETY: both hold `bytes` bytes; the host buffer is pinned and outlives the stream work.
            unsafe { sys::cuMemcpyHtoDAsync_v2(mem.ptr, h.host_ptr(), bytes, l.stream.0) }
                .result()
                .map_err(|e| fail("cuMemcpyHtoDAsync", e))
        }
        (Buf::Device { mem, .. }, Buf::Host(h)) => {
            // SAFETY: as above.
            unsafe { sys::cuMemcpyDtoHAsync_v2(h.host_ptr(), mem.ptr, bytes, l.stream.0) }
                .result()
                .map_err(|e| fail("cuMemcpyDtoHAsync", e))
        }
        (Buf::Device { on: a, mem: s }, Buf::Device { on: b, mem: d }) => {
            let src_ctx = session
                .context(*a)
                .map_err(|e| fail("cuDevicePrimaryCtxRetain", e))?;
            let dst_ctx = session
                .context(*b)
                .map_err(|e| fail("cuDevicePrimaryCtxRetain", e))?;
            // SAFETY: both buffers hold `bytes` bytes in their contexts.
            unsafe { result::memcpy_peer_async(dst_ctx, d.ptr, src_ctx, s.ptr, bytes, l.stream.0) }
                .map_err(|e| fail("cuMemcpyPeerAsync", e))
        }
        (Buf::Host(_), Buf::Host(_)) => Err(Failure {
            message: "host to host is not a GPU copy".into(),
            sticky: false,
        }),
    }
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
    fn steps_round_trip() {
        for s in [
            "bw p2p ce 0 1",
            "lat h2d ce host 2",
            "bw staged ce 1 0 bidir",
            "bw d2h sm 3 host",
        ] {
            assert_eq!(Spec::parse(s).map(|x| x.step()).as_deref(), Some(s));
        }
        for bad in [
            "bw p2p xx 0 1",
            "bw p2p ce 0",
            "bw p2p ce 0 1 both",
            "p2p 0 1",
            "bw nope ce 0 1",
        ] {
            assert_eq!(Spec::parse(bad), None, "{bad}");
        }
        assert_eq!(parse_plan_step("bw-plan 0,2"), Some(Some(vec![0, 2])));
        assert_eq!(parse_plan_step(&plan_step(None)), Some(None));
    }

    #[test]
    fn cpulists() {
        assert_eq!(parse_cpulist("0-3,8"), Some(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse_cpulist("\n"), None);
        assert_eq!(parse_cpulist("3-1"), None);
    }
}
