//! Progress on stderr while the GPU steps run (the parent's side). On a terminal: a spinner
//! naming the running step with its GPUs, the step's elapsed time against its deadline and the
//! hangs so far, then a bar with ETA per bandwidth phase. Off a terminal (a log, CI): one line
//! per finished phase, and one per hang. Nothing when the report itself goes to stdout as
//! JSON, so that pipes stay clean.

use crate::measure::gpu::{Answer, Gpu, Spec, Step};
use crate::measure::watchdog::{Outcome, Progress};
use crate::probe::gpu::GpuReport;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The running step's start and deadline, read by the spinner at each tick.
type Running = Arc<Mutex<Option<(Instant, Duration)>>>;

pub struct Bar {
    bar: ProgressBar,
    /// The phase the bar shows, when it is a bandwidth phase bar.
    phase: Option<&'static str>,
    /// Bandwidth steps planned and not yet settled, in order.
    planned: VecDeque<Spec>,
    /// Nothing at all is shown.
    quiet: bool,
    /// stderr is a terminal: spinner and bars; else lines.
    terminal: bool,
    /// GPU names by CUDA ordinal, once the inventory has them.
    names: BTreeMap<i32, String>,
    hangs: Arc<AtomicUsize>,
    running: Running,
    tallies: Vec<Tally>,
}

/// What one phase (inventory, P2P, bandwidth, NCCL) did so far.
struct Tally {
    name: &'static str,
    /// Steps planned for the phase and not settled yet.
    pending: Vec<Step>,
    done: usize,
    failed: usize,
    hung: usize,
    skipped: usize,
    /// The steps' own times, summed (side-by-side steps each count in full).
    busy: Duration,
    closed: bool,
}

fn phase_of(step: &Step) -> &'static str {
    match step {
        Step::NvmlInventory | Step::CudaInventory => "GPU inventory",
        Step::P2pMatrix { .. } | Step::GpuSelftest { .. } | Step::P2pPair { .. } => "P2P test",
        Step::BandwidthPlan { .. } | Step::Bandwidth(_) | Step::BandwidthEnd { .. } => "bandwidth",
        Step::NcclInit | Step::NcclRank { .. } | Step::NcclAllReduce => "NCCL",
        Step::SpinHang { .. } => "watchdog test",
    }
}

fn target(shown: bool) -> ProgressDrawTarget {
    if shown {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

impl Bar {
    pub fn new(quiet: bool) -> Bar {
        let terminal = std::io::stderr().is_terminal();
        let running: Running = Arc::new(Mutex::new(None));
        let hangs = Arc::new(AtomicUsize::new(0));
        let bar = ProgressBar::with_draw_target(None, target(!quiet && terminal));
        let (r, h) = (running.clone(), hangs.clone());
        let style = ProgressStyle::with_template("{spinner} GPU tests {elapsed:>3} · {msg}{step}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .with_key(
                "step",
                move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let now = r.lock().map(|g| *g).unwrap_or(None);
                    if let Some((since, deadline)) = now {
                        let _ = write!(
                            w,
                            " · {:.1} s of {:.0} s",
                            since.elapsed().as_secs_f64(),
                            deadline.as_secs_f64()
                        );
                    }
                    match h.load(Ordering::Relaxed) {
                        0 => {}
                        1 => {
                            let _ = write!(w, " · 1 hang so far");
                        }
                        n => {
                            let _ = write!(w, " · {n} hangs so far");
                        }
                    }
                },
            );
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_message("starting the worker (NVML, CUDA)");
        Bar {
            bar,
            phase: None,
            planned: VecDeque::new(),
            quiet,
            terminal,
            names: BTreeMap::new(),
            hangs,
            running,
            tallies: Vec::new(),
        }
    }

    /// What the watchdog says as the run goes.
    pub fn event(&mut self, p: Progress<'_, Gpu>) {
        match p {
            Progress::Started { step, deadline } => {
                self.set_running(Some(deadline));
                if self.phase.is_none() {
                    self.bar.set_message(self.describe(step));
                }
            }
            Progress::SideBySide { steps, deadline }
                if matches!(steps.first(), Some(Step::NcclRank { .. })) =>
            {
                self.set_running(Some(deadline));
                self.bar.set_message(format!(
                    "NCCL: {} ranks, one process per GPU (ncclCommInitRank)",
                    steps.len()
                ));
            }
            Progress::SideBySide { steps, deadline } => {
                self.set_running(Some(deadline));
                let pairs: Vec<String> = steps.iter().map(|s| self.short(s)).collect();
                self.bar.set_message(format!(
                    "after a hang, {} at once: {}",
                    steps.len(),
                    pairs.join(", ")
                ));
            }
            Progress::Settled(r) => self.step(r),
            Progress::Noted { .. } => {}
        }
    }

    fn set_running(&self, deadline: Option<Duration>) {
        if let Ok(mut g) = self.running.lock() {
            *g = deadline.map(|d| (Instant::now(), d));
        }
    }

    fn gpu(&self, d: i32) -> String {
        match self.names.get(&d) {
            Some(n) => format!("GPU {d} ({n})"),
            None => format!("GPU {d}"),
        }
    }

    /// The running step, for a person: "P2P GPU 0 (RTX 3090) -> GPU 1 (RTX 3090)".
    fn describe(&self, step: &Step) -> String {
        match step {
            Step::NvmlInventory => "NVML inventory".into(),
            Step::CudaInventory => "CUDA inventory (cuInit)".into(),
            Step::P2pMatrix { .. } => "P2P access matrix".into(),
            Step::GpuSelftest { device } => format!("self-test of {}", self.gpu(*device)),
            Step::P2pPair { from, to } => {
                format!("P2P {} -> {}", self.gpu(*from), self.gpu(*to))
            }
            Step::BandwidthPlan { .. } => "bandwidth plan".into(),
            Step::Bandwidth(spec) => spec.label(),
            Step::BandwidthEnd { .. } => "closing link reading".into(),
            Step::NcclInit => "NCCL init (ncclCommInitAll)".into(),
            Step::NcclRank {
                rank,
                nranks,
                device,
                ..
            } => format!(
                "NCCL rank {rank} of {nranks} on {} (ncclCommInitRank)",
                self.gpu(*device)
            ),
            Step::NcclAllReduce => "NCCL all-reduce sweep".into(),
            Step::SpinHang { device } => format!("spin kernel on {}", self.gpu(*device)),
        }
    }

    /// A step in a list: "0->1".
    fn short(&self, step: &Step) -> String {
        match step {
            Step::P2pPair { from, to } => format!("{from}->{to}"),
            other => other.to_string(),
        }
    }

    /// A line for the log: above the bars on a terminal, else on stderr.
    fn say(&self, line: String) {
        if self.quiet {
            return;
        }
        if self.terminal {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    fn step(&mut self, r: &GpuReport) {
        self.set_running(None);
        if let (Step::CudaInventory, Outcome::Done(Answer::Cuda(c))) = (&r.step, &r.outcome) {
            for d in c.known().map_or(&[][..], |c| c.devices.as_slice()) {
                let n = d.name.strip_prefix("NVIDIA ").unwrap_or(&d.name);
                let n = n.strip_prefix("GeForce ").unwrap_or(n);
                self.names.insert(d.ordinal, n.to_string());
            }
        }
        if matches!(r.outcome, Outcome::Hang { .. }) {
            let n = self.hangs.fetch_add(1, Ordering::Relaxed) + 1;
            self.say(format!(
                "rigdoctor: {} did not finish in {:.1} s: killed, going on with the rest ({n} hang{} so far)",
                self.describe(&r.step),
                r.elapsed.as_secs_f64(),
                if n == 1 { "" } else { "s" }
            ));
        }
        self.tally(r);
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
        let Step::Bandwidth(spec) = &r.step else {
            if self.phase.is_none() {
                self.bar
                    .set_message(format!("{} {how}", self.describe(&r.step)));
            }
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

    /// Count the step in its phase; a phase whose planned steps have all settled is closed
    /// (its line said) when a step of another phase settles, or at the end.
    fn tally(&mut self, r: &GpuReport) {
        let name = phase_of(&r.step);
        let i = match self
            .tallies
            .iter()
            .position(|t| t.name == name && !t.closed)
        {
            Some(i) => i,
            None => {
                self.tallies.push(Tally {
                    name,
                    pending: Vec::new(),
                    done: 0,
                    failed: 0,
                    hung: 0,
                    skipped: 0,
                    busy: Duration::ZERO,
                    closed: false,
                });
                self.tallies.len() - 1
            }
        };
        let t = &mut self.tallies[i];
        if let Some(p) = t.pending.iter().position(|s| *s == r.step) {
            t.pending.remove(p);
        }
        t.pending.extend(r.added.iter().cloned());
        t.busy += r.elapsed;
        match &r.outcome {
            Outcome::Done(_) => t.done += 1,
            Outcome::Failed(crate::facts::StepError::NotRun { .. }) => t.skipped += 1,
            Outcome::Failed(_) | Outcome::Crashed(_) => t.failed += 1,
            Outcome::Hang { .. } => t.hung += 1,
        }
        let ready: Vec<usize> = (0..self.tallies.len())
            .filter(|&j| {
                let t = &self.tallies[j];
                j != i && !t.closed && t.pending.is_empty()
            })
            .collect();
        for j in ready {
            self.close(j);
        }
    }

    fn close(&mut self, j: usize) {
        let t = &mut self.tallies[j];
        t.closed = true;
        let mut parts = vec![format!("{} done", t.done)];
        for (n, what) in [
            (t.failed, "failed"),
            (t.hung, "hung"),
            (t.skipped, "not run"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        let line = format!(
            "rigdoctor: {}: {} step(s), {} ({:.1} s in steps)",
            t.name,
            t.done + t.failed + t.hung + t.skipped,
            parts.join(", "),
            t.busy.as_secs_f64()
        );
        // On a terminal the bars say it; the log gets a line.
        if !self.terminal {
            self.say(line);
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
        let bar =
            ProgressBar::with_draw_target(Some(len as u64), target(!self.quiet && self.terminal));
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

    pub fn finish(mut self) {
        let open: Vec<usize> = (0..self.tallies.len())
            .filter(|&j| !self.tallies[j].closed)
            .collect();
        for j in open {
            self.close(j);
        }
        if self.phase.is_none() {
            self.bar.finish_and_clear();
        } else if !self.bar.is_finished() {
            self.bar.abandon_with_message("stopped");
        }
    }
}
