//! `worknode sim`: runs the whole-cluster simulator ([`worknode_sim`]) over seeds, in
//! parallel, and reports each seed in order — a line, or a JSON object — with the replay
//! command of any that fails.

use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use clap::Parser;
use worknode_raft::PlantedBug;
use worknode_sim::faults::FaultKind;
use worknode_sim::{Report, RunConfig};

use crate::CliError;

/// Arguments of `worknode sim`.
#[derive(Debug, Parser)]
pub(crate) struct SimArgs {
    /// One seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Seeds `A..B` (B excluded) or `A..=B`.
    #[arg(long)]
    seeds: Option<String>,
    /// Members: 3 or 5.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Simulated length of each run's workload (`ms`, `s`, `m`, `h`); a quiet end follows.
    #[arg(long, default_value = "30s")]
    duration: String,
    /// Faults to inject: `all`, `none`, or a list of crash, partition, one-way, loss,
    /// duplicate, delay, skew, slow-disk, disk-full, freeze, damage.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Scheduled leadership: `on` or `off`.
    #[arg(long, default_value = "on")]
    rotation: String,
    /// One JSON object per seed instead of a line.
    #[arg(long)]
    json: bool,
    /// Print every event of the run (one seed).
    #[arg(long)]
    trace: bool,
    /// With --trace: every message delivered too.
    #[arg(long, requires = "trace")]
    messages: bool,
    /// Plant a known bug (testing the checks): ack-before-sync, skip-dedup,
    /// read-without-read-index, forget-hard-state, unchecked-handoff.
    #[arg(long)]
    inject_bug: Option<String>,
    /// With --inject-bug: succeed as soon as a seed catches the bug; fail if none does.
    #[arg(long, requires = "inject_bug")]
    expect_caught: bool,
    /// Run the seeds listed in a file, one replay line (these flags) per line.
    #[arg(long, conflicts_with_all = ["seed", "seeds"])]
    regressions: Option<PathBuf>,
    /// Seeds run at once (default: one per CPU).
    #[arg(long)]
    jobs: Option<usize>,
}

impl SimArgs {
    fn configs(&self) -> Result<Vec<RunConfig>, CliError> {
        if let Some(path) = &self.regressions {
            return regression_configs(path);
        }
        let members = match self.members {
            3 | 5 => self.members,
            other => return Err(CliError::input(format!("--members {other}: 3 or 5"))),
        };
        let duration =
            worknode_sim::report::parse_duration(&self.duration).map_err(CliError::input)?;
        let faults = FaultKind::parse_list(&self.faults).map_err(CliError::input)?;
        let rotation = match self.rotation.as_str() {
            "on" => true,
            "off" => false,
            other => return Err(CliError::input(format!("--rotation {other:?}: on or off"))),
        };
        let bug = match &self.inject_bug {
            Some(name) => Some(
                name.parse::<PlantedBug>()
                    .map_err(|e| CliError::input(format!("--inject-bug: {e}")))?,
            ),
            None => None,
        };
        let seeds = match (&self.seed, &self.seeds) {
            (Some(seed), _) => *seed..seed.saturating_add(1),
            (None, Some(text)) => parse_seeds(text).map_err(CliError::input)?,
            (None, None) => 1..2,
        };
        if self.trace && seeds.end - seeds.start > 1 {
            return Err(CliError::input("--trace prints one run: give one --seed"));
        }
        Ok(seeds
            .map(|seed| RunConfig {
                seed,
                members,
                duration,
                faults: faults.clone(),
                bug,
                rotation,
                trace: self.trace,
                trace_messages: self.messages,
            })
            .collect())
    }
}

/// `A..B` (B excluded) or `A..=B`.
fn parse_seeds(text: &str) -> Result<Range<u64>, String> {
    let bad = || format!("--seeds {text:?}: expected A..B or A..=B with whole numbers");
    let (start, end) = text.split_once("..").ok_or_else(bad)?;
    let start: u64 = start.parse().map_err(|_| bad())?;
    let end = match end.strip_prefix('=') {
        Some(last) => last.parse::<u64>().map_err(|_| bad())?.checked_add(1).ok_or_else(bad)?,
        None => end.parse().map_err(|_| bad())?,
    };
    if end <= start {
        return Err(format!("--seeds {text:?}: no seeds in that range"));
    }
    Ok(start..end)
}

fn regression_configs(path: &PathBuf) -> Result<Vec<RunConfig>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
    let mut configs = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{}:{}", path.display(), number + 1);
        let words = std::iter::once("sim").chain(line.split_whitespace());
        let args = SimArgs::try_parse_from(words).map_err(|e| {
            let text = e.to_string();
            let first =
                text.lines().next().unwrap_or("invalid").trim_start_matches("error: ").to_string();
            CliError::input(format!("{}: {first}", at()))
        })?;
        if args.regressions.is_some() || args.seed.is_none() {
            return Err(CliError::input(format!("{}: each line names one --seed", at())));
        }
        let mut config =
            args.configs().map_err(|e| CliError::input(format!("{}: {}", at(), e.message)))?;
        configs.append(&mut config);
    }
    if configs.is_empty() {
        return Err(CliError::input(format!("{}: no seeds listed", path.display())));
    }
    Ok(configs)
}

/// Runs `worknode sim`.
pub(crate) fn run(
    args: &SimArgs,
    out: &mut impl Write,
) -> Result<std::process::ExitCode, CliError> {
    let configs = args.configs()?;
    worknode_sim::trace::catch_panics_quietly();
    let jobs = if args.trace {
        1
    } else {
        args.jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, 64)
    };
    let expect_caught = args.expect_caught;
    let mut totals = Totals::default();
    let mut caught = None;
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (sender, receiver) = mpsc::channel::<(usize, Report)>();
    std::thread::scope(|scope| -> Result<(), CliError> {
        if jobs == 1 && args.trace {
            let report = worknode_sim::run(&configs[0]);
            let _ = sender.send((0, report));
        } else {
            for _ in 0..jobs {
                let sender = sender.clone();
                let (next, stop, configs) = (&next, &stop, &configs);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(config) = configs.get(index) else {
                            break;
                        };
                        if sender.send((index, worknode_sim::run(config))).is_err() {
                            break;
                        }
                    }
                });
            }
        }
        drop(sender);
        // Reports in seed order, whatever order they finish in.
        let mut pending = std::collections::BTreeMap::new();
        let mut printed = 0;
        for (index, report) in receiver {
            pending.insert(index, report);
            while let Some(report) = pending.remove(&printed) {
                printed += 1;
                print_report(out, &report, args.json, expect_caught)?;
                totals.add(&report);
                if expect_caught && report.failure().is_some() && caught.is_none() {
                    caught = Some(report.config.seed);
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    })?;
    if !args.json {
        totals.print(out)?;
    }
    let code = match (expect_caught, caught) {
        (true, Some(seed)) => {
            if !args.json {
                writeln!(out, "the planted bug was caught at seed {seed}")?;
            }
            std::process::ExitCode::SUCCESS
        }
        (true, None) => {
            return Err(CliError::runtime(format!(
                "the planted bug went unnoticed in {} seeds",
                totals.seeds
            )))
        }
        (false, _) if totals.failed > 0 => std::process::ExitCode::from(1),
        (false, _) => std::process::ExitCode::SUCCESS,
    };
    Ok(code)
}

fn print_report(
    out: &mut impl Write,
    report: &Report,
    json: bool,
    expected_failure: bool,
) -> Result<(), CliError> {
    if json {
        writeln!(out, "{}", report.json())?;
    } else {
        writeln!(out, "{}", report.line())?;
        if report.failure().is_some() && !expected_failure {
            writeln!(out, "{}", report.failure_details())?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Sums over the seeds run.
#[derive(Debug, Default)]
struct Totals {
    seeds: u64,
    failed: u64,
    simulated_s: f64,
    wall_s: f64,
    operations: u64,
    faults: std::collections::BTreeMap<FaultKind, u64>,
}

impl Totals {
    fn add(&mut self, report: &Report) {
        self.seeds += 1;
        self.failed += u64::from(report.failure().is_some());
        self.simulated_s += report.simulated_s;
        self.wall_s += report.wall_s;
        self.operations += report.operations as u64;
        for (kind, count) in &report.faults {
            *self.faults.entry(*kind).or_default() += u64::from(*count);
        }
    }

    fn print(&self, out: &mut impl Write) -> Result<(), CliError> {
        let faults: Vec<String> =
            self.faults.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
        writeln!(
            out,
            "{} seeds, {} failed · {:.2} simulated hours ({:.0}x real time per run) · {} operations · faults: {}",
            self.seeds,
            self.failed,
            self.simulated_s / 3600.0,
            self.simulated_s / self.wall_s.max(1e-9),
            self.operations,
            if faults.is_empty() { "none".into() } else { faults.join(", ") }
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_parse_with_and_without_the_end() {
        assert_eq!(parse_seeds("1..4"), Ok(1..4));
        assert_eq!(parse_seeds("1..=4"), Ok(1..5));
        assert!(parse_seeds("4..4").unwrap_err().contains("no seeds"));
        assert!(parse_seeds("a..4").unwrap_err().contains("A..B"));
    }
}
