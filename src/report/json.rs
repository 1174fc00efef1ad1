//! JSON output, and reading a saved report back for `rigdoctor diagnose`.

use super::{Report, SCHEMA};
use crate::facts::Facts;
use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub fn render(report: &Report) -> String {
    // Serialising plain data structs cannot fail; fall back to an error object rather than panic.
    let mut s = serde_json::to_string_pretty(report)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialise report: {e}\"}}"));
    s.push('\n');
    s
}

/// Reports bigger than this are not rigdoctor reports (a large rig's report is well under 1 MiB).
pub const MAX_REPORT_BYTES: usize = 16 << 20;

#[derive(Deserialize)]
struct Envelope {
    schema: Option<String>,
}

#[derive(Deserialize)]
struct SavedReport {
    facts: Facts,
}

/// The facts of a saved report. Its findings are ignored: this version's rules judge again.
pub fn load_facts(bytes: &[u8]) -> Result<Facts> {
    if bytes.len() > MAX_REPORT_BYTES {
        bail!(
            "{} bytes is too large for a rigdoctor report (limit {} MiB)",
            bytes.len(),
            MAX_REPORT_BYTES >> 20
        );
    }
    let env: Envelope = serde_json::from_slice(bytes).context("not a JSON report")?;
    match env.schema.as_deref() {
        Some(SCHEMA) => {}
        Some(other) if other.starts_with("rigdoctor.report/") => {
            bail!("report schema {other:?} is not readable by this version (it reads {SCHEMA:?})")
        }
        Some(other) => bail!("not a rigdoctor report (schema {other:?})"),
        None => bail!("not a rigdoctor report (no \"schema\" field)"),
    }
    let saved: SavedReport =
        serde_json::from_slice(bytes).context("report facts do not match the schema")?;
    super::validate(&saved.facts)
        .map_err(|e| anyhow::anyhow!("not a report rigdoctor wrote: {e}"))?;
    Ok(saved.facts)
}
