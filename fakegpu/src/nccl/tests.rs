//! The fake NCCL in a process of its own per scenario (its environment, rig, stdout pipe and
//! exit are what is tested): the test binary runs itself with `FAKEGPU_NCCL_CHILD=<scenario>`,
//! the child drives the library as an application does and exits with 0 when its own checks
//! pass; the parent then checks the child's stdout, debug file and call trace.

use super::*;
use crate::cuda::cuInit;
use crate::memory::{
    cuCtxSetCurrent, cuDevicePrimaryCtxRetain, cuMemAlloc_v2, cuMemcpyDtoH_v2, cuMemcpyHtoD_v2,
};
use crate::stream::{
    cuEventCreate, cuEventQuery, cuEventRecord, cuStreamCreate, cuStreamSynchronize, NOT_READY,
};
use std::ffi::CStr;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "FAKEGPU_NCCL_CHILD";

fn rig_json(n: usize, nccl: &str) -> String {
    let gpus: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"name":"NVIDIA GeForce RTX 3090","bus_id":"0000:{:02x}:00.0","uuid":"GPU-{i}","memory_mib":24576,"cc":[8,6],
                "pcie":{{"gen":4,"width":16,"max_gen":4,"max_width":16}}}}"#,
                0x41 + i
            )
        })
        .collect();
    let mut pairs = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            pairs.push(format!(r#"{{"a":{a},"b":{b}}}"#));
        }
    }
    format!(
        r#"{{"cuda_version":12040,"gpus":[{}],"pairs":[{}],"nccl":{nccl}}}"#,
        gpus.join(","),
        pairs.join(",")
    )
}

struct Child {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    trace: String,
    dir: PathBuf,
}

/// Run `scenario` in a child with `rig` and `env`; kill it (SIGKILL) after `limit`.
fn run(scenario: &str, rig: &str, env: &[(&str, &str)], limit: Duration) -> Child {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fakegpu-nccl-{}-{}-{scenario}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rig.json"), rig).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "nccl::tests::child",
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env_clear()
    .env(CHILD, scenario)
    .env("FAKEGPU_RIG", dir.join("rig.json"))
    .env("FAKEGPU_NCCL_TRACE", dir.join("trace.txt"))
    .env("TMPDIR", &dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v.replace("$DIR", dir.to_str().unwrap()));
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    let trace = std::fs::read_to_string(dir.join("trace.txt")).unwrap_or_default();
    Child {
        code,
        stdout,
        stderr,
        trace,
        dir,
    }
}

/// The child's directory goes with the test's view of it.
impl Drop for Child {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Child {
    fn ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "child failed:\nstderr:\n{}\nstdout:\n{}\ntrace:\n{}",
            self.stderr,
            self.stdout,
            self.trace
        );
        self
    }
    fn nccl_lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.contains("NCCL "))
            .collect()
    }
}

/// A line through glibc's stdout, in order with NCCL's own lines.
fn mark(text: &str) {
    let line = format!("{text}\n");
    // SAFETY: glibc's stdout FILE*.
    unsafe { libc::fwrite(line.as_ptr().cast(), 1, line.len(), log::c_stdout()) };
}

fn fail(why: String) -> ! {
    eprintln!("child check failed: {why}");
    std::process::exit(3)
}

macro_rules! check {
    ($cond:expr, $($why:tt)*) => {
        if !$cond {
            fail(format!($($why)*));
        }
    };
}

/// One rank's buffers, stream and event.
struct Rank {
    ctx: *mut c_void,
    send: u64,
    recv: u64,
    stream: *mut c_void,
    event: *mut c_void,
}

const COUNT: usize = 1024;

unsafe fn setup(n: usize) -> (Vec<*mut c_void>, Vec<Rank>) {
    check!(cuInit(0) == 0, "cuInit");
    let mut ranks = Vec::new();
    for d in 0..n as c_int {
        let mut ctx = std::ptr::null_mut();
        check!(cuDevicePrimaryCtxRetain(&mut ctx, d) == 0, "retain");
        cuCtxSetCurrent(ctx);
        let (mut send, mut recv) = (0u64, 0u64);
        check!(cuMemAlloc_v2(&mut send, COUNT * 4) == 0, "alloc");
        check!(cuMemAlloc_v2(&mut recv, COUNT * 4) == 0, "alloc");
        let data: Vec<f32> = (0..COUNT)
            .map(|i| (d as usize + 1 + i % 7) as f32)
            .collect();
        cuMemcpyHtoD_v2(send, data.as_ptr().cast(), COUNT * 4);
        let mut stream = std::ptr::null_mut();
        check!(cuStreamCreate(&mut stream, 1) == 0, "stream");
        let mut event = std::ptr::null_mut();
        check!(cuEventCreate(&mut event, 0) == 0, "event");
        ranks.push(Rank {
            ctx,
            send,
            recv,
            stream,
            event,
        });
    }
    let mut comms = vec![std::ptr::null_mut(); n];
    let devs: Vec<c_int> = (0..n as c_int).collect();
    let rc = ncclCommInitAll(comms.as_mut_ptr(), n as c_int, devs.as_ptr());
    check!(rc == 0, "ncclCommInitAll -> {rc}");
    (comms, ranks)
}

/// One grouped all-reduce over every rank; ncclGroupEnd's result.
unsafe fn all_reduce(comms: &[*mut c_void], ranks: &[Rank]) -> c_int {
    ncclGroupStart();
    for (c, r) in comms.iter().zip(ranks) {
        let rc = ncclAllReduce(
            r.send as *const c_void,
            r.recv as *mut c_void,
            COUNT,
            FLOAT32,
            SUM,
            *c,
            r.stream,
        );
        check!(rc == 0, "ncclAllReduce -> {rc}");
    }
    ncclGroupEnd()
}

/// Record each rank's event and poll it `polls` times; whether all completed.
unsafe fn completes(ranks: &[Rank], polls: usize) -> bool {
    let mut all = true;
    for r in ranks {
        cuCtxSetCurrent(r.ctx);
        cuEventRecord(r.event, r.stream);
        let mut done = false;
        for _ in 0..polls {
            match cuEventQuery(r.event) {
                0 => {
                    done = true;
                    break;
                }
                NOT_READY => std::thread::sleep(Duration::from_millis(1)),
                e => fail(format!("cuEventQuery -> {e}")),
            }
        }
        all &= done;
    }
    all
}

unsafe fn sums_right(ranks: &[Rank]) -> bool {
    let n = ranks.len();
    ranks.iter().all(|r| {
        let mut got = vec![0f32; COUNT];
        cuMemcpyDtoH_v2(got.as_mut_ptr().cast(), r.recv, COUNT * 4);
        got.iter()
            .enumerate()
            .all(|(i, v)| *v == (n * (n + 1) / 2 + n * (i % 7)) as f32)
    })
}

fn last_error() -> String {
    // SAFETY: ncclGetLastError returns NCCL's NUL-terminated buffer.
    unsafe { CStr::from_ptr(ncclGetLastError(std::ptr::null_mut())) }
        .to_string_lossy()
        .into_owned()
}

fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|s| s.trim_end().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The child side: runs only in a child started by `run`.
#[test]
fn child() {
    let Ok(scenario) = std::env::var(CHILD) else {
        return;
    };
    let n = rig().gpus.len();
    // SAFETY: the library's C API, used as an application does.
    unsafe {
        match scenario.as_str() {
            "clean" => {
                let (comms, ranks) = setup(n);
                mark("MARK first all-reduce");
                check!(all_reduce(&comms, &ranks) == 0, "group end");
                check!(completes(&ranks, 1000), "collective did not complete");
                check!(sums_right(&ranks), "wrong sums");
                for c in &comms {
                    check!(ncclCommDestroy(*c) == 0, "destroy");
                }
                mark("MARK destroyed");
            }
            "leak" => {
                let (comms, ranks) = setup(n);
                check!(all_reduce(&comms, &ranks) == 0, "group end");
            }
            "hold" => {
                // Init, then wait to be killed.
                let _ = setup(n);
                std::thread::sleep(Duration::from_secs(30));
            }
            "threads" => {
                let named =
                    |v: &[String]| v.iter().filter(|t| t.starts_with("NCCL Service")).count();
                let before = thread_names().len();
                let (comms, _ranks) = setup(n);
                let during = thread_names();
                let want = if std::env::var("NCCL_SET_THREAD_NAME").is_ok() {
                    n
                } else {
                    0
                };
                check!(during.len() >= before + n, "no service threads: {during:?}");
                check!(named(&during) == want, "names {during:?}");
                check!(
                    during.iter().any(|t| t == "NCCL Service  0") == (want > 0),
                    "{during:?}"
                );
                for c in &comms {
                    ncclCommDestroy(*c);
                }
                // pthread_join returns once the kernel clears the thread's tid, which can be
                // before /proc/self/task drops its entry: allow the entries a moment to go.
                let deadline = Instant::now() + Duration::from_secs(2);
                let mut after = thread_names();
                while after.len() + n > during.len() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                    after = thread_names();
                }
                check!(after.len() + n <= during.len(), "threads left: {after:?}");
            }
            "hang" => {
                let (comms, ranks) = setup(n);
                check!(
                    all_reduce(&comms, &ranks) == 0,
                    "a hung collective is still accepted"
                );
                check!(!completes(&ranks, 200), "a hung collective completed");
                let mut a = -1;
                check!(
                    ncclCommGetAsyncError(comms[0], &mut a) == 0 && a == 0,
                    "async {a}"
                );
                // Destroy waits for the collective: never returns.
                let c0 = comms[0] as usize;
                let t = std::thread::spawn(move || ncclCommDestroy(c0 as *mut c_void));
                std::thread::sleep(Duration::from_millis(300));
                check!(
                    !t.is_finished(),
                    "ncclCommDestroy returned behind a hung collective"
                );
                // Abort makes the kernels quit: the streams drain.
                check!(ncclCommAbort(comms[1]) == 0, "abort");
                cuCtxSetCurrent(ranks[1].ctx);
                check!(
                    cuStreamSynchronize(ranks[1].stream) == 0,
                    "sync after abort"
                );
                std::process::exit(0);
            }
            "error" => {
                let (comms, ranks) = setup(n);
                let rc = all_reduce(&comms, &ranks);
                check!(rc == 1, "ncclGroupEnd -> {rc}");
                let e = last_error();
                check!(
                    e == "Cuda failure 'no kernel image is available for execution on the device'",
                    "last error {e:?}"
                );
                let s = CStr::from_ptr(ncclGetErrorString(rc))
                    .to_string_lossy()
                    .into_owned();
                check!(
                    s == "unhandled cuda error (run with NCCL_DEBUG=INFO for details)",
                    "{s}"
                );
                for c in &comms {
                    check!(ncclCommAbort(*c) == 0, "abort");
                }
            }
            "async-error" => {
                let (comms, ranks) = setup(n);
                check!(all_reduce(&comms, &ranks) == 0, "accepted");
                let t = Instant::now();
                let mut a = 0;
                while a == 0 && t.elapsed() < Duration::from_secs(5) {
                    check!(ncclCommGetAsyncError(comms[0], &mut a) == 0, "get async");
                    std::thread::sleep(Duration::from_millis(2));
                }
                check!(a == REMOTE_ERROR, "async error {a}");
                let e = last_error();
                check!(
                    e.starts_with("socketProgress: Connection closed by remote peer"),
                    "{e:?}"
                );
                check!(!completes(&ranks, 50), "the collective completed");
                // A communicator in error refuses new work.
                let r = &ranks[0];
                let rc = ncclAllReduce(
                    r.send as _,
                    r.recv as _,
                    COUNT,
                    FLOAT32,
                    SUM,
                    comms[0],
                    r.stream,
                );
                check!(rc == REMOTE_ERROR, "all-reduce after the error -> {rc}");
                // Destroy refuses a communicator in error; abort it.
                let rc = ncclCommDestroy(comms[0]);
                check!(rc == REMOTE_ERROR, "destroy -> {rc}");
                check!(
                    last_error().starts_with("Attempt to use communicator"),
                    "{}",
                    last_error()
                );
                for c in &comms {
                    check!(ncclCommAbort(*c) == 0, "abort");
                }
            }
            "init-error" => {
                let mut v = 0;
                check!(ncclGetVersion(&mut v) == 0 && v == 22203, "version {v}");
                let mut comms = [std::ptr::null_mut(); 2];
                let rc = ncclCommInitAll(comms.as_mut_ptr(), 2, [0, 1].as_ptr());
                check!(rc == 1, "init -> {rc}");
                let e = last_error();
                check!(
                    e == "Cuda failure 'CUDA driver version is insufficient for CUDA runtime version'",
                    "{e:?}"
                );
            }
            "misuse" => {
                let mut comms = [std::ptr::null_mut(); 2];
                let rc = ncclCommInitAll(comms.as_mut_ptr(), 2, [0, 0].as_ptr());
                check!(rc == INVALID_USAGE, "duplicate device -> {rc}");
                let rc = ncclCommInitAll(comms.as_mut_ptr(), 2, [0, 7].as_ptr());
                check!(rc == UNHANDLED_CUDA_ERROR, "2.18: bad device -> {rc}");
                check!(ncclGroupEnd() == INVALID_USAGE, "end without start");
                check!(
                    last_error() == "ncclGroupEnd: not in a group call.",
                    "{}",
                    last_error()
                );
                let (comms, ranks) = setup(2);
                let mut x = 0;
                check!(ncclCommCount(comms[1], &mut x) == 0 && x == 2, "count");
                check!(ncclCommUserRank(comms[1], &mut x) == 0 && x == 1, "rank");
                check!(ncclCommCuDevice(comms[1], &mut x) == 0 && x == 1, "device");
                let rc = ncclAllReduce(
                    ranks[0].send as _,
                    ranks[0].recv as _,
                    COUNT,
                    FLOAT32,
                    SUM,
                    std::ptr::null_mut(),
                    ranks[0].stream,
                );
                check!(rc == INVALID_ARGUMENT, "null comm -> {rc}");
                check!(
                    last_error() == "AllReduce : comm argument is NULL",
                    "{}",
                    last_error()
                );
                let rc = ncclAllReduce(
                    12 as _,
                    ranks[0].recv as _,
                    COUNT,
                    FLOAT32,
                    SUM,
                    comms[0],
                    ranks[0].stream,
                );
                check!(rc == INVALID_ARGUMENT, "bad pointer -> {rc}");
                check!(
                    ncclCommGetAsyncError(comms[0], std::ptr::null_mut()) == INVALID_ARGUMENT,
                    "null out"
                );
                check!(ncclCommDestroy(std::ptr::null_mut()) == 0, "destroy NULL");
                check!(ncclCommDestroy(comms[0]) == 0, "destroy");
                check!(
                    ncclCommDestroy(comms[0]) == INVALID_ARGUMENT,
                    "destroy twice"
                );
                check!(
                    last_error().ends_with("has already been destroyed"),
                    "{}",
                    last_error()
                );
                let rc = ncclAllReduce(
                    ranks[0].send as _,
                    ranks[0].recv as _,
                    COUNT,
                    FLOAT32,
                    SUM,
                    comms[0],
                    ranks[0].stream,
                );
                check!(rc == INVALID_ARGUMENT, "destroyed comm -> {rc}");
                check!(
                    last_error() == "Error: corrupted comm object detected",
                    "{}",
                    last_error()
                );
                check!(ncclCommDestroy(comms[1]) == 0, "destroy");
            }
            "exit" => {
                let (comms, ranks) = setup(n);
                check!(all_reduce(&comms, &ranks) == 0, "group end");
                check!(completes(&ranks, 1000), "complete");
                for c in &comms {
                    ncclCommDestroy(*c);
                }
            }
            other => fail(format!("unknown scenario {other}")),
        }
    }
    std::process::exit(0);
}

const LIMIT: Duration = Duration::from_secs(20);

fn idx(lines: &[&str], pat: &str) -> Option<usize> {
    lines.iter().position(|l| l.contains(pat))
}

#[test]
fn a_clean_run_logs_as_nccl_2_18_and_destroys() {
    let c = run(
        "clean",
        &rig_json(2, r#"{"version":21805}"#),
        &[("NCCL_DEBUG", "INFO")],
        LIMIT,
    );
    c.ok();
    let l: Vec<&str> = c.stdout.lines().collect();
    // 2.18 prints the version with printf, bare.
    assert!(l.contains(&"NCCL version 2.18.5+cuda12.2"), "{}", c.stdout);
    let host = log::hostname();
    let pid_tid = format!("{host}:");
    assert!(c
        .nccl_lines()
        .iter()
        .all(|x| x.starts_with(&pid_tid) || x.starts_with("NCCL version")));
    assert_eq!(l.iter().filter(|x| x.contains("Init COMPLETE")).count(), 2);
    // Default NCCL_DEBUG_SUBSYS of 2.18 is INIT,ENV: no GRAPH dump.
    assert!(idx(&l, "=== System").is_none());
    // Before 2.22 the connections are made at init.
    let mark = idx(&l, "MARK first all-reduce").unwrap();
    let ch = idx(&l, "via P2P/direct pointer").unwrap();
    assert!(ch < mark, "{}", c.stdout);
    assert!(idx(&l, "Connected all trees").unwrap() < mark);
    assert!(l
        .iter()
        .any(|x| x.contains("NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/direct pointer")));
    assert!(idx(&l, "Destroy COMPLETE").unwrap() < idx(&l, "MARK destroyed").unwrap());
    // One init thread per rank: rank lines carry their own tid and device.
    let r1: Vec<&&str> = l
        .iter()
        .filter(|x| x.contains("rank 1 nranks 2") && x.contains("Init"))
        .collect();
    assert_eq!(r1.len(), 2);
    assert!(
        r1.iter()
            .all(|x| x.contains("] NCCL INFO") && x.contains(" [1] ")),
        "{r1:?}"
    );
    let t = &c.trace;
    assert!(t.contains("ncclCommInitAll ndev=2 comms=0x"), "{t}");
    assert_eq!(t.matches("ncclAllReduce comm=").count(), 2);
    assert_eq!(t.matches("ncclCommDestroy comm=").count(), 2);
    assert!(t.contains("fini live=0") && !t.contains("leaked"), "{t}");
}

#[test]
fn runtime_connect_moves_the_channel_lines_to_the_first_collective() {
    let lazy = run(
        "clean",
        &rig_json(2, r#"{"version":22203}"#),
        &[("NCCL_DEBUG", "INFO")],
        LIMIT,
    );
    lazy.ok();
    let l: Vec<&str> = lazy.stdout.lines().collect();
    let mark = idx(&l, "MARK first all-reduce").unwrap();
    assert!(
        idx(&l, "via P2P/direct pointer").unwrap() > mark,
        "{}",
        lazy.stdout
    );
    assert!(idx(&l, "Connected all rings").unwrap() > mark);
    assert!(idx(&l, "Connected all trees").is_none());
    // 2.22: the version is an INFO line, "ncclCommInitRank comm .." and Init timings.
    assert!(l
        .iter()
        .any(|x| x.ends_with("NCCL INFO NCCL version 2.22.3+cuda12.5")));
    assert!(l
        .iter()
        .any(|x| x.contains("NCCL INFO ncclCommInitRank comm 0x")));
    // NCCL_RUNTIME_CONNECT=0 connects at init again (and says so: ENV is in the default mask).
    let eager = run(
        "clean",
        &rig_json(2, r#"{"version":22203}"#),
        &[("NCCL_DEBUG", "INFO"), ("NCCL_RUNTIME_CONNECT", "0")],
        LIMIT,
    );
    eager.ok();
    let l: Vec<&str> = eager.stdout.lines().collect();
    assert!(idx(&l, "via P2P/direct pointer").unwrap() < idx(&l, "MARK first all-reduce").unwrap());
    assert!(l
        .iter()
        .any(|x| x.ends_with("NCCL INFO NCCL_RUNTIME_CONNECT set by environment to 0.")));
    // A driver older than CUDA 12.0 has no cuMem: no runtime connection either.
    let old = rig_json(2, r#"{"version":22203}"#).replace("12040", "11080");
    let c = run("clean", &old, &[("NCCL_DEBUG", "INFO")], LIMIT);
    c.ok();
    let l: Vec<&str> = c.stdout.lines().collect();
    assert!(idx(&l, "via P2P/direct pointer").unwrap() < idx(&l, "MARK first all-reduce").unwrap());
}

#[test]
fn subsystems_filter_info_lines_as_nccl_does() {
    let v = r#"{"version":22304}"#;
    let all = run(
        "clean",
        &rig_json(2, v),
        &[
            ("NCCL_DEBUG", "INFO"),
            ("NCCL_DEBUG_SUBSYS", "INIT,P2P,GRAPH"),
        ],
        LIMIT,
    );
    all.ok();
    assert!(all.stdout.contains("NCCL INFO === System : maxBw 24.0"));
    assert!(all.stdout.contains("NCCL INFO ncclCommInitAll comm 0x"));
    // BOOTSTRAP is its own subsystem since 2.23, and in the default mask.
    assert!(!all.stdout.contains("Bootstrap : Using"));
    let def = run("clean", &rig_json(2, v), &[("NCCL_DEBUG", "INFO")], LIMIT);
    assert!(def.ok().stdout.contains("NCCL INFO Bootstrap : Using"));
    assert!(!def.stdout.contains("=== System"));
    let not_init = run(
        "clean",
        &rig_json(2, v),
        &[("NCCL_DEBUG", "INFO"), ("NCCL_DEBUG_SUBSYS", "^INIT")],
        LIMIT,
    );
    not_init.ok();
    assert!(!not_init.stdout.contains("Init COMPLETE"));
    assert!(not_init.stdout.contains("=== System"));
    // NCCL_DEBUG=WARN: the version only (a VERSION line since 2.22), no INFO.
    let warn = run("clean", &rig_json(2, v), &[("NCCL_DEBUG", "WARN")], LIMIT);
    warn.ok();
    assert_eq!(warn.nccl_lines(), ["NCCL version 2.23.4+cuda12.6"]);
    let quiet = run("clean", &rig_json(2, v), &[], LIMIT);
    assert!(quiet.ok().nccl_lines().is_empty());
}

#[test]
fn stdout_is_block_buffered_and_a_kill_loses_the_tail() {
    // Four ranks with the GRAPH dump: far more than one 4 KiB buffer.
    let c = run(
        "hold",
        &rig_json(4, r#"{"version":22304}"#),
        &[
            ("NCCL_DEBUG", "INFO"),
            ("NCCL_DEBUG_SUBSYS", "INIT,P2P,GRAPH"),
        ],
        Duration::from_secs(3),
    );
    assert_eq!(c.code, None, "killed");
    // What glibc wrote are whole 4 KiB buffers (lines cut at the end of each); the rest of
    // the log died with the process.
    let from = c
        .stdout
        .find(&format!("{}:", log::hostname()))
        .expect("some NCCL output");
    let written = c.stdout.len() - from;
    assert!(
        written >= 4096 && written & 4095 == 0,
        "{written} bytes:\n{}",
        c.stdout
    );
    // Normal exit flushes everything.
    let e = run(
        "exit",
        &rig_json(4, r#"{"version":22304}"#),
        &[
            ("NCCL_DEBUG", "INFO"),
            ("NCCL_DEBUG_SUBSYS", "INIT,P2P,GRAPH"),
        ],
        LIMIT,
    );
    e.ok();
    assert_eq!(e.stdout.matches("Init COMPLETE").count(), 4);
    // About 35 lines a rank with INIT,P2P,GRAPH (over 10 KiB): several buffers.
    assert!(
        e.stdout.lines().count() > 120,
        "{} lines",
        e.stdout.lines().count()
    );
}

#[test]
fn a_debug_file_gets_every_line_even_when_killed() {
    let c = run(
        "hold",
        &rig_json(2, r#"{"version":21805}"#),
        &[
            ("NCCL_DEBUG", "INFO"),
            ("NCCL_DEBUG_FILE", "$DIR/nccl.%h.%p.log"),
        ],
        Duration::from_secs(2),
    );
    assert_eq!(c.code, None);
    // 2.18 still printf()s the version to stdout; the rest goes to the file only.
    assert_eq!(
        c.nccl_lines(),
        ["NCCL version 2.18.5+cuda12.2"],
        "{}",
        c.stdout
    );
    let logs: Vec<PathBuf> = std::fs::read_dir(&c.dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("nccl.")
        })
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let name = logs[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&format!("nccl.{}.", log::hostname())) && name.ends_with(".log"));
    let text = std::fs::read_to_string(&logs[0]).unwrap();
    assert_eq!(text.matches("Init COMPLETE").count(), 2, "{text}");
    assert!(text.contains("NCCL INFO NCCL version 2.18.5+cuda12.2"));
    assert!(text.ends_with('\n'));
}

#[test]
fn service_threads_live_until_destroy() {
    run("threads", &rig_json(2, "{}"), &[], LIMIT).ok();
    run(
        "threads",
        &rig_json(2, "{}"),
        &[("NCCL_SET_THREAD_NAME", "1")],
        LIMIT,
    )
    .ok();
}

#[test]
fn live_communicators_at_exit_are_reported() {
    let c = run("leak", &rig_json(2, "{}"), &[], LIMIT);
    c.ok();
    assert!(
        c.trace.contains("fini live=2\nleaked 2 comms=0x"),
        "{}",
        c.trace
    );
}

#[test]
fn a_hang_is_a_collective_that_never_completes() {
    let c = run("hang", &rig_json(2, r#"{"fault":"hang"}"#), &[], LIMIT);
    c.ok();
    assert!(
        c.trace.contains("ncclCommDestroy comm=") && c.trace.contains("-> blocked"),
        "{}",
        c.trace
    );
    assert!(c.trace.contains("ncclCommAbort comm="));
    // Rank 0 was never destroyed (its Destroy is still blocked at exit).
    assert!(c.trace.contains("leaked 1"), "{}", c.trace);
}

#[test]
fn an_error_is_a_failed_launch_with_its_cuda_text() {
    let c = run(
        "error",
        &rig_json(2, r#"{"fault":"error"}"#),
        &[("NCCL_DEBUG", "WARN")],
        LIMIT,
    );
    c.ok();
    let warn = format!("{}:", log::hostname());
    let line = c
        .stdout
        .lines()
        .find(|l| l.contains("NCCL WARN"))
        .unwrap_or_default();
    // [1]: the device of the calling thread's current context (cudaGetDevice).
    assert!(
        line.starts_with(&warn)
            && line.contains(" [1] enqueue.cc:1087 NCCL WARN Cuda failure 'no kernel image"),
        "{}",
        c.stdout
    );
    // WARN lines begin with an empty line.
    assert!(c.stdout.contains("\n\n"));
    assert!(c.trace.contains("ncclGroupEnd -> 1"));
}

#[test]
fn an_async_error_is_reported_by_get_async_error() {
    let c = run(
        "async-error",
        &rig_json(2, r#"{"fault":"async-error","version":22304}"#),
        &[("NCCL_DEBUG", "INFO")],
        LIMIT,
    );
    c.ok();
    assert!(
        c.stdout.contains(
            "misc/socket.cc:50 NCCL WARN socketProgress: Connection closed by remote peer"
        ),
        "{}",
        c.stdout
    );
    assert!(c.stdout.contains("-> 6 [Progress Thread]"));
    assert!(c.trace.contains("async=6"));
    assert!(c.trace.contains("fini live=0"), "{}", c.trace);
}

#[test]
fn an_init_error_leaves_get_version_working() {
    let c = run(
        "init-error",
        &rig_json(2, r#"{"fault":"init-error","version":22203}"#),
        &[("NCCL_DEBUG", "WARN")],
        LIMIT,
    );
    c.ok();
    assert!(
        c.stdout
            .contains("init.cc:1732 NCCL WARN Cuda failure 'CUDA driver version is insufficient"),
        "{}",
        c.stdout
    );
    assert!(c.trace.contains("ncclGetVersion -> 0"));
    assert!(
        c.trace.contains("ncclCommInitAll ndev=2 comms= -> 1"),
        "{}",
        c.trace
    );
}

#[test]
fn misuse_is_refused_with_nccls_words() {
    run("misuse", &rig_json(2, "{}"), &[], LIMIT).ok();
}

#[test]
fn hang_on_exit_never_exits_and_loses_the_buffered_log() {
    let c = run(
        "exit",
        &rig_json(2, r#"{"fault":"hang-on-exit","version":22304}"#),
        &[("NCCL_DEBUG", "WARN")],
        Duration::from_secs(3),
    );
    assert_eq!(c.code, None, "it exited: {}", c.stderr);
    assert!(
        c.trace.contains("fini hang-on-exit: blocked"),
        "{}",
        c.trace
    );
    // The version line was still in glibc's buffer: it never reached the pipe.
    assert!(!c.stdout.contains("NCCL version"), "{}", c.stdout);
}
