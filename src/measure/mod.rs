//! Work that can hang the GPU or the driver runs in a worker process under a watchdog.
//! The GPU steps (inventory, P2P verification, bandwidth, NCCL) are built on this.

pub mod protocol;
pub mod watchdog;
