//! Rank 0's coordinator (parent side: a thread of rank 0's rigdoctor, never a GPU): it lets
//! the ranks join, checks the world, collects each node's check, runs the NCCL jobs (every GPU
//! of every node, then each node alone and node pairs to isolate a failure) by handing out
//! each job's unique id, and gathers what every rank saw. Every wait has a deadline; a rank
//! that never comes, leaves, or goes quiet is named, and the run goes on without it.

use super::wire::{self, Event, Hello, ToCoordinator, ToMember};
use crate::facts::{AllReduceOutcome, NcclFacts, Probed, Why};
use crate::measure::gpu::NcclConfig;
use crate::probe::gpu::SettledRank;
use crate::report::Report;
use serde::Serialize;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a connection may stay silent before it says who it is.
const HELLO_WITHIN: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(20);

pub struct Plan {
    pub world: usize,
    /// For every rank to join.
    pub join: Duration,
    /// For every node's quick check.
    pub node: Duration,
    /// For one NCCL job, from Run to every rank's result.
    pub job: Duration,
    /// Isolate (each node alone, then node pairs) even when the all-GPU job passed.
    pub pairwise: bool,
    /// The hosts the launcher started the run on, when it says (Slurm).
    pub hosts: Vec<String>,
    /// The all-reduce's config, to combine the ranks' results.
    pub nccl: NcclConfig,
    pub nccl_secs: f64,
}

/// What became of one rank of the world.
#[derive(Debug, Clone, Serialize)]
pub struct RankState {
    pub rank: usize,
    pub host: Option<String>,
    pub pid: Option<u32>,
    /// The CUDA devices it gave NCCL ranks to.
    pub devices: Vec<i32>,
    /// "ok", or why it is not (never joined, refused, left, went quiet, no GPU).
    pub status: String,
}

/// One NCCL job: which nodes, how it went, combined over every rank.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// "every node", "node-b alone", "node-a + node-c".
    pub what: String,
    pub hosts: Vec<String>,
    pub nccl: NcclFacts,
    /// Each rank's name ("rank 3 (node-b GPU 1)"), in the order of `nccl.ranks`.
    pub labels: Vec<String>,
    /// NCCL versions the ranks loaded, with the hosts of each.
    pub versions: Vec<(String, Vec<String>)>,
    /// Ranks of the world that left or went quiet during the job (with why).
    pub lost: Vec<String>,
    /// The network each node's NCCL chose at init, from its log ("node-a: NET/Socket : Using
    /// [0]eth0:10.0.0.1<0>").
    pub net: Vec<String>,
}

impl Job {
    /// Every size timed and every rank's sum right.
    pub fn passed(&self) -> bool {
        !self.nccl.results.is_empty()
            && self.nccl.results.iter().all(|r| match &r.outcome {
                AllReduceOutcome::Measured { wrong, .. } => wrong.iter().all(|&w| w == 0),
                _ => false,
            })
            && self.lost.is_empty()
    }

    /// The bus bandwidth of its largest size, when it was measured.
    pub fn busbw(&self) -> Option<f64> {
        self.nccl
            .results
            .iter()
            .rev()
            .find_map(|r| match r.outcome {
                AllReduceOutcome::Measured { busbw_gbps, .. } => Some(busbw_gbps),
                _ => None,
            })
    }
}

/// What the coordinator saw, for the merged report.
#[derive(Debug, Default)]
pub struct Outcome {
    pub ranks: Vec<RankState>,
    /// Ranks refused, with why (another version, a rank twice, another world size).
    pub refused: Vec<String>,
    /// rigdoctor versions that differ from rank 0's, with their ranks.
    pub other_versions: Vec<String>,
    /// Hosts the launcher named that no rank came from.
    pub hosts_missing: Vec<String>,
    pub nodes: Vec<Report>,
    pub all: Option<Job>,
    pub isolation: Vec<Job>,
    /// Why no isolation ran after a failure, when it did not.
    pub isolation_skipped: Option<String>,
    pub interrupted: Option<i32>,
}

struct Member {
    hello: Hello,
    stream: TcpStream,
    node_done: bool,
    devices: Vec<i32>,
    /// Why this rank is out of the run (None: in it).
    out: Option<String>,
}

pub struct Coordinator {
    plan: Plan,
    listener: TcpListener,
    rx: Receiver<(usize, Event<ToCoordinator>)>,
    tx: mpsc::Sender<(usize, Event<ToCoordinator>)>,
    /// Every accepted connection, by index: the rank once it said hello, and when it came.
    conns: Vec<(TcpStream, Option<usize>, Instant)>,
    members: Vec<Option<Member>>,
    next_job: u32,
    /// The join is over: a hello now is refused.
    formed: bool,
    last_beat: Instant,
    out: Outcome,
}

fn interrupted() -> bool {
    crate::measure::interrupted()
}

impl Coordinator {
    pub fn new(listener: TcpListener, plan: Plan) -> Coordinator {
        let (tx, rx) = mpsc::channel();
        let members = (0..plan.world).map(|_| None).collect();
        Coordinator {
            plan,
            listener,
            rx,
            tx,
            conns: Vec::new(),
            members,
            next_job: 0,
            formed: false,
            last_beat: Instant::now(),
            out: Outcome::default(),
        }
    }

    fn say(&self, what: &str) {
        eprintln!("rigdoctor cluster: {what}");
    }

    fn label(&self, rank: usize) -> String {
        match self.members.get(rank).and_then(|m| m.as_ref()) {
            Some(m) => format!("rank {rank} ({})", m.hello.host),
            None => format!("rank {rank}"),
        }
    }

    /// Run everything; the outcome for the report. The ranks still connected wait for
    /// [`Coordinator::finish`].
    pub fn gather(&mut self) -> Outcome {
        self.join();
        self.node_checks();
        self.jobs();
        self.out.interrupted = crate::measure::interrupt_signal();
        self.out.ranks = (0..self.plan.world)
            .map(|r| match &self.members[r] {
                Some(m) => RankState {
                    rank: r,
                    host: Some(m.hello.host.clone()),
                    pid: Some(m.hello.pid),
                    devices: m.devices.clone(),
                    status: m.out.clone().unwrap_or_else(|| "ok".into()),
                },
                None => RankState {
                    rank: r,
                    host: None,
                    pid: None,
                    devices: Vec::new(),
                    status: format!("did not join within {:.0} s", self.plan.join.as_secs_f64()),
                },
            })
            .collect();
        std::mem::take(&mut self.out)
    }

    /// Tell every rank still connected the run's end.
    pub fn finish(&mut self, code: u8, verdict: &str) {
        for m in self.members.iter_mut().flatten() {
            let _ = wire::send(
                &m.stream,
                &ToMember::Done {
                    code,
                    verdict: verdict.to_string(),
                },
            );
        }
    }

    /// Accept until every rank said hello or the join deadline passed.
    fn join(&mut self) {
        let deadline = Instant::now() + self.plan.join;
        let _ = self.listener.set_nonblocking(true);
        while Instant::now() < deadline && !interrupted() {
            if self.members.iter().all(Option::is_some) {
                break;
            }
            self.accept();
            match self.rx.recv_timeout(TICK) {
                Ok((c, Event::Msg(ToCoordinator::Hello(h)))) => self.hello(c, h),
                Ok((c, Event::Msg(_))) => self.drop_conn(c, "spoke before saying hello"),
                Ok((c, Event::Gone(why))) => self.gone(c, &why),
                Err(_) => {}
            }
        }
        let joined = self.members.iter().flatten().count();
        self.say(&format!("{joined} of {} ranks joined", self.plan.world));
        let seen: Vec<&str> = self
            .members
            .iter()
            .flatten()
            .map(|m| m.hello.host.as_str())
            .collect();
        // Slurm's node names may not be the kernel's host names: each rank says both.
        let slurm: Vec<&str> = self
            .members
            .iter()
            .flatten()
            .filter_map(|m| m.hello.slurm_node.as_deref())
            .collect();
        self.out.hosts_missing = self
            .plan
            .hosts
            .iter()
            .filter(|h| {
                !seen
                    .iter()
                    .any(|s| s == h || s.split('.').next() == Some(h))
                    && !slurm.iter().any(|s| s == h)
            })
            .cloned()
            .collect();
        for m in self.members.iter_mut().flatten() {
            if m.out.is_none() {
                let _ = wire::send(&m.stream, &ToMember::Welcome { world: joined });
            }
        }
        self.formed = true;
    }

    /// Take the connections waiting (in every phase: one that comes late is refused, not left
    /// waiting), and close those that never said who they are.
    fn accept(&mut self) {
        // Every loop of every phase passes here: the heartbeat too.
        if self.last_beat.elapsed() >= wire::BEAT {
            self.last_beat = Instant::now();
            for m in self.members.iter().flatten() {
                let _ = wire::send(&m.stream, &ToMember::Beat);
            }
        }
        while let Ok((s, _)) = self.listener.accept() {
            // Each connection has a reader thread: a flood of strangers is cut off, not served.
            if self.conns.len() >= 4 * self.plan.world + 64 {
                let _ = s.shutdown(std::net::Shutdown::Both);
                continue;
            }
            let _ = s.set_nonblocking(false);
            // A rank that stops reading must not stop the coordinator's writes for long.
            let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
            let Ok(reader) = s.try_clone() else { continue };
            wire::spawn_reader(reader, self.conns.len(), self.tx.clone());
            self.conns.push((s, None, Instant::now()));
        }
        for (s, rank, at) in &self.conns {
            if rank.is_none() && at.elapsed() > HELLO_WITHIN {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn hello(&mut self, conn: usize, mut h: Hello) {
        // A host name is at most 255 bytes (HOST_NAME_MAX is 64 on Linux); a longer one is cut.
        if h.host.len() > 255 {
            let mut end = 255;
            while !h.host.is_char_boundary(end) {
                end -= 1;
            }
            h.host.truncate(end);
        }
        let ours = env!("CARGO_PKG_VERSION");
        let refuse = |why: String| why;
        let why = if h.version != ours {
            self.out.other_versions.push(format!(
                "rank {} ({}) runs rigdoctor {}, rank 0 runs {ours}",
                h.rank, h.host, h.version
            ));
            Some(refuse(format!(
                "rigdoctor {} here, {ours} at rank 0: install one version on every node",
                h.version
            )))
        } else if h.world != self.plan.world {
            Some(format!(
                "this rank was started in a world of {}, rank 0 in one of {}",
                h.world, self.plan.world
            ))
        } else if h.rank >= self.plan.world {
            Some(format!(
                "rank {} is not below the world size {}",
                h.rank, self.plan.world
            ))
        } else if let Some(m) = &self.members[h.rank] {
            Some(format!(
                "rank {} joined twice: {} (pid {}) first, then {} (pid {})",
                h.rank, m.hello.host, m.hello.pid, h.host, h.pid
            ))
        } else if self.formed {
            Some("it came after the world was formed (after rank 0's --join-timeout)".into())
        } else {
            None
        };
        if let Some(why) = why {
            self.out.refused.push(format!(
                "rank {} from {} (pid {}): {why}",
                h.rank, h.host, h.pid
            ));
            let _ = wire::send(&self.conns[conn].0, &ToMember::Refused { why });
            let _ = self.conns[conn].0.shutdown(std::net::Shutdown::Both);
            return;
        }
        let Ok(stream) = self.conns[conn].0.try_clone() else {
            return;
        };
        self.conns[conn].1 = Some(h.rank);
        let rank = h.rank;
        self.members[rank] = Some(Member {
            hello: h,
            stream,
            node_done: false,
            devices: Vec::new(),
            out: None,
        });
    }

    fn drop_conn(&mut self, conn: usize, why: &str) {
        if let Some((s, rank, _)) = self.conns.get(conn) {
            let _ = s.shutdown(std::net::Shutdown::Both);
            if let Some(r) = *rank {
                self.leave(r, why.to_string());
            }
        }
    }

    /// A connection ended: its rank (if it had one) is out of the run.
    fn gone(&mut self, conn: usize, why: &str) {
        if let Some(r) = self.conns.get(conn).and_then(|c| c.1) {
            self.leave(r, format!("its rigdoctor process went away: {why}"));
        }
    }

    fn leave(&mut self, rank: usize, why: String) {
        if let Some(m) = self.members[rank].as_mut() {
            if m.out.is_none() {
                m.out = Some(why);
            }
        }
    }

    fn live(&self, rank: usize) -> bool {
        self.members[rank].as_ref().is_some_and(|m| m.out.is_none())
    }

    fn rank_of(&self, conn: usize) -> Option<usize> {
        self.conns.get(conn).and_then(|c| c.1)
    }

    fn node_checks(&mut self) {
        let deadline = Instant::now() + self.plan.node;
        self.say("node checks (host, GPU inventory, P2P)");
        // In rank order, whatever order they come in.
        let mut nodes: Vec<(usize, Report)> = Vec::new();
        while !interrupted() {
            let waiting: Vec<usize> = (0..self.plan.world)
                .filter(|&r| self.live(r) && !self.members[r].as_ref().is_some_and(|m| m.node_done))
                .collect();
            if waiting.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for r in waiting {
                    self.leave(
                        r,
                        format!(
                            "sent no node check within {:.0} s",
                            self.plan.node.as_secs_f64()
                        ),
                    );
                }
                break;
            }
            match self.rx.recv_timeout(TICK) {
                Ok((
                    c,
                    Event::Msg(ToCoordinator::Node {
                        report,
                        devices,
                        why,
                    }),
                )) => {
                    let Some(r) = self.rank_of(c) else { continue };
                    // At most one machine's worth of distinct, valid ordinals, as --devices.
                    let mut devices = devices;
                    let n = devices.len();
                    devices.sort_unstable();
                    devices.dedup();
                    let bad = devices.len() != n
                        || devices.len() > crate::facts::MAX_DEVICES
                        || devices
                            .iter()
                            .any(|&d| d < 0 || d as usize >= crate::facts::MAX_DEVICES);
                    if let Some(m) = self.members[r].as_mut() {
                        if m.node_done {
                            continue;
                        }
                        m.node_done = true;
                        m.devices = if bad { Vec::new() } else { devices };
                        if bad {
                            m.out =
                                Some("sent a device list that is not one machine's GPUs".into());
                            continue;
                        }
                        if m.devices.is_empty() {
                            m.out = Some(format!(
                                "no CUDA device to run NCCL on{}",
                                why.map(|w| format!(": {w}")).unwrap_or_default()
                            ));
                        }
                    }
                    if let Some(rep) = report {
                        nodes.push((r, *rep));
                    }
                }
                Ok((c, Event::Msg(ToCoordinator::Hello(h)))) => self.hello(c, h),
                Ok((c, Event::Msg(_))) => self.drop_conn(c, "sent a message out of turn"),
                Ok((c, Event::Gone(why))) => self.gone(c, &why),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        nodes.sort_by_key(|(r, _)| *r);
        self.out.nodes = nodes.into_iter().map(|(_, rep)| rep).collect();
        self.duplicate_gpus();
    }

    /// Two ranks of one host that give NCCL the same GPU: NCCL refuses the communicator
    /// ("Duplicate GPU detected"), so the later rank is left out and named.
    fn duplicate_gpus(&mut self) {
        for b in 0..self.plan.world {
            for a in 0..b {
                let (Some(ma), Some(mb)) = (&self.members[a], &self.members[b]) else {
                    continue;
                };
                if ma.out.is_some() || mb.out.is_some() || ma.hello.host != mb.hello.host {
                    continue;
                }
                if let Some(d) = mb.devices.iter().find(|d| ma.devices.contains(d)) {
                    let why = format!(
                        "uses GPU {d} of {} as rank {a} does: give each rank of a node its own GPU (--devices, or one rank per node)",
                        mb.hello.host
                    );
                    self.leave(b, why);
                }
            }
        }
    }

    /// The nodes of the run (ranks in the job, by host), in rank order of their first rank.
    fn nodes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> = Vec::new();
        for r in (0..self.plan.world).filter(|&r| self.live(r)) {
            let host = self.members[r]
                .as_ref()
                .map(|m| m.hello.host.clone())
                .unwrap_or_default();
            match out.iter_mut().find(|(h, _)| *h == host) {
                Some((_, v)) => v.push(r),
                None => out.push((host, vec![r])),
            }
        }
        out
    }

    fn jobs(&mut self) {
        let nodes = self.nodes();
        if nodes.is_empty() || interrupted() {
            return;
        }
        let everyone: Vec<usize> = nodes.iter().flat_map(|(_, r)| r.clone()).collect();
        let gpus: usize = everyone
            .iter()
            .filter_map(|&r| self.members[r].as_ref())
            .map(|m| m.devices.len())
            .sum();
        self.say(&format!(
            "all-reduce across {gpus} GPUs of {} nodes",
            nodes.len()
        ));
        let hosts: Vec<String> = nodes.iter().map(|(h, _)| h.clone()).collect();
        let all = self
            .run_jobs(vec![(
                format!("every node ({})", hosts.len()),
                hosts,
                everyone,
            )])
            .pop();
        let failed = all.as_ref().is_some_and(|j| !j.passed());
        let lost = all.as_ref().is_some_and(|j| !j.lost.is_empty());
        self.out.all = all;
        if !(failed || self.plan.pairwise) || interrupted() || nodes.len() < 2 {
            return;
        }
        if lost && !self.plan.pairwise {
            self.out.isolation_skipped = Some(
                "a rank left during the all-reduce, which explains it: nodes alone and node pairs were not run (--pairwise runs them)".into(),
            );
            return;
        }
        // Each node alone, side by side: a node that fails by itself is the cause.
        self.say("isolating: each node alone");
        let alone = self.run_jobs(
            self.nodes()
                .into_iter()
                .map(|(h, r)| (format!("{h} alone"), vec![h], r))
                .collect(),
        );
        let good: Vec<(String, Vec<usize>)> = self
            .nodes()
            .into_iter()
            .filter(|(h, _)| alone.iter().any(|j| j.hosts == [h.clone()] && j.passed()))
            .collect();
        self.out.isolation.extend(alone);
        // Then every pair of the nodes that pass alone, in rounds of disjoint pairs (the
        // circle method: n-1 rounds for n nodes, each pair once).
        for round in rounds(good.len()) {
            if interrupted() {
                break;
            }
            self.say(&format!("isolating: {} node pair(s)", round.len()));
            // A node whose rank left or went quiet in an earlier round is not paired again: its
            // pairs would fail for that, not for their link.
            let jobs: Vec<_> = round
                .into_iter()
                .filter(|&(a, b)| good[a].1.iter().chain(&good[b].1).all(|&r| self.live(r)))
                .map(|(a, b)| {
                    let (ha, ra) = &good[a];
                    let (hb, rb) = &good[b];
                    let mut ranks = ra.clone();
                    ranks.extend(rb);
                    ranks.sort_unstable();
                    (format!("{ha} + {hb}"), vec![ha.clone(), hb.clone()], ranks)
                })
                .collect();
            if jobs.is_empty() {
                continue;
            }
            let done = self.run_jobs(jobs);
            self.out.isolation.extend(done);
        }
    }

    /// Give job `job`'s id (None: none was made) to these ranks, which wait for it.
    fn hand_id(&self, ranks: &[usize], job: u32, id: Option<String>) {
        for &o in ranks {
            if let Some(m) = &self.members[o] {
                let _ = wire::send(
                    &m.stream,
                    &ToMember::Id {
                        job,
                        id: id.clone(),
                    },
                );
            }
        }
    }

    /// Run these jobs side by side (their ranks are disjoint); each ends when every rank
    /// answered, left, or the job's deadline passed.
    fn run_jobs(&mut self, jobs: Vec<(String, Vec<String>, Vec<usize>)>) -> Vec<Job> {
        struct Running {
            id: u32,
            what: String,
            hosts: Vec<String>,
            members: Vec<usize>,
            firsts: Vec<usize>,
            pending: Vec<usize>,
            id_sent: bool,
            ranks: Vec<SettledRank>,
            log: Vec<String>,
            net: Vec<String>,
            lost: Vec<String>,
        }
        let mut running: Vec<Running> = Vec::new();
        for (what, hosts, members) in jobs {
            let id = self.next_job;
            self.next_job += 1;
            let mut firsts = Vec::new();
            let mut n = 0;
            for &r in &members {
                firsts.push(n);
                n += self.members[r].as_ref().map_or(0, |m| m.devices.len());
            }
            let job = Running {
                id,
                what,
                hosts,
                members: members.clone(),
                firsts: firsts.clone(),
                pending: members.clone(),
                id_sent: false,
                ranks: Vec::new(),
                log: Vec::new(),
                net: Vec::new(),
                lost: Vec::new(),
            };
            for (&r, &first) in members.iter().zip(&firsts) {
                let sent = self.members[r].as_ref().is_some_and(|m| {
                    wire::send(
                        &m.stream,
                        &ToMember::Run {
                            job: id,
                            first,
                            nranks: n,
                        },
                    )
                });
                if !sent {
                    self.leave(r, "its connection broke".into());
                }
            }
            // A rank whose Run could not be sent is lost to the job in the loop below (said,
            // and its id handed on as none when it was to make it).
            running.push(job);
        }
        let deadline = Instant::now() + self.plan.job;
        loop {
            // Ranks out of the run are lost to their jobs; a job whose id maker left hands
            // the others "no id" so they stop waiting.
            for j in running.iter_mut() {
                let gone: Vec<usize> = j
                    .pending
                    .iter()
                    .copied()
                    .filter(|&r| !self.live(r))
                    .collect();
                for r in gone {
                    let why = self.members[r]
                        .as_ref()
                        .and_then(|m| m.out.clone())
                        .unwrap_or_default();
                    j.lost.push(format!("{}: {why}", self.label(r)));
                    j.pending.retain(|&x| x != r);
                    if r == j.members[0] && !j.id_sent {
                        j.id_sent = true;
                        self.hand_id(&j.members[1..], j.id, None);
                    }
                }
            }
            if running.iter().all(|j| j.pending.is_empty()) || interrupted() {
                break;
            }
            if Instant::now() >= deadline {
                let secs = self.plan.job.as_secs_f64();
                for j in running.iter_mut() {
                    for &r in &j.pending {
                        j.lost.push(format!(
                            "{}: sent no result within {secs:.0} s (its NCCL ranks would have been stopped by then)",
                            self.label(r)
                        ));
                    }
                }
                let stuck: Vec<usize> = running.iter().flat_map(|j| j.pending.clone()).collect();
                for r in stuck {
                    self.leave(r, format!("sent no result within {secs:.0} s"));
                }
                break;
            }
            self.accept();
            match self.rx.recv_timeout(TICK) {
                Ok((c, Event::Msg(ToCoordinator::Id { job, id }))) => {
                    let Some(j) = running.iter_mut().find(|j| j.id == job) else {
                        continue;
                    };
                    if self.rank_of(c) != Some(j.members[0]) || j.id_sent {
                        continue;
                    }
                    j.id_sent = true;
                    self.hand_id(&j.members[1..], job, id);
                }
                Ok((c, Event::Msg(ToCoordinator::Ranks { job, ranks, log }))) => {
                    let Some(r) = self.rank_of(c) else { continue };
                    let Some(j) = running.iter_mut().find(|j| j.id == job) else {
                        continue;
                    };
                    if !j.pending.contains(&r) {
                        continue;
                    }
                    j.pending.retain(|&x| x != r);
                    // Only the ranks this member was given, whatever it says.
                    let k = j.members.iter().position(|&m| m == r).unwrap_or(0);
                    let first = j.firsts[k];
                    let count = self.members[r].as_ref().map_or(0, |m| m.devices.len());
                    j.ranks.extend(
                        ranks
                            .into_iter()
                            .filter(|s| (first..first + count).contains(&s.rank)),
                    );
                    let host = self.members[r]
                        .as_ref()
                        .map(|m| m.hello.host.clone())
                        .unwrap_or_default();
                    for l in log.into_iter().take(2000) {
                        match crate::probe::gpu::net_choice(&l) {
                            Some(n) => {
                                let n = format!("{host}: {n}");
                                if !j.net.contains(&n) {
                                    j.net.push(n);
                                }
                            }
                            None => j.log.push(l),
                        }
                    }
                }
                Ok((c, Event::Msg(ToCoordinator::Hello(h)))) => self.hello(c, h),
                // A node check that came after its deadline: that rank is out already.
                Ok((_, Event::Msg(ToCoordinator::Node { .. }))) => {}
                Ok((c, Event::Gone(why))) => self.gone(c, &why),
                Err(_) => {}
            }
        }
        running
            .into_iter()
            .map(|j| {
                let mut ranks = j.ranks;
                // Every rank of the job appears: those whose process never answered are
                // said as such, so a merged result never looks complete when it is not.
                for (&m, &first) in j.members.iter().zip(&j.firsts) {
                    let Some(mem) = self.members[m].as_ref() else {
                        continue;
                    };
                    for (k, &d) in mem.devices.iter().enumerate() {
                        let g = first + k;
                        if !ranks.iter().any(|s| s.rank == g) {
                            let why = mem.out.clone().unwrap_or_else(|| "no result came".into());
                            let mut facts = crate::probe::gpu::empty_nccl_facts(
                                &self.plan.nccl,
                                self.plan.nccl_secs,
                            );
                            facts.library = Probed::unknown(
                                Why::Failed,
                                format!("no result from this rank: {why}"),
                            );
                            ranks.push(SettledRank {
                                rank: g,
                                device: d,
                                label: format!("rank {g} ({} GPU {d})", mem.hello.host),
                                facts,
                            });
                        }
                    }
                }
                ranks.sort_by_key(|s| s.rank);
                let host_of = |g: usize| -> String {
                    j.members
                        .iter()
                        .zip(&j.firsts)
                        .rfind(|(_, &f)| f <= g)
                        .and_then(|(&m, _)| self.members[m].as_ref())
                        .map(|m| m.hello.host.clone())
                        .unwrap_or_default()
                };
                let mut versions: Vec<(String, Vec<String>)> = Vec::new();
                for s in &ranks {
                    let Some(l) = s.facts.library.known() else {
                        continue;
                    };
                    let host = host_of(s.rank);
                    match versions.iter_mut().find(|(v, _)| *v == l.version) {
                        Some((_, hs)) if hs.contains(&host) => {}
                        Some((_, hs)) => hs.push(host),
                        None => versions.push((l.version.clone(), vec![host])),
                    }
                }
                let labels = ranks.iter().map(|s| s.label.clone()).collect();
                let nccl = crate::probe::gpu::combine_ranks(
                    &self.plan.nccl,
                    ranks,
                    &j.log,
                    self.plan.nccl_secs,
                );
                Job {
                    what: j.what,
                    hosts: j.hosts,
                    nccl,
                    labels,
                    versions,
                    lost: j.lost,
                    net: j.net,
                }
            })
            .collect()
    }
}

/// Rounds of disjoint pairs covering every pair of `n` nodes once (round-robin "circle"
/// scheduling; with an odd count one node sits each round out).
pub fn rounds(n: usize) -> Vec<Vec<(usize, usize)>> {
    if n < 2 {
        return Vec::new();
    }
    let m = n + n % 2;
    let mut ring: Vec<usize> = (0..m).collect();
    let mut out = Vec::new();
    for _ in 0..m - 1 {
        let round: Vec<(usize, usize)> = (0..m / 2)
            .map(|i| (ring[i], ring[m - 1 - i]))
            .filter(|&(a, b)| a < n && b < n)
            .map(|(a, b)| (a.min(b), a.max(b)))
            .collect();
        out.push(round);
        // Keep the first fixed, rotate the rest.
        let last = ring.pop().unwrap_or(0);
        ring.insert(1, last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_cover_every_pair_once_with_disjoint_pairs() {
        for n in 0..9 {
            let r = rounds(n);
            let mut seen = Vec::new();
            for round in &r {
                let mut used = Vec::new();
                for &(a, b) in round {
                    assert!(!used.contains(&a) && !used.contains(&b), "n={n}: {r:?}");
                    used.extend([a, b]);
                    seen.push((a, b));
                }
            }
            seen.sort_unstable();
            let want: Vec<(usize, usize)> = (0..n)
                .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
                .collect();
            assert_eq!(seen, want, "n={n}");
        }
    }
}
