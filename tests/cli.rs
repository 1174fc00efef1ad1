//! The binary as a user and a script meet it: exit codes, formats, files, bad input.

mod common;

use common::*;
use predicates::prelude::*;
use std::io::Write;

#[test]
fn machine_without_driver_says_so_and_exits_1() {
    // An empty tree is the extreme case: no /proc, no /sys at all. Nothing may panic.
    let empty = tempfile::tempdir().unwrap();
    let out = rigdoctor()
        .args(["check", "--sysroot"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines().nth(1).unwrap().contains("NVIDIA driver"),
        "{text}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn host_json_is_a_versioned_report() {
    let empty = tempfile::tempdir().unwrap();
    let (code, report) = host_json(empty.path(), &[]);
    assert_eq!(code, 1);
    assert_eq!(report["schema"], "rigdoctor.report/1");
    assert_eq!(report["tool"]["name"], "rigdoctor");
    assert!(report["facts"].is_object());
    // An empty tree: nothing could be read, and the report says so.
    assert_eq!(
        summary(&report),
        ["error driver-not-loaded", "warn not-checked"]
    );
    // Unknown facts carry their reason.
    assert_eq!(report["facts"]["host"]["cmdline"]["unknown"], "absent");
}

#[test]
fn live_root_never_crashes() {
    // Whatever this machine is (CI has no NVIDIA driver), the run completes with a verdict.
    let out = rigdoctor().args(["host", "--json"]).output().unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "{:?}", out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["schema"], "rigdoctor.report/1");
}

#[test]
fn a_live_check_never_starts_an_unloaded_driver() {
    // Without the NVIDIA module (CI), `check` must not call cuInit/nvmlInit: as root they would
    // create /dev/nvidiactl and run nvidia-modprobe.
    if std::path::Path::new("/proc/driver/nvidia/version").exists()
        || std::path::Path::new("/dev/dxg").exists()
    {
        println!("skipped: this machine has an NVIDIA driver loaded");
        return;
    }
    let out = rigdoctor()
        .args(["check", "--json", "--quick"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gpu = &report["facts"]["gpu"];
    assert_eq!(gpu["cuda"]["unknown"], "not-run", "{gpu}");
    assert!(gpu["cuda"]["detail"]
        .as_str()
        .unwrap()
        .contains("does not start the driver"));
    assert!(gpu.get("workers").is_none(), "no worker was started: {gpu}");
}

#[test]
fn fail_on_sets_the_threshold() {
    let dir = sysroot_of(&load_rig("x99-2x3090-plx")); // warnings, no error
    let run = |level: &str| {
        rigdoctor()
            .args(["host", "--fail-on", level, "--sysroot"])
            .arg(dir.path())
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(run("error"), Some(0));
    assert_eq!(run("warn"), Some(1));
    assert_eq!(run("info"), Some(1));
    let healthy = sysroot_of(&load_rig("x570-2x3090-r535")); // one note
    let code = rigdoctor()
        .args(["host", "--fail-on", "warn", "--sysroot"])
        .arg(healthy.path())
        .output()
        .unwrap();
    assert_eq!(code.status.code(), Some(0));
}

#[test]
fn bad_usage_exits_2() {
    rigdoctor().arg("frobnicate").assert().code(2);
    rigdoctor()
        .args(["host", "--fail-on", "never"])
        .assert()
        .code(2);
    rigdoctor()
        .args(["host", "--sysroot", "/does/not/exist"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a directory"));
    // A missing library is a usage error, never a run that quietly finds no NCCL.
    for cmd in ["nccl", "check"] {
        rigdoctor()
            .args([cmd, "--nccl-lib", "/nonexistent/libnccl.so.2"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("give the path of libnccl.so.2"));
    }
    // GPU options exist only on the commands that run GPU work.
    for args in [
        &["host", "--devices", "0"][..],
        &["host", "--gpu"],
        &["host", "--timeout", "3"],
        &["diagnose", "x.json", "--devices", "1"],
    ] {
        rigdoctor()
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("unexpected argument"));
    }
    rigdoctor()
        .args(["explain", "p2p-hangs"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`rigdoctor explain` lists them"));
}

/// One line per command at the top; a command's details, completions, the man page and each
/// finding's entry come from the same definitions.
#[test]
fn help_completions_man_and_explain() {
    let out = rigdoctor().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(commands.len() >= 10, "{help}");
    assert!(commands.iter().all(|l| l.len() <= 100), "{commands:#?}");
    assert!(
        !help.contains("--timeout"),
        "GPU options belong to GPU commands"
    );
    let p2p = rigdoctor().args(["help", "p2p"]).output().unwrap();
    let p2p = String::from_utf8(p2p.stdout).unwrap();
    assert!(
        p2p.contains("--timeout") && p2p.contains("every byte verified"),
        "{p2p}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = rigdoctor().args(["completions", shell]).output().unwrap();
        let s = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success() && s.contains("watchdog-test") && s.contains("fail-on"),
            "{shell}"
        );
    }
    let man = rigdoctor().arg("man").output().unwrap();
    let man = String::from_utf8(man.stdout).unwrap();
    assert!(
        man.starts_with(".ie") && man.contains(".TH rigdoctor 1"),
        "{man}"
    );
    let all = rigdoctor().arg("explain").output().unwrap();
    let all = String::from_utf8(all.stdout).unwrap();
    assert!(
        all.lines()
            .any(|l| l.starts_with("p2p-hang ") && l.contains("error")),
        "{all}"
    );
    let one = rigdoctor()
        .args(["explain", "acs-redirect"])
        .output()
        .unwrap();
    let one = String::from_utf8(one.stdout).unwrap();
    assert!(
        one.starts_with("acs-redirect: ") && one.contains("## `acs-redirect`"),
        "{one}"
    );
    assert!(
        !one.contains("## `acs-not-checked`"),
        "one entry only: {one}"
    );
}

#[test]
fn help_explains_commands_and_exit_codes() {
    rigdoctor()
        .arg("--help")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("diagnose").and(predicate::str::contains("Exit codes")));
    rigdoctor()
        .args(["diagnose", "--help"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("Example"));
}

fn diagnose_bytes(bytes: &[u8]) -> std::process::Output {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    rigdoctor().arg("diagnose").arg(f.path()).output().unwrap()
}

fn assert_one_line_error(out: &std::process::Output, what: &str) {
    assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    assert!(err.starts_with("rigdoctor: error: "), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(out.stdout.is_empty(), "{what}");
}

#[test]
fn diagnose_rejects_bad_files_with_one_line() {
    let good = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/reports/x399-3x3090-r545.json"),
    )
    .unwrap();
    let text = String::from_utf8(good.clone()).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("not json", b"hello".to_vec()),
        ("binary", vec![0xff, 0x00, 0x13, 0x37]),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("no schema", b"{\"facts\":{}}".to_vec()),
        ("other tool", b"{\"schema\":\"nvbandwidth\"}".to_vec()),
        (
            "newer schema",
            text.replace("rigdoctor.report/1", "rigdoctor.report/2")
                .into_bytes(),
        ),
        (
            "wrong type",
            text.replace("\"loaded\": true", "\"loaded\": \"yes\"")
                .into_bytes(),
        ),
        ("array", b"[1,2,3]".to_vec()),
        ("deep nesting", "[".repeat(100_000).into_bytes()),
        ("huge", vec![b' '; 17 << 20]),
    ];
    for (what, bytes) in cases {
        assert_one_line_error(&diagnose_bytes(&bytes), what);
    }
    assert_one_line_error(
        &rigdoctor()
            .args(["diagnose", "/no/such/report.json"])
            .output()
            .unwrap(),
        "missing",
    );
    let dir = tempfile::tempdir().unwrap();
    assert_one_line_error(
        &rigdoctor()
            .arg("diagnose")
            .arg(dir.path())
            .output()
            .unwrap(),
        "directory",
    );
}

#[test]
fn diagnose_survives_every_truncation() {
    let good = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reports/x99-2x3090-plx.json"),
    )
    .unwrap();
    for cut in (0..good.len()).step_by(good.len() / 40) {
        let code = diagnose_bytes(&good[..cut]).status.code();
        assert_eq!(code, Some(2), "cut at {cut}");
    }
}

#[test]
fn diagnose_reads_stdin_and_round_trips() {
    let dir = sysroot_of(&load_rig("x399-3x3090-r545"));
    let (_, live) = host_json(dir.path(), &[]);
    let out = rigdoctor()
        .args(["diagnose", "-", "--json"])
        .write_stdin(live.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["facts"], live["facts"]);
    assert_eq!(again["findings"], live["findings"]);
    // The original command is kept; that this is a second judgement is said beside it.
    assert_eq!(again["command"], "host");
    assert_eq!(again["rediagnosed_by"], "diagnose");
    assert_eq!(again["summary"], live["summary"]);
}

#[test]
fn the_json_summary_says_counts_verdict_exit_and_what_did_not_run() {
    let dir = sysroot_of(&load_rig("epyc-2x4090-nonroot"));
    let (code, r) = host_json(dir.path(), &[]);
    let s = &r["summary"];
    assert_eq!(s["exit_code"], code);
    assert_eq!(s["notes"], r["findings"].as_array().unwrap().len());
    assert_eq!(
        (s["errors"].as_u64(), s["warnings"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(
        s["verdict"].as_str().unwrap().contains("acs-not-checked"),
        "{s}"
    );
    assert_eq!(s["interrupted"], false);
    assert!(
        s["not_checked"][0]
            .as_str()
            .unwrap()
            .starts_with("acs-not-checked"),
        "{s}"
    );
    // --fail-on info makes the same notes exit 1, and the summary says so.
    let out = rigdoctor()
        .args(["host", "--json", "--fail-on", "info", "--sysroot"])
        .arg(dir.path())
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (out.status.code(), r["summary"]["exit_code"].as_i64()),
        (Some(1), Some(1))
    );
}

#[test]
fn the_output_extension_chooses_the_format_and_conflicts_are_refused() {
    let dir = sysroot_of(&load_rig("x399-3x3090-r545"));
    let out_dir = tempfile::tempdir().unwrap();
    for (name, starts) in [
        ("r.json", "{"),
        ("post.md", "## rigdoctor"),
        ("r.txt", "rigdoctor "),
    ] {
        let file = out_dir.path().join(name);
        let out = rigdoctor()
            .args(["host", "--color", "never", "-o"])
            .arg(&file)
            .arg("--sysroot")
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let saved = std::fs::read_to_string(&file).unwrap();
        assert!(
            saved.starts_with(starts),
            "{name}: {}",
            &saved[..60.min(saved.len())]
        );
        // The terminal gets the text report; the share hint never goes to a file or a pipe.
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("What to do") && stdout.contains("driver-known-bad"),
            "{name}"
        );
        assert!(
            !saved.contains("Share it") && !stdout.contains("Share it"),
            "{name}"
        );
    }
    // --format wins over the extension.
    let file = out_dir.path().join("r2.json");
    rigdoctor()
        .args(["host", "--format", "markdown", "-o"])
        .arg(&file)
        .arg("--sysroot")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .starts_with("## rigdoctor"));
    let out = rigdoctor()
        .args(["host", "--json", "--format", "markdown", "--sysroot"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

#[test]
fn output_file_gets_the_format_and_terminal_the_text() {
    let dir = sysroot_of(&load_rig("x399-3x3090-r545"));
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("report.json");
    let out = rigdoctor()
        .args(["check", "--json", "-o"])
        .arg(&file)
        .arg("--sysroot")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["schema"], "rigdoctor.report/1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("error   driver-known-bad"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("report written to"));
    let bad = rigdoctor()
        .args(["check", "-o", "/no/such/dir/r.json", "--sysroot"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_one_line_error(&bad, "unwritable output");
}

#[test]
fn markdown_is_post_ready() {
    let dir = sysroot_of(&load_rig("x399-3x3090-r545"));
    let out = rigdoctor()
        .args(["check", "--format", "markdown", "--sysroot"])
        .arg(dir.path())
        .output()
        .unwrap();
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.starts_with("## rigdoctor check: ❌ 1 error"), "{md}");
    assert!(md.contains("| BUS ID | NAME |"));
    assert!(md.contains("#### error `driver-known-bad`"));
    let json_start = md.find("```json\n").unwrap() + 8;
    let json_end = md[json_start..].find("```").unwrap() + json_start;
    let embedded: serde_json::Value = serde_json::from_str(&md[json_start..json_end]).unwrap();
    assert_eq!(embedded["schema"], "rigdoctor.report/1");
}

#[test]
fn redact_hides_identity_but_keeps_the_diagnosis() {
    let dir = sysroot_of(&load_rig("x399-3x3090-r545"));
    let out = rigdoctor()
        .args(["check", "--json", "--redact", "--sysroot"])
        .arg(dir.path())
        .env("HOME", "/home/alice")
        .env("NCCL_SOCKET_IFNAME", "eth0")
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    for secret in [
        "tr-rig",
        "3a1b2c3d-0000-1111-2222-333344445555",
        "0b4c4a1e-7a5f-4f0e-9a53-8d2a0c6f1e22",
        "alice",
    ] {
        assert!(!s.contains(secret), "{secret} leaked");
    }
    let report: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(summary(&report)[0], "error driver-known-bad");
}

/// Host names that are also words of the report's vocabulary, or that a rule reads (DMA, 545),
/// short ones, and addresses in NCCL variables: redacted, and the diagnosis is the real one.
#[test]
fn redact_never_fails_open_nor_changes_the_diagnosis() {
    let base = load_rig("x399-3x3090-r545");
    let plain = {
        let dir = sysroot_of(&base);
        summary(&host_json(dir.path(), &[]).1)
    };
    for host in ["local", "read", "p2p", "test", "DMA", "545", "ab", "x"] {
        let dir = sysroot_of(&base);
        std::fs::write(
            dir.path().join("proc/sys/kernel/hostname"),
            format!("{host}\n"),
        )
        .unwrap();
        let out = rigdoctor()
            .args(["host", "--json", "--redact", "--sysroot"])
            .arg(dir.path())
            .env("HOME", "/srv/users/alice")
            .env("USER", "alice")
            .env("NCCL_COMM_ID", "192.168.7.20:29500")
            .env("NCCL_SOCKET_IFNAME", "=enp5s0")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8(out.stdout).unwrap();
        let r: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            summary(&r),
            plain,
            "{host}: redaction changed the diagnosis"
        );
        assert_eq!(r["facts"]["host"]["hostname"], "[redacted]", "{host}");
        for secret in ["192.168.7.20", "/srv/users/alice", "alice"] {
            assert!(!s.contains(secret), "{host}: {secret} leaked");
        }
    }
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let dir = sysroot_of(&load_rig("x399-3x3090-r545"));
    let plain = rigdoctor()
        .args(["check", "--sysroot"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        !plain.stdout.contains(&0x1b),
        "piped output must not carry escape codes"
    );
    let coloured = rigdoctor()
        .args(["check", "--color", "always", "--sysroot"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(coloured.stdout.contains(&0x1b));
}

#[test]
fn a_bad_output_is_refused_before_any_work_and_a_link_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = sysroot_of(&load_rig("x570-2x3090-r535"));
    let run = |out: &std::path::Path| {
        rigdoctor()
            .args(["host", "--json", "--sysroot"])
            .arg(root.path())
            .arg("-o")
            .arg(out)
            .output()
            .unwrap()
    };
    // A missing directory and a directory: exit 2, one line, nothing written.
    for (target, says) in [
        (dir.path().join("no/such/report.json"), "does not exist"),
        (dir.path().to_path_buf(), "is a directory"),
    ] {
        let o = run(&target);
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says) && err.lines().count() == 1, "{err}");
        assert!(o.stdout.is_empty());
    }
    // A symlink at -o is replaced by the report; its target is not touched.
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "keep me").unwrap();
    let link = dir.path().join("report.json");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    assert_eq!(run(&link).status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&link).unwrap()).unwrap();
    assert_eq!(written["schema"], "rigdoctor.report/1");
    assert!(!std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // No temp files left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    // diagnose -o onto its own input: refused, the input intact.
    let before = std::fs::read(&link).unwrap();
    let o = rigdoctor()
        .args(["diagnose", "--json"])
        .arg(&link)
        .arg("-o")
        .arg(&link)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is the report being diagnosed"));
    assert_eq!(std::fs::read(&link).unwrap(), before);
}

#[test]
fn a_stdout_that_cannot_be_written_is_exit_2() {
    if !std::path::Path::new("/dev/full").exists() {
        return;
    }
    let root = sysroot_of(&load_rig("x570-2x3090-r535"));
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = std::process::Command::new(assert_cmd::cargo::cargo_bin("rigdoctor"))
        .args(["host", "--json", "--sysroot"])
        .arg(root.path())
        .stdout(full)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("stdout: cannot write"));
}

#[test]
fn strings_from_the_machine_cannot_drive_the_terminal() {
    let root = sysroot_of(&load_rig("x399-3x3090-r545"));
    // OSC 52 (clipboard write), a title change, and CR + erase-line forging a clean verdict.
    let evil = "box\x1b]52;c;ZXZpbA==\x07\x1b]0;pwned\x07\r\x1b[2K✓ no problems found";
    std::fs::write(
        root.path().join("proc/sys/kernel/hostname"),
        format!("{evil}\n"),
    )
    .unwrap();
    for color in ["never", "always"] {
        let out = rigdoctor()
            .args(["host", "--color", color, "--sysroot"])
            .arg(root.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains('\r') && !text.contains('\x07'), "{text:?}");
        assert!(
            !text.contains("\x1b]"),
            "an OSC sequence got through: {text:?}"
        );
        if color == "never" {
            assert!(!text.contains('\x1b'), "{text:?}");
        }
        assert!(text.contains("box\\x1b]52;c;"), "shown escaped: {text:?}");
    }
    // The same through a saved report, and in markdown.
    let json = rigdoctor()
        .args(["host", "--json", "--sysroot"])
        .arg(root.path())
        .output()
        .unwrap()
        .stdout;
    for format in ["text", "markdown"] {
        let out = rigdoctor()
            .args(["diagnose", "-", "--format", format])
            .write_stdin(json.clone())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains('\x1b') && !text.contains('\r'),
            "{format}: {text:?}"
        );
    }
}

#[test]
fn a_fifo_as_diagnose_input_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("report.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let t = std::time::Instant::now();
    let out = rigdoctor()
        .args(["diagnose"])
        .arg(&fifo)
        .timeout(std::time::Duration::from_secs(10))
        .output()
        .unwrap();
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
}

#[test]
fn a_sysroot_link_out_of_the_tree_is_not_followed() {
    let root = sysroot_of(&load_rig("x570-2x3090-r535"));
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "BOOT_IMAGE=/secret-token-4242").unwrap();
    let cmdline = root.path().join("proc/cmdline");
    std::fs::remove_file(&cmdline).unwrap();
    std::os::unix::fs::symlink(secret.path(), &cmdline).unwrap();
    let (_, r) = host_json(root.path(), &[]);
    assert!(
        !r.to_string().contains("secret-token-4242"),
        "the file outside was copied in"
    );
    assert!(text(&r["facts"]["host"]["cmdline"]).contains("outside the tree"));
    assert!(!findings(&r, "not-checked").is_empty());
}

#[test]
fn markdown_neutralises_html_fences_and_headings_from_the_machine() {
    let root = sysroot_of(&load_rig("x399-3x3090-r545"));
    let evil = "#pwn</details><img src=x onerror=alert(1)>```";
    std::fs::write(
        root.path().join("proc/sys/kernel/hostname"),
        format!("{evil}\n"),
    )
    .unwrap();
    let out = rigdoctor()
        .args(["host", "--format", "markdown", "--sysroot"])
        .arg(root.path())
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&out.stdout);
    // Before the JSON block (inside its fence, text is code and renders as such).
    let prose = &md[..md.find("<details>").unwrap()];
    assert!(
        !prose.contains("<img") && !prose.contains("</details>"),
        "{prose}"
    );
    assert!(!prose.contains("```"), "{prose}");
    assert!(md.lines().all(|l| !l.starts_with("#pwn")), "{md}");
    // The JSON block still holds the real report, behind a fence its content cannot close.
    let start = md.find("json\n{").unwrap() + 5;
    let fence_len = md[..start - 5]
        .chars()
        .rev()
        .take_while(|&c| c == '`')
        .count();
    let end = md[start..].find(&"`".repeat(fence_len)).unwrap() + start;
    let v: serde_json::Value = serde_json::from_str(&md[start..end]).unwrap();
    assert_eq!(v["facts"]["host"]["hostname"], evil);
}

/// Every entry under `root`: path, kind, permissions, size, modification time and content.
fn snapshot(root: &std::path::Path) -> Vec<(String, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let body = if m.is_file() {
            format!("{:?}", std::fs::read(&p).unwrap())
        } else if m.file_type().is_symlink() {
            format!("-> {:?}", std::fs::read_link(&p).unwrap())
        } else {
            let mut kids: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            kids.sort();
            stack.extend(kids);
            String::new()
        };
        out.push((
            p.display().to_string(),
            format!("{:o} {} {} {body}", m.mode(), m.len(), m.mtime_nsec()),
        ));
    }
    out.sort();
    out
}

/// README: "rigdoctor only reads". The tree it diagnoses is byte-for-byte and time-for-time
/// the same afterwards, and no code outside the two places that write rigdoctor's own files
/// (`-o`, and NCCL's log in a private directory) calls a writing API.
#[test]
fn rigdoctor_only_reads() {
    let dir = sysroot_of(&load_rig("x399-3x3090-r545"));
    let before = snapshot(dir.path());
    for format in ["text", "json", "markdown"] {
        let out = rigdoctor()
            .args(["host", "--redact", "--format", format, "--sysroot"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    }
    assert_eq!(before, snapshot(dir.path()));

    let writers = [
        "fs::write(",
        "File::create(",
        ".write(true)",
        ".append(true)",
        "remove_file(",
        "remove_dir",
        "create_dir",
        "DirBuilder",
        "set_permissions(",
        "fs::rename(",
        "libc::ioctl",
        "libc::pwrite",
        "libc::mmap",
    ];
    let allowed = ["src/output.rs", "src/probe/gpu/nccl_log.rs"];
    let mut stack = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    let mut found = Vec::new();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let rel = p
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .display()
            .to_string();
        let src = std::fs::read_to_string(&p).unwrap();
        // Unit tests build their own fixtures.
        let code = src.split("#[cfg(test)]").next().unwrap_or("");
        for w in writers {
            if code.contains(w) && !allowed.contains(&rel.as_str()) {
                found.push(format!("{rel}: {w}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "writing calls outside the allowed files: {found:?}"
    );
}

/// Colour sequences take no column: with colour forced, the text report is the uncoloured one
/// plus escape sequences, so every label, table and matrix stays aligned.
#[test]
fn colour_never_shifts_alignment() {
    let strip = |s: &str| {
        let mut out = String::new();
        let mut it = s.chars().peekable();
        while let Some(c) = it.next() {
            if c == '\x1b' && it.peek() == Some(&'[') {
                for d in it.by_ref() {
                    if ('\x40'..='\x7e').contains(&d) && d != '[' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    for rig in ["x399-3x3090-r545", "x99-2x3090-plx"] {
        let file = format!("{}/tests/reports/{rig}.json", env!("CARGO_MANIFEST_DIR"));
        let render = |color: &str| {
            let out = rigdoctor()
                .args(["diagnose", "--color", color, &file])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let (coloured, plain) = (render("always"), render("never"));
        assert!(coloured.contains('\x1b'), "{rig}: no colour");
        assert_eq!(strip(&coloured), plain, "{rig}");
        assert!(plain.contains("  System        "), "{plain}");
    }
}

/// `rigdoctor host` as plain text on a fixture rig.
fn host_text(rig: &str) -> String {
    let dir = sysroot_of(&load_rig(rig));
    let out = rigdoctor()
        .args(["host", "--color", "never", "--sysroot"])
        .arg(dir.path())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Notes only, but ACS could not be read without root: the verdict says what did not run.
#[test]
fn a_verdict_with_unread_parts_is_never_a_plain_pass() {
    let text = host_text("epyc-2x4090-nonroot");
    // The verdict: from the second line to the first blank one (it wraps at 80 columns).
    let verdict: String = text
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        verdict.contains("no problems found in what could be read")
            && verdict.contains("see acs-not-checked"),
        "{verdict}"
    );
    // A rig read whole keeps the plain verdict.
    let text = host_text("x570-2x3090-r535");
    assert!(
        text.lines()
            .nth(1)
            .unwrap_or_default()
            .starts_with("✓ no problems found ("),
        "{text}"
    );
}

#[test]
fn allows_come_from_a_config_file_and_bad_ones_are_refused() {
    let dir = sysroot_of(&load_rig("x399-3x3090-r545"));
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("rigdoctor.toml"),
        "# accepted on this box until the driver is changed\nallow = [\"driver-known-bad\"]\n",
    )
    .unwrap();
    let out = rigdoctor()
        .current_dir(cwd.path())
        .args(["host", "--json", "--sysroot"])
        .arg(dir.path())
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", r["summary"]);
    let f = findings(&r, "driver-known-bad");
    assert_eq!(f[0]["allowed"], "rigdoctor.toml driver-known-bad");
    // An unknown id, a bad bus id, an unknown key, a missing --config: exit 2, one line.
    let bad = cwd.path().join("bad.toml");
    for (config, arg, says) in [
        (None, Some("p2p-hangs"), "no finding has the id"),
        (None, Some("p2p-hang@1"), "not a PCI address"),
        (
            Some("allow = [\"p2p-hang\"]\nignore = 1\n"),
            None,
            "unknown field",
        ),
        (Some("allow = [\"nope\"]\n"), None, "no finding has the id"),
    ] {
        let mut c = rigdoctor();
        c.current_dir(cwd.path())
            .args(["host", "--sysroot"])
            .arg(dir.path());
        if let Some(text) = config {
            std::fs::write(&bad, text).unwrap();
            c.arg("--config").arg(&bad);
        }
        if let Some(a) = arg {
            c.args(["--allow", a]);
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{says}: {err}");
        assert!(
            err.contains(says) && err.trim().lines().count() == 1,
            "{says}: {err}"
        );
    }
    rigdoctor()
        .args(["host", "--config", "/no/such/config.toml"])
        .assert()
        .code(2);
}

/// `--format oneline`: one status line and the exit code, for health checkers.
#[test]
fn oneline_is_one_status_line_and_the_exit_code() {
    let line = |root: &std::path::Path, extra: &[&str]| {
        let out = rigdoctor()
            .args(["host", "--format", "oneline", "--sysroot"])
            .arg(root)
            .args(extra)
            .output()
            .unwrap();
        let s = String::from_utf8(out.stdout).unwrap();
        assert_eq!(s.lines().count(), 1, "{s}");
        assert!(s.ends_with('\n'));
        (out.status.code().unwrap(), s.trim_end().to_string())
    };
    // An empty tree: the driver is not loaded (an error), and part of the tree was not read.
    let empty = tempfile::tempdir().unwrap();
    let (code, s) = line(empty.path(), &[]);
    assert_eq!(code, 1);
    assert!(
        s.starts_with("rigdoctor host: ERROR: 1 error, 1 warning: "),
        "{s}"
    );
    assert!(s.ends_with(" [driver-not-loaded, not-checked]"), "{s}");
    // The same findings allowed: shown nowhere in the line, counted for nothing.
    let (code, s) = line(
        empty.path(),
        &["--allow", "driver-not-loaded", "--allow", "not-checked"],
    );
    assert_eq!(code, 0);
    assert!(
        s.starts_with("rigdoctor host: OK: no problems found"),
        "{s}"
    );
    assert!(!s.contains('['), "{s}");
    // A healthy tree: OK (notes do not change the status).
    let healthy = sysroot_of(&load_rig("x570-2x3090-r535"));
    let (code, s) = line(healthy.path(), &[]);
    assert_eq!(code, 0, "{s}");
    assert!(s.starts_with("rigdoctor host: OK: "), "{s}");
}
