//! Reading /proc and /sys under a configurable root, with every failure turned into a reason.

use crate::facts::{Probed, Why};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

/// The biggest file a probe reads: sysfs/procfs files are small; PCI config space is 4 KiB.
pub const MAX_READ: u64 = 1 << 20;

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

    /// Where `abs` really is, when it stays inside the tree: a symlink that leaves a
    /// `--sysroot` tree (`proc/cmdline -> /etc/shadow`) is never followed. The live root `/`
    /// contains everything.
    fn confined(&self, abs: &str) -> Result<PathBuf, Probed<()>> {
        let p = self.path(abs);
        if self.root == Path::new("/") {
            return Ok(p);
        }
        let real = std::fs::canonicalize(&p).map_err(|e| io_unknown(abs, &e))?;
        let root = std::fs::canonicalize(&self.root).map_err(|e| io_unknown(abs, &e))?;
        if real.starts_with(&root) {
            Ok(real)
        } else {
            Err(Probed::unknown(
                Why::Absent,
                format!("{abs}: outside the tree"),
            ))
        }
    }

    pub fn read_bytes(&self, abs: &str) -> Probed<Vec<u8>> {
        let path = match self.confined(abs) {
            Ok(p) => p,
            Err(u) => return u.retype(),
        };
        match read_regular(&path, MAX_READ) {
            Ok(buf) => Probed::Known(buf),
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                Probed::unknown(Why::IoError, format!("{abs}: {e}"))
            }
            Err(e) => io_unknown(abs, &e),
        }
    }

    /// The last `limit` bytes of a regular file, and whether older bytes were left out (a log
    /// is read from its end: the newest lines are the ones that matter).
    pub fn read_tail(&self, abs: &str, limit: u64) -> Probed<(Vec<u8>, bool)> {
        let path = match self.confined(abs) {
            Ok(p) => p,
            Err(u) => return u.retype(),
        };
        match read_regular_tail(&path, limit) {
            Ok(v) => Probed::Known(v),
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                Probed::unknown(Why::IoError, format!("{abs}: {e}"))
            }
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
        let path = match self.confined(abs) {
            Ok(p) => p,
            Err(u) => return u.retype(),
        };
        match std::fs::read_dir(path) {
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

fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !f.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or socket is never read)",
        ));
    }
    Ok(f)
}

/// The last `limit` bytes of a regular file, and whether the file is longer.
fn read_regular_tail(path: &Path, limit: u64) -> std::io::Result<(Vec<u8>, bool)> {
    use std::io::{Seek, SeekFrom};
    let mut f = open_regular(path)?;
    let len = f.metadata()?.len();
    let cut = len > limit;
    if cut {
        f.seek(SeekFrom::Start(len - limit))?;
    }
    let mut buf = Vec::new();
    f.take(limit).read_to_end(&mut buf)?;
    Ok((buf, cut))
}

/// Up to `limit` bytes of a regular file. Opened non-blocking and checked before reading, so
/// a FIFO, a device or a socket is refused instead of blocking rigdoctor forever.
pub fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let f = open_regular(path)?;
    let mut buf = Vec::new();
    f.take(limit).read_to_end(&mut buf)?;
    Ok(buf)
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
        // A link out of the tree is not followed; a FIFO is refused, not waited on.
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("proc/cmdline")).unwrap();
        assert!(
            matches!(s.read_attr("/proc/cmdline"), Probed::Unknown { detail, .. } if detail.contains("outside the tree"))
        );
        let fifo =
            std::ffi::CString::new(dir.path().join("proc/mounts").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(
            matches!(s.read_attr("/proc/mounts"), Probed::Unknown { detail, .. } if detail.contains("not a regular file"))
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
