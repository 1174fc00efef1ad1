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
//! all-reduce exchanges the ranks' real input buffers through one file per rank, mapped shared
//! by every rank, and a shared control page of counters per rank, so the sums are real across
//! processes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// NCCL_UNIQUE_ID_BYTES (nccl.h).
pub const ID_BYTES: usize = 128;
const MAGIC: &[u8; 8] = b"FAKEGPU1";
/// Ranks a control page holds.
const MAX_RANKS: usize = 1024;
/// Counters per rank (see [`Counter`]).
const COUNTERS: usize = 3;
const CTL_BYTES: usize = MAX_RANKS * COUNTERS * 8;
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
    /// NCCL's host hash (misc/utils.cc getHostHash): ranks with another are on another node.
    pub host: u64,
}

impl Peer {
    fn line(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} {}\n",
            self.rank,
            self.cuda_dev,
            self.nvml_dev,
            self.bus_id,
            self.gpu.map_or(-1, |g| g as i64),
            self.addr,
            self.pid,
            self.host
        )
    }

    fn parse(s: &str) -> Option<Peer> {
        let f: Vec<&str> = s.split_whitespace().collect();
        let [rank, dev, nvml, bus, gpu, addr, pid, host] = f[..] else {
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
            host: host.parse().ok()?,
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

/// A shared mapping of a whole file (MAP_SHARED: every process that maps it sees one copy).
struct Map {
    ptr: *mut f32,
    floats: usize,
}

impl Map {
    const NONE: Map = Map {
        ptr: std::ptr::null_mut(),
        floats: 0,
    };

    /// Writable for the rank's own file, read-only for a peer's.
    fn of(f: &File, bytes: usize, writable: bool) -> Result<Map, String> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        use std::os::fd::AsRawFd;
        // SAFETY: a shared mapping of `bytes` of an open file at least that long; unmapped on
        // drop. Nothing is written through it except by the file's own rank.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(Map {
            ptr: p.cast(),
            floats: bytes / 4,
        })
    }

    fn slice(&self, n: usize) -> &[f32] {
        assert!(n <= self.floats);
        // SAFETY: n floats inside the mapping; the protocol keeps its writer away meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr, n) }
    }

    fn slice_mut(&mut self, n: usize) -> &mut [f32] {
        assert!(n <= self.floats);
        // SAFETY: as `slice`; only the rank's own (writable) mapping is written, by that rank.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, n) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: a mapping of this length made by `of`.
            unsafe { libc::munmap(self.ptr.cast(), self.floats * 4) };
        }
    }
}

/// One rank's side of the exchange of all-reduce inputs, done as NCCL's ring does it: a
/// reduce-scatter (each rank sums its own 1/n of the elements over every rank's input) then an
/// all-gather (each rank copies every rank's summed part). Each rank's data file, mapped shared
/// by every rank, holds its input and then its summed part at the same offsets, so a rank moves
/// about twice its buffer per collective whatever the rank count (check's 64 MiB sweeps on 4
/// ranks stay well inside their deadlines on two cores).
///
/// A collective: [`next`](Self::next), fill [`input`](Self::input), [`reduce`](Self::reduce),
/// [`gather`](Self::gather); only `next` and `reduce` wait, so a caller can fill and empty the
/// buffers under a lock it must not hold while peers are awaited.
pub struct Exchange {
    dir: PathBuf,
    rank: usize,
    nranks: usize,
    ctl: *mut AtomicU64,
    mine: File,
    /// Every rank's data file as this rank has mapped it (its own included); remapped when a
    /// collective needs more than the mapping holds.
    maps: Vec<Map>,
    seq: u64,
    count: usize,
}

// SAFETY: the control page is shared memory of atomics; the exchange is used by one thread.
unsafe impl Send for Exchange {}

/// The control page's counters of a rank: the last collective whose input it wrote, whose part
/// it summed, and whose parts it gathered.
#[derive(Clone, Copy)]
enum Counter {
    Written = 0,
    Summed = 1,
    Gathered = 2,
}

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
        let mine = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(format!("data-{rank}")))
            .map_err(|e| e.to_string())?;
        Ok(Exchange {
            dir: dir.to_path_buf(),
            rank,
            nranks,
            ctl: p.cast(),
            mine,
            maps: (0..nranks).map(|_| Map::NONE).collect(),
            seq: 0,
            count: 0,
        })
    }

    fn counter(&self, rank: usize, c: Counter) -> &AtomicU64 {
        // SAFETY: rank < MAX_RANKS; the mapping lives as long as the process.
        unsafe { &*self.ctl.add(rank * COUNTERS + c as usize) }
    }

    fn publish(&self, c: Counter) {
        self.counter(self.rank, c)
            .store(self.seq, Ordering::Release);
    }

    /// Until every other rank's counter `c` reaches `at_least`; for ever if one never does,
    /// as a real collective waits.
    fn wait(&self, c: Counter, at_least: u64) {
        for r in (0..self.nranks).filter(|&r| r != self.rank) {
            while self.counter(r, c).load(Ordering::Acquire) < at_least {
                std::thread::sleep(POLL);
            }
        }
    }

    /// Rank r's mapping, at least `floats` long. A peer's file is already that long: its rank
    /// grew it before publishing the collective.
    fn mapped(&mut self, r: usize, floats: usize) -> Result<&mut Map, String> {
        if self.maps[r].floats < floats {
            self.maps[r] = Map::NONE;
            let bytes = floats * 4;
            let f = if r == self.rank {
                if self.mine.metadata().map_err(|e| e.to_string())?.len() < bytes as u64 {
                    self.mine.set_len(bytes as u64).map_err(|e| e.to_string())?;
                }
                self.mine.try_clone().map_err(|e| e.to_string())?
            } else {
                File::open(self.dir.join(format!("data-{r}"))).map_err(|e| e.to_string())?
            };
            let have = f.metadata().map_err(|e| e.to_string())?.len();
            if have < bytes as u64 {
                return Err(format!("rank {r}'s data holds {have} bytes, not {bytes}"));
            }
            self.maps[r] = Map::of(&f, bytes, r == self.rank)?;
        }
        Ok(&mut self.maps[r])
    }

    /// The elements rank r sums.
    fn part(&self, r: usize) -> std::ops::Range<usize> {
        let per = self.count.div_ceil(self.nranks.max(1));
        (r * per).min(self.count)..((r + 1) * per).min(self.count)
    }

    /// Start the next all-reduce of `count` floats: waits until every peer has gathered the
    /// last one (nobody reads this rank's data any more).
    pub fn next(&mut self, count: usize) -> Result<(), String> {
        self.wait(Counter::Gathered, self.seq);
        self.seq += 1;
        self.count = count;
        self.mapped(self.rank, 2 * count).map(|_| ())
    }

    /// This rank's input of the collective `next` started, to fill.
    pub fn input(&mut self) -> &mut [f32] {
        let n = self.count;
        self.maps[self.rank].slice_mut(n)
    }

    /// Publish the input, wait for every rank's, sum this rank's part over all of them, and
    /// wait until every rank has summed its part.
    pub fn reduce(&mut self) -> Result<(), String> {
        let n = self.count;
        self.publish(Counter::Written);
        self.wait(Counter::Written, self.seq);
        let mine = self.part(self.rank);
        let mut sum = self.maps[self.rank].slice(n)[mine.clone()].to_vec();
        let me = self.rank;
        for r in (0..self.nranks).filter(|&r| r != me) {
            for (a, b) in sum
                .iter_mut()
                .zip(&self.mapped(r, n)?.slice(n)[mine.clone()])
            {
                *a += *b;
            }
        }
        self.maps[self.rank].slice_mut(2 * n)[n + mine.start..n + mine.end].copy_from_slice(&sum);
        self.publish(Counter::Summed);
        self.wait(Counter::Summed, self.seq);
        Ok(())
    }

    /// Copy every rank's summed part into `out` (the collective's count of floats); never
    /// waits.
    pub fn gather(&mut self, out: &mut [f32]) -> Result<(), String> {
        let n = self.count;
        for r in 0..self.nranks {
            let p = self.part(r);
            out[p.clone()]
                .copy_from_slice(&self.mapped(r, 2 * n)?.slice(2 * n)[n + p.start..n + p.end]);
        }
        self.publish(Counter::Gathered);
        Ok(())
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
                            host: 1,
                        };
                        let peers = join(&dir, &me, n).unwrap();
                        assert_eq!(peers.len(), n);
                        let mut x = Exchange::open(&dir, r, n).unwrap();
                        let mut last = Vec::new();
                        // Counts that do not split evenly, and one that grows the mappings.
                        for (k, count) in [2usize, 2, 7, 1, 1000].into_iter().enumerate() {
                            x.next(count).unwrap();
                            for (i, v) in x.input().iter_mut().enumerate() {
                                *v = (r * k + i) as f32;
                            }
                            x.reduce().unwrap();
                            last = vec![0.0; count];
                            x.gather(&mut last).unwrap();
                            let want: Vec<f32> =
                                (0..count).map(|i| (3 * k + 3 * i) as f32).collect();
                            assert_eq!(last, want, "round {k}");
                        }
                        last
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for s in sums {
            assert_eq!(s.len(), 1000);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
