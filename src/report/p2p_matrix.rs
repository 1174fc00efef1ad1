//! The P2P matrices shared by the text and markdown renderers: like `nvidia-smi topo -m`, with
//! the verdict of the real transfer in each cell, and what CUDA and NVML claimed.

use crate::facts::{Facts, PairOutcome, PairTest, Probed, Verdict};

/// A square table: the header row first, then one row per source GPU.
pub type Table = Vec<Vec<String>>;

pub struct P2pTables {
    pub verdicts: Table,
    pub claims: Table,
    pub legend: Vec<&'static str>,
    /// Why there is no matrix to show (fewer than two GPUs, CUDA unusable).
    pub note: Option<String>,
}

pub const LEGEND: [&str; 4] = [
    "Rows send, columns receive (CUDA device numbers). Cell: how the GPUs connect, then what the real transfer did; the diagonal shows a failed self-test (copies within the GPU).",
    "ok every byte arrived (copy engine, SM read, SM write) · CORRUPT/ZEROS wrong data over P2P · HANG killed after --timeout · SKIP not tried: the other direction hung · NO-ENABLE peer access refused · ERROR a CUDA call failed · NOT-RUN not reached (interrupted) · - no P2P granted (copies go through host memory)",
    "X self · NV# # active NVLinks · PIX one PCIe switch · PXB several switches · PHB via a CPU host bridge · NODE across host bridges of one NUMA node · SYS across NUMA nodes",
    "Claims: cuDeviceCanAccessPeer (yes/no) · NVML P2P read/write status: OK, CNS chipset not supported, GNS GPU not supported, TNS topology not supported, DR disabled by registry key, NS not supported",
];

/// What each word of a tested cell means, for the one-line legend.
const WORDS: [(&str, &str); 14] = [
    ("ok", "every byte arrived"),
    ("CORRUPT", "wrong data"),
    ("ZEROS", "zeros arrived"),
    ("HANG", "killed after --timeout"),
    ("SKIP", "not tried: the other direction hung"),
    ("NO-ENABLE", "peer access refused"),
    ("ERROR", "a CUDA call failed"),
    ("NOT-RUN", "not reached (interrupted)"),
    ("-", "no P2P granted"),
    ("PIX", "one PCIe switch"),
    ("PXB", "several switches"),
    ("PHB", "via a CPU host bridge"),
    ("NODE", "across host bridges of one NUMA node"),
    ("SYS", "across NUMA nodes"),
];

/// The default screen's legend: rows and columns, and the words the tested matrix holds.
pub fn short_legend(t: &P2pTables) -> String {
    let mut line =
        super::bandwidth_tables::used_marks("Rows send, columns receive", &WORDS, &[&t.verdicts]);
    if t.verdicts
        .iter()
        .skip(1)
        .flatten()
        .any(|c| c.starts_with("NV"))
    {
        line.push_str(" · NV# # active NVLinks");
    }
    line
}

fn verdict_word(t: &PairTest) -> &'static str {
    let mut worst = "ok";
    let mut rank = 0;
    let mut raise = |w: &'static str, r: u8| {
        if r > rank {
            worst = w;
            rank = r;
        }
    };
    match &t.outcome {
        PairOutcome::Hang { .. } => raise("HANG", 5),
        PairOutcome::Failed { .. } => raise("ERROR", 2),
        PairOutcome::Skipped { .. } => raise("SKIP", 1),
        PairOutcome::Tested { enable, .. } => {
            if enable.iter().any(|e| e.error.is_some()) {
                raise("NO-ENABLE", 3);
            }
        }
    }
    for p in t.outcome.paths() {
        match &p.verdict {
            Verdict::Mismatch(m) if m.damage == crate::facts::Damage::Zeros => raise("ZEROS", 4),
            Verdict::Mismatch(_) => raise("CORRUPT", 4),
            Verdict::Error { .. } => raise("ERROR", 2),
            Verdict::Ok | Verdict::Skipped { .. } => {}
        }
    }
    worst
}

pub fn tables(f: &Facts) -> Option<P2pTables> {
    let rt = f.gpu.as_ref()?;
    let p2p = rt.p2p.as_ref()?;
    let empty = |note: String| P2pTables {
        verdicts: Vec::new(),
        claims: Vec::new(),
        legend: Vec::new(),
        note: Some(note),
    };
    let access = match &p2p.access {
        Probed::Known(a) => a,
        Probed::Unknown { detail, .. } => return Some(empty(format!("not tested: {detail}"))),
    };
    if p2p.devices.len() < 2 {
        return Some(empty(format!(
            "{} CUDA device(s) selected, nothing to pair",
            p2p.devices.len()
        )));
    }
    let cuda = rt.cuda.known();
    let nvml = rt.nvml.known();
    let bus = |o: i32| {
        cuda.and_then(|c| c.devices.iter().find(|d| d.ordinal == o))
            .map(|d| d.bus_id.as_str())
    };
    let nvml_dev = |o: i32| {
        let b = bus(o)?;
        nvml?
            .devices
            .iter()
            .find(|d| d.bus_id.known().map(String::as_str) == Some(b))
    };
    let topology = |a: i32, b: i32| -> String {
        let (Some(da), Some(db)) = (nvml_dev(a), nvml_dev(b)) else {
            return "?".into();
        };
        let links = da
            .nvlinks
            .known()
            .map(|ls| {
                ls.iter()
                    .filter(|l| {
                        l.active
                            && l.remote_bus_id.as_deref() == db.bus_id.known().map(String::as_str)
                    })
                    .count()
            })
            .unwrap_or(0);
        if links > 0 {
            return format!("NV{links}");
        }
        nvml.and_then(|n| n.pairs.iter().find(|p| p.a == da.index && p.b == db.index))
            .and_then(|p| p.topology.known().cloned())
            .unwrap_or_else(|| "?".into())
    };
    let nvml_status = |a: i32, b: i32| -> String {
        let (Some(da), Some(db)) = (nvml_dev(a), nvml_dev(b)) else {
            return "?".into();
        };
        nvml.and_then(|n| n.pairs.iter().find(|p| p.a == da.index && p.b == db.index))
            .map(|p| {
                let s = |x: &Probed<String>| x.known().cloned().unwrap_or_else(|| "?".into());
                let (r, w) = (s(&p.read), s(&p.write));
                if r == w {
                    r
                } else {
                    format!("{r}/{w}")
                }
            })
            .unwrap_or_else(|| "?".into())
    };
    let header: Vec<String> = std::iter::once(String::new())
        .chain(p2p.devices.iter().map(|d| format!("GPU{d}")))
        .collect();
    let mut verdicts = vec![header.clone()];
    let mut claims = vec![header];
    for &a in &p2p.devices {
        let mut vrow = vec![format!("GPU{a}")];
        let mut crow = vec![format!("GPU{a}")];
        for &b in &p2p.devices {
            if a == b {
                // The diagonal: the GPU's self-test (copies within it, kernel included).
                let own = p2p.local.iter().find(|t| t.from == a).map(verdict_word);
                vrow.push(match own {
                    Some("ok") | None => "X".into(),
                    Some(w) => format!("X {w}"),
                });
                crow.push("X".into());
                continue;
            }
            let can = access
                .iter()
                .find(|p| p.from == a && p.to == b)
                .map(|p| match p.can_access {
                    Probed::Known(true) => "yes",
                    Probed::Known(false) => "no",
                    Probed::Unknown { .. } => "?",
                })
                .unwrap_or("?");
            let test = p2p.tests.iter().find(|t| t.from == a && t.to == b);
            // "-" says one thing: no P2P granted. A granted pair without a test was not
            // reached (an interrupted run).
            let granted = crate::facts::granted_either(access, a, b);
            let word = match test {
                Some(t) => verdict_word(t),
                None if granted => "NOT-RUN",
                None => "-",
            };
            vrow.push(format!("{} {word}", topology(a, b)));
            crow.push(format!("{can} {}", nvml_status(a, b)));
        }
        verdicts.push(vrow);
        claims.push(crow);
    }
    Some(P2pTables {
        verdicts,
        claims,
        legend: LEGEND.to_vec(),
        note: None,
    })
}
