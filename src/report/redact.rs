//! `--redact`: remove what identifies a machine or a person before a report is shared.
//!
//! Works on the facts as a JSON tree so that every string is covered, including ones added by
//! later probes: the host name wherever it appears, UUIDs (GPU, filesystem), and home directories.

use crate::facts::Facts;
use serde_json::Value;

const MARK: &str = "<redacted>";

pub fn redact(facts: &Facts) -> Facts {
    let hostname = facts
        .host
        .hostname
        .known()
        .cloned()
        .filter(|h| h.len() >= 3);
    let Ok(mut tree) = serde_json::to_value(facts) else {
        return facts.clone();
    };
    walk(&mut tree, &|s| redact_str(s, hostname.as_deref()));
    serde_json::from_value(tree).unwrap_or_else(|_| facts.clone())
}

fn walk(v: &mut Value, f: &dyn Fn(&str) -> String) {
    match v {
        Value::String(s) => *s = f(s),
        Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
        Value::Object(o) => o.values_mut().for_each(|x| walk(x, f)),
        _ => {}
    }
}

fn redact_str(s: &str, hostname: Option<&str>) -> String {
    let mut out = redact_uuids(s);
    if let Some(h) = hostname {
        out = out.replace(h, MARK);
    }
    redact_homes(&out)
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

/// "/home/alice/x" -> "/home/<redacted>/x".
fn redact_homes(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find("/home/") {
        out.push_str(&rest[..pos + 6]);
        let after = &rest[pos + 6..];
        let end = after.find(['/', ' ', ':', '"']).unwrap_or(after.len());
        if end > 0 {
            out.push_str(MARK);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_hosts_homes() {
        assert_eq!(
            redact_str(
                "GPU-3a1b2c3d-0000-1111-2222-333344445555 on tr-rig",
                Some("tr-rig")
            ),
            "GPU-<redacted> on <redacted>"
        );
        assert_eq!(
            redact_str("root=UUID=0b4c4a1e-7a5f-4f0e-9a53-8d2a0c6f1e22 ro", None),
            "root=UUID=<redacted> ro"
        );
        assert_eq!(
            redact_str("/home/alice/.nccl.conf", None),
            "/home/<redacted>/.nccl.conf"
        );
        assert_eq!(
            redact_str("0000:41:00.0 x16 ünï", None),
            "0000:41:00.0 x16 ünï"
        );
    }
}
