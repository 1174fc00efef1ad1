//! The NCCL table shared by the text and markdown renderers, laid out like nccl-tests'
//! all_reduce_perf rows, with a verdict per size.

use super::bandwidth_tables::{BandwidthTables, Section};
use crate::facts::{AllReduceOutcome, Facts, Probed};

pub fn tables(f: &Facts) -> Option<BandwidthTables> {
    let n = f.gpu.as_ref()?.nccl.as_ref()?;
    let mut notes = Vec::new();
    match &n.library {
        Probed::Known(l) => {
            notes.push(format!(
                "NCCL {} ({}), {} rank(s) in one process: all-reduce, sum, float32",
                l.version,
                l.path,
                n.devices.len()
            ));
            if let Some(e) = &n.init_error {
                notes.push(format!("NCCL initialisation failed: {e}"));
            }
        }
        Probed::Unknown { detail, .. } => {
            notes.push(format!("NCCL not run: {detail}"));
            return Some(BandwidthTables {
                sections: Vec::new(),
                legend: Vec::new(),
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
        notes.push(format!(
            "rigdoctor set {} and NCCL_DEBUG_FILE to a file of its own, to read NCCL's transports",
            set.join(" ")
        ));
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
    let mut sections = vec![Section {
        title: "NCCL all-reduce (per rank; busbw = algbw x 2(n-1)/n, as nccl-tests)".into(),
        table: t,
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
        });
    }
    Some(BandwidthTables {
        sections,
        legend: vec!["GB = 1e9 bytes; time per all-reduce, the slowest rank's CUDA events over the timed iterations; #wrong = elements differing from the exact sum, all ranks"],
        notes,
    })
}
