//! `rigdoctor watchdog-test`'s step: a real stuck kernel. `spin_wait` is launched on a word of
//! pinned host memory that is never released, and the worker waits for it; the parent's
//! watchdog must kill the worker at the deadline. Only if the kernel's own timeout passes first
//! does the step answer (and the test fails).

use super::driver_api::{init, HostBuffer, Kernel, Session, Stream};
use crate::facts::StepError;
use crate::measure::gpu::{Note, SpinAnswer};
use std::ffi::c_void;
use std::time::Instant;

/// The kernel's own timeout: far beyond any deadline the test uses.
const SPIN_TIMEOUT_NS: u64 = 600_000_000_000;

pub fn hang(
    session: &mut Session,
    device: i32,
    note: &mut dyn FnMut(Note),
) -> Result<SpinAnswer, StepError> {
    init()?;
    session
        .bind(device)
        .map_err(|e| e.at(format!("cuCtxSetCurrent (GPU {device})")))?;
    let spin = session.kernel(device, Kernel::Spin)?;
    let latch = HostBuffer::new(64).map_err(|e| e.at("cuMemHostAlloc (latch)"))?;
    let stream = Stream::new().map_err(|e| e.at("cuStreamCreate"))?;
    let flag = latch
        .device_ptr()
        .map_err(|e| e.at("cuMemHostGetDevicePointer (latch)"))?;
    // The latch word starts at 0 (cuMemHostAlloc memory is not zeroed: set it).
    // SAFETY: the allocation holds 64 bytes, 4-aligned.
    unsafe { std::ptr::write_volatile(latch.host_ptr() as *mut u32, 0) };
    let (mut flag_arg, mut timeout) = (flag, SPIN_TIMEOUT_NS);
    let mut params: [*mut c_void; 2] = [
        &mut flag_arg as *mut u64 as *mut c_void,
        &mut timeout as *mut u64 as *mut c_void,
    ];
    note(Note::Stage(format!(
        "spin_wait on GPU {device}, latch never released"
    )));
    let t = Instant::now();
    Session::launch(spin, 1, 1, stream.0, &mut params)
        .map_err(|e| e.at("cuLaunchKernel(spin_wait)"))?;
    stream
        .synchronize()
        .map_err(|e| e.at("cuStreamSynchronize (spin_wait)"))?;
    let waited_ms = t.elapsed().as_secs_f64() * 1e3;
    // Keep the buffers alive until here: the kernel read the latch until its timeout.
    drop(stream);
    drop(latch);
    Ok(SpinAnswer { device, waited_ms })
}
