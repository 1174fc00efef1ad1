//! Running steps that may hang (peer enable, P2P copies, kernels, NCCL) in a worker process,
//! with a deadline per step.
//!
//! One worker normally runs every step, so CUDA is initialised once. When a step overruns its
//! deadline the worker is killed (SIGKILL), the step is recorded as a hang, and a fresh worker
//! runs the steps that remain: a hung pair costs about one deadline, never the whole run.

use super::protocol::{parse_line, Event, PLAN_ENV};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a killed worker gets to disappear. A process blocked inside the driver
/// (uninterruptible sleep) may never go; it is then left behind, and the run goes on.
const REAP_GRACE: Duration = Duration::from_secs(2);
/// Lines of non-protocol output kept per worker (NCCL_DEBUG can be chatty).
const MAX_LOG_LINES: usize = 5000;
/// How often a wait for the worker looks at the Ctrl-C flag.
const INTERRUPT_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done(Value),
    Failed(String),
    /// No result within the deadline; the worker was killed.
    Hang {
        /// The worker had announced the step; false when it never got that far
        /// (stuck before it, e.g. in CUDA initialisation).
        started: bool,
        /// The worker could not be reaped after SIGKILL (stuck in the kernel driver).
        unkillable: bool,
    },
    /// The worker died while running the step (signal or exit status in the text).
    Crashed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub step: String,
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// Which worker ran it (1 = the first), to see where restarts happened.
    pub worker: usize,
    /// The step's progress notes, in order (kept whatever the outcome).
    pub notes: Vec<Value>,
    /// Steps this step appended to the plan.
    pub added: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Watchdog {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Longest time a step may take, counted from its start event; until the first start
    /// event it also bounds the worker's initialisation.
    pub step_deadline: Duration,
    /// Longer deadlines for steps whose name starts with a prefix (measurements that move
    /// gigabytes), counted from their start event.
    pub long_steps: Vec<(String, Duration)>,
    /// Steps whose hang dooms the rest (CUDA initialisation): the remaining steps are then
    /// reported failed with [`NOT_RUN`] instead of each hanging in turn.
    pub gates: Vec<String>,
}

/// The start of the error of a step that was never run (see [`Watchdog::gates`]).
pub const NOT_RUN: &str = "not run: ";

impl Watchdog {
    fn deadline_of(&self, step: &str) -> Duration {
        self.long_steps
            .iter()
            .find(|(p, _)| step.starts_with(p.as_str()))
            .map_or(self.step_deadline, |(_, d)| (*d).max(self.step_deadline))
    }
}

impl StepReport {
    /// The sub-step the worker last announced (`{"stage": ..}` notes): where a hang happened.
    pub fn last_stage(&self) -> Option<String> {
        self.notes
            .iter()
            .rev()
            .find_map(|n| n.get("stage").and_then(Value::as_str).map(String::from))
    }
}

/// What the running step has said so far.
#[derive(Default)]
struct Pending {
    notes: Vec<Value>,
    added: Vec<String>,
}

enum Msg {
    Event(Event),
    Log(String),
    Eof,
}

struct Running {
    child: Child,
    rx: Receiver<Msg>,
}

impl Watchdog {
    fn spawn(&self, plan: &[String]) -> std::io::Result<Running> {
        let plan_json = serde_json::to_string(plan).unwrap_or_else(|_| "[]".into());
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .env(PLAN_ENV, plan_json)
            // Its own process group: Ctrl-C on the terminal reaches rigdoctor, which stops
            // the worker itself and still reports.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let msg = parse_line(&line).map_or(Msg::Log(line), Msg::Event);
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Msg::Eof);
            });
        }
        if let Some(err) = child.stderr.take() {
            // stderr is a log too (NCCL writes there with NCCL_DEBUG_FILE unset on some setups).
            std::thread::spawn(move || {
                let mut r = BufReader::new(err.take(16 << 20));
                let mut line = String::new();
                while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if tx.send(Msg::Log(line.trim_end().to_string())).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
        Ok(Running { child, rx })
    }

    /// Run `steps` in order, and the steps the workers append to the plan; every step gets
    /// exactly one report, in plan order (unless Ctrl-C stops the run: then the reports so far). `log` receives the workers' non-protocol output;
    /// `progress` each report as it lands.
    pub fn run(
        &self,
        steps: &[String],
        log: &mut Vec<String>,
        progress: &mut dyn FnMut(&StepReport),
    ) -> Vec<StepReport> {
        let mut steps = steps.to_vec();
        let mut reports: Vec<StepReport> = Vec::new();
        let mut notes = Pending::default();
        let mut worker = 0;
        while reports.len() < steps.len() && !super::interrupted() {
            worker += 1;
            let remaining = steps[reports.len()..].to_vec();
            let mut push = |reports: &mut Vec<StepReport>,
                            steps: &[String],
                            notes: &mut Pending,
                            outcome: Outcome,
                            since: Instant| {
                let r = StepReport {
                    step: steps[reports.len()].clone(),
                    outcome,
                    elapsed: since.elapsed(),
                    worker,
                    notes: std::mem::take(&mut notes.notes),
                    added: std::mem::take(&mut notes.added),
                };
                progress(&r);
                reports.push(r);
            };
            let started_at = Instant::now();
            let mut running = match self.spawn(&remaining) {
                Ok(r) => r,
                Err(e) => {
                    let why = format!("cannot start worker {}: {e}", self.program.display());
                    while reports.len() < steps.len() {
                        let o = Outcome::Crashed(why.clone());
                        push(&mut reports, &steps, &mut notes, o, started_at);
                    }
                    break;
                }
            };
            let mut current: Option<Instant> = None;
            let mut deadline = Instant::now() + self.step_deadline;
            let before = reports.len();
            loop {
                if super::interrupted() {
                    // Ctrl-C: stop here; the steps not settled are left without a report.
                    let _ = running.child.kill();
                    let _ = reap(&mut running.child, REAP_GRACE);
                    return reports;
                }
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .min(INTERRUPT_POLL);
                if wait.is_zero() && Instant::now() < deadline {
                    continue;
                }
                let msg = match running.rx.recv_timeout(wait) {
                    Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => continue,
                    m => m,
                };
                match msg {
                    Ok(Msg::Log(line)) => {
                        if log.len() < MAX_LOG_LINES {
                            log.push(line);
                        }
                    }
                    Ok(Msg::Event(Event::Start { step })) if step == steps[reports.len()] => {
                        current = Some(Instant::now());
                        deadline = Instant::now() + self.deadline_of(&step);
                    }
                    Ok(Msg::Event(Event::Note { step, note })) if step == steps[reports.len()] => {
                        notes.notes.push(note);
                    }
                    Ok(Msg::Event(Event::Plan { steps: more })) if current.is_some() => {
                        notes.added.extend(more.iter().cloned());
                        steps.extend(more);
                    }
                    Ok(Msg::Event(e)) => match settled(e) {
                        Ok((step, outcome)) if step == steps[reports.len()] => {
                            let since = current.unwrap_or(started_at);
                            push(&mut reports, &steps, &mut notes, outcome, since);
                            current = None;
                            deadline = Instant::now() + self.step_deadline;
                        }
                        other => log.push(format!("worker protocol: unexpected {other:?}")),
                    },
                    Ok(Msg::Eof) | Err(RecvTimeoutError::Disconnected) => {
                        let status = reap(&mut running.child, REAP_GRACE);
                        // A worker that leaves between steps, having settled some, harmed no
                        // step (it exits on purpose when its CUDA context is lost): the rest
                        // go to a fresh worker.
                        let between_steps = current.is_none() && reports.len() > before;
                        if reports.len() < steps.len() && !between_steps {
                            let how = status.unwrap_or_else(|| "worker closed its output".into());
                            let since = current.unwrap_or(started_at);
                            push(
                                &mut reports,
                                &steps,
                                &mut notes,
                                Outcome::Crashed(how),
                                since,
                            );
                        }
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        let _ = running.child.kill();
                        let unkillable = reap(&mut running.child, REAP_GRACE).is_none();
                        let outcome = Outcome::Hang {
                            started: current.is_some(),
                            unkillable,
                        };
                        let since = current.unwrap_or(started_at);
                        let gate = self.gates.contains(&steps[reports.len()]);
                        let hung = steps[reports.len()].clone();
                        push(&mut reports, &steps, &mut notes, outcome, since);
                        if gate {
                            while reports.len() < steps.len() {
                                let why = format!("{NOT_RUN}{hung} hung before it");
                                let o = Outcome::Failed(why);
                                push(&mut reports, &steps, &mut notes, o, Instant::now());
                            }
                        }
                        break;
                    }
                }
                if reports.len() == steps.len() {
                    let _ = reap(&mut running.child, REAP_GRACE);
                    break;
                }
            }
            debug_assert!(
                reports.len() > before,
                "every worker settles at least one step"
            );
        }
        reports
    }
}

/// A Done or Failed event as (step, outcome); any other event back as it is.
fn settled(e: Event) -> Result<(String, Outcome), Event> {
    match e {
        Event::Done { step, result } => Ok((step, Outcome::Done(result))),
        Event::Failed { step, error } => Ok((step, Outcome::Failed(error))),
        other => Err(other),
    }
}

/// Wait up to `grace` for the child to exit; its status as text, or None if it is still there.
fn reap(child: &mut Child, grace: Duration) -> Option<String> {
    let end = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(describe_status(status)),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => return None,
            Err(e) => return Some(format!("cannot wait for worker: {e}")),
        }
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("worker exited with status {c}"),
        (None, Some(s)) => format!("worker killed by signal {s}"),
        _ => "worker ended".into(),
    }
}
