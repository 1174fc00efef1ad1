//! Mutation fuzzing of everything rigdoctor reads that someone else wrote: saved reports
//! (`diagnose`) and sysroot trees (config space, sysfs attributes, /proc files). Every case
//! runs the real binary, under a memory limit and a deadline, and must end with exit 0, 1 or 2,
//! no panic, a one-line error, and no raw control character on stdout in any format.
//!
//! Deterministic by default (a fixed seed, a few seconds in CI). Longer runs:
//! `RIGDOCTOR_FUZZ_CASES=5000 RIGDOCTOR_FUZZ_SEED=$RANDOM cargo test --test fuzz -- --nocapture`.

mod common;

use common::sysroot::load_rig;
use common::*;
use serde_json::Value;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Strings a hostile or broken source can hold: terminal controls (OSC 52 clipboard, title,
/// CR + erase that forges a line), markdown that opens fences/HTML/headings, bidi overrides,
/// NUL, a cell wider than any format width, and words rigdoctor itself uses as tags.
fn hostile_string(rng: &mut Rng) -> String {
    let pieces = [
        "\x1b]52;c;cm0gLXJmIH4=\x07",
        "\x1b]0;pwned\x07",
        "\r\x1b[2K✓ no problems found",
        "\u{9b}31m",
        "\u{202e}evil",
        "```\n# heading\n</details><img src=x onerror=alert(1)>",
        "| a | b |\n---|---",
        "\0nul",
        "test",
        "p2p",
        "inf",
        "nan",
        "0000:41:00.0",
        "GPU-3a1b2c3d-0000-1111-2222-333344445555",
        "",
    ];
    let mut s = String::new();
    for _ in 0..1 + rng.below(3) {
        s.push_str(pieces[rng.below(pieces.len())]);
    }
    if rng.below(20) == 0 {
        s.push_str(&"W".repeat(70_000));
    }
    s
}

fn hostile_value(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 | 1 => Value::String(hostile_string(rng)),
        2 => serde_json::json!(*rng.pick(&[
            0i64,
            -1,
            i64::MAX,
            i64::MIN,
            4_294_967_296,
            65_536,
            255
        ])),
        3 => serde_json::json!(*rng.pick(&[0.5f64, -1e308, 1e308, 1e-300])),
        4 => Value::Null,
        5 => Value::Bool(rng.below(2) == 0),
        6 => serde_json::json!([]),
        _ => serde_json::json!({}),
    }
}

/// Every JSON pointer in `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(x, format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
}

fn mutate_json(v: &mut Value, rng: &mut Rng) {
    let mut ps = Vec::new();
    pointers(v, String::new(), &mut ps);
    let p = rng.pick(&ps).clone();
    let Some(target) = v.pointer_mut(&p) else {
        return;
    };
    match (rng.below(4), &mut *target) {
        (0, Value::Array(a)) if !a.is_empty() => {
            // Grow a list: what a report with more devices or entries than it should have is.
            let x = a[rng.below(a.len())].clone();
            let n = *rng.pick(&[2usize, 70, 5000]);
            a.extend(std::iter::repeat_n(x, n));
        }
        (1, Value::Object(o)) if !o.is_empty() => {
            let k = o
                .keys()
                .nth(rng.below(o.len()))
                .cloned()
                .unwrap_or_default();
            o.remove(&k);
        }
        _ => *target = hostile_value(rng),
    }
}

fn mutate_bytes(b: &mut Vec<u8>, rng: &mut Rng) {
    match rng.below(3) {
        0 => b.truncate(rng.below(b.len() + 1)),
        1 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(b.len());
                if let Some(x) = b.get_mut(i) {
                    *x = rng.next() as u8;
                }
            }
        }
        _ => {
            let i = rng.below(b.len() + 1);
            let s = hostile_string(rng);
            b.splice(i..i, s.bytes());
        }
    }
}

/// The real binary under a 2 GiB address-space limit and `deadline`: (exit code, stdout,
/// stderr). A case that runs past the deadline or dies by a signal fails the test.
fn run_bounded(
    args: &[&str],
    stdin: Option<&[u8]>,
    deadline: Duration,
    case: &str,
) -> (i32, Vec<u8>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rigdoctor"));
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("NO_COLOR");
    // SAFETY: setrlimit is async-signal-safe and only lowers the child's own limit.
    unsafe {
        cmd.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: 2 << 30,
                rlim_max: 2 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        // A writer thread: a child that stops reading must not block the test.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let out_pipe = child.stdout.take().unwrap();
    let err_pipe = child.stderr.take().unwrap();
    let read = |mut p: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = p.read_to_end(&mut v);
            v
        })
    };
    let out_t = read(Box::new(out_pipe));
    let err_t = read(Box::new(err_pipe));
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{case}: still running after {deadline:?}: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_t.join().unwrap();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    let code = status
        .code()
        .unwrap_or_else(|| panic!("{case}: killed by a signal ({status:?}): {stderr}"));
    (code, stdout, stderr)
}

/// What every case must hold.
fn check_output(case: &str, format: &str, code: i32, stdout: &[u8], stderr: &str) {
    assert!(matches!(code, 0..=2), "{case}: exit {code}: {stderr}");
    assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    if code == 2 {
        assert_eq!(
            stderr.lines().count(),
            1,
            "{case}: not one line: {stderr:?}"
        );
    }
    let chars: Vec<char> = String::from_utf8_lossy(stdout).chars().collect();
    if let Some(at) = chars.iter().position(|&c| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }) {
        let near: String = chars[at.saturating_sub(60)..].iter().take(120).collect();
        panic!(
            "{case} ({format}): raw {:?} on stdout near {near:?}",
            chars[at]
        );
    }
}

fn seed_reports() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reports"))
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
    seeds.sort();
    // A report with every GPU section (P2P with a hang, bandwidth, NCCL), from the fake driver.
    let (rig, fake) = x399_one_pair_hangs();
    let r = run_gpu("check", &rig, &fake, &["--timeout", "2", "--quick"]);
    seeds.push(r.report.to_string().into_bytes());
    seeds
}

#[test]
fn diagnose_survives_mutated_reports() {
    let seed = env_num("RIGDOCTOR_FUZZ_SEED", 0x5eed_2026);
    let cases = env_num("RIGDOCTOR_FUZZ_CASES", 240);
    let seeds = seed_reports();
    let mut rng = Rng::new(seed);
    let formats = ["text", "markdown", "json"];
    for i in 0..cases {
        let base = rng.pick(&seeds).clone();
        let bytes = if rng.below(8) == 0 {
            let mut b = base;
            mutate_bytes(&mut b, &mut rng);
            b
        } else {
            let mut v: Value = serde_json::from_slice(&base).unwrap();
            for _ in 0..1 + rng.below(4) {
                mutate_json(&mut v, &mut rng);
            }
            v.to_string().into_bytes()
        };
        let format = *rng.pick(&formats);
        let mut args = vec!["diagnose", "-", "--format", format];
        if rng.below(4) == 0 {
            args.push("--redact");
        }
        let case = format!("seed {seed} case {i}");
        let (code, out, err) = run_bounded(&args, Some(&bytes), Duration::from_secs(20), &case);
        check_output(&case, format, code, &out, &err);
    }
}

/// `compare` reads the same reports, several at a time: a mutated report beside an intact one
/// (the report with every GPU section) must end in a table or a one-line error, never a panic,
/// a hang or a raw control character.
#[test]
fn compare_survives_mutated_reports() {
    let seed = env_num("RIGDOCTOR_FUZZ_SEED", 0x5eed_2026) ^ 0xc0;
    let cases = env_num("RIGDOCTOR_FUZZ_CASES", 240) / 4;
    let seeds = seed_reports();
    let dir = tempfile::tempdir().unwrap();
    let intact = dir.path().join("intact.json");
    std::fs::write(&intact, seeds.last().unwrap()).unwrap();
    let mut rng = Rng::new(seed);
    let formats = ["text", "markdown", "json", "oneline"];
    for i in 0..cases {
        let base: &Vec<u8> = rng.pick(&seeds);
        let mut v: Value = serde_json::from_slice(base).unwrap();
        for _ in 0..1 + rng.below(4) {
            mutate_json(&mut v, &mut rng);
        }
        let mutated = dir.path().join("mutated.json");
        std::fs::write(&mutated, v.to_string()).unwrap();
        let format = *rng.pick(&formats);
        let (a, b) = (intact.to_str().unwrap(), mutated.to_str().unwrap());
        let args = ["compare", a, b, a, "--format", format];
        let case = format!("seed {seed} compare case {i}");
        let (code, out, err) = run_bounded(&args, None, Duration::from_secs(20), &case);
        check_output(&case, format, code, &out, &err);
    }
}

/// Files under a sysroot that probes read, and what to put there.
fn mutate_tree(root: &Path, rng: &mut Rng) -> String {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                files.push(p);
            }
        }
    }
    files.sort();
    let f = rng.pick(&files).clone();
    let rel = f.strip_prefix(root).unwrap().display().to_string();
    let what = match rng.below(7) {
        0 => {
            std::fs::remove_file(&f).unwrap();
            "removed"
        }
        1 => {
            let n = rng.below(8192);
            let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            std::fs::write(&f, junk).unwrap();
            "random bytes"
        }
        2 => {
            let mut b = std::fs::read(&f).unwrap();
            mutate_bytes(&mut b, rng);
            std::fs::write(&f, b).unwrap();
            "mutated"
        }
        3 => {
            std::fs::write(&f, vec![0xFFu8; *rng.pick(&[4usize, 64, 256, 4096])]).unwrap();
            "all ones"
        }
        4 => {
            std::fs::remove_file(&f).unwrap();
            std::os::unix::fs::symlink(rng.pick(&["/etc/passwd", "..", "/dev/zero", "loop"]), &f)
                .unwrap();
            "symlink"
        }
        5 => {
            std::fs::remove_file(&f).unwrap();
            let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a path we own; mkfifo creates a FIFO and touches nothing else.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            "fifo"
        }
        _ => {
            std::fs::write(&f, format!("{}\n", hostile_string(rng))).unwrap();
            "hostile text"
        }
    };
    format!("{rel}: {what}")
}

#[test]
fn host_survives_mutated_sysroots() {
    let seed = env_num("RIGDOCTOR_FUZZ_SEED", 0x5eed_2026);
    let cases = env_num("RIGDOCTOR_FUZZ_CASES", 240) / 2;
    let mut rng = Rng::new(seed ^ 0x7ee);
    let rigs = [
        "x399-3x3090-r545",
        "x99-2x3090-plx",
        "epyc-2x4090-nonroot",
        "z790-2x3090-nouveau",
    ];
    let formats = ["text", "markdown", "json"];
    for i in 0..cases {
        let rig = load_rig(rigs[rng.below(rigs.len())]);
        let dir = sysroot_of(&rig);
        let mut done = Vec::new();
        for _ in 0..1 + rng.below(5) {
            done.push(mutate_tree(dir.path(), &mut rng));
        }
        let format = *rng.pick(&formats);
        let root = dir.path().to_str().unwrap().to_string();
        let case = format!("seed {seed} case {i} [{}]", done.join("; "));
        let (code, out, err) = run_bounded(
            &["host", "--sysroot", &root, "--format", format],
            None,
            Duration::from_secs(20),
            &case,
        );
        check_output(&case, format, code, &out, &err);
    }
}
