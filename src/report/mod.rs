//! The report: facts + findings, and its renderers (text, JSON, markdown).

mod bandwidth_tables;
mod json;
mod markdown;
mod nccl_table;
mod p2p_matrix;
mod redact;
mod summary;
mod text;

pub use json::{load_facts, MAX_REPORT_BYTES};
pub use redact::redact;

use crate::facts::Facts;
use crate::finding::{Finding, Severity};
use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "rigdoctor.report/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub tool: Tool,
    /// What was run ("host", "check", "diagnose").
    pub command: String,
    pub facts: Facts,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn new(command: &str, facts: Facts, findings: Vec<Finding>) -> Self {
        Report {
            schema: SCHEMA.to_string(),
            tool: Tool {
                name: env!("CARGO_PKG_NAME").to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            command: command.to_string(),
            facts,
            findings,
        }
    }

    pub fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }

    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// "2 errors, 1 warning, 3 notes: <title of the worst finding>" or "no problems found".
    pub fn verdict(&self) -> String {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let counts = [
            (self.count(Severity::Error), "error", "errors"),
            (self.count(Severity::Warn), "warning", "warnings"),
            (self.count(Severity::Info), "note", "notes"),
        ];
        let parts: Vec<String> = counts
            .iter()
            .filter(|(n, _, _)| *n > 0)
            .map(|(n, one, many)| plural(*n, one, many))
            .collect();
        let verdict = match self.findings.first() {
            Some(first) if first.severity > Severity::Info => {
                format!("{}: {}", parts.join(", "), first.title)
            }
            Some(_) => format!("no problems found ({})", parts.join(", ")),
            None => "no problems found".to_string(),
        };
        match &self.facts.collected.interrupted {
            // A stopped run never reads as healthy: what was not reached was not checked.
            Some(i) => format!(
                "interrupted by {}: partial results, the rest was not checked; {verdict}",
                i.name
            ),
            None => verdict,
        }
    }

    pub fn render(&self, format: Format, color: bool) -> String {
        match format {
            Format::Text => text::render(self, color),
            Format::Json => json::render(self),
            Format::Markdown => markdown::render(self),
        }
    }
}

/// `s` with control characters shown as `\x1b`-style escapes, so a string from a library or a
/// report cannot move the cursor, retitle the terminal or forge a line.
pub fn escape_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
