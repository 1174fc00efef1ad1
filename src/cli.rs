//! Command-line definitions (clap derive): every flag is defined once, here.

use crate::finding::Severity;
use crate::report::Format;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Examples:
  rigdoctor check                         diagnose this machine
  rigdoctor p2p                           test peer-to-peer on every GPU pair, bytes verified
  rigdoctor check --json -o report.json   save a report to attach to a forum post or issue
  rigdoctor diagnose report.json          re-check a saved report with this version's rules
  rigdoctor check --fail-on warn && torchrun train.py   pre-flight before a training job

Exit codes: 0 no finding at or above --fail-on, 1 at least one, 2 bad usage or unreadable input.
Some facts (PCIe ACS) need root: run with sudo for a complete diagnosis.";

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
    /// Run the whole battery and print one diagnosis: every host check, the GPU inventory
    /// through NVML and the CUDA driver, and the P2P tests (GPU work runs in a worker process
    /// that cannot hang rigdoctor).
    #[command(after_help = "Example:\n  sudo rigdoctor check --json -o report.json")]
    Check,
    /// Peer-to-peer: what CUDA and NVML claim between every pair of GPUs, the PCIe/NVLink
    /// topology, and a real transfer per pair and direction (copy engine, SM read, SM write,
    /// and a staged control) with every byte verified. A pair that hangs is killed after
    /// --timeout and reported; the rest still run.
    #[command(
        after_help = "Examples:\n  rigdoctor p2p\n  rigdoctor p2p --devices 0,1 --timeout 5\n  rigdoctor p2p --json -o p2p.json"
    )]
    P2p,
    /// Inspect the host without touching a GPU: kernel command line, IOMMU, PCIe path, ACS,
    /// links, AER, BAR1, NVIDIA driver, /dev/shm, NCCL/CUDA environment.
    #[command(
        after_help = "Examples:\n  sudo rigdoctor host\n  rigdoctor host --sysroot /mnt/captured-tree --format markdown"
    )]
    Host,
    /// Internal: the worker process that runs GPU steps under the watchdog.
    #[command(name = "__worker", hide = true)]
    Worker,
    /// Re-run this version's rules on the facts of a saved JSON report (`-` reads stdin).
    #[command(after_help = "Example:\n  rigdoctor diagnose report.json --format markdown")]
    Diagnose {
        /// A report written by `rigdoctor ... --json`.
        file: PathBuf,
    },
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
    /// Seconds a GPU step may take before its worker is killed and the step reported as hung.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// CUDA device ordinals the P2P tests cover, e.g. 0,2,3 (default: all). They are
    /// numbered as your jobs see them (CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER apply).
    #[arg(long, global = true, value_name = "LIST", value_parser = parse_devices)]
    pub devices: Option<DeviceList>,
    /// Probe this machine's GPUs even with --sysroot (e.g. the host's /proc and /sys mounted
    /// into a container). Without it, --sysroot runs only the host checks.
    #[arg(long, global = true)]
    pub gpu: bool,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Short for --format json.
    #[arg(long, global = true)]
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

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err("a number of seconds between 0 and 3600".into()),
    }
}

impl GlobalArgs {
    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.format
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
