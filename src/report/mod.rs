//! The report: facts + findings, and its renderers (text, JSON, markdown).

mod bandwidth_tables;
pub(crate) mod json;
pub(crate) mod markdown;
mod nccl_table;
mod p2p_matrix;
mod plan;
mod redact;
mod summary;
pub(crate) mod text;
mod validate;
mod wrap;

pub use json::{load_facts, load_saved, MAX_REPORT_BYTES};
pub use plan::{fixes_of, steps_of, Step};
pub use redact::{redact, Secrets};
pub use text::SHARE_HINT;
pub use validate::validate;
pub use wrap::{stdout_width, visible_width};

use crate::facts::Facts;
use crate::finding::{Finding, Severity};
use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "rigdoctor.report/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Markdown,
    /// One status line (OK, WARNING, ERROR or INTERRUPTED, the verdict, the ids), for health
    /// checkers (Slurm NHC, Nagios-style monitors) that read a line and the exit code.
    Oneline,
}

/// How the text report is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextStyle {
    pub color: bool,
    /// Every finding's evidence and sources, every table, the full legends.
    pub verbose: bool,
    /// Columns prose wraps at (tables are never wrapped).
    pub width: usize,
}

impl TextStyle {
    /// A text file: complete, plain, 80 columns.
    pub const FILE: TextStyle = TextStyle {
        color: false,
        verbose: true,
        width: 80,
    };
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
    /// What was run to collect the facts ("host", "check", ...); a re-diagnosed report keeps
    /// the original's.
    pub command: String,
    /// "diagnose" when these findings come from re-judging a saved report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rediagnosed_by: Option<String>,
    /// The outcome at a glance, for scripts: filled in once the report is final.
    #[serde(default)]
    pub summary: Summary,
    /// What to do: every warning's and error's fixes, each action once, in evidence order.
    #[serde(default)]
    pub plan: Vec<plan::Step>,
    pub facts: Facts,
    pub findings: Vec<Finding>,
}

/// Counts, the verdict line, the exit status and what did not run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub errors: usize,
    pub warnings: usize,
    pub notes: usize,
    pub verdict: String,
    /// The exit status rigdoctor gave this run (with its --fail-on).
    pub exit_code: u8,
    pub interrupted: bool,
    /// One line per check that did not run (what could not be read, and why).
    pub not_checked: Vec<String>,
}

/// Findings that say a check did not run (a fact could not be read).
const NOT_CHECKED_IDS: &[&str] = &[
    "not-checked",
    "acs-not-checked",
    "timeout-too-short",
    "p2p-not-tested",
];

impl Report {
    pub fn new(command: &str, facts: Facts, findings: Vec<Finding>) -> Self {
        Report {
            schema: SCHEMA.to_string(),
            tool: Tool {
                name: env!("CARGO_PKG_NAME").to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            command: command.to_string(),
            rediagnosed_by: None,
            summary: Summary::default(),
            plan: Vec::new(),
            facts,
            findings,
        }
    }

    /// Fill in the summary once findings (and redaction) are final.
    pub fn summarise(&mut self, exit_code: u8) {
        let not_checked = self
            .findings
            .iter()
            .filter(|f| NOT_CHECKED_IDS.contains(&f.id.as_str()))
            .flat_map(|f| {
                if f.id == "not-checked" {
                    f.evidence.clone()
                } else {
                    vec![format!("{}: {}", f.id, f.title)]
                }
            })
            .collect();
        let counted: Vec<Finding> = self.counted().cloned().collect();
        self.plan = plan::plan(&counted);
        self.summary = Summary {
            errors: self.count(Severity::Error),
            warnings: self.count(Severity::Warn),
            notes: self.count(Severity::Info),
            verdict: self.verdict(),
            exit_code,
            interrupted: self.facts.collected.interrupted.is_some(),
            not_checked,
        };
    }

    /// Findings that count: every one not allowed.
    fn counted(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.allowed.is_none())
    }

    pub fn count(&self, s: Severity) -> usize {
        self.counted().filter(|f| f.severity == s).count()
    }

    pub fn worst(&self) -> Option<Severity> {
        self.counted().map(|f| f.severity).max()
    }

    /// "2 errors, 1 warning, 3 notes: <title of the worst finding>" or "no problems found".
    /// The verdict line: counts, then the worst finding's title.
    pub fn verdict(&self) -> String {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let counts = [
            (self.count(Severity::Error), "error", "errors"),
            (self.count(Severity::Warn), "warning", "warnings"),
            (self.count(Severity::Info), "note", "notes"),
        ];
        let mut parts: Vec<String> = counts
            .iter()
            .filter(|(n, _, _)| *n > 0)
            .map(|(n, one, many)| plural(*n, one, many))
            .collect();
        let allowed = self.findings.len() - self.counted().count();
        if allowed > 0 {
            parts.push(format!("{allowed} allowed"));
        }
        let verdict = match self.counted().next() {
            Some(first) if first.severity > Severity::Info => {
                format!("{}: {}", parts.join(", "), first.title)
            }
            // Notes only, but some of them say a part was not read: never a plain "no problems".
            None if allowed > 0 => format!("no problems found ({})", parts.join(", ")),
            Some(_) => {
                let unread: Vec<&str> = self
                    .findings
                    .iter()
                    .filter(|f| NOT_CHECKED_IDS.contains(&f.id.as_str()))
                    .map(|f| f.id.as_str())
                    .collect();
                if unread.is_empty() {
                    format!("no problems found ({})", parts.join(", "))
                } else {
                    format!(
                        "no problems found in what could be read ({}); some checks did not run: see {}",
                        parts.join(", "),
                        unread.join(", ")
                    )
                }
            }
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

    pub fn render(&self, format: Format, style: &TextStyle) -> String {
        match format {
            // JSON escapes control characters itself; the others get a copy whose every
            // string (from the machine, a library or a saved report) is escaped first.
            Format::Json => json::render(self),
            Format::Text => match self.escaped() {
                Some(r) => text::render(&r, style),
                // Could not make the copy: escape the whole output (colour lost, nothing raw).
                None => escape_lines(&text::render(
                    self,
                    &TextStyle {
                        color: false,
                        ..*style
                    },
                )),
            },
            Format::Markdown => self.render_post(None),
            Format::Oneline => oneline(
                &format!("rigdoctor {}", self.command),
                self.facts.collected.interrupted.is_some(),
                &self.verdict(),
                &self.counted().cloned().collect::<Vec<_>>(),
            ),
        }
    }

    /// Markdown for a post; `attachment` names the file that holds the JSON when it is too long
    /// to go inside the post.
    pub fn render_post(&self, attachment: Option<&str>) -> String {
        match self.escaped() {
            Some(r) => markdown::render(&r, attachment),
            None => escape_lines(&markdown::render(self, attachment)),
        }
    }

    /// Whether the markdown post can carry the JSON report inside it.
    pub fn json_fits_in_post(&self) -> bool {
        markdown::json_fits(self)
    }

    /// This report with control characters in every string shown as escapes.
    fn escaped(&self) -> Option<Report> {
        let mut v = serde_json::to_value(self).ok()?;
        escape_strings(&mut v);
        serde_json::from_value(v).ok()
    }
}

/// The one status line of `--format oneline`: "rigdoctor check: ERROR: <verdict> [ids]", the
/// status from the worst of `counted` (notes are OK), the ids of the warnings and errors;
/// escaped, so it stays one line whatever a title holds.
pub fn oneline(what: &str, interrupted: bool, verdict: &str, counted: &[Finding]) -> String {
    let worst = counted.iter().map(|f| f.severity).max();
    let status = match (interrupted, worst) {
        (true, _) => "INTERRUPTED",
        (false, Some(Severity::Error)) => "ERROR",
        (false, Some(Severity::Warn)) => "WARNING",
        (false, _) => "OK",
    };
    let mut ids: Vec<&str> = Vec::new();
    for f in counted.iter().filter(|f| f.severity >= Severity::Warn) {
        if !ids.contains(&f.id.as_str()) {
            ids.push(&f.id);
        }
    }
    let ids = if ids.is_empty() {
        String::new()
    } else {
        format!(" [{}]", ids.join(", "))
    };
    format!(
        "{}\n",
        escape_line(&format!("{what}: {status}: {verdict}{ids}"))
    )
}

/// `s` with control characters shown as `\x1b`-style escapes, so a string from a library or a
/// report cannot move the cursor, retitle the terminal or forge a line.
pub fn escape_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\x1b' {
            out.push_str("\\x1b");
        } else if c.is_control() || is_bidi_control(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The Unicode bidirectional embedding, override and isolate controls (U+202A-U+202E,
/// U+2066-U+2069): they reorder how a line is displayed ("Trojan Source", CVE-2021-42574).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Every string in `v`, escaped with [`escape_line`] (keys too: they can be sysfs names).
fn escape_strings(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) if s.chars().any(|c| c.is_control() || is_bidi_control(c)) => {
            *s = escape_line(s)
        }
        Value::Array(a) => a.iter_mut().for_each(escape_strings),
        Value::Object(o) => {
            let entries: Vec<(String, Value)> = std::mem::take(o).into_iter().collect();
            for (k, mut val) in entries {
                escape_strings(&mut val);
                o.insert(escape_line(&k), val);
            }
        }
        _ => {}
    }
}

/// Each line of `s` escaped, the newlines kept.
fn escape_lines(s: &str) -> String {
    s.split('\n')
        .map(escape_line)
        .collect::<Vec<_>>()
        .join("\n")
}
