//! The bandwidth tables shared by the text and markdown renderers: GB/s with the share of the
//! link each figure reached, weak cells marked.

use super::p2p_matrix::Table;
use crate::expect::{capable_link, expectation, find, nvlinks_between, slower_than_staged};
use crate::facts::{BandwidthFacts, BwOutcome, Facts, Kind, Measurement, Method, Probed};

pub struct Section {
    pub title: String,
    pub table: Table,
}

pub struct BandwidthTables {
    pub sections: Vec<Section>,
    pub legend: Vec<&'static str>,
    /// Lines said before the tables (interrupted, nothing measured).
    pub notes: Vec<String>,
}

pub const LEGEND: [&str; 4] = [
    "GB/s per direction (GB = 1e9 bytes), median of the samples; % = share of the link as it ran under load (PCIe Gen x width from NVML while the copies ran, or the active NVLinks).",
    "! below 60% (SM: 50%) of what the card and slot support: bandwidth-low · < P2P slower than the staged copy through host memory · CORRUPT data did not verify (no figure) · HANG killed after the step deadline · ERROR a CUDA call failed · - not measured (no peer access)",
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
        BwOutcome::Skipped { .. } => return "-".into(),
    };
    if m.latency {
        return format!("{v:.1}");
    }
    let mut s = format!("{v:.1}");
    if let Some(e) = expectation(f, m) {
        s.push_str(&format!(" {:.0}%", e.percent(v)));
        if e.is_low(v, m.method) {
            s.push_str(" !");
        }
    }
    if slower_than_staged(bw, m).is_some() {
        s.push_str(" <");
    }
    s
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
        notes.push("interrupted: the tables hold what was measured before".to_string());
    }
    if let Probed::Unknown { detail, .. } = &bw.access {
        notes.push(format!("not measured: {detail}"));
        return Some(BandwidthTables {
            sections: Vec::new(),
            legend: Vec::new(),
            notes,
        });
    }
    let c = &bw.config;
    notes.push(format!(
        "{} MiB per copy, {} timed copies per sample after {} warm-up, {} sample(s), every sample verified",
        c.size_bytes as f64 / f64::from(1 << 20),
        c.iters,
        c.warmup,
        c.samples
    ));
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
                        cell(
                            f,
                            bw,
                            find(bw, kind, method, Some(a), Some(b), bidir, latency),
                        )
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
            });
            if c.bidirectional {
                sections.push(Section {
                    title: format!(
                        "GPU -> GPU, P2P, {}, both directions at once",
                        method_name(method)
                    ),
                    table: matrix(Kind::P2p, method, true, false),
                });
            }
        }
        sections.push(Section {
            title: "GPU -> GPU, staged through host memory (peer access off; GB/s)".into(),
            table: matrix(Kind::Staged, Method::Ce, false, false),
        });
        if c.bidirectional {
            sections.push(Section {
                title: "GPU -> GPU, staged, both directions at once".into(),
                table: matrix(Kind::Staged, Method::Ce, true, false),
            });
        }
        if c.latency {
            sections.push(Section {
                title: "Latency GPU -> GPU, P2P (µs per 16-byte copy)".into(),
                table: matrix(Kind::P2p, Method::Ce, false, true),
            });
            sections.push(Section {
                title: "Latency GPU -> GPU, staged (µs per 16-byte copy)".into(),
                table: matrix(Kind::Staged, Method::Ce, false, true),
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
        });
    }
    Some(BandwidthTables {
        sections,
        legend: LEGEND.to_vec(),
        notes,
    })
}
