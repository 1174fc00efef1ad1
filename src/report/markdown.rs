//! Markdown for a forum post or an issue: summary table, findings, and the JSON to re-diagnose.

use super::summary::{gpu_rows, machine_rows, no_gpu_reason, GPU_HEADER};
use super::{json, p2p_matrix, Report};
use crate::finding::Severity;
use std::fmt::Write;

/// Table cells cannot hold a bare `|` or a newline.
fn cell(s: &str) -> String {
    text(s).replace('|', "\\|")
}

/// Text from the machine or a report, neutralised for markdown: no raw HTML (`<details>`,
/// `<img>`), no code spans or fences, no line that starts a heading, quote or list.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.replace('\n', " ").chars().enumerate() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '`' => out.push_str("\\`"),
            '#' | '+' | '-' | '*' | '=' | '_' | '[' | '!' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Our own fix lines keep their code spans; only HTML is neutralised (they may quote paths).
fn fix_text(s: &str) -> String {
    s.replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', " ")
}

/// A code fence longer than any run of backticks in `body`, so the body cannot close it.
fn fence_for(body: &str) -> String {
    let longest = body.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

fn write_grid(out: &mut String, rows: &[Vec<String>]) {
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r.iter().map(|c| cell(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if i == 0 {
            let _ = writeln!(out, "|{}", "---|".repeat(r.len()));
        }
    }
    out.push('\n');
}

fn write_bandwidth(out: &mut String, f: &crate::facts::Facts) {
    let tables = [
        super::bandwidth_tables::tables(f),
        super::nccl_table::tables(f),
    ];
    for t in tables.into_iter().flatten() {
        write_tables(out, &t);
    }
}

fn write_tables(out: &mut String, t: &super::bandwidth_tables::BandwidthTables) {
    for n in &t.notes {
        let _ = writeln!(out, "{}\n", n.text);
    }
    for s in &t.sections {
        let _ = writeln!(out, "**{}**\n", s.title);
        write_grid(out, &s.table);
    }
    for l in &t.legend {
        let _ = writeln!(out, "_{l}_  ");
    }
    out.push('\n');
}

fn write_p2p(out: &mut String, f: &crate::facts::Facts) {
    let Some(t) = p2p_matrix::tables(f) else {
        return;
    };
    if let Some(note) = &t.note {
        let _ = writeln!(out, "P2P: {note}\n");
        return;
    }
    let _ = writeln!(out, "**P2P, tested**\n");
    write_grid(out, &t.verdicts);
    let _ = writeln!(out, "**P2P, as claimed** (CUDA access, NVML read/write)\n");
    write_grid(out, &t.claims);
    for l in &t.legend {
        let _ = writeln!(out, "> {l}");
    }
    out.push('\n');
}

/// What a post may hold: Discourse's default maximum post length (32,000 characters), with
/// room to spare; GitHub issue bodies stop at 65,536.
pub const POST_LIMIT: usize = 30_000;

/// The post with the JSON inside stays under [`POST_LIMIT`].
pub fn json_fits(report: &Report) -> bool {
    let body = body(report);
    body.chars().count() + json_block(report).chars().count() <= POST_LIMIT
}

fn json_block(report: &Report) -> String {
    let body = json::render(report);
    let fence = fence_for(&body);
    format!(
        "<details><summary>Full JSON report (re-check with <code>rigdoctor diagnose report.json</code>)</summary>\n\n{fence}json\n{body}{fence}\n</details>\n"
    )
}

pub fn render(report: &Report, attachment: Option<&str>) -> String {
    let mut out = body(report);
    if json_fits(report) {
        out.push_str(&json_block(report));
    } else if let Some(name) = attachment {
        let _ = writeln!(
            out,
            "The full JSON report is attached as {} (re-check with `rigdoctor diagnose {}`).",
            text(name),
            text(name)
        );
    } else {
        let _ = writeln!(
            out,
            "The full JSON report is too long for a post: write it with `-o report.json` and attach the file (re-check with `rigdoctor diagnose report.json`)."
        );
    }
    out
}

/// Everything but the JSON.
fn body(report: &Report) -> String {
    let f = &report.facts;
    let mut out = String::new();
    let icon = match report.worst() {
        Some(Severity::Error) => "❌",
        Some(Severity::Warn) => "⚠️",
        _ => "✅",
    };
    let _ = writeln!(
        out,
        "## rigdoctor {}: {icon} {}\n",
        report.command,
        text(&report.verdict())
    );
    if !report.plan.is_empty() {
        let _ = writeln!(out, "**What to do**\n");
        for (i, s) in report.plan.iter().enumerate() {
            let _ = writeln!(
                out,
                "{}. {} ({})",
                i + 1,
                fix_text(&s.action),
                text(&s.findings.join(", "))
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "| | |\n|---|---|");
    for (label, value) in machine_rows(f, false) {
        let _ = writeln!(out, "| {} | {} |", cell(label), cell(&value));
    }
    out.push('\n');
    if let Some(why) = no_gpu_reason(f) {
        let _ = writeln!(out, "GPUs: {}\n", text(&why));
    } else {
        let _ = writeln!(out, "| {} |", GPU_HEADER.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(GPU_HEADER.len()));
        for r in gpu_rows(f) {
            let cells: Vec<String> = r.iter().map(|c| cell(c)).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out.push('\n');
    }
    write_p2p(&mut out, f);
    write_bandwidth(&mut out, f);
    if !report.findings.is_empty() {
        let _ = writeln!(out, "### Findings\n");
    }
    for finding in &report.findings {
        write_finding(&mut out, finding, &report.plan);
    }
    out
}

/// One finding as a markdown section; warnings and errors point at `plan`'s steps when it has
/// them, else list their own fixes. Its strings must be escaped for the terminal already.
pub(crate) fn write_finding(
    out: &mut String,
    finding: &crate::finding::Finding,
    plan: &[super::Step],
) {
    let _ = writeln!(
        out,
        "#### {} `{}`{}: {}\n",
        finding.severity.label(),
        text(&finding.id),
        finding
            .allowed
            .as_ref()
            .map(|a| format!(" (allowed by {})", text(a)))
            .unwrap_or_default(),
        text(&finding.title)
    );
    if !finding.gpus.is_empty() {
        let _ = writeln!(out, "GPUs: {}\n", text(&finding.gpus.join(", ")));
    }
    for e in &finding.evidence {
        let _ = writeln!(out, "- {}", text(e));
    }
    let steps = super::steps_of(plan, finding);
    if finding.severity >= Severity::Warn && !steps.is_empty() {
        let list: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        let _ = writeln!(out, "\n**Fix**: What to do, step(s) {}", list.join(", "));
    } else if !finding.fix.is_empty() {
        let _ = writeln!(out, "\n**Fix**\n");
        for fix in &finding.fix {
            let _ = writeln!(out, "- {}", fix_text(fix));
        }
    }
    if !finding.refs.is_empty() {
        let _ = writeln!(out, "\nSources: {}", finding.refs.join(", "));
    }
    out.push('\n');
}

/// Rows (the first is the header) as a markdown table, every cell neutralised.
pub(crate) fn grid(rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    write_grid(&mut out, rows);
    out
}

/// Text from a report or a machine, neutralised for markdown.
pub(crate) fn plain(s: &str) -> String {
    text(s)
}
