//! The NCCL table shared by the text and markdown renderers, laid out like nccl-tests'
//! all_reduce_perf rows, with a verdict per size.

use super::bandwidth_tables::{BandwidthTables, Brief, Note, Section};
use super::p2p_matrix::Table;
use crate::facts::{AllReduceOutcome, Facts, Probed};

pub fn tables(f: &Facts) -> Option<BandwidthTables> {
    let n = f.gpu.as_ref()?.nccl.as_ref()?;
    let mut notes = Vec::new();
    let title;
    match &n.library {
        Probed::Known(l) => {
            title = format!("NCCL {} all-reduce ({}, {})", l.version, l.path, n.layout());
            if let Some(e) = &n.init_error {
                notes.push(Note::main(format!("NCCL initialisation failed: {e}")));
            }
            if let Some(h) = &n.init_hang {
                notes.push(Note::main(format!("NCCL initialisation hung: {h}")));
            }
            for r in n.troubled_ranks() {
                notes.push(Note::main(r));
            }
        }
        Probed::Unknown { detail, .. } => {
            notes.push(Note::main(format!("NCCL not run: {detail}")));
            return Some(BandwidthTables {
                sections: Vec::new(),
                legend: Vec::new(),
                short_legend: None,
                notes,
            });
        }
    }
    if !n.env_set.is_empty() {
        // The user's NCCL_DEBUG* are not what the run saw: say what rigdoctor set, and why.
        let set: Vec<String> = n
            .env_set
            .iter()
            .filter(|e| e.name != "NCCL_DEBUG_FILE")
            .map(|e| match &e.replaced {
                Some(u) => format!("{}={} (yours: {u})", e.name, e.value),
                None => format!("{}={}", e.name, e.value),
            })
            .collect();
        notes.push(Note::detail(format!(
            "rigdoctor set {} and NCCL_DEBUG_FILE to a file of its own, to read NCCL's transports",
            set.join(" ")
        )));
    }
    let mut t = vec![[
        "size (B)",
        "count",
        "time (us)",
        "algbw (GB/s)",
        "busbw (GB/s)",
        "#wrong",
        "verdict",
    ]
    .map(String::from)
    .to_vec()];
    for r in &n.results {
        let mut row = vec![r.bytes.to_string(), (r.bytes / 4).to_string()];
        match &r.outcome {
            AllReduceOutcome::Measured {
                time_us,
                algbw_gbps,
                busbw_gbps,
                wrong,
            } => {
                let w: u64 = wrong.iter().sum();
                row.extend([
                    format!("{time_us:.1}"),
                    format!("{algbw_gbps:.2}"),
                    format!("{busbw_gbps:.2}"),
                    w.to_string(),
                    if w == 0 { "ok" } else { "WRONG" }.to_string(),
                ]);
            }
            AllReduceOutcome::Hang { .. } => {
                row.extend(["-", "-", "-", "-", "HANG"].map(String::from));
            }
            AllReduceOutcome::Failed { .. } => {
                row.extend(["-", "-", "-", "-", "ERROR"].map(String::from));
            }
        }
        t.push(row);
    }
    // The screen: every size that did not pass, and the largest (the figure people quote);
    // when all passed, the largest in one line.
    let last = t.len() - 1;
    let brief = if t[1..].iter().all(|r| r.last().is_some_and(|v| v == "ok")) && last > 0 {
        let r = &t[last];
        Some(Brief::Line(format!(
            "all {} sizes ok; at {} MiB per rank busbw {} GB/s, {} us",
            last,
            r[0].parse::<u64>().unwrap_or(0) >> 20,
            r[4],
            r[2]
        )))
    } else {
        let rows: Table = t
            .iter()
            .enumerate()
            .filter(|(i, r)| *i == 0 || *i == last || r.last().is_some_and(|v| v != "ok"))
            .map(|(_, r)| r.clone())
            .collect();
        (rows.len() < t.len()).then_some(Brief::Rows(rows))
    };
    let mut sections = vec![Section {
        title,
        brief,
        table: t,
        detail: false,
    }];
    if !n.channels.is_empty() {
        let mut c = vec![["channel", "rank -> rank", "via"]
            .map(String::from)
            .to_vec()];
        for ch in &n.channels {
            c.push(vec![
                format!("{:02}", ch.channel),
                format!("{} -> {}", ch.from_rank, ch.to_rank),
                ch.via.clone(),
            ]);
        }
        sections.push(Section {
            title: "NCCL transports (NCCL_DEBUG=INFO)".into(),
            table: c,
            detail: true,
            brief: None,
        });
    }
    Some(BandwidthTables {
        sections,
        legend: vec!["Sum of float32, sizes per rank, columns as nccl-tests prints them. GB = 1e9 bytes; busbw = algbw x 2(n-1)/n; time per all-reduce, the slowest rank's CUDA events over the timed iterations; #wrong = elements differing from the exact sum, all ranks"],
        short_legend: None,
        notes,
    })
}
