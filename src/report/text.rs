//! Terminal output: the verdict, the plan, then a screen: one line per finding, the machine at
//! a glance and the matrices that matter. `--verbose` adds each finding's evidence and sources
//! (shaped like a rustc diagnostic), every table and the full legends. Prose wraps at the
//! terminal's width; tables do not.

use super::bandwidth_tables::Brief;
use super::summary::{gpu_rows, machine_rows, no_gpu_reason, GPU_HEADER};
use super::wrap::{pad, visible_width, wrap, wrap_then};
use super::{p2p_matrix, Report, TextStyle};
use crate::finding::{Finding, Severity};
use anstyle::{AnsiColor, Style};
use std::fmt::Write;

struct Paint {
    color: bool,
    width: usize,
}

impl Paint {
    fn paint(&self, style: Style, text: &str) -> String {
        if self.color {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_string()
        }
    }
    fn severity(&self, s: Severity, text: &str) -> String {
        let c = match s {
            Severity::Error => AnsiColor::Red,
            Severity::Warn => AnsiColor::Yellow,
            Severity::Info => AnsiColor::Cyan,
        };
        self.paint(Style::new().bold().fg_color(Some(c.into())), text)
    }
    fn bold(&self, text: &str) -> String {
        self.paint(Style::new().bold(), text)
    }
    fn dim(&self, text: &str) -> String {
        self.paint(Style::new().dimmed(), text)
    }
    /// `text` wrapped to the width, the first line after `first`, the rest after `indent`.
    fn para(&self, out: &mut String, first: &str, indent: &str, text: &str) {
        for l in wrap(first, indent, text, self.width) {
            out.push_str(l.trim_end());
            out.push('\n');
        }
    }
}

pub fn render(report: &Report, style: &TextStyle) -> String {
    let p = Paint {
        color: style.color,
        width: style.width,
    };
    let mut out = String::new();
    let f = &report.facts;
    let header = format!(
        "{} {} · {}{}",
        p.bold("rigdoctor"),
        report.tool.version,
        report.command,
        if report.rediagnosed_by.is_some() {
            " (saved report, judged again)"
        } else {
            ""
        }
    );
    p.para(&mut out, "", "  ", &header);
    let (mark, sev) = match report.worst() {
        Some(Severity::Error) => ("✗", Severity::Error),
        Some(Severity::Warn) => ("!", Severity::Warn),
        _ => ("✓", Severity::Info),
    };
    let verdict = format!("{mark} {}", report.verdict());
    for l in wrap("", "  ", &verdict, p.width) {
        let _ = writeln!(
            out,
            "{}",
            if report.worst() > Some(Severity::Info) {
                p.severity(sev, &l)
            } else {
                p.bold(&l)
            }
        );
    }
    out.push('\n');

    if !report.plan.is_empty() {
        let _ = writeln!(out, "{}", p.bold("What to do"));
        for (i, s) in report.plan.iter().enumerate() {
            let n = format!("  {}. ", i + 1);
            let indent = " ".repeat(n.len());
            let ids = p.dim(&format!("({})", s.findings.join(", ")));
            for l in wrap_then(&n, &indent, &s.action, &ids, p.width) {
                let _ = writeln!(out, "{}", l.trim_end());
            }
        }
        out.push('\n');
    }
    if !style.verbose && !report.findings.is_empty() {
        write_finding_lines(&mut out, &p, report);
    }
    for (label, value) in machine_rows(f, !style.verbose) {
        let first = format!("  {}", pad(&p.dim(label), 14));
        p.para(&mut out, &first, &" ".repeat(16), &value);
    }
    out.push('\n');
    let rows = gpu_rows(f);
    if let Some(why) = no_gpu_reason(f) {
        p.para(&mut out, &format!("  {} ", p.dim("GPUs")), "  ", &why);
        out.push('\n');
    } else {
        write_table(&mut out, &p, &rows);
        if idle_speed_shown(f) {
            p.para(
                &mut out,
                "  ",
                "  ",
                &p.dim("A generation below max at full width is idle power saving, not a fault."),
            );
        }
        out.push('\n');
    }

    write_p2p(&mut out, &p, f, style.verbose);
    write_bandwidth(&mut out, &p, f, style.verbose);
    if style.verbose {
        for finding in &report.findings {
            write_finding(&mut out, &p, finding, &report.plan);
        }
    }
    if report.findings.is_empty() {
        let _ = writeln!(out, "No findings.\n");
    } else if !style.verbose {
        p.para(
            &mut out,
            "",
            "",
            &p.dim("Evidence, sources and every table: add --verbose (-v)."),
        );
    }
    out
}

/// One line per finding, worst first: severity, id, title (wrapped under the title), and the
/// plan steps that answer it.
fn write_finding_lines(out: &mut String, p: &Paint, report: &Report) {
    let _ = writeln!(out, "{}", p.bold("Findings"));
    let id_width = report
        .findings
        .iter()
        .map(|f| visible_width(&f.id))
        .max()
        .unwrap_or(0);
    let indent = " ".repeat(2 + 7 + 1 + id_width + 2);
    for f in &report.findings {
        let label = pad(f.severity.label(), 7);
        let label = match &f.allowed {
            Some(_) => p.dim(&label),
            None => p.severity(f.severity, &label),
        };
        let first = format!("  {label} {}  ", pad(&f.id, id_width));
        let mut text = f.title.clone();
        if let Some(a) = &f.allowed {
            text.push_str(&format!(" (allowed by {a})"));
        }
        let steps = super::steps_of(&report.plan, f);
        if !steps.is_empty() {
            let list: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
            text.push(' ');
            text.push_str(&p.dim(&format!(
                "→ step{} {}",
                if list.len() == 1 { "" } else { "s" },
                list.join(", ")
            )));
        }
        // Too narrow a window for the columns: the title goes on under the label.
        let indent = if indent.len() + 20 > p.width {
            "    "
        } else {
            indent.as_str()
        };
        p.para(out, &first, indent, &text);
    }
    out.push('\n');
}

/// How to share a report: said on a terminal's stderr only, never in a report or a pipe.
pub const SHARE_HINT: &str = "Share it: add -o report.json (re-check later with `rigdoctor diagnose report.json`) or -o post.md for a forum post; --redact hides host name, UUIDs, addresses and home paths.";

/// Whether some GPU link shows a lower generation than its maximum (normal at idle).
fn idle_speed_shown(f: &crate::facts::Facts) -> bool {
    f.pci.known().is_some_and(|t| {
        t.gpus.iter().any(|g| {
            matches!(
                (g.link.current_speed_gts.known(), g.link.max_speed_gts.known()),
                (Some(c), Some(m)) if c < m
            )
        })
    })
}

fn write_table(out: &mut String, p: &Paint, rows: &[[String; 8]]) {
    let header: Vec<String> = GPU_HEADER.iter().map(|s| s.to_string()).collect();
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.to_vec()).collect();
    write_grid(out, p, &header, &rows);
}

/// The longest cell shown; longer ones (a hostile report) are cut with an ellipsis.
const MAX_CELL: usize = 120;

fn clip(c: &str) -> String {
    if c.chars().count() <= MAX_CELL {
        return c.to_string();
    }
    let mut s: String = c.chars().take(MAX_CELL - 1).collect();
    s.push('…');
    s
}

/// Columns padded to their widest cell; the header dimmed. Padding is written by hand: the
/// formatter's `{:<w$}` panics on widths above 65535.
fn write_grid(out: &mut String, p: &Paint, header: &[String], rows: &[Vec<String>]) {
    let header: Vec<String> = header.iter().map(|c| clip(c)).collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clip(c)).collect())
        .collect();
    let (header, rows) = (&header[..], &rows[..]);
    let mut widths: Vec<usize> = header.iter().map(|h| visible_width(h)).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(visible_width(cell));
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, &w)| pad(c, w)).collect();
        format!("  {}", padded.join("  ").trim_end())
    };
    let _ = writeln!(out, "{}", p.dim(&line(header)));
    for r in rows {
        let _ = writeln!(out, "{}", line(r));
    }
}

fn write_p2p(out: &mut String, p: &Paint, f: &crate::facts::Facts, verbose: bool) {
    let Some(t) = p2p_matrix::tables(f) else {
        return;
    };
    if let Some(note) = &t.note {
        p.para(out, &format!("  {} ", p.dim("P2P")), "  ", note);
        out.push('\n');
        return;
    }
    let bytes = f
        .gpu
        .as_ref()
        .and_then(|g| g.p2p.as_ref())
        .map_or(0, |x| x.bytes);
    let _ = writeln!(
        out,
        "  {}",
        p.bold(&format!(
            "P2P, tested ({} MiB per transfer, every byte compared)",
            bytes >> 20
        ))
    );
    write_grid(out, p, &t.verdicts[0], &t.verdicts[1..]);
    if verbose {
        let _ = writeln!(
            out,
            "\n  {}",
            p.bold("P2P, as claimed (CUDA access, NVML read/write)")
        );
        write_grid(out, p, &t.claims[0], &t.claims[1..]);
        for l in &t.legend {
            p.para(out, "  ", "  ", &p.dim(l));
        }
    } else {
        p.para(out, "  ", "  ", &p.dim(&p2p_matrix::short_legend(&t)));
    }
    out.push('\n');
}

fn write_bandwidth(out: &mut String, p: &Paint, f: &crate::facts::Facts, verbose: bool) {
    let tables = [
        super::bandwidth_tables::tables(f),
        super::nccl_table::tables(f),
    ];
    for t in tables.into_iter().flatten() {
        write_tables(out, p, &t, verbose);
    }
}

/// Bandwidth or NCCL tables; without `verbose`, the sections marked `detail` (the staged
/// control, latency, NCCL's transports) and the legends stay for --verbose.
fn write_tables(
    out: &mut String,
    p: &Paint,
    t: &super::bandwidth_tables::BandwidthTables,
    verbose: bool,
) {
    for n in t.notes.iter().filter(|n| verbose || !n.detail) {
        p.para(out, "  ", "  ", &p.dim(&n.text));
    }
    let mut shown = false;
    for s in t.sections.iter().filter(|s| verbose || !s.detail) {
        let table = match (&s.brief, verbose) {
            (Some(Brief::Line(l)), false) => {
                p.para(out, "  ", "    ", &format!("{}: {l}", p.bold(&s.title)));
                shown = true;
                continue;
            }
            (Some(Brief::Rows(b)), false) => b,
            _ => &s.table,
        };
        let title = if table.len() < s.table.len() {
            format!(
                "{} · {} of {} rows",
                s.title,
                table.len() - 1,
                s.table.len() - 1
            )
        } else {
            s.title.clone()
        };
        p.para(out, "  ", "    ", &p.bold(&title));
        let rows: Vec<Vec<String>> = table[1..]
            .iter()
            .map(|r| r.iter().map(|c| c.to_string()).collect())
            .collect();
        write_grid(out, p, &table[0], &rows);
        shown = true;
        if verbose {
            out.push('\n');
        }
    }
    if verbose {
        for l in &t.legend {
            p.para(out, "  ", "  ", &p.dim(l));
        }
    } else if let (true, Some(l)) = (shown, &t.short_legend) {
        p.para(out, "  ", "  ", &p.dim(l));
    }
    out.push('\n');
}

fn write_finding(out: &mut String, p: &Paint, f: &Finding, plan: &[super::Step]) {
    let label = format!("{}[{}]", f.severity.label(), f.id);
    let head = format!(
        "{}{}{} {}",
        match &f.allowed {
            Some(_) => p.dim(&label),
            None => p.severity(f.severity, &label),
        },
        f.allowed
            .as_ref()
            .map(|a| format!(" (allowed by {a})"))
            .unwrap_or_default(),
        p.bold(":"),
        p.bold(&f.title)
    );
    p.para(out, "", "  ", &head);
    if !f.gpus.is_empty() {
        p.para(
            out,
            &format!("  {} ", p.dim("-->")),
            "      ",
            &f.gpus.join(", "),
        );
    }
    let eq = format!("   {} ", p.dim("="));
    for e in &f.evidence {
        p.para(out, &eq, "     ", e);
    }
    // Warnings and errors point at the plan, where each action is said once; notes keep theirs.
    let help = format!("   {} ", p.bold("= help:"));
    let steps = super::steps_of(plan, f);
    if f.severity >= Severity::Warn && !steps.is_empty() {
        let list: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        let text = format!(
            "What to do, step{} {}",
            if list.len() == 1 { "" } else { "s" },
            list.join(", ")
        );
        p.para(out, &help, "     ", &text);
    } else {
        for fix in &f.fix {
            p.para(out, &help, "     ", fix);
        }
    }
    if !f.refs.is_empty() {
        // One source a line: URLs are long and never broken.
        let see = format!("   {} ", p.dim("= see:"));
        for (i, r) in f.refs.iter().enumerate() {
            let first = if i == 0 { see.clone() } else { " ".repeat(10) };
            let _ = writeln!(out, "{first}{}", p.dim(r));
        }
    }
    out.push('\n');
}

/// Findings as the text report shows them with --verbose (each with its own fixes: there is no
/// plan); their strings must be escaped for the terminal already.
pub(crate) fn findings(findings: &[Finding], style: &TextStyle) -> String {
    let p = Paint {
        color: style.color,
        width: style.width,
    };
    let mut out = String::new();
    for f in findings {
        write_finding(&mut out, &p, f, &[]);
    }
    out
}

/// A table as the text report lays them out (cells clipped, never wrapped); cells must be
/// escaped for the terminal already.
pub(crate) fn grid(header: &[String], rows: &[Vec<String>], style: &TextStyle) -> String {
    let p = Paint {
        color: style.color,
        width: style.width,
    };
    let mut out = String::new();
    write_grid(&mut out, &p, header, rows);
    out
}

/// `text` in bold (when colour is on).
pub(crate) fn bold(text: &str, style: &TextStyle) -> String {
    Paint {
        color: style.color,
        width: style.width,
    }
    .bold(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_cell_is_cut_not_a_panic() {
        let mut out = String::new();
        let p = Paint {
            color: false,
            width: 80,
        };
        let big = "x".repeat(70_000);
        write_grid(
            &mut out,
            &p,
            &["A".into(), "B".into()],
            &[vec![big, "y".into()]],
        );
        assert!(
            out.lines().all(|l| l.chars().count() < 200),
            "{}",
            out.len()
        );
        assert!(out.contains('…'));
    }
}
