//! `worknode status --endpoints …` and `worknode schedule --cluster …`: a running
//! cluster's members, leader, slot, upcoming leaders and recent handoffs.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use worknode_server::adminpb::admin_client::AdminClient;
use worknode_server::adminpb::{
    ScheduleRequest, ScheduleResponse, TelemetryRequest, TelemetryResponse, TurnsRequest,
};
use worknode_server::pb::maintenance_client::MaintenanceClient;
use worknode_server::pb::StatusRequest;

use crate::CliError;

/// Arguments of `worknode status`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// Client endpoints, comma-separated host:port.
    #[arg(long, value_name = "LIST")]
    endpoints: String,
    /// Upcoming turns to list.
    #[arg(long, default_value_t = 6)]
    turns: u32,
    /// Recent handoffs to list.
    #[arg(long, default_value_t = 8)]
    handoffs: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
pub(crate) struct MemberRow {
    pub(crate) endpoint: String,
    pub(crate) member_id: Option<u64>,
    pub(crate) leader: bool,
    pub(crate) term: u64,
    pub(crate) applied_index: u64,
    pub(crate) revision: i64,
    /// The CPUs its Raft worknode may run on, and whether the core plan pinned it.
    pub(crate) raft_cpus: Option<String>,
    pub(crate) raft_pinned: bool,
    pub(crate) error: Option<String>,
}

/// What `status` and `top` show: every member, the schedule, recent turns.
pub(crate) struct ClusterView {
    pub(crate) members: Vec<MemberRow>,
    /// Each member's process telemetry, in `members` order (`None`: no answer).
    pub(crate) loads: Vec<Option<TelemetryResponse>>,
    pub(crate) schedule: ScheduleResponse,
    pub(crate) recent: Vec<TurnRow>,
}

#[derive(Serialize)]
pub(crate) struct TurnRow {
    pub(crate) first_slot: u64,
    pub(crate) scheduled: u64,
    pub(crate) leader_before: u64,
    pub(crate) leader_after: u64,
    pub(crate) handoff_ms: f64,
    pub(crate) skipped: String,
}

#[derive(Serialize)]
struct StatusJson {
    members: Vec<MemberRow>,
    leader_id: u64,
    rotation: bool,
    algorithm: String,
    epoch: u64,
    slot: u64,
    next_turn_in_ms: u64,
    upcoming: Vec<(u64, u64, u64, String)>,
    recent_turns: Vec<TurnRow>,
}

async fn channel(endpoint: &str) -> Result<Channel, String> {
    let uri =
        if endpoint.contains("://") { endpoint.to_owned() } else { format!("http://{endpoint}") };
    Endpoint::from_shared(uri)
        .map_err(|e| format!("{endpoint}: not an address ({e})"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("{endpoint}: {e}"))
}

pub(crate) fn parse_endpoints(list: &str, flag: &str) -> Result<Vec<String>, CliError> {
    let endpoints: Vec<String> =
        list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect();
    if endpoints.is_empty() {
        return Err(CliError::input(format!("{flag} is empty")));
    }
    Ok(endpoints)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("tokio runtime: {e}")))
}

/// The schedule as one reachable member reports it.
async fn schedule_from(
    endpoints: &[String],
    turns: u32,
) -> Result<(String, ScheduleResponse), CliError> {
    let mut errors = Vec::new();
    for endpoint in endpoints {
        match channel(endpoint).await {
            Ok(channel) => {
                match AdminClient::new(channel).schedule(ScheduleRequest { turns }).await {
                    Ok(reply) => return Ok((endpoint.clone(), reply.into_inner())),
                    Err(status) => errors.push(format!("{endpoint}: {}", status.message())),
                }
            }
            Err(error) => errors.push(error),
        }
    }
    Err(CliError::runtime(format!("no member answered: {}", errors.join("; "))))
}

pub(crate) fn upcoming_table(schedule: &ScheduleResponse, text: &mut String) {
    if !schedule.rotation {
        let _ = writeln!(text, "rotation off: plain Raft (leader {})", schedule.leader_id);
        return;
    }
    let _ = writeln!(
        text,
        "{} schedule, epoch {}, slot {} ({} ms slots), next turn in {} ms; leader now {}",
        schedule.algorithm,
        schedule.epoch,
        schedule.slot,
        schedule.slot_ms,
        schedule.next_turn_in_ms,
        schedule.leader_id
    );
    let _ = writeln!(
        text,
        "{:>14}  {:>14}  {:>6}  {:<8} client",
        "first slot", "last slot", "member", "name"
    );
    for turn in &schedule.upcoming {
        let _ = writeln!(
            text,
            "{:>14}  {:>14}  {:>6}  {:<8} {}",
            turn.first_slot, turn.last_slot, turn.member_id, turn.name, turn.client
        );
    }
}

/// `worknode schedule --cluster ENDPOINTS`.
pub(crate) fn print_cluster_schedule(
    list: &str,
    turns: u32,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let endpoints = parse_endpoints(list, "--cluster")?;
    let (_, schedule) = runtime()?.block_on(schedule_from(&endpoints, turns))?;
    let mut text = String::new();
    upcoming_table(&schedule, &mut text);
    write!(out, "{text}")?;
    Ok(())
}

/// Asks every member for its status and telemetry, and one for the schedule and turns.
pub(crate) async fn fetch(
    endpoints: &[String],
    upcoming: u32,
    handoffs: u32,
) -> Result<ClusterView, CliError> {
    let mut members = Vec::new();
    let mut loads = Vec::new();
    for endpoint in endpoints {
        let (row, load) = match channel(endpoint).await {
            Ok(channel) => {
                match MaintenanceClient::new(channel.clone()).status(StatusRequest {}).await {
                    Ok(reply) => {
                        let status = reply.into_inner();
                        let header = status.header.unwrap_or_default();
                        let load = AdminClient::new(channel)
                            .telemetry(TelemetryRequest {})
                            .await
                            .ok()
                            .map(tonic::Response::into_inner);
                        let raft = load
                            .as_ref()
                            .and_then(|l| l.worknodes.iter().find(|w| w.worknode == "raft"));
                        let row = MemberRow {
                            endpoint: endpoint.clone(),
                            member_id: Some(header.member_id),
                            leader: status.leader == header.member_id,
                            term: status.raft_term,
                            applied_index: status.raft_applied_index,
                            revision: header.revision,
                            raft_cpus: raft.map(|w| w.cpus.clone()),
                            raft_pinned: raft.is_some_and(|w| w.pinned),
                            error: None,
                        };
                        (row, load)
                    }
                    Err(status) => (MemberRow::down(endpoint, status.message()), None),
                }
            }
            Err(error) => (MemberRow::down(endpoint, &error), None),
        };
        members.push(row);
        loads.push(load);
    }
    let (_, schedule) = schedule_from(endpoints, upcoming).await?;
    // Each member records the turns it decided (it led into them): merge every log.
    let mut turns = std::collections::BTreeMap::new();
    for member in members.iter().filter(|m| m.error.is_none()) {
        if let Ok(channel) = channel(&member.endpoint).await {
            if let Ok(reply) =
                AdminClient::new(channel).turns(TurnsRequest { limit: handoffs }).await
            {
                for turn in reply.into_inner().turns {
                    turns.insert(turn.first_slot, turn);
                }
            }
        }
    }
    let skip = turns.len().saturating_sub(handoffs as usize);
    let recent = turns
        .into_values()
        .skip(skip)
        .map(|t| TurnRow {
            first_slot: t.first_slot,
            scheduled: t.scheduled,
            leader_before: t.leader_before,
            leader_after: t.leader_after,
            handoff_ms: t.handoff_ms,
            skipped: t.skipped,
        })
        .collect();
    Ok(ClusterView { members, loads, schedule, recent })
}

pub(crate) fn run(args: &StatusArgs, out: &mut impl Write) -> Result<(), CliError> {
    let endpoints = parse_endpoints(&args.endpoints, "--endpoints")?;
    let view = runtime()?.block_on(fetch(&endpoints, args.turns, args.handoffs))?;
    let ClusterView { members, schedule, recent, .. } = view;
    if args.json {
        let report = StatusJson {
            leader_id: schedule.leader_id,
            rotation: schedule.rotation,
            algorithm: schedule.algorithm.clone(),
            epoch: schedule.epoch,
            slot: schedule.slot,
            next_turn_in_ms: schedule.next_turn_in_ms,
            upcoming: schedule
                .upcoming
                .iter()
                .map(|t| (t.first_slot, t.last_slot, t.member_id, t.name.clone()))
                .collect(),
            members,
            recent_turns: recent,
        };
        serde_json::to_writer_pretty(&mut *out, &report).map_err(CliError::output)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<22} {:>6} {:>9} {:>6} {:>9} {:>9}  raft worknode",
        "endpoint", "member", "role", "term", "applied", "revision"
    );
    for m in &members {
        match &m.error {
            Some(error) => {
                let _ = writeln!(text, "{:<22} {:>6} {:>9}  {error}", m.endpoint, "?", "down");
            }
            None => {
                let _ = writeln!(
                    text,
                    "{:<22} {:>6} {:>9} {:>6} {:>9} {:>9}  {}",
                    m.endpoint,
                    m.member_id.unwrap_or(0),
                    if m.leader { "leader" } else { "follower" },
                    m.term,
                    m.applied_index,
                    m.revision,
                    m.cores()
                );
            }
        }
    }
    let _ = writeln!(text);
    upcoming_table(&schedule, &mut text);
    if !recent.is_empty() {
        let _ = writeln!(text);
        let _ = writeln!(text, "recent turns (merged from every member's turn log):");
        let _ = writeln!(
            text,
            "{:>14}  {:>9}  {:>6}  {:>6}  {:>10}  note",
            "first slot", "scheduled", "from", "to", "handoff ms"
        );
        for t in &recent {
            let handoff =
                if t.handoff_ms > 0.0 { format!("{:.2}", t.handoff_ms) } else { "-".into() };
            let _ = writeln!(
                text,
                "{:>14}  {:>9}  {:>6}  {:>6}  {:>10}  {}",
                t.first_slot,
                t.scheduled,
                t.leader_before,
                t.leader_after,
                handoff,
                if t.skipped.is_empty() { "" } else { &t.skipped }
            );
        }
    }
    write!(out, "{text}")?;
    Ok(())
}

impl MemberRow {
    fn down(endpoint: &str, error: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            member_id: None,
            leader: false,
            term: 0,
            applied_index: 0,
            revision: 0,
            raft_cpus: None,
            raft_pinned: false,
            error: Some(error.to_owned()),
        }
    }

    /// Where its Raft worknode runs, in words.
    pub(crate) fn cores(&self) -> String {
        match (&self.raft_cpus, self.raft_pinned) {
            (Some(cpus), _) if cpus.is_empty() => "unpinned".into(),
            (Some(cpus), true) => format!("pinned to CPU {cpus}"),
            (Some(cpus), false) => format!("unpinned (CPUs {cpus})"),
            (None, _) => "?".into(),
        }
    }
}
