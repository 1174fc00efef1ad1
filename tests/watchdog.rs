//! The watchdog against workers that finish, fail, hang, crash, die by signal, hang on exit or
//! never start, played by a small bash worker that follows the protocol: plan in
//! RIGDOCTOR_WORKER_PLAN, events on the descriptor in RIGDOCTOR_WORKER_FD.

use rigdoctor::facts::{StepError, WorkerExit};
use rigdoctor::measure::protocol::Protocol;
use rigdoctor::measure::watchdog::{Outcome, Progress, Run, StepReport, Watchdog};
use serde_json::Value;
use std::time::{Duration, Instant};

struct Plain;
impl Protocol for Plain {
    type Step = String;
    type Answer = Value;
    type Note = Value;
}

/// Runs the steps of its plan; a step's name says how it behaves: ok*, fail*, hang*, crash*,
/// kill9* (SIGKILL of itself mid-step), plan* (appends okA noteB leaveC), note* (notes a
/// stage, then hangs), leave* (finishes, then exits between steps as a worker with a lost CUDA
/// context does), exithang* (finishes, then never exits), chatter* (floods stdout with
/// unflushed partial lines, as NCCL's block-buffered log does).
/// `STALL_ONCE` makes it hang before announcing anything (stuck in initialisation) on its first run.
const WORKER: &str = r#"
if [ -n "$STALL_ONCE" ] && [ ! -e "$STALL_ONCE" ]; then : > "$STALL_ONCE"; exec sleep 30; fi
ev() { printf '%s\n' "$1" >&"$RIGDOCTOR_WORKER_FD"; }
echo "some library chatter"
echo "stderr chatter" >&2
queue=$(printf '%s' "$RIGDOCTOR_WORKER_PLAN" | tr -d '[]"' | tr ',' ' ')
while [ -n "$queue" ]; do
  set -- $queue; s=$1; shift; queue="$*"
  ev "{\"event\":\"start\",\"step\":\"$s\"}"
  case $s in
    hang*) exec sleep 30 ;;
    crash*) echo "segfault in libfoo" >&2; exit 3 ;;
    kill9*) kill -9 $$ ;;
    fail*) ev "{\"event\":\"failed\",\"step\":\"$s\",\"error\":{\"kind\":\"invalid\",\"message\":\"CUDA_ERROR_X\"}}"; continue ;;
    plan*) ev "{\"event\":\"plan\",\"steps\":[\"okA\",\"noteB\",\"leaveC\"]}"; queue="$queue okA noteB leaveC" ;;
    note*) ev "{\"event\":\"note\",\"step\":\"$s\",\"note\":{\"stage\":\"ce\"}}"; exec sleep 30 ;;
    chatter*) for i in $(seq 1 300); do printf 'host:1:2 [0] NCCL INFO line %s of a block-buffered log @rigdoctor {"event":' $i; done ;;
  esac
  ev "{\"event\":\"done\",\"step\":\"$s\",\"result\":{\"pid\":$$}}"
  case $s in leave*) exit 0 ;; exithang*) exec sleep 30 ;; esac
done
"#;

fn watchdog(deadline_ms: u64, env: Vec<(String, String)>) -> Watchdog<Plain> {
    let mut w = Watchdog::new(
        "bash".into(),
        vec!["-c".into(), WORKER.into()],
        Duration::from_millis(deadline_ms),
    );
    w.env = env;
    w
}

fn steps(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn run(w: &Watchdog<Plain>, names: &[&str]) -> Run<Plain> {
    w.run(&steps(names), &mut |_| {})
}

fn pid(r: &StepReport<Plain>) -> i64 {
    match &r.outcome {
        Outcome::Done(v) => v["pid"].as_i64().unwrap(),
        other => panic!("{}: {other:?}", r.step),
    }
}

#[test]
fn one_worker_runs_everything_when_nothing_hangs() {
    let mut seen = 0;
    let w = watchdog(2000, vec![]);
    let mut started = 0;
    let r = w.run(&steps(&["ok1", "ok2", "fail3", "ok4"]), &mut |p| match p {
        Progress::Settled(_) => seen += 1,
        Progress::Started { .. } => started += 1,
        Progress::SideBySide { .. } => panic!("nothing hung"),
        Progress::Noted { .. } => {}
    });
    assert_eq!((seen, started), (4, 4));
    let rep = &r.reports;
    assert_eq!(rep.len(), 4);
    assert_eq!(pid(&rep[0]), pid(&rep[3]), "one worker for all steps");
    assert_eq!(
        rep[2].outcome,
        Outcome::Failed(StepError::invalid("CUDA_ERROR_X"))
    );
    assert!(rep.iter().all(|x| x.worker == 1));
    assert_eq!(r.workers.len(), 1);
    let w1 = &r.workers[0];
    assert_eq!(w1.exit, WorkerExit::Exited { code: 0 });
    assert_eq!((w1.during.as_deref(), w1.steps), (None, 4));
    assert!(!w1.bad_exit() && !w1.crashed_mid_step());
    assert!(w1.log_tail.iter().any(|l| l == "some library chatter"));
    assert!(w1.log_tail.iter().any(|l| l == "stderr chatter"));
}

#[test]
fn library_output_on_stdout_never_touches_the_protocol() {
    // 300 partial lines without a newline, some looking like events: the events still arrive.
    for _ in 0..5 {
        let r = run(&watchdog(3000, vec![]), &["chatter1", "ok2"]);
        assert_eq!(r.reports.len(), 2);
        pid(&r.reports[0]);
        pid(&r.reports[1]);
        assert_eq!(r.workers[0].exit, WorkerExit::Exited { code: 0 });
    }
}

#[test]
fn a_hung_step_costs_one_deadline_and_the_rest_still_run() {
    let t = Instant::now();
    let r = run(
        &watchdog(400, vec![]),
        &["ok1", "hang2", "ok3", "hang4", "ok5"],
    );
    let took = t.elapsed();
    let rep = &r.reports;
    for i in [1, 3] {
        assert_eq!(
            rep[i].outcome,
            Outcome::Hang {
                started: true,
                unkillable: false
            }
        );
    }
    assert!(
        rep[1].elapsed >= Duration::from_millis(400)
            && rep[1].elapsed < Duration::from_millis(1500),
        "{:?}",
        rep[1].elapsed
    );
    assert_ne!(pid(&rep[0]), pid(&rep[2]), "a fresh worker after the hang");
    assert_ne!(pid(&rep[2]), pid(&rep[4]));
    assert_eq!((rep[0].worker, rep[2].worker, rep[4].worker), (1, 2, 3));
    assert_eq!(
        r.workers[0].exit,
        WorkerExit::KilledAfterHang { unkillable: false }
    );
    assert_eq!(r.workers[0].during.as_deref(), Some("hang2"));
    assert!(
        took < Duration::from_secs(4),
        "two hangs cost about two deadlines, took {took:?}"
    );
}

#[test]
fn a_crash_is_recorded_with_its_status_and_stderr_and_the_rest_still_run() {
    let r = run(&watchdog(2000, vec![]), &["ok1", "crash2", "ok3"]);
    assert_eq!(
        r.reports[1].outcome,
        Outcome::Crashed(WorkerExit::Exited { code: 3 })
    );
    assert!(matches!(r.reports[2].outcome, Outcome::Done(_)));
    let w = &r.workers[0];
    assert!(w.crashed_mid_step());
    assert_eq!(w.during.as_deref(), Some("crash2"));
    assert!(
        w.log_tail.iter().any(|l| l == "segfault in libfoo"),
        "{:?}",
        w.log_tail
    );
}

#[test]
fn sigkill_of_the_worker_mid_step_is_a_crash_by_signal() {
    let r = run(&watchdog(2000, vec![]), &["ok1", "kill9x", "ok3"]);
    match &r.reports[1].outcome {
        Outcome::Crashed(WorkerExit::Signaled { signal: 9, name }) => {
            assert!(name.to_lowercase().contains("kill"), "{name}")
        }
        other => panic!("{other:?}"),
    }
    assert!(r.workers[0].crashed_mid_step());
    assert!(matches!(r.reports[2].outcome, Outcome::Done(_)));
}

#[test]
fn a_worker_that_hangs_on_exit_is_killed_and_recorded() {
    let t = Instant::now();
    let r = run(&watchdog(500, vec![]), &["ok1", "exithang2"]);
    assert!(r
        .reports
        .iter()
        .all(|x| matches!(x.outcome, Outcome::Done(_))));
    let w = &r.workers[0];
    assert!(
        matches!(
            w.exit,
            WorkerExit::HungOnExit {
                unkillable: false,
                ..
            }
        ),
        "{:?}",
        w.exit
    );
    assert!(w.bad_exit());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn a_worker_stuck_before_its_first_step_is_a_hang_of_that_step() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("stalled").to_string_lossy().into_owned();
    let r = run(
        &watchdog(300, vec![("STALL_ONCE".into(), marker)]),
        &["ok1", "ok2"],
    );
    assert_eq!(
        r.reports[0].outcome,
        Outcome::Hang {
            started: false,
            unkillable: false
        }
    );
    assert!(matches!(r.reports[1].outcome, Outcome::Done(_)));
}

#[test]
fn a_missing_worker_program_fails_every_step_without_panicking() {
    let w: Watchdog<Plain> = Watchdog::new(
        "/no/such/rigdoctor".into(),
        vec![],
        Duration::from_millis(100),
    );
    let r = w.run(&steps(&["a", "b"]), &mut |_| {});
    assert_eq!(r.reports.len(), 2);
    assert!(r.reports.iter().all(
        |x| matches!(&x.outcome, Outcome::Crashed(WorkerExit::NotStarted { error }) if error.contains("/no/such/rigdoctor"))
    ));
}

#[test]
fn a_worker_can_extend_the_plan_and_notes_survive_a_hang() {
    let r = run(&watchdog(500, vec![]), &["plan1", "ok2"]);
    let rep = &r.reports;
    let names: Vec<&str> = rep.iter().map(|x| x.step.as_str()).collect();
    assert_eq!(names, ["plan1", "ok2", "okA", "noteB", "leaveC"]);
    assert_eq!(
        pid(&rep[0]),
        pid(&rep[2]),
        "appended steps run in the same worker"
    );
    assert!(matches!(
        rep[3].outcome,
        Outcome::Hang { started: true, .. }
    ));
    assert_eq!(rep[3].notes, [serde_json::json!({"stage": "ce"})]);
    assert!(rep[4].notes.is_empty());
    assert_eq!((rep[3].worker, rep[4].worker), (1, 2));
    pid(&rep[4]);
}

#[test]
fn a_worker_leaving_between_steps_is_replaced_without_blame() {
    let r = run(&watchdog(2000, vec![]), &["leave1", "ok2", "leave3", "ok4"]);
    assert_eq!(r.reports.len(), 4);
    for x in &r.reports {
        pid(x);
    }
    let workers: Vec<usize> = r.reports.iter().map(|x| x.worker).collect();
    assert_eq!(workers, [1, 2, 2, 3]);
    assert!(r
        .workers
        .iter()
        .all(|w| !w.bad_exit() && !w.crashed_mid_step()));
}
