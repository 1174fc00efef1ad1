//! Communicators that span processes: `ncclGetUniqueId` and `ncclCommInitRank`, as DDP and
//! torchrun use them (one process per GPU).
//!
//! Real NCCL's unique id carries the address of a bootstrap root that `ncclGetUniqueId` starts
//! in the calling process (src/bootstrap.cc: bootstrapGetUniqueId, bootstrapCreateRoot); every
//! rank's `ncclCommInitRank` connects to it, the ranks exchange their peer info (an allgather:
//! rank, cudaDev, nvmlDev, busId, pid) and block until all `nranks` have joined; there is no
//! timeout. Between processes the P2P transport maps the peer's buffers (P2P/CUMEM with cuMem,
//! else P2P/IPC: transport/p2p.cc), never P2P/direct pointer.
//!
//! The fake's id names a directory instead of a socket: the root creates it, each rank writes
//! its peer info there and waits for the others, as blocking as the real bootstrap. Each
//! all-reduce exchanges the ranks' real input buffers through one file per rank and a shared
//! control page of counters (written, read) per rank, so the sums are real across processes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// NCCL_UNIQUE_ID_BYTES (nccl.h).
pub const ID_BYTES: usize = 128;
const MAGIC: &[u8; 8] = b"FAKEGPU1";
/// Ranks a control page holds (two counters each).
const MAX_RANKS: usize = 1024;
const CTL_BYTES: usize = MAX_RANKS * 16;
/// How often a waiting rank looks again.
const POLL: Duration = Duration::from_millis(1);

/// ncclUniqueId: 128 opaque bytes, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    pub internal: [u8; ID_BYTES],
}

/// ncclGetUniqueId's root: a fresh rendezvous directory with its control page, named in the id.
pub fn new_id() -> Result<UniqueId, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("fakegpu-nccl-{}-{nanos:x}", std::process::id()));
    let path = dir.display().to_string();
    if path.len() + MAGIC.len() + 1 > ID_BYTES {
        return Err(format!("{path}: too long for a unique id"));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{path}: {e}"))?;
    let ctl = File::create(dir.join("ctl")).map_err(|e| e.to_string())?;
    ctl.set_len(CTL_BYTES as u64).map_err(|e| e.to_string())?;
    let mut id = UniqueId {
        internal: [0; ID_BYTES],
    };
    id.internal[..MAGIC.len()].copy_from_slice(MAGIC);
    id.internal[MAGIC.len()..MAGIC.len() + path.len()].copy_from_slice(path.as_bytes());
    Ok(id)
}

/// The rendezvous directory an id names; None for bytes no ncclGetUniqueId of the fake made.
pub fn dir_of(id: &UniqueId) -> Option<PathBuf> {
    let rest = id.internal.strip_prefix(MAGIC.as_slice())?;
    let end = rest.iter().position(|&b| b == 0)?;
    let p = std::str::from_utf8(&rest[..end]).ok()?;
    Path::new(p).is_dir().then(|| PathBuf::from(p))
}

/// What a rank tells the others at init (NCCL's peerInfo).
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub rank: usize,
    pub cuda_dev: i32,
    pub nvml_dev: u32,
    pub bus_id: u64,
    pub gpu: Option<usize>,
    pub addr: usize,
    pub pid: u32,
}

impl Peer {
    fn line(&self) -> String {
        format!(
            "{} {} {} {} {} {} {}\n",
            self.rank,
            self.cuda_dev,
            self.nvml_dev,
            self.bus_id,
            self.gpu.map_or(-1, |g| g as i64),
            self.addr,
            self.pid
        )
    }

    fn parse(s: &str) -> Option<Peer> {
        let f: Vec<&str> = s.split_whitespace().collect();
        let [rank, dev, nvml, bus, gpu, addr, pid] = f[..] else {
            return None;
        };
        Some(Peer {
            rank: rank.parse().ok()?,
            cuda_dev: dev.parse().ok()?,
            nvml_dev: nvml.parse().ok()?,
            bus_id: bus.parse().ok()?,
            gpu: usize::try_from(gpu.parse::<i64>().ok()?).ok(),
            addr: addr.parse().ok()?,
            pid: pid.parse().ok()?,
        })
    }
}

/// The bootstrap allgather: publish `me`, then wait (without end, as NCCL does) for all
/// `nranks` ranks. Err when the directory cannot be written or two ranks claim one rank.
pub fn join(dir: &Path, me: &Peer, nranks: usize) -> Result<Vec<Peer>, String> {
    let tmp = dir.join(format!(".rank-{}.{}", me.rank, me.pid));
    std::fs::write(&tmp, me.line()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dir.join(format!("rank-{}", me.rank))).map_err(|e| e.to_string())?;
    loop {
        let peers: Vec<Option<Peer>> = (0..nranks)
            .map(|r| {
                std::fs::read_to_string(dir.join(format!("rank-{r}")))
                    .ok()
                    .and_then(|s| Peer::parse(&s))
            })
            .collect();
        if peers.iter().all(Option::is_some) {
            let peers: Vec<Peer> = peers.into_iter().flatten().collect();
            if peers[me.rank] != *me {
                return Err(format!("rank {} joined twice", me.rank));
            }
            return Ok(peers);
        }
        std::thread::sleep(POLL);
    }
}

/// A rank leaves (its communicator destroyed or aborted); the last rank out removes the
/// directory. A rank's data stays until then: a peer may still be reading its last input.
/// Best effort: a killed process leaves its files behind.
pub fn leave(dir: &Path, rank: usize) {
    let _ = std::fs::remove_file(dir.join(format!("rank-{rank}")));
    let others = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("rank-"))
        })
        .unwrap_or(true);
    if !others {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// One rank's side of the exchange of all-reduce inputs.
pub struct Exchange {
    dir: PathBuf,
    rank: usize,
    nranks: usize,
    ctl: *mut AtomicU64,
    mine: File,
    seq: u64,
}

// SAFETY: the control page is shared memory of atomics; the exchange is used by one thread.
unsafe impl Send for Exchange {}

impl Exchange {
    pub fn open(dir: &Path, rank: usize, nranks: usize) -> Result<Exchange, String> {
        if nranks > MAX_RANKS {
            return Err(format!("{nranks} ranks: the fake holds {MAX_RANKS}"));
        }
        let ctl = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("ctl"))
            .map_err(|e| e.to_string())?;
        use std::os::fd::AsRawFd;
        // SAFETY: a shared mapping of the whole control file, kept for the process's life.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CTL_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                ctl.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let mine = File::create(dir.join(format!("data-{rank}"))).map_err(|e| e.to_string())?;
        Ok(Exchange {
            dir: dir.to_path_buf(),
            rank,
            nranks,
            ctl: p.cast(),
            mine,
            seq: 0,
        })
    }

    /// written[r] (which collective rank r's data is for) and read[r] (the last one it read).
    fn counter(&self, rank: usize, read: bool) -> &AtomicU64 {
        // SAFETY: rank < MAX_RANKS; the mapping lives as long as the process.
        unsafe { &*self.ctl.add(rank * 2 + usize::from(read)) }
    }

    fn wait(&self, read: bool, at_least: u64) {
        for r in (0..self.nranks).filter(|&r| r != self.rank || !read) {
            while self.counter(r, read).load(Ordering::Acquire) < at_least {
                std::thread::sleep(POLL);
            }
        }
    }

    /// The next all-reduce: publish `send`, wait for every rank's, and return the sum. A rank
    /// that never arrives makes this wait for ever, as a real collective does.
    pub fn all_reduce(&mut self, send: &[f32]) -> Result<Vec<f32>, String> {
        self.seq += 1;
        let k = self.seq;
        // Nobody still reads my data of the last collective.
        self.wait(true, k - 1);
        let bytes: Vec<u8> = send.iter().flat_map(|v| v.to_ne_bytes()).collect();
        self.mine
            .write_all_at(&bytes, 0)
            .map_err(|e| e.to_string())?;
        self.counter(self.rank, false).store(k, Ordering::Release);
        self.wait(false, k);
        let mut sum = send.to_vec();
        let mut buf = vec![0u8; bytes.len()];
        for r in (0..self.nranks).filter(|&r| r != self.rank) {
            let f = File::open(self.dir.join(format!("data-{r}"))).map_err(|e| e.to_string())?;
            f.read_exact_at(&mut buf, 0).map_err(|e| e.to_string())?;
            for (a, w) in sum.iter_mut().zip(buf.chunks_exact(4)) {
                *a += f32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
            }
        }
        self.counter(self.rank, true).store(k, Ordering::Release);
        Ok(sum)
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn ids_name_their_directory_and_nothing_else() {
        let id = new_id().unwrap();
        let dir = dir_of(&id).unwrap();
        assert!(dir.join("ctl").is_file());
        let mut bad = id;
        bad.internal[0] = b'X';
        assert_eq!(dir_of(&bad), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn ranks_in_threads_sum_what_each_sent() {
        let id = new_id().unwrap();
        let dir = dir_of(&id).unwrap();
        let n = 3;
        let sums: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .map(|r| {
                    let dir = dir.clone();
                    s.spawn(move || {
                        let me = Peer {
                            rank: r,
                            cuda_dev: r as i32,
                            nvml_dev: r as u32,
                            bus_id: 0x41000 + r as u64,
                            gpu: Some(r),
                            addr: 0x1000 * (r + 1),
                            pid: 7,
                        };
                        let peers = join(&dir, &me, n).unwrap();
                        assert_eq!(peers.len(), n);
                        let mut x = Exchange::open(&dir, r, n).unwrap();
                        let mut last = Vec::new();
                        for k in 0..5 {
                            last = x.all_reduce(&[r as f32 + k as f32, 1.0]).unwrap();
                        }
                        last
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Last round: (0+4) + (1+4) + (2+4) = 15, and 1 + 1 + 1.
        for s in sums {
            assert_eq!(s, vec![15.0, 3.0]);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
