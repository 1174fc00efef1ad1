//! Beyond one box: `rigdoctor compare` (a fleet's saved reports side by side) and
//! `check --baseline` (this run against a saved report of the same machine). Parent side only:
//! these read saved reports and this run's facts, never a GPU.

pub mod baseline;
pub mod compare;
pub mod node;
pub mod render;

pub use node::{Figure, Node};

use crate::code::Code;

/// The codes the comparisons emit (outside the rules: they judge several reports).
pub const CODES: &[Code] = &[
    Code::BaselineRegression,
    Code::FleetVersionDrift,
    Code::FleetConfigDrift,
    Code::FleetOutlier,
];

/// How far a figure must fall below its reference to count (fleet-outlier,
/// baseline-regression): 15%, above the run-to-run spread nvbandwidth-style medians show on a
/// healthy link (a few percent), below what a link trained at half width or a throttled GPU
/// costs (30-50%).
pub const FELL_BY: f64 = 0.15;

/// The median of finite values (as a bandwidth figure's samples are summarised).
fn median(v: Vec<f64>) -> Option<f64> {
    crate::facts::Stats::of(v).map(|s| s.median)
}

/// The reference `x` fell below, when it did: the median of the peers' medians, when `x` is
/// more than [`FELL_BY`] below it and even `x`'s best sample is below it by more than the
/// peers' own spread (the median of their max - min), so noise is not a finding.
pub fn fell(peers: &[Figure], x: &Figure) -> Option<f64> {
    let reference = median(peers.iter().map(|p| p.median).collect())?;
    let spread = median(peers.iter().map(|p| p.max - p.min).collect()).unwrap_or(0.0);
    (reference > 0.0 && x.median < (1.0 - FELL_BY) * reference && x.max < reference - spread)
        .then_some(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(median: f64, min: f64, max: f64) -> Figure {
        Figure {
            median,
            min,
            max,
            bytes: 8 << 20,
        }
    }

    #[test]
    fn a_figure_fell_only_beyond_the_threshold_and_the_spread() {
        let peers = [
            f(25.0, 24.5, 25.5),
            f(24.8, 24.0, 25.2),
            f(25.2, 25.0, 25.4),
        ];
        assert_eq!(fell(&peers, &f(12.0, 11.9, 12.1)), Some(25.0));
        // 10% below: within the threshold.
        assert_eq!(fell(&peers, &f(22.5, 22.0, 23.0)), None);
        // 20% below at the median, but its best sample reaches the peers: noise.
        assert_eq!(fell(&peers, &f(20.0, 15.0, 24.9)), None);
        // Noisy peers (spread 10 GB/s) hide a fall of 6.
        let noisy = [f(25.0, 20.0, 30.0), f(25.0, 20.0, 30.0)];
        assert_eq!(fell(&noisy, &f(19.0, 18.0, 19.5)), None);
        assert_eq!(fell(&[], &f(1.0, 1.0, 1.0)), None);
        // A faster figure never fell.
        assert_eq!(fell(&peers, &f(40.0, 40.0, 40.0)), None);
    }
}
