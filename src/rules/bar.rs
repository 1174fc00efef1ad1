//! BAR1 aperture size (Resizable BAR).

use super::{gpu_label, gpus};
use crate::code::Code;
use crate::facts::{Facts, GpuPci, Probed};
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;

/// The legacy BAR1 size; with Resizable BAR a GPU exposes (about) all of its memory.
const LEGACY_BAR1: u64 = 256 << 20;

/// A BAR size as firmware setup and vendors write it: whole GiB, else MiB.
pub fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// What the card's Resizable BAR capability says about enlarging BAR1 (`bar1` bytes now, `vram`
/// bytes of memory when known): firmware can, or the card's VBIOS must change first.
pub fn rebar_advice(p: &GpuPci, bar1: u64, vram: Option<u64>) -> String {
    match &p.bar1_rebar {
        Probed::Known(Some(r)) => match r.largest() {
            Some(max) if max > bar1 => format!(
                "the card offers BAR1 sizes up to {} ({}): firmware can enlarge it{} (enable Above 4G Decoding and Re-Size BAR Support)",
                size_text(max),
                r.source,
                if vram.is_some_and(|v| max < v) {
                    ", though not to all of its memory"
                } else {
                    ""
                }
            ),
            Some(max) => format!(
                "the card offers BAR1 sizes up to {} only ({}): firmware cannot enlarge it; a VBIOS with Resizable BAR support from the card's maker comes first",
                size_text(max),
                r.source
            ),
            None => format!(
                "the card's Resizable BAR capability lists no sizes ({})",
                r.source
            ),
        },
        Probed::Known(None) => "the card has no Resizable BAR capability (config space): its VBIOS cannot resize BAR1; a VBIOS with Resizable BAR support from the card's maker comes first".into(),
        Probed::Unknown { .. } => format!(
            "which BAR1 sizes the card supports was not read ({}); Above 4G Decoding and Re-Size BAR Support in firmware enlarge it when the card's VBIOS supports it",
            p.bar1_rebar.why_unknown().unwrap_or_default()
        ),
    }
}

pub fn small_bar1(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let small: Vec<_> = gpus(facts)
        .iter()
        .filter(|g| {
            g.bar1_bytes
                .known()
                .is_some_and(|&b| b > 0 && b <= LEGACY_BAR1)
        })
        .collect();
    if small.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        Code::SmallBar1,
        Severity::Info,
        "Resizable BAR is off: BAR1 exposes 256 MiB or less of GPU memory",
    )
    .gpus(small.iter().map(|g| g.bdf.clone()))
    .fix("enable 'Above 4G Decoding' and 'Re-Size BAR Support' in the BIOS (a 3090 also needs a ReBAR-capable VBIOS from the card vendor)")
    .fix("needed for the patched P2P kernel modules for GeForce cards; stock drivers work without it")
    .refs([
        "https://docs.kernel.org/ABI/testing/sysfs-bus-pci",
        "https://github.com/tinygrad/open-gpu-kernel-modules",
    ]);
    for g in small {
        let bar1 = g.bar1_bytes.known().copied().unwrap_or(0);
        f = f.evidence(format!(
            "{}: BAR1 {} (sysfs resource, line 1); {}",
            gpu_label(g),
            size_text(bar1),
            rebar_advice(g, bar1, None)
        ));
    }
    vec![f]
}
