//! `worknode status --endpoints …` and `worknode schedule --cluster …`: a running
//! cluster's members, leader, slot, upcoming leaders and recent handoffs.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use worknode_server::adminpb::admin_client::AdminClient;
use worknode_server::adminpb::{
    MemberStake, ScheduleRequest, ScheduleResponse, SetScheduleRequest, TelemetryRequest,
    TelemetryResponse, TurnsRequest,
};
use worknode_server::pb::cluster_client::ClusterClient;
use worknode_server::pb::maintenance_client::MaintenanceClient;
use worknode_server::pb::{MemberListRequest, StatusRequest};

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
    /// What the member reports wrong with the cluster (etcd's status `errors`): peers
    /// whose settings disagree with its own.
    pub(crate) warnings: Vec<String>,
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
    pub(crate) boundary_unix_us: u64,
    pub(crate) scheduled: u64,
    pub(crate) leader_before: u64,
    pub(crate) leader_after: u64,
    pub(crate) handoff_ms: f64,
    pub(crate) timeout_now_ms: f64,
    pub(crate) stepped_down_ms: f64,
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

/// Client TLS for the cluster commands (status, top, schedule) from the environment, as
/// etcdctl reads `ETCDCTL_CACERT`: `WORKNODE_CACERT` (the CA, PEM) turns TLS on, and
/// `WORKNODE_CERT` with `WORKNODE_KEY` present a client certificate.
fn tls_from_env() -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    let Some(ca) = std::env::var_os("WORKNODE_CACERT") else {
        return Ok(None);
    };
    let read = |path: &std::ffi::OsStr| {
        std::fs::read(path).map_err(|e| format!("{}: {e}", std::path::Path::new(path).display()))
    };
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(&ca)?));
    if let (Some(cert), Some(key)) =
        (std::env::var_os("WORKNODE_CERT"), std::env::var_os("WORKNODE_KEY"))
    {
        tls = tls.identity(tonic::transport::Identity::from_pem(read(&cert)?, read(&key)?));
    }
    Ok(Some(tls))
}

async fn channel(endpoint: &str) -> Result<Channel, String> {
    let tls = tls_from_env()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("{scheme}://{endpoint}")
    };
    let mut builder = Endpoint::from_shared(uri)
        .map_err(|e| format!("{endpoint}: not an address ({e})"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| format!("{endpoint}: TLS: {e}"))?;
    }
    builder.connect().await.map_err(|e| format!("{endpoint}: {e}"))
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
        "{} schedule, epoch {}, slot {} ({} ms slots, {} per turn, {} per epoch), next turn in {} ms; leader now {}",
        schedule.algorithm,
        schedule.epoch,
        schedule.slot,
        schedule.slot_ms,
        schedule.slots_per_turn,
        schedule.slots_per_epoch,
        schedule.next_turn_in_ms,
        schedule.leader_id
    );
    let stakes: Vec<String> =
        schedule.stakes.iter().map(|s| format!("{}={}", s.id, s.stake)).collect();
    let _ = writeln!(
        text,
        "stakes {}{}",
        stakes.join(","),
        match schedule.pending_change_epoch {
            0 => String::new(),
            epoch => format!("; a settings change holds from epoch {epoch}"),
        }
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
    if !schedule.clocks.is_empty() {
        let clocks: Vec<String> = schedule
            .clocks
            .iter()
            .map(|c| {
                format!(
                    "member {} {:+.2} ms (± {:.2})",
                    c.member_id,
                    c.offset_ns as f64 / 1e6,
                    c.round_trip_ns as f64 / 2e6
                )
            })
            .collect();
        let _ =
            writeln!(text, "clocks against member {}'s: {}", schedule.member_id, clocks.join(", "));
    }
}

/// Arguments of `worknode schedule set`.
#[derive(Debug, clap::Args)]
pub(crate) struct SetScheduleArgs {
    /// Client endpoints of the cluster, comma-separated host:port.
    #[arg(long, value_name = "ENDPOINTS")]
    cluster: String,
    /// `on` (leadership follows the schedule) or `off` (plain Raft).
    #[arg(long, value_name = "on|off")]
    rotation: Option<String>,
    /// fair or lottery.
    #[arg(long, value_name = "NAME")]
    algorithm: Option<String>,
    /// Every member's stake, `ID=STAKE` or `NAME=STAKE`, comma-separated; members left out
    /// get stake 0 (they never lead).
    #[arg(long, value_name = "LIST")]
    stakes: Option<String>,
    /// Slot length in milliseconds.
    #[arg(long, value_name = "MS")]
    slot_ms: Option<u64>,
    /// Consecutive slots one leader holds.
    #[arg(long, value_name = "N")]
    slots_per_turn: Option<u64>,
    /// Slots in an epoch.
    #[arg(long, value_name = "N")]
    slots_per_epoch: Option<u64>,
    /// Cluster seed (the lottery's).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

/// `worknode schedule set`: one member proposes the change through the log.
pub(crate) fn set_schedule(args: &SetScheduleArgs, out: &mut impl Write) -> Result<(), CliError> {
    let endpoints = parse_endpoints(&args.cluster, "--cluster")?;
    let rotation = match args.rotation.as_deref() {
        None => None,
        Some("on") => Some(true),
        Some("off") => Some(false),
        Some(other) => {
            return Err(CliError::input(format!("--rotation: {other:?} is neither on nor off")))
        }
    };
    let reply = runtime()?.block_on(async {
        let mut errors = Vec::new();
        for endpoint in &endpoints {
            let channel = match channel(endpoint).await {
                Ok(channel) => channel,
                Err(error) => {
                    errors.push(error);
                    continue;
                }
            };
            let stakes = match &args.stakes {
                Some(list) => resolve_stakes(list, channel.clone()).await?,
                None => Vec::new(),
            };
            let request = SetScheduleRequest {
                rotation,
                algorithm: args.algorithm.clone(),
                stakes,
                slot_ms: args.slot_ms,
                slots_per_turn: args.slots_per_turn,
                slots_per_epoch: args.slots_per_epoch,
                seed: args.seed,
            };
            match AdminClient::new(channel).set_schedule(request).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if status.code() == tonic::Code::InvalidArgument => {
                    return Err(CliError::input(status.message().to_owned()))
                }
                Err(status) => errors.push(format!("{endpoint}: {}", status.message())),
            }
        }
        Err(CliError::runtime(format!("no member took the change: {}", errors.join("; "))))
    })?;
    writeln!(
        out,
        "schedule change committed: it holds from epoch {} (slot {}, in {} ms)",
        reply.epoch, reply.first_slot, reply.starts_in_ms
    )?;
    Ok(())
}

/// `ID=STAKE` or `NAME=STAKE` pairs, names resolved through the cluster's member list.
async fn resolve_stakes(list: &str, channel: Channel) -> Result<Vec<MemberStake>, CliError> {
    let members = ClusterClient::new(channel)
        .member_list(MemberListRequest::default())
        .await
        .map_err(|e| CliError::runtime(format!("member list: {}", e.message())))?
        .into_inner()
        .members;
    let mut stakes = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (who, stake) = entry
            .split_once('=')
            .ok_or_else(|| CliError::input(format!("--stakes: {entry:?} is not ID=STAKE")))?;
        let stake: u64 = stake.trim().parse().map_err(|_| {
            CliError::input(format!("--stakes: {entry:?}: the stake is not a whole number"))
        })?;
        let who = who.trim();
        let id = members
            .iter()
            .find(|m| m.name == who || m.id.to_string() == who)
            .map(|m| m.id)
            .ok_or_else(|| {
                CliError::input(format!("--stakes: {who:?} is not a member of the cluster"))
            })?;
        if stakes.iter().any(|s: &MemberStake| s.id == id) {
            return Err(CliError::input(format!("--stakes: {who:?} is listed twice")));
        }
        stakes.push(MemberStake { id, stake });
    }
    Ok(stakes)
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
                            warnings: status.errors.clone(),
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
            boundary_unix_us: t.boundary_unix_us,
            scheduled: t.scheduled,
            leader_before: t.leader_before,
            leader_after: t.leader_after,
            handoff_ms: t.handoff_ms,
            timeout_now_ms: t.timeout_now_ms,
            stepped_down_ms: t.stepped_down_ms,
            // A turn is skipped or taken over, never both: one note column.
            skipped: if t.takeover.is_empty() { t.skipped } else { t.takeover },
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
    members_table(&members, &mut text);
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

/// One row per member (or the reason it did not answer), then their warnings.
fn members_table(members: &[MemberRow], text: &mut String) {
    let _ = writeln!(
        text,
        "{:<22} {:>6} {:>9} {:>6} {:>9} {:>9}  raft worknode",
        "endpoint", "member", "role", "term", "applied", "revision"
    );
    for m in members {
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
    for m in members {
        for warning in &m.warnings {
            let _ = writeln!(text, "warning from member {}: {warning}", m.member_id.unwrap_or(0));
        }
    }
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
            warnings: Vec::new(),
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
