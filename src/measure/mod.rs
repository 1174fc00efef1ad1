//! Work that can hang the GPU or the driver runs in a worker process under a watchdog.
//! The GPU steps (inventory, P2P verification, bandwidth, NCCL) are built on this.

pub mod gpu;
pub mod protocol;
pub mod watchdog;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;

/// The signal that interrupted the run (0: none).
static SIGNAL: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicUsize> {
    SIGNAL.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

/// The signals that stop a run and still print its report: Ctrl-C, `kill`/`timeout`/systemd/
/// Slurm's SIGTERM, and SIGHUP when the ssh session drops.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Install the handlers: the first signal sets the flag (the watchdog stops its worker and the
/// report is written), a second one of them ends rigdoctor at once with 128+signal.
pub fn install_signal_handlers() {
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in STOP_SIGNALS {
        // Handlers run in registration order: the exit checks the flag before this signal sets it.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, armed.clone());
        let _ = signal_hook::flag::register(sig, armed.clone());
        let _ = signal_hook::flag::register_usize(sig, flag().clone(), sig as usize);
    }
}

/// Mark the run interrupted as if by SIGINT (used by tests and by the watchdog-test).
pub fn interrupt() {
    flag().store(libc::SIGINT as usize, Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    interrupt_signal().is_some()
}

/// The signal that interrupted the run.
pub fn interrupt_signal() -> Option<i32> {
    match flag().load(Ordering::SeqCst) {
        0 => None,
        s => Some(s as i32),
    }
}
