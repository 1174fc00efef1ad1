//! A saved report is checked before anything renders or judges it: device ordinals within the
//! inventory, lists no longer than the run that wrote them could make, no NaN. A report is
//! input from anywhere (a forum post, a script); the renderers and rules may then assume
//! matrices of at most `MAX_DEVICES`² cells, so their work stays linear in the report's size.

use crate::facts::{BwOutcome, Facts, GpuRuntime, PairOutcome, PairTest, Probed, MAX_DEVICES};
use std::collections::HashSet;

/// Lists that grow with the run, not with the device count: sizes of a sweep, samples of a
/// measurement, workers. rigdoctor writes far fewer.
const MAX_SERIES: usize = 4096;

pub fn validate(facts: &Facts) -> Result<(), String> {
    if let Probed::Known(topo) = &facts.pci {
        at_most("pci.gpus", topo.gpus.len(), MAX_DEVICES)?;
        at_most("pci.bridges", topo.bridges.len(), MAX_SERIES)?;
        at_most("pci.unidentified", topo.unidentified.len(), MAX_SERIES)?;
    }
    if let Some(g) = &facts.gpu {
        gpu(g)?;
    }
    Ok(())
}

fn gpu(g: &GpuRuntime) -> Result<(), String> {
    at_most("gpu.workers", g.workers.len(), MAX_SERIES)?;
    // Ordinals are CUDA's: 0..count when the inventory was read, else at most MAX_DEVICES.
    let count = match &g.cuda {
        Probed::Known(inv) => {
            at_most("gpu.cuda.devices", inv.devices.len(), MAX_DEVICES)?;
            for (i, d) in inv.devices.iter().enumerate() {
                if d.ordinal != i as i32 {
                    return Err(format!(
                        "gpu.cuda.devices[{i}] has ordinal {} (CUDA numbers devices 0..n in order)",
                        d.ordinal
                    ));
                }
            }
            inv.devices.len()
        }
        Probed::Unknown { .. } => MAX_DEVICES,
    };
    let ordinal = |what: &str, d: i32| -> Result<(), String> {
        if d < 0 || d as usize >= count {
            Err(format!(
                "{what}: device {d} is not in the inventory (CUDA devices 0..{count})"
            ))
        } else {
            Ok(())
        }
    };
    if let Probed::Known(nvml) = &g.nvml {
        let n = nvml.devices.len();
        at_most("gpu.nvml.devices", n, MAX_DEVICES)?;
        at_most("gpu.nvml.pairs", nvml.pairs.len(), n * n)?;
        for p in &nvml.pairs {
            if p.a as usize >= n || p.b as usize >= n {
                return Err(format!(
                    "gpu.nvml.pairs: pair {}-{} is outside NVML's {n} device(s)",
                    p.a, p.b
                ));
            }
        }
    }
    let devices = |what: &str, list: &[i32]| -> Result<usize, String> {
        at_most(what, list.len(), count)?;
        let mut seen = HashSet::new();
        for &d in list {
            ordinal(what, d)?;
            if !seen.insert(d) {
                return Err(format!("{what}: device {d} is listed twice"));
            }
        }
        Ok(list.len())
    };
    let pairs = |what: &str, list: &[(i32, i32)], n: usize| -> Result<(), String> {
        at_most(what, list.len(), n * n)?;
        list.iter().try_for_each(|&(a, b)| {
            ordinal(what, a)?;
            ordinal(what, b)
        })
    };
    let ends = |t: &[PairTest]| t.iter().map(|t| (t.from, t.to)).collect::<Vec<_>>();
    if let Some(p) = &g.p2p {
        let n = devices("gpu.p2p.devices", &p.devices)?;
        if let Probed::Known(a) = &p.access {
            let a: Vec<_> = a.iter().map(|a| (a.from, a.to)).collect();
            pairs("gpu.p2p.access", &a, n)?;
        }
        pairs("gpu.p2p.tests", &ends(&p.tests), n)?;
        pairs("gpu.p2p.local", &ends(&p.local), n)?;
        at_most("gpu.p2p.local", p.local.len(), n)?;
        for t in p.tests.iter().chain(&p.local) {
            if let PairOutcome::Tested { enable, .. } = &t.outcome {
                let e: Vec<_> = enable.iter().map(|e| (e.ctx, e.peer)).collect();
                pairs("gpu.p2p.tests[].enable", &e, 2)?;
            }
            at_most("gpu.p2p.tests[].paths", t.outcome.paths().len(), 64)?;
        }
        not_nan("gpu.p2p.deadline_s", p.deadline_s)?;
    }
    if let Some(b) = &g.bandwidth {
        let n = devices("gpu.bandwidth.devices", &b.devices)?;
        // Per ordered pair (or device and host): every kind x method x direction mode.
        at_most(
            "gpu.bandwidth.measurements",
            b.measurements.len(),
            64 * (n + 1) * (n + 1),
        )?;
        at_most("gpu.bandwidth.links", b.links.len(), n)?;
        for m in &b.measurements {
            for d in [m.from, m.to].into_iter().flatten() {
                ordinal("gpu.bandwidth.measurements", d)?;
            }
            if let BwOutcome::Measured { stats, .. } = &m.outcome {
                at_most("gpu.bandwidth samples", stats.samples.len(), MAX_SERIES)?;
                for v in [stats.median, stats.min, stats.max] {
                    not_nan("gpu.bandwidth figure", v)?;
                }
            }
        }
        for l in &b.links {
            ordinal("gpu.bandwidth.links", l.device)?;
        }
        at_most("gpu.bandwidth.aer_after", b.aer_after.len(), MAX_SERIES)?;
    }
    if let Some(c) = &g.nccl {
        let ranks = devices("gpu.nccl.devices", &c.devices)?;
        at_most("gpu.nccl.results", c.results.len(), MAX_SERIES)?;
        // NCCL has at most 64 channels (MAXCHANNELS, src/include/device.h), one line per
        // channel and peer.
        at_most(
            "gpu.nccl.channels",
            c.channels.len(),
            64 * ranks * ranks.max(1) * 2,
        )?;
        for ch in &c.channels {
            if ch.from_rank as usize >= ranks || ch.to_rank as usize >= ranks {
                return Err(format!(
                    "gpu.nccl.channels: rank {} -> {} is outside the {ranks} rank(s)",
                    ch.from_rank, ch.to_rank
                ));
            }
        }
        for r in &c.results {
            if let crate::facts::AllReduceOutcome::Measured {
                time_us,
                algbw_gbps,
                busbw_gbps,
                wrong,
            } = &r.outcome
            {
                at_most("gpu.nccl.results[].wrong", wrong.len(), ranks)?;
                for v in [*time_us, *algbw_gbps, *busbw_gbps] {
                    not_nan("gpu.nccl figure", v)?;
                }
            }
        }
        at_most("gpu.nccl.warnings", c.warnings.len(), MAX_SERIES)?;
    }
    Ok(())
}

fn at_most(what: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max {
        Err(format!(
            "{what} has {len} entries where this report's inventory allows at most {max}"
        ))
    } else {
        Ok(())
    }
}

/// `inf` is a value rigdoctor can write (a copy timed at zero); NaN is no measurement at all.
fn not_nan(what: &str, v: f64) -> Result<(), String> {
    if v.is_nan() {
        Err(format!("{what} is not a number"))
    } else {
        Ok(())
    }
}
