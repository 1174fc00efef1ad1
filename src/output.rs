//! Where reports go: the `-o` file checked before any GPU work (a typo must not throw away a
//! complete run), written atomically without following a link at its final path, and stdout
//! write errors that are reported instead of swallowed.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The directory a file `path` is created in.
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Refuse an `-o` that cannot be written, before the run: a directory, a device or FIFO, a
/// missing or unwritable directory, or the very report being diagnosed.
pub fn check_target(path: &Path, input: Option<&Path>) -> Result<()> {
    let shown = path.display();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let t = meta.file_type();
        if t.is_dir() {
            bail!("-o {shown}: is a directory; name a file");
        }
        if !t.is_file() && !t.is_symlink() {
            bail!("-o {shown}: not a regular file (a device, FIFO or socket)");
        }
    }
    if let (Some(input), Ok(out)) = (input, std::fs::metadata(path)) {
        if let Ok(inp) = std::fs::metadata(input) {
            if inp.dev() == out.dev() && inp.ino() == out.ino() {
                bail!("-o {shown}: is the report being diagnosed; write to another file");
            }
        }
    }
    let dir = parent_of(path);
    if !dir.is_dir() {
        bail!("-o {shown}: directory {} does not exist", dir.display());
    }
    // Creating a file there is the only reliable test (permissions, read-only mounts, ACLs).
    let probe = temp_name(path, "check");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .with_context(|| format!("-o {shown}: cannot create files in {}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn temp_name(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "report".into(), |n| n.to_string_lossy().into_owned());
    parent_of(path).join(format!(
        ".{name}.rigdoctor-{}-{what}.tmp",
        std::process::id()
    ))
}

/// Write `bytes` to `path` atomically: a temp file in the same directory, synced, renamed over
/// the target. A symlink at `path` is replaced, never followed: its target is not truncated.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_name(path, "write");
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}: cannot write", path.display()));
    }
    Ok(())
}

/// Print to stdout. A closed pipe (`rigdoctor check | head`) is not an error; any other
/// failure (a full disk behind `> report.json`) is.
pub fn print(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("stdout: cannot write the report")
        }
        _ => Ok(()),
    }
}
