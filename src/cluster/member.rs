//! One rank's side of a cluster run (parent side; its GPU work runs in workers as in
//! `check`): connect to rank 0's coordinator, say who it is, run the node check, then join
//! each NCCL job it is given and send what its ranks saw. Every wait has a deadline; when the
//! coordinator goes away, the rank says so and ends.

use super::launch::Launch;
use super::wire::{self, Event, Hello, ToCoordinator, ToMember};
use crate::measure::gpu::NcclConfig;
use crate::probe::gpu::{IdSource, Span};
use crate::report::Report;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Plan<'a> {
    pub launch: &'a Launch,
    /// This node's host name.
    pub host: String,
    /// To reach rank 0, and for rank 0 to form the world.
    pub join: Duration,
    /// For the rest of the run once the node check is sent (rank 0's jobs are bounded).
    pub rest: Duration,
    pub step: Duration,
    pub nccl: NcclConfig,
}

/// The node check's result: the report (None when another rank of the node runs it) and the
/// CUDA devices this rank gives NCCL ranks to (empty: none, with why).
pub struct NodeCheck {
    pub report: Option<Report>,
    pub devices: Vec<i32>,
    pub why: Option<String>,
}

/// How this rank's run ended.
#[derive(Debug)]
pub enum End {
    /// Rank 0's verdict and exit code.
    Done { code: u8, verdict: String },
    /// Rank 0 refused this rank.
    Refused(String),
    /// No coordinator, or it went away or went quiet.
    Lost(String),
}

pub fn run(plan: &Plan<'_>, node_check: &mut dyn FnMut() -> NodeCheck) -> End {
    let l = plan.launch;
    let at = format!("{}:{}", l.host, l.port);
    let Some(stream) = connect(&l.host, l.port, plan.join) else {
        return End::Lost(format!(
            "no coordinator answered at {at} within {:.0} s: is rank 0 running there, and is the port open between the nodes?",
            plan.join.as_secs_f64()
        ));
    };
    let (tx, rx) = mpsc::channel();
    match stream.try_clone() {
        Ok(r) => wire::spawn_reader::<ToMember>(r, 0, tx),
        Err(e) => return End::Lost(format!("{at}: {e}")),
    }
    let hello = Hello {
        rank: l.rank,
        world: l.world,
        local_rank: l.local_rank,
        host: plan.host.clone(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        launcher: l.launcher.to_string(),
        slurm_node: std::env::var("SLURMD_NODENAME").ok(),
    };
    if !wire::send(&stream, &ToCoordinator::Hello(hello)) {
        return End::Lost(format!("the coordinator at {at} closed the connection"));
    }
    let lost = |why: String| End::Lost(format!("the coordinator (rank 0 at {at}) {why}"));
    // Rank 0 forms the world within its join deadline, counted from its own start.
    match recv(&rx, Instant::now() + plan.join + Duration::from_secs(10)) {
        Ok(ToMember::Welcome { .. }) => {}
        Ok(ToMember::Refused { why }) => return End::Refused(why),
        Ok(ToMember::Done { code, verdict }) => return End::Done { code, verdict },
        Ok(_) => return lost("spoke out of turn".into()),
        Err(why) => return lost(why),
    }
    let check = node_check();
    let node = ToCoordinator::Node {
        report: check.report.map(Box::new),
        devices: check.devices.clone(),
        why: check.why,
    };
    if !wire::send(&stream, &node) {
        return lost("went away".into());
    }
    let deadline = Instant::now() + plan.rest;
    let rx = Mutex::new(rx);
    let done = Mutex::new(None);
    loop {
        let msg = recv(&rx.lock().unwrap_or_else(|e| e.into_inner()), deadline);
        match msg {
            Ok(ToMember::Run { job, first, nranks }) => {
                let ranks = run_job(
                    plan,
                    &stream,
                    &rx,
                    &done,
                    &check.devices,
                    (job, first, nranks),
                );
                let sent = wire::send(&stream, &ranks);
                if let Some((code, verdict)) = done.lock().unwrap_or_else(|e| e.into_inner()).take()
                {
                    return End::Done { code, verdict };
                }
                if !sent {
                    return lost("went away".into());
                }
            }
            Ok(ToMember::Done { code, verdict }) => return End::Done { code, verdict },
            Ok(ToMember::Id { .. }) => {}
            Ok(_) => return lost("spoke out of turn".into()),
            Err(why) => return lost(why),
        }
    }
}

/// Join one job with this rank's devices; its settled ranks for the coordinator.
fn run_job(
    plan: &Plan<'_>,
    stream: &TcpStream,
    rx: &Mutex<Receiver<(usize, Event<ToMember>)>>,
    done: &Mutex<Option<(u8, String)>>,
    devices: &[i32],
    (job, first, nranks): (u32, usize, usize),
) -> ToCoordinator {
    let publish = |id: Option<&str>| {
        let _ = wire::send(
            stream,
            &ToCoordinator::Id {
                job,
                id: id.map(String::from),
            },
        );
    };
    // Rank 0's id comes once its worker made it: within a step deadline and the start of a
    // worker, plus the hop through the coordinator.
    let fetch = || -> Option<String> {
        let until = Instant::now() + plan.step * 2 + Duration::from_secs(10);
        let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match recv(&rx, until) {
                Ok(ToMember::Id { job: j, id }) if j == job => return id,
                // Rank 0 ended the run meanwhile: kept for after the job.
                Ok(ToMember::Done { code, verdict }) => {
                    *done.lock().unwrap_or_else(|e| e.into_inner()) = Some((code, verdict));
                    return None;
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    };
    let span = Span {
        first,
        nranks,
        id: if first == 0 {
            IdSource::Make(&publish)
        } else {
            IdSource::Await(&fetch)
        },
    };
    let (ranks, log) = crate::probe::gpu::nccl_span(
        plan.step,
        &plan.nccl,
        devices,
        &span,
        &plan.host,
        &mut |_| {},
    );
    ToCoordinator::Ranks { job, ranks, log }
}

/// The next message before `until` (rank 0's heartbeats aside), or why none came; rank 0
/// silent for [`wire::SILENCE`] is lost.
fn recv(rx: &Receiver<(usize, Event<ToMember>)>, until: Instant) -> Result<ToMember, String> {
    loop {
        let quiet = Instant::now() + wire::SILENCE;
        match recv_one(rx, until.min(quiet)) {
            Ok(ToMember::Beat) => continue,
            Err(_) if Instant::now() >= quiet && quiet < until => {
                return Err(format!(
                    "went silent for {} s (no heartbeat): its node or the network between is down",
                    wire::SILENCE.as_secs()
                ))
            }
            other => return other,
        }
    }
}

fn recv_one(rx: &Receiver<(usize, Event<ToMember>)>, until: Instant) -> Result<ToMember, String> {
    loop {
        if crate::measure::interrupted() {
            return Err("was not waited for: this rank was interrupted".into());
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("did not answer in time".into());
        }
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok((_, Event::Msg(m))) => return Ok(m),
            Ok((_, Event::Gone(why))) => return Err(format!("went away: {why}")),
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err("went away".into()),
        }
    }
}

/// Connect to rank 0, trying again until `within` (rank 0 may start after this rank).
fn connect(host: &str, port: u16, within: Duration) -> Option<TcpStream> {
    let until = Instant::now() + within;
    while Instant::now() < until && !crate::measure::interrupted() {
        if let Ok(addrs) = (host, port).to_socket_addrs() {
            for a in addrs {
                if let Ok(s) = TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
                    return Some(s);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}
