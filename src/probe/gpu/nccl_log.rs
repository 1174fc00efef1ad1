//! NCCL's own log, on the parent's side. Real NCCL writes its debug output with C stdio to
//! stdout and never flushes it unless `NCCL_DEBUG_FILE` names a file (NVIDIA/nccl
//! `src/debug.cc`: only that file gets `setlinebuf`); on a pipe glibc buffers it in 4 KiB
//! blocks, so its lines cannot be read reliably from the worker's stdout. rigdoctor therefore
//! points NCCL_DEBUG_FILE at a private directory (`%h.%p`: one file per process, as NCCL
//! expands them) and reads the files after the run: a killed worker's lines are kept too.

use crate::facts::EnvSet;
use std::io::Read;
use std::path::PathBuf;

/// Largest log read per file.
const MAX_LOG_BYTES: u64 = 16 << 20;
/// The subsystems whose INFO lines rigdoctor reads: the channel/transport lines are INIT (and
/// P2P/GRAPH in some releases).
const SUBSYS: [&str; 3] = ["INIT", "P2P", "GRAPH"];

/// A private directory for the run's NCCL logs, removed when dropped.
pub struct LogDir {
    path: PathBuf,
}

impl LogDir {
    pub fn new() -> Option<LogDir> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("rigdoctor-nccl-{}-{nanos:08x}", std::process::id()));
        // A new directory only ours can read: create fails if the name exists.
        std::fs::DirBuilder::new().mode(0o700).create(&path).ok()?;
        Some(LogDir { path })
    }

    /// The NCCL_DEBUG_FILE pattern.
    pub fn pattern(&self) -> String {
        self.path.join("nccl.%h.%p.log").display().to_string()
    }

    /// Every line of every log file, file by file in name order.
    pub fn read(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect();
        files.sort();
        let mut lines = Vec::new();
        for f in files {
            let mut bytes = Vec::new();
            if let Ok(file) = std::fs::File::open(&f) {
                let _ = file.take(MAX_LOG_BYTES).read_to_end(&mut bytes);
            }
            lines.extend(
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .map(|l| l.trim_end().to_string()),
            );
        }
        lines
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The NCCL variables the worker gets: INFO level (TRACE kept if the user asked for it), the
/// subsystems rigdoctor reads plus the user's own, and the log file. `var` reads the user's.
pub fn environment(dir: Option<&LogDir>, var: impl Fn(&str) -> Option<String>) -> Vec<EnvSet> {
    let Some(dir) = dir else {
        // Without a private file NCCL's log would go to stdout, where it cannot be read
        // reliably: leave NCCL's logging as the user has it.
        return Vec::new();
    };
    let mut out = Vec::new();
    let user_level = var("NCCL_DEBUG");
    let level = match user_level.as_deref() {
        Some(l) if l.eq_ignore_ascii_case("TRACE") => "TRACE",
        _ => "INFO",
    };
    out.push(EnvSet {
        name: "NCCL_DEBUG".into(),
        value: level.into(),
        replaced: user_level.filter(|u| !u.eq_ignore_ascii_case(level)),
    });
    let user_subsys = var("NCCL_DEBUG_SUBSYS");
    let mut subsys: Vec<String> = SUBSYS.iter().map(|s| s.to_string()).collect();
    if let Some(u) = &user_subsys {
        if u.trim_start().starts_with('^') {
            // A negated list ("all but ...") would hide what rigdoctor reads: ours replaces it.
        } else {
            for s in u.split(',').map(|s| s.trim().to_ascii_uppercase()) {
                if !s.is_empty() && !subsys.contains(&s) {
                    subsys.push(s);
                }
            }
        }
    }
    let value = subsys.join(",");
    out.push(EnvSet {
        name: "NCCL_DEBUG_SUBSYS".into(),
        replaced: user_subsys.filter(|u| *u != value),
        value,
    });
    out.push(EnvSet {
        name: "NCCL_DEBUG_FILE".into(),
        value: dir.pattern(),
        replaced: var("NCCL_DEBUG_FILE"),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_subsystems_are_kept_and_a_trace_level_too() {
        let dir = LogDir::new().unwrap();
        let env = environment(Some(&dir), |k| match k {
            "NCCL_DEBUG" => Some("WARN".into()),
            "NCCL_DEBUG_SUBSYS" => Some("coll,INIT".into()),
            _ => None,
        });
        assert_eq!(env[0].value, "INFO");
        assert_eq!(env[0].replaced.as_deref(), Some("WARN"));
        assert_eq!(env[1].value, "INIT,P2P,GRAPH,COLL");
        assert!(env[2].value.ends_with("nccl.%h.%p.log"));
        let env = environment(Some(&dir), |k| (k == "NCCL_DEBUG").then(|| "trace".into()));
        assert_eq!(env[0].value, "TRACE");
        assert_eq!(env[0].replaced, None);
        assert!(environment(None, |_| None).is_empty());
        let p = dir.path.clone();
        std::fs::write(p.join("nccl.h.1.log"), "a\nb\n").unwrap();
        assert_eq!(dir.read(), ["a", "b"]);
        drop(dir);
        assert!(!p.exists());
    }
}
