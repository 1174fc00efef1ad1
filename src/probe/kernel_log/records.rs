//! The record formats a kernel log comes in, each turned into (seconds since boot, message).

use super::Collector;
use crate::facts::{KernelLog, Probed, Why};
use std::io::Read;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// `/dev/kmsg`: "prio,seq,usec,flags[,...];message", dictionary lines start with a space
    /// (Documentation/ABI/testing/dev-kmsg).
    Kmsg,
    /// rsyslog's kern.log: "Dec  1 10:00:00 host kernel: [   12.345678] message", or with an
    /// RFC 3339 date first (Ubuntu 24.04), the bracketed time stamp then optional.
    Syslog,
    /// `journalctl -o short-monotonic`: "[   12.345678] host kernel: message".
    Journal,
}

/// Feed every line of `text` to the collector.
pub fn feed(text: &str, format: Format, c: &mut Collector) {
    let mut boot_epoch: Option<f64> = None;
    for line in text.lines() {
        match format {
            Format::Kmsg => {
                if let Some((t, m)) = kmsg_record(line) {
                    c.push(t, m);
                }
            }
            Format::Syslog => {
                if let Some((t, m)) = syslog_line(line, &mut boot_epoch) {
                    c.push(t, m);
                }
            }
            Format::Journal => {
                if let Some((t, m)) = journal_line(line) {
                    c.push(t, m);
                }
            }
        }
    }
}

/// "6,1234,5678901,-;message" -> (5.678901, "message"); a dictionary line (" DEVICE=...")
/// or anything else is None.
fn kmsg_record(line: &str) -> Option<(Option<f64>, &str)> {
    if line.starts_with(' ') {
        return None;
    }
    let (head, msg) = line.split_once(';')?;
    let mut f = head.split(',');
    let _prio: u32 = f.next()?.parse().ok()?;
    let _seq: u64 = f.next()?.parse().ok()?;
    let usec: u64 = f.next()?.parse().ok()?;
    Some((Some(usec as f64 / 1e6), msg))
}

/// The sequence number of a /dev/kmsg record.
fn kmsg_seq(line: &str) -> Option<u64> {
    line.split_once(';')?.0.split(',').nth(1)?.parse().ok()
}

/// "[   12.345678] rest" -> (12.345678, "rest").
fn bracketed_time(s: &str) -> Option<(f64, &str)> {
    let r = s.strip_prefix('[')?;
    let (t, rest) = r.split_once(']')?;
    let t: f64 = t.trim().parse().ok()?;
    t.is_finite()
        .then_some((t, rest.strip_prefix(' ').unwrap_or(rest)))
}

/// A kernel line of kern.log. The time is the bracketed stamp when the line has one, else
/// (RFC 3339 dates) the seconds since the boot's first line.
fn syslog_line<'a>(line: &'a str, boot_epoch: &mut Option<f64>) -> Option<(Option<f64>, &'a str)> {
    let (head, msg) = line.split_once(" kernel: ")?;
    if let Some((t, m)) = bracketed_time(msg) {
        return Some((Some(t), m));
    }
    let epoch = head.split_whitespace().next().and_then(rfc3339_epoch);
    if msg.starts_with("Linux version ") {
        *boot_epoch = epoch;
    }
    let since_boot = match (epoch, *boot_epoch) {
        (Some(e), Some(b)) => Some((e - b).max(0.0)),
        (Some(e), None) => {
            *boot_epoch = Some(e);
            Some(0.0)
        }
        _ => None,
    };
    Some((since_boot, msg))
}

/// "2024-05-01T10:00:00.123456+02:00" -> seconds since the Unix epoch.
fn rfc3339_epoch(s: &str) -> Option<f64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: i64 = d.next()?.parse().ok()?;
    let da: i64 = d.next()?.parse().ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) {
        return None;
    }
    let (clock, offset) = match time.find(['+', '-', 'Z']) {
        Some(i) => time.split_at(i),
        None => (time, ""),
    };
    let mut c = clock.split(':');
    let h: f64 = c.next()?.parse().ok()?;
    let mi: f64 = c.next()?.parse().ok()?;
    let sec: f64 = c.next()?.parse().ok()?;
    let off = match offset {
        "" | "Z" => 0.0,
        o => {
            let sign = if o.starts_with('-') { -1.0 } else { 1.0 };
            let (oh, om) = o[1..].split_once(':')?;
            sign * (oh.parse::<f64>().ok()? * 3600.0 + om.parse::<f64>().ok()? * 60.0)
        }
    };
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days as f64 * 86400.0 + h * 3600.0 + mi * 60.0 + sec - off;
    t.is_finite().then_some(t)
}

/// "[   12.345678] host kernel: message": kernel lines only.
fn journal_line(line: &str) -> Option<(Option<f64>, &str)> {
    let (t, rest) = bracketed_time(line)?;
    let (_, msg) = rest.split_once(" kernel: ")?;
    Some((Some(t), msg))
}

/// Seconds on the printk clock now. printk stamps with `local_clock()`, which like
/// CLOCK_MONOTONIC counts from boot and stops during suspend.
fn monotonic_now() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    (unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0)
        .then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

fn unknown_of(abs: &str, e: &std::io::Error) -> Probed<KernelLog> {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => Probed::unknown(
            Why::NeedsRoot,
            format!("{abs} is root-only here (kernel.dmesg_restrict)"),
        ),
        std::io::ErrorKind::NotFound => Probed::unknown(Why::Absent, abs.to_string()),
        _ => Probed::unknown(Why::IoError, format!("{abs}: {e}")),
    }
}

/// Every record /dev/kmsg still holds, read without blocking: one record per read(2), EAGAIN
/// at the end, EPIPE where records were overwritten while reading.
pub fn read_dev_kmsg(abs: &str, max_bytes: u64, deadline: Duration) -> Probed<KernelLog> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(abs);
    let mut f = match f {
        Ok(f) => f,
        Err(e) => return unknown_of(abs, &e),
    };
    let mut c = Collector::new(abs);
    // A record is at most CONSOLE_EXT_LOG_MAX (8 KiB) with its dictionary; a shorter buffer
    // gets EINVAL.
    let mut buf = vec![0u8; 16 << 10];
    let start = Instant::now();
    let mut total = 0u64;
    let mut first = true;
    loop {
        if start.elapsed() > deadline || total > max_bytes {
            c.partial("reading stopped at its bound; newer messages were not read".into());
            break;
        }
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                let rec = String::from_utf8_lossy(&buf[..n]);
                if first {
                    first = false;
                    if let Some(seq) = kmsg_seq(&rec).filter(|&s| s > 0) {
                        c.partial(format!(
                            "the kernel's ring buffer no longer holds this boot's first {seq} messages"
                        ));
                    }
                }
                feed(&rec, Format::Kmsg, &mut c);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                c.partial("messages were overwritten while they were read".into());
            }
            Err(e) => {
                if total == 0 {
                    return unknown_of(abs, &e);
                }
                c.partial(format!("reading stopped: {e}"));
                break;
            }
        }
    }
    Probed::Known(c.finish(monotonic_now(), "this run"))
}

/// `journalctl -k -b -o short-monotonic`, bounded in time and size; it dies with rigdoctor.
pub fn read_journal(deadline: Duration, max_bytes: u64) -> Probed<KernelLog> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    const WHAT: &str = "journalctl -k -b";
    let mut cmd = Command::new("journalctl");
    cmd.args(["-k", "-b", "-o", "short-monotonic", "--no-pager"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Probed::unknown(Why::Absent, "journalctl is not installed")
        }
        Err(e) => return Probed::unknown(Why::IoError, format!("{WHAT}: {e}")),
    };
    let out = child.stdout.take().map(|o| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = o.take(max_bytes).read_to_end(&mut buf);
            buf
        })
    });
    let err = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = e.take(64 << 10).read_to_end(&mut buf);
            buf
        })
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let stdout = join(out);
    let stderr = String::from_utf8_lossy(&join(err)).into_owned();
    let mut c = Collector::new(WHAT);
    match status {
        None => c.partial(format!(
            "journalctl did not finish within {} s",
            deadline.as_secs()
        )),
        Some(s) if !s.success() => {
            return Probed::unknown(
                Why::Failed,
                format!("{WHAT} exited with {s}: {}", first_line(&stderr)),
            )
        }
        Some(_) => {}
    }
    feed(&String::from_utf8_lossy(&stdout), Format::Journal, &mut c);
    let log = c.finish(monotonic_now(), "this run");
    if log.lines == 0 {
        // journalctl shows a user without the adm/systemd-journal group their own messages
        // only, and says so on stderr.
        let why = if stderr.contains("permission") || stderr.contains("not seeing messages") {
            Why::NeedsRoot
        } else {
            Why::Absent
        };
        return Probed::unknown(
            why,
            format!("{WHAT} gave no kernel messages: {}", first_line(&stderr)),
        );
    }
    Probed::Known(log)
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(nothing on stderr)")
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str, format: Format) -> KernelLog {
        let mut c = Collector::new("t");
        feed(text, format, &mut c);
        c.finish(None, "")
    }

    #[test]
    fn kmsg_records_and_their_dictionaries() {
        let log = lines(
            "0,0,0,-;Linux version 6.8.0\n4,812,12500000,-;NVRM: Xid (PCI:0000:0a:00): 79, pid=1, name=x, GPU has fallen off the bus.\n SUBSYSTEM=pci\n DEVICE=+pci:0000:0a:00.0\nnot a record\n",
            Format::Kmsg,
        );
        assert_eq!(log.lines, 2);
        assert_eq!(log.xid[0].time_s, Some(12.5));
        assert_eq!(kmsg_seq("4,812,12500000,-;x"), Some(812));
    }

    #[test]
    fn kern_log_in_both_date_styles_keeps_the_last_boot() {
        let old = "Dec  1 09:00:00 rig kernel: [    0.000000] Linux version 5.15.0\n\
                   Dec  1 09:00:05 rig kernel: [    5.000000] NVRM: Xid (PCI:0000:0a:00): 79, GPU has fallen off the bus.\n\
                   Dec  1 10:00:00 rig kernel: [    0.000000] Linux version 5.15.0\n\
                   Dec  1 10:00:09 rig systemd[1]: Started x.\n\
                   Dec  1 10:00:10 rig kernel: [   10.250000] NVRM: Xid (PCI:0000:0b:00): 13, Graphics Exception\n";
        let log = lines(old, Format::Syslog);
        assert_eq!(log.xid.len(), 1);
        assert_eq!(
            (log.xid[0].bus_id.as_str(), log.xid[0].time_s),
            ("0000:0b:00", Some(10.25))
        );
        let new = "2024-05-01T10:00:00.000000+02:00 rig kernel: Linux version 6.8.0\n\
                   2024-05-01T10:02:30.500000+02:00 rig kernel: NVRM: Xid (PCI:0000:0a:00): 79, GPU has fallen off the bus.\n";
        let log = lines(new, Format::Syslog);
        assert_eq!(log.xid[0].time_s, Some(150.5));
        assert_eq!(rfc3339_epoch("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(
            rfc3339_epoch("2000-03-01T00:00:00+01:00"),
            Some(951_868_800.0 - 3600.0)
        );
        assert_eq!(rfc3339_epoch("2000-13-01T00:00:00Z"), None);
    }

    #[test]
    fn journal_lines_are_kernel_lines_only() {
        let log = lines(
            "[   12.000000] rig kernel: NVRM: Xid (PCI:0000:0a:00): 48, An uncorrectable double bit error\n[   13.000000] rig sshd[99]: NVRM: Xid (PCI:0000:0a:00): 48, forged\n-- Boot abc --\n",
            Format::Journal,
        );
        assert_eq!(log.xid.len(), 1);
        assert_eq!(log.lines, 1);
    }

    #[test]
    fn a_missing_dev_kmsg_is_absent() {
        let e = read_dev_kmsg("/nonexistent/kmsg", 1 << 20, Duration::from_secs(1));
        assert!(matches!(
            e,
            Probed::Unknown {
                unknown: Why::Absent,
                ..
            }
        ));
    }
}
