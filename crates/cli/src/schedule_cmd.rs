//! `worknode schedule`: compute an epoch's leader schedule and show it.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use worknode_schedule::{
    Algorithm, LeaderSchedule, MemberSummary, ScheduleError, ScheduleParams,
    SLOTS_PER_EPOCH_DEFAULT, SLOTS_PER_TURN_DEFAULT,
};

use crate::stakes_input::{self, NamedStakes};
use crate::{svg, CliError};

/// Turns shown by default.
const COUNT_DEFAULT: u32 = 16;

/// Arguments of `worknode schedule`.
#[derive(Debug, clap::Args)]
pub(crate) struct ScheduleArgs {
    /// Stake table: a CSV file of `id,stake[,key]` lines (`#` starts a comment), or an
    /// inline list `a=3,b=1` (`id=stake:key` adds a key). Keys are 64 hex digits or base58.
    #[arg(long, value_name = "FILE|LIST", required_unless_present = "cluster")]
    stakes: Option<String>,
    /// Instead of computing locally, ask a running cluster (comma-separated client
    /// endpoints) for its slot and upcoming leaders.
    #[arg(long, value_name = "ENDPOINTS", conflicts_with = "stakes")]
    cluster: Option<String>,
    /// How leaders are chosen: fair, lottery or solana.
    #[arg(long, default_value = "fair", value_name = "NAME")]
    algorithm: String,
    /// Epoch to compute.
    #[arg(long, default_value_t = 0)]
    epoch: u64,
    /// Cluster seed: 64 hex digits, or a whole number (little-endian in bytes 0..8).
    #[arg(long, default_value = "0", value_name = "SEED")]
    seed: String,
    /// Slots in an epoch.
    #[arg(long, default_value_t = SLOTS_PER_EPOCH_DEFAULT)]
    slots_per_epoch: u64,
    /// Consecutive slots one leader holds.
    #[arg(long, default_value_t = SLOTS_PER_TURN_DEFAULT)]
    slots_per_turn: u64,
    /// First slot to list (absolute; defaults to the epoch's first slot).
    #[arg(long, value_name = "SLOT")]
    from_slot: Option<u64>,
    /// Turns to list.
    #[arg(long, default_value_t = COUNT_DEFAULT)]
    count: u32,
    /// Show per-member statistics for the whole epoch instead of turns.
    #[arg(long)]
    summary: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw the epoch's rotation as an SVG colour strip per member.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    #[command(subcommand)]
    action: Option<ScheduleAction>,
}

/// What `worknode schedule` can do to a running cluster.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ScheduleAction {
    /// Change a running cluster's schedule settings. The change is replicated and holds
    /// from the next epoch boundary at least 1 s away, on every member alike.
    Set(crate::status_cmd::SetScheduleArgs),
}

/// One turn as printed with `--json`.
#[derive(Serialize)]
struct TurnJson<'a> {
    first_slot: u64,
    last_slot: u64,
    leader: &'a str,
}

/// One member's statistics as printed with `--summary --json`.
#[derive(Serialize)]
struct MemberJson<'a> {
    id: &'a str,
    stake: u64,
    stake_share: f64,
    turns: u64,
    turn_share: f64,
    longest_gap_turns: u64,
    deviation_max_turns: f64,
}

/// The whole summary as printed with `--summary --json`.
#[derive(Serialize)]
struct SummaryJson<'a> {
    algorithm: &'static str,
    epoch: u64,
    first_slot: u64,
    last_slot: u64,
    slots_per_turn: u64,
    turns: u32,
    generation_ms: f64,
    members: Vec<MemberJson<'a>>,
}

pub(crate) fn run(args: &ScheduleArgs, out: &mut impl Write) -> Result<(), CliError> {
    if let Some(ScheduleAction::Set(set)) = &args.action {
        return crate::status_cmd::set_schedule(set, out);
    }
    if let Some(cluster) = &args.cluster {
        return crate::status_cmd::print_cluster_schedule(cluster, args.count, out);
    }
    let Some(stakes) = &args.stakes else {
        return Err(CliError::input("give --stakes FILE|LIST or --cluster ENDPOINTS"));
    };
    let algorithm: Algorithm =
        args.algorithm.parse().map_err(|error| CliError::input(format!("--algorithm: {error}")))?;
    let named = stakes_input::read(stakes)?;
    if algorithm == Algorithm::SolanaCompatible {
        named.require_keys("the solana algorithm orders members by their 32-byte keys")?;
    }
    let params = ScheduleParams {
        algorithm,
        epoch: args.epoch,
        cluster_seed: stakes_input::parse_seed(&args.seed)?,
        slots_per_epoch: args.slots_per_epoch,
        slots_per_turn: args.slots_per_turn,
    };
    let started = Instant::now();
    let schedule = LeaderSchedule::compute(&named.stakes, &params).map_err(|error| {
        let flag = match error {
            ScheduleError::SlotsPerEpoch(_) => "--slots-per-epoch",
            ScheduleError::SlotsPerTurn { .. } => "--slots-per-turn",
            ScheduleError::EpochTooLarge { .. } => "--epoch",
            ScheduleError::Solana(_) => "--stakes",
        };
        CliError::input(format!("{flag}: {error}"))
    })?;
    let generation_ms = started.elapsed().as_secs_f64() * 1e3;

    if let Some(path) = &args.svg {
        let drawing = svg::rotation_strip(&schedule, &named);
        std::fs::write(path, drawing).map_err(|error| {
            CliError::input(format!("cannot write --svg {}: {error}", path.display()))
        })?;
    }
    if args.summary {
        write_summary(&schedule, &named, generation_ms, args.json, out)
    } else {
        write_turns(&schedule, &named, args, out)
    }
}

fn write_turns(
    schedule: &LeaderSchedule,
    named: &NamedStakes,
    args: &ScheduleArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let from_slot = args.from_slot.unwrap_or(schedule.first_slot());
    if schedule.turn_of(from_slot).is_none() {
        return Err(CliError::input(format!(
            "--from-slot {from_slot} is not in epoch {} (slots {}..={})",
            schedule.epoch(),
            schedule.first_slot(),
            schedule.last_slot()
        )));
    }
    let turns = schedule.upcoming(from_slot).take(args.count as usize);
    if args.json {
        let turns: Vec<TurnJson<'_>> = turns
            .map(|turn| TurnJson {
                first_slot: turn.first_slot,
                last_slot: turn.last_slot,
                leader: named.name(turn.leader_index),
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &turns).map_err(CliError::output)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "epoch {} ({} algorithm): slots {}..={}, {} slots per turn, {} turns",
        schedule.epoch(),
        schedule.params().algorithm,
        schedule.first_slot(),
        schedule.last_slot(),
        schedule.slots_per_turn(),
        schedule.turn_count()
    )?;
    writeln!(out, "{:>8}  {:>12}  {:>12}  leader", "turn", "first slot", "last slot")?;
    for turn in turns {
        writeln!(
            out,
            "{:>8}  {:>12}  {:>12}  {}",
            turn.index,
            turn.first_slot,
            turn.last_slot,
            named.name(turn.leader_index)
        )?;
    }
    Ok(())
}

fn write_summary(
    schedule: &LeaderSchedule,
    named: &NamedStakes,
    generation_ms: f64,
    json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut summary: Vec<(usize, MemberSummary)> =
        schedule.summary().into_iter().enumerate().collect();
    // Largest stake first; the name keeps equal stakes in a stable order.
    summary.sort_by(|(left, a), (right, b)| {
        b.stake.cmp(&a.stake).then_with(|| named.names[*left].cmp(&named.names[*right]))
    });
    if json {
        let report = SummaryJson {
            algorithm: schedule.params().algorithm.name(),
            epoch: schedule.epoch(),
            first_slot: schedule.first_slot(),
            last_slot: schedule.last_slot(),
            slots_per_turn: schedule.slots_per_turn(),
            turns: schedule.turn_count(),
            generation_ms,
            members: summary
                .iter()
                .map(|(index, member)| MemberJson {
                    id: &named.names[*index],
                    stake: member.stake,
                    stake_share: member.stake_share,
                    turns: member.turns,
                    turn_share: member.turn_share,
                    longest_gap_turns: member.longest_gap_turns,
                    deviation_max_turns: member.deviation_max_turns,
                })
                .collect(),
        };
        serde_json::to_writer_pretty(&mut *out, &report).map_err(CliError::output)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "epoch {} ({} algorithm): {} turns of {} slots, {} members, computed in {generation_ms:.2} ms",
        schedule.epoch(),
        schedule.params().algorithm,
        schedule.turn_count(),
        schedule.slots_per_turn(),
        schedule.members().len(),
    )?;
    let width = named.names.iter().map(String::len).max().unwrap_or(2).clamp(2, 44);
    writeln!(
        out,
        "{:<width$}  {:>14}  {:>8}  {:>8}  {:>8}  {:>11}  {:>13}",
        "id", "stake", "stake %", "turns", "turn %", "longest gap", "max deviation"
    )?;
    for (index, member) in &summary {
        writeln!(
            out,
            "{:<width$}  {:>14}  {:>7.3}%  {:>8}  {:>7.3}%  {:>11}  {:>13.3}",
            named.names[*index],
            member.stake,
            member.stake_share * 100.0,
            member.turns,
            member.turn_share * 100.0,
            member.longest_gap_turns,
            member.deviation_max_turns
        )?;
    }
    Ok(())
}
