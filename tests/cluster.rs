//! `rigdoctor cluster` without a cluster: several rigdoctor processes on this machine play the
//! nodes, each with its own sysroot (host name) and fake rig, started with the environment
//! torchrun gives `--no-python` workers, talking over loopback. The fake NCCL's communicators
//! span the processes (real sums), and NCCL_HOSTID gives each "node" its own host hash, as
//! NCCL reads it (misc/utils.cc), so hops between nodes go over NET.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NAME: &str = "NVIDIA GeForce RTX 3090";

/// A free loopback port (two: the coordinator takes MASTER_PORT+1 under torchrun's agent store).
fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// A fake node: one 3090 (so the run is quick), as `edit` changes it.
fn node_rig(edit: impl FnOnce(&mut Value)) -> Value {
    // The driver of the X570 sysroot, so the node checks pass.
    let mut fake = json!({"driver_version": "535.129.03", "cuda_version": 12020,
        "gpus": [gpu(NAME, "0000:0b:00.0", 0)], "pairs": [],
        "cpu": {"vendor": "AuthenticAMD"}});
    edit(&mut fake);
    fake
}

struct Node {
    name: String,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn node(name: &str) -> Node {
    node_with(name, |_| {})
}

fn node_with(name: &str, edit: impl FnOnce(&mut Rig)) -> Node {
    let mut rig = load_rig("x570-2x3090-r535");
    rig.hostname = name.into();
    edit(&mut rig);
    let dir = sysroot_of(&rig);
    let root = dir.path().to_path_buf();
    Node {
        name: name.into(),
        _dir: dir,
        root,
    }
}

/// One rank's rigdoctor as torchrun starts a `--no-python` worker: env only.
fn rank(
    shared: &Path,
    n: &Node,
    fake: &Value,
    (rank, world, port): (usize, usize, u16),
    args: &[&str],
) -> Child {
    rank_local(shared, n, fake, (rank, world, port), (0, 1), args)
}

/// [`rank`] as local rank `local` of `local_world` on its node (torchrun --nproc-per-node).
fn rank_local(
    shared: &Path,
    n: &Node,
    fake: &Value,
    (rank, world, port): (usize, usize, u16),
    (local, local_world): (usize, usize),
    args: &[&str],
) -> Child {
    let rig_file = n.root.join("fake-rig.json");
    std::fs::write(&rig_file, fake.to_string()).unwrap();
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("rigdoctor"));
    c.env_clear()
        .env("NO_COLOR", "1")
        .env("LD_LIBRARY_PATH", fake_driver_dir())
        .env("FAKEGPU_RIG", &rig_file)
        // The fake NCCL's rendezvous directories: one for every node, as a real id names one
        // root; each node its own host hash.
        .env("TMPDIR", shared)
        .env("NCCL_HOSTID", &n.name)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", local.to_string())
        .env("LOCAL_WORLD_SIZE", local_world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("TORCHELASTIC_USE_AGENT_STORE", "True")
        .args(["cluster", "--gpu", "--timeout", "3", "--sysroot"])
        .arg(&n.root)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

struct Ended {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Wait for a rank, killing it past `limit` (a test must never hang).
fn wait(mut c: Child, limit: Duration) -> Ended {
    let t = Instant::now();
    let mut err = c.stderr.take().unwrap();
    let mut out = c.stdout.take().unwrap();
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let code = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s.code();
        }
        if t.elapsed() > limit {
            let _ = c.kill();
            let _ = c.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ended {
        code,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

/// The processes still running whose environment holds `needle` (a rank or its workers:
/// they inherit the rank's environment).
fn left_running(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let env = String::from_utf8_lossy(&env).replace('\0', " ");
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if env.contains(needle) {
            // A zombie is not running: its state says.
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            if !stat.contains(") Z ") {
                out.push(cmd);
            }
        }
    }
    out
}

/// Nodes node-a.. with these rigs, started as ranks 0..; what each ended with.
fn cluster(fakes: &[Value], args: &[&str]) -> (Vec<Ended>, Value, tempfile::TempDir) {
    let nodes: Vec<Node> = (0..fakes.len())
        .map(|i| node(&format!("node-{}", (b'a' + i as u8) as char)))
        .collect();
    cluster_of(&nodes, fakes, args)
}

fn cluster_of(
    nodes: &[Node],
    fakes: &[Value],
    args: &[&str],
) -> (Vec<Ended>, Value, tempfile::TempDir) {
    let shared = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut a = vec!["--json", "--join-timeout", "30"];
    a.extend(args);
    let children: Vec<Child> = nodes
        .iter()
        .zip(fakes)
        .enumerate()
        .map(|(i, (n, f))| rank(shared.path(), n, f, (i, fakes.len(), port), &a))
        .collect();
    let ended: Vec<Ended> = children
        .into_iter()
        .map(|c| wait(c, Duration::from_secs(240)))
        .collect();
    let report: Value = serde_json::from_str(&ended[0].stdout).unwrap_or_else(|e| {
        panic!(
            "rank 0's stdout is not JSON ({e}): {}\nstderr: {}",
            ended[0].stdout, ended[0].stderr
        )
    });
    for e in &ended {
        assert!(!e.stderr.contains("panicked"), "{}", e.stderr);
    }
    (ended, report, shared)
}

#[test]
fn four_healthy_nodes_form_one_communicator_over_the_network() {
    let fakes = vec![node_rig(|_| {}); 4];
    let (ended, report, _dir) = cluster(&fakes, &[]);
    assert_eq!(report["schema"], "rigdoctor.cluster/1");
    assert!(
        summary(&report).iter().all(|i| !i.starts_with("error")),
        "{:?}",
        summary(&report)
    );
    for e in &ended {
        assert_eq!(e.code, Some(0), "{}", e.stderr);
    }
    let all = &report["all_reduce"];
    assert_eq!(all["nccl"]["devices"].as_array().unwrap().len(), 4);
    assert_eq!(all["nccl"]["results"][0]["status"], "measured", "{all}");
    assert_eq!(all["nccl"]["results"][0]["wrong"], json!([0, 0, 0, 0]));
    // Between nodes NCCL connects over the network, never P2P or SHM.
    let vias: Vec<&str> = all["nccl"]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["via"].as_str().unwrap())
        .collect();
    assert!(
        !vias.is_empty() && vias.iter().all(|v| v.starts_with("NET/")),
        "{vias:?}"
    );
    assert_eq!(report["nodes"].as_array().unwrap().len(), 4);
    assert!(report["notes"][0]
        .as_str()
        .unwrap()
        .contains("MASTER_PORT+1"));
    // The other ranks print one line with rank 0's verdict.
    assert!(
        ended[2].stdout.contains("rank 2 of 4"),
        "{}",
        ended[2].stdout
    );
    assert!(report["isolation"].as_array().unwrap().is_empty());
}

#[test]
fn a_node_whose_nccl_hangs_is_named_by_running_it_alone() {
    let mut fakes = vec![node_rig(|_| {}); 3];
    fakes[2] = node_rig(|f| f["nccl"] = json!({"fault": "hang"}));
    let t = Instant::now();
    let (ended, report, _dir) = cluster(&fakes, &[]);
    let hang = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "nccl-hang")
        .unwrap_or_else(|| panic!("{:?}", summary(&report)));
    let title = hang["title"].as_str().unwrap();
    assert!(
        title.contains("node-c") && title.contains("alone"),
        "{title}"
    );
    assert!(
        !title.contains("node-a") && !title.contains("node-b"),
        "{title}"
    );
    // The pairs of the nodes that pass alone pass.
    let iso: Vec<(String, String)> = report["isolation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["what"].as_str().unwrap().to_string(),
                j["nccl"]["results"][0]["status"]
                    .as_str()
                    .unwrap_or("none")
                    .to_string(),
            )
        })
        .collect();
    assert!(
        iso.contains(&("node-c alone".into(), "hang".into())),
        "{iso:?}"
    );
    assert!(
        iso.contains(&("node-a + node-b".into(), "measured".into())),
        "{iso:?}"
    );
    for e in &ended {
        assert_eq!(e.code, Some(1), "{}", e.stderr);
    }
    eprintln!("hang named in {:?}", t.elapsed());
}

/// Ranks of `n` nodes (node-a..) whose node `hang`'s NCCL never completes, each rank 0's
/// stderr read on a thread; returned once rank 0 says the all-reduce across the nodes began.
fn under_way(n: usize, hang: usize) -> UnderWay {
    let shared = tempfile::tempdir().unwrap();
    let port = free_port();
    let nodes: Vec<Node> = (0..n)
        .map(|i| node(&format!("node-{}", (b'a' + i as u8) as char)))
        .collect();
    let mut children: Vec<Child> = nodes
        .iter()
        .enumerate()
        .map(|(i, nd)| {
            let fake = node_rig(|f| {
                if i == hang {
                    f["nccl"] = json!({"fault": "hang"})
                }
            });
            rank(shared.path(), nd, &fake, (i, n, port), &["--json"])
        })
        .collect();
    let err = children[0].stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if l.contains("all-reduce across") {
                let _ = tx.send(());
            }
            lines.push(l);
        }
        lines.join("\n")
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("rank 0 never started the all-reduce");
    (children, reader, (shared, nodes))
}

/// The ranks, rank 0's stderr, and the directories they run in (kept while they run).
type UnderWay = (
    Vec<Child>,
    std::thread::JoinHandle<String>,
    (tempfile::TempDir, Vec<Node>),
);

#[test]
fn a_rank_killed_mid_run_is_named_and_every_rank_exits_alike() {
    // node-c's NCCL never completes, so the all-reduce is surely under way when it is killed.
    let (mut children, reader, (shared, _nodes)) = under_way(4, 2);
    std::thread::sleep(Duration::from_millis(500));
    let victim_pid = children[2].id();
    children[2].kill().unwrap();
    let t = Instant::now();
    let victim = children.remove(2);
    let _ = wait(victim, Duration::from_secs(10));
    let mut first = children.remove(0);
    // Rank 0's stderr is already taken: give `wait` an empty one.
    first.stderr = None;
    let out0 = {
        let mut o = first.stdout.take().unwrap();
        let h = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut o, &mut s).ok();
            s
        });
        let code = first.wait().unwrap().code();
        (code, h.join().unwrap())
    };
    let rest: Vec<Ended> = children
        .into_iter()
        .map(|c| wait(c, Duration::from_secs(120)))
        .collect();
    let took = t.elapsed();
    let stderr0 = reader.join().unwrap();
    let report: Value =
        serde_json::from_str(&out0.1).unwrap_or_else(|e| panic!("{e}: {}\n{stderr0}", out0.1));
    let c = &report["ranks"][2];
    assert!(c["status"].as_str().unwrap().contains("went away"), "{c}");
    let inc = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "cluster-incomplete")
        .unwrap_or_else(|| panic!("{:?}", summary(&report)));
    assert!(
        inc["title"].as_str().unwrap().contains("rank 2 (node-c)"),
        "{inc}"
    );
    // One deadline: the survivors' NCCL ranks stop at theirs, and no isolation runs after a
    // rank left.
    let job = Duration::from_secs(3 * 3 + 15 + 5);
    assert!(took < job, "took {took:?}");
    assert_eq!(out0.0, Some(1));
    for e in &rest {
        assert_eq!(e.code, Some(1), "{}", e.stderr);
    }
    let needle = format!("TMPDIR={}", shared.path().display());
    let _ = victim_pid;
    std::thread::sleep(Duration::from_millis(300));
    let left = left_running(&needle);
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_rank_that_never_comes_is_named_after_the_join_deadline() {
    let shared = tempfile::tempdir().unwrap();
    let port = free_port();
    let a = node("node-a");
    let b = node("node-b");
    let fake = node_rig(|_| {});
    let r0 = rank(
        shared.path(),
        &a,
        &fake,
        (0, 3, port),
        &["--json", "--join-timeout", "3"],
    );
    let r1 = rank(
        shared.path(),
        &b,
        &fake,
        (1, 3, port),
        &["--join-timeout", "3"],
    );
    let e0 = wait(r0, Duration::from_secs(120));
    let e1 = wait(r1, Duration::from_secs(120));
    let report: Value =
        serde_json::from_str(&e0.stdout).unwrap_or_else(|e| panic!("{e}: {}", e0.stderr));
    let inc = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "cluster-incomplete")
        .unwrap_or_else(|| panic!("{:?}", summary(&report)));
    assert!(
        inc["evidence"][0]
            .as_str()
            .unwrap()
            .starts_with("rank 2: did not join"),
        "{inc}"
    );
    // The two that came still ran their all-reduce.
    assert_eq!(
        report["all_reduce"]["nccl"]["results"][0]["status"],
        "measured"
    );
    assert_eq!((e0.code, e1.code), (Some(1), Some(1)), "{}", e1.stderr);
}

#[test]
fn a_lone_rank_without_a_coordinator_says_what_to_check() {
    let n = node("node-b");
    let out = rigdoctor()
        .env("RANK", "1")
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port().to_string())
        .args(["cluster", "--join-timeout", "1", "--sysroot"])
        .arg(&n.root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no coordinator answered at 127.0.0.1:") && err.contains("is rank 0 running"),
        "{err}"
    );
    let out = rigdoctor().args(["cluster"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rank"));
}

#[test]
fn pairwise_names_the_node_whose_network_is_slow() {
    // Three nodes: two of the three pairs are node-c's, so the median of all pairs is slow too.
    let mut fakes = vec![node_rig(|f| f["nccl"] = json!({"socket_gbps": 10.0})); 3];
    fakes[2] = node_rig(|f| f["nccl"] = json!({"socket_gbps": 3.0}));
    let (ended, report, _dir) = cluster(&fakes, &["--pairwise"]);
    // Each node alone, then the three pairs in three rounds.
    let runs = report["isolation"].as_array().unwrap();
    assert_eq!(runs.len(), 3 + 3, "{runs:?}");
    let slow = findings(&report, "cluster-slow-link");
    assert_eq!(slow.len(), 1, "{:?}", summary(&report));
    let title = slow[0]["title"].as_str().unwrap();
    assert!(title.contains("every node pair with node-c"), "{title}");
    assert!(!title.contains("node-a + node-b"), "{title}");
    assert_eq!(slow[0]["severity"], "warn");
    // A warning: the exit code stays 0 with --fail-on error, on every rank.
    for e in &ended {
        assert_eq!(e.code, Some(0), "{}", e.stderr);
    }
}

#[test]
fn pairwise_over_alike_nodes_names_no_slow_link() {
    let fakes = vec![node_rig(|_| {}); 3];
    let (_, report, _dir) = cluster(&fakes, &["--pairwise"]);
    assert_eq!(report["isolation"].as_array().unwrap().len(), 3 + 3);
    assert!(
        findings(&report, "cluster-slow-link").is_empty(),
        "{:?}",
        summary(&report)
    );
    assert!(
        findings(&report, "cluster-version-drift").is_empty(),
        "{:?}",
        summary(&report)
    );
}

#[test]
fn versions_that_differ_between_nodes_are_cluster_version_drift() {
    let nodes = [
        node("node-a"),
        node("node-b"),
        node_with("node-c", |r| {
            r.driver.as_mut().unwrap().version_line =
                "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024"
                    .into()
        }),
    ];
    let fakes = [
        node_rig(|_| {}),
        node_rig(|f| f["nccl"] = json!({"version": 22105})),
        node_rig(|f| f["driver_version"] = json!("550.54.14")),
    ];
    let (_, report, _dir) = cluster_of(&nodes, &fakes, &[]);
    let drift = findings(&report, "cluster-version-drift");
    let titles: Vec<&str> = drift.iter().map(|f| f["title"].as_str().unwrap()).collect();
    assert!(
        titles
            .iter()
            .any(|t| t.contains("driver") && t.contains("node-c")),
        "{titles:?}"
    );
    assert!(
        titles
            .iter()
            .any(|t| t.contains("NCCL 2.21.5 on node-b") && t.contains("2.18.5 on node-a, node-c")),
        "{titles:?}"
    );
    assert!(drift.iter().all(|f| f["severity"] == "warn"));
}

#[test]
fn the_merged_report_reads_as_text_and_markdown() {
    let fakes = vec![node_rig(|_| {}); 2];
    for (format, marks) in [
        (
            "text",
            [
                "Ranks",
                "NCCL all-reduce, 16 MiB per rank",
                "every node (2)",
                // Which network each node's NCCL chose, from its own log.
                "node-b: NET/Socket : Using [0]",
            ],
        ),
        (
            "markdown",
            [
                "## rigdoctor cluster:",
                "| Rank |",
                "**NCCL all-reduce, 16 MiB per rank**",
                "NET/Socket/0 x",
            ],
        ),
    ] {
        let (ended, _, _dir) = cluster_text(&fakes, format);
        for m in marks {
            assert!(ended.contains(m), "{m:?} not in:\n{ended}");
        }
        assert!(
            ended.contains("node-a") && ended.contains("node-b"),
            "{ended}"
        );
    }
}

/// Rank 0's stdout in `format`.
fn cluster_text(fakes: &[Value], format: &str) -> (String, (), tempfile::TempDir) {
    let shared = tempfile::tempdir().unwrap();
    let port = free_port();
    let nodes: Vec<Node> = (0..fakes.len())
        .map(|i| node(&format!("node-{}", (b'a' + i as u8) as char)))
        .collect();
    let children: Vec<Child> = nodes
        .iter()
        .zip(fakes)
        .enumerate()
        .map(|(i, (n, f))| {
            rank(
                shared.path(),
                n,
                f,
                (i, fakes.len(), port),
                &["--format", format],
            )
        })
        .collect();
    let ended: Vec<Ended> = children
        .into_iter()
        .map(|c| wait(c, Duration::from_secs(120)))
        .collect();
    (ended[0].stdout.clone(), (), shared)
}

#[test]
fn a_rank_whose_sums_are_wrong_is_named() {
    let mut fakes = vec![node_rig(|_| {}); 3];
    // node-b's NCCL corrupts the output of global rank 1 (its rank in the all-node run).
    fakes[1] = node_rig(|f| f["nccl"] = json!({"fault": "wrong", "fault_rank": 1}));
    let (ended, report, _dir) = cluster(&fakes, &[]);
    let wrong = findings(&report, "nccl-wrong-result");
    assert_eq!(wrong.len(), 1, "{:?}", summary(&report));
    let title = wrong[0]["title"].as_str().unwrap();
    assert!(
        title.contains("wrong sums on rank 1 (node-b GPU 0)"),
        "{title}"
    );
    assert!(
        !title.contains("node-a") && !title.contains("node-c"),
        "{title}"
    );
    for e in &ended {
        assert_eq!(e.code, Some(1), "{}", e.stderr);
    }
}

/// Two 3090s on one node, P2P between them.
fn two_gpu_rig() -> Value {
    node_rig(|f| {
        f["gpus"] = json!([gpu(NAME, "0000:0b:00.0", 0), gpu(NAME, "0000:0c:00.0", 1)]);
        f["pairs"] = json!([{"a": 0, "b": 1, "topology": "PHB"}]);
    })
}

#[test]
fn one_rank_per_node_gives_nccl_every_gpu_of_its_node() {
    let (ended, report, _dir) = cluster(&[two_gpu_rig(), two_gpu_rig()], &[]);
    let nccl = &report["all_reduce"]["nccl"];
    assert_eq!(nccl["devices"], json!([0, 1, 0, 1]), "{nccl}");
    assert_eq!(nccl["results"][0]["wrong"], json!([0, 0, 0, 0]));
    let labels: Vec<&str> = report["all_reduce"]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "rank 0 (node-a GPU 0)",
            "rank 1 (node-a GPU 1)",
            "rank 2 (node-b GPU 0)",
            "rank 3 (node-b GPU 1)"
        ]
    );
    // Within a node NCCL does not go over the network; between the nodes it does.
    let vias: Vec<&str> = nccl["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["via"].as_str().unwrap())
        .collect();
    assert!(vias.iter().any(|v| v.starts_with("NET/")), "{vias:?}");
    assert!(vias.iter().any(|v| !v.starts_with("NET/")), "{vias:?}");
    for e in &ended {
        assert_eq!(e.code, Some(0), "{}", e.stderr);
    }
}

#[test]
fn one_rank_per_gpu_runs_one_node_check_per_node() {
    let shared = tempfile::tempdir().unwrap();
    let port = free_port();
    let nodes = [node("node-a"), node("node-b")];
    let fake = two_gpu_rig();
    // torchrun --nnodes 2 --nproc-per-node 2: global rank = node * 2 + local rank.
    let children: Vec<Child> = (0..4)
        .map(|r| {
            let args: &[&str] = if r == 0 { &["--json"] } else { &[] };
            rank_local(
                shared.path(),
                &nodes[r / 2],
                &fake,
                (r, 4, port),
                (r % 2, 2),
                args,
            )
        })
        .collect();
    let ended: Vec<Ended> = children
        .into_iter()
        .map(|c| wait(c, Duration::from_secs(120)))
        .collect();
    let report: Value = serde_json::from_str(&ended[0].stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", ended[0].stderr));
    assert_eq!(report["nodes"].as_array().unwrap().len(), 2);
    let devices: Vec<Value> = report["ranks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["devices"].clone())
        .collect();
    assert_eq!(devices, [json!([0]), json!([1]), json!([0]), json!([1])]);
    assert_eq!(
        report["all_reduce"]["nccl"]["results"][0]["status"],
        "measured"
    );
    for e in &ended {
        assert_eq!(e.code, Some(0), "{}", e.stderr);
    }
}

#[test]
fn sigterm_at_rank_0_ends_every_rank_with_143_and_leaves_nothing() {
    let (mut children, reader, (shared, _nodes)) = under_way(3, 2);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: a signal to a child this test started.
    unsafe { libc::kill(children[0].id() as i32, libc::SIGTERM) };
    let mut first = children.remove(0);
    let mut o = first.stdout.take().unwrap();
    let h = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut o, &mut s).ok();
        s
    });
    let code0 = first.wait().unwrap().code();
    let stdout0 = h.join().unwrap();
    let rest: Vec<Ended> = children
        .into_iter()
        .map(|c| wait(c, Duration::from_secs(60)))
        .collect();
    let stderr0 = reader.join().unwrap();
    let report: Value =
        serde_json::from_str(&stdout0).unwrap_or_else(|e| panic!("{e}: {stdout0}\n{stderr0}"));
    assert_eq!(report["interrupted"], libc::SIGTERM);
    let verdict = report["summary"]["verdict"].as_str().unwrap();
    assert!(verdict.starts_with("interrupted"), "{verdict}");
    assert_eq!(code0, Some(143), "{stderr0}");
    for e in &rest {
        assert_eq!(e.code, Some(143), "{}", e.stderr);
    }
    std::thread::sleep(Duration::from_millis(300));
    let left = left_running(&format!("TMPDIR={}", shared.path().display()));
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn strangers_and_garbage_at_the_coordinator_are_refused_and_the_run_goes_on() {
    use std::io::Write;
    let shared = tempfile::tempdir().unwrap();
    let port = free_port();
    let (a, b) = (node("node-a"), node("node-b"));
    let fake = node_rig(|_| {});
    let r0 = rank(shared.path(), &a, &fake, (0, 2, port), &["--json"]);
    // The coordinator is at MASTER_PORT+1; connect as soon as it listens.
    let at = ("127.0.0.1", port + 1);
    let t = Instant::now();
    let connect = || loop {
        match std::net::TcpStream::connect(at) {
            Ok(s) => return s,
            Err(_) if t.elapsed() < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    };
    // Not the protocol; a hello of another world size; a control character in a host name.
    let mut junk = connect();
    junk.write_all(b"\x00\xffGET / HTTP/1.0\r\n\r\n").unwrap();
    let mut liar = connect();
    let v = env!("CARGO_PKG_VERSION");
    writeln!(
        liar,
        r#"{{"msg":"hello","rank":1,"world":9,"local_rank":0,"host":"evil\u001b[2J","pid":1,"version":"{v}","launcher":"flags"}}"#
    )
    .unwrap();
    // A rank of another rigdoctor release: refused, and an error of its own.
    let mut other = connect();
    writeln!(
        other,
        r#"{{"msg":"hello","rank":1,"world":2,"local_rank":0,"host":"old-node","pid":2,"version":"0.0.1-other","launcher":"flags"}}"#
    )
    .unwrap();
    let r1 = rank(shared.path(), &b, &fake, (1, 2, port), &[]);
    let e0 = wait(r0, Duration::from_secs(120));
    let e1 = wait(r1, Duration::from_secs(120));
    let report: Value =
        serde_json::from_str(&e0.stdout).unwrap_or_else(|e| panic!("{e}: {}", e0.stderr));
    assert_eq!(
        report["all_reduce"]["nccl"]["results"][0]["status"],
        "measured"
    );
    let inc = findings(&report, "cluster-incomplete");
    assert_eq!(inc.len(), 1, "{:?}", summary(&report));
    let ev = inc[0]["evidence"].to_string();
    assert!(
        ev.contains("started in a world of 9, rank 0 in one of 2"),
        "{ev}"
    );
    let drift = findings(&report, "cluster-version-drift");
    assert_eq!(drift.len(), 1, "{:?}", summary(&report));
    assert_eq!(drift[0]["severity"], "error");
    assert!(
        drift[0]["title"]
            .as_str()
            .unwrap()
            .contains("runs rigdoctor 0.0.1-other"),
        "{}",
        drift[0]
    );
    // Exit 1 for the refusal, on both ranks; nothing raw from the stranger on the screen.
    assert_eq!((e0.code, e1.code), (Some(1), Some(1)), "{}", e1.stderr);
    assert!(!e1.stdout.contains('\u{1b}'), "{}", e1.stdout);
}

#[test]
fn a_world_of_one_from_the_flags_alone_runs_end_to_end() {
    // As bench/gpu-validate.sh runs it on a one-GPU machine.
    let n = node("node-a");
    let port = free_port();
    let out = on_fake(&n.root, &node_rig(|_| {}))
        .args([
            "cluster",
            "--gpu",
            "--json",
            "--rank",
            "0",
            "--world-size",
            "1",
        ])
        .arg("--coordinator")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--sysroot")
        .arg(&n.root)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["launcher"], "flags");
    assert_eq!(
        report["all_reduce"]["nccl"]["results"][0]["status"],
        "measured"
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", summary(&report));
}
