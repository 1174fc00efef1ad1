//! The bandwidth tables shared by the text and markdown renderers: GB/s with the share of the
//! link each figure reached, weak cells marked.

use super::p2p_matrix::Table;
use crate::expect::{capable_link, expectation, find, nvlinks_between, slower_than_staged};
use crate::facts::{BandwidthFacts, BwOutcome, Facts, Kind, Measurement, Method, Probed};

pub struct Section {
    pub title: String,
    pub table: Table,
    /// Shown with --verbose only (the staged control, latency, NCCL's transports): the
    /// default screen keeps the tables a verdict rests on.
    pub detail: bool,
    /// What the default screen shows instead of the whole table.
    pub brief: Option<Brief>,
}

pub enum Brief {
    /// Fewer rows (the header first).
    Rows(Table),
    /// One line after the title, when every row passed.
    Line(String),
}

pub struct BandwidthTables {
    pub sections: Vec<Section>,
    pub legend: Vec<&'static str>,
    /// One line for the default screen: what the marks in the shown tables mean.
    pub short_legend: Option<String>,
    /// Lines said before the tables (interrupted, nothing measured, the run's settings).
    pub notes: Vec<Note>,
}

pub struct Note {
    pub text: String,
    /// Said with --verbose only (settings, what rigdoctor set for the run).
    pub detail: bool,
}

impl Note {
    pub fn main(text: impl Into<String>) -> Note {
        Note {
            text: text.into(),
            detail: false,
        }
    }
    pub fn detail(text: impl Into<String>) -> Note {
        Note {
            text: text.into(),
            detail: true,
        }
    }
}

/// What each mark in a cell means, for the one-line legend.
const MARKS: [(&str, &str); 10] = [
    (
        "??",
        "above what the link can carry: not a result (bandwidth-impossible)",
    ),
    ("!", "below 60% of the link"),
    ("<", "slower than staged through the host"),
    ("CORRUPT", "data did not verify"),
    ("HANG", "killed after the deadline"),
    ("ERROR", "a CUDA call failed"),
    ("SKIP", "not measured: the pair hung in the P2P test"),
    ("-", "no peer access"),
    ("quick", "one direction per pair (--quick)"),
    ("NOT-RUN", "not reached (interrupted)"),
];

/// The marks of `items` that some cell of `sections` (not the headers) holds, as one line
/// after `lead`.
pub fn used_marks(lead: &str, items: &[(&str, &str)], sections: &[&Table]) -> String {
    let used: Vec<String> = items
        .iter()
        .filter(|(mark, _)| {
            sections.iter().any(|t| {
                t.iter()
                    .skip(1)
                    .flat_map(|r| r.iter().skip(1))
                    .any(|c| c.split(' ').any(|w| w == *mark))
            })
        })
        .map(|(mark, what)| format!("{mark} {what}"))
        .collect();
    if used.is_empty() {
        lead.to_string()
    } else {
        format!("{lead} · {}", used.join(" · "))
    }
}

pub const LEGEND: [&str; 4] = [
    "GB/s per direction (GB = 1e9 bytes), median of the samples; % = share of the link as it ran under load (PCIe Gen x width from NVML while the copies ran, or the active NVLinks).",
    "?? above 105% of what the link can carry: not a result (bandwidth-impossible) · ! below 60% (SM: 50%) of what the card and slot support: bandwidth-low · < P2P slower than the staged copy through host memory · CORRUPT data did not verify (no figure) · HANG killed after the step deadline · ERROR a CUDA call failed · SKIP not measured: this pair hung in the P2P test · - not measured (no peer access) · quick not measured (--quick: one direction per pair) · NOT-RUN not reached (interrupted)",
    "P2P and staged matrices: rows send, columns receive (CUDA device numbers). Staged = peer access off, the driver copies through host memory: the control P2P should beat.",
    "docs/bandwidth.md explains every column and the expectation model.",
];

fn cell(f: &Facts, bw: &BandwidthFacts, m: Option<&Measurement>) -> String {
    let Some(m) = m else {
        return "-".into();
    };
    let v = match &m.outcome {
        BwOutcome::Measured { stats, .. } => stats.median,
        BwOutcome::Corrupt { .. } => return "CORRUPT".into(),
        BwOutcome::Failed { .. } => return "ERROR".into(),
        BwOutcome::Hang { .. } => return "HANG".into(),
        BwOutcome::Skipped { .. } => return "SKIP".into(),
    };
    if m.latency {
        return format!("{v:.1}");
    }
    let mut s = format!("{v:.1}");
    if let Some(e) = expectation(f, m) {
        s.push_str(&format!(" {:.0}%", e.percent(v)));
        if e.is_impossible(v) {
            s.push_str(" ??");
        } else if e.is_low(v, m.method) {
            s.push_str(" !");
        }
    }
    if slower_than_staged(bw, m).is_some() {
        s.push_str(" <");
    }
    s
}

/// Why a GPU pair's cell holds no measurement: "-" only when CUDA grants no peer access
/// between them; "quick" for the direction `--quick` leaves out; else "NOT-RUN" (interrupted).
fn missing(bw: &BandwidthFacts, kind: Kind, a: i32, b: i32) -> String {
    let granted = bw
        .access
        .known()
        .is_some_and(|acc| crate::facts::granted_either(acc, a, b));
    if kind == Kind::P2p && !granted {
        "-".into()
    } else if !bw.config.all_pairs && a > b {
        "quick".into()
    } else {
        "NOT-RUN".into()
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Ce => "copy engine",
        Method::Sm => "SM kernel",
    }
}

pub fn tables(f: &Facts) -> Option<BandwidthTables> {
    let bw = f.gpu.as_ref()?.bandwidth.as_ref()?;
    let mut notes = Vec::new();
    if bw.interrupted {
        notes.push(Note::main(
            "interrupted: the tables hold what was measured before",
        ));
    }
    if let Probed::Unknown { detail, .. } = &bw.access {
        notes.push(Note::main(format!("not measured: {detail}")));
        return Some(BandwidthTables {
            sections: Vec::new(),
            legend: Vec::new(),
            short_legend: None,
            notes,
        });
    }
    let c = &bw.config;
    notes.push(Note::detail(format!(
        "{} MiB per copy, {} timed copies per sample after {} warm-up, {} sample(s), every sample verified",
        c.size_bytes as f64 / f64::from(1 << 20),
        c.iters,
        c.warmup,
        c.samples
    )));
    let devs = &bw.devices;
    let mut sections = Vec::new();
    for &method in &c.methods {
        let mut header = vec![
            "GPU".to_string(),
            "link under load".into(),
            "supports".into(),
            "H2D".into(),
            "D2H".into(),
        ];
        if c.bidirectional {
            header.extend(["H2D at once".into(), "D2H at once".into()]);
        }
        header.push("within GPU".into());
        let mut table = vec![header];
        for &d in devs {
            let link = bw.link(d);
            let gw = |g: Option<u32>, w: Option<u32>| match (g, w) {
                (Some(g), Some(w)) => format!("Gen{g} x{w}"),
                _ => "?".into(),
            };
            let mut row = vec![
                format!("GPU{d}"),
                link.map_or("?".into(), |l| gw(l.gen, l.width)),
                capable_link(f, bw, d).map_or("?".into(), |(g, w)| gw(Some(g), Some(w))),
                cell(
                    f,
                    bw,
                    find(bw, Kind::H2d, method, None, Some(d), false, false),
                ),
                cell(
                    f,
                    bw,
                    find(bw, Kind::D2h, method, Some(d), None, false, false),
                ),
            ];
            if c.bidirectional {
                row.push(cell(
                    f,
                    bw,
                    find(bw, Kind::H2d, method, None, Some(d), true, false),
                ));
                row.push(cell(
                    f,
                    bw,
                    find(bw, Kind::D2h, method, Some(d), None, true, false),
                ));
            }
            row.push(cell(
                f,
                bw,
                find(bw, Kind::Local, method, Some(d), Some(d), false, false),
            ));
            table.push(row);
        }
        sections.push(Section {
            title: format!("Host <-> GPU, {} (GB/s, % of link)", method_name(method)),
            table,
            detail: false,
            brief: None,
        });
    }
    if devs.len() >= 2 {
        let matrix = |kind: Kind, method: Method, bidir: bool, latency: bool| -> Table {
            let header: Vec<String> = std::iter::once(String::new())
                .chain(devs.iter().map(|d| format!("GPU{d}")))
                .collect();
            let mut t = vec![header];
            for &a in devs {
                let mut row = vec![format!("GPU{a}")];
                for &b in devs {
                    row.push(if a == b {
                        "X".into()
                    } else {
                        match find(bw, kind, method, Some(a), Some(b), bidir, latency) {
                            Some(m) => cell(f, bw, Some(m)),
                            None => missing(bw, kind, a, b),
                        }
                    });
                }
                t.push(row);
            }
            t
        };
        let links: Vec<String> = devs
            .iter()
            .flat_map(|&a| devs.iter().map(move |&b| (a, b)))
            .filter(|(a, b)| a < b)
            .filter_map(|(a, b)| {
                nvlinks_between(f, a, b).map(|(n, _)| format!("GPU{a}-GPU{b} NV{n}"))
            })
            .collect();
        let over = if links.is_empty() {
            String::new()
        } else {
            format!("; NVLink: {}", links.join(", "))
        };
        for &method in &c.methods {
            sections.push(Section {
                title: format!(
                    "GPU -> GPU, P2P, {} (GB/s, % of link{over})",
                    method_name(method)
                ),
                table: matrix(Kind::P2p, method, false, false),
                detail: false,
                brief: None,
            });
            if c.bidirectional {
                sections.push(Section {
                    title: format!(
                        "GPU -> GPU, P2P, {}, both directions at once",
                        method_name(method)
                    ),
                    table: matrix(Kind::P2p, method, true, false),
                    detail: false,
                    brief: None,
                });
            }
        }
        sections.push(Section {
            title: "GPU -> GPU, staged through host memory (peer access off; GB/s)".into(),
            table: matrix(Kind::Staged, Method::Ce, false, false),
            detail: true,
            brief: None,
        });
        if c.bidirectional {
            sections.push(Section {
                title: "GPU -> GPU, staged, both directions at once".into(),
                table: matrix(Kind::Staged, Method::Ce, true, false),
                detail: true,
                brief: None,
            });
        }
        if c.latency {
            sections.push(Section {
                title: "Latency GPU -> GPU, P2P (µs per 16-byte copy)".into(),
                table: matrix(Kind::P2p, Method::Ce, false, true),
                detail: true,
                brief: None,
            });
            sections.push(Section {
                title: "Latency GPU -> GPU, staged (µs per 16-byte copy)".into(),
                table: matrix(Kind::Staged, Method::Ce, false, true),
                detail: true,
                brief: None,
            });
        }
    }
    if c.latency {
        let mut t = vec![vec!["GPU".to_string(), "H2D".into(), "D2H".into()]];
        for &d in devs {
            t.push(vec![
                format!("GPU{d}"),
                cell(
                    f,
                    bw,
                    find(bw, Kind::H2d, Method::Ce, None, Some(d), false, true),
                ),
                cell(
                    f,
                    bw,
                    find(bw, Kind::D2h, Method::Ce, Some(d), None, false, true),
                ),
            ]);
        }
        sections.push(Section {
            title: "Latency host <-> GPU (µs per 16-byte copy)".into(),
            table: t,
            detail: true,
            brief: None,
        });
    }
    let shown: Vec<&Table> = sections
        .iter()
        .filter(|s| !s.detail)
        .map(|s| &s.table)
        .collect();
    let short_legend = Some(used_marks("GB/s, % of the link under load", &MARKS, &shown));
    Some(BandwidthTables {
        sections,
        legend: LEGEND.to_vec(),
        short_legend,
        notes,
    })
}
