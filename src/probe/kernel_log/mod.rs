//! The current boot's kernel log: where it is read from, and its record formats.
//!
//! Live: `/dev/kmsg` (root, or `kernel.dmesg_restrict=0`), else `journalctl -k -b`, else the
//! reason neither could be read. Under `--sysroot`: the tree's `dev/kmsg` (a regular file in
//! the /dev/kmsg record format, e.g. `cat /dev/kmsg` captured with a timeout) or
//! `var/log/kern.log` (syslog format). Only reading: /dev/kmsg is opened read-only, which
//! neither clears nor moves anything another reader sees (Documentation/ABI/testing/dev-kmsg).

mod events;
mod records;

use crate::facts::{AerEvent, KernelLog, Probed, Why};
use crate::sysroot::Sysroot;
use events::Event;
use std::collections::VecDeque;
use std::time::Duration;

/// The most of a log that is read: the kernel's ring buffer is at most 32 MiB
/// (CONFIG_LOG_BUF_SHIFT <= 25), a kern.log may be far larger; its newest part is read.
const MAX_BYTES: u64 = 32 << 20;
/// How long reading the log may take before what was read is used.
const DEADLINE: Duration = Duration::from_secs(5);
/// The most error names one AER report lists (a 32-bit status register).
const MAX_AER_BITS: usize = 32;

pub fn probe(root: &Sysroot) -> Probed<KernelLog> {
    if root.root() == std::path::Path::new("/") {
        live()
    } else {
        saved(root)
    }
}

fn live() -> Probed<KernelLog> {
    let kmsg = records::read_dev_kmsg("/dev/kmsg", MAX_BYTES, DEADLINE);
    if kmsg.known().is_some() {
        return kmsg;
    }
    let journal = records::read_journal(DEADLINE, MAX_BYTES);
    if journal.known().is_some() {
        return journal;
    }
    // Root (or dmesg_restrict=0) is what reading /dev/kmsg needs; say so first.
    let why = match (&kmsg, &journal) {
        (Probed::Unknown { unknown, .. }, _) if *unknown == Why::NeedsRoot => Why::NeedsRoot,
        (_, Probed::Unknown { unknown, .. }) => *unknown,
        _ => Why::IoError,
    };
    Probed::unknown(
        why,
        format!(
            "{}; {}",
            kmsg.why_unknown().unwrap_or_default(),
            journal.why_unknown().unwrap_or_default()
        ),
    )
}

fn saved(root: &Sysroot) -> Probed<KernelLog> {
    for (abs, format) in [
        ("/dev/kmsg", records::Format::Kmsg),
        ("/var/log/kern.log", records::Format::Syslog),
    ] {
        if !root.exists(abs) {
            continue;
        }
        return root.read_tail(abs, MAX_BYTES).map(|(bytes, cut)| {
            let mut c = Collector::new(&format!("{abs} of the --sysroot tree"));
            if cut {
                c.partial(format!(
                    "only the last {} MiB of the file were read",
                    MAX_BYTES >> 20
                ));
            }
            records::feed(&String::from_utf8_lossy(&bytes), format, &mut c);
            c.finish(None, "the log's last line")
        });
    }
    Probed::unknown(
        Why::Absent,
        "the tree has neither dev/kmsg nor var/log/kern.log",
    )
}

/// Builds a [`KernelLog`] line by line, keeping the current boot only.
pub struct Collector {
    log: KernelLog,
    xid: VecDeque<crate::facts::XidEvent>,
    fell: VecDeque<crate::facts::BusEvent>,
    aer: VecDeque<AerEvent>,
    iommu: VecDeque<crate::facts::IommuFault>,
    link: VecDeque<crate::facts::LinkLimitedLine>,
    /// An AER report whose error names may still follow.
    open_aer: bool,
    last_time: Option<f64>,
    dropped: usize,
}

fn bounded<T>(q: &mut VecDeque<T>, v: T, dropped: &mut usize) {
    if q.len() == KernelLog::MAX_EVENTS {
        q.pop_front();
        *dropped += 1;
    }
    q.push_back(v);
}

impl Collector {
    pub fn new(source: &str) -> Collector {
        Collector {
            log: KernelLog {
                source: source.to_string(),
                now_s: None,
                now_is: String::new(),
                lines: 0,
                partial: None,
                xid: Vec::new(),
                fell_off_bus: Vec::new(),
                aer: Vec::new(),
                iommu_faults: Vec::new(),
                link_limited: Vec::new(),
            },
            xid: VecDeque::new(),
            fell: VecDeque::new(),
            aer: VecDeque::new(),
            iommu: VecDeque::new(),
            link: VecDeque::new(),
            open_aer: false,
            last_time: None,
            dropped: 0,
        }
    }

    /// Say why the log is incomplete (the first reason stays first).
    pub fn partial(&mut self, why: String) {
        match &mut self.log.partial {
            Some(p) => {
                if !p.contains(&why) {
                    p.push_str("; ");
                    p.push_str(&why);
                }
            }
            None => self.log.partial = Some(why),
        }
    }

    pub fn push(&mut self, time_s: Option<f64>, msg: &str) {
        self.log.lines += 1;
        if time_s.is_some() {
            self.last_time = time_s;
        }
        let d = &mut self.dropped;
        match events::parse(msg, time_s) {
            None => return,
            Some(Event::Boot) => {
                // Everything before belongs to an earlier boot.
                let source = std::mem::take(&mut self.log.source);
                *self = Collector::new(&source);
                self.log.lines = 1;
                self.last_time = time_s;
                return;
            }
            Some(Event::Xid(x)) => bounded(&mut self.xid, x, d),
            Some(Event::FellOffBus(b)) => bounded(&mut self.fell, b, d),
            Some(Event::Iommu(f)) => bounded(&mut self.iommu, f, d),
            Some(Event::LinkLimited(l)) => bounded(&mut self.link, l, d),
            Some(Event::AerHeader(a)) => {
                bounded(&mut self.aer, a, d);
                self.open_aer = true;
                return;
            }
            Some(Event::AerBit { device, name }) => {
                if let Some(a) = self
                    .aer
                    .back_mut()
                    .filter(|a| self.open_aer && a.device == device)
                {
                    if a.errors.len() < MAX_AER_BITS && !a.errors.contains(&name) {
                        a.errors.push(name);
                    }
                }
                return;
            }
        }
        self.open_aer = false;
    }

    pub fn finish(mut self, now_s: Option<f64>, now_is: &str) -> KernelLog {
        if self.dropped > 0 {
            self.partial(format!(
                "{} older events were dropped (at most {} of a kind are kept)",
                self.dropped,
                KernelLog::MAX_EVENTS
            ));
        }
        self.log.now_s = now_s.or(self.last_time);
        self.log.now_is = if now_s.is_some() {
            now_is
        } else {
            "the log's last line"
        }
        .into();
        self.log.xid = self.xid.into();
        self.log.fell_off_bus = self.fell.into();
        self.log.aer = self.aer.into();
        self.log.iommu_faults = self.iommu.into();
        self.log.link_limited = self.link.into();
        self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_boot_forgets_the_last_one_and_aer_bits_join_their_report() {
        let mut c = Collector::new("t");
        c.push(
            Some(5.0),
            "NVRM: Xid (PCI:0000:0a:00): 79, pid=1, name=x, GPU has fallen off the bus.",
        );
        c.push(Some(0.0), "Linux version 6.8.0 (buildd@host) #1 SMP");
        c.push(Some(1.0), "pcieport 0000:00:03.1: AER: PCIe Bus Error: severity=Corrected, type=Physical Layer, (Receiver ID)");
        c.push(
            Some(1.0),
            "pcieport 0000:00:03.1: AER:   device [1022:1453] error status/mask=00000041/00006000",
        );
        c.push(
            Some(1.0),
            "pcieport 0000:00:03.1: AER:    [ 0] RxErr                  (First)",
        );
        c.push(Some(1.0), "pcieport 0000:00:03.1: AER:    [ 6] BadTLP");
        c.push(Some(2.0), "some other line");
        c.push(Some(2.0), "pcieport 0000:00:03.1: AER:    [ 7] BadDLLP");
        c.push(Some(2.0), "pcieport 0000:00:01.1: AER:    [12] Timeout");
        let log = c.finish(None, "x");
        assert!(log.xid.is_empty());
        assert_eq!(log.lines, 8);
        assert_eq!(log.aer.len(), 1);
        // Lines of other devices may come between a report's lines; a bit of another device
        // is not this report's.
        assert_eq!(log.aer[0].errors, ["RxErr", "BadTLP", "BadDLLP"]);
        assert_eq!(log.now_s, Some(2.0));
        assert_eq!(log.now_is, "the log's last line");
    }

    #[test]
    fn lists_are_bounded_and_say_so() {
        let mut c = Collector::new("t");
        for i in 0..KernelLog::MAX_EVENTS + 5 {
            c.push(
                Some(i as f64),
                "NVRM: Xid (PCI:0000:0a:00): 13, Graphics Exception",
            );
        }
        let log = c.finish(Some(1e6), "this run");
        assert_eq!(log.xid.len(), KernelLog::MAX_EVENTS);
        assert_eq!(log.xid[0].time_s, Some(5.0));
        assert!(log.partial.unwrap().contains("5 older events were dropped"));
        assert_eq!(log.now_is, "this run");
    }

    #[test]
    fn a_tree_without_a_log_is_unknown_not_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let p = probe(&Sysroot::new(dir.path()));
        assert!(matches!(
            p,
            Probed::Unknown {
                unknown: Why::Absent,
                ..
            }
        ));
    }
}
