//! What the current boot's kernel log says about the GPUs and their PCIe paths.
//!
//! Only the lines rules use are kept, already split into fields; the raw line stays as `line`
//! so a person can find it with `dmesg | grep`. Every list is bounded ([`KernelLog::MAX_EVENTS`]
//! per kind, the newest kept), so a link that logs an AER burst a second cannot grow a report
//! without limit.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelLog {
    /// Where it was read: "/dev/kmsg", "journalctl -k -b", or a file of a --sysroot tree.
    pub source: String,
    /// Seconds since boot, on the clock of the log's time stamps, when it was read; what
    /// "ago" is measured from. None when the log has no time stamps.
    pub now_s: Option<f64>,
    /// What `now_s` is: "when rigdoctor read it", or "the log's last line" for a saved file.
    pub now_is: String,
    /// Lines of the current boot that were read.
    pub lines: usize,
    /// Why older lines of this boot are missing (the ring buffer wrapped, the read was
    /// bounded, a list hit its bound); None when the whole boot was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
    #[serde(default)]
    pub xid: Vec<XidEvent>,
    /// "GPU has fallen off the bus" lines (other than the Xid 79 line itself).
    #[serde(default)]
    pub fell_off_bus: Vec<BusEvent>,
    #[serde(default)]
    pub aer: Vec<AerEvent>,
    #[serde(default)]
    pub iommu_faults: Vec<IommuFault>,
    #[serde(default)]
    pub link_limited: Vec<LinkLimitedLine>,
}

impl KernelLog {
    /// The most events of one kind a report keeps.
    pub const MAX_EVENTS: usize = 2000;

    /// The Xid events of a GPU: the Xid line names bus and device only ("PCI:0000:0a:00"), so
    /// every function of that device matches.
    pub fn xids_of<'a>(&'a self, bdf: &'a str) -> impl Iterator<Item = &'a XidEvent> + 'a {
        self.xid.iter().filter(move |x| same_device(&x.bus_id, bdf))
    }
}

/// Whether a bus id as the NVIDIA driver prints it ("0000:0a:00", no function) names the
/// device of the PCI function `bdf` ("0000:0a:00.0").
pub fn same_device(bus_id: &str, bdf: &str) -> bool {
    let dev = bdf.rsplit_once('.').map_or(bdf, |(d, _)| d);
    bus_id.eq_ignore_ascii_case(dev) || bus_id.eq_ignore_ascii_case(bdf)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XidEvent {
    /// Seconds since boot (the line's time stamp).
    pub time_s: Option<f64>,
    /// "0000:0a:00": domain, bus and device, as NVRM prints it.
    pub bus_id: String,
    pub code: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The process's name, as NVRM prints it (`name=python3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// What follows the code and the pid/name fields.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusEvent {
    pub time_s: Option<f64>,
    /// The GPU as the line names it: "0000:0a:00" or "0000:0a:00.0".
    pub bus_id: String,
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AerEvent {
    pub time_s: Option<f64>,
    /// The function whose error registers were read ("0000:0a:00.0").
    pub device: String,
    /// "corrected", "non-fatal" or "fatal".
    pub severity: String,
    /// "Physical Layer", "Data Link Layer", "Transaction Layer".
    pub error_type: String,
    /// The status bits the kernel named ("RxErr", "BadTLP", ...).
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IommuFault {
    pub time_s: Option<f64>,
    /// The requester ("0000:0a:00.0"); the domain is 0000 where the kernel's line has none.
    pub device: String,
    /// "IO_PAGE_FAULT" (AMD-Vi), "DMA Read" / "DMA Write" (Intel DMAR), ...
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub line: String,
}

/// `pci 0000:0a:00.0: 31.504 Gb/s available PCIe bandwidth, limited by 8.0 GT/s PCIe x4 link
/// at 0000:00:01.1 (capable of 252.048 Gb/s with 16.0 GT/s PCIe x16 link)`, printed when the
/// device is enumerated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkLimitedLine {
    pub time_s: Option<f64>,
    pub device: String,
    pub available_gbps: f64,
    /// "8.0 GT/s PCIe x4".
    pub limited_by: String,
    /// The link that limits it: the device itself or a bridge above it.
    pub at: String,
    pub capable_gbps: f64,
    /// "16.0 GT/s PCIe x16".
    pub capable: String,
}

/// "3 min before this run", for an event at `t` when the log was read at `now`.
pub fn ago(t: Option<f64>, now: Option<f64>, now_is: &str) -> String {
    let (Some(t), Some(now)) = (t, now) else {
        return "time unknown".into();
    };
    let d = (now - t).max(0.0);
    if d < 1.0 {
        return format!("at {now_is}");
    }
    let span = if d < 90.0 {
        format!("{d:.0} s")
    } else if d < 90.0 * 60.0 {
        format!("{:.0} min", d / 60.0)
    } else if d < 48.0 * 3600.0 {
        let h = (d / 3600.0).floor();
        format!("{h:.0} h {:.0} min", (d - h * 3600.0) / 60.0)
    } else {
        format!("{:.0} days", d / 86400.0)
    };
    format!("{span} before {now_is}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xid_bus_ids_name_a_device_not_a_function() {
        assert!(same_device("0000:0a:00", "0000:0a:00.0"));
        assert!(same_device("0000:0A:00", "0000:0a:00.1"));
        assert!(same_device("0000:0a:00.0", "0000:0a:00.0"));
        assert!(!same_device("0000:0a:00", "0000:0b:00.0"));
        assert!(!same_device("0000:0a:0", "0000:0a:00.0"));
    }

    #[test]
    fn ages_read_like_a_person_says_them() {
        let now = "this run";
        assert_eq!(ago(Some(10.0), Some(40.0), now), "30 s before this run");
        assert_eq!(ago(Some(0.0), Some(600.0), now), "10 min before this run");
        assert_eq!(
            ago(Some(0.0), Some(7800.0), now),
            "2 h 10 min before this run"
        );
        assert_eq!(
            ago(Some(0.0), Some(5.0 * 86400.0), now),
            "5 days before this run"
        );
        assert_eq!(ago(None, Some(1.0), now), "time unknown");
        assert_eq!(ago(Some(3.0), Some(3.2), now), "at this run");
    }
}
