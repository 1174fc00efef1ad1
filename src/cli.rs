//! Command-line definitions (clap derive): every flag is defined once, here.

use crate::finding::Severity;
use crate::report::Format;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Examples:
  rigdoctor check                         diagnose this machine
  sudo rigdoctor check -o report.json     complete (ACS needs root), saved to re-check or share
  rigdoctor diagnose report.json -v       re-judge a saved report, with every finding's evidence
  rigdoctor check --quick && torchrun train.py   pre-flight before a training job

Details of a command: rigdoctor help COMMAND. Exit codes: 0 no finding at or above --fail-on,
1 at least one, 2 bad usage or unreadable input.";

#[derive(Debug, Parser)]
#[command(
    name = "rigdoctor",
    version,
    about = "Diagnose multi-GPU Linux rigs: why P2P or NCCL hangs, corrupts data or crawls, and what to change",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: GlobalArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything: host checks, GPU inventory, P2P, quick bandwidth, NCCL; one diagnosis
    ///
    /// Every host check, the GPU inventory through NVML and the CUDA driver, the P2P tests, a
    /// quick bandwidth run and an NCCL all-reduce. GPU work runs in a worker process that
    /// cannot hang rigdoctor. A part that cannot run (no driver, no NCCL) is reported as not
    /// run, with the reason.
    #[command(
        after_help = "Examples:\n  sudo rigdoctor check -o report.json\n  rigdoctor check --quick --fail-on error && torchrun --nproc-per-node 4 train.py"
    )]
    Check(CheckArgs),
    /// P2P between every GPU pair: claimed, and tested with every byte verified
    ///
    /// What CUDA and NVML claim between every pair of GPUs, the PCIe/NVLink topology, and a
    /// real transfer per pair and direction (copy engine, SM read, SM write, and a staged
    /// control) with every byte verified. A pair that hangs is killed after --timeout and
    /// reported (its other direction is then not tried); after a hang, pairs on disjoint GPUs
    /// are tested side by side.
    #[command(
        after_help = "Examples:\n  rigdoctor p2p\n  rigdoctor p2p --devices 0,1 --timeout 5\n  rigdoctor p2p -o p2p.json"
    )]
    P2p(GpuArgs),
    /// GB/s host<->GPU and GPU<->GPU against what each link should carry
    ///
    /// Bandwidth (and with --latency, latency) host<->device, within each GPU and between every
    /// pair of GPUs, P2P and staged through the host, each copy verified and each figure
    /// compared with what its PCIe/NVLink link should carry; PCIe width/generation, replay
    /// counters, AER and clock throttling read while the copies run. Ctrl-C stops it and
    /// still prints what was measured.
    #[command(
        after_help = "Examples:\n  rigdoctor bandwidth\n  rigdoctor bandwidth --quick\n  rigdoctor bandwidth --bidirectional --method both --latency\n  rigdoctor bandwidth --devices 0,1 --size 256M --iters 20 --samples 5\n\nGB = 1e9 bytes. Each cell is the median of --samples samples, each timing --iters copies\nof --size bytes between CUDA events; docs/bandwidth.md explains the columns and the model."
    )]
    Bandwidth(BandwidthArgs),
    /// NCCL all-reduce over a size sweep: results checked, busbw, transports, hangs
    ///
    /// NCCL all-reduce (sum, float32) with one worker process per GPU that join one
    /// communicator (ncclGetUniqueId / ncclCommInitRank), as DDP and torchrun run it, over a
    /// size sweep: time, algbw and busbw as nccl-tests prints them, every rank's result
    /// checked, the transport NCCL chose per channel (NCCL_DEBUG=INFO), and a rank that hangs
    /// or dies named and killed after --timeout. --single-process runs every rank in one
    /// process (ncclCommInitAll) instead. NCCL is loaded at run time: libnccl.so.2,
    /// --nccl-lib, or a pip wheel's copy.
    #[command(
        after_help = "Examples:\n  rigdoctor nccl\n  rigdoctor nccl --single-process\n  rigdoctor nccl --max-size 1G --iters 50\n  rigdoctor nccl --nccl-lib ~/venv/lib/python3.11/site-packages/nvidia/nccl/lib/libnccl.so.2"
    )]
    Nccl(NcclArgs),
    /// Host checks only, no GPU touched: kernel, IOMMU, PCIe, ACS, links, driver, env
    ///
    /// Inspect the host without touching a GPU: kernel command line, IOMMU, PCIe path, ACS,
    /// links, AER, BAR1, NVIDIA driver, /dev/shm, NCCL/CUDA environment.
    #[command(
        after_help = "Examples:\n  sudo rigdoctor host\n  rigdoctor host --sysroot /mnt/captured-tree --format markdown"
    )]
    Host,
    /// Re-judge a saved JSON report with this version's rules
    ///
    /// Re-run this version's rules on the facts of a saved JSON report (`-` reads stdin): a
    /// report from another machine, or from before a knowledge-base update.
    #[command(after_help = "Example:\n  rigdoctor diagnose report.json --format markdown")]
    Diagnose {
        /// A report written by `rigdoctor ... --json` (or `-o FILE.json`).
        file: PathBuf,
    },
    /// Saved reports of several nodes side by side: which node is the odd one out
    ///
    /// Reads reports written by `rigdoctor check -o FILE.json` on each node (files, or
    /// directories of *.json reports) and shows nodes x key facts (GPUs, driver, CUDA, NCCL,
    /// kernel, IOMMU and ACS parameters, persistence, BAR1, links under load, H2D/D2H/P2P,
    /// busbw), values that differ marked, with findings: fleet-version-drift,
    /// fleet-config-drift, fleet-outlier. Exit codes as for the other commands.
    #[command(
        after_help = "Examples:\n  rigdoctor compare node-a.json node-b.json node-c.json\n  rigdoctor compare reports/ --format markdown\n  srun --ntasks-per-node 1 rigdoctor check -o reports/$(hostname).json; rigdoctor compare reports/"
    )]
    Compare {
        /// Reports (`-o FILE.json`), or directories holding them; two nodes at least.
        #[arg(required = true, value_name = "FILE|DIR")]
        files: Vec<PathBuf>,
    },
    /// One check across the nodes of a cluster, started on every node by Slurm, torchrun or mpirun
    ///
    /// Started once per node (or once per GPU) by the launcher. Rank, world size and local
    /// rank come from its environment (torchrun RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/
    /// MASTER_PORT, Slurm SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID/SLURM_STEP_NODELIST, Open MPI
    /// OMPI_COMM_WORLD_*, PMI_RANK/PMI_SIZE) or from the flags. Rank 0 listens at the
    /// coordinator address, checks that the whole world joined (count, hosts, GPUs, versions),
    /// has every node run its quick check (host, inventory, P2P), runs one NCCL all-reduce
    /// across every GPU of every node with each rank's result checked, and, when that fails
    /// (or with --pairwise), each node alone and then node pairs, to isolate the bad node or
    /// link. Rank 0 prints the merged report; every rank exits with the same code. Traffic
    /// goes only to the coordinator address (and NCCL's own).
    #[command(
        after_help = "Examples:\n  srun --ntasks-per-node 1 rigdoctor cluster\n  torchrun --nnodes 4 --nproc-per-node 1 --rdzv-endpoint head:29500 --no-python rigdoctor cluster\n  mpirun -np 4 --map-by ppr:1:node rigdoctor cluster --coordinator head:29510\n  rigdoctor cluster --rank 1 --world-size 2 --coordinator 10.0.0.1:29510"
    )]
    Cluster(ClusterArgs),
    /// What a finding id means, its trigger, fix and sources (all ids without one)
    #[command(after_help = "Examples:\n  rigdoctor explain\n  rigdoctor explain p2p-hang")]
    Explain {
        /// A finding id, e.g. p2p-hang.
        id: Option<String>,
    },
    /// Check that the watchdog stops a real stuck kernel on this machine
    ///
    /// A spin kernel whose latch is never released runs on one GPU (the first of --devices,
    /// default 0), and the worker must be killed and reaped within --timeout (plus 2 s to
    /// reap). Exit 0 when it was, 1 when not.
    #[command(
        name = "watchdog-test",
        after_help = "Example:\n  rigdoctor watchdog-test --timeout 3 --devices 0 --json"
    )]
    WatchdogTest(GpuArgs),
    /// Shell completions on stdout (bash, zsh, fish, elvish, powershell)
    #[command(
        after_help = "Example:\n  rigdoctor completions bash > ~/.local/share/bash-completion/completions/rigdoctor"
    )]
    Completions { shell: clap_complete::Shell },
    /// The man page (roff) on stdout
    #[command(after_help = "Example:\n  rigdoctor man > ~/.local/share/man/man1/rigdoctor.1")]
    Man,
    /// Internal: the worker process that runs GPU steps under the watchdog.
    #[command(name = "__worker", hide = true)]
    Worker,
}

/// The options of the commands that run GPU work.
#[derive(Debug, Clone, Args)]
pub struct GpuArgs {
    /// Seconds a GPU step may take before its worker is killed and the step reported as hung.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// CUDA device ordinals to cover, e.g. 0,2,3 (default: all), numbered as your jobs see
    /// them (CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER apply).
    #[arg(long, value_name = "LIST", value_parser = parse_devices)]
    pub devices: Option<DeviceList>,
    /// Probe this machine's GPUs even with --sysroot (e.g. the host's /proc and /sys mounted
    /// into a container). Without it, --sysroot runs only the host checks.
    #[arg(long)]
    pub gpu: bool,
}

impl Command {
    /// The GPU options of a command that runs GPU work.
    pub fn gpu_args(&self) -> Option<&GpuArgs> {
        match self {
            Command::Check(a) => Some(&a.gpu),
            Command::P2p(g) | Command::WatchdogTest(g) => Some(g),
            Command::Bandwidth(a) => Some(&a.gpu),
            Command::Nccl(a) => Some(&a.gpu),
            Command::Cluster(a) => Some(&a.gpu),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct BandwidthArgs {
    /// Both directions of every pair (the default; with --quick, which measures one direction
    /// per pair, this restores both).
    #[arg(long)]
    pub all_pairs: bool,
    /// Also measure both directions at once: host<->device on each GPU and each GPU pair.
    #[arg(long)]
    pub bidirectional: bool,
    /// Copy engine (cuMemcpyAsync), SM kernel (kernels/copy.ptx), or both.
    #[arg(long, value_enum, default_value_t = MethodChoice::Ce)]
    pub method: MethodChoice,
    /// Bytes per copy, e.g. 32M, 1G (K/M/G are powers of 1024; rounded up to 16 bytes).
    /// Default 32M, 8M with --quick.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub size: Option<u64>,
    /// Timed copies per sample. Default 16, 8 with --quick.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub iters: Option<u32>,
    /// Samples per measurement; the median is reported. Default 3, 1 with --quick.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub samples: Option<u32>,
    /// Also measure latency: 16-byte copies host<->device and between GPUs, in µs.
    #[arg(long)]
    pub latency: bool,
    /// A faster, coarser run for pre-flight scripts: smaller copies, one sample, one direction
    /// per GPU pair.
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Pre-flight: P2P verification and one NCCL all-reduce size, no bandwidth sweep.
    #[arg(long)]
    pub quick: bool,
    /// The NCCL library to load (as for `rigdoctor nccl`).
    #[arg(long, value_name = "PATH", value_parser = existing_file)]
    pub nccl_lib: Option<PathBuf>,
    /// A saved report of this machine (`check -o good.json` on the day it worked): figures
    /// that fell and facts that changed since then are a baseline-regression finding.
    #[arg(long, value_name = "FILE", value_parser = saved_report)]
    pub baseline: Option<PathBuf>,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

impl CheckArgs {
    /// The bandwidth run of `check`: `bandwidth --quick`; none with --quick.
    pub fn bandwidth(&self) -> Option<crate::facts::BandwidthConfig> {
        let quick = BandwidthArgs {
            all_pairs: false,
            bidirectional: false,
            method: MethodChoice::Ce,
            size: None,
            iters: None,
            samples: None,
            latency: false,
            quick: true,
            gpu: self.gpu.clone(),
        };
        (!self.quick).then(|| quick.config())
    }

    /// The NCCL run of `check`: 1M, 16M and 64M (--quick: 16M only), fewer iterations.
    pub fn nccl(&self) -> crate::measure::gpu::NcclConfig {
        let (min, max, iters) = if self.quick {
            (16 << 20, 16 << 20, 5)
        } else {
            (1 << 20, 64 << 20, 10)
        };
        let mut c = NcclArgs {
            min_size: Some(min),
            max_size: Some(max),
            iters: Some(iters),
            nccl_lib: self.nccl_lib.clone(),
            // One process per GPU, as DDP runs: the hangs users meet are in that mode
            // (ncclCommInitRank, P2P/IPC or P2P/CUMEM between processes).
            single_process: false,
            gpu: self.gpu.clone(),
        }
        .config();
        c.warmup = 2;
        c
    }
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// This process's rank (default: from the launcher's environment).
    #[arg(long, value_name = "N")]
    pub rank: Option<usize>,
    /// How many rigdoctor processes the run has (default: from the launcher's environment).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub world_size: Option<u64>,
    /// This process's rank among those of its node (default: from the environment, else 0).
    #[arg(long, value_name = "N")]
    pub local_rank: Option<usize>,
    /// Rank 0's address, HOST:PORT (default: MASTER_ADDR and MASTER_PORT, the port after it
    /// under torchrun, whose agent holds MASTER_PORT; under Slurm the first host of
    /// SLURM_STEP_NODELIST and --port).
    #[arg(long, value_name = "HOST:PORT")]
    pub coordinator: Option<String>,
    /// The coordinator's port when neither --coordinator nor the launcher gives one.
    #[arg(long, value_name = "PORT", default_value_t = 29510)]
    pub port: u16,
    /// Seconds rank 0 waits for every rank to join (and a rank for rank 0 to answer).
    #[arg(long, value_name = "SECS", default_value_t = 120.0, value_parser = parse_timeout)]
    pub join_timeout: f64,
    /// Run each node alone and every node pair even when the all-GPU all-reduce passed.
    #[arg(long)]
    pub pairwise: bool,
    /// The NCCL library to load (as for `rigdoctor nccl`).
    #[arg(long, value_name = "PATH", value_parser = existing_file)]
    pub nccl_lib: Option<PathBuf>,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

impl ClusterArgs {
    /// The all-reduces of a cluster run: 16M per rank, as `check --quick` runs it.
    pub fn nccl(&self) -> crate::measure::gpu::NcclConfig {
        let mut c = NcclArgs {
            min_size: Some(16 << 20),
            max_size: Some(16 << 20),
            iters: Some(5),
            nccl_lib: self.nccl_lib.clone(),
            single_process: false,
            gpu: self.gpu.clone(),
        }
        .config();
        c.warmup = 2;
        c
    }
}

#[derive(Debug, Args)]
pub struct NcclArgs {
    /// Smallest all-reduce size per rank (default 1M).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub min_size: Option<u64>,
    /// Largest size (default 256M); sizes go up by 4x from --min-size.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Timed iterations per size (default 20).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub iters: Option<u32>,
    /// The NCCL library to load (default: libnccl.so.2 on the loader path, then the
    /// nvidia-nccl pip wheel in the active virtualenv/conda env or site-packages).
    #[arg(long, value_name = "PATH", value_parser = existing_file)]
    pub nccl_lib: Option<PathBuf>,
    /// Every rank in this one worker process (ncclCommInitAll), not one process per GPU.
    #[arg(long)]
    pub single_process: bool,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

impl NcclArgs {
    pub fn config(&self) -> crate::measure::gpu::NcclConfig {
        let min = self.min_size.unwrap_or(1 << 20);
        let max = self.max_size.unwrap_or(256 << 20).max(min);
        let mut sizes = Vec::new();
        let mut s = min;
        while s < max {
            sizes.push(s);
            s = s.saturating_mul(4);
        }
        sizes.push(max);
        crate::measure::gpu::NcclConfig {
            sizes,
            warmup: 5,
            iters: self.iters.unwrap_or(20),
            library: self.nccl_lib.as_ref().map(|p| p.display().to_string()),
            devices: None,
            abort_after_s: None,
            single_process: self.single_process,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodChoice {
    Ce,
    Sm,
    Both,
}

/// `32M` -> 33554432.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_uppercase();
            let m: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                _ => {
                    return Err(format!(
                        "{s:?}: use a number of bytes with K, M or G, e.g. 64M"
                    ))
                }
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: use a number of bytes with K, M or G, e.g. 64M"))?;
    match n.checked_mul(mult) {
        Some(b) if (16..=(16u64 << 30)).contains(&b) => Ok(b.div_ceil(16) * 16),
        _ => Err(format!("{s:?}: between 16 bytes and 16G")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Read /proc and /sys under DIR instead of / (a tree captured from another machine).
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    pub sysroot: PathBuf,
    /// Output format [default: text; with -o, from its extension: .json, .md]
    #[arg(long, global = true, value_enum)]
    pub format: Option<Format>,
    /// Short for --format json.
    #[arg(long, global = true, conflicts_with = "format")]
    pub json: bool,
    /// Write the report to FILE (the terminal still gets the text summary).
    #[arg(short = 'o', long = "output", global = true, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Exit with 1 when a finding is at least this severe.
    #[arg(long, global = true, value_enum, default_value_t = Severity::Error)]
    pub fail_on: Severity,
    /// Hide the host name, UUIDs and home directories (for reports you post publicly).
    #[arg(long, global = true)]
    pub redact: bool,
    /// Accept a finding: shown, marked allowed, never counted for the exit code (repeatable;
    /// ID or ID@BUSID, e.g. p2p-hang or p2p-hang@0000:0a:00.0).
    #[arg(long = "allow", global = true, value_name = "ID[@BUSID]")]
    pub allow: Vec<String>,
    /// Config file with `allow = [...]` (default: ./rigdoctor.toml, else
    /// $XDG_CONFIG_HOME/rigdoctor/config.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Text with every finding's evidence and sources, every table and the full legends (a
    /// text file from -o always has them).
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,
    /// Colour in terminal output (auto: only on a terminal, and never with NO_COLOR set).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

/// `--devices 0,2,3`, in the order given, without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(pub Vec<i32>);

fn parse_devices(s: &str) -> Result<DeviceList, String> {
    let mut out: Vec<i32> = Vec::new();
    for part in s.split(',') {
        match part.trim().parse::<i32>() {
            Ok(d) if d >= crate::facts::MAX_DEVICES as i32 => {
                return Err(format!(
                    "{d}: rigdoctor handles devices 0..{} of one machine",
                    crate::facts::MAX_DEVICES
                ))
            }
            Ok(d) if d >= 0 => {
                if !out.contains(&d) {
                    out.push(d);
                }
            }
            _ => return Err(format!("{part:?} is not a device number: give e.g. 0,1,3")),
        }
    }
    Ok(DeviceList(out))
}

/// A library path given on the command line must exist: a typo is a usage error, never a run
/// that quietly finds no NCCL.
fn existing_file(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => Ok(p),
        Ok(_) => Err("not a file: give the path of libnccl.so.2".into()),
        Err(e) => Err(format!("{e}: give the path of libnccl.so.2 (pip's nvidia-nccl wheel has it under nvidia/nccl/lib/)")),
    }
}

fn saved_report(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => Ok(p),
        Ok(_) => Err("not a file: give a report written by `rigdoctor check -o FILE.json`".into()),
        Err(e) => Err(format!(
            "{e}: give a report written by `rigdoctor check -o FILE.json`"
        )),
    }
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err("a number of seconds between 0 and 3600".into()),
    }
}

impl BandwidthArgs {
    /// The run's settings, defaults applied.
    pub fn config(&self) -> crate::facts::BandwidthConfig {
        use crate::facts::Method;
        let q = self.quick;
        crate::facts::BandwidthConfig {
            size_bytes: self.size.unwrap_or(if q { 8 << 20 } else { 32 << 20 }),
            iters: self.iters.unwrap_or(if q { 8 } else { 16 }),
            warmup: if q { 1 } else { 2 },
            samples: self.samples.unwrap_or(if q { 1 } else { 3 }),
            methods: match self.method {
                MethodChoice::Ce => vec![Method::Ce],
                MethodChoice::Sm => vec![Method::Sm],
                MethodChoice::Both => vec![Method::Ce, Method::Sm],
            },
            bidirectional: self.bidirectional,
            all_pairs: self.all_pairs || !q,
            latency: self.latency,
            latency_iters: 100,
            latency_bytes: 16,
        }
    }
}

impl GlobalArgs {
    /// --json, else --format, else what -o's extension names (`.json`, `.md`), else text.
    pub fn format(&self) -> Format {
        if self.json {
            return Format::Json;
        }
        if let Some(f) = self.format {
            return f;
        }
        let ext = self
            .output
            .as_ref()
            .and_then(|p| p.extension())
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("json") => Format::Json,
            Some("md" | "markdown") => Format::Markdown,
            _ => Format::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("32M"), Ok(32 << 20));
        assert_eq!(super::parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(super::parse_size("100"), Ok(112));
        assert!(super::parse_size("8").is_err());
        assert!(super::parse_size("1T").is_err());
        assert!(super::parse_size("lots").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
