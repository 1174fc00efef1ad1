//! BAR1 aperture size (Resizable BAR).

use super::{gpu_label, gpus};
use crate::code::Code;
use crate::facts::Facts;
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;

/// The legacy BAR1 size; with Resizable BAR a GPU exposes (about) all of its memory.
const LEGACY_BAR1: u64 = 256 << 20;

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
        let mib = g.bar1_bytes.known().copied().unwrap_or(0) >> 20;
        f = f.evidence(format!(
            "{}: BAR1 {mib} MiB (sysfs resource, line 1)",
            gpu_label(g)
        ));
    }
    vec![f]
}
