//! Work that can hang the GPU or the driver runs in a worker process under a watchdog.
//! The GPU steps (inventory, P2P verification, bandwidth, NCCL) are built on this.

pub mod gpu;
pub mod protocol;
pub mod watchdog;

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ctrl-C was pressed: the watchdog stops its worker and returns what was measured.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
