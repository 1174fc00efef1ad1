//! Snapshots of every output: text (the screen and --verbose), markdown and JSON for each saved
//! fixture report, and the README's story on the fake driver. A change of output fails here
//! until its new snapshot is reviewed (`cargo insta review`, or INSTA_UPDATE=always then
//! `git diff tests/snapshots/`). README.md's example blocks must equal their snapshots.

mod common;

use common::*;

/// The version is not part of what is reviewed.
fn stable(s: &str) -> String {
    s.replace(env!("CARGO_PKG_VERSION"), "[version]")
}

fn diagnose(file: &std::path::Path, args: &[&str]) -> String {
    let mut all = vec!["--color", "never"];
    all.extend_from_slice(args);
    stable(&diagnose_file(file, &all))
}

#[test]
fn every_fixture_report_in_every_format() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reports");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        for (kind, args) in [
            ("screen", &[][..]),
            ("verbose", &["--verbose"][..]),
            ("markdown", &["--format", "markdown"][..]),
            ("json", &["--json"][..]),
        ] {
            insta::assert_snapshot!(format!("{stem}.{kind}"), diagnose(&file, args));
        }
    }
}

/// The p2p story as README.md shows it: the fake driver, one pair hanging, `--timeout 5`.
fn story(args: &[&str]) -> String {
    let (rig, fake) = x399_one_pair_hangs();
    let dir = sysroot_of(&rig);
    let out = on_fake(dir.path(), &fake)
        .args(["p2p", "--gpu", "--timeout", "5", "--color", "never"])
        .args(args)
        .arg("--sysroot")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    stable(&String::from_utf8(out.stdout).unwrap())
}

/// The block of README.md after `heading`, between its ```text fence and the closing one.
fn readme_block(heading: &str) -> String {
    let readme = include_str!("../README.md");
    let at = readme
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} not in README.md"));
    let rest = &readme[at..];
    let start = rest.find("```text\n").expect("a ```text block") + "```text\n".len();
    let end = rest[start..].find("```").unwrap();
    rest[start..start + end].to_string()
}

#[test]
fn the_story_and_the_readme_agree() {
    let screen = story(&[]);
    insta::assert_snapshot!("story.screen", screen);
    insta::assert_snapshot!("story.verbose", story(&["--verbose"]));
    // README shows the screen as printed (its version included).
    let shown = screen.replace("[version]", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        readme_block("## Example: `rigdoctor p2p`"),
        shown,
        "README.md's p2p example is not what rigdoctor prints: paste tests/snapshots/snapshots__story.screen.snap"
    );
    let dir = sysroot_of(&load_rig("x399-3x3090-r545"));
    let host = rigdoctor()
        .args(["check", "--color", "never", "--sysroot"])
        .arg(dir.path())
        .output()
        .unwrap();
    let host = String::from_utf8(host.stdout).unwrap();
    assert_eq!(
        readme_block("## Example: host checks on a captured tree"),
        host,
        "README.md's host example is not what rigdoctor prints"
    );
}
