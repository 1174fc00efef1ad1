//! One kernel message -> the event rules use, or nothing.
//!
//! The formats are the kernel's and the NVIDIA module's own printf strings (cited at each
//! parser); messages that do not match exactly are ignored rather than guessed at.

use crate::facts::{AerEvent, BusEvent, IommuFault, LinkLimitedLine, XidEvent};

/// A message of the log, already stripped of its time stamp and syslog fields.
pub enum Event {
    Xid(XidEvent),
    FellOffBus(BusEvent),
    /// The first line of an AER report; its error names follow on lines of their own.
    AerHeader(AerEvent),
    /// `[ 0] RxErr  (First)` of the report above it on the same device.
    AerBit {
        device: String,
        name: String,
    },
    Iommu(IommuFault),
    LinkLimited(LinkLimitedLine),
    /// `Linux version ...`: a new boot begins.
    Boot,
}

/// Whether `s` is a PCI address as the kernel names devices: "0000:0a:00.0" (domain of 4 or
/// more hex digits, bus 2, device 2, function 1).
pub fn is_bdf(s: &str) -> bool {
    let Some((dom, rest)) = s.split_once(':') else {
        return false;
    };
    let b = rest.as_bytes();
    dom.len() >= 4
        && dom.bytes().all(|c| c.is_ascii_hexdigit())
        && b.len() == 7
        && b[2] == b':'
        && b[5] == b'.'
        && [0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_hexdigit())
        && (b'0'..=b'7').contains(&b[6])
}

/// "0a:00.0" (bus, device, function without a domain) -> "0000:0a:00.0".
fn with_domain(s: &str) -> Option<String> {
    let full = if s.matches(':').count() == 1 {
        format!("0000:{s}")
    } else {
        s.to_string()
    };
    let full = full.to_ascii_lowercase();
    is_bdf(&full).then_some(full)
}

/// `dev_printk`'s prefix, "<driver or bus> <device>: ", e.g. "pcieport 0000:00:03.1: " or
/// "nvidia 0000:0a:00.0: ", split off the message (drivers/base/core.c `__dev_printk`).
fn dev_prefix(msg: &str) -> Option<(String, &str)> {
    let (who, rest) = msg.split_once(' ')?;
    if who.is_empty() || who.contains(':') {
        return None;
    }
    let (dev, rest) = rest.split_once(": ")?;
    is_bdf(dev).then(|| (dev.to_ascii_lowercase(), rest))
}

pub fn parse(msg: &str, time_s: Option<f64>) -> Option<Event> {
    let msg = msg.trim_end();
    if msg.starts_with("Linux version ") {
        return Some(Event::Boot);
    }
    if let Some(e) = xid(msg, time_s) {
        return Some(Event::Xid(e));
    }
    if msg.contains("fallen off the bus") {
        return fell_off_bus(msg, time_s).map(Event::FellOffBus);
    }
    if let Some(e) = iommu(msg, time_s) {
        return Some(Event::Iommu(e));
    }
    let (dev, rest) = dev_prefix(msg)?;
    // aer.c prints through pci_info/pci_err with `#define dev_fmt(fmt) "AER: " fmt` since 4.19.
    let rest = rest.strip_prefix("AER: ").unwrap_or(rest);
    if let Some(h) = rest.strip_prefix("PCIe Bus Error: ") {
        return aer_header(&dev, h, time_s).map(Event::AerHeader);
    }
    if let Some(name) = aer_bit(rest) {
        return Some(Event::AerBit { device: dev, name });
    }
    link_limited(&dev, rest, time_s).map(Event::LinkLimited)
}

/// `NVRM: Xid (PCI:0000:0a:00): 79, pid=1234, name=python3, GPU has fallen off the bus.`
/// (older drivers: no pid/name, or `pid='<unknown>', name=<unknown>`).
fn xid(msg: &str, time_s: Option<f64>) -> Option<XidEvent> {
    let at = msg.find("NVRM: Xid (PCI:")?;
    let rest = &msg[at + "NVRM: Xid (PCI:".len()..];
    let (bus, rest) = rest.split_once("): ")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let code: u32 = rest[..digits].parse().ok()?;
    let mut rest = rest[digits..].trim_start_matches(',').trim_start();
    let mut pid = None;
    let mut process = None;
    if let Some(r) = rest.strip_prefix("pid=") {
        let (v, r) = r.split_once(", ").unwrap_or((r, ""));
        pid = v.parse().ok();
        rest = r;
    }
    if let Some(r) = rest.strip_prefix("name=") {
        let (v, r) = r.split_once(", ").unwrap_or((r, ""));
        process = Some(v.to_string()).filter(|v| v != "<unknown>");
        rest = r;
    }
    let bus = bus.to_ascii_lowercase();
    let bus_ok =
        bus.split(':').count() == 3 && bus.bytes().all(|c| c.is_ascii_hexdigit() || c == b':');
    bus_ok.then(|| XidEvent {
        time_s,
        bus_id: bus,
        code,
        pid,
        process,
        text: rest.trim().to_string(),
    })
}

/// A line that says a GPU fell off the bus, and the GPU it names (the first PCI address in
/// it: "NVRM: GPU 0000:0a:00.0: GPU has fallen off the bus.", "NVRM: GPU at PCI:0000:0a:00:
/// ...").
fn fell_off_bus(msg: &str, time_s: Option<f64>) -> Option<BusEvent> {
    let bus_id = msg
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .map(|w| w.trim_start_matches("PCI:").trim_end_matches(':'))
        .find(|w| {
            is_bdf(w) || (w.split(':').count() == 3 && w.len() == 10 && is_bdf(&format!("{w}.0")))
        })?;
    Some(BusEvent {
        time_s,
        bus_id: bus_id.to_ascii_lowercase(),
        line: msg.to_string(),
    })
}

/// `severity=Corrected, type=Physical Layer, (Receiver ID)` (kernels since 6.x say
/// "Correctable" and "Uncorrectable (Non-Fatal)"; older "Corrected", "Uncorrected (Fatal)").
fn aer_header(dev: &str, h: &str, time_s: Option<f64>) -> Option<AerEvent> {
    let sev = h.strip_prefix("severity=")?;
    let (sev, rest) = sev.split_once(", ")?;
    let severity = if sev.contains("Non-Fatal") {
        "non-fatal"
    } else if sev.contains("Fatal") {
        "fatal"
    } else if sev.starts_with("Correct") {
        "corrected"
    } else {
        return None;
    };
    let error_type = rest
        .strip_prefix("type=")
        .map(|t| t.split_once(',').map_or(t, |(a, _)| a).trim())
        .unwrap_or("")
        .to_string();
    Some(AerEvent {
        time_s,
        device: dev.to_string(),
        severity: severity.into(),
        error_type,
        errors: Vec::new(),
    })
}

/// `   [ 0] RxErr                  (First)`: one status bit of the report above.
fn aer_bit(rest: &str) -> Option<String> {
    let r = rest.trim_start().strip_prefix('[')?;
    let (n, name) = r.split_once(']')?;
    n.trim().parse::<u8>().ok().filter(|&b| b < 32)?;
    let name = name.trim().trim_end_matches("(First)").trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// AMD-Vi and Intel DMAR fault lines and the device they name.
///
/// AMD (drivers/iommu/amd/iommu.c): `AMD-Vi: Event logged [IO_PAGE_FAULT device=0a:00.0
/// domain=0x000d address=0x... flags=0x0020]`, since 5.x with the device as the dev_printk
/// prefix instead (`nvidia 0000:0a:00.0: AMD-Vi: Event logged [IO_PAGE_FAULT domain=...`).
/// Intel (drivers/iommu/intel/dmar.c): `DMAR: [DMA Read NO_PASID] Request device [0a:00.0]
/// fault addr 0x... [fault reason 0x06] PTE Read access is not set`.
fn iommu(msg: &str, time_s: Option<f64>) -> Option<IommuFault> {
    if let Some(at) = msg.find("Event logged [") {
        if !msg[..at].contains("AMD-Vi") && !msg.contains("IO_PAGE_FAULT") {
            return None;
        }
        let body = &msg[at + "Event logged [".len()..];
        let body = body.split_once(']').map_or(body, |(b, _)| b);
        let mut words = body.split_whitespace();
        let kind = words.next()?.to_string();
        let field = |k: &str| {
            body.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(|v| v.trim_end_matches(','))
        };
        let device = field("device=")
            .and_then(with_domain)
            .or_else(|| dev_prefix(msg).map(|(d, _)| d))?;
        return Some(IommuFault {
            time_s,
            device,
            kind,
            address: field("address=").map(String::from),
            line: msg.to_string(),
        });
    }
    let at = msg.find("DMAR: [")?;
    let body = &msg[at + "DMAR: [".len()..];
    let (kind, rest) = body.split_once(']')?;
    // An interrupt-remapping fault is not a refused DMA.
    if kind.starts_with("INTR-REMAP") {
        return None;
    }
    let kind = kind.trim_end_matches(" NO_PASID").to_string();
    let dev = rest.split_once("Request device [")?.1.split_once(']')?.0;
    let address = rest
        .split_once("fault addr ")
        .map(|(_, a)| a.split_whitespace().next().unwrap_or("").to_string())
        .filter(|a| !a.is_empty());
    Some(IommuFault {
        time_s,
        device: with_domain(dev)?,
        kind,
        address,
        line: msg.to_string(),
    })
}

/// drivers/pci/pci.c `__pcie_print_link_status`: "%u.%03u Gb/s available PCIe bandwidth,
/// limited by %s x%d link at %s (capable of %u.%03u Gb/s with %s x%d link)".
fn link_limited(dev: &str, rest: &str, time_s: Option<f64>) -> Option<LinkLimitedLine> {
    let (avail, rest) = rest.split_once(" Gb/s available PCIe bandwidth, limited by ")?;
    let (limited_by, rest) = rest.split_once(" link at ")?;
    let (at, rest) = rest.split_once(" (capable of ")?;
    let (cap, rest) = rest.split_once(" Gb/s with ")?;
    let capable = rest.strip_suffix(" link)")?;
    let available_gbps: f64 = avail.trim().parse().ok()?;
    let capable_gbps: f64 = cap.trim().parse().ok()?;
    (is_bdf(at) && available_gbps.is_finite() && capable_gbps.is_finite()).then(|| {
        LinkLimitedLine {
            time_s,
            device: dev.to_string(),
            available_gbps,
            limited_by: limited_by.to_string(),
            at: at.to_ascii_lowercase(),
            capable_gbps,
            capable: capable.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xid_of(m: &str) -> XidEvent {
        match parse(m, Some(1.0)) {
            Some(Event::Xid(x)) => x,
            _ => panic!("not an Xid: {m}"),
        }
    }

    #[test]
    fn xid_lines_of_old_and_new_drivers() {
        let x = xid_of(
            "NVRM: Xid (PCI:0000:0a:00): 79, pid=1234, name=python3, GPU has fallen off the bus.",
        );
        assert_eq!(
            (x.bus_id.as_str(), x.code, x.pid),
            ("0000:0a:00", 79, Some(1234))
        );
        assert_eq!(x.process.as_deref(), Some("python3"));
        assert_eq!(x.text, "GPU has fallen off the bus.");
        let x = xid_of("NVRM: Xid (PCI:0000:0A:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.");
        assert_eq!((x.pid, x.process), (None, None));
        assert_eq!(x.bus_id, "0000:0a:00");
        let x = xid_of("NVRM: Xid (PCI:0000:01:00): 13, Graphics SM Warp Exception on (GPC 0, TPC 0, SM 0): Out Of Range Address");
        assert_eq!(x.code, 13);
        assert!(x.text.starts_with("Graphics SM Warp"));
        assert!(parse("NVRM: Xid (PCI:0000:01:00): , nothing", None).is_none());
        assert!(parse("NVRM: Xid (PCI:zz): 79, x", None).is_none());
    }

    #[test]
    fn aer_reports_old_and_new_wording() {
        let Some(Event::AerHeader(a)) = parse(
            "pcieport 0000:00:03.1: AER: PCIe Bus Error: severity=Corrected, type=Physical Layer, (Receiver ID)",
            None,
        ) else {
            panic!()
        };
        assert_eq!(
            (
                a.device.as_str(),
                a.severity.as_str(),
                a.error_type.as_str()
            ),
            ("0000:00:03.1", "corrected", "Physical Layer")
        );
        let Some(Event::AerHeader(a)) = parse(
            "nvidia 0000:0a:00.0: PCIe Bus Error: severity=Uncorrectable (Non-Fatal), type=Transaction Layer, (Requester ID)",
            None,
        ) else {
            panic!()
        };
        assert_eq!(a.severity, "non-fatal");
        let Some(Event::AerHeader(a)) = parse(
            "pcieport 0000:00:01.1: AER: PCIe Bus Error: severity=Uncorrected (Fatal), type=Transaction Layer, (Receiver ID)",
            None,
        ) else {
            panic!()
        };
        assert_eq!(a.severity, "fatal");
        let Some(Event::AerBit { device, name }) = parse(
            "pcieport 0000:00:03.1: AER:    [ 0] RxErr                  (First)",
            None,
        ) else {
            panic!()
        };
        assert_eq!((device.as_str(), name.as_str()), ("0000:00:03.1", "RxErr"));
        assert!(parse(
            "pcieport 0000:00:03.1: AER:   device [1022:1453] error status/mask=00000001/00006000",
            None
        )
        .is_none());
    }

    #[test]
    fn iommu_faults_amd_and_intel() {
        let Some(Event::Iommu(f)) = parse("AMD-Vi: Event logged [IO_PAGE_FAULT device=0a:00.0 domain=0x000d address=0x1fff00000 flags=0x0020]", None) else { panic!() };
        assert_eq!(
            (f.device.as_str(), f.kind.as_str(), f.address.as_deref()),
            ("0000:0a:00.0", "IO_PAGE_FAULT", Some("0x1fff00000"))
        );
        let Some(Event::Iommu(f)) = parse("nvidia 0000:42:00.0: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x0010 address=0xfd000000 flags=0x0020]", None) else { panic!() };
        assert_eq!(f.device, "0000:42:00.0");
        let Some(Event::Iommu(f)) = parse("DMAR: [DMA Read NO_PASID] Request device [65:00.0] fault addr 0xfee00000 [fault reason 0x06] PTE Read access is not set", None) else { panic!() };
        assert_eq!(
            (f.device.as_str(), f.kind.as_str(), f.address.as_deref()),
            ("0000:65:00.0", "DMA Read", Some("0xfee00000"))
        );
        let Some(Event::Iommu(f)) = parse("DMAR: [DMA Write] Request device [65:00.0] PASID ffffffff fault addr 7fe7b000 [fault reason 05] PTE Write access is not set", None) else { panic!() };
        assert_eq!(f.kind, "DMA Write");
        assert!(parse("DMAR: DRHD: handling fault status reg 2", None).is_none());
        assert!(parse("DMAR: [INTR-REMAP] Request device [65:00.0] fault index 0x1c [fault reason 0x22] Present field in the IRTE entry is clear", None).is_none());
    }

    #[test]
    fn the_boot_time_link_line() {
        let Some(Event::LinkLimited(l)) = parse("pci 0000:0b:00.0: 31.504 Gb/s available PCIe bandwidth, limited by 8.0 GT/s PCIe x4 link at 0000:00:01.1 (capable of 252.048 Gb/s with 16.0 GT/s PCIe x16 link)", None) else { panic!() };
        assert_eq!(
            (
                l.device.as_str(),
                l.at.as_str(),
                l.limited_by.as_str(),
                l.capable.as_str()
            ),
            (
                "0000:0b:00.0",
                "0000:00:01.1",
                "8.0 GT/s PCIe x4",
                "16.0 GT/s PCIe x16"
            )
        );
        assert!((l.available_gbps - 31.504).abs() < 1e-9);
    }

    #[test]
    fn other_lines_are_nothing() {
        for m in [
            "",
            "nvidia: loading out-of-tree module taints kernel.",
            "pci 0000:0a:00.0: [10de:2204] type 00 class 0x030000",
            "x 0000:0a:00.0:",
            "pcieport 0000:00:03.1: AER: [ 99] Bogus",
            "ab:cd: [ 0] RxErr",
        ] {
            assert!(parse(m, None).is_none(), "{m}");
        }
        assert!(matches!(
            parse(
                "Linux version 6.8.0-45-generic (buildd@lcy02) #45-Ubuntu",
                None
            ),
            Some(Event::Boot)
        ));
        assert!(is_bdf("0000:0a:00.0") && is_bdf("10000:e1:00.7"));
        assert!(!is_bdf("0000:0a:00.8") && !is_bdf("0a:00.0") && !is_bdf("0000:0a:00"));
    }
}
