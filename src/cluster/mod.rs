//! `rigdoctor cluster`: one check across the nodes of a cluster, started on every node by the
//! user's launcher (parent side; GPU work runs in workers as in `check`). Every rank runs a
//! [`member`]; rank 0 also runs the [`coordinator`] on a thread of its own, which forms the
//! world, has each node run its check, runs the NCCL jobs across nodes and writes the merged
//! [`report`]. NCCL does the communication; the coordinator only hands out unique ids and
//! collects results, over one TCP connection per rank to the address the launcher names.

pub mod coordinator;
pub mod findings;
pub mod launch;
pub mod member;
pub mod report;
pub mod wire;

use crate::allow::Allow;
use crate::cli::ClusterArgs;
use crate::finding::Severity;
use anyhow::{bail, Context, Result};
use std::net::{TcpListener, ToSocketAddrs};
use std::time::Duration;

pub use launch::Launch;
pub use member::{End, NodeCheck};
pub use report::ClusterReport;

/// How long the parts of a run may take, from the flags.
pub struct Deadlines {
    pub step: Duration,
    pub join: Duration,
    /// A node's check: its GPU steps are bounded by their own deadlines; this is the backstop.
    pub node: Duration,
    /// One NCCL job: a worker start and init (a step deadline each), the sweep's deadline,
    /// and the hops through the coordinator.
    pub job: Duration,
    /// What a rank waits for the coordinator after its node check.
    pub rest: Duration,
    pub nccl_secs: f64,
}

impl Deadlines {
    pub fn of(a: &ClusterArgs, world: usize) -> Deadlines {
        let step = Duration::from_secs_f64(a.gpu.timeout);
        let (_, sweep) = crate::probe::gpu::nccl_plan(step, &a.nccl());
        let node = Duration::from_secs(120) + step * 60;
        let job = sweep.max(step) + step * 2 + Duration::from_secs(15);
        Deadlines {
            step,
            join: Duration::from_secs_f64(a.join_timeout),
            node,
            job,
            rest: node + job * (world.min(launch::MAX_WORLD) as u32 + 2) + Duration::from_secs(30),
            nccl_secs: sweep.as_secs_f64(),
        }
    }
}

/// What this rank's run came to: at rank 0 the exit code it gave every rank (its report was
/// written before the others were told), and how this rank ended.
pub struct Ran {
    pub code: Option<u8>,
    pub end: End,
}

/// Writes rank 0's merged report (stdout, `-o`); an error makes the run's code 2.
pub type Emit<'a> = Box<dyn FnOnce(&ClusterReport) -> Result<()> + Send + 'a>;

/// Run this rank (and at rank 0 the coordinator): `node_check` is this node's check, `emit`
/// writes the merged report at rank 0.
pub fn run(
    a: &ClusterArgs,
    launch: &Launch,
    host: String,
    (fail_on, allows): (Severity, &[Allow]),
    node_check: &mut dyn FnMut() -> NodeCheck,
    emit: Emit<'_>,
) -> Result<Ran> {
    let d = Deadlines::of(a, launch.world);
    let at = format!("{}:{}", launch.host, launch.port);
    let listener = if launch.rank == 0 {
        Some(listen(&launch.host, launch.port)
            .with_context(|| format!("rank 0 cannot listen at {at} for the other ranks (is the port in use? give --coordinator HOST:PORT or --port)"))?)
    } else {
        None
    };
    let plan = coordinator::Plan {
        world: launch.world,
        join: d.join,
        node: d.node,
        job: d.job,
        pairwise: a.pairwise,
        hosts: launch.hosts.clone(),
        nccl: a.nccl(),
        nccl_secs: d.nccl_secs,
    };
    let meta = report::Meta {
        launcher: launch.launcher.to_string(),
        coordinator: at.clone(),
        world: launch.world,
        notes: launch.notes.clone(),
    };
    let member_plan = member::Plan {
        launch,
        host,
        join: d.join,
        rest: d.rest,
        step: d.step,
        nccl: a.nccl(),
    };
    std::thread::scope(|s| {
        let coordinator = listener.map(|listener| {
            s.spawn(move || {
                let mut c = coordinator::Coordinator::new(listener, plan);
                let out = c.gather();
                let fleet = report::fleet_nodes(&out.nodes);
                let mut f = findings::findings(&out, &fleet, &meta.coordinator);
                f.extend(report::node_findings(&out.nodes, &fleet));
                crate::allow::apply(&mut f, allows);
                let code = match out.interrupted {
                    Some(sig) => (128 + sig).clamp(0, 255) as u8,
                    None if f
                        .iter()
                        .any(|x| x.severity >= fail_on && x.allowed.is_none()) =>
                    {
                        crate::app::EXIT_FINDINGS
                    }
                    None => crate::app::EXIT_OK,
                };
                let r = ClusterReport::new(meta, out, f, code);
                // The report first: a rank told the code before it is written could end the
                // job (torchrun, srun -K) while rank 0 still writes.
                let code = match emit(&r) {
                    Ok(()) => code,
                    Err(e) => {
                        eprintln!("rigdoctor: error: {e:#}");
                        crate::app::EXIT_ERROR
                    }
                };
                c.finish(code, &r.summary.verdict);
                code
            })
        });
        let end = member::run(&member_plan, node_check);
        let code = match coordinator {
            Some(h) => match h.join() {
                Ok(c) => Some(c),
                Err(_) => bail!("rank 0's coordinator failed"),
            },
            None => None,
        };
        Ok(Ran { code, end })
    })
}

/// A listener on the coordinator's port, on every address of the family its host resolves to:
/// a node's own name often resolves to a loopback address in /etc/hosts (127.0.1.1 on
/// Debian and Ubuntu), where no other node could reach it. rigdoctor still connects only to
/// the address named.
fn listen(host: &str, port: u16) -> Result<TcpListener> {
    let addrs: Vec<std::net::SocketAddr> = (host, port).to_socket_addrs()?.collect();
    let mut last = None;
    for a in &addrs {
        let any: std::net::SocketAddr = match a {
            std::net::SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, port).into(),
            std::net::SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
        };
        match TcpListener::bind(any) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e.into()),
        None => bail!("{host} resolves to no address"),
    }
}
