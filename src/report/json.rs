//! JSON output, and reading a saved report back for `rigdoctor diagnose`.

use super::SCHEMA;
use crate::facts::Facts;
use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub fn render<T: serde::Serialize>(report: &T) -> String {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, TerminalSafe::default());
    // Serialising plain data structs cannot fail; fall back to an error object rather than panic.
    let mut s = match serde::Serialize::serialize(report, &mut ser) {
        Ok(()) => String::from_utf8(buf).unwrap_or_default(),
        Err(e) => format!("{{\"error\":\"cannot serialise report: {e}\"}}"),
    };
    s.push('\n');
    s
}

/// serde_json's pretty layout, but DEL, the C1 controls (U+0080-U+009F: U+009B is CSI to some
/// terminals) and the bidi overrides are written as `\uXXXX` escapes too (serde_json escapes
/// only C0): a report printed to a terminal or pasted anywhere cannot drive or reorder it,
/// and it reads back as the same string.
#[derive(Default)]
struct TerminalSafe(serde_json::ser::PrettyFormatter<'static>);

fn needs_escape(c: char) -> bool {
    c.is_control() || super::is_bidi_control(c)
}

impl serde_json::ser::Formatter for TerminalSafe {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut rest = fragment;
        while let Some(pos) = rest.find(needs_escape) {
            w.write_all(&rest.as_bytes()[..pos])?;
            let c = rest[pos..].chars().next().unwrap_or(' ');
            write!(w, "\\u{:04x}", c as u32)?;
            rest = &rest[pos + c.len_utf8()..];
        }
        w.write_all(rest.as_bytes())
    }
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn end_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object_key(w)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object_value(w)
    }
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
    #[serde(default)]
    command: Option<String>,
}

/// The facts of a saved report. Its findings are ignored: this version's rules judge again.
pub fn load_facts(bytes: &[u8]) -> Result<Facts> {
    load_saved(bytes).map(|(facts, _)| facts)
}

/// The facts of a saved report and the command that collected them.
pub fn load_saved(bytes: &[u8]) -> Result<(Facts, String)> {
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
    // The command names what was measured; one from elsewhere is shown, escaped, like any text.
    let command = saved
        .command
        .filter(|c| !c.is_empty() && c.len() <= 64)
        .unwrap_or_else(|| "unknown".into());
    Ok((saved.facts, command))
}
