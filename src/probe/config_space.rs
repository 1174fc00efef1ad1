//! Decoding PCI configuration space: the PCI Express capability, and the ACS and Resizable BAR
//! extended capabilities.
//!
//! Offsets follow the PCI Express Base Specification as mirrored in Linux'
//! `include/uapi/linux/pci_regs.h`. Every walk is bounded, so a corrupt or hostile file cannot loop.

use crate::facts::{Acs, BridgeConfig, Probed, ResizableBar, Why};

const STATUS: usize = 0x06;
const STATUS_CAP_LIST: u16 = 0x10;
const CAP_POINTER: usize = 0x34;
const CAP_ID_EXP: u8 = 0x10;
const EXP_FLAGS: usize = 0x02;
const EXT_CAP_START: usize = 0x100;
const EXT_CAP_ID_ACS: u16 = 0x000D;
/// Resizable BAR (PCIe Base Spec r6.2, 7.8.6; pci_regs.h PCI_EXT_CAP_ID_REBAR): after the
/// header, one (capability, control) dword pair per resizable BAR.
const EXT_CAP_ID_REBAR: u16 = 0x0015;
/// PCI_REBAR_CAP: bits 4..31 list the supported sizes, bit 4 = 1 MiB (PCI_REBAR_CAP_SIZES).
const REBAR_CAP: usize = 4;
/// PCI_REBAR_CTRL: BAR index in bits 0..2, the number of resizable BARs in bits 5..7 (first
/// control register only), the current size in bits 8..13 as log2(bytes) - 20.
const REBAR_CTRL: usize = 8;
/// Non-root readers of sysfs `config` get only the standard header.
const UNPRIVILEGED_LEN: usize = 64;

fn u16_at(c: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*c.get(o)?, *c.get(o + 1)?]))
}

fn u32_at(c: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *c.get(o)?,
        *c.get(o + 1)?,
        *c.get(o + 2)?,
        *c.get(o + 3)?,
    ]))
}

/// Offset of a standard capability, following the list from 0x34.
fn find_cap(c: &[u8], id: u8) -> Option<usize> {
    if u16_at(c, STATUS)? & STATUS_CAP_LIST == 0 {
        return None;
    }
    let mut p = (*c.get(CAP_POINTER)? & 0xFC) as usize;
    // 48 = (256 - 64) / 4: more entries than the standard space can hold.
    for _ in 0..48 {
        if p < 0x40 {
            return None;
        }
        if *c.get(p)? == id {
            return Some(p);
        }
        p = (*c.get(p + 1)? & 0xFC) as usize;
    }
    None
}

/// Offset of an extended capability, following the list from 0x100: `Ok(None)` at the list's
/// proper end, `Err` when the list is broken (a loop, a pointer out of range, all ones), which
/// is "not checked", never "no such capability".
fn find_ext_cap(c: &[u8], id: u16) -> Result<Option<usize>, String> {
    let mut p = EXT_CAP_START;
    // 960 = (4096 - 256) / 4: more entries than the extended space can hold.
    for _ in 0..960 {
        let Some(header) = u32_at(c, p) else {
            return Err(format!(
                "extended capability pointer {p:#x} beyond the {} bytes read",
                c.len()
            ));
        };
        if header == 0 {
            return Ok(None);
        }
        if header == 0xFFFF_FFFF {
            return Err(format!("extended capability at {p:#x} reads all ones"));
        }
        if header as u16 == id {
            return Ok(Some(p));
        }
        let next = ((header >> 20) & 0xFFC) as usize;
        if next == 0 {
            return Ok(None);
        }
        if next < EXT_CAP_START {
            return Err(format!("extended capability pointer {next:#x} below 0x100"));
        }
        p = next;
    }
    Err("the extended capability list loops".into())
}

fn port_type_name(t: u16) -> String {
    match t {
        0x0 => "endpoint",
        0x1 => "legacy-endpoint",
        0x4 => "root-port",
        0x5 => "switch-upstream",
        0x6 => "switch-downstream",
        0x7 => "pcie-to-pci-bridge",
        0x8 => "pci-to-pcie-bridge",
        0x9 => "rc-integrated-endpoint",
        0xA => "rc-event-collector",
        _ => return format!("unknown-{t:#x}"),
    }
    .to_string()
}

/// Intel Sunrise Point / Union Point PCH root ports (Skylake and Kaby Lake desktop chipsets)
/// implement ACS with dword registers: control sits at +8, not +6. The ranges are those of
/// `pci_quirk_intel_spt_pch_acs_match` in Linux' drivers/pci/quirks.c.
fn intel_pch_acs_layout(vendor: u16, device: u16, port_type: Option<&str>) -> bool {
    vendor == 0x8086
        && port_type == Some("root-port")
        && matches!(device, 0xa110..=0xa11f | 0xa167..=0xa16a | 0xa290..=0xa29f | 0xa2e7..=0xa2ee)
}

/// Sizes in bytes from a Resizable BAR bitmask whose bit 0 is 1 MiB, as Linux'
/// `pci_rebar_get_possible_sizes` returns it and sysfs `resource<N>_resize` prints it.
pub fn rebar_sizes(mask: u64) -> Vec<u64> {
    (0..44)
        .filter(|k| mask >> k & 1 == 1)
        .map(|k| (1u64 << 20) << k)
        .collect()
}

/// Why `c` cannot be decoded at all: non-root readers get the first 64 bytes, and a device
/// that stopped answering (fell off the bus, powered down) reads all ones.
fn unreadable(bdf: &str, c: &[u8]) -> Option<Probed<()>> {
    if c.len() <= UNPRIVILEGED_LEN {
        return Some(Probed::unknown(
            Why::NeedsRoot,
            format!(
                "{bdf} config space readable to {} bytes only (run as root)",
                c.len()
            ),
        ));
    }
    if c.iter().take(64).all(|&b| b == 0xFF) {
        return Some(Probed::unknown(
            Why::IoError,
            format!("{bdf}: config space reads all 0xFF: the device does not respond"),
        ));
    }
    None
}

/// Why the extended capabilities of `c` cannot be walked, if they cannot.
fn no_extended_space(bdf: &str, c: &[u8]) -> Option<Probed<()>> {
    unreadable(bdf, c).or_else(|| {
        (c.len() <= EXT_CAP_START).then(|| {
            Probed::unknown(
                Why::Absent,
                format!(
                    "{bdf}: extended config space not exposed ({} bytes)",
                    c.len()
                ),
            )
        })
    })
}

/// The Resizable BAR capability of BAR `bar` from a device's `config` file, the walk of Linux'
/// `pci_rebar_find_pos`: `Known(None)` when the device has no such capability or it does not
/// cover that BAR.
pub fn decode_rebar(bdf: &str, c: &[u8], bar: u32) -> Probed<Option<ResizableBar>> {
    if let Some(why) = no_extended_space(bdf, c) {
        return why.retype();
    }
    let pos = match find_ext_cap(c, EXT_CAP_ID_REBAR) {
        Ok(Some(p)) => p,
        Ok(None) => return Probed::Known(None),
        Err(why) => return Probed::unknown(Why::Unparsable, format!("{bdf}: {why}")),
    };
    let Some(first) = u32_at(c, pos + REBAR_CTRL) else {
        return Probed::unknown(
            Why::Unparsable,
            format!("{bdf}: Resizable BAR capability cut short"),
        );
    };
    let nbars = (first >> 5 & 0x7) as usize;
    for i in 0..nbars {
        let at = pos + 8 * i;
        let (Some(cap), Some(ctrl)) = (u32_at(c, at + REBAR_CAP), u32_at(c, at + REBAR_CTRL))
        else {
            return Probed::unknown(
                Why::Unparsable,
                format!(
                    "{bdf}: Resizable BAR entry {i} beyond the {} bytes read",
                    c.len()
                ),
            );
        };
        if ctrl & 0x7 == bar {
            return Probed::Known(Some(ResizableBar {
                sizes: rebar_sizes(u64::from(cap >> 4)),
                current_bytes: Some((1u64 << 20) << (ctrl >> 8 & 0x3F)),
                source: "config space".into(),
            }));
        }
    }
    Probed::Known(None)
}

/// Decode what the rules need from a bridge's `config` file.
pub fn decode_bridge_config(bdf: &str, c: &[u8]) -> Probed<BridgeConfig> {
    if let Some(why) = unreadable(bdf, c) {
        return why.retype();
    }
    let port_type = match find_cap(c, CAP_ID_EXP).and_then(|p| u16_at(c, p + EXP_FLAGS)) {
        Some(flags) => Probed::Known(port_type_name((flags >> 4) & 0xF)),
        None => Probed::unknown(Why::Absent, format!("{bdf} has no PCI Express capability")),
    };
    let acs = if let Some(why) = no_extended_space(bdf, c) {
        why.retype()
    } else {
        let vendor = u16_at(c, 0).unwrap_or(0);
        let device = u16_at(c, 2).unwrap_or(0);
        let pch = intel_pch_acs_layout(vendor, device, port_type.known().map(String::as_str));
        match find_ext_cap(c, EXT_CAP_ID_ACS) {
            Ok(found) => Probed::Known(found.and_then(|p| {
                Some(Acs {
                    offset: p as u16,
                    capability: u16_at(c, p + 4)?,
                    control: u16_at(c, if pch { p + 8 } else { p + 6 })?,
                    intel_pch_layout: pch,
                })
            })),
            Err(why) => Probed::unknown(Why::Unparsable, format!("{bdf}: {why}")),
        }
    };
    Probed::Known(BridgeConfig {
        vendor_id: u16_at(c, 0).unwrap_or(0),
        device_id: u16_at(c, 2).unwrap_or(0),
        port_type,
        acs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge_config(acs_ctl: Option<u16>) -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        c[STATUS] = STATUS_CAP_LIST as u8;
        c[CAP_POINTER] = 0x40;
        c[0x40] = 0x01; // power management, to make the walk follow a chain
        c[0x41] = 0x60;
        c[0x60] = CAP_ID_EXP;
        c[0x62] = 0x62; // version 2, port type 6 (switch downstream)
        c[0x100..0x104].copy_from_slice(&(0x0001u32 | 1 << 16 | 0x148 << 20).to_le_bytes());
        if let Some(ctl) = acs_ctl {
            c[0x148..0x14C].copy_from_slice(&(0x000Du32 | 1 << 16).to_le_bytes());
            c[0x14C..0x14E].copy_from_slice(&0x005Fu16.to_le_bytes());
            c[0x14E..0x150].copy_from_slice(&ctl.to_le_bytes());
        }
        c
    }

    #[test]
    fn finds_acs_after_another_extended_cap() {
        let cfg = decode_bridge_config("b", &bridge_config(Some(0x1d)));
        let cfg = cfg.known().unwrap();
        assert_eq!(cfg.port_type.known().unwrap(), "switch-downstream");
        let acs = cfg.acs.known().unwrap().as_ref().unwrap();
        assert_eq!((acs.offset, acs.control), (0x148, 0x1d));
    }

    #[test]
    fn intel_pch_root_ports_keep_acs_control_at_plus_8() {
        let mut c = bridge_config(Some(0x0000));
        c[0..4].copy_from_slice(&[0x86, 0x80, 0x10, 0xa1]); // 8086:a110
        c[0x62] = 0x42; // root port
        c[0x150..0x152].copy_from_slice(&0x001du16.to_le_bytes());
        let cfg = decode_bridge_config("b", &c);
        let acs = cfg.known().unwrap().acs.known().unwrap().clone().unwrap();
        assert!(acs.intel_pch_layout);
        assert_eq!(acs.control, 0x1d);
        // Another Intel root port reads the standard place.
        c[2..4].copy_from_slice(&0x6f08u16.to_le_bytes());
        let cfg = decode_bridge_config("b", &c);
        let acs = cfg.known().unwrap().acs.known().unwrap().clone().unwrap();
        assert!(!acs.intel_pch_layout);
        assert_eq!(acs.control, 0x0000);
    }

    /// An endpoint with AER at 0x100 and Resizable BAR at 0x200 for BARs 0 and 1, the layout
    /// of pci_regs.h: BAR1 supports 64 MiB to 32 GiB and is programmed to 256 MiB.
    fn gpu_config() -> Vec<u8> {
        let mut c = bridge_config(None);
        c[0x62] = 0x02; // endpoint
        c[0x100..0x104].copy_from_slice(&(0x0001u32 | 1 << 16 | 0x200 << 20).to_le_bytes());
        c[0x200..0x204].copy_from_slice(&(0x0015u32 | 1 << 16).to_le_bytes());
        // BAR0: 16 MiB only, programmed to 16 MiB; two resizable BARs.
        c[0x204..0x208].copy_from_slice(&(1u32 << (4 + 4)).to_le_bytes());
        c[0x208..0x20C].copy_from_slice(&(2u32 << 5 | 4 << 8).to_le_bytes());
        // BAR1: bits 10..=19 are 64 MiB ..= 32 GiB.
        c[0x20C..0x210].copy_from_slice(&(0x3FFu32 << 10).to_le_bytes());
        c[0x210..0x214].copy_from_slice(&(1u32 | 8 << 8).to_le_bytes());
        c
    }

    #[test]
    fn resizable_bar_lists_sizes_and_the_programmed_one() {
        let r = decode_rebar("g", &gpu_config(), 1);
        let r = r.known().unwrap().as_ref().unwrap();
        assert_eq!(r.sizes.first(), Some(&(64 << 20)));
        assert_eq!(r.largest(), Some(32 << 30));
        assert_eq!(r.sizes.len(), 10);
        assert_eq!(r.current_bytes, Some(256 << 20));
        let r0 = decode_rebar("g", &gpu_config(), 0);
        assert_eq!(r0.known().unwrap().as_ref().unwrap().sizes, vec![16 << 20]);
        // A BAR the capability does not list, and a device without the capability.
        assert_eq!(decode_rebar("g", &gpu_config(), 3), Probed::Known(None));
        assert_eq!(
            decode_rebar("g", &bridge_config(None), 1),
            Probed::Known(None)
        );
        // sysfs resource1_resize prints the same mask shifted to bit 0 = 1 MiB.
        assert_eq!(rebar_sizes(0x3FF << 6), r.sizes);
    }

    #[test]
    fn resizable_bar_unread_is_never_absent() {
        let c = gpu_config();
        for (cut, why) in [(64, Why::NeedsRoot), (256, Why::Absent)] {
            assert!(
                matches!(decode_rebar("g", &c[..cut], 1), Probed::Unknown { unknown, .. } if unknown == why),
                "{cut}"
            );
        }
        // Entries claimed past the end of what was read.
        let mut c = gpu_config();
        c[0x208..0x20C].copy_from_slice(&(7u32 << 5).to_le_bytes());
        assert!(matches!(
            decode_rebar("g", &c[..0x218], 3),
            Probed::Unknown { .. }
        ));
        assert!(matches!(
            decode_rebar("g", &vec![0xFF; 4096], 1),
            Probed::Unknown { .. }
        ));
    }

    #[test]
    fn no_acs_is_known_none() {
        let cfg = decode_bridge_config("b", &bridge_config(None));
        assert_eq!(cfg.known().unwrap().acs, Probed::Known(None));
    }

    #[test]
    fn short_reads_say_why() {
        let c = bridge_config(Some(0x1d));
        assert!(matches!(
            decode_bridge_config("b", &c[..64]),
            Probed::Unknown {
                unknown: Why::NeedsRoot,
                ..
            }
        ));
        let std_only = decode_bridge_config("b", &c[..256]);
        assert!(matches!(
            std_only.known().unwrap().acs,
            Probed::Unknown {
                unknown: Why::Absent,
                ..
            }
        ));
    }

    #[test]
    fn loops_and_garbage_terminate() {
        let mut c = bridge_config(None);
        // Extended cap pointing at itself, standard cap pointing at itself.
        c[0x100..0x104].copy_from_slice(&(0x0001u32 | 0x100 << 20).to_le_bytes());
        c[0x61] = 0x60;
        c[0x60] = 0x05;
        let cfg = decode_bridge_config("b", &c);
        // A loop is "not checked", never "no ACS".
        assert!(matches!(
            &cfg.known().unwrap().acs,
            Probed::Unknown { unknown: Why::Unparsable, detail, .. } if detail.contains("loops")
        ));
        for len in [65, 70, 255, 257, 300, 4096] {
            let d = decode_bridge_config("b", &vec![0xFF; len]);
            assert!(
                matches!(&d, Probed::Unknown { detail, .. } if detail.contains("does not respond")),
                "{len}: {d:?}"
            );
        }
        // A pointer past what was read is not checked either.
        let mut short = bridge_config(None);
        short[0x100..0x104].copy_from_slice(&(0x0001u32 | 0xFF0 << 20).to_le_bytes());
        let d = decode_bridge_config("b", &short[..0x200]);
        assert!(matches!(d.known().unwrap().acs, Probed::Unknown { .. }));
    }
}
