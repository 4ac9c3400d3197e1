//! `worknode cores show|audit|plan`: the host's CPUs, what to fix, and where worknodes go.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use worknode_cores::artifacts::{self, Artifact, SystemdOptions};
use worknode_cores::{audit, CorePlan, CpuSet, Host, PlanConfig, Status, SysRoot};

use crate::CliError;

/// `worknode cores …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CoresCommand {
    /// The CPU topology: cores, packages, NUMA nodes, isolation, and what this process may use.
    Show(ShowArgs),
    /// Check the host's isolation settings; each finding with current and recommended values.
    Audit(AuditArgs),
    /// Place worknodes on cores, or emit the deployment settings for a plan.
    Plan(PlanArgs),
    /// Measure how quiet CPUs are: timer wake-up latency or busy-loop gaps, pinned and unpinned.
    Jitter(crate::jitter_cmd::JitterArgs),
    /// Live view of every core and worknode thread (q quits; --once prints one frame).
    Top(crate::top_cmd::TopArgs),
}

/// Options every `cores` subcommand takes.
#[derive(Debug, clap::Args)]
pub(crate) struct HostArgs {
    /// Read sysfs and procfs under this directory instead of `/` (a captured host tree).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Also show which worknode each CPU runs, from this plan file.
    #[arg(long, value_name = "FILE")]
    plan: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Exit with status 1 when a critical check fails.
    #[arg(long)]
    strict: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Plan file (TOML). Without it, worknode's default server plan (raft, net, api,
    /// background) with best_effort.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print a deployment artifact instead of the placement: kernel-cmdline, systemd or cgroup.
    #[arg(long, value_name = "KIND")]
    emit: Option<String>,
    /// With --emit systemd: run the service SCHED_FIFO at this priority.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=99))]
    fifo_priority: Option<u8>,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(command: &CoresCommand, out: &mut impl Write) -> Result<CoresOutcome, CliError> {
    match command {
        CoresCommand::Show(args) => show(args, out).map(|()| CoresOutcome::Done),
        CoresCommand::Audit(args) => audit_cmd(args, out),
        CoresCommand::Plan(args) => plan_cmd(args, out).map(|()| CoresOutcome::Done),
        CoresCommand::Jitter(args) => {
            crate::jitter_cmd::run(args, out).map(|()| CoresOutcome::Done)
        }
        CoresCommand::Top(args) => crate::top_cmd::run(args, out).map(|()| CoresOutcome::Done),
    }
}

/// What the command asks of the process exit status.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CoresOutcome {
    Done,
    /// `audit --strict` found a failed critical check.
    CriticalFailures(usize),
}

fn discover(args: &HostArgs) -> Result<(SysRoot, Host), CliError> {
    if !args.root.is_dir() {
        return Err(CliError::input(format!("--root {}: no such directory", args.root.display())));
    }
    let sys = SysRoot::new(&args.root);
    let host = Host::discover(&sys);
    Ok((sys, host))
}

fn load_plan(host: &Host, path: Option<&Path>) -> Result<CorePlan, CliError> {
    let config = match path {
        Some(path) => PlanConfig::load(path).map_err(|error| CliError::input(error.to_string()))?,
        None => PlanConfig::default_server(true),
    };
    CorePlan::build(host, &config).map_err(|error| {
        let origin = path.map(|path| format!("{}: ", path.display())).unwrap_or_default();
        CliError::input(format!("{origin}{error}"))
    })
}

fn yes(flag: bool) -> &'static str {
    if flag {
        "yes"
    } else {
        "-"
    }
}

/// One CPU's row in `cores show`.
#[derive(Serialize)]
struct CpuRow {
    cpu: u32,
    core: Option<u32>,
    package: Option<u32>,
    numa_node: Option<u32>,
    siblings: String,
    isolated: bool,
    nohz_full: bool,
    usable: bool,
    housekeeping: bool,
    worknode: Option<String>,
}

#[derive(Serialize)]
struct ShowJson<'a> {
    root: String,
    kernel: Option<&'a str>,
    virtualized: Option<bool>,
    online: String,
    isolated: String,
    usable: String,
    cgroup_cpus: Option<String>,
    allowed: Option<String>,
    cpus: Vec<CpuRow>,
    notes: &'a [String],
}

fn show(args: &ShowArgs, out: &mut impl Write) -> Result<(), CliError> {
    let (_, host) = discover(&args.host)?;
    let plan = match &args.plan {
        Some(path) => Some(load_plan(&host, Some(path))?),
        None => None,
    };
    let isolated = host.isolated();
    let usable = host.usable();
    let housekeeping = match &plan {
        Some(plan) => plan.housekeeping().clone(),
        None => {
            usable.difference(&isolated).first().map(|cpu| host.siblings(cpu)).unwrap_or_default()
        }
    };
    let nohz = host.nohz_full.clone().unwrap_or_default();
    let rows: Vec<CpuRow> = host
        .cpus
        .iter()
        .map(|topology| {
            let cpu = topology.cpu;
            let worknode = plan.as_ref().and_then(|plan| {
                let names: Vec<&str> =
                    plan.placements()
                        .iter()
                        .filter(|p| p.cpus.contains(cpu) || p.reserved.contains(cpu))
                        .map(|p| {
                            if p.cpus.contains(cpu) {
                                p.worknode.as_str()
                            } else {
                                "(idle sibling)"
                            }
                        })
                        .collect();
                (!names.is_empty()).then(|| names.join(","))
            });
            CpuRow {
                cpu,
                core: topology.core_id,
                package: topology.package,
                numa_node: topology.numa_node,
                siblings: topology
                    .siblings
                    .as_ref()
                    .map(CpuSet::to_string)
                    .unwrap_or_else(|| "?".into()),
                isolated: isolated.contains(cpu),
                nohz_full: nohz.contains(cpu),
                usable: usable.contains(cpu),
                housekeeping: housekeeping.contains(cpu),
                worknode,
            }
        })
        .collect();
    if args.json {
        let report = ShowJson {
            root: host.root.display().to_string(),
            kernel: host.kernel_release.as_deref(),
            virtualized: host.hypervisor,
            online: host.online_cpus().to_string(),
            isolated: isolated.to_string(),
            usable: usable.to_string(),
            cgroup_cpus: host.cgroup_cpus.as_ref().map(CpuSet::to_string),
            allowed: host.allowed.as_ref().map(CpuSet::to_string),
            cpus: rows,
            notes: &host.notes,
        };
        serde_json::to_writer_pretty(&mut *out, &report).map_err(CliError::output)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{} online CPUs, {} physical cores, {} NUMA node(s); kernel {}{}",
        host.online_cpus().len(),
        host.physical_cores().len(),
        host.numa_nodes.len().max(1),
        host.kernel_release.as_deref().unwrap_or("unknown"),
        match host.hypervisor {
            Some(true) => ", virtual machine",
            Some(false) => ", bare metal",
            None => "",
        }
    )?;
    writeln!(
        out,
        "isolated: {}   usable by this process: {}   cgroup cpuset: {}   affinity mask: {}",
        or_none(&isolated),
        or_none(&usable),
        host.cgroup_cpus.as_ref().map(CpuSet::to_string).unwrap_or_else(|| "unknown".into()),
        host.allowed.as_ref().map(CpuSet::to_string).unwrap_or_else(|| "unknown".into()),
    )?;
    let header = [
        "cpu",
        "core",
        "pkg",
        "node",
        "siblings",
        "isolated",
        "nohz_full",
        "usable",
        "housekeeping",
    ];
    write!(
        out,
        "{:>4} {:>5} {:>4} {:>5} {:>9} {:>9} {:>10} {:>7} {:>13}",
        header[0],
        header[1],
        header[2],
        header[3],
        header[4],
        header[5],
        header[6],
        header[7],
        header[8]
    )?;
    writeln!(out, "{}", if plan.is_some() { "  worknode" } else { "" })?;
    let unknown = |value: Option<u32>| value.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
    for row in &rows {
        write!(
            out,
            "{:>4} {:>5} {:>4} {:>5} {:>9} {:>9} {:>10} {:>7} {:>13}",
            row.cpu,
            unknown(row.core),
            unknown(row.package),
            unknown(row.numa_node),
            row.siblings,
            yes(row.isolated),
            yes(row.nohz_full),
            yes(row.usable),
            yes(row.housekeeping)
        )?;
        match (&plan, &row.worknode) {
            (Some(_), Some(worknode)) => writeln!(out, "  {worknode}")?,
            _ => writeln!(out)?,
        }
    }
    for note in &host.notes {
        writeln!(out, "note: {note}")?;
    }
    Ok(())
}

fn or_none(set: &CpuSet) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.to_string()
    }
}

fn audit_cmd(args: &AuditArgs, out: &mut impl Write) -> Result<CoresOutcome, CliError> {
    let (sys, host) = discover(&args.host)?;
    let report = audit(&sys, &host);
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(CliError::output)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "kernel {}, {}{}",
            report.kernel.as_deref().unwrap_or("unknown"),
            match report.virtualized {
                Some(true) => "virtual machine",
                Some(false) => "bare metal",
                None => "virtualization unknown",
            },
            report
                .steal_ratio
                .map(|s| format!(", steal {:.3}% since boot", s * 100.0))
                .unwrap_or_default()
        )?;
        for item in &report.items {
            writeln!(
                out,
                "[{:>7}] {:<8} {}",
                item.status.to_string(),
                item.severity.to_string(),
                item.title
            )?;
            writeln!(out, "          now: {}", item.current)?;
            if matches!(item.status, Status::Fail | Status::Unknown) {
                writeln!(out, "          recommended: {}", item.recommended)?;
                writeln!(out, "          why: {}", item.reason)?;
            }
        }
        let failed = report.items.iter().filter(|i| i.status == Status::Fail).count();
        writeln!(
            out,
            "{} checks: {} pass, {failed} fail ({} critical), {} unknown, {} not applicable",
            report.items.len(),
            report.items.iter().filter(|i| i.status == Status::Pass).count(),
            report.critical_failures(),
            report.items.iter().filter(|i| i.status == Status::Unknown).count(),
            report.items.iter().filter(|i| i.status == Status::NotApplicable).count(),
        )?;
        for note in &report.notes {
            writeln!(out, "note: {note}")?;
        }
    }
    let critical = report.critical_failures();
    Ok(if args.strict && critical > 0 {
        CoresOutcome::CriticalFailures(critical)
    } else {
        CoresOutcome::Done
    })
}

fn plan_cmd(args: &PlanArgs, out: &mut impl Write) -> Result<(), CliError> {
    let (_, host) = discover(&args.host)?;
    let artifact: Option<Artifact> = match &args.emit {
        Some(kind) => Some(
            kind.parse().map_err(|error: String| CliError::input(format!("--emit: {error}")))?,
        ),
        None => None,
    };
    let plan = load_plan(&host, args.config.as_deref())?;
    match artifact {
        Some(Artifact::KernelCmdline) => {
            let line = artifacts::kernel_cmdline(&plan, &host).map_err(CliError::input)?;
            writeln!(out, "{line}")?;
        }
        Some(Artifact::Systemd) => {
            let options = SystemdOptions {
                service: "worknode.service".into(),
                fifo_priority: args.fifo_priority,
            };
            write!(out, "{}", artifacts::systemd(&plan, &options))?;
        }
        Some(Artifact::Cgroup) => {
            write!(out, "{}", artifacts::cgroup_recipe(&plan).map_err(CliError::input)?)?;
        }
        None if args.json => {
            serde_json::to_writer_pretty(&mut *out, &plan).map_err(CliError::output)?;
            writeln!(out)?;
        }
        None => write_plan(&plan, out)?,
    }
    Ok(())
}

/// The plan as a table with its warnings (`cores plan`, and the demo's opening).
pub(crate) fn write_plan(plan: &CorePlan, out: &mut impl Write) -> Result<(), CliError> {
    writeln!(
        out,
        "core plan{}: housekeeping CPUs {}, isolated CPUs {}, usable CPUs {}",
        if plan.best_effort() { " (best effort)" } else { "" },
        or_none(plan.housekeeping()),
        or_none(plan.isolated()),
        or_none(plan.usable())
    )?;
    writeln!(out, "{:<16} {:<11} {:>10} {:>10}  notes", "worknode", "class", "cpus", "reserved")?;
    for placement in plan.placements() {
        let mut notes = Vec::new();
        if !placement.is_pinned() {
            notes.push("unpinned");
        }
        if placement.isolated {
            notes.push("isolated");
        }
        if placement.degraded {
            notes.push("degraded: shares CPUs");
        }
        writeln!(
            out,
            "{:<16} {:<11} {:>10} {:>10}  {}",
            placement.worknode,
            placement.class.to_string(),
            or_dash(&placement.cpus),
            or_dash(&placement.reserved),
            notes.join(", ")
        )?;
    }
    for warning in plan.warnings() {
        writeln!(out, "warning: {warning}")?;
    }
    Ok(())
}

fn or_dash(set: &CpuSet) -> String {
    if set.is_empty() {
        "-".into()
    } else {
        set.to_string()
    }
}
