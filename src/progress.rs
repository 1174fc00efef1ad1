//! Progress on stderr while the GPU steps run: a spinner for inventory and P2P, then a bar
//! with ETA per bandwidth phase. Hidden when stderr is not a terminal or the report itself
//! goes to stdout as JSON, so logs and pipes stay clean.

use crate::measure::gpu::{Spec, Step};
use crate::measure::watchdog::Outcome;
use crate::probe::gpu::GpuReport;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::VecDeque;
use std::time::Duration;

pub struct Bar {
    bar: ProgressBar,
    /// The phase the bar shows, when it is a bandwidth phase bar.
    phase: Option<&'static str>,
    /// Bandwidth steps planned and not yet settled, in order.
    planned: VecDeque<Spec>,
    hidden: bool,
    done: usize,
}

fn target(hidden: bool) -> ProgressDrawTarget {
    if hidden {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}

impl Bar {
    pub fn new(hidden: bool) -> Bar {
        let bar = ProgressBar::with_draw_target(None, target(hidden));
        bar.set_style(
            ProgressStyle::with_template("{spinner} GPU tests {elapsed:>3} · {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_message("starting the worker (NVML, CUDA)");
        Bar {
            bar,
            phase: None,
            planned: VecDeque::new(),
            hidden,
            done: 0,
        }
    }

    pub fn step(&mut self, r: &GpuReport) {
        self.done += 1;
        self.planned.extend(r.added.iter().filter_map(|s| match s {
            Step::Bandwidth(spec) => Some(spec.clone()),
            _ => None,
        }));
        let how = match &r.outcome {
            Outcome::Done(_) => "done",
            Outcome::Failed(_) => "failed",
            Outcome::Hang { .. } => "HUNG (killed)",
            Outcome::Crashed(_) => "worker died",
        };
        if matches!(r.outcome, Outcome::Hang { .. }) {
            self.bar.println(format!(
                "rigdoctor: {} did not finish in time ({:.1} s): killed, going on with the rest",
                r.step,
                r.elapsed.as_secs_f64()
            ));
        }
        let Step::Bandwidth(spec) = &r.step else {
            if self.phase.is_some() {
                // After the measurements (the closing reading): the phase bars stay as they are.
                return;
            }
            self.bar.set_message(format!(
                "{} steps · last: {} {how} ({:.0} ms)",
                self.done,
                r.step,
                r.elapsed.as_secs_f64() * 1e3
            ));
            return;
        };
        if let Some(i) = self.planned.iter().position(|s| s == spec) {
            self.planned.remove(i);
        }
        if self.phase != Some(spec.phase()) {
            self.start_phase(spec.phase());
        }
        self.bar.inc(1);
        // Short enough for an 80-column terminal: "p2p ce 0 1 done".
        let label = spec.label();
        let step = label
            .split_once(' ')
            .map_or(label.as_str(), |(_, rest)| rest);
        self.bar.set_message(format!("{step} {how}"));
        let next_phase = self.planned.front().map(Spec::phase);
        if next_phase != self.phase {
            self.bar.finish_with_message("done");
        }
    }

    /// A bar for `phase`: its length is the steps of that phase still planned, plus this one.
    fn start_phase(&mut self, phase: &'static str) {
        if self.phase.is_none() {
            self.bar.finish_and_clear();
        } else if !self.bar.is_finished() {
            self.bar.finish();
        }
        let len = 1 + self.planned.iter().filter(|s| s.phase() == phase).count();
        let bar = ProgressBar::with_draw_target(Some(len as u64), target(self.hidden));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>17} [{bar:20}] {pos:>3}/{len:<3} ETA {eta:>3} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(phase);
        self.bar = bar;
        self.phase = Some(phase);
    }

    pub fn finish(self) {
        if self.phase.is_none() {
            self.bar.finish_and_clear();
        } else if !self.bar.is_finished() {
            self.bar.abandon_with_message("stopped");
        }
    }
}
