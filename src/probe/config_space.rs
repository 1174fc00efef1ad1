//! Decoding PCI configuration space: the PCI Express capability and the ACS extended capability.
//!
//! Offsets follow the PCI Express Base Specification as mirrored in Linux'
//! `include/uapi/linux/pci_regs.h`. Every walk is bounded, so a corrupt or hostile file cannot loop.

use crate::facts::{Acs, BridgeConfig, Probed, Why};

const STATUS: usize = 0x06;
const STATUS_CAP_LIST: u16 = 0x10;
const CAP_POINTER: usize = 0x34;
const CAP_ID_EXP: u8 = 0x10;
const EXP_FLAGS: usize = 0x02;
const EXT_CAP_START: usize = 0x100;
const EXT_CAP_ID_ACS: u16 = 0x000D;
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

/// Decode what the rules need from a bridge's `config` file.
pub fn decode_bridge_config(bdf: &str, c: &[u8]) -> Probed<BridgeConfig> {
    if c.len() <= UNPRIVILEGED_LEN {
        return Probed::unknown(
            Why::NeedsRoot,
            format!(
                "{bdf} config space readable to {} bytes only (run as root)",
                c.len()
            ),
        );
    }
    // A device that stopped answering (fell off the bus, powered down) reads all ones.
    if c.iter().take(64).all(|&b| b == 0xFF) {
        return Probed::unknown(
            Why::IoError,
            format!("{bdf}: config space reads all 0xFF: the device does not respond"),
        );
    }
    let port_type = match find_cap(c, CAP_ID_EXP).and_then(|p| u16_at(c, p + EXP_FLAGS)) {
        Some(flags) => Probed::Known(port_type_name((flags >> 4) & 0xF)),
        None => Probed::unknown(Why::Absent, format!("{bdf} has no PCI Express capability")),
    };
    let acs = if c.len() <= EXT_CAP_START {
        Probed::unknown(
            Why::Absent,
            format!(
                "{bdf}: extended config space not exposed ({} bytes)",
                c.len()
            ),
        )
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
