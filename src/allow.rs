//! Accepted findings: `--allow ID` / `--allow ID@BUSID` and an `allow = [...]` list in a config
//! file. An allowed finding is still shown, marked with what allowed it, but never counts for
//! the exit code, the verdict or the plan: a pre-flight can accept a known workaround.

use crate::finding::Finding;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// One accepted finding id, for every GPU or for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub id: String,
    /// A PCI address ("0000:0a:00.0"): only findings about that GPU.
    pub bus: Option<String>,
    /// Where it came from ("--allow", or the config file's path).
    pub source: String,
}

impl Allow {
    /// "p2p-hang" or "p2p-hang@0000:0a:00.0"; the id must be one rigdoctor emits.
    pub fn parse(spec: &str, source: &str) -> Result<Allow, String> {
        let (id, bus) = match spec.split_once('@') {
            Some((id, bus)) => (id, Some(bus.to_ascii_lowercase())),
            None => (spec, None),
        };
        if crate::code::Code::from_id(id).is_none() {
            return Err(format!(
                "{spec:?}: no finding has the id {id:?} (the ids are in docs/findings.md)"
            ));
        }
        if let Some(b) = &bus {
            if !crate::probe::pci::is_bdf(b) {
                return Err(format!(
                    "{spec:?}: {b:?} is not a PCI address like 0000:0a:00.0"
                ));
            }
        }
        Ok(Allow {
            id: id.to_string(),
            bus,
            source: source.to_string(),
        })
    }

    /// Every GPU the finding names is covered (a finding without GPUs only by an unscoped
    /// allow).
    fn covers(&self, f: &Finding, all: &[Allow]) -> bool {
        if f.id != self.id {
            return false;
        }
        match &self.bus {
            None => true,
            Some(_) => {
                !f.gpus.is_empty()
                    && f.gpus.iter().all(|g| {
                        all.iter()
                            .any(|a| a.id == f.id && a.bus.as_deref() == Some(g.as_str()))
                    })
            }
        }
    }

    /// Allows every finding with this id, whatever the GPU.
    pub fn unscoped(all: &[Allow], id: &str) -> bool {
        all.iter().any(|a| a.id == id && a.bus.is_none())
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    allow: Vec<String>,
}

/// The config file: `--config FILE`, else `./rigdoctor.toml`, else
/// `$XDG_CONFIG_HOME/rigdoctor/config.toml` (`~/.config/...` when unset), if one exists.
fn config_path(explicit: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let local = PathBuf::from("rigdoctor.toml");
    if local.is_file() {
        return Some(local);
    }
    let base = env("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    let p = base.join("rigdoctor/config.toml");
    p.is_file().then_some(p)
}

/// The allows of this run: the config file's, then --allow's.
pub fn load(cli: &[String], explicit: Option<&Path>) -> Result<Vec<Allow>> {
    let mut out = Vec::new();
    if let Some(path) = config_path(explicit, |v| std::env::var(v).ok()) {
        let bytes = crate::sysroot::read_regular(&path, 1 << 20)
            .with_context(|| format!("config {}: cannot read", path.display()))?;
        let text = String::from_utf8(bytes)
            .with_context(|| format!("config {}: not UTF-8", path.display()))?;
        let cfg: Config = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))
            .with_context(|| format!("config {}", path.display()))?;
        for spec in cfg.allow {
            let source = path.display().to_string();
            match Allow::parse(&spec, &source) {
                Ok(a) => out.push(a),
                Err(e) => bail!("config {source}: allow {e}"),
            }
        }
    }
    for spec in cli {
        out.push(Allow::parse(spec, "--allow").map_err(|e| anyhow::anyhow!("--allow {e}"))?);
    }
    Ok(out)
}

/// Mark the findings the allows cover.
pub fn apply(findings: &mut [Finding], allows: &[Allow]) {
    for f in findings.iter_mut() {
        if let Some(a) = allows.iter().find(|a| a.covers(f, allows)) {
            f.allowed = Some(match &a.bus {
                Some(b) => format!("{} {}@{b}", a.source, a.id),
                None => format!("{} {}", a.source, a.id),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Severity;

    #[test]
    fn ids_and_buses_are_checked_and_scoped() {
        assert!(Allow::parse("p2p-hang", "--allow").is_ok());
        assert!(Allow::parse("p2p-hangs", "--allow")
            .unwrap_err()
            .contains("no finding"));
        assert!(Allow::parse("p2p-hang@0a:00", "--allow")
            .unwrap_err()
            .contains("PCI address"));
        let one = vec![Allow::parse("p2p-hang@0000:0A:00.0", "--allow").unwrap()];
        let f = |gpus: &[&str]| {
            let mut f = Finding::new(crate::code::Code::P2pHang, Severity::Error, "t");
            f.gpus = gpus.iter().map(|g| g.to_string()).collect();
            f
        };
        let mut fs = vec![
            f(&["0000:0a:00.0"]),
            f(&["0000:0a:00.0", "0000:42:00.0"]),
            f(&[]),
        ];
        apply(&mut fs, &one);
        assert_eq!(
            fs[0].allowed.as_deref(),
            Some("--allow p2p-hang@0000:0a:00.0")
        );
        // A finding about another GPU too, or about none, is not covered by a scoped allow.
        assert!(fs[1].allowed.is_none() && fs[2].allowed.is_none());
        apply(
            &mut fs,
            &[Allow::parse("p2p-hang", "rigdoctor.toml").unwrap()],
        );
        assert!(fs.iter().all(|f| f.allowed.is_some()));
    }
}
