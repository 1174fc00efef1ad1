//! The knowledge base: checks/*.toml, embedded in the binary at build time.
//!
//! The files are data a reviewer can read and cite; the tests load them, so a malformed entry
//! fails `cargo test`, never a user's run.

use crate::finding::Severity;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::cmp::Ordering;

const GPUS_TOML: &str = include_str!("../checks/gpus.toml");
const DRIVERS_TOML: &str = include_str!("../checks/drivers.toml");
const NCCL_TOML: &str = include_str!("../checks/nccl.toml");
const XID_TOML: &str = include_str!("../checks/xid.toml");

#[derive(Debug, Clone)]
pub struct Knowledge {
    pub families: Vec<Family>,
    pub families_source: String,
    pub drivers: Vec<DriverEntry>,
    pub nccl: Vec<NcclEntry>,
    /// NCCL's default P2P level per release, oldest first.
    pub p2p_defaults: Vec<P2pDefault>,
    /// NVIDIA's Xid catalogue, by code.
    pub xids: Vec<XidEntry>,
    pub xids_source: String,
}

/// One Xid code of NVIDIA's catalogue (docs.nvidia.com/deploy/xid-errors), with what a rig
/// builder should check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XidEntry {
    pub code: u32,
    pub name: String,
    pub severity: Severity,
    /// The catalogue's cause columns: "hw", "driver", "app", "bus", "memory", ...
    pub cause: Vec<String>,
    pub meaning: String,
    pub hint: String,
    pub sources: Vec<String>,
}

impl XidEntry {
    /// The catalogue says a program, not the machine, usually causes it.
    pub fn usually_the_program(&self) -> bool {
        self.cause.iter().all(|c| c == "app")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    pub name: String,
    pub ranges: Vec<[u16; 2]>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverEntry {
    pub id: String,
    pub severity: Severity,
    pub title: String,
    pub min: Option<Version>,
    pub below: Option<Version>,
    #[serde(default)]
    pub families: Vec<String>,
    #[serde(default)]
    pub brands: Vec<String>,
    pub gsp: Option<bool>,
    pub min_gpus: usize,
    #[serde(default)]
    pub observed_bad: Vec<Version>,
    pub known_good: Option<String>,
    pub symptom: String,
    pub fix: Vec<String>,
    /// Causes the reports behind the entry rule out ("iommu", "acs"): a P2P failure this entry
    /// explains is not blamed on them first.
    #[serde(default)]
    pub not_fixed_by: Vec<String>,
    pub confidence: String,
    pub sources: Vec<String>,
}

impl DriverEntry {
    pub fn covers(&self, v: &Version) -> bool {
        self.min.as_ref().is_none_or(|m| v >= m) && self.below.as_ref().is_none_or(|b| v < b)
    }

    /// "545 <= version < 546".
    pub fn describe_range(&self) -> String {
        match (&self.min, &self.below) {
            (Some(m), Some(b)) => format!("{m} <= version < {b}"),
            (Some(m), None) => format!("version >= {m}"),
            (None, Some(b)) => format!("version < {b}"),
            (None, None) => "every version".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NcclEntry {
    pub id: String,
    pub severity: Severity,
    pub title: String,
    pub versions: Vec<Version>,
    pub fixed_in: Option<Version>,
    #[serde(default)]
    pub compute_capabilities: Vec<String>,
    pub symptom: String,
    pub fix: Vec<String>,
    pub sources: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GpusFile {
    source: String,
    family: Vec<Family>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DriversFile {
    driver: Vec<DriverEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NcclFile {
    nccl: Vec<NcclEntry>,
    p2p_default: Vec<P2pDefault>,
}

/// NCCL's default P2P level from release `since` on (checks/nccl.toml `[[p2p_default]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P2pDefault {
    pub since: Version,
    pub summary: String,
    pub sources: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct XidFile {
    source: String,
    xid: Vec<XidEntry>,
}

const XID_CAUSES: [&str; 11] = [
    "hw", "driver", "app", "memory", "bus", "thermal", "power", "fb", "nvlink", "firmware", "other",
];

/// A dotted numeric version ("545.29.06"); missing components compare as 0, so "545" == "545.0.0".
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Version {
    parts: Vec<u32>,
    text: String,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let parts: Option<Vec<u32>> = s.trim().split('.').map(|p| p.parse().ok()).collect();
        let parts = parts.filter(|p| !p.is_empty() && p.len() <= 4)?;
        Some(Version {
            parts,
            text: s.trim().to_string(),
        })
    }
}

impl TryFrom<String> for Version {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Version::parse(&s).ok_or_else(|| format!("not a dotted numeric version: {s:?}"))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.parts.len().max(other.parts.len());
        (0..n)
            .map(|i| {
                let a = self.parts.get(i).copied().unwrap_or(0);
                let b = other.parts.get(i).copied().unwrap_or(0);
                a.cmp(&b)
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}
impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Version {}

impl Knowledge {
    /// The knowledge base compiled into this binary.
    pub fn embedded() -> Result<Knowledge> {
        Knowledge::parse(GPUS_TOML, DRIVERS_TOML, NCCL_TOML, XID_TOML)
    }

    pub fn parse(gpus: &str, drivers: &str, nccl: &str, xid: &str) -> Result<Knowledge> {
        let gpus: GpusFile = toml::from_str(gpus).context("checks/gpus.toml")?;
        let drivers: DriversFile = toml::from_str(drivers).context("checks/drivers.toml")?;
        let nccl: NcclFile = toml::from_str(nccl).context("checks/nccl.toml")?;
        let xid: XidFile = toml::from_str(xid).context("checks/xid.toml")?;
        let kb = Knowledge {
            families: gpus.family,
            families_source: gpus.source,
            drivers: drivers.driver,
            nccl: nccl.nccl,
            p2p_defaults: {
                let mut d = nccl.p2p_default;
                d.sort_by(|a, b| a.since.cmp(&b.since));
                d
            },
            xids: xid.xid,
            xids_source: xid.source,
        };
        kb.validate()?;
        Ok(kb)
    }

    /// NCCL's default P2P level in release `v`.
    pub fn p2p_default(&self, v: &Version) -> Option<&P2pDefault> {
        self.p2p_defaults.iter().rev().find(|d| d.since <= *v)
    }

    fn validate(&self) -> Result<()> {
        let mut ids: Vec<&str> = Vec::new();
        for (i, f) in self.families.iter().enumerate() {
            for r in &f.ranges {
                if r[0] > r[1] {
                    bail!(
                        "family {}: range {:#06x}..{:#06x} is reversed",
                        f.name,
                        r[0],
                        r[1]
                    );
                }
                for other in &self.families[i + 1..] {
                    if other.ranges.iter().any(|o| o[0] <= r[1] && r[0] <= o[1]) {
                        bail!("families {} and {} overlap", f.name, other.name);
                    }
                }
            }
        }
        for d in &self.drivers {
            check_entry(&d.id, &d.sources, &d.fix, &mut ids)?;
            for fam in &d.families {
                if !self.families.iter().any(|f| &f.name == fam) {
                    bail!("{}: unknown family {fam:?}", d.id);
                }
            }
            for b in &d.brands {
                if b != "geforce" {
                    bail!("{}: unknown brand {b:?} (known: geforce)", d.id);
                }
            }
            if let (Some(m), Some(b)) = (&d.min, &d.below) {
                if m >= b {
                    bail!("{}: empty range {m}..{b}", d.id);
                }
            }
            if d.min_gpus == 0 {
                bail!("{}: min_gpus must be at least 1", d.id);
            }
        }
        for n in &self.nccl {
            check_entry(&n.id, &n.sources, &n.fix, &mut ids)?;
            if n.versions.is_empty() {
                bail!("{}: no versions", n.id);
            }
        }
        for (i, x) in self.xids.iter().enumerate() {
            let id = format!("xid-{}", x.code);
            if self.xids[..i].iter().any(|o| o.code >= x.code) {
                bail!("checks/xid.toml: {id} is out of order or listed twice");
            }
            if x.sources.is_empty() || x.sources.iter().any(|s| !s.starts_with("https://")) {
                bail!("{id}: every entry needs at least one public https source");
            }
            if x.name.is_empty() || x.meaning.is_empty() || x.hint.is_empty() {
                bail!("{id}: name, meaning and hint must say something");
            }
            if let Some(c) = x.cause.iter().find(|c| !XID_CAUSES.contains(&c.as_str())) {
                bail!(
                    "{id}: unknown cause {c:?} (known: {})",
                    XID_CAUSES.join(", ")
                );
            }
        }
        Ok(())
    }

    /// The catalogue entry of an Xid code.
    pub fn xid(&self, code: u32) -> Option<&XidEntry> {
        self.xids
            .binary_search_by_key(&code, |x| x.code)
            .ok()
            .map(|i| &self.xids[i])
    }

    /// The architecture of an NVIDIA device ID, if it falls in a known block.
    pub fn family_of(&self, device_id: u16) -> Option<&str> {
        self.families
            .iter()
            .find(|f| f.ranges.iter().any(|r| (r[0]..=r[1]).contains(&device_id)))
            .map(|f| f.name.as_str())
    }
}

fn check_entry<'a>(
    id: &'a str,
    sources: &[String],
    fix: &[String],
    ids: &mut Vec<&'a str>,
) -> Result<()> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        bail!("entry id {id:?} is not kebab-case");
    }
    if ids.contains(&id) {
        bail!("entry id {id:?} appears twice");
    }
    ids.push(id);
    if sources.is_empty() || sources.iter().any(|s| !s.starts_with("https://")) {
        bail!("{id}: every entry needs at least one public https source");
    }
    if fix.is_empty() {
        bail!("{id}: no fix");
    }
    Ok(())
}

/// GeForce and TITAN are NVIDIA's consumer brands; peer-to-peer limits apply to them.
pub fn is_geforce(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("geforce") || n.contains("titan")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_knowledge_is_valid() {
        let kb = Knowledge::embedded().unwrap();
        assert!(kb.drivers.len() >= 4);
        assert!(kb.nccl.len() >= 2);
        assert_eq!(kb.family_of(0x2204), Some("ampere"));
        assert_eq!(kb.family_of(0x2684), Some("ada"));
        assert_eq!(kb.family_of(0x2b85), Some("blackwell"));
        assert_eq!(kb.family_of(0x2330), Some("hopper"));
        assert_eq!(kb.family_of(0x1b06), Some("pascal"));
        assert_eq!(kb.family_of(0x0001), None);
        let x79 = kb.xid(79).expect("Xid 79 is in the catalogue");
        assert_eq!(x79.severity, Severity::Error);
        assert!(kb.xid(13).unwrap().usually_the_program());
        assert!(kb.xid(100_000).is_none());
    }

    #[test]
    fn malformed_xid_entries_are_rejected() {
        let first = XID_TOML.find("[[xid]]").unwrap();
        let second = first + 7 + XID_TOML[first + 7..].find("[[xid]]").unwrap();
        let twice = format!("{XID_TOML}\n{}", &XID_TOML[first..second]);
        let unknown_cause = XID_TOML.replacen("cause = [", "cause = [\"gremlins\", ", 1);
        for (i, text) in [twice, unknown_cause].iter().enumerate() {
            assert!(
                Knowledge::parse(GPUS_TOML, DRIVERS_TOML, NCCL_TOML, text).is_err(),
                "case {i} accepted"
            );
        }
    }

    #[test]
    fn versions_compare_numerically() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("545.29.06") > v("545"));
        assert!(v("545.29.06") < v("546"));
        assert!(v("525.105.17") > v("525.60.11"));
        assert_eq!(v("545"), v("545.0.0"));
        assert!(Version::parse("545.x").is_none());
        assert!(Version::parse("").is_none());
    }

    #[test]
    fn malformed_entries_are_rejected() {
        let good_drivers = DRIVERS_TOML;
        let bad = [
            // no source
            good_drivers.replace("\"https://github.com/dmlc/xgboost/issues/11242\",", ""),
            // unknown field (typo)
            good_drivers.replace("min_gpus = 1", "min_gpu = 1"),
            // unknown family
            good_drivers.replace("families = [\"ada\"]", "families = [\"adaa\"]"),
            // bad version
            good_drivers.replace("below = \"546\"", "below = \"5x6\""),
            // empty range
            good_drivers.replace("below = \"546\"", "below = \"540\""),
        ];
        for (i, text) in bad.iter().enumerate() {
            assert_ne!(text, good_drivers, "case {i} did not change the file");
            assert!(
                Knowledge::parse(GPUS_TOML, text, NCCL_TOML, XID_TOML).is_err(),
                "case {i} accepted"
            );
        }
        let dup = format!(
            "{NCCL_TOML}\n{}",
            &NCCL_TOML[NCCL_TOML.find("[[nccl]]").unwrap()..]
        );
        assert!(Knowledge::parse(GPUS_TOML, DRIVERS_TOML, &dup, XID_TOML).is_err());
        let overlap = GPUS_TOML.replace("[[0x2300, 0x23ff]]", "[[0x2200, 0x23ff]]");
        assert!(Knowledge::parse(&overlap, DRIVERS_TOML, NCCL_TOML, XID_TOML).is_err());
    }

    #[test]
    fn brands() {
        assert!(is_geforce("NVIDIA GeForce RTX 3090"));
        assert!(is_geforce("GA102 [GeForce RTX 3090]"));
        assert!(is_geforce("NVIDIA TITAN RTX"));
        assert!(!is_geforce("NVIDIA RTX A6000"));
        assert!(!is_geforce("NVIDIA H100 80GB HBM3"));
    }
}
