//! The cluster run's findings (parent side, rank 0): ranks that did not take part
//! (cluster-incomplete), versions that differ (cluster-version-drift), an all-reduce that
//! hangs, fails or sums wrong, named down to the node or node pair the isolation runs found
//! (nccl-hang, nccl-error, nccl-wrong-result), and a node pair far slower than the others
//! (cluster-slow-link).

use super::coordinator::{Job, Outcome};
use crate::code::Code;
use crate::facts::AllReduceOutcome;
use crate::finding::{Finding, Severity};
use crate::fleet::{Node, FELL_BY};

const NCCL_TROUBLESHOOTING: &str =
    "https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/troubleshooting.html";
const NCCL_ENV: &str = "https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html";
/// Jobs that silently ran as separate single-node jobs (nccl-tests#27, #213).
const SEPARATE_JOBS: &str = "https://github.com/NVIDIA/nccl-tests/issues/213";

/// The codes this module emits (outside the rules: they judge a whole cluster).
pub const CODES: &[Code] = &[
    Code::ClusterIncomplete,
    Code::ClusterVersionDrift,
    Code::ClusterSlowLink,
];

pub fn findings(out: &Outcome, nodes: &[Node], coordinator: &str) -> Vec<Finding> {
    let mut v = Vec::new();
    v.extend(incomplete(out, coordinator));
    v.extend(version_drift(out, nodes));
    v.extend(nccl(out));
    v.extend(slow_links(out));
    // What else differs between the nodes' checks (configuration, figures) is compare's.
    v.extend(
        crate::fleet::compare::findings(nodes)
            .into_iter()
            .filter(|f| f.id != Code::FleetVersionDrift.id()),
    );
    v
}

fn incomplete(out: &Outcome, coordinator: &str) -> Vec<Finding> {
    let bad: Vec<_> = out.ranks.iter().filter(|r| r.status != "ok").collect();
    if bad.is_empty() && out.refused.is_empty() && out.hosts_missing.is_empty() {
        return Vec::new();
    }
    let world = out.ranks.len();
    let label = |r: &super::coordinator::RankState| match &r.host {
        Some(h) => format!("rank {} ({h})", r.rank),
        None => format!("rank {}", r.rank),
    };
    let lines: Vec<String> = bad
        .iter()
        .map(|r| format!("{}: {}", label(r), r.status))
        .chain(out.refused.iter().map(|r| format!("refused: {r}")))
        .chain(
            out.hosts_missing
                .iter()
                .map(|h| format!("{h}: in the launcher's node list, but no rank came from it")),
        )
        .collect();
    let first = lines.first().cloned().unwrap_or_default();
    let mut f = Finding::new(
        Code::ClusterIncomplete,
        Severity::Error,
        format!(
            "{} of {world} ranks are not in the whole cluster run: {first}",
            bad.len().max(1)
        ),
    )
    .evidence_all(lines);
    if bad.iter().any(|r| r.host.is_none()) || !out.hosts_missing.is_empty() {
        f = f.fix(format!("start every rank: the launcher's log says why a rank did not start, and every node must reach the coordinator at {coordinator} (its address on the network the nodes share, the port open in the firewall)"));
    }
    if bad.iter().any(|r| r.status.contains("went away")) {
        f = f.fix("a rank whose process ended mid-run: read its stderr in the launcher's log, and `sudo dmesg | grep -i -e Xid -e oom -e segfault` on its node");
    }
    if bad.iter().any(|r| r.status.contains("no result")) {
        f = f.fix(
            "a rank that sent no result was stuck in NCCL past its deadline: see nccl-hang below",
        );
    }
    if bad.iter().any(|r| r.status.contains("no CUDA device")) {
        f = f.fix("a rank without a CUDA device: run `rigdoctor check` on its node (driver, CUDA_VISIBLE_DEVICES)");
    }
    if bad.iter().any(|r| r.status.contains("uses GPU")) {
        f = f.fix("one rank per node (srun --ntasks-per-node 1, torchrun --nproc-per-node 1), or one GPU per rank with --devices");
    }
    vec![f.refs([SEPARATE_JOBS])]
}

fn version_drift(out: &Outcome, nodes: &[Node]) -> Vec<Finding> {
    let mut v = Vec::new();
    if !out.other_versions.is_empty() {
        v.push(
            Finding::new(
                Code::ClusterVersionDrift,
                Severity::Error,
                format!(
                    "rigdoctor versions differ between the nodes: {}",
                    out.other_versions[0]
                ),
            )
            .evidence_all(out.other_versions.clone())
            .evidence("a rank of another version was refused: its protocol and findings may differ")
            .fix(format!(
                "install rigdoctor {} on every node (one binary on the shared filesystem serves them all)",
                env!("CARGO_PKG_VERSION")
            )),
        );
    }
    // Driver, CUDA and kernel, from the nodes' checks, as compare words them.
    for mut f in crate::fleet::compare::findings(nodes)
        .into_iter()
        .filter(|f| f.id == Code::FleetVersionDrift.id())
    {
        f.id = Code::ClusterVersionDrift.id().into();
        v.push(f);
    }
    // NCCL, from the library each rank loaded in the all-reduce.
    if let Some(all) = &out.all {
        if all.versions.len() > 1 {
            let lines: Vec<String> = all
                .versions
                .iter()
                .map(|(ver, hosts)| format!("NCCL {ver} on {}", hosts.join(", ")))
                .collect();
            v.push(
                Finding::new(
                    Code::ClusterVersionDrift,
                    Severity::Warn,
                    format!("the ranks loaded different NCCL releases: {}", lines.join("; ")),
                )
                .evidence_all(lines)
                .fix("install one NCCL release on every node (the same nvidia-nccl-cu12 wheel in every venv, or the same libnccl2 package); NCCL does not support ranks of different releases in one communicator")
                .refs([NCCL_TROUBLESHOOTING]),
            );
        }
    }
    v
}

/// How a job went, in a few words.
pub fn outcome(j: &Job) -> String {
    if let Some(r) = j
        .nccl
        .results
        .iter()
        .find(|r| !matches!(r.outcome, AllReduceOutcome::Measured { .. }))
    {
        return match &r.outcome {
            AllReduceOutcome::Hang { .. } => {
                format!("hangs (no completion within {:.1} s)", j.nccl.deadline_s)
            }
            AllReduceOutcome::Failed { error, .. } => format!("fails: {error}"),
            AllReduceOutcome::Measured { .. } => unreachable!(),
        };
    }
    if let Some(h) = &j.nccl.init_hang {
        return format!("hangs in init: {h}");
    }
    if let Some(e) = &j.nccl.init_error {
        return format!("fails at init: {e}");
    }
    if j.nccl.results.is_empty() {
        return match &j.nccl.library {
            crate::facts::Probed::Unknown { detail, .. } => format!("not run: {detail}"),
            _ => "not run".into(),
        };
    }
    let wrong = wrong_ranks(j);
    if !wrong.is_empty() {
        return format!("wrong sums on {}", wrong.join(", "));
    }
    match j.busbw() {
        Some(b) => format!("ok, busbw {b:.1} GB/s"),
        None => "ok".into(),
    }
}

fn wrong_ranks(j: &Job) -> Vec<String> {
    let Some(wrong) = j.nccl.results.iter().find_map(|r| match &r.outcome {
        AllReduceOutcome::Measured { wrong, .. } if wrong.iter().any(|&w| w > 0) => Some(wrong),
        _ => None,
    }) else {
        return Vec::new();
    };
    wrong
        .iter()
        .enumerate()
        .filter(|(_, &w)| w > 0)
        .map(|(i, w)| {
            let who = j
                .labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("rank {i}"));
            format!("{who} ({w} elements)")
        })
        .collect()
}

/// Which kind of trouble a failed job is.
fn kind(j: &Job) -> Code {
    let hang = j.nccl.init_hang.is_some()
        || j.nccl
            .results
            .iter()
            .any(|r| matches!(r.outcome, AllReduceOutcome::Hang { .. }));
    if hang {
        Code::NcclHang
    } else if !wrong_ranks(j).is_empty() {
        Code::NcclWrongResult
    } else {
        Code::NcclError
    }
}

/// A failed all-reduce, named down to what the isolation runs found.
fn nccl(out: &Outcome) -> Vec<Finding> {
    let Some(all) = &out.all else {
        return Vec::new();
    };
    let first = if all.passed() {
        match out.isolation.iter().find(|j| !j.passed()) {
            Some(j) => j,
            None => return Vec::new(),
        }
    } else {
        all
    };
    let code = kind(first);
    let alone_bad: Vec<&str> = out
        .isolation
        .iter()
        .filter(|j| j.hosts.len() == 1 && !j.passed())
        .map(|j| j.hosts[0].as_str())
        .collect();
    let pairs_bad: Vec<&Job> = out
        .isolation
        .iter()
        .filter(|j| j.hosts.len() == 2 && !j.passed())
        .collect();
    let pairs_ok: Vec<&Job> = out
        .isolation
        .iter()
        .filter(|j| j.hosts.len() == 2 && j.passed())
        .collect();
    // A node in every failing pair, whose pairs all fail, while some pair without it passes.
    let common: Option<&String> = pairs_bad.first().and_then(|p| {
        p.hosts.iter().find(|h| {
            pairs_bad.iter().all(|q| q.hosts.contains(h))
                && !pairs_ok.iter().any(|q| q.hosts.contains(h))
                && !pairs_ok.is_empty()
        })
    });
    let verb = match code {
        Code::NcclHang => "hangs",
        Code::NcclWrongResult => "sums wrong",
        _ => "fails",
    };
    let scope = if all.passed() {
        "NCCL all-reduce across every node passed, but a smaller one".to_string()
    } else {
        format!("NCCL all-reduce across the cluster {verb}")
    };
    let title = if code == Code::NcclWrongResult {
        // The ranks whose sums were wrong are what to name: the result says which.
        format!("{scope}: wrong sums on {}", wrong_ranks(first).join(", "))
    } else if !alone_bad.is_empty() {
        format!("{scope}: {} {verb} even alone", alone_bad.join(", "))
    } else if let Some(h) = common {
        format!("{scope}: every node pair with {h} {verb}, the others pass")
    } else if !pairs_bad.is_empty() {
        let names: Vec<&str> = pairs_bad.iter().map(|p| p.what.as_str()).collect();
        format!("{scope}: between {}", names.join(", "))
    } else if !all.lost.is_empty() {
        format!("{scope}: {}", all.lost[0])
    } else {
        scope
    };
    let mut f = Finding::new(code, Severity::Error, title);
    for j in std::iter::once(all).chain(&out.isolation) {
        f = f.evidence(format!("{}: {}", j.what, outcome(j)));
        if !j.passed() {
            for (r, l) in j.nccl.ranks.iter().zip(&j.labels) {
                if r.outcome != "ok" {
                    f = f.evidence(format!("  {l}: {}", r.outcome));
                }
            }
            for l in &j.lost {
                f = f.evidence(format!("  {l}"));
            }
        }
    }
    if let Some(t) = transports(all) {
        f = f.evidence(t);
    }
    for n in &all.net {
        f = f.evidence(format!("NCCL chose: {n}"));
    }
    for w in all.nccl.warnings.iter().take(5) {
        f = f.evidence(format!("NCCL log: {w}"));
    }
    if let Some(why) = &out.isolation_skipped {
        f = f.evidence(why.clone());
    }
    if !alone_bad.is_empty() {
        f = f.fix(format!(
            "{} fail(s) with only its own GPUs: its node check in this report and `rigdoctor check` on it show why (P2P, IOMMU, driver)",
            alone_bad.join(", ")
        ));
    }
    if let Some(h) = common {
        f = f.fix(format!("check {h}'s network path: the interface NCCL uses (NCCL_SOCKET_IFNAME, NCCL_IB_HCA), its link speed (`ethtool IFACE`, `ibstat`), cable and switch port, and its firewall for the ports NCCL opens"));
    }
    if alone_bad.is_empty() && common.is_none() {
        f = f.fix("rerun with NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET on every node: it names the interface and transport each node chose; every node must reach every other on that interface (NCCL_SOCKET_IFNAME=<iface> picks it)");
    }
    if !all.lost.is_empty() {
        f = f.fix("a rank that left mid-run: read its stderr in the launcher's log and `sudo dmesg | grep -i -e Xid -e oom` on its node");
    }
    vec![f.refs([NCCL_TROUBLESHOOTING, NCCL_ENV])]
}

/// "NCCL_DEBUG=INFO transports per channel hop: NET/Socket/0 x4, P2P/IPC x2".
pub fn transports(j: &Job) -> Option<String> {
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for c in &j.nccl.channels {
        match kinds.iter_mut().find(|k| k.0 == c.via) {
            Some(k) => k.1 += 1,
            None => kinds.push((c.via.clone(), 1)),
        }
    }
    (!kinds.is_empty()).then(|| {
        let list: Vec<String> = kinds.iter().map(|(v, k)| format!("{v} x{k}")).collect();
        format!(
            "NCCL_DEBUG=INFO transports per channel hop: {}",
            list.join(", ")
        )
    })
}

/// Nodes whose pairs are far slower than the pairs without them: a slow node is in n-1 of the
/// n(n-1)/2 pairs, so its pairs are compared with the others', not with the median of all
/// (with three nodes two of the three pairs are its own). Three measured pairs at least.
fn slow_links(out: &Outcome) -> Vec<Finding> {
    let pairs: Vec<(&Job, f64)> = out
        .isolation
        .iter()
        .filter(|j| j.hosts.len() == 2 && j.passed())
        .filter_map(|j| j.busbw().map(|b| (j, b)))
        .collect();
    if pairs.len() < 3 {
        return Vec::new();
    }
    let median = |v: Vec<f64>| crate::facts::Stats::of(v).map(|s| s.median);
    let mut hosts: Vec<&String> = pairs.iter().flat_map(|p| &p.0.hosts).collect();
    hosts.sort();
    hosts.dedup();
    let mut slow: Vec<(String, f64, f64)> = Vec::new();
    for h in hosts {
        let with: Vec<f64> = pairs
            .iter()
            .filter(|p| p.0.hosts.contains(h))
            .map(|p| p.1)
            .collect();
        let without: Vec<f64> = pairs
            .iter()
            .filter(|p| !p.0.hosts.contains(h))
            .map(|p| p.1)
            .collect();
        if with.len() < 2 {
            continue;
        }
        if let (Some(w), Some(o)) = (median(with), median(without)) {
            if w < (1.0 - FELL_BY) * o {
                slow.push((h.clone(), w, o));
            }
        }
    }
    if slow.is_empty() {
        return Vec::new();
    }
    let names: Vec<String> = slow.iter().map(|s| s.0.clone()).collect();
    let (h, w, o) = &slow[0];
    let title = if slow.len() == 1 {
        format!("every node pair with {h} is slow: {w:.1} GB/s busbw (median of its pairs) against {o:.1} GB/s between the other nodes")
    } else {
        format!(
            "the node pairs with {} are slow: {w:.1} GB/s busbw against {o:.1} GB/s without {h}",
            names.join(", ")
        )
    };
    let mut f = Finding::new(Code::ClusterSlowLink, Severity::Warn, title);
    for (j, b) in &pairs {
        f = f.evidence(format!("{}: busbw {b:.1} GB/s", j.what));
    }
    f = f.evidence(format!(
        "slow: the median of a node's pairs more than {:.0}% below the median of the pairs without it",
        FELL_BY * 100.0
    ));
    vec![f
        .fix(format!("check the network of {}: link speed and errors (`ethtool IFACE`, `ethtool -S IFACE`, `ibstat`), the interface NCCL picked (NCCL_DEBUG=INFO, NCCL_SOCKET_IFNAME, NCCL_IB_HCA), cable and switch port", names.join(", ")))
        .refs([NCCL_ENV])]
}
