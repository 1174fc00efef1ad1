//! The parent's side of the bandwidth battery: step reports into [`BandwidthFacts`].

use super::GpuReport;
use crate::facts::{
    BandwidthConfig, BandwidthFacts, BwOutcome, LinkUnderLoad, Measurement, Probed, Stats, Why,
};
use crate::measure::gpu::{last_stage, Answer, Reading, Spec, Step};
use crate::measure::watchdog::Outcome;

/// Reports of the bandwidth steps, in plan order.
pub fn settle(
    cfg: &BandwidthConfig,
    selected: &[i32],
    reports: Vec<GpuReport>,
    secs: f64,
) -> BandwidthFacts {
    let mut facts = BandwidthFacts {
        config: cfg.clone(),
        devices: selected.to_vec(),
        access: Probed::unknown(Why::NotRun, "not run"),
        measurements: Vec::new(),
        links: Vec::new(),
        aer_after: Default::default(),
        interrupted: false,
        wall_s: 0.0,
    };
    let mut before: Vec<Reading> = Vec::new();
    let mut after: Vec<Reading> = Vec::new();
    let mut load: Vec<Reading> = Vec::new();
    for r in reports {
        match &r.step {
            Step::BandwidthPlan { .. } => match r.outcome {
                Outcome::Done(Answer::BandwidthPlan(p)) => {
                    facts.devices = p.devices;
                    facts.access = Probed::Known(p.access);
                    before = p.before;
                }
                Outcome::Done(_) => {
                    facts.access = Probed::unknown(
                        Why::Unparsable,
                        "worker protocol: wrong answer for the plan",
                    )
                }
                Outcome::Failed(e) => facts.access = Probed::from_step_error(e),
                Outcome::Hang { .. } => {
                    facts.access = Probed::unknown(
                        Why::Hang,
                        format!("CUDA did not list the devices within {secs} s"),
                    )
                }
                Outcome::Crashed(e) => {
                    facts.access = Probed::unknown(Why::Failed, format!("the worker {e}"))
                }
            },
            Step::BandwidthEnd { .. } => {
                if let Outcome::Done(Answer::BandwidthEnd(a)) = r.outcome {
                    after = a;
                }
            }
            Step::Bandwidth(spec) => {
                let spec = spec.clone();
                facts
                    .measurements
                    .extend(measurements(&spec, cfg, r, &mut load));
            }
            _ => {}
        }
    }
    facts.links = links(&facts.devices, &before, &load, &after);
    facts
}

fn measurements(
    spec: &Spec,
    cfg: &BandwidthConfig,
    r: GpuReport,
    load: &mut Vec<Reading>,
) -> Vec<Measurement> {
    let (bytes, copies) = if spec.latency {
        (cfg.latency_bytes, cfg.latency_iters)
    } else {
        (cfg.size_bytes, cfg.iters)
    };
    let stage = last_stage(&r.notes);
    let each = |outcome: BwOutcome| -> Vec<Measurement> {
        spec.lanes()
            .into_iter()
            .map(|(kind, from, to)| Measurement {
                kind,
                method: spec.method,
                from,
                to,
                bidirectional: spec.bidir,
                latency: spec.latency,
                bytes,
                copies,
                outcome: outcome.clone(),
            })
            .collect()
    };
    let answer = match r.outcome {
        Outcome::Done(Answer::Bandwidth(a)) => a,
        Outcome::Done(other) => {
            return each(BwOutcome::Failed {
                error: format!("worker protocol: unexpected answer {other:?}"),
            })
        }
        Outcome::Failed(crate::facts::StepError::NotRun { because }) => {
            return each(BwOutcome::Skipped { reason: because })
        }
        Outcome::Failed(e) => {
            return each(BwOutcome::Failed {
                error: e.to_string(),
            })
        }
        Outcome::Hang { .. } => return each(BwOutcome::Hang { stage }),
        Outcome::Crashed(e) => {
            return each(BwOutcome::Failed {
                error: format!("the worker {e}"),
            })
        }
    };
    load.extend(answer.load);
    answer
        .lanes
        .into_iter()
        .map(|l| {
            let outcome = if let Some(mismatch) = l.mismatch {
                BwOutcome::Corrupt { mismatch }
            } else if let Some(error) = l.error {
                BwOutcome::Failed { error }
            } else {
                let per_sample: Vec<f64> = l
                    .samples_ms
                    .iter()
                    .map(|&ms| rate(spec.latency, answer.bytes, answer.copies, ms))
                    .collect();
                match Stats::of(per_sample) {
                    Some(stats) => BwOutcome::Measured {
                        stats,
                        host_cpus: answer.host_cpus.clone(),
                    },
                    None => BwOutcome::Failed {
                        error: "no sample was timed (events gave no usable time)".into(),
                    },
                }
            };
            Measurement {
                kind: l.kind,
                method: spec.method,
                from: l.from,
                to: l.to,
                bidirectional: spec.bidir,
                latency: spec.latency,
                bytes: answer.bytes,
                copies: answer.copies,
                outcome,
            }
        })
        .collect()
}

/// GB/s (1e9 bytes) of `copies` copies of `bytes` in `ms`, or µs per copy for latency.
pub fn rate(latency: bool, bytes: u64, copies: u32, ms: f64) -> f64 {
    if latency {
        ms * 1e3 / f64::from(copies.max(1))
    } else if ms > 0.0 {
        bytes as f64 * f64::from(copies) / (ms * 1e-3) / 1e9
    } else {
        f64::NAN
    }
}

fn links(
    devices: &[i32],
    before: &[Reading],
    load: &[Reading],
    after: &[Reading],
) -> Vec<LinkUnderLoad> {
    devices
        .iter()
        .map(|&d| {
            let b = before.iter().find(|r| r.device == d);
            let a = after.iter().find(|r| r.device == d);
            let under: Vec<&Reading> = load.iter().filter(|r| r.device == d).collect();
            let mut unread: Vec<String> = b.map(|b| b.unread.clone()).unwrap_or_default();
            for u in under.iter().flat_map(|r| r.unread.iter()) {
                if !unread.contains(u) {
                    unread.push(u.clone());
                }
            }
            LinkUnderLoad {
                device: d,
                bus_id: b.and_then(|b| b.bus_id.clone()),
                gen: under.iter().filter_map(|r| r.gen).max(),
                width: under.iter().filter_map(|r| r.width).max(),
                max_gen: b.and_then(|b| b.max_gen),
                max_width: b.and_then(|b| b.max_width),
                samples: under.iter().filter(|r| r.gen.is_some()).count() as u32,
                throttle_reasons: under
                    .iter()
                    .filter_map(|r| r.throttle)
                    .fold(0, |x, y| x | y),
                power_peak_mw: under.iter().filter_map(|r| r.power_mw).max(),
                power_limit_mw: b.and_then(|b| b.power_limit_mw),
                power_default_mw: b.and_then(|b| b.power_default_mw),
                power_range_mw: b.and_then(|b| b.power_range_mw),
                replays_before: b.and_then(|b| b.replays),
                replays_after: a.and_then(|a| a.replays),
                unread,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::rate;

    #[test]
    fn rates() {
        // 16 copies of 64 MiB in 40 ms: 26.84 GB/s.
        assert!((rate(false, 64 << 20, 16, 40.0) - 26.843545).abs() < 1e-5);
        // 100 copies in 1 ms: 10 µs each.
        assert!((rate(true, 16, 100, 1.0) - 10.0).abs() < 1e-9);
        assert!(rate(false, 1, 1, 0.0).is_nan());
    }
}
