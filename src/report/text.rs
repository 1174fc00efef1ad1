//! Terminal output: a one-line verdict, the machine at a glance, then findings worst first,
//! each shaped like a rustc diagnostic.

use super::summary::{gpu_rows, machine_rows, no_gpu_reason, GPU_HEADER};
use super::{p2p_matrix, Report};
use crate::finding::{Finding, Severity};
use anstyle::{AnsiColor, Style};
use std::fmt::Write;

struct Paint {
    color: bool,
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
}

pub fn render(report: &Report, color: bool) -> String {
    let p = Paint { color };
    let mut out = String::new();
    let f = &report.facts;
    let _ = writeln!(
        out,
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
    let (mark, sev) = match report.worst() {
        Some(Severity::Error) => ("✗", Severity::Error),
        Some(Severity::Warn) => ("!", Severity::Warn),
        _ => ("✓", Severity::Info),
    };
    let verdict = format!("{mark} {}", report.verdict());
    let _ = writeln!(
        out,
        "{}\n",
        if report.worst() > Some(Severity::Info) {
            p.severity(sev, &verdict)
        } else {
            p.bold(&verdict)
        }
    );

    if !report.plan.is_empty() {
        let _ = writeln!(out, "{}", p.bold("What to do"));
        for (i, s) in report.plan.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {}. {} {}",
                i + 1,
                s.action,
                p.dim(&format!("({})", s.findings.join(", ")))
            );
        }
        out.push('\n');
    }
    for (label, value) in machine_rows(f) {
        let _ = writeln!(out, "  {}{value}", pad(&p.dim(label), 14));
    }
    out.push('\n');
    let rows = gpu_rows(f);
    if let Some(why) = no_gpu_reason(f) {
        let _ = writeln!(out, "  {} {why}\n", p.dim("GPUs"));
    } else {
        write_table(&mut out, &p, &rows);
        if idle_speed_shown(f) {
            let _ = writeln!(
                out,
                "  {}",
                p.dim("A link below its max generation at the same width is idle power saving, not a fault.")
            );
        }
        out.push('\n');
    }

    write_p2p(&mut out, &p, f);
    write_bandwidth(&mut out, &p, f);
    for finding in &report.findings {
        write_finding(&mut out, &p, finding, &report.plan);
    }
    if report.findings.is_empty() {
        let _ = writeln!(out, "No findings.\n");
    }
    out
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

fn write_table(out: &mut String, p: &Paint, rows: &[[String; 7]]) {
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

/// The columns `s` takes on a terminal: colour sequences (ESC [ ... final byte) take none, wide
/// characters (CJK, most emoji) two (Unicode East Asian Width, via unicode-width).
pub fn visible_width(s: &str) -> usize {
    let mut chars = s.chars().peekable();
    let mut plain = String::new();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates up to the final byte (0x40..=0x7E).
            for d in chars.by_ref() {
                if ('\x40'..='\x7e').contains(&d) {
                    break;
                }
            }
            continue;
        }
        plain.push(c);
    }
    unicode_width::UnicodeWidthStr::width(plain.as_str())
}

/// `s` followed by spaces up to `width` visible columns (never truncated).
fn pad(s: &str, width: usize) -> String {
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(
        ' ',
        width.saturating_sub(visible_width(s)),
    ));
    out
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

fn write_p2p(out: &mut String, p: &Paint, f: &crate::facts::Facts) {
    let Some(t) = p2p_matrix::tables(f) else {
        return;
    };
    if let Some(note) = &t.note {
        let _ = writeln!(out, "  {} {note}\n", p.dim("P2P"));
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
    let _ = writeln!(
        out,
        "\n  {}",
        p.bold("P2P, as claimed (CUDA access, NVML read/write)")
    );
    write_grid(out, p, &t.claims[0], &t.claims[1..]);
    for l in &t.legend {
        let _ = writeln!(out, "  {}", p.dim(l));
    }
    out.push('\n');
}

fn write_bandwidth(out: &mut String, p: &Paint, f: &crate::facts::Facts) {
    let tables = [
        super::bandwidth_tables::tables(f),
        super::nccl_table::tables(f),
    ];
    for t in tables.into_iter().flatten() {
        write_tables(out, p, &t);
    }
}

fn write_tables(out: &mut String, p: &Paint, t: &super::bandwidth_tables::BandwidthTables) {
    for n in &t.notes {
        let _ = writeln!(out, "  {}", p.dim(n));
    }
    for s in &t.sections {
        let _ = writeln!(out, "\n  {}", p.bold(&s.title));
        // Weak cells stand out in colour too.
        let rows: Vec<Vec<String>> = s.table[1..]
            .iter()
            .map(|r| r.iter().map(|c| c.to_string()).collect())
            .collect();
        write_grid(out, p, &s.table[0], &rows);
    }
    for l in &t.legend {
        let _ = writeln!(out, "  {}", p.dim(l));
    }
    out.push('\n');
}

fn write_finding(out: &mut String, p: &Paint, f: &Finding, plan: &[super::Step]) {
    let label = format!("{}[{}]", f.severity.label(), f.id);
    let _ = writeln!(
        out,
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
    if !f.gpus.is_empty() {
        let _ = writeln!(out, "  {} {}", p.dim("-->"), f.gpus.join(", "));
    }
    for e in &f.evidence {
        let _ = writeln!(out, "   {} {e}", p.dim("="));
    }
    // Warnings and errors point at the plan, where each action is said once; notes keep theirs.
    let steps = super::steps_of(plan, f);
    if f.severity >= Severity::Warn && !steps.is_empty() {
        let list: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        let _ = writeln!(
            out,
            "   {} What to do, step{} {}",
            p.bold("= help:"),
            if list.len() == 1 { "" } else { "s" },
            list.join(", ")
        );
    } else {
        for fix in &f.fix {
            let _ = writeln!(out, "   {} {fix}", p.bold("= help:"));
        }
    }
    if !f.refs.is_empty() {
        let _ = writeln!(out, "   {} {}", p.dim("= see:"), p.dim(&f.refs.join(" ")));
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_cell_is_cut_not_a_panic() {
        let mut out = String::new();
        let p = Paint { color: false };
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
