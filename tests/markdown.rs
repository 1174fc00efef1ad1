//! Markdown posts: under the post limit (the JSON beside the post when it does not fit), parsed
//! by a CommonMark parser: tables are tables, and no HTML but the collapsible JSON block.

mod common;

use common::*;
use pulldown_cmark::{Event, Options, Parser, Tag};

const POST_LIMIT: usize = 30_000;

/// The HTML a post may hold: the collapsible block around the JSON.
fn stray_html(md: &str) -> Vec<String> {
    let allowed = ["details", "summary", "code"];
    let mut stray = Vec::new();
    for ev in Parser::new_ext(md, Options::ENABLE_TABLES) {
        if let Event::Html(h) | Event::InlineHtml(h) = ev {
            for tag in h.split('<').skip(1) {
                let name: String = tag
                    .trim_start_matches('/')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                if !allowed.contains(&name.as_str()) {
                    stray.push(format!("<{tag}"));
                }
            }
        }
    }
    stray
}

fn tables(md: &str) -> usize {
    Parser::new_ext(md, Options::ENABLE_TABLES)
        .filter(|e| matches!(e, Event::Start(Tag::Table(_))))
        .count()
}

fn post_of(file: &std::path::Path, extra: &[&str]) -> String {
    let mut args = vec!["--format", "markdown"];
    args.extend_from_slice(extra);
    diagnose_file(file, &args)
}

#[test]
fn fixture_posts_fit_parse_and_hold_no_stray_html() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reports");
    for e in std::fs::read_dir(dir).unwrap() {
        let file = e.unwrap().path();
        for extra in [&[][..], &["--redact"]] {
            let md = post_of(&file, extra);
            let name = file.display();
            assert!(
                md.chars().count() <= POST_LIMIT,
                "{name}: {} chars",
                md.len()
            );
            assert!(stray_html(&md).is_empty(), "{name}: {:?}", stray_html(&md));
            assert!(tables(&md) >= 2, "{name}: machine and GPU tables");
            assert!(
                md.contains("```json"),
                "{name}: a host report fits with its JSON"
            );
            if !extra.is_empty() {
                assert!(
                    md.contains("[redacted]") && !md.contains("<redacted>"),
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn an_eight_gpu_post_fits_with_its_json_beside_it() {
    let fake = many_gpus(8, "NVIDIA GeForce RTX 4090", "550.127.05", "none");
    let r = run_gpu(
        "p2p",
        &common::sysroot::load_rig("epyc-2x4090-nonroot"),
        &fake,
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("eight.json");
    std::fs::write(&report, r.report.to_string()).unwrap();
    let md = post_of(&report, &[]);
    assert!(
        md.chars().count() <= POST_LIMIT,
        "{} chars",
        md.chars().count()
    );
    assert!(stray_html(&md).is_empty(), "{:?}", stray_html(&md));
    assert!(tables(&md) >= 3, "machine, GPU and P2P tables");
    // Written as a file, the JSON that did not fit goes beside the post, which names it.
    let post = dir.path().join("post.md");
    let out = rigdoctor()
        .args(["diagnose", "-o"])
        .arg(&post)
        .arg(&report)
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    let md = std::fs::read_to_string(&post).unwrap();
    // Eight GPUs' P2P facts alone are longer than a post.
    assert!(r.report.to_string().len() > POST_LIMIT);
    assert!(!md.contains("```json") && md.chars().count() <= POST_LIMIT);
    assert!(md.contains("attached as post.json"), "{md}");
    let beside: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("post.json")).unwrap()).unwrap();
    assert_eq!(beside["facts"], r.report["facts"]);
}
