//! `FAKEGPU_NCCL_TRACE=<file>`: the fake appends one line per NCCL call, so a test can check
//! what rigdoctor did with its communicators (destroyed after a clean run, aborted after an
//! error, none left alive at exit). Test equipment only: the real library has no such thing.
//!
//! Lines: `<function> [comm=0x.. rank=R] [details] -> <ncclResult_t>`; a call that never
//! returns (ncclCommDestroy behind a hung collective) writes `-> blocked` before it blocks.
//! When the library is finalised (process exit: the same library is also libcuda, which is
//! never unloaded) it writes `fini live=N` and, with communicators neither destroyed nor
//! aborted, `leaked N comms=0x..,0x..`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// An NCCL function was called in this process (the library is libcuda too: only processes
/// that used NCCL get a `fini` line).
static USED: AtomicBool = AtomicBool::new(false);

/// Append one line to the trace file, if there is one.
pub fn line(text: &str) {
    let Some(path) = std::env::var_os("FAKEGPU_NCCL_TRACE") else {
        return;
    };
    // One write per line on an O_APPEND file: lines of several threads do not mix.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(format!("{text}\n").as_bytes());
    }
}

/// `name comm=0x.. rank=R details -> rc`.
pub fn call(name: &str, comm: Option<(usize, usize)>, details: &str, rc: i32) {
    USED.store(true, Ordering::SeqCst);
    let mut s = name.to_string();
    if let Some((addr, rank)) = comm {
        s.push_str(&format!(" comm={addr:#x} rank={rank}"));
    }
    if !details.is_empty() {
        s.push(' ');
        s.push_str(details);
    }
    s.push_str(&format!(" -> {rc}"));
    line(&s);
}

/// `name comm=0x.. rank=R -> blocked`: the call will not return.
pub fn blocked(name: &str, comm: Option<(usize, usize)>) {
    USED.store(true, Ordering::SeqCst);
    let mut s = name.to_string();
    if let Some((addr, rank)) = comm {
        s.push_str(&format!(" comm={addr:#x} rank={rank}"));
    }
    line(&format!("{s} -> blocked"));
}

/// Runs when the library is finalised (its `.fini_array`): at exit, or at dlclose if it was
/// ever really unloaded.
extern "C" fn fini() {
    if !USED.load(Ordering::SeqCst) {
        return;
    }
    let live = super::comm::live();
    line(&format!("fini live={}", live.len()));
    if !live.is_empty() {
        let list: Vec<String> = live.iter().map(|a| format!("{a:#x}")).collect();
        line(&format!("leaked {} comms={}", live.len(), list.join(",")));
    }
    super::comm::teardown();
}

#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = fini;
