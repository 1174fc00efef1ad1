//! Reading /proc and /sys under a configurable root, with every failure turned into a reason.

use crate::facts::{Probed, Why};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

/// The biggest file a probe reads: sysfs/procfs files are small; PCI config space is 4 KiB.
const MAX_READ: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct Sysroot {
    root: PathBuf,
}

impl Sysroot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysroot { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `/sys/bus/pci` -> `<root>/sys/bus/pci`.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    pub fn exists(&self, abs: &str) -> bool {
        self.path(abs).symlink_metadata().is_ok()
    }

    pub fn read_bytes(&self, abs: &str) -> Probed<Vec<u8>> {
        let open = std::fs::File::open(self.path(abs));
        let mut buf = Vec::new();
        match open.and_then(|f| f.take(MAX_READ).read_to_end(&mut buf)) {
            Ok(_) => Probed::Known(buf),
            Err(e) => io_unknown(abs, &e),
        }
    }

    pub fn read_string(&self, abs: &str) -> Probed<String> {
        self.read_bytes(abs)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// A one-line sysfs attribute, trimmed.
    pub fn read_attr(&self, abs: &str) -> Probed<String> {
        self.read_string(abs).map(|s| s.trim().to_string())
    }

    /// Parse a trimmed attribute; a parse failure keeps the text in the reason.
    pub fn read_parsed<T>(&self, abs: &str, parse: impl FnOnce(&str) -> Option<T>) -> Probed<T> {
        self.read_attr(abs).and_then(|s| match parse(&s) {
            Some(v) => Probed::Known(v),
            None => Probed::unknown(Why::Unparsable, format!("{abs}: {s:?}")),
        })
    }

    pub fn read_link(&self, abs: &str) -> Probed<PathBuf> {
        match std::fs::read_link(self.path(abs)) {
            Ok(p) => Probed::Known(p),
            Err(e) => io_unknown(abs, &e),
        }
    }

    /// Entry names of a directory, sorted.
    pub fn list_dir(&self, abs: &str) -> Probed<Vec<String>> {
        match std::fs::read_dir(self.path(abs)) {
            Ok(rd) => {
                let mut names: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                Probed::Known(names)
            }
            Err(e) => io_unknown(abs, &e),
        }
    }
}

fn io_unknown<T>(abs: &str, e: &std::io::Error) -> Probed<T> {
    let why = match e.kind() {
        ErrorKind::NotFound => Why::Absent,
        ErrorKind::PermissionDenied => Why::NeedsRoot,
        _ => Why::IoError,
    };
    let detail = match why {
        Why::IoError => format!("{abs}: {e}"),
        _ => abs.to_string(),
    };
    Probed::unknown(why, detail)
}

/// The last path component, e.g. the driver name behind a `driver` symlink.
pub fn file_name(p: &Path) -> Option<String> {
    p.file_name().map(|n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_absent_not_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sysroot::new(dir.path());
        match s.read_attr("/proc/nothing") {
            Probed::Unknown {
                unknown, detail, ..
            } => {
                assert_eq!(unknown, Why::Absent);
                assert_eq!(detail, "/proc/nothing");
            }
            other => panic!("{other:?}"),
        }
        std::fs::create_dir_all(dir.path().join("sys")).unwrap();
        std::fs::write(dir.path().join("sys/w"), " 16\n").unwrap();
        assert_eq!(
            s.read_parsed("/sys/w", |t| t.parse::<u32>().ok()),
            Probed::Known(16)
        );
        assert!(matches!(
            s.read_parsed("/sys/w", |t| t.parse::<bool>().ok()),
            Probed::Unknown {
                unknown: Why::Unparsable,
                ..
            }
        ));
    }
}
