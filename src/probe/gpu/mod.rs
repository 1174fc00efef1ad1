//! GPU facts from NVML and the CUDA driver. Both run in a worker process under the watchdog:
//! a wedged GPU can hang `cuInit` or an NVML call, and a missing library or symbol makes cudarc
//! panic; neither may take rigdoctor down.

pub mod cuda;
pub mod nvml;

use crate::facts::{CudaInventory, GpuRuntime, NvmlInventory, Probed, Why};
use crate::measure::watchdog::{Outcome, Watchdog};
use std::time::Duration;

pub const STEP_NVML: &str = "nvml-inventory";
pub const STEP_CUDA: &str = "cuda-inventory";

/// Run the inventory steps in a worker (this same binary, `__worker`).
pub fn collect(step_deadline: Duration) -> GpuRuntime {
    let cuda_device_order = std::env::var("CUDA_DEVICE_ORDER").ok();
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            let why = format!("cannot find the rigdoctor executable to run the GPU worker: {e}");
            return GpuRuntime {
                nvml: Probed::unknown(Why::IoError, why.clone()),
                cuda: Probed::unknown(Why::IoError, why),
                cuda_device_order,
            };
        }
    };
    let dog = Watchdog {
        program,
        args: vec!["__worker".into()],
        env: Vec::new(),
        step_deadline,
    };
    let steps = [STEP_NVML.to_string(), STEP_CUDA.to_string()];
    let reports = dog.run(&steps, &mut Vec::new(), &mut |_| {});
    let mut nvml = Probed::unknown(Why::IoError, "not run");
    let mut cuda = Probed::unknown(Why::IoError, "not run");
    for r in reports {
        let secs = step_deadline.as_secs_f64();
        if r.step == STEP_NVML {
            nvml = settle::<NvmlInventory>(r.outcome, "NVML", secs);
        } else {
            cuda = settle::<CudaInventory>(r.outcome, "the CUDA driver", secs);
        }
    }
    GpuRuntime {
        nvml,
        cuda,
        cuda_device_order,
    }
}

/// A worker's answer as a fact. The worker sends `{"value": ...}` or `{"unknown": why, "detail": ...}`.
fn settle<T: serde::de::DeserializeOwned>(o: Outcome, what: &str, secs: f64) -> Probed<T> {
    match o {
        Outcome::Done(v) => serde_json::from_value::<Probed<T>>(v).unwrap_or_else(|e| {
            Probed::unknown(Why::Unparsable, format!("worker answer for {what}: {e}"))
        }),
        Outcome::Failed(e) => Probed::unknown(Why::Failed, e),
        Outcome::Hang {
            started,
            unkillable,
        } => Probed::unknown(
            Why::Hang,
            format!(
                "{what} did not answer within {secs} s{}{}",
                if started {
                    ""
                } else {
                    " (stuck before the step began)"
                },
                if unkillable {
                    "; the worker could not be killed: it is stuck in the kernel driver"
                } else {
                    ""
                }
            ),
        ),
        Outcome::Crashed(e) => {
            Probed::unknown(Why::Failed, format!("the worker for {what} died: {e}"))
        }
    }
}

/// The worker side: run one inventory step and say what it found.
pub fn run_step(step: &str) -> Option<serde_json::Value> {
    let value = match step {
        STEP_NVML => serde_json::to_value(nvml::inventory()),
        STEP_CUDA => serde_json::to_value(cuda::inventory()),
        _ => return None,
    };
    value.ok()
}
