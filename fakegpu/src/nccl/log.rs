//! NCCL's debug log, as `src/debug.cc` of NVIDIA/nccl writes it (`ncclDebugInit`,
//! `ncclDebugLog`; read at tags v2.18.5-1, v2.22.3-1, v2.23.4-1, v2.26.2-1, v2.27.3-1):
//!
//! - `NCCL_DEBUG` (VERSION, WARN, INFO, ABORT, TRACE; case-insensitive; anything else logs
//!   nothing) sets the level; `NCCL_DEBUG_SUBSYS` a comma list of subsystems, `^` in front
//!   negating it, unknown names ignored; default `INIT,ENV` before 2.23, `INIT,BOOTSTRAP,ENV`
//!   since (`ncclDebugMask`).
//! - Lines go through C stdio to `stdout` (`FILE *ncclDebugFile = stdout`) with one `fwrite`
//!   per line and **no flush**: on a pipe glibc block-buffers them (4 KiB), so a reader sees
//!   them in chunks that end mid-line, and only at exit (or a full buffer) at all. A SIGKILL
//!   loses what is still buffered.
//! - `NCCL_DEBUG_FILE` (above VERSION level; `%h` host, `%p` pid, `%%`) opens that file with
//!   `fopen(.., "w")` and writes there instead: unbuffered (`setbuf(file, nullptr)`) before
//!   2.27, line-buffered (`setlinebuf`) since.
//! - Every WARN, printed or not, is kept as the text `ncclGetLastError` returns
//!   (`ncclLastError`, 1024 bytes).
//! - Format: `host:pid:tid [cudaDev] NCCL INFO msg`; WARN `\nhost:pid:tid [cudaDev]
//!   file.cc:line NCCL WARN msg`, since 2.26 preceded by a `[%F %T] ` timestamp
//!   (`NCCL_DEBUG_TIMESTAMP_LEVELS` defaults to WARN); VERSION lines are the bare message.
//!   The host name is `gethostname` cut at the first dot.

use std::cell::Cell;
use std::ffi::{c_char, CString};
use std::sync::{Mutex, OnceLock};

pub const LEVEL_NONE: i32 = 0;
pub const LEVEL_VERSION: i32 = 1;
pub const LEVEL_WARN: i32 = 2;
pub const LEVEL_INFO: i32 = 3;
pub const LEVEL_ABORT: i32 = 4;
pub const LEVEL_TRACE: i32 = 5;

// ncclDebugLogSubSys, src/include/nccl_common.h (v2.23.4-1).
pub const INIT: u64 = 0x1;
pub const COLL: u64 = 0x2;
pub const P2P: u64 = 0x4;
pub const SHM: u64 = 0x8;
pub const NET: u64 = 0x10;
pub const GRAPH: u64 = 0x20;
pub const TUNING: u64 = 0x40;
pub const ENV: u64 = 0x80;
pub const ALLOC: u64 = 0x100;
pub const CALL: u64 = 0x200;
pub const PROXY: u64 = 0x400;
pub const NVLS: u64 = 0x800;
pub const BOOTSTRAP: u64 = 0x1000;
pub const REG: u64 = 0x2000;
pub const PROFILE: u64 = 0x4000;
pub const RAS: u64 = 0x8000;
pub const ALL: u64 = !0;

extern "C" {
    /// glibc's `stdout` FILE*, where NCCL writes (not Rust's own stdout buffer).
    static mut stdout: *mut libc::FILE;
}

/// `NCCL_DEBUG`'s level; unset or unknown: nothing is logged.
pub fn parse_level(v: Option<&str>) -> i32 {
    match v.map(str::to_ascii_uppercase).as_deref() {
        Some("VERSION") => LEVEL_VERSION,
        Some("WARN") => LEVEL_WARN,
        Some("INFO") => LEVEL_INFO,
        Some("ABORT") => LEVEL_ABORT,
        Some("TRACE") => LEVEL_TRACE,
        _ => LEVEL_NONE,
    }
}

/// The subsystem mask from `NCCL_DEBUG_SUBSYS` for NCCL release `version` (code, e.g. 22304).
pub fn parse_mask(v: Option<&str>, version: i32) -> u64 {
    let default = if version >= 22300 {
        INIT | BOOTSTRAP | ENV
    } else {
        INIT | ENV
    };
    let Some(mut s) = v else {
        return default;
    };
    let invert = s.starts_with('^');
    if invert {
        s = &s[1..];
    }
    let mut mask = if invert { ALL } else { 0 };
    // strtok(",") skips empty fields; unknown names change nothing.
    for name in s.split(',').filter(|n| !n.is_empty()) {
        let bit = match name.to_ascii_uppercase().as_str() {
            "INIT" => INIT,
            "COLL" => COLL,
            "P2P" => P2P,
            "SHM" => SHM,
            "NET" => NET,
            "GRAPH" => GRAPH,
            "TUNING" => TUNING,
            "ENV" => ENV,
            "ALLOC" => ALLOC,
            "CALL" => CALL,
            "PROXY" => PROXY,
            "NVLS" => NVLS,
            "BOOTSTRAP" => BOOTSTRAP,
            "REG" => REG,
            "PROFILE" => PROFILE,
            "RAS" if version >= 22400 => RAS,
            "ALL" => ALL,
            _ => 0,
        };
        if invert {
            mask &= !bit;
        } else {
            mask |= bit;
        }
    }
    mask
}

/// `NCCL_DEBUG_FILE` with `%h` (host), `%p` (pid) and `%%` expanded; any other `%x` is kept.
pub fn expand_file_name(pattern: &str, host: &str, pid: u32) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('h') => out.push_str(host),
            Some('p') => out.push_str(&pid.to_string()),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// `gethostname` cut at the first '.', as NCCL's getHostName(.., '.') does.
pub fn hostname() -> String {
    full_hostname().split('.').next().unwrap_or("").to_string()
}

/// `gethostname` whole, as getHostName(.., '\0') gives it for the host hash.
pub fn full_hostname() -> String {
    let mut buf = [0u8; 1024];
    // SAFETY: buffer and its length.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut c_char, buf.len() - 1) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

struct Out(*mut libc::FILE);
// SAFETY: a C FILE* has its own lock; NCCL shares it between threads the same way.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

struct Config {
    level: i32,
    mask: u64,
    out: Out,
    to_file: bool,
    host: String,
    pid: u32,
    version: i32,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// ncclDebugInit: read the environment once, on the first message.
fn config() -> &'static Config {
    CONFIG.get_or_init(|| {
        let version = super::version();
        let level = parse_level(std::env::var("NCCL_DEBUG").ok().as_deref());
        let mask = parse_mask(std::env::var("NCCL_DEBUG_SUBSYS").ok().as_deref(), version);
        let host = hostname();
        let pid = std::process::id();
        // SAFETY: reading glibc's stdout pointer.
        let mut out = Out(unsafe { stdout });
        let mut to_file = false;
        if level > LEVEL_VERSION {
            if let Ok(pattern) = std::env::var("NCCL_DEBUG_FILE") {
                let name = expand_file_name(&pattern, &host, pid);
                if let Ok(c) = CString::new(name) {
                    // SAFETY: NUL-terminated strings; a failed fopen keeps stdout, as NCCL does.
                    let f = unsafe { libc::fopen(c.as_ptr(), c"w".as_ptr()) };
                    if !f.is_null() {
                        let mode = if version >= 22700 {
                            libc::_IOLBF
                        } else {
                            libc::_IONBF
                        };
                        // SAFETY: a fresh FILE*, before any output.
                        unsafe { libc::setvbuf(f, std::ptr::null_mut(), mode, 0) };
                        out = Out(f);
                        to_file = true;
                    }
                }
            }
        }
        Config {
            level,
            mask,
            out,
            to_file,
            host,
            pid,
            version,
        }
    })
}

thread_local! {
    /// The CUDA device this thread works for (NCCL calls cudaSetDevice in its threads).
    static DEVICE: Cell<Option<i32>> = const { Cell::new(None) };
}

/// What `cudaGetDevice` answers on this thread from now on.
pub fn set_thread_device(dev: i32) {
    DEVICE.with(|d| d.set(Some(dev)));
}

/// cudaGetDevice: this thread's device, else the current context's, else 0.
fn cuda_dev() -> i32 {
    if let Some(d) = DEVICE.with(Cell::get) {
        return d;
    }
    let current = crate::memory::current();
    current
        .and_then(|g| (0..crate::rig().gpus.len()).find(|&d| crate::rig().cuda_index(d) == Some(g)))
        .map_or(0, |d| d as i32)
}

fn tid() -> i64 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// `[%F %T] ` in local time.
fn timestamp() -> String {
    // SAFETY: plain libc time calls into local buffers.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        let mut buf = [0u8; 64];
        let n = libc::strftime(
            buf.as_mut_ptr() as *mut c_char,
            buf.len(),
            c"[%F %T] ".as_ptr(),
            &tm,
        );
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// ncclLastError: the text of the last WARN (a static buffer, as in NCCL).
struct LastError(std::cell::UnsafeCell<[u8; 1024]>);
// SAFETY: written under LAST_LOCK; readers get a pointer to a NUL-terminated buffer, as
// NCCL's own `char ncclLastError[1024]` is read without a lock.
unsafe impl Sync for LastError {}
static LAST: LastError = LastError(std::cell::UnsafeCell::new([0; 1024]));
static LAST_LOCK: Mutex<()> = Mutex::new(());

fn set_last_error(msg: &str) {
    let _g = LAST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let n = msg.len().min(1023);
    // SAFETY: exclusive writer under the lock; the buffer stays NUL-terminated.
    unsafe {
        let buf = &mut *LAST.0.get();
        buf[..n].copy_from_slice(&msg.as_bytes()[..n]);
        buf[n] = 0;
    }
}

/// What ncclGetLastError returns.
pub fn last_error_ptr() -> *const c_char {
    LAST.0.get() as *const c_char
}

/// ncclDebugLog: one message at `level`.
fn log(level: i32, flags: u64, file_line: Option<(&str, u32)>, msg: &str) {
    if level == LEVEL_WARN {
        set_last_error(msg);
    }
    let c = config();
    if c.level < level || flags & c.mask == 0 {
        return;
    }
    let mut line = String::new();
    match level {
        LEVEL_VERSION => line.push_str(msg),
        LEVEL_WARN => {
            line.push('\n');
            if c.version >= 22600 {
                line.push_str(&timestamp());
            }
            let (file, no) = file_line.unwrap_or(("<unknown>", 0));
            line.push_str(&format!(
                "{}:{}:{} [{}] {file}:{no} NCCL WARN {msg}",
                c.host,
                c.pid,
                tid(),
                cuda_dev()
            ));
        }
        _ => line.push_str(&format!(
            "{}:{}:{} [{}] NCCL INFO {msg}",
            c.host,
            c.pid,
            tid(),
            cuda_dev()
        )),
    }
    // char buffer[1024]: a longer line is cut and still ends in a newline.
    let mut bytes = line.into_bytes();
    bytes.truncate(1023);
    bytes.push(b'\n');
    // SAFETY: one fwrite of a whole line on the FILE*, as NCCL does; never flushed.
    unsafe { libc::fwrite(bytes.as_ptr().cast(), 1, bytes.len(), c.out.0) };
}

pub fn info(flags: u64, msg: &str) {
    log(LEVEL_INFO, flags, None, msg);
}

/// WARN from `file:line` of NCCL's sources.
pub fn warn(file: &str, line: u32, msg: &str) {
    log(LEVEL_WARN, ALL, Some((file, line)), msg);
}

/// showVersion (init.cc): before 2.22 `printf("%s\n") + fflush(stdout)` at VERSION level and
/// above (and an INFO line as well when the log goes to a file); since 2.22 a VERSION message
/// at NCCL_DEBUG=VERSION/WARN, else an INFO line of every subsystem.
pub fn show_version(text: &str) {
    let c = config();
    if c.version < 22200 {
        if c.level >= LEVEL_VERSION {
            let line = format!("{text}\n");
            // SAFETY: glibc stdout; this flush also pushes out every line buffered before.
            unsafe {
                libc::fwrite(line.as_ptr().cast(), 1, line.len(), stdout);
                libc::fflush(stdout);
            }
            if c.to_file {
                info(ALL, text);
            }
        }
    } else if c.level == LEVEL_VERSION || c.level == LEVEL_WARN {
        log(LEVEL_VERSION, ALL, None, text);
    } else {
        info(ALL, text);
    }
}

/// glibc's stdout, for the tests' flush at exit.
#[cfg(test)]
pub fn c_stdout() -> *mut libc::FILE {
    // SAFETY: reading a pointer.
    unsafe { stdout }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_masks_as_debug_cc_parses_them() {
        assert_eq!(parse_level(Some("info")), LEVEL_INFO);
        assert_eq!(parse_level(Some("Warn")), LEVEL_WARN);
        assert_eq!(parse_level(Some("verbose")), LEVEL_NONE);
        assert_eq!(parse_level(None), LEVEL_NONE);
        assert_eq!(parse_mask(None, 21805), INIT | ENV);
        assert_eq!(parse_mask(None, 22304), INIT | BOOTSTRAP | ENV);
        assert_eq!(
            parse_mask(Some("INIT,P2P,GRAPH"), 21805),
            INIT | P2P | GRAPH
        );
        assert_eq!(parse_mask(Some("^INIT,graph"), 21805), ALL & !INIT & !GRAPH);
        assert_eq!(parse_mask(Some("bogus,,COLL"), 21805), COLL);
        assert_eq!(parse_mask(Some("ALL"), 21805), ALL);
        assert_eq!(parse_mask(Some("RAS"), 22304), 0);
        assert_eq!(parse_mask(Some("RAS"), 22403), RAS);
    }

    #[test]
    fn debug_file_names_expand_like_nccl() {
        assert_eq!(
            expand_file_name("/tmp/nccl.%h.%p.log", "rig", 42),
            "/tmp/nccl.rig.42.log"
        );
        assert_eq!(expand_file_name("a%%b%xc%", "h", 1), "a%b%xc%");
    }

    #[test]
    fn the_host_name_has_no_domain() {
        assert!(!hostname().contains('.'));
    }
}
