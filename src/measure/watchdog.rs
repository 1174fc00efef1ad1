//! The parent's side of the worker boundary: running steps that may hang (peer enable, P2P
//! copies, kernels, NCCL) in a worker process, with a deadline per step.
//!
//! One worker normally runs every step, so CUDA is initialised once. When a step overruns its
//! deadline the worker is killed (SIGKILL), the step is recorded as a hang, and a fresh worker
//! runs the steps that remain: a hung pair costs about one deadline, never the whole run.
//! Events come on a pipe of their own; stdout and stderr are drained to EOF as the worker's
//! log; every worker's end (exit status, signal, hang on exit) is recorded.

use super::protocol::{parse_event, Event, EventOf, Protocol, FD_ENV, PARENT_ENV, PLAN_ENV};
use crate::facts::{StepError, WorkerExit, WorkerRecord};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a killed worker gets to disappear. A process blocked inside the driver
/// (uninterruptible sleep) may never go; it is then left behind, and the run goes on.
const REAP_GRACE: Duration = Duration::from_secs(2);
/// Lines of stdout/stderr kept per worker (the last ones), and the longest line kept.
const LOG_TAIL_LINES: usize = 40;
const LOG_LINE_MAX: usize = 400;
/// How often a wait for the worker looks at the interrupt flag.
const INTERRUPT_POLL: Duration = Duration::from_millis(100);
/// After the worker is gone, how long its stdout/stderr may take to reach EOF (a grandchild
/// that inherited them could hold them open forever).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<A> {
    Done(A),
    Failed(StepError),
    /// No result within the deadline; the worker was killed.
    Hang {
        /// The worker had announced the step; false when it never got that far
        /// (stuck before it, e.g. in CUDA initialisation).
        started: bool,
        /// The worker could not be reaped after SIGKILL (stuck in the kernel driver).
        unkillable: bool,
    },
    /// The worker died while running the step.
    Crashed(WorkerExit),
}

#[derive(Debug, Clone)]
pub struct StepReport<P: Protocol> {
    pub step: P::Step,
    pub outcome: Outcome<P::Answer>,
    pub elapsed: Duration,
    /// Which worker ran it (1 = the first), to see where restarts happened.
    pub worker: usize,
    /// The step's progress notes, in order (kept whatever the outcome).
    pub notes: Vec<P::Note>,
    /// Steps this step appended to the plan.
    pub added: Vec<P::Step>,
}

/// What the watchdog tells its caller as a run goes (for a progress display).
pub enum Progress<'a, P: Protocol> {
    /// A worker began `step`; it is called hung after `deadline`.
    Started {
        step: &'a P::Step,
        deadline: Duration,
    },
    /// These steps now run side by side, each in a worker of its own (after a hang).
    SideBySide {
        steps: &'a [P::Step],
        deadline: Duration,
    },
    /// A step has its report.
    Settled(&'a StepReport<P>),
    /// The running step sent a note (something another process may wait for, such as NCCL's
    /// unique id).
    Noted {
        step: &'a P::Step,
        note: &'a P::Note,
    },
}

/// What a run of the watchdog gives: a report per step, in plan order, and a record per worker.
pub struct Run<P: Protocol> {
    pub reports: Vec<StepReport<P>>,
    pub workers: Vec<WorkerRecord>,
}

/// Which steps get a longer deadline, and how long.
pub type LongStep<P> = Box<dyn Fn(&<P as Protocol>::Step) -> Option<Duration> + Send + Sync>;

pub struct Watchdog<P: Protocol> {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Longest time a step may take, counted from its start event; until the first start
    /// event it also bounds the worker's initialisation, and after the last step its exit.
    pub step_deadline: Duration,
    /// Longer deadlines for some steps (measurements that move gigabytes), counted from their
    /// start event; never shorter than `step_deadline`.
    pub long_step: LongStep<P>,
    /// Steps whose hang dooms the rest (CUDA initialisation): the remaining steps are then
    /// reported [`StepError::NotRun`] instead of each hanging in turn.
    pub gates: Vec<P::Step>,
    /// Given a step that hung and the next step, why the next is not worth its own deadline
    /// (the reverse direction of a hung P2P pair): it is then reported [`StepError::NotRun`].
    pub skip_after_hang: SkipAfterHang<P>,
    /// After a hang, steps that may run side by side in workers of their own, and the devices
    /// each one uses (None: this step runs alone). Consecutive steps on the same devices form
    /// one group, run in order by one worker; groups on disjoint devices run at the same
    /// time. A rig where every pair hangs then pays one deadline per round of disjoint pairs,
    /// not one per pair. Never before the first hang: a healthy run keeps its one worker.
    pub side_by_side: SideBySide<P>,
}

/// See [`Watchdog::skip_after_hang`].
pub type SkipAfterHang<P> =
    Box<dyn Fn(&<P as Protocol>::Step, &<P as Protocol>::Step) -> Option<String> + Send + Sync>;

/// See [`Watchdog::side_by_side`].
pub type SideBySide<P> = Box<dyn Fn(&<P as Protocol>::Step) -> Option<Vec<i32>> + Send + Sync>;

impl<P: Protocol> Watchdog<P> {
    pub fn new(program: PathBuf, args: Vec<String>, step_deadline: Duration) -> Self {
        Watchdog {
            program,
            args,
            env: Vec::new(),
            step_deadline,
            long_step: Box::new(|_| None),
            gates: Vec::new(),
            skip_after_hang: Box::new(|_, _| None),
            side_by_side: Box::new(|_| None),
        }
    }

    fn deadline_of(&self, step: &P::Step) -> Duration {
        (self.long_step)(step).map_or(self.step_deadline, |d| d.max(self.step_deadline))
    }
}

enum Msg<P: Protocol> {
    Event(EventOf<P>),
    /// A line on the event pipe that is not an event: a protocol fault, kept in the log.
    Garbled(String),
    /// The event pipe reached EOF: the worker (and anything that inherited the pipe) is gone.
    Closed,
}

struct Running<P: Protocol> {
    child: Child,
    rx: Receiver<Msg<P>>,
    log: std::sync::Arc<std::sync::Mutex<VecDeque<String>>>,
    log_threads: Vec<std::thread::JoinHandle<()>>,
}

/// A pipe whose both ends are closed on exec; the write end is made inheritable in the child
/// only (see `spawn`).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just opened both descriptors and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn push_log(log: &std::sync::Mutex<VecDeque<String>>, line: &[u8]) {
    let mut s = String::from_utf8_lossy(line).trim_end().to_string();
    if s.len() > LOG_LINE_MAX {
        let mut cut = LOG_LINE_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
    if l.len() == LOG_TAIL_LINES {
        l.pop_front();
    }
    l.push_back(s);
}

/// Read a stream line by line to EOF into the log (bounded per line, so a stream without
/// newlines cannot grow without limit).
fn drain(
    r: impl Read + Send + 'static,
    log: std::sync::Arc<std::sync::Mutex<VecDeque<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut r).take(64 * 1024).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => push_log(&log, &line),
            }
        }
    })
}

impl<P: Protocol> Watchdog<P> {
    fn spawn(&self, plan: &[P::Step]) -> std::io::Result<Running<P>> {
        use std::os::fd::AsRawFd;
        let plan_json = serde_json::to_string(plan).map_err(std::io::Error::other)?;
        let (read_end, write_end) = pipe()?;
        let wfd = write_end.as_raw_fd();
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().cloned())
            .env(PLAN_ENV, plan_json)
            .env(FD_ENV, wfd.to_string())
            .env(PARENT_ENV, parent.to_string())
            // Its own process group: Ctrl-C on the terminal reaches rigdoctor, which stops
            // the worker itself and still reports.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
        // functions (fcntl, prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                // The event pipe survives exec in the worker only.
                if libc::fcntl(wfd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The worker dies with rigdoctor, however rigdoctor ends (SIGKILL included).
                // The signal follows the thread that forked: the main thread, which lives as
                // long as rigdoctor, or a side-by-side round's thread, which ends only after
                // its worker has been reaped (or found unkillable).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // rigdoctor died before prctl took effect: nobody will read our results.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        // Our copy of the write end must go, or the pipe never reaches EOF.
        drop(write_end);
        let (tx, rx) = mpsc::channel();
        let events = std::fs::File::from(read_end);
        std::thread::spawn(move || {
            let mut r = BufReader::new(events);
            let mut line = String::new();
            loop {
                line.clear();
                match (&mut r).take(64 << 20).read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let msg = match parse_event::<P>(line.trim_end()) {
                            Ok(e) => Msg::Event(e),
                            Err(e) => Msg::Garbled(format!(
                                "worker protocol: unreadable event ({e}): {}",
                                line.trim_end().chars().take(200).collect::<String>()
                            )),
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Msg::Closed);
        });
        let log = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::new()));
        let mut log_threads = Vec::new();
        if let Some(out) = child.stdout.take() {
            log_threads.push(drain(out, log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            log_threads.push(drain(err, log.clone()));
        }
        Ok(Running {
            child,
            rx,
            log,
            log_threads,
        })
    }
}

impl<P: Protocol> Running<P> {
    /// Kill the worker (if still there) and wait for it; None when it cannot be reaped.
    fn kill(&mut self) -> Option<std::process::ExitStatus> {
        let _ = self.child.kill();
        reap(&mut self.child, REAP_GRACE)
    }

    /// Wait for stdout/stderr to reach EOF (bounded), then the last lines of both.
    fn finish_log(self) -> Vec<String> {
        let end = Instant::now() + DRAIN_GRACE;
        for t in self.log_threads {
            while !t.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        l.iter().filter(|s| !s.is_empty()).cloned().collect()
    }
}

/// Wait up to `grace` for the child to exit; None if it is still there.
fn reap(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => return None,
            Err(_) => return None,
        }
    }
}

/// How a worker that ended by itself ended.
fn exit_of(status: std::process::ExitStatus) -> WorkerExit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => WorkerExit::Exited { code },
        (None, Some(signal)) => WorkerExit::Signaled {
            signal,
            name: signal_name(signal),
        },
        _ => WorkerExit::Exited { code: -1 },
    }
}

pub fn signal_name(signal: i32) -> String {
    // SAFETY: strsignal returns a pointer to a static or thread-local string.
    let p = unsafe { libc::strsignal(signal) };
    if p.is_null() {
        return format!("signal {signal}");
    }
    // SAFETY: non-null, NUL-terminated.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

/// The state of one run across its workers.
struct State<'a, P: Protocol> {
    steps: Vec<P::Step>,
    reports: Vec<StepReport<P>>,
    notes: Vec<P::Note>,
    added: Vec<P::Step>,
    /// Steps killed after a hang so far.
    hung: Vec<P::Step>,
    progress: &'a mut dyn FnMut(Progress<'_, P>),
}

impl<'a, P: Protocol> State<'a, P> {
    fn new(steps: &[P::Step], progress: &'a mut dyn FnMut(Progress<'_, P>)) -> Self {
        State {
            steps: steps.to_vec(),
            reports: Vec::new(),
            notes: Vec::new(),
            added: Vec::new(),
            hung: Vec::new(),
            progress,
        }
    }

    fn next(&self) -> Option<&P::Step> {
        self.steps.get(self.reports.len())
    }

    fn settle(&mut self, outcome: Outcome<P::Answer>, since: Instant, worker: usize) {
        let r = StepReport {
            step: self.steps[self.reports.len()].clone(),
            outcome,
            elapsed: since.elapsed(),
            worker,
            notes: std::mem::take(&mut self.notes),
            added: std::mem::take(&mut self.added),
        };
        (self.progress)(Progress::Settled(&r));
        self.reports.push(r);
    }

    fn done(&self) -> bool {
        self.reports.len() >= self.steps.len()
    }

    /// Take the reports of steps `self.next()` onwards that ran elsewhere (side by side), in
    /// the order given; the steps they cover move to the front of what remains, so reports
    /// stay in plan order. `ran` may include steps those runs appended.
    fn adopt(&mut self, ran: Vec<StepReport<P>>, covered: usize) {
        let start = self.reports.len();
        let mut rest: Vec<P::Step> = self.steps.split_off(start);
        let mut unreported: Vec<P::Step> = Vec::new();
        for s in rest.drain(..covered.min(rest.len())) {
            if !ran.iter().any(|r| r.step == s) {
                unreported.push(s);
            }
        }
        for r in ran {
            if matches!(r.outcome, Outcome::Hang { .. }) {
                self.hung.push(r.step.clone());
            }
            self.steps.push(r.step.clone());
            (self.progress)(Progress::Settled(&r));
            self.reports.push(r);
        }
        self.steps.extend(unreported);
        self.steps.extend(rest);
    }
}

impl<P: Protocol> Watchdog<P> {
    /// Run `steps` in order, and the steps the workers append to the plan; every step gets
    /// exactly one report, in plan order (unless the run is interrupted: then the reports so
    /// far). `progress` sees each step start and each report land.
    pub fn run(&self, steps: &[P::Step], progress: &mut dyn FnMut(Progress<'_, P>)) -> Run<P> {
        let mut st = State::new(steps, progress);
        let workers = self.drive(&mut st, true);
        Run {
            reports: st.reports,
            workers,
        }
    }

    /// Workers, one after another, until every step has its report; `fan_out`: after a hang,
    /// steps that may run side by side do (see [`Watchdog::side_by_side`]).
    fn drive(&self, st: &mut State<'_, P>, fan_out: bool) -> Vec<WorkerRecord> {
        let mut workers = Vec::new();
        while !st.done() && !super::interrupted() {
            self.settle_moot(st);
            if st.done() {
                break;
            }
            if fan_out && !st.hung.is_empty() && self.run_side_by_side(st, &mut workers) {
                continue;
            }
            let index = workers.len() + 1;
            let record = self.run_worker(st, index);
            workers.push(record);
        }
        workers
    }

    /// Why a hang so far makes `step` moot (see [`Watchdog::skip_after_hang`]).
    fn moot(&self, st: &State<'_, P>, step: &P::Step) -> Option<String> {
        st.hung.iter().find_map(|h| (self.skip_after_hang)(h, step))
    }

    /// Report the next steps a hang made moot as not run, without a worker (a worker's plan
    /// leaves them out, so they are settled here as they come up).
    fn settle_moot(&self, st: &mut State<'_, P>) {
        while let Some(because) = st.next().and_then(|n| self.moot(st, n)) {
            st.settle(
                Outcome::Failed(StepError::NotRun { because }),
                Instant::now(),
                0,
            );
        }
    }

    /// After a hang: the next steps that may run side by side, in rounds of groups on disjoint
    /// devices, each group in a worker of its own (a run of its own, with the same deadlines
    /// and skips). False when fewer than two groups are next: they run as usual.
    fn run_side_by_side(&self, st: &mut State<'_, P>, workers: &mut Vec<WorkerRecord>) -> bool {
        let start = st.reports.len();
        let mut groups: Vec<(Vec<i32>, Vec<P::Step>)> = Vec::new();
        for s in &st.steps[start..] {
            let Some(devices) = (self.side_by_side)(s) else {
                break;
            };
            match groups.last_mut() {
                Some((d, g)) if *d == devices => g.push(s.clone()),
                _ => groups.push((devices, vec![s.clone()])),
            }
        }
        if groups.len() < 2 {
            return false;
        }
        // Steps of the groups not yet run: each round's reports are taken as it ends (so that
        // progress and hangs show round by round), the rest stay next in plan order.
        let mut covered: usize = groups.iter().map(|(_, g)| g.len()).sum();
        let mut left: Vec<usize> = (0..groups.len()).collect();
        while !left.is_empty() && !super::interrupted() {
            // A round: groups in plan order whose devices no earlier group of the round uses.
            let mut used: Vec<i32> = Vec::new();
            let mut round = Vec::new();
            left.retain(|&i| {
                let (devices, _) = &groups[i];
                if devices.iter().any(|d| used.contains(d)) {
                    return true;
                }
                used.extend(devices);
                round.push(i);
                false
            });
            let firsts: Vec<P::Step> = round.iter().map(|&i| groups[i].1[0].clone()).collect();
            let deadline = firsts
                .iter()
                .map(|s| self.deadline_of(s))
                .max()
                .unwrap_or(self.step_deadline);
            (st.progress)(Progress::SideBySide {
                steps: &firsts,
                deadline,
            });
            let mut ran: Vec<(usize, Run<P>)> = std::thread::scope(|scope| {
                let handles: Vec<_> = round
                    .iter()
                    .map(|&i| {
                        let steps = &groups[i].1;
                        scope.spawn(move || (i, self.run_alone(steps)))
                    })
                    .collect();
                handles.into_iter().filter_map(|h| h.join().ok()).collect()
            });
            ran.sort_by_key(|(i, _)| *i);
            // Reports in plan order; workers numbered on from the ones before.
            let mut reports = Vec::new();
            for (_, run) in ran {
                let offset = workers.len();
                for mut w in run.workers {
                    w.index += offset;
                    workers.push(w);
                }
                reports.extend(run.reports.into_iter().map(|mut r| {
                    r.worker += offset;
                    r
                }));
            }
            st.adopt(reports, covered);
            covered -= round.iter().map(|&i| groups[i].1.len()).sum::<usize>();
        }
        true
    }

    /// One group of steps in a run of its own that never fans out again.
    fn run_alone(&self, steps: &[P::Step]) -> Run<P> {
        let mut quiet = |_: Progress<'_, P>| {};
        let mut st = State::new(steps, &mut quiet);
        let workers = self.drive(&mut st, false);
        Run {
            reports: st.reports,
            workers,
        }
    }

    /// One worker, from its start to its end; the record of how it ended.
    fn run_worker(&self, st: &mut State<'_, P>, index: usize) -> WorkerRecord {
        let before = st.reports.len();
        let started_at = Instant::now();
        let plan: Vec<P::Step> = st.steps[before..]
            .iter()
            .filter(|s| self.moot(st, s).is_none())
            .cloned()
            .collect();
        let mut running = match self.spawn(&plan) {
            Ok(r) => r,
            Err(e) => {
                let exit = WorkerExit::NotStarted {
                    error: format!("{}: {e}", self.program.display()),
                };
                while !st.done() {
                    st.settle(Outcome::Crashed(exit.clone()), started_at, index);
                }
                return WorkerRecord {
                    index,
                    steps: st.reports.len() - before,
                    during: None,
                    exit,
                    log_tail: Vec::new(),
                };
            }
        };
        let record = |st: &State<'_, P>, during: Option<String>, exit, log_tail| WorkerRecord {
            index,
            steps: st.reports.len() - before,
            during,
            exit,
            log_tail,
        };
        let mut current: Option<Instant> = None;
        let mut deadline = Instant::now() + self.step_deadline;
        let mut garbled = Vec::new();
        let mut exiting = false;
        loop {
            if super::interrupted() {
                // Stop here; the steps not settled are left without a report.
                let during = current.and(st.next()).map(|s| s.to_string());
                running.kill();
                let mut log = running.finish_log();
                log.extend(garbled);
                return record(st, during, WorkerExit::Interrupted, log);
            }
            let now = Instant::now();
            let wait = deadline.saturating_duration_since(now).min(INTERRUPT_POLL);
            let msg = match running.rx.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => continue,
                m => m,
            };
            match msg {
                Ok(Msg::Garbled(line)) => {
                    if garbled.len() < 10 {
                        garbled.push(line);
                    }
                }
                Ok(Msg::Event(Event::Start { step })) if Some(&step) == st.next() => {
                    current = Some(Instant::now());
                    let allowed = self.deadline_of(&step);
                    deadline = Instant::now() + allowed;
                    (st.progress)(Progress::Started {
                        step: &step,
                        deadline: allowed,
                    });
                }
                Ok(Msg::Event(Event::Note { step, note })) if Some(&step) == st.next() => {
                    (st.progress)(Progress::Noted {
                        step: &step,
                        note: &note,
                    });
                    st.notes.push(note);
                }
                Ok(Msg::Event(Event::Plan { steps: more })) if current.is_some() => {
                    st.added.extend(more.iter().cloned());
                    st.steps.extend(more);
                }
                Ok(Msg::Event(Event::Done { step, result })) if Some(&step) == st.next() => {
                    st.settle(Outcome::Done(result), current.unwrap_or(started_at), index);
                    self.settle_moot(st);
                    current = None;
                    deadline = Instant::now() + self.step_deadline;
                }
                Ok(Msg::Event(Event::Failed { step, error })) if Some(&step) == st.next() => {
                    st.settle(Outcome::Failed(error), current.unwrap_or(started_at), index);
                    self.settle_moot(st);
                    current = None;
                    deadline = Instant::now() + self.step_deadline;
                }
                Ok(Msg::Event(other)) => {
                    if garbled.len() < 10 {
                        garbled.push(format!("worker protocol: unexpected {other:?}"));
                    }
                }
                Ok(Msg::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    // The worker closed its event pipe: it is exiting or gone.
                    let status = reap(&mut running.child, self.step_deadline.min(REAP_GRACE));
                    let exit = match status {
                        Some(s) => exit_of(s),
                        None => {
                            let status = running.kill();
                            WorkerExit::HungOnExit {
                                waited_s: REAP_GRACE.as_secs_f64(),
                                unkillable: status.is_none(),
                            }
                        }
                    };
                    // A worker that leaves between steps, having settled some, harmed no
                    // step (it exits on purpose when its CUDA context is lost): the rest
                    // go to a fresh worker.
                    let between_steps = current.is_none() && st.reports.len() > before;
                    let during = if st.done() || between_steps {
                        None
                    } else {
                        let d = st.next().map(|s| s.to_string());
                        st.settle(
                            Outcome::Crashed(exit.clone()),
                            current.unwrap_or(started_at),
                            index,
                        );
                        d
                    };
                    let mut log = running.finish_log();
                    log.extend(garbled);
                    return record(st, during, exit, log);
                }
                Err(RecvTimeoutError::Timeout) if st.done() => {
                    // Every step settled, but the worker did not leave: a teardown hang.
                    let status = running.kill();
                    let exit = WorkerExit::HungOnExit {
                        waited_s: self.step_deadline.as_secs_f64(),
                        unkillable: status.is_none(),
                    };
                    let mut log = running.finish_log();
                    log.extend(garbled);
                    return record(st, None, exit, log);
                }
                Err(RecvTimeoutError::Timeout) => {
                    let status = running.kill();
                    let unkillable = status.is_none();
                    let hung = st.next().cloned();
                    st.hung.extend(hung.iter().cloned());
                    let outcome = Outcome::Hang {
                        started: current.is_some(),
                        unkillable,
                    };
                    st.settle(outcome, current.unwrap_or(started_at), index);
                    if let Some(h) = hung.as_ref().filter(|h| self.gates.contains(h)) {
                        while !st.done() {
                            let because = format!("{h} hung before it");
                            let o = Outcome::Failed(StepError::NotRun { because });
                            st.settle(o, Instant::now(), index);
                        }
                    }
                    let mut log = running.finish_log();
                    log.extend(garbled);
                    let during = hung.map(|s| s.to_string());
                    return record(st, during, WorkerExit::KilledAfterHang { unkillable }, log);
                }
            }
            if st.done() && !exiting {
                // Every step settled: the worker should now leave by itself within the
                // deadline (its exit runs library teardown: NCCL, the driver).
                exiting = true;
                deadline = Instant::now() + self.step_deadline;
            }
        }
    }
}
