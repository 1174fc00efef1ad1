//! Command-line definitions (clap derive): every flag is defined once, here.

use crate::finding::Severity;
use crate::report::Format;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Examples:
  rigdoctor check                         diagnose this machine
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
    /// Run the whole battery and print one diagnosis: every host check, then the GPU inventory
    /// through NVML and the CUDA driver (in a worker process that cannot hang rigdoctor).
    #[command(after_help = "Example:\n  sudo rigdoctor check --json -o report.json")]
    Check,
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
