//! Communicators and their threads.
//!
//! Like the real `ncclComm_t` a handle is the address of a heap object (printed as `comm %p`
//! in NCCL's lines); it is never freed, so a stale handle is recognised as destroyed rather
//! than mistaken for a new communicator. Each communicator starts a service thread at init,
//! as NCCL's `ncclProxyCreate` (src/proxy.cc) starts `ncclProxyService`; it is named
//! "NCCL Service %2d" (cudaDev) only with `NCCL_SET_THREAD_NAME=1`, as `ncclSetThreadName`
//! does (NCCL_PARAM SetThreadName, default 0, src/debug.cc), and it runs until
//! ncclCommDestroy or ncclCommAbort stops and joins it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// What the service thread is told.
#[derive(Default)]
struct Mailbox {
    stop: bool,
    /// A peer failure to report (async-error fault): (result, WARN file, line, text).
    fail: Option<(i32, &'static str, u32, String)>,
}

pub struct Shared {
    box_: Mutex<Mailbox>,
    wake: Condvar,
    /// comm->asyncResult / proxyState->asyncResult: what ncclCommGetAsyncError reports.
    pub async_result: AtomicI32,
}

pub struct Comm {
    pub addr: usize,
    pub rank: usize,
    pub nranks: usize,
    /// CUDA ordinal, index into the rig's GPUs, NVML index, busId as NCCL prints it (%lx).
    pub cuda_dev: i32,
    pub gpu: Option<usize>,
    pub nvml_dev: u32,
    pub bus_id: u64,
    /// The ncclCommInitAll call it came from.
    pub clique: usize,
    pub shared: Arc<Shared>,
    /// Stall tokens of this communicator's collectives that have not completed.
    pub stalls: Vec<u64>,
    service: Option<std::thread::JoinHandle<()>>,
    pub destroyed: bool,
}

/// One ncclCommInitAll: its communicators in rank order, and the CUDA devices.
pub struct Clique {
    pub comms: Vec<usize>,
    pub devs: Vec<i32>,
    /// Each rank's host hash: a hop between two hosts goes over the network (NET).
    pub hosts: Vec<u64>,
    pub comm_id: u64,
    /// Ring connections made (NCCL_RUNTIME_CONNECT: at the first collective).
    pub connected: bool,
    /// A communicator of ncclCommInitRank whose other ranks live in other processes.
    pub span: Option<Span>,
}

/// This process's rank of a communicator that spans processes: every rank's peer info, and
/// the queue of its collectives to the thread that exchanges their data in order.
pub struct Span {
    pub rank: usize,
    pub peers: Vec<super::span::Peer>,
    /// The rendezvous directory, removed by the last rank to leave.
    pub dir: std::path::PathBuf,
    pub queue: std::sync::mpsc::Sender<(u64, u64, usize, u64)>,
}

#[derive(Default)]
pub struct Registry {
    pub comms: BTreeMap<usize, Comm>,
    pub cliques: Vec<Clique>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    comms: BTreeMap::new(),
    cliques: Vec::new(),
});

/// Some communicator was ever created (hang-on-exit then hangs the teardown).
static EVER: AtomicBool = AtomicBool::new(false);

pub fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh handle: a real heap address, never freed.
pub fn new_handle() -> usize {
    Box::into_raw(Box::new([0u64; 8])) as usize
}

impl Comm {
    pub fn new(
        rank: usize,
        nranks: usize,
        cuda_dev: i32,
        gpu: Option<usize>,
        clique: usize,
    ) -> Comm {
        let r = crate::rig();
        let nvml_dev = gpu
            .and_then(|g| (0..r.gpus.len()).find(|&i| r.nvml_index(i) == Some(g)))
            .unwrap_or(rank) as u32;
        let bus_id = gpu.map_or(0, |g| bus_id_number(&r.gpus[g].bus_id));
        EVER.store(true, Ordering::SeqCst);
        Comm {
            addr: new_handle(),
            rank,
            nranks,
            cuda_dev,
            gpu,
            nvml_dev,
            bus_id,
            clique,
            shared: Arc::new(Shared {
                box_: Mutex::new(Mailbox::default()),
                wake: Condvar::new(),
                async_result: AtomicI32::new(0),
            }),
            stalls: Vec::new(),
            service: None,
            destroyed: false,
        }
    }

    /// ncclProxyCreate: start the service thread.
    pub fn start_service(&mut self) {
        let shared = self.shared.clone();
        let dev = self.cuda_dev;
        let version = super::version();
        let spawned = std::thread::Builder::new().spawn(move || service(shared, dev, version));
        if let Ok(h) = spawned {
            if super::env_int("NCCL_SET_THREAD_NAME", 0) == 1 {
                let name = format!("NCCL Service {dev:2}");
                if let Ok(c) = std::ffi::CString::new(name) {
                    use std::os::unix::thread::JoinHandleExt;
                    // SAFETY: a live thread and a name of under 16 bytes.
                    unsafe { libc::pthread_setname_np(h.as_pthread_t(), c.as_ptr()) };
                }
            }
            self.service = Some(h);
        }
    }

    /// Tell the service thread to report a peer failure.
    pub fn fail_async(&self, result: i32, file: &'static str, line: u32, text: String) {
        let mut b = self.shared.box_.lock().unwrap_or_else(|e| e.into_inner());
        b.fail = Some((result, file, line, text));
        self.shared.wake.notify_all();
    }

    /// What stops the service thread; used outside the registry lock (the thread may log).
    pub fn take_stopper(&mut self) -> Stopper {
        Stopper {
            shared: self.shared.clone(),
            handle: self.service.take(),
        }
    }
}

pub struct Stopper {
    shared: Arc<Shared>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Stopper {
    /// Stop and join the service thread.
    pub fn stop(self) {
        {
            let mut b = self.shared.box_.lock().unwrap_or_else(|e| e.into_inner());
            b.stop = true;
            self.shared.wake.notify_all();
        }
        if let Some(h) = self.handle {
            let _ = h.join();
        }
    }
}

/// "0000:41:00.0" -> 0x41000, NCCL's busId number (domain, bus, device, function).
pub fn bus_id_number(bdf: &str) -> u64 {
    let digits: String = bdf.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    u64::from_str_radix(&digits, 16).unwrap_or(0)
}

/// ncclProxyService: logs where it runs (since 2.23), then waits for a stop or a failure to
/// report. A failure is reported as the proxy does: WARN, then `INFO(NCCL_ALL, "%s:%d -> %d
/// [Progress Thread]")`, and proxyState->asyncResult set (proxy.cc, v2.23.4-1).
fn service(shared: Arc<Shared>, dev: i32, version: i32) {
    super::log::set_thread_device(dev);
    if version >= 22300 {
        // SAFETY: sched_getcpu has no arguments.
        let cpu = unsafe { libc::sched_getcpu() };
        super::log::info(
            super::log::INIT,
            &format!("[Proxy Service] Device {dev} CPU core {cpu}"),
        );
    }
    let mut b = shared.box_.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if b.stop {
            return;
        }
        if let Some((result, file, line, text)) = b.fail.take() {
            super::log::warn(file, line, &text);
            super::log::info(
                super::log::ALL,
                &format!(
                    "proxy.cc:{} -> {result} [Progress Thread]",
                    super::lines::PROXY_PROGRESS_LINE
                ),
            );
            shared.async_result.store(result, Ordering::SeqCst);
        }
        b = shared.wake.wait(b).unwrap_or_else(|e| e.into_inner());
    }
}

/// Communicators neither destroyed nor aborted.
pub fn live() -> Vec<usize> {
    registry()
        .comms
        .values()
        .filter(|c| !c.destroyed)
        .map(|c| c.addr)
        .collect()
}

/// The library's teardown at exit. With `nccl.fault = "hang-on-exit"` it never returns, as a
/// teardown stuck on a hung proxy thread or device would; what glibc still buffered for stdout
/// is then never written either (stdio is flushed after the finalisers).
pub fn teardown() {
    if EVER.load(Ordering::SeqCst) && super::fault() == "hang-on-exit" {
        super::trace::line("fini hang-on-exit: blocked");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
