//! Progress on stderr while the GPU steps run (hidden when stderr is not a terminal, so logs
//! and pipes stay clean).

use crate::measure::watchdog::{Outcome, StepReport};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

pub struct Bar {
    bar: ProgressBar,
    done: usize,
    timeout: f64,
}

impl Bar {
    pub fn new(timeout: f64) -> Bar {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} GPU tests {elapsed:>3} · {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_message("starting the worker (NVML, CUDA)");
        Bar {
            bar,
            done: 0,
            timeout,
        }
    }

    pub fn step(&mut self, r: &StepReport) {
        self.done += 1;
        let how = match &r.outcome {
            Outcome::Done(_) => "done",
            Outcome::Failed(_) => "failed",
            Outcome::Hang { .. } => "HUNG (killed)",
            Outcome::Crashed(_) => "worker died",
        };
        if matches!(r.outcome, Outcome::Hang { .. }) {
            self.bar.println(format!(
                "rigdoctor: {} did not finish within {} s: killed, going on with the rest",
                r.step, self.timeout
            ));
        }
        self.bar.set_message(format!(
            "{} steps · last: {} {how} ({:.0} ms)",
            self.done,
            r.step,
            r.elapsed.as_secs_f64() * 1e3
        ));
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}
