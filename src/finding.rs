//! A finding: what is wrong, the evidence, and how to fix it (the shape of a rustc diagnostic).

use crate::code::Code;
use serde::{Deserialize, Serialize};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warn,
    Error,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warn => "warning",
            Severity::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable kebab-case id ([`Code::id`]), documented in docs/findings.md.
    pub id: String,
    pub severity: Severity,
    pub title: String,
    /// The facts the rule read, as a person would check them.
    pub evidence: Vec<String>,
    /// What to do: commands or settings, with their caveats.
    pub fix: Vec<String>,
    /// Public sources for the diagnosis.
    pub refs: Vec<String>,
    /// PCI addresses of the GPUs concerned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
    /// What accepted it (`--allow p2p-hang`, a config file): shown, never counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<String>,
}

impl Finding {
    pub fn new(code: Code, severity: Severity, title: impl Into<String>) -> Self {
        Finding {
            id: code.id().to_string(),
            severity,
            title: title.into(),
            evidence: Vec::new(),
            fix: Vec::new(),
            refs: Vec::new(),
            allowed: None,
            gpus: Vec::new(),
        }
    }

    /// The code of this finding's id (None only for a saved report from another version).
    pub fn code(&self) -> Option<Code> {
        Code::from_id(&self.id)
    }

    pub fn evidence(mut self, e: impl Into<String>) -> Self {
        self.evidence.push(e.into());
        self
    }

    pub fn evidence_all(mut self, e: impl IntoIterator<Item = String>) -> Self {
        self.evidence.extend(e);
        self
    }

    pub fn fix_all(mut self, f: impl IntoIterator<Item = String>) -> Self {
        self.fix.extend(f);
        self
    }

    pub fn fix(mut self, f: impl Into<String>) -> Self {
        self.fix.push(f.into());
        self
    }

    /// Add sources; one already listed is not listed twice.
    pub fn refs<S: Into<String>>(mut self, r: impl IntoIterator<Item = S>) -> Self {
        for r in r {
            let r = r.into();
            if !self.refs.contains(&r) {
                self.refs.push(r);
            }
        }
        self
    }

    pub fn gpus<S: Into<String>>(mut self, g: impl IntoIterator<Item = S>) -> Self {
        self.gpus.extend(g.into_iter().map(Into::into));
        self
    }
}
