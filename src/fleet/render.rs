//! The compare report: nodes x key facts (values that differ from the fleet's most common one
//! marked `*`), then the findings; text, JSON and markdown. Every string comes from saved
//! reports, so each is escaped for the terminal before it is laid out.

use super::compare::cuda_version;
use super::node::Node;
use crate::finding::{Finding, Severity};
use crate::report::{escape_line, TextStyle};
use serde::Serialize;

pub const SCHEMA: &str = "rigdoctor.compare/1";

#[derive(Debug, Serialize)]
pub struct FleetSummary {
    pub errors: usize,
    pub warnings: usize,
    pub notes: usize,
    pub verdict: String,
    pub exit_code: u8,
}

#[derive(Debug, Serialize)]
pub struct FleetReport {
    pub schema: &'static str,
    pub tool: crate::report::Tool,
    pub summary: FleetSummary,
    pub nodes: Vec<Node>,
    pub findings: Vec<Finding>,
}

impl FleetSummary {
    /// Counts of the findings that count (allowed ones are shown, never counted, as in a
    /// report) and the verdict: `what`, the counts and the worst finding's title, or `what`
    /// and `clean`.
    pub fn of(what: &str, clean: &str, findings: &[Finding], exit_code: u8) -> FleetSummary {
        let counted: Vec<&Finding> = findings.iter().filter(|f| f.allowed.is_none()).collect();
        let count = |s: Severity| counted.iter().filter(|f| f.severity == s).count();
        let (errors, warnings, notes) = (
            count(Severity::Error),
            count(Severity::Warn),
            count(Severity::Info),
        );
        let worst = counted.iter().map(|f| f.severity).max();
        let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
        let counts: Vec<String> = [(errors, "error"), (warnings, "warning"), (notes, "note")]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, w)| plural(n, w))
            .collect();
        let verdict = match counted.iter().find(|f| Some(f.severity) == worst) {
            Some(first) => format!("{what}, {}: {}", counts.join(", "), first.title),
            None => format!("{what}: {clean}"),
        };
        FleetSummary {
            errors,
            warnings,
            notes,
            verdict,
            exit_code,
        }
    }
}

impl FleetReport {
    pub fn new(nodes: Vec<Node>, findings: Vec<Finding>, exit_code: u8) -> Self {
        let summary = FleetSummary::of(
            &format!("{} nodes", nodes.len()),
            "no differences found in what the reports hold",
            &findings,
            exit_code,
        );
        FleetReport {
            schema: SCHEMA,
            tool: crate::report::Tool {
                name: env!("CARGO_PKG_NAME").to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            summary,
            nodes,
            findings,
        }
    }

    pub fn render(&self, format: crate::report::Format, style: &TextStyle) -> String {
        use crate::report::Format;
        match format {
            Format::Json => crate::report::json::render(self),
            Format::Text => self.text(style),
            Format::Markdown => self.markdown(),
            Format::Oneline => crate::report::oneline(
                "rigdoctor compare",
                false,
                &self.summary.verdict,
                &self
                    .findings
                    .iter()
                    .filter(|f| f.allowed.is_none())
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
        }
    }

    fn text(&self, style: &TextStyle) -> String {
        let mut out = format!(
            "{} {} · compare\n\n{}\n\n",
            crate::report::text::bold("rigdoctor", style),
            self.tool.version,
            escape_line(&self.summary.verdict)
        );
        let (header, rows) = table(&self.nodes);
        out.push_str(&crate::report::text::grid(&header, &rows, style));
        out.push_str(
            "\n  * differs from the most common value; ? not read; H2D/D2H/P2P: GB/s, lowest-highest GPU\n\n",
        );
        out.push_str(&crate::report::text::findings(
            &escaped(&self.findings),
            style,
        ));
        out
    }

    fn markdown(&self) -> String {
        use crate::report::markdown::{grid, plain, write_finding};
        let mut out = format!(
            "## rigdoctor compare: {}\n\n",
            plain(&escape_line(&self.summary.verdict))
        );
        let (header, rows) = table(&self.nodes);
        let mut all = vec![header];
        all.extend(rows);
        out.push_str(&grid(&all));
        out.push_str("`*` differs from the most common value; `?` not read.\n\n");
        for f in &escaped(&self.findings) {
            write_finding(&mut out, f, &[]);
        }
        out
    }
}

pub(crate) fn escaped(findings: &[Finding]) -> Vec<Finding> {
    let e = |v: &[String]| v.iter().map(|s| escape_line(s)).collect::<Vec<_>>();
    findings
        .iter()
        .map(|f| Finding {
            title: escape_line(&f.title),
            evidence: e(&f.evidence),
            fix: e(&f.fix),
            refs: e(&f.refs),
            gpus: e(&f.gpus),
            ..f.clone()
        })
        .collect()
}

fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match (lo.is_finite(), (hi - lo).abs() < 0.05) {
        (false, _) => "?".into(),
        (true, true) => format!("{lo:.1}"),
        (true, false) => format!("{lo:.1}-{hi:.1}"),
    }
}

fn distinct<T: PartialEq + Clone>(v: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

fn or_unknown<T>(v: Option<T>, show: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "?".to_string(), show)
}

/// The header and one row per node, each cell escaped; a cell whose value differs from the
/// column's most common value ends in " *".
pub(crate) fn table(nodes: &[Node]) -> (Vec<String>, Vec<Vec<String>>) {
    let header: Vec<String> = [
        "Node",
        "GPUs",
        "Driver",
        "CUDA",
        "NCCL",
        "Kernel",
        "IOMMU",
        "IOMMU/ACS params",
        "Persist",
        "BAR1",
        "Link",
        "H2D",
        "D2H",
        "P2P",
        "busbw",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let models = distinct(n.gpus.iter().map(|g| g.name.clone()));
            let gpus = if n.gpus.is_empty() {
                "?".to_string()
            } else {
                models
                    .iter()
                    .map(|m| {
                        let c = n.gpus.iter().filter(|g| &g.name == m).count();
                        format!(
                            "{c}x {}",
                            m.trim_start_matches("NVIDIA ")
                                .trim_start_matches("GeForce ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" + ")
            };
            let persist: Option<Vec<bool>> = n.gpus.iter().map(|g| g.persistence).collect();
            let bar1: Option<Vec<u64>> = n.gpus.iter().map(|g| g.bar1_bytes).collect();
            let links = distinct(n.gpus.iter().map(|g| {
                format!(
                    "{}x{}",
                    g.link_gen.map_or(String::new(), |v| format!("Gen{v} ")),
                    g.link_width.map_or("?".into(), |w| w.to_string())
                )
            }));
            let figs = |pick: fn(&super::node::NodeGpu) -> Option<f64>| {
                range(&n.gpus.iter().filter_map(pick).collect::<Vec<_>>())
            };
            vec![
                n.label.clone(),
                gpus,
                or_unknown(n.driver.clone(), |v| v),
                or_unknown(n.cuda, cuda_version),
                or_unknown(n.nccl.clone(), |v| v),
                or_unknown(n.kernel.clone(), |v| v),
                or_unknown(n.iommu.clone(), |v| v),
                or_unknown(n.iommu_params.clone(), |p| {
                    if p.is_empty() {
                        "none".into()
                    } else {
                        p.join(" ")
                    }
                }),
                or_unknown(persist.filter(|p| !p.is_empty()), |p| {
                    match (p.iter().all(|x| *x), p.iter().any(|x| *x)) {
                        (true, _) => "on".into(),
                        (false, true) => "some".into(),
                        _ => "off".into(),
                    }
                }),
                or_unknown(bar1.filter(|b| !b.is_empty()), |b| {
                    distinct(b.iter().map(|v| format!("{} MiB", v >> 20))).join(", ")
                }),
                if links.is_empty() {
                    "?".into()
                } else {
                    links.join(", ")
                },
                figs(|g| g.h2d.map(|f| f.median)),
                figs(|g| g.d2h.map(|f| f.median)),
                range(&n.p2p.iter().map(|p| p.gbps.median).collect::<Vec<_>>()),
                or_unknown(n.busbw, |b| format!("{:.1}", b.gbps)),
            ]
            .into_iter()
            .map(|c| escape_line(&c))
            .collect()
        })
        .collect();
    // Mark what differs from the column's most common value (never the node's name); when no
    // value is the most common alone, every known value of a column that differs is marked.
    for col in 1..header.len() {
        let known: Vec<String> = rows
            .iter()
            .map(|r| r[col].clone())
            .filter(|v| v != "?")
            .collect();
        let count = |v: &String| known.iter().filter(|w| *w == v).count();
        let top = known.iter().map(count).max().unwrap_or(0);
        let tops = distinct(known.iter().filter(|v| count(v) == top).cloned());
        if distinct(known.iter().cloned()).len() < 2 {
            continue;
        }
        for r in rows.iter_mut() {
            if r[col] != "?" && (tops.len() > 1 || r[col] != tops[0]) {
                r[col].push_str(" *");
            }
        }
    }
    (header, rows)
}
