//! Who this process is in a cluster run, from the launcher's environment or the flags (parent
//! side, before any network or GPU work): rank, world size, local rank, and where rank 0
//! listens. Each launcher names them its own way:
//!
//! - torchrun (torch/distributed/elastic/agent/server/local_elastic_agent.py): RANK,
//!   WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; with
//!   TORCHELASTIC_USE_AGENT_STORE=True the agent's TCPStore already holds MASTER_PORT on the
//!   master, so rigdoctor's coordinator takes the port after it.
//! - Slurm (srun, sbatch(1) "OUTPUT ENVIRONMENT VARIABLES"): SLURM_PROCID, SLURM_NTASKS,
//!   SLURM_LOCALID, SLURM_NTASKS_PER_NODE, SLURM_STEP_NODELIST (a hostlist such as
//!   `gpu[01-04,07]`); the coordinator is the first host of the step, at --port.
//! - Open MPI (mpirun(1) "Exported Environment Variables"): OMPI_COMM_WORLD_RANK, _SIZE,
//!   _LOCAL_RANK, _LOCAL_SIZE; MPICH/Intel MPI and Slurm's PMI: PMI_RANK, PMI_SIZE. Neither
//!   names an address, so --coordinator is needed.

use crate::cli::ClusterArgs;

/// The largest world rigdoctor takes (as `--world-size` is capped).
pub const MAX_WORLD: usize = 4096;

/// Hosts a hostlist may expand to (a hostile SLURM_STEP_NODELIST must not exhaust memory).
const MAX_HOSTS: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// "torchrun", "slurm", "open-mpi", "pmi" or "flags".
    pub launcher: &'static str,
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    /// How many processes of this run share this node, when the launcher says.
    pub local_world: Option<usize>,
    /// Rank 0's host and port.
    pub host: String,
    pub port: u16,
    /// The hosts the launcher started the run on (Slurm's step nodelist), to name a node
    /// whose rank never came; empty when the launcher does not say.
    pub hosts: Vec<String>,
    /// How the address was chosen, when it is not what the launcher named verbatim.
    pub notes: Vec<String>,
}

/// The launch as the flags and the environment `env` describe it; an error says what to set.
pub fn resolve(a: &ClusterArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Launch, String> {
    let num = |k: &str| -> Result<Option<usize>, String> {
        match env(k) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map(Some)
                .map_err(|_| format!("{k}={v:?} is not a number")),
        }
    };
    let (launcher, rank, world, local, local_world) =
        if env("RANK").is_some() && env("WORLD_SIZE").is_some() {
            (
                "torchrun",
                num("RANK")?,
                num("WORLD_SIZE")?,
                num("LOCAL_RANK")?,
                num("LOCAL_WORLD_SIZE")?,
            )
        } else if env("SLURM_PROCID").is_some() {
            let per_node = env("SLURM_NTASKS_PER_NODE")
                .and_then(|v| v.split(['(', ',']).next()?.trim().parse().ok());
            (
                "slurm",
                num("SLURM_PROCID")?,
                num("SLURM_NTASKS")?,
                num("SLURM_LOCALID")?,
                per_node,
            )
        } else if env("OMPI_COMM_WORLD_RANK").is_some() {
            (
                "open-mpi",
                num("OMPI_COMM_WORLD_RANK")?,
                num("OMPI_COMM_WORLD_SIZE")?,
                num("OMPI_COMM_WORLD_LOCAL_RANK")?,
                num("OMPI_COMM_WORLD_LOCAL_SIZE")?,
            )
        } else if env("PMI_RANK").is_some() {
            ("pmi", num("PMI_RANK")?, num("PMI_SIZE")?, None, None)
        } else {
            ("flags", None, None, None, None)
        };
    let rank = a.rank.or(rank).ok_or(
        "no rank: start rigdoctor cluster with srun, torchrun or mpirun, or give --rank and --world-size",
    )?;
    let world = a
        .world_size
        .map(|w| w as usize)
        .or(world)
        .ok_or("no world size: give --world-size (how many rigdoctor processes the run has)")?;
    if world > MAX_WORLD {
        return Err(format!(
            "a world of {world} ranks: rigdoctor cluster takes {MAX_WORLD} at most"
        ));
    }
    if world == 0 || rank >= world {
        return Err(format!(
            "rank {rank} of a world of {world}: the rank must be below the world size"
        ));
    }
    let hosts = match env("SLURM_STEP_NODELIST").or_else(|| env("SLURM_JOB_NODELIST")) {
        Some(list) if launcher == "slurm" => expand_hostlist(&list)?,
        _ => Vec::new(),
    };
    let mut notes = Vec::new();
    let (host, port) = if let Some(c) = &a.coordinator {
        split_host_port(c)?
    } else if let (Some(h), Some(p)) = (env("MASTER_ADDR"), env("MASTER_PORT")) {
        let p: u16 = p
            .trim()
            .parse()
            .map_err(|_| format!("MASTER_PORT={p:?} is not a port"))?;
        if env("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True") {
            let next = p.checked_add(1).ok_or("MASTER_PORT=65535 leaves no port after it for rigdoctor's coordinator: give --coordinator HOST:PORT")?;
            notes.push(format!("coordinator at MASTER_PORT+1 ({next}): torchrun's agent store holds MASTER_PORT {p}"));
            (h, next)
        } else {
            (h, p)
        }
    } else if let Some(first) = hosts.first() {
        notes.push(format!(
            "coordinator on the step's first host ({first}), port {} (--port)",
            a.port
        ));
        (first.clone(), a.port)
    } else {
        return Err(format!(
            "no coordinator address: {} names none; give --coordinator HOST:PORT (rank 0's host)",
            match launcher {
                "flags" => "the command line",
                l => l,
            }
        ));
    };
    Ok(Launch {
        launcher,
        rank,
        world,
        local_rank: a.local_rank.or(local).unwrap_or(0),
        local_world,
        host,
        port,
        hosts,
        notes,
    })
}

/// "host:port" or "[v6]:port".
fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("--coordinator {s:?}: give HOST:PORT, e.g. node01:29510");
    let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    if h.is_empty() {
        return Err(bad());
    }
    Ok((h.to_string(), p.parse().map_err(|_| bad())?))
}

/// A Slurm hostlist as its hosts, in order: `gpu[01-03,7],login` is gpu01 gpu02 gpu03 gpu7
/// login (zero padding kept, as Slurm keeps it); brackets may repeat (`r[1-2]n[1-2]`).
pub fn expand_hostlist(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    let bytes = list.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'[' => depth += 1,
            b']' => depth -= 1,
            b',' if depth == 0 => {
                expand_one(&list[start..i], &mut out)?;
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("hostlist {list:?}: unbalanced brackets"));
        }
    }
    if depth != 0 {
        return Err(format!("hostlist {list:?}: unbalanced brackets"));
    }
    expand_one(&list[start..], &mut out)?;
    Ok(out)
}

fn expand_one(item: &str, out: &mut Vec<String>) -> Result<(), String> {
    let item = item.trim();
    if item.is_empty() {
        return Ok(());
    }
    let Some(open) = item.find('[') else {
        if out.len() >= MAX_HOSTS {
            return Err(format!("hostlist: more than {MAX_HOSTS} hosts"));
        }
        out.push(item.to_string());
        return Ok(());
    };
    let close = item[open..]
        .find(']')
        .map(|c| open + c)
        .ok_or_else(|| format!("hostlist item {item:?}: no closing bracket"))?;
    let (prefix, ranges, rest) = (&item[..open], &item[open + 1..close], &item[close + 1..]);
    for part in ranges.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let width = lo.len();
        let bad = || format!("hostlist range {part:?} in {item:?}");
        let a: u64 = lo.trim().parse().map_err(|_| bad())?;
        let b: u64 = hi.trim().parse().map_err(|_| bad())?;
        if b < a || b - a >= MAX_HOSTS as u64 {
            return Err(bad());
        }
        for n in a..=b {
            expand_one(&format!("{prefix}{n:0width$}{rest}"), out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ClusterArgs {
        let mut v = vec!["rigdoctor", "cluster"];
        v.extend(extra);
        match crate::cli::Cli::parse_from(v).command {
            crate::cli::Command::Cluster(a) => a,
            _ => unreachable!(),
        }
    }

    fn with<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn torchrun_gives_the_port_after_its_agent_store() {
        let env = [
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "head"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ];
        let l = resolve(&args(&[]), &with(&env)).unwrap();
        assert_eq!(
            (l.launcher, l.rank, l.world, l.local_rank, l.local_world),
            ("torchrun", 3, 4, 1, Some(2))
        );
        assert_eq!((l.host.as_str(), l.port), ("head", 29501));
        let plain = resolve(&args(&[]), &with(&env[..6])).unwrap();
        assert_eq!(plain.port, 29500);
    }

    #[test]
    fn slurm_takes_the_steps_first_host_and_flags_win() {
        let env = [
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "2(x4)"),
            ("SLURM_STEP_NODELIST", "gpu[07-08,10],login1"),
        ];
        let l = resolve(&args(&["--port", "31000"]), &with(&env)).unwrap();
        assert_eq!(
            (l.launcher, l.rank, l.world, l.local_world),
            ("slurm", 5, 8, Some(2))
        );
        assert_eq!((l.host.as_str(), l.port), ("gpu07", 31000));
        assert_eq!(l.hosts, ["gpu07", "gpu08", "gpu10", "login1"]);
        let f = resolve(&args(&["--coordinator", "[fe80::1]:4000"]), &with(&env)).unwrap();
        assert_eq!((f.host.as_str(), f.port), ("fe80::1", 4000));
    }

    #[test]
    fn mpi_without_an_address_says_what_to_give() {
        let env = [("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2")];
        let e = resolve(&args(&[]), &with(&env)).unwrap_err();
        assert!(e.contains("--coordinator"), "{e}");
        let e = resolve(&args(&[]), &with(&[])).unwrap_err();
        assert!(e.contains("--rank"), "{e}");
        let e = resolve(&args(&["--rank", "2", "--world-size", "2"]), &with(&[])).unwrap_err();
        assert!(e.contains("below the world size"), "{e}");
        let e = resolve(&args(&[]), &with(&[("PMI_RANK", "x"), ("PMI_SIZE", "2")])).unwrap_err();
        assert!(e.contains("PMI_RANK"), "{e}");
    }

    #[test]
    fn hostlists_expand_as_slurm_writes_them() {
        assert_eq!(expand_hostlist("a,b").unwrap(), ["a", "b"]);
        assert_eq!(
            expand_hostlist("r[1-2]n[01-02]").unwrap(),
            ["r1n01", "r1n02", "r2n01", "r2n02"]
        );
        assert!(expand_hostlist("n[1-").is_err());
        assert!(expand_hostlist("n[5-1]").is_err());
        assert!(expand_hostlist("n[0-99999999]").is_err());
        assert!(expand_hostlist("n[[1]]").is_err());
    }
}
