//! Markdown for a forum post or an issue: summary table, findings, and the JSON to re-diagnose.

use super::summary::{gpu_rows, machine_rows, no_gpu_reason, GPU_HEADER};
use super::{json, p2p_matrix, Report};
use crate::finding::Severity;
use std::fmt::Write;

/// Table cells cannot hold a bare `|` or a newline.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
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
        let _ = writeln!(out, "{n}\n");
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

pub fn render(report: &Report) -> String {
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
        report.verdict()
    );
    let _ = writeln!(out, "| | |\n|---|---|");
    for (label, value) in machine_rows(f) {
        let _ = writeln!(out, "| {} | {} |", cell(label), cell(&value));
    }
    out.push('\n');
    if let Some(why) = no_gpu_reason(f) {
        let _ = writeln!(out, "GPUs: {why}\n");
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
        let _ = writeln!(
            out,
            "#### {} `{}`: {}\n",
            finding.severity.label(),
            finding.id,
            finding.title
        );
        if !finding.gpus.is_empty() {
            let _ = writeln!(out, "GPUs: {}\n", finding.gpus.join(", "));
        }
        for e in &finding.evidence {
            let _ = writeln!(out, "- {e}");
        }
        if !finding.fix.is_empty() {
            let _ = writeln!(out, "\n**Fix**\n");
            for fix in &finding.fix {
                let _ = writeln!(out, "- {fix}");
            }
        }
        if !finding.refs.is_empty() {
            let _ = writeln!(out, "\nSources: {}", finding.refs.join(", "));
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "<details><summary>Full JSON report (re-check with <code>rigdoctor diagnose report.json</code>)</summary>\n\n```json\n{}```\n</details>",
        json::render(report)
    );
    out
}
