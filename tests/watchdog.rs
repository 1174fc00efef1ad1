//! The watchdog against workers that finish, fail, hang, crash or never start, played by a
//! small shell worker that follows the protocol.

use rigdoctor::measure::watchdog::{Outcome, StepReport, Watchdog};
use std::time::{Duration, Instant};

/// Runs the steps of its plan; a step's name says how it behaves: ok*, fail*, hang*, crash*,
/// plan* (appends okA noteB leaveC), note* (notes a stage, then hangs), leave* (finishes, then
/// exits between steps as a worker with a lost CUDA context does).
/// `stall` makes it hang before announcing anything (stuck in initialisation) on its first run.
const WORKER: &str = r#"
if [ -n "$STALL_ONCE" ] && [ ! -e "$STALL_ONCE" ]; then : > "$STALL_ONCE"; exec sleep 30; fi
echo "some library chatter"
echo "stderr chatter" >&2
queue=$(printf '%s' "$RIGDOCTOR_WORKER_PLAN" | tr -d '[]"' | tr ',' ' ')
while [ -n "$queue" ]; do
  set -- $queue; s=$1; shift; queue="$*"
  echo "@rigdoctor {\"event\":\"start\",\"step\":\"$s\"}"
  case $s in
    hang*) exec sleep 30 ;;
    crash*) exit 3 ;;
    fail*) echo "@rigdoctor {\"event\":\"failed\",\"step\":\"$s\",\"error\":\"CUDA_ERROR_X\"}"; continue ;;
    plan*) echo "@rigdoctor {\"event\":\"plan\",\"steps\":[\"okA\",\"noteB\",\"leaveC\"]}"; queue="$queue okA noteB leaveC" ;;
    note*) echo "@rigdoctor {\"event\":\"note\",\"step\":\"$s\",\"note\":{\"stage\":\"ce\"}}"; exec sleep 30 ;;
  esac
  echo "@rigdoctor {\"event\":\"done\",\"step\":\"$s\",\"result\":{\"pid\":$$}}"
  case $s in leave*) exit 0 ;; esac
done
"#;

fn watchdog(deadline_ms: u64, env: Vec<(String, String)>) -> Watchdog {
    Watchdog {
        program: "sh".into(),
        args: vec!["-c".into(), WORKER.into()],
        env,
        step_deadline: Duration::from_millis(deadline_ms),
        long_steps: Vec::new(),
        gates: Vec::new(),
    }
}

fn steps(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn pid(r: &StepReport) -> i64 {
    match &r.outcome {
        Outcome::Done(v) => v["pid"].as_i64().unwrap(),
        other => panic!("{}: {other:?}", r.step),
    }
}

#[test]
fn one_worker_runs_everything_when_nothing_hangs() {
    let mut log = Vec::new();
    let mut seen = 0;
    let r = watchdog(2000, vec![]).run(
        &steps(&["ok1", "ok2", "fail3", "ok4"]),
        &mut log,
        &mut |_| seen += 1,
    );
    assert_eq!(seen, 4);
    assert_eq!(r.len(), 4);
    assert_eq!(pid(&r[0]), pid(&r[3]), "one worker for all steps");
    assert_eq!(r[2].outcome, Outcome::Failed("CUDA_ERROR_X".into()));
    assert!(r.iter().all(|x| x.worker == 1));
    assert!(log.iter().any(|l| l == "some library chatter"));
}

#[test]
fn a_hung_step_costs_one_deadline_and_the_rest_still_run() {
    let t = Instant::now();
    let mut log = Vec::new();
    let r = watchdog(400, vec![]).run(
        &steps(&["ok1", "hang2", "ok3", "hang4", "ok5"]),
        &mut log,
        &mut |_| {},
    );
    let took = t.elapsed();
    assert_eq!(
        r[1].outcome,
        Outcome::Hang {
            started: true,
            unkillable: false
        }
    );
    assert_eq!(
        r[3].outcome,
        Outcome::Hang {
            started: true,
            unkillable: false
        }
    );
    assert!(
        r[1].elapsed >= Duration::from_millis(400) && r[1].elapsed < Duration::from_millis(1500),
        "{:?}",
        r[1].elapsed
    );
    assert_ne!(pid(&r[0]), pid(&r[2]), "a fresh worker after the hang");
    assert_ne!(pid(&r[2]), pid(&r[4]));
    assert_eq!((r[0].worker, r[2].worker, r[4].worker), (1, 2, 3));
    assert!(
        took < Duration::from_secs(4),
        "two hangs cost about two deadlines, took {took:?}"
    );
}

#[test]
fn a_crash_is_recorded_and_the_rest_still_run() {
    let mut log = Vec::new();
    let r = watchdog(2000, vec![]).run(&steps(&["ok1", "crash2", "ok3"]), &mut log, &mut |_| {});
    assert_eq!(
        r[1].outcome,
        Outcome::Crashed("worker exited with status 3".into())
    );
    assert!(matches!(r[2].outcome, Outcome::Done(_)));
}

#[test]
fn a_worker_stuck_before_its_first_step_is_a_hang_of_that_step() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("stalled").to_string_lossy().into_owned();
    let mut log = Vec::new();
    let r = watchdog(300, vec![("STALL_ONCE".into(), marker)]).run(
        &steps(&["ok1", "ok2"]),
        &mut log,
        &mut |_| {},
    );
    assert_eq!(
        r[0].outcome,
        Outcome::Hang {
            started: false,
            unkillable: false
        }
    );
    assert!(matches!(r[1].outcome, Outcome::Done(_)));
}

#[test]
fn a_missing_worker_program_fails_every_step_without_panicking() {
    let w = Watchdog {
        program: "/no/such/rigdoctor".into(),
        args: vec![],
        env: vec![],
        step_deadline: Duration::from_millis(100),
        long_steps: Vec::new(),
        gates: Vec::new(),
    };
    let r = w.run(&steps(&["a", "b"]), &mut Vec::new(), &mut |_| {});
    assert_eq!(r.len(), 2);
    assert!(r
        .iter()
        .all(|x| matches!(&x.outcome, Outcome::Crashed(m) if m.contains("cannot start worker"))));
}

#[test]
fn a_worker_can_extend_the_plan_and_notes_survive_a_hang() {
    let r = watchdog(500, vec![]).run(&steps(&["plan1", "ok2"]), &mut Vec::new(), &mut |_| {});
    let names: Vec<&str> = r.iter().map(|x| x.step.as_str()).collect();
    assert_eq!(names, ["plan1", "ok2", "okA", "noteB", "leaveC"]);
    assert_eq!(
        pid(&r[0]),
        pid(&r[2]),
        "appended steps run in the same worker"
    );
    assert!(matches!(r[3].outcome, Outcome::Hang { started: true, .. }));
    assert_eq!(r[3].notes, [serde_json::json!({"stage": "ce"})]);
    assert!(r[4].notes.is_empty());
    assert_eq!((r[3].worker, r[4].worker), (1, 2));
    pid(&r[4]);
}

#[test]
fn a_worker_leaving_between_steps_is_replaced_without_blame() {
    let r = watchdog(2000, vec![]).run(
        &steps(&["leave1", "ok2", "leave3", "ok4"]),
        &mut Vec::new(),
        &mut |_| {},
    );
    assert_eq!(r.len(), 4);
    for x in &r {
        pid(x);
    }
    let workers: Vec<usize> = r.iter().map(|x| x.worker).collect();
    assert_eq!(workers, [1, 2, 2, 3]);
}
