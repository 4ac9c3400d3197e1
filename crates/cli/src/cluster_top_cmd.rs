//! `worknode top --endpoints …`: a live view of a running cluster — the slot clock and
//! upcoming leaders, every member's role and Raft worknode, the per-CPU load each member
//! reports, and the recent turns. `q` quits; `--once` prints one frame as text.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use worknode_cores::telemetry::CoreUsage;

use crate::status_cmd::{fetch, parse_endpoints, runtime, ClusterView};
use crate::top_cmd::{
    bar, enter_terminal, leave_terminal, live_loop, to_text, truncate, FrameLine, Tone,
};
use crate::CliError;

/// Arguments of `worknode top`.
#[derive(Debug, clap::Args)]
pub(crate) struct ClusterTopArgs {
    /// Client endpoints, comma-separated host:port.
    #[arg(long, value_name = "LIST")]
    endpoints: String,
    /// Refresh interval in milliseconds.
    #[arg(long, default_value_t = 1_000, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..=60_000))]
    interval_ms: u64,
    /// Print one frame as plain text and exit (no terminal needed).
    #[arg(long)]
    once: bool,
}

/// Upcoming turns and recent turns fetched per refresh.
const UPCOMING: u32 = 4;
const RECENT: u32 = 6;

fn member_name(id: u64) -> String {
    if id == 0 {
        "?".into()
    } else {
        format!("n{id}")
    }
}

/// One frame for a terminal of `width` × `height`.
fn frame(view: &ClusterView, width: u16, height: u16) -> Vec<FrameLine> {
    let width = usize::from(width.max(40));
    let height = usize::from(height.max(12));
    let schedule = &view.schedule;
    let mut lines: Vec<FrameLine> = vec![vec![
        (format!("worknode top — {} members", view.members.len()), Tone::Title),
        ("  u usr s sys i irq q sirq t steal · q quits".into(), Tone::Dim),
    ]];
    if schedule.rotation {
        let next: Vec<String> =
            schedule.upcoming.iter().skip(1).map(|t| member_name(t.member_id)).collect();
        lines.push(vec![(
            truncate(
                &format!(
                    "{} schedule · epoch {} slot {} · leader {} · next turn in {} ms: {}",
                    schedule.algorithm,
                    schedule.epoch,
                    schedule.slot,
                    member_name(schedule.leader_id),
                    schedule.next_turn_in_ms,
                    next.join(" → ")
                ),
                width,
            ),
            Tone::Plain,
        )]);
    } else {
        lines.push(vec![(
            format!("rotation off (plain Raft) · leader {}", member_name(schedule.leader_id)),
            Tone::Plain,
        )]);
    }
    lines.push(vec![(
        format!(
            "{:<8} {:<9} {:>6} {:>9}  {:<24} {:>6} {:>8}",
            "member", "role", "term", "applied", "raft worknode", "cpu%", "invol/s"
        ),
        Tone::Title,
    )]);
    for (member, load) in view.members.iter().zip(&view.loads) {
        let Some(id) = member.member_id else {
            lines.push(vec![(
                truncate(
                    &format!(
                        "{:<8} down: {}",
                        member.endpoint,
                        member.error.as_deref().unwrap_or("")
                    ),
                    width,
                ),
                Tone::Alert,
            )]);
            continue;
        };
        let raft = load.as_ref().and_then(|l| l.worknodes.iter().find(|w| w.worknode == "raft"));
        lines.push(vec![(
            format!(
                "{:<8} {:<9} {:>6} {:>9}  {:<24} {:>6.1} {:>8.1}",
                member_name(id),
                if member.leader { "leader" } else { "follower" },
                member.term,
                member.applied_index,
                truncate(&member.cores(), 24),
                raft.map_or(0.0, |w| w.cpu_pct),
                raft.map_or(0.0, |w| w.involuntary_per_s)
            ),
            if member.leader { Tone::Title } else { Tone::Plain },
        )]);
    }
    // CPU bars per member, as many as fit above the turn list.
    let turn_rows = view.recent.len().min(RECENT as usize);
    let mut budget = height.saturating_sub(lines.len() + 2 + turn_rows);
    let bar_width = width.saturating_sub(20).max(10);
    for (member, load) in view.members.iter().zip(&view.loads) {
        let (Some(id), Some(load)) = (member.member_id, load) else {
            continue;
        };
        for cpu in &load.cpus {
            if budget == 0 {
                break;
            }
            budget -= 1;
            let usage = CoreUsage {
                cpu: cpu.cpu,
                user: cpu.user,
                system: cpu.system,
                irq: cpu.irq,
                softirq: cpu.softirq,
                steal: cpu.steal,
                idle: cpu.idle,
            };
            let mut line =
                vec![(format!("{:<3} cpu{:<3} [", member_name(id), cpu.cpu), Tone::Plain)];
            line.extend(bar(&usage, bar_width));
            line.push((format!("] {:>4.0}%", usage.busy()), Tone::Plain));
            lines.push(line);
        }
    }
    lines.push(vec![(
        format!(
            "{:>14} {:>9} {:>5} {:>5} {:>10}  note",
            "turn slot", "scheduled", "from", "to", "handoff ms"
        ),
        Tone::Title,
    )]);
    for turn in view.recent.iter().rev().take(turn_rows) {
        lines.push(vec![(
            truncate(
                &format!(
                    "{:>14} {:>9} {:>5} {:>5} {:>10}  {}",
                    turn.first_slot,
                    member_name(turn.scheduled),
                    member_name(turn.leader_before),
                    member_name(turn.leader_after),
                    if turn.handoff_ms > 0.0 {
                        format!("{:.1}", turn.handoff_ms)
                    } else {
                        "-".into()
                    },
                    turn.skipped
                ),
                width,
            ),
            if turn.skipped.is_empty() { Tone::Plain } else { Tone::Alert },
        )]);
    }
    lines
}

pub(crate) fn run(args: &ClusterTopArgs, out: &mut impl Write) -> Result<(), CliError> {
    let endpoints = parse_endpoints(&args.endpoints, "--endpoints")?;
    let runtime = runtime()?;
    let view = runtime.block_on(fetch(&endpoints, UPCOMING + 1, RECENT))?;
    if args.once || !std::io::stdout().is_terminal() {
        write!(out, "{}", to_text(&frame(&view, 80, 24)))?;
        return Ok(());
    }
    let view = std::cell::RefCell::new(view);
    let mut terminal = enter_terminal()?;
    let result = live_loop(
        &mut terminal,
        Duration::from_millis(args.interval_ms),
        |width, height| frame(&view.borrow(), width, height),
        || {
            // A refresh that fails keeps the last frame; members that are down show so.
            if let Ok(fresh) = runtime.block_on(fetch(&endpoints, UPCOMING + 1, RECENT)) {
                *view.borrow_mut() = fresh;
            }
        },
    );
    leave_terminal();
    result
}
