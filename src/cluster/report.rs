//! The merged report rank 0 writes (schema `rigdoctor.cluster/1`): the ranks, the all-reduce
//! across every node and the isolation runs, each node's check as a row of compare's table,
//! and every finding (the cluster's, then each node's, named by its host). Text, markdown,
//! JSON and one line; every string from a node is escaped before it is laid out.

use super::coordinator::{Job, Outcome, RankState};
use crate::finding::Finding;
use crate::fleet::render::{escaped, table, FleetSummary};
use crate::fleet::Node;
use crate::report::{escape_line, Format, Report, TextStyle};
use serde::Serialize;

pub const SCHEMA: &str = "rigdoctor.cluster/1";

/// The variables that choose NCCL's network between nodes (NCCL's env.html).
const NET_VARS: [&str; 6] = [
    "NCCL_SOCKET_IFNAME",
    "NCCL_IB_HCA",
    "NCCL_IB_DISABLE",
    "NCCL_NET",
    "NCCL_NET_GDR_LEVEL",
    "NCCL_SOCKET_FAMILY",
];

#[derive(Debug, Serialize)]
pub struct ClusterReport {
    pub schema: &'static str,
    pub tool: crate::report::Tool,
    pub summary: FleetSummary,
    pub launcher: String,
    pub coordinator: String,
    pub world: usize,
    /// How the coordinator address was chosen, and the like.
    pub notes: Vec<String>,
    /// The signal that stopped the run, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<i32>,
    pub ranks: Vec<RankState>,
    /// The all-reduce across every GPU of every node.
    pub all_reduce: Option<Job>,
    /// Each node alone, then node pairs (after a failure, or with --pairwise).
    pub isolation: Vec<Job>,
    pub findings: Vec<Finding>,
    /// Each node's check, as `rigdoctor check -o` would save it.
    pub nodes: Vec<Report>,
    #[serde(skip)]
    fleet: Vec<Node>,
}

/// The fleet view of the nodes' reports, labelled by host.
pub fn fleet_nodes(nodes: &[Report]) -> Vec<Node> {
    let mut v: Vec<Node> = nodes
        .iter()
        .enumerate()
        .map(|(i, r)| Node::of(&r.facts, &format!("node-{i}")))
        .collect();
    crate::fleet::node::label(&mut v);
    v
}

/// Each node's own findings, named by its host: they count for the run's exit code too.
pub fn node_findings(nodes: &[Report], fleet: &[Node]) -> Vec<Finding> {
    nodes
        .iter()
        .zip(fleet)
        .flat_map(|(r, n)| {
            r.findings.iter().map(move |f| Finding {
                title: format!("{}: {}", n.label, f.title),
                ..f.clone()
            })
        })
        .collect()
}

pub struct Meta {
    pub launcher: String,
    pub coordinator: String,
    pub world: usize,
    pub notes: Vec<String>,
}

impl ClusterReport {
    pub fn new(meta: Meta, out: Outcome, findings: Vec<Finding>, exit_code: u8) -> Self {
        let fleet = fleet_nodes(&out.nodes);
        let joined = out.ranks.iter().filter(|r| r.host.is_some()).count();
        let hosts = {
            let mut h: Vec<&String> = out.ranks.iter().filter_map(|r| r.host.as_ref()).collect();
            h.sort();
            h.dedup();
            h.len()
        };
        let what = format!(
            "{joined} of {} ranks on {hosts} node{}",
            meta.world,
            if hosts == 1 { "" } else { "s" }
        );
        let clean = if out.interrupted.is_some() {
            "interrupted before the end"
        } else {
            "no problems found"
        };
        let mut summary = FleetSummary::of(&what, clean, &findings, exit_code);
        if let Some(sig) = out.interrupted.filter(|_| !findings.is_empty()) {
            // What was seen before the signal stays; the verdict says it is not the whole run.
            summary.verdict = format!(
                "interrupted by {}: {}",
                crate::measure::watchdog::signal_name(sig),
                summary.verdict
            );
        }
        ClusterReport {
            schema: SCHEMA,
            tool: crate::report::Tool {
                name: env!("CARGO_PKG_NAME").to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            summary,
            launcher: meta.launcher,
            coordinator: meta.coordinator,
            world: meta.world,
            notes: meta.notes,
            interrupted: out.interrupted,
            ranks: out.ranks,
            all_reduce: out.all,
            isolation: out.isolation,
            findings,
            nodes: out.nodes,
            fleet,
        }
    }

    pub fn render(&self, format: Format, style: &TextStyle) -> String {
        match format {
            Format::Json => crate::report::json::render(self),
            Format::Text => self.text(style),
            Format::Markdown => self.markdown(),
            Format::Oneline => crate::report::oneline(
                "rigdoctor cluster",
                self.interrupted.is_some(),
                &self.summary.verdict,
                &self
                    .findings
                    .iter()
                    .filter(|f| f.allowed.is_none())
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
        }
    }

    fn header(&self) -> String {
        format!(
            "{}, world {}, coordinator {}",
            self.launcher, self.world, self.coordinator
        )
    }

    fn ranks_table(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let header = ["Rank", "Host", "GPUs", "Status"]
            .map(String::from)
            .to_vec();
        let rows = self
            .ranks
            .iter()
            .map(|r| {
                vec![
                    r.rank.to_string(),
                    r.host.clone().unwrap_or_else(|| "?".into()),
                    if r.devices.is_empty() {
                        "-".into()
                    } else {
                        r.devices
                            .iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                    r.status.clone(),
                ]
                .into_iter()
                .map(|c| escape_line(&c))
                .collect()
            })
            .collect();
        (header, rows)
    }

    fn jobs_table(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let header = ["Run", "Ranks", "Result"].map(String::from).to_vec();
        let rows = self
            .all_reduce
            .iter()
            .chain(&self.isolation)
            .map(|j| {
                vec![
                    j.what.clone(),
                    j.nccl.devices.len().to_string(),
                    super::findings::outcome(j),
                ]
                .into_iter()
                .map(|c| escape_line(&c))
                .collect()
            })
            .collect();
        (header, rows)
    }

    /// The transports NCCL chose per hop, the network each node's NCCL picked at init, and the
    /// variables that choose it, per node.
    fn network(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .all_reduce
            .iter()
            .flat_map(|j| {
                super::findings::transports(j)
                    .into_iter()
                    .chain(j.net.clone())
            })
            .collect();
        for (r, n) in self.nodes.iter().zip(&self.fleet) {
            for k in NET_VARS {
                if let Some((val, from)) = r.facts.env.lookup(k) {
                    v.push(format!("{}: {k}={val} ({from})", n.label));
                }
            }
        }
        v
    }

    fn size(&self) -> String {
        self.all_reduce
            .as_ref()
            .and_then(|j| j.nccl.results.last())
            .map(|r| format!(", {} MiB per rank", r.bytes >> 20))
            .unwrap_or_default()
    }

    fn text(&self, style: &TextStyle) -> String {
        use crate::report::text::{bold, findings, grid};
        let mut out = format!(
            "{} {} · cluster ({})\n\n{}\n\n",
            bold("rigdoctor", style),
            self.tool.version,
            escape_line(&self.header()),
            escape_line(&self.summary.verdict)
        );
        for n in &self.notes {
            out.push_str(&format!("  note: {}\n", escape_line(n)));
        }
        out.push_str(&format!("{}\n", bold("Ranks", style)));
        let (h, r) = self.ranks_table();
        out.push_str(&grid(&h, &r, style));
        if self.all_reduce.is_some() {
            out.push_str(&format!(
                "\n{}\n",
                bold(&format!("NCCL all-reduce{}", self.size()), style)
            ));
            let (h, r) = self.jobs_table();
            out.push_str(&grid(&h, &r, style));
            for l in self.network() {
                out.push_str(&format!("  {}\n", escape_line(&l)));
            }
        }
        if !self.fleet.is_empty() {
            out.push_str(&format!("\n{}\n", bold("Nodes", style)));
            let (h, r) = table(&self.fleet);
            out.push_str(&grid(&h, &r, style));
            out.push_str("  * differs from the most common value; ? not read\n");
        }
        out.push('\n');
        out.push_str(&findings(&escaped(&self.findings), style));
        out
    }

    fn markdown(&self) -> String {
        use crate::report::markdown::{grid, plain, write_finding};
        let mut out = format!(
            "## rigdoctor cluster: {}\n\n{}\n\n",
            plain(&escape_line(&self.summary.verdict)),
            plain(&escape_line(&self.header()))
        );
        let (h, r) = self.ranks_table();
        let mut all = vec![h];
        all.extend(r);
        out.push_str(&grid(&all));
        if self.all_reduce.is_some() {
            out.push_str(&format!("\n**NCCL all-reduce{}**\n\n", self.size()));
            let (h, r) = self.jobs_table();
            let mut all = vec![h];
            all.extend(r);
            out.push_str(&grid(&all));
            for l in self.network() {
                out.push_str(&format!("- {}\n", plain(&escape_line(&l))));
            }
        }
        if !self.fleet.is_empty() {
            out.push_str("\n**Nodes**\n\n");
            let (h, r) = table(&self.fleet);
            let mut all = vec![h];
            all.extend(r);
            out.push_str(&grid(&all));
        }
        out.push('\n');
        for f in &escaped(&self.findings) {
            write_finding(&mut out, f, &[]);
        }
        out
    }
}
