//! Running a command: probe or load facts, judge them, render, choose the exit code.

use crate::cli::{Cli, ColorChoice, Command, GlobalArgs, GpuArgs};
use crate::facts::{BandwidthConfig, Facts, Probed};
use crate::knowledge::Knowledge;
use crate::measure::gpu::NcclConfig;
use crate::report::{self, Format, Report, TextStyle};
use crate::sysroot::Sysroot;
use crate::{probe, progress, rules};
use anyhow::{bail, Context, Result};
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::Duration;

/// Exit codes, as documented in README.md.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FINDINGS: u8 = 1;
pub const EXIT_ERROR: u8 = 2;

pub fn run(cli: Cli) -> u8 {
    match try_run(&cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain of causes, outermost first.
            let msg = crate::report::escape_line(&format!("{e:#}").replace('\n', " "));
            eprintln!("rigdoctor: error: {msg}");
            EXIT_ERROR
        }
    }
}

fn try_run(cli: &Cli) -> Result<u8> {
    let kb = Knowledge::embedded().context("built-in knowledge base is invalid")?;
    let g = &cli.global;
    if let Some(out) = &g.output {
        // Before any work: a bad -o must not cost a complete GPU run.
        crate::output::check_target(out, diagnose_input(cli))?;
    }
    match &cli.command {
        Command::Explain { id } => return explain(id.as_deref()),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(
                *shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "rigdoctor",
                &mut out,
            );
            print(&String::from_utf8_lossy(&out))?;
            return Ok(EXIT_OK);
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut out)
                .context("rendering the man page")?;
            print(&String::from_utf8_lossy(&out))?;
            return Ok(EXIT_OK);
        }
        _ => {}
    }
    // Before any work: a bad --allow or config must not cost a GPU run.
    let allows = if matches!(cli.command, Command::Worker) {
        Vec::new()
    } else {
        crate::allow::load(&g.allow, g.config.as_deref())?
    };
    // A bad baseline must not cost a GPU run either: read it first.
    let baseline = match &cli.command {
        Command::Check(a) => match &a.baseline {
            Some(path) => Some((saved_facts(path)?, path.display().to_string())),
            None => None,
        },
        _ => None,
    };
    let (command, facts) = match &cli.command {
        Command::Worker => return Ok(crate::worker::main().clamp(0, 255) as u8),
        Command::Compare { files } => return compare(cli, files, &allows),
        Command::Cluster(a) => return cluster(cli, a, &allows),
        Command::Check(a) => {
            // The accepted workaround: p2p-hang allowed and NCCL told not to use P2P. The P2P
            // transfers would only cost deadlines; the report says they were not tested.
            let p2p_disabled = std::env::var("NCCL_P2P_DISABLE").is_ok_and(|v| v.trim() == "1");
            let skip_p2p = p2p_disabled && crate::allow::Allow::unscoped(&allows, "p2p-hang");
            let mut facts = probe_machine(
                g,
                &a.gpu,
                Battery {
                    p2p: !skip_p2p,
                    bandwidth: a.bandwidth(),
                    nccl: Some(a.nccl()),
                },
            )?;
            if skip_p2p {
                facts.collected.skipped.push(
                    "P2P transfers: p2p-hang is allowed and NCCL_P2P_DISABLE=1 is set, so NCCL does not use P2P".into(),
                );
            }
            ("check", facts.into())
        }
        Command::P2p(gpu) => (
            "p2p",
            probe_machine(
                g,
                gpu,
                Battery {
                    p2p: true,
                    ..Default::default()
                },
            )?
            .into(),
        ),
        Command::Bandwidth(a) => (
            "bandwidth",
            probe_machine(
                g,
                &a.gpu,
                Battery {
                    bandwidth: Some(a.config()),
                    ..Default::default()
                },
            )?
            .into(),
        ),
        Command::Nccl(a) => (
            "nccl",
            probe_machine(
                g,
                &a.gpu,
                Battery {
                    nccl: Some(a.config()),
                    ..Default::default()
                },
            )?
            .into(),
        ),
        Command::WatchdogTest(gpu) => return watchdog_test(g, gpu),
        Command::Explain { .. } | Command::Completions { .. } | Command::Man => {
            unreachable!("answered above")
        }
        Command::Host => ("host", probe_host(&g.sysroot)?.into()),
        Command::Diagnose { file } => ("diagnose", load(file)?),
    };
    let (command, facts, rediagnosed) = match facts {
        Loaded::Probed(f) => (command.to_string(), f, false),
        Loaded::Saved { facts, command } => (command, facts, true),
    };
    // The rules judge the real facts; redaction is applied to the finished report.
    let mut findings = rules::diagnose(&facts, &kb);
    if let Some((old, path)) = &baseline {
        let then = crate::fleet::Node::of(old, path);
        let now = crate::fleet::Node::of(&facts, "this run");
        findings.extend(crate::fleet::baseline::findings(&then, &now));
        rules::sort(&mut findings);
    }
    crate::allow::apply(&mut findings, &allows);
    let mut report = Report::new(&command, facts, findings);
    if rediagnosed {
        report.rediagnosed_by = Some("diagnose".into());
    }
    if g.redact {
        let secrets = report::Secrets::of(&report, |v| std::env::var(v).ok());
        report = report::redact(&report, &secrets).map_err(anyhow::Error::msg)?;
    }
    let code = match &report.facts.collected.interrupted {
        // As shells expect of a process stopped by a signal: 128 + its number.
        Some(i) => (128 + i.signal).clamp(0, 255) as u8,
        None if report
            .findings
            .iter()
            .any(|f| f.severity >= g.fail_on && f.allowed.is_none()) =>
        {
            EXIT_FINDINGS
        }
        None => EXIT_OK,
    };
    report.summarise(code);
    emit(&report, cli)?;
    Ok(code)
}

/// The saved report `diagnose` reads, which no output may overwrite.
fn diagnose_input(cli: &Cli) -> Option<&Path> {
    match &cli.command {
        Command::Diagnose { file } => Some(file.as_path()),
        _ => None,
    }
}

/// Facts measured by this run, or read back from a saved report (with its command).
enum Loaded {
    Probed(Facts),
    Saved { facts: Facts, command: String },
}

impl From<Facts> for Loaded {
    fn from(f: Facts) -> Self {
        Loaded::Probed(f)
    }
}

/// What `watchdog-test` saw.
#[derive(serde::Serialize)]
struct WatchdogVerdict {
    device: i32,
    /// killed (the watchdog stopped the stuck kernel), finished (the kernel returned: its own
    /// timeout passed first), error, crashed, not-run.
    outcome: &'static str,
    elapsed_s: f64,
    deadline_s: f64,
    /// The killed worker was reaped (it was not stuck in the kernel driver).
    reaped: bool,
    passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `rigdoctor watchdog-test`: a spin kernel that never ends, under the watchdog.
fn watchdog_test(g: &GlobalArgs, gpu: &GpuArgs) -> Result<u8> {
    use crate::measure::gpu::Step;
    use crate::measure::watchdog::Outcome;
    let device = gpu
        .devices
        .as_ref()
        .and_then(|d| d.0.first().copied())
        .unwrap_or(0);
    let deadline = Duration::from_secs_f64(gpu.timeout);
    let dog = probe::gpu::watchdog(deadline).map_err(anyhow::Error::msg)?;
    crate::measure::install_signal_handlers();
    // CUDA is initialised by the first step, so its cost is not counted against the spin.
    let run = dog.run(
        &[Step::CudaInventory, Step::SpinHang { device }],
        &mut |_| {},
    );
    let spin = run
        .reports
        .iter()
        .find(|r| matches!(r.step, Step::SpinHang { .. }));
    let (outcome, reaped, error) = match spin.map(|r| &r.outcome) {
        Some(Outcome::Hang { unkillable, .. }) => ("killed", !unkillable, None),
        Some(Outcome::Done(_)) => ("finished", true, Some("the spin kernel returned before the deadline: its own timeout passed, or the latch was not read".into())),
        Some(Outcome::Failed(e)) => ("error", true, Some(e.to_string())),
        Some(Outcome::Crashed(e)) => ("crashed", true, Some(format!("the worker {e}"))),
        None => ("not-run", true, Some("interrupted before the spin step".into())),
    };
    let elapsed_s = spin.map_or(0.0, |r| r.elapsed.as_secs_f64());
    // The kill must come at the deadline, and the reap within the watchdog's grace.
    let passed = outcome == "killed" && reaped && elapsed_s <= gpu.timeout + 2.5;
    let v = WatchdogVerdict {
        device,
        outcome,
        elapsed_s,
        deadline_s: gpu.timeout,
        reaped,
        passed,
        error,
    };
    if g.format() == Format::Json {
        print(&format!("{}\n", serde_json::to_string(&v)?))?;
    } else {
        let detail = v
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        print(&format!(
            "watchdog-test: GPU {}: spin kernel {} after {:.2} s (deadline {:.2} s), worker reaped: {}{} -> {}\n",
            v.device,
            v.outcome,
            v.elapsed_s,
            v.deadline_s,
            if v.reaped { "yes" } else { "no" },
            crate::report::escape_line(&detail),
            if v.passed { "PASS" } else { "FAIL" }
        ))?;
    }
    Ok(if passed { EXIT_OK } else { EXIT_FINDINGS })
}

/// `rigdoctor explain [ID]`: one finding's entry from docs/findings.md, or every code.
fn explain(id: Option<&str>) -> Result<u8> {
    use crate::code::Code;
    let Some(id) = id else {
        let width = Code::ALL.iter().map(|c| c.id().len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in Code::ALL {
            let sev: Vec<&str> = c.severities().iter().map(|s| s.label()).collect();
            out.push_str(&format!(
                "{:<width$}  {:<18}  {}\n",
                c.id(),
                sev.join("/"),
                c.summary()
            ));
        }
        out.push_str("\nrigdoctor explain ID: trigger, fix and sources (docs/findings.md)\n");
        print(&out)?;
        return Ok(EXIT_OK);
    };
    let Some(code) = Code::from_id(id) else {
        bail!("{id:?} is no finding id: `rigdoctor explain` lists them");
    };
    print(&format!(
        "{}: {}\n\n{}\n",
        code.id(),
        code.summary(),
        code.docs_section().unwrap_or_default().trim_end()
    ))?;
    Ok(EXIT_OK)
}

/// Host facts, then the GPU steps (unless --sysroot points at another machine's tree).
/// Which GPU batteries a command runs.
#[derive(Default)]
struct Battery {
    p2p: bool,
    bandwidth: Option<BandwidthConfig>,
    nccl: Option<NcclConfig>,
}

fn probe_machine(g: &GlobalArgs, gpu_args: &GpuArgs, battery: Battery) -> Result<Facts> {
    let Battery {
        p2p,
        bandwidth,
        nccl,
    } = battery;
    let mut facts = probe_host(&g.sysroot)?;
    let live = g.sysroot == Path::new("/");
    // rigdoctor only reads: on a live machine whose NVIDIA module is not loaded, cuInit and
    // nvmlInit would create /dev/nvidia* and run nvidia-modprobe to load it
    // (nvidia-modprobe(1)). WSL2 (/dev/dxg) has no module and needs the calls; --gpu insists.
    if live && !gpu_args.gpu && !facts.driver.loaded && !Path::new("/dev/dxg").exists() {
        facts.gpu = Some(probe::gpu::not_started(
            "the NVIDIA kernel module is not loaded: rigdoctor does not start the driver (cuInit/nvmlInit would load it through nvidia-modprobe)",
        ));
        return Ok(facts);
    }
    if gpu_args.gpu || live {
        // SIGINT/SIGTERM/SIGHUP stop the worker; the report still shows what was measured.
        // Failing to install the handlers only costs that.
        crate::measure::install_signal_handlers();
        let deadline = Duration::from_secs_f64(gpu_args.timeout);
        // NCCL's choice of SHM over verified P2P is measured against NCCL_P2P_LEVEL=SYS only
        // when the user set neither variable (then their setting is what runs).
        let try_p2p_level_sys = p2p
            && nccl.is_some()
            && facts.env.lookup("NCCL_P2P_LEVEL").is_none()
            && facts.env.lookup("NCCL_P2P_DISABLE").is_none();
        let plan = probe::gpu::Plan {
            try_p2p_level_sys,
            nccl_per_process: nccl.as_ref().is_some_and(|c| !c.single_process),
            p2p,
            devices: gpu_args.devices.clone().map(|d| d.0),
            bandwidth,
            nccl: nccl.map(|mut c| {
                c.devices = gpu_args.devices.clone().map(|d| d.0);
                c
            }),
        };
        let quiet = g.format() == Format::Json && g.output.is_none();
        let mut bar = progress::Bar::new(quiet);
        let mut gpu = probe::gpu::collect(deadline, &plan, &mut |p| bar.event(p));
        bar.finish();
        // --devices naming a GPU CUDA does not have is a usage error, not a diagnosis.
        if let (Some(want), Some(inv)) = (&gpu_args.devices, gpu.cuda.known()) {
            let count = inv.devices.len() as i32;
            if let Some(bad) = want.0.iter().find(|&&d| d < 0 || d >= count) {
                let list: Vec<String> = inv
                    .devices
                    .iter()
                    .map(|d| format!("{}: {} ({})", d.ordinal, d.name, d.bus_id))
                    .collect();
                bail!(
                    "--devices {bad}: CUDA sees {count} device(s){}{}",
                    if list.is_empty() { "" } else { ": " },
                    list.join(", ")
                );
            }
        }
        if let (Some(bw), Probed::Known(topo)) = (gpu.bandwidth.as_mut(), &facts.pci) {
            bw.aer_after = probe::pci::reread_aer(&Sysroot::new(&g.sysroot), topo);
        }
        facts.gpu = Some(gpu);
        facts.collected.interrupted =
            crate::measure::interrupt_signal().map(crate::facts::Interruption::of);
    }
    Ok(facts)
}

fn probe_host(sysroot: &Path) -> Result<Facts> {
    if !sysroot.is_dir() {
        bail!("--sysroot {}: not a directory", sysroot.display());
    }
    Ok(probe::collect_host(
        &Sysroot::new(sysroot),
        std::env::vars(),
    ))
}

/// The facts of a saved report (`--baseline`, `compare`).
fn saved_facts(file: &Path) -> Result<Facts> {
    match load(file)? {
        Loaded::Saved { facts, .. } | Loaded::Probed(facts) => Ok(facts),
    }
}

/// The reports `compare` reads: each file, and each directory's `*.json` files in name order.
fn compare_inputs(files: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for f in files {
        if f.is_dir() {
            let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(f)
                .with_context(|| format!("{}: cannot read the directory", f.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json") && p.is_file())
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("{}: no *.json reports in this directory", f.display());
            }
            out.extend(found);
        } else {
            out.push(f.clone());
        }
    }
    if out.len() < 2 {
        bail!("compare needs the reports of two nodes or more (got {}): write one per node with `rigdoctor check -o NODE.json`", out.len());
    }
    Ok(out)
}

/// `rigdoctor compare FILE...`: the fleet table and its findings.
fn compare(cli: &Cli, files: &[std::path::PathBuf], allows: &[crate::allow::Allow]) -> Result<u8> {
    let g = &cli.global;
    if g.redact {
        // Refuse rather than print a table of unredacted names: the inputs are redacted
        // one by one, where their secrets are known.
        bail!("--redact: compare shows the reports as they are; redact each first (`rigdoctor diagnose NODE.json --redact -o NODE.redacted.json`) and compare those");
    }
    let inputs = compare_inputs(files)?;
    if let Some(out) = &g.output {
        let target = std::fs::canonicalize(out).ok();
        if inputs
            .iter()
            .any(|i| target.is_some() && std::fs::canonicalize(i).ok() == target)
        {
            bail!(
                "{}: -o would overwrite a report being compared",
                out.display()
            );
        }
    }
    let mut nodes = Vec::new();
    for path in &inputs {
        let facts = saved_facts(path)?;
        nodes.push(crate::fleet::Node::of(&facts, &path.display().to_string()));
    }
    crate::fleet::node::label(&mut nodes);
    let mut findings = crate::fleet::compare::findings(&nodes);
    crate::allow::apply(&mut findings, allows);
    let code = if findings
        .iter()
        .any(|f| f.severity >= g.fail_on && f.allowed.is_none())
    {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    };
    let report = crate::fleet::render::FleetReport::new(nodes, findings, code);
    let format = g.format();
    match &g.output {
        Some(path) => {
            crate::output::write_atomic(path, report.render(format, &TextStyle::FILE).as_bytes())?;
            print(&report.render(Format::Text, &terminal_style(g)))?;
            eprintln!("rigdoctor: comparison written to {}", path.display());
        }
        None => print(&report.render(format, &terminal_style(g)))?,
    }
    Ok(code)
}

/// `rigdoctor cluster`: this rank's part; rank 0 prints the merged report, every other rank
/// one line; every rank exits with rank 0's code.
fn cluster(cli: &Cli, a: &crate::cli::ClusterArgs, allows: &[crate::allow::Allow]) -> Result<u8> {
    let g = &cli.global;
    if g.redact {
        bail!("--redact: the merged report names every node and is not redacted; run `rigdoctor check --redact` on a node to post its report");
    }
    let launch = crate::cluster::launch::resolve(a, &|k| std::env::var(k).ok())
        .map_err(anyhow::Error::msg)?;
    let host = Sysroot::new(&g.sysroot)
        .read_attr("/proc/sys/kernel/hostname")
        .known()
        .cloned()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("rank-{}", launch.rank));
    // One check per node: by its first local rank. A node with one rank per GPU gives each
    // rank the GPU of its local rank (torchrun's and Slurm's convention).
    let per_gpu = launch.local_world.is_some_and(|n| n > 1) || launch.local_rank > 0;
    let mut node_check = || -> crate::cluster::NodeCheck {
        let fixed: Option<Vec<i32>> = a.gpu.devices.as_ref().map(|d| d.0.clone()).or_else(|| {
            // A launcher that binds each task to its GPU (Slurm --gpus-per-task=1,
            // --gpu-bind) shows it as CUDA device 0.
            let one_visible = std::env::var("CUDA_VISIBLE_DEVICES")
                .is_ok_and(|v| !v.trim().is_empty() && !v.contains(','));
            per_gpu.then(|| {
                vec![if one_visible {
                    0
                } else {
                    launch.local_rank as i32
                }]
            })
        });
        if launch.local_rank > 0 {
            return crate::cluster::NodeCheck {
                report: None,
                devices: fixed.unwrap_or_default(),
                why: None,
            };
        }
        let battery = Battery {
            p2p: true,
            ..Default::default()
        };
        match probe_machine(g, &a.gpu, battery) {
            Ok(facts) => {
                let kb = Knowledge::embedded().ok();
                let mut findings = kb.map(|k| rules::diagnose(&facts, &k)).unwrap_or_default();
                crate::allow::apply(&mut findings, allows);
                let cuda: Option<Vec<i32>> = facts
                    .gpu
                    .as_ref()
                    .and_then(|gp| gp.cuda.known())
                    .map(|c| c.devices.iter().map(|d| d.ordinal).collect());
                let why = match facts.gpu.as_ref().map(|gp| &gp.cuda) {
                    Some(Probed::Unknown { detail, .. }) => Some(format!("CUDA: {detail}")),
                    None => Some("the GPU steps did not run (--sysroot without --gpu?)".into()),
                    _ => None,
                };
                let mut report = Report::new("cluster", facts, findings);
                let code = if report
                    .findings
                    .iter()
                    .any(|f| f.severity >= g.fail_on && f.allowed.is_none())
                {
                    EXIT_FINDINGS
                } else {
                    EXIT_OK
                };
                report.summarise(code);
                crate::cluster::NodeCheck {
                    report: Some(report),
                    devices: fixed.or(cuda).unwrap_or_default(),
                    why,
                }
            }
            Err(e) => crate::cluster::NodeCheck {
                report: None,
                devices: Vec::new(),
                why: Some(format!("the node check failed: {e:#}")),
            },
        }
    };
    let emit: crate::cluster::Emit<'_> = Box::new(|report: &crate::cluster::ClusterReport| {
        let format = g.format();
        match &g.output {
            Some(path) => {
                crate::output::write_atomic(
                    path,
                    report.render(format, &TextStyle::FILE).as_bytes(),
                )?;
                print(&report.render(Format::Text, &terminal_style(g)))?;
                eprintln!("rigdoctor: cluster report written to {}", path.display());
            }
            None => print(&report.render(format, &terminal_style(g)))?,
        }
        Ok(())
    });
    let ran = crate::cluster::run(a, &launch, host, (g.fail_on, allows), &mut node_check, emit)?;
    let me = format!("rank {} of {}", launch.rank, launch.world);
    match (ran.code, ran.end) {
        (Some(code), _) => Ok(code),
        (None, crate::cluster::End::Done { code, verdict }) => {
            print(&format!(
                "rigdoctor cluster: {me}: {} (the merged report is rank 0's, at {}:{})\n",
                crate::report::escape_line(&verdict),
                crate::report::escape_line(&launch.host),
                launch.port
            ))?;
            Ok(code)
        }
        (None, crate::cluster::End::Refused(why)) => {
            bail!("{me}: rank 0 refused this rank: {why}")
        }
        (None, crate::cluster::End::Lost(why)) => match crate::measure::interrupt_signal() {
            // Stopped by a signal: said as such, with the code a shell expects (its workers
            // were stopped by their watchdogs).
            Some(sig) => {
                eprintln!(
                    "rigdoctor cluster: {me}: interrupted ({}) before rank 0's verdict came",
                    crate::measure::watchdog::signal_name(sig)
                );
                Ok((128 + sig).clamp(0, 255) as u8)
            }
            None => bail!("{me}: {why}"),
        },
    }
}

fn load(file: &Path) -> Result<Loaded> {
    let mut bytes = Vec::new();
    let limit = report::MAX_REPORT_BYTES as u64 + 1;
    let read = if file.as_os_str() == "-" {
        std::io::stdin().take(limit).read_to_end(&mut bytes)
    } else {
        crate::sysroot::read_regular(file, limit).map(|b| {
            bytes = b;
            bytes.len()
        })
    };
    read.with_context(|| format!("{}: cannot read", file.display()))?;
    let (facts, command) =
        report::load_saved(&bytes).with_context(|| format!("{}", file.display()))?;
    Ok(Loaded::Saved { facts, command })
}

fn use_color(choice: ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::env::var("TERM").map_or(true, |t| t != "dumb")
        }
    }
}

/// Text for stdout: the screen (or everything with --verbose), wrapped at its width.
fn terminal_style(g: &crate::cli::GlobalArgs) -> TextStyle {
    TextStyle {
        color: use_color(g.color),
        verbose: g.verbose,
        width: crate::report::stdout_width(),
    }
}

fn emit(report: &Report, cli: &Cli) -> Result<()> {
    let g = &cli.global;
    let format = g.format();
    match &g.output {
        Some(path) => {
            let rendered = if format == Format::Markdown && !report.json_fits_in_post() {
                // Too long for one post: the JSON goes beside it, and the post names it.
                let json_path = path.with_extension("json");
                // Never onto the report being diagnosed (diagnose post.json -o post.md).
                crate::output::check_target(&json_path, diagnose_input(cli))?;
                crate::output::write_atomic(
                    &json_path,
                    report.render(Format::Json, &TextStyle::FILE).as_bytes(),
                )?;
                eprintln!(
                    "rigdoctor: JSON report written to {} (attach it to the post)",
                    json_path.display()
                );
                let name = json_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned());
                report.render_post(name.as_deref())
            } else {
                report.render(format, &TextStyle::FILE)
            };
            crate::output::write_atomic(path, rendered.as_bytes())?;
            // The terminal still gets the text report, whatever the file holds.
            print(&report.render(Format::Text, &terminal_style(g)))?;
            eprintln!("rigdoctor: report written to {}", path.display());
        }
        None => {
            print(&report.render(format, &terminal_style(g)))?;
            if format == Format::Text && std::io::stderr().is_terminal() {
                eprintln!("{}", crate::report::SHARE_HINT);
            }
        }
    }
    Ok(())
}

use crate::output::print;
