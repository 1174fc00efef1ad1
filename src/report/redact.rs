//! `--redact`: remove what identifies a machine or a person before a report is shared.
//!
//! Runs on the finished report (facts and findings), after the rules, so a host named `DMA` or
//! `545` cannot change the diagnosis. It walks the report as a JSON tree field by field, so
//! every string is covered, including ones later probes add: the host name (its own field
//! whatever its length; elsewhere as a whole word), UUIDs and `UUID=`/`PARTUUID=` values, MAC,
//! IPv4 and IPv6 addresses, the user's name and home directory, `/home/<user>` and `/Users/<user>`
//! paths, and fields named like serial numbers. It fails closed: if the tree cannot be made,
//! read back, or still holds a secret it knew of, there is an error and nothing is written.

use super::Report;
use serde_json::Value;

/// Shown instead of what was removed; plain text, so markdown shows it as written.
pub const MARK: &str = "[redacted]";

/// What identifies this machine and its user, beside the patterns every report is searched for.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub hostname: Option<String>,
    /// The user's name (USER, LOGNAME, SUDO_USER).
    pub users: Vec<String>,
    /// The user's home directory (HOME), when it is more than `/`.
    pub home: Option<String>,
}

impl Secrets {
    /// The report's host name and the process environment's user and home.
    pub fn of(report: &Report, var: impl Fn(&str) -> Option<String>) -> Secrets {
        let users = ["USER", "LOGNAME", "SUDO_USER"]
            .iter()
            .filter_map(|v| var(v))
            .filter(|u| !u.is_empty() && u != "root")
            .collect();
        Secrets {
            hostname: report.facts.host.hostname.known().cloned(),
            users,
            home: var("HOME").filter(|h| h.len() > 1 && h != "/root"),
        }
    }
}

/// The redacted report, or why it could not be made (then nothing may be written).
pub fn redact(report: &Report, secrets: &Secrets) -> Result<Report, String> {
    let mut tree = serde_json::to_value(report)
        .map_err(|e| format!("--redact: cannot walk the report: {e}"))?;
    if let Some(h) = tree.pointer_mut("/facts/host/hostname") {
        if h.is_string() {
            *h = Value::String(MARK.into());
        }
    }
    walk(&mut tree, "", secrets);
    if let Some(left) = leak(&tree, secrets) {
        return Err(format!(
            "--redact: the redacted report still holds {left}; nothing was written"
        ));
    }
    serde_json::from_value(tree).map_err(|e| {
        format!("--redact: the redacted report cannot be read back ({e}); nothing was written")
    })
}

/// Keys whose values are rigdoctor's own vocabulary (enum tags, finding ids): never personal,
/// and changing them would break the report (a host named `local`, `read` or `p2p`).
const VOCABULARY_KEYS: [&str; 14] = [
    "status",
    "verdict",
    "kind",
    "unknown",
    "path",
    "severity",
    "transport",
    "method",
    "id",
    "damage",
    "library",
    "port_type",
    "flavour",
    "schema",
];

fn vocabulary(key: &str) -> bool {
    VOCABULARY_KEYS.contains(&key)
}

/// Keys whose values are personal whatever they hold.
fn personal_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k.contains("serial") || k == "uuid" || k == "mac" || k == "ip"
}

fn walk(v: &mut Value, key: &str, s: &Secrets) {
    match v {
        Value::String(x) if personal_key(key) && !x.is_empty() => *x = MARK.into(),
        Value::String(x) if vocabulary(key) && !x.contains(['/', ' ']) => {}
        Value::String(x) => *x = redact_str(x, s),
        Value::Array(a) => a.iter_mut().for_each(|x| walk(x, key, s)),
        Value::Object(o) => {
            let entries: Vec<(String, Value)> = std::mem::take(o).into_iter().collect();
            for (k, mut val) in entries {
                walk(&mut val, &k, s);
                // Keys can be names from the machine too (env vars hold IPs, paths).
                o.insert(redact_str(&k, s), val);
            }
        }
        _ => {}
    }
}

/// A secret still present in the tree, named by kind (never the secret itself).
fn leak(v: &Value, s: &Secrets) -> Option<&'static str> {
    leak_in(v, "", s)
}

fn leak_in(v: &Value, key: &str, s: &Secrets) -> Option<&'static str> {
    match v {
        Value::String(x) if vocabulary(key) && !x.contains(['/', ' ']) => None,
        Value::String(x) => {
            if s.hostname
                .as_deref()
                .is_some_and(|h| h.len() >= 3 && replace_words(x, h) != *x)
            {
                return Some("the host name");
            }
            if s.home.as_deref().is_some_and(|h| x.contains(h)) {
                return Some("the home directory");
            }
            if redact_uuids(x) != *x {
                return Some("a UUID");
            }
            None
        }
        Value::Array(a) => a.iter().find_map(|x| leak_in(x, key, s)),
        Value::Object(o) => o.iter().find_map(|(k, x)| leak_in(x, k, s)),
        _ => None,
    }
}

pub fn redact_str(x: &str, s: &Secrets) -> String {
    let mut out = redact_uuids(x);
    out = redact_assignments(&out, &["PARTUUID=", "UUID=", "PARTLABEL=", "LABEL="]);
    if let Some(home) = &s.home {
        out = out.replace(home.as_str(), &format!("/{MARK}"));
    }
    out = redact_after(&out, "/home/");
    out = redact_after(&out, "/Users/");
    if let Some(h) = s.hostname.as_deref().filter(|h| !h.is_empty()) {
        out = if h.len() >= 3 {
            replace_words(&out, h)
        } else if out == h {
            // A one- or two-letter name is only removed where it stands alone: as a word it
            // would also hit ordinary text ("ok", "pt").
            MARK.to_string()
        } else {
            out
        };
    }
    for u in s.users.iter().filter(|u| u.len() >= 3) {
        out = replace_words(&out, u);
    }
    out = redact_macs(&out);
    out = redact_ipv6(&out);
    redact_ipv4(&out)
}

/// `word` replaced where it is a whole word (not inside a longer name of letters, digits, `-`
/// or `_`).
fn replace_words(s: &str, word: &str) -> String {
    let is_name = |c: char| c.is_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(word) {
        let before = rest[..pos].chars().next_back();
        let after = rest[pos + word.len()..].chars().next();
        out.push_str(&rest[..pos]);
        if before.is_none_or(|c| !is_name(c)) && after.is_none_or(|c| !is_name(c)) {
            out.push_str(MARK);
        } else {
            out.push_str(word);
        }
        rest = &rest[pos + word.len()..];
    }
    out.push_str(rest);
    out
}

/// `NAME=value` (up to white space or a comma) with the value removed.
fn redact_assignments(s: &str, names: &[&str]) -> String {
    let mut out = s.to_string();
    for n in names {
        let mut done = String::new();
        let mut rest = out.as_str();
        while let Some(pos) = rest.find(n) {
            done.push_str(&rest[..pos + n.len()]);
            let after = &rest[pos + n.len()..];
            let end = after.find([' ', ',', '"', '\t']).unwrap_or(after.len());
            if after[..end] != *MARK && end > 0 {
                done.push_str(MARK);
            } else {
                done.push_str(&after[..end]);
            }
            rest = &after[end..];
        }
        done.push_str(rest);
        out = done;
    }
    out
}

/// 8-4-4-4-12 hex groups (GPU UUIDs after "GPU-", filesystem UUIDs in root=UUID=...).
fn redact_uuids(s: &str) -> String {
    let b = s.as_bytes();
    let shape = [8, 4, 4, 4, 12];
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let mut j = i;
        let mut ok = i == 0 || !b[i - 1].is_ascii_hexdigit();
        for (k, n) in shape.iter().enumerate() {
            if !ok {
                break;
            }
            ok = b.len() >= j + n && b[j..j + n].iter().all(u8::is_ascii_hexdigit);
            j += n;
            if ok && k < 4 {
                ok = b.get(j) == Some(&b'-');
                j += 1;
            }
        }
        if ok && b.get(j).is_none_or(|c| !c.is_ascii_hexdigit()) {
            out.push_str(MARK);
            i = j;
        } else {
            let c = s[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// "/home/alice/x" -> "/home/[redacted]/x".
fn redact_after(s: &str, prefix: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find(prefix) {
        out.push_str(&rest[..pos + prefix.len()]);
        let after = &rest[pos + prefix.len()..];
        let end = after.find(['/', ' ', ':', '"']).unwrap_or(after.len());
        if end > 0 && after[..end] != *MARK {
            out.push_str(MARK);
        } else {
            out.push_str(&after[..end]);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Six colon-separated hex pairs.
fn redact_macs(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let hex2 = |j: usize| b.len() >= j + 2 && b[j..j + 2].iter().all(u8::is_ascii_hexdigit);
    while i < b.len() {
        let start_ok = i == 0 || !(b[i - 1].is_ascii_hexdigit() || b[i - 1] == b':');
        let is_mac = start_ok
            && (0..6).all(|k| hex2(i + 3 * k) && (k == 5 || b.get(i + 3 * k + 2) == Some(&b':')))
            && b.get(i + 17)
                .is_none_or(|c| !(c.is_ascii_hexdigit() || *c == b':'));
        if is_mac {
            out.push_str(MARK);
            i += 17;
        } else {
            let c = s[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// IPv6 addresses standing alone ("fe80::1", "2001:db8::8a2e:370:7334", "::ffff:10.1.2.3"):
/// a run of hex digits, colons and dots, not inside a longer name, that std parses as one.
/// Bus ids ("0000:41:00.0") and times ("01:20:31") are no IPv6 address and stay.
fn redact_ipv6(s: &str) -> String {
    let is_run = |c: char| c.is_ascii_hexdigit() || c == ':' || c == '.';
    let is_name = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut prev: Option<char> = None;
    while let Some(start) = rest.find(is_run) {
        let (head, tail) = rest.split_at(start);
        out.push_str(head);
        let before = head
            .chars()
            .next_back()
            .or(if head.is_empty() { prev } else { None });
        let len = tail.find(|c: char| !is_run(c)).unwrap_or(tail.len());
        let (run, after) = tail.split_at(len);
        // A trailing dot ends a sentence, not the address.
        let addr = run.trim_end_matches('.');
        let standalone =
            before.is_none_or(|c| !is_name(c)) && after.chars().next().is_none_or(|c| !is_name(c));
        if standalone
            && addr.matches(':').count() >= 2
            && addr.parse::<std::net::Ipv6Addr>().is_ok()
        {
            out.push_str(MARK);
            out.push_str(&run[addr.len()..]);
        } else {
            out.push_str(run);
        }
        prev = run.chars().next_back();
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Four dot-separated numbers 0-255 standing alone (not part of a longer dotted version).
fn redact_ipv4(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let start_ok = i == 0 || !(b[i - 1].is_ascii_digit() || b[i - 1] == b'.');
        let mut j = i;
        let mut parts = 0;
        while start_ok && parts < 4 {
            let d0 = j;
            while j < b.len() && b[j].is_ascii_digit() && j - d0 < 3 {
                j += 1;
            }
            let ok = j > d0
                && s[d0..j].parse::<u16>().is_ok_and(|n| n <= 255)
                && !(j < b.len() && b[j].is_ascii_digit());
            if !ok {
                break;
            }
            parts += 1;
            if parts < 4 {
                if b.get(j) != Some(&b'.') {
                    break;
                }
                j += 1;
            }
        }
        let end_ok = b.get(j).is_none_or(|c| {
            !(c.is_ascii_digit() || (*c == b'.' && b.get(j + 1).is_some_and(u8::is_ascii_digit)))
        });
        if parts == 4 && end_ok {
            out.push_str(MARK);
            i = j;
        } else {
            let c = s[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(h: &str) -> Secrets {
        Secrets {
            hostname: Some(h.into()),
            users: vec!["alice".into()],
            home: Some("/data/alice".into()),
        }
    }

    #[test]
    fn uuids_hosts_homes_addresses() {
        let s = with_host("tr-rig");
        assert_eq!(
            redact_str("GPU-3a1b2c3d-0000-1111-2222-333344445555 on tr-rig", &s),
            "GPU-[redacted] on [redacted]"
        );
        assert_eq!(
            redact_str(
                "root=PARTUUID=abcd1234-02 ro root=UUID=0b4c4a1e-7a5f-4f0e-9a53-8d2a0c6f1e22",
                &s
            ),
            "root=PARTUUID=[redacted] ro root=UUID=[redacted]"
        );
        assert_eq!(
            redact_str("/home/bob/.nccl.conf", &s),
            "/home/[redacted]/.nccl.conf"
        );
        assert_eq!(redact_str("/data/alice/venv", &s), "/[redacted]/venv");
        assert_eq!(
            redact_str("NCCL_COMM_ID=10.1.2.3:5000", &s),
            "NCCL_COMM_ID=[redacted]:5000"
        );
        assert_eq!(redact_str("mac 3c:ec:ef:01:02:03.", &s), "mac [redacted].");
        for (v6, want) in [
            (
                "NCCL_COMM_ID=[fe80::1%eth0]:5000",
                "NCCL_COMM_ID=[[redacted]%eth0]:5000",
            ),
            ("addr 2001:db8::8a2e:370:7334.", "addr [redacted]."),
            ("::ffff:10.1.2.3", MARK),
            ("::1", MARK),
        ] {
            assert_eq!(redact_str(v6, &s), want);
        }
        // Versions, bus ids, link speeds and words that merely contain the name stay.
        for keep in [
            "535.129.03",
            "2.18.3",
            "0000:41:00.0",
            "Gen4 x16",
            "tr-rig2",
            "1.2.3.4.5",
            "01:20:31",
            "std::net::Ipv6Addr",
            "cafe::beefy",
        ] {
            assert_eq!(redact_str(keep, &s), keep);
        }
        // A two-letter host name: only where it stands alone.
        let short = with_host("ok");
        assert_eq!(redact_str("ok", &short), MARK);
        assert_eq!(redact_str("sm-read ok", &short), "sm-read ok");
    }
}
