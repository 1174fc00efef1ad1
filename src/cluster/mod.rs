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
            rest: node + job * (world as u32 + 2) + Duration::from_secs(30),
            nccl_secs: sweep.as_secs_f64(),
        }
    }
}

/// What this rank's run came to: rank 0's merged report, and how this rank ended.
pub struct Ran {
    pub report: Option<ClusterReport>,
    pub end: End,
}

/// Run this rank (and at rank 0 the coordinator): `node_check` is this node's check.
pub fn run(
    a: &ClusterArgs,
    launch: &Launch,
    host: String,
    (fail_on, allows): (Severity, &[Allow]),
    node_check: &mut dyn FnMut() -> NodeCheck,
) -> Result<Ran> {
    let d = Deadlines::of(a, launch.world);
    let at = format!("{}:{}", launch.host, launch.port);
    let coordinator = if launch.rank == 0 {
        let listener = listen(&launch.host, launch.port)
            .with_context(|| format!("rank 0 cannot listen at {at} for the other ranks (is the port in use, or the address not this node's? give --coordinator HOST:PORT or --port)"))?;
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
        let allows = allows.to_vec();
        Some(std::thread::spawn(move || {
            let mut c = coordinator::Coordinator::new(listener, plan);
            let out = c.gather();
            let fleet = report::fleet_nodes(&out.nodes);
            let mut f = findings::findings(&out, &fleet, &meta.coordinator);
            f.extend(report::node_findings(&out.nodes, &fleet));
            crate::allow::apply(&mut f, &allows);
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
            c.finish(code, &r.summary.verdict);
            r
        }))
    } else {
        None
    };
    let plan = member::Plan {
        launch,
        host,
        join: d.join,
        rest: d.rest,
        step: d.step,
        nccl: a.nccl(),
    };
    let end = member::run(&plan, node_check);
    let report = match coordinator {
        Some(h) => match h.join() {
            Ok(r) => Some(r),
            Err(_) => bail!("rank 0's coordinator failed"),
        },
        None => None,
    };
    Ok(Ran { report, end })
}

/// A listener at the coordinator's address (the first of its addresses that binds).
fn listen(host: &str, port: u16) -> Result<TcpListener> {
    let mut last = None;
    for a in (host, port).to_socket_addrs()? {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e.into()),
        None => bail!("{host} resolves to no address"),
    }
}
