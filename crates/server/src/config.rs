//! `node.toml`: who this member is, where it listens, who its peers are, and how it runs.
//! Every error names the file, the line when known, and the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use worknode_cores::PlanConfig;
use worknode_raft::NodeConfig;

/// One member of the cluster, as every member's config lists it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Member id (the Raft node id), unique and non-zero.
    pub id: u64,
    /// Human name.
    pub name: String,
    /// Peer (Raft) address.
    pub peer: SocketAddr,
    /// Client (etcd API) address.
    pub client: SocketAddr,
    /// Prometheus metrics address (`GET /metrics`); none by default.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Weight in the leader schedule (default 1).
    #[serde(default = "default_stake")]
    pub stake: u64,
}

fn default_stake() -> u64 {
    1
}

/// Whether leadership rotates on schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationSwitch {
    /// Plain Raft: leadership moves only on failure (or `move-leader`).
    #[default]
    Off,
    /// Leadership follows the leader schedule; elections remain the fallback.
    On,
}

fn default_slot_ms() -> u64 {
    100
}
fn default_slots_per_turn() -> u64 {
    4
}
fn default_slots_per_epoch() -> u64 {
    432_000
}
fn default_handoff_lead_ms() -> u64 {
    10
}
/// The handoff lead: writes go to the incoming leader once the transfer has begun. A
/// longer window only makes them wait there for it, idle, under a closed-loop load.
fn default_forward_ahead_ms() -> u64 {
    default_handoff_lead_ms()
}
fn default_max_lag() -> u64 {
    128
}
/// Three missed heartbeats: a live leader's arrive every heartbeat, so three in a row
/// missing at every voter is no hiccup.
const SILENCE_HEARTBEATS_DEFAULT: u32 = 3;
fn default_takeover_grace_ms() -> u64 {
    50
}
/// Half a second: far beyond what NTP keeps members within, well below a turn boundary's
/// worth of confusion at the default 400 ms turns once doubled.
fn default_clock_skew_max_ms() -> u64 {
    500
}

/// The `[schedule]` table: identical on every member.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `on` or `off`.
    #[serde(default)]
    pub rotation: RotationSwitch,
    /// `fair`, `lottery` or `solana`.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Slot length in milliseconds.
    #[serde(default = "default_slot_ms")]
    pub slot_ms: u64,
    /// Consecutive slots one leader holds.
    #[serde(default = "default_slots_per_turn")]
    pub slots_per_turn: u64,
    /// Slots per epoch.
    #[serde(default = "default_slots_per_epoch")]
    pub slots_per_epoch: u64,
    /// When slot 0 began, milliseconds since the UNIX epoch.
    #[serde(default)]
    pub genesis_unix_ms: u64,
    /// Cluster seed (for the lottery).
    #[serde(default)]
    pub seed: u64,
    /// Start a handoff this long before the turn boundary.
    #[serde(default = "default_handoff_lead_ms")]
    pub handoff_lead_ms: u64,
    /// In this last part of a turn, send new writes to the incoming leader (0: off).
    /// Beyond `handoff_lead_ms` they wait there until the transfer starts and ends.
    #[serde(default = "default_forward_ahead_ms")]
    pub forward_ahead_ms: u64,
    /// Largest log gap a member may have and still take its turn.
    #[serde(default = "default_max_lag")]
    pub max_lag_entries: u64,
    /// Heartbeat intervals without a word from the leader after which its successor on
    /// the schedule takes over instead of waiting out the election timeout (0: never).
    /// Default: 3, or fewer where the election timeout is shorter than four heartbeats.
    #[serde(default)]
    pub silence_heartbeats: Option<u32>,
    /// How long past a turn boundary the incoming member waits for the handoff before it
    /// takes over from a silent leader; also the clock skew voters allow when they check
    /// that the schedule names the candidate.
    #[serde(default = "default_takeover_grace_ms")]
    pub takeover_grace_ms: u64,
    /// How far members' wall clocks (measured from the peer traffic) may differ before
    /// handoffs, writes forwarded ahead and takeovers pause, with a warning naming the
    /// member (0: not checked). Within it, followers read the schedule on the leader's
    /// clock.
    #[serde(default = "default_clock_skew_max_ms")]
    pub clock_skew_max_ms: u64,
}

fn default_algorithm() -> String {
    "fair".into()
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            rotation: RotationSwitch::Off,
            algorithm: default_algorithm(),
            slot_ms: default_slot_ms(),
            slots_per_turn: default_slots_per_turn(),
            slots_per_epoch: default_slots_per_epoch(),
            genesis_unix_ms: 0,
            seed: 0,
            handoff_lead_ms: default_handoff_lead_ms(),
            forward_ahead_ms: default_forward_ahead_ms(),
            max_lag_entries: default_max_lag(),
            silence_heartbeats: None,
            takeover_grace_ms: default_takeover_grace_ms(),
            clock_skew_max_ms: default_clock_skew_max_ms(),
        }
    }
}

/// A `[tls]` or `[peer_tls]` table, with etcd's meanings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This side's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// CA certificates the other side's certificate must chain to (PEM).
    #[serde(default)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate that chains to `trusted_ca_file` (peers always do).
    #[serde(default)]
    pub client_cert_auth: bool,
}

impl TlsConfig {
    /// The files, as the TLS layer takes them.
    pub fn files(&self) -> worknode_raft::tls::TlsFiles {
        worknode_raft::tls::TlsFiles {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
        }
    }
}

/// Whether worknodes are pinned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pinning {
    /// Pin per the core plan (best effort unless the plan says otherwise).
    #[default]
    Auto,
    /// Do not pin (several members sharing one small host).
    Off,
}

/// The `[cores]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoresConfig {
    /// `auto` or `off`.
    #[serde(default)]
    pub pin: Pinning,
    /// Degrade instead of failing on a small host (default true).
    #[serde(default)]
    pub best_effort: Option<bool>,
    /// Housekeeping CPUs (default: the core of the lowest usable CPU).
    #[serde(default)]
    pub housekeeping: Option<worknode_cores::CpuSet>,
    /// Worknodes to place (default: raft, net, api, background).
    #[serde(default)]
    pub worknode: Vec<worknode_cores::WorknodeSpec>,
}

impl CoresConfig {
    /// The core plan this table describes.
    pub fn plan_config(&self) -> PlanConfig {
        let best_effort = self.best_effort.unwrap_or(true);
        if self.worknode.is_empty() {
            return PlanConfig {
                housekeeping: self.housekeeping.clone(),
                ..PlanConfig::default_server(best_effort)
            };
        }
        PlanConfig {
            best_effort,
            housekeeping: self.housekeeping.clone(),
            worknodes: self.worknode.clone(),
        }
    }
}

/// More runtime threads than this is a typo, not a plan.
const MAX_NET_THREADS: usize = 1024;
/// Longest tick: ten seconds (etcd's heartbeat is 100 ms).
const TICK_MS_MAX: u64 = 10_000;
/// Longest election timeout (`tick_ms × election_ticks`): a minute. Beyond it a leader's
/// failure goes unnoticed for longer than any client waits.
const ELECTION_TIMEOUT_MS_MAX: u64 = 60_000;
/// Longest request timeout: ten minutes.
const REQUEST_TIMEOUT_MS_MAX: u64 = 600_000;
/// Most applied entries between snapshots.
const SNAPSHOT_ENTRIES_MAX: u64 = 1_000_000_000;
/// Latest genesis: the end of year 9999, in ms since the UNIX epoch.
const GENESIS_UNIX_MS_MAX: u64 = 253_402_300_799_999;
/// Longest handoff lead or forward-ahead window.
const WINDOW_MS_MAX: u64 = 60_000;

fn default_tick_ms() -> u64 {
    100
}
fn default_election_ticks() -> usize {
    10
}
fn default_heartbeat_ticks() -> usize {
    1
}
fn default_request_timeout_ms() -> u64 {
    5_000
}
fn default_watch_progress_notify_interval_ms() -> u64 {
    10 * 60 * 1000
}
/// A periodic retention: a number and a unit (h, m, s, ms), or a bare number of hours
/// (etcd's forms).
fn parse_retention(text: &str) -> Option<Duration> {
    if let Ok(hours) = text.parse::<u64>() {
        return hours.checked_mul(3600).map(Duration::from_secs);
    }
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let scale = match unit {
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        "ms" => 1,
        _ => return None,
    };
    number.checked_mul(scale).map(Duration::from_millis)
}
/// etcd's default space quota.
pub const QUOTA_BYTES_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;
/// The largest quota: a store past it could not travel as a snapshot
/// ([`worknode_raft::frame::MESSAGE_BYTES_MAX`]).
pub const QUOTA_BYTES_MAX: u64 = worknode_raft::frame::MESSAGE_BYTES_MAX;

fn default_snapshot_entries() -> u64 {
    10_000
}

/// A member's whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Cluster name; members of one cluster share it (its hash is the cluster id).
    pub cluster: String,
    /// This member's id; must appear in `[[member]]`.
    pub member_id: u64,
    /// Data directory (lock, Raft log, snapshot).
    pub data_dir: PathBuf,
    /// Length of a Raft tick in milliseconds.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Ticks before an election (etcd: 1000 ms / 100 ms = 10).
    #[serde(default = "default_election_ticks")]
    pub election_ticks: usize,
    /// Ticks between heartbeats.
    #[serde(default = "default_heartbeat_ticks")]
    pub heartbeat_ticks: usize,
    /// How long a client request may wait before "request timed out".
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Applied entries between snapshots, at least: a snapshot also waits until the log
    /// since the last one is as large as that snapshot was.
    #[serde(default = "default_snapshot_entries")]
    pub snapshot_entries: u64,
    /// etcd's `--quota-backend-bytes`: the store size ([`worknode_kv::Store::size_bytes`])
    /// at which the NOSPACE alarm is raised and writes that add data are refused. 0 means
    /// etcd's default, 2 GiB; at most 8 GiB (the largest snapshot members exchange).
    #[serde(default)]
    pub quota_backend_bytes: u64,
    /// etcd's `--experimental-watch-progress-notify-interval`: a watch that asked for
    /// progress notifications and received nothing for this long hears the current
    /// revision.
    #[serde(default = "default_watch_progress_notify_interval_ms")]
    pub watch_progress_notify_interval_ms: u64,
    /// etcd's `--auto-compaction-mode`: `periodic` (keep a duration of history) or
    /// `revision` (keep a number of revisions). Unset: no compaction but an operator's.
    #[serde(default)]
    pub auto_compaction_mode: Option<String>,
    /// etcd's `--auto-compaction-retention`: for `periodic` a duration (`"72h"`, `"30m"`,
    /// `"90s"`, or a number of hours), for `revision` a number of revisions.
    #[serde(default)]
    pub auto_compaction_retention: Option<String>,
    /// Threads of the net worknode's runtime (client gRPC, peer connections). Default:
    /// one per CPU the core plan gives the net worknode, or 1 when pinning is off. With
    /// 1 the runtime runs on the worknode's own thread and every wakeup stays on it.
    #[serde(default)]
    pub net_threads: Option<usize>,
    /// Allow the fault-injection RPC (partitioning peers) — for tests only.
    #[serde(default)]
    pub allow_fault_injection: bool,
    /// TLS on the client listener (etcd's `--cert-file`, `--key-file`,
    /// `--trusted-ca-file`, `--client-cert-auth`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// TLS between members, mutually authenticated by member (etcd's `--peer-*`).
    #[serde(default)]
    pub peer_tls: Option<TlsConfig>,
    /// Run without peer TLS although a peer address is not loopback (warned at every
    /// start): anyone who reaches the peer port can then speak as a member.
    #[serde(default)]
    pub allow_insecure_peers: bool,
    /// Who may call `worknode.Admin`'s mutating methods.
    #[serde(default)]
    pub admin: crate::authority::AdminConfig,
    /// Worknode pinning.
    #[serde(default)]
    pub cores: CoresConfig,
    /// Scheduled leadership.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Every member, this one included.
    #[serde(rename = "member")]
    pub members: Vec<MemberConfig>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The line, when known.
    pub line: Option<usize>,
    /// What is wrong, naming the field.
    pub message: String,
}

impl ServerConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            file: file.clone(),
            line: None,
            message: format!("cannot read: {error}"),
        })?;
        Self::parse(&file, &text)
    }

    /// Parses and validates config text.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|error| ConfigError {
            file: file.to_owned(),
            line: error
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1),
            message: error.message().replace('\n', " "),
        })?;
        let fail = |message: String| ConfigError { file: file.to_owned(), line: None, message };
        if config.cluster.is_empty() {
            return Err(fail("cluster: must not be empty".into()));
        }
        config.check_bounds(text).map_err(|(line, message)| ConfigError {
            file: file.to_owned(),
            line,
            message,
        })?;
        if let Some(threads) = config.net_threads {
            if !(1..=MAX_NET_THREADS).contains(&threads) {
                return Err(fail(format!(
                    "net_threads: {threads} is not between 1 and {MAX_NET_THREADS}"
                )));
            }
        }
        if config.members.is_empty() {
            return Err(fail("member: list at least one [[member]]".into()));
        }
        for (index, member) in config.members.iter().enumerate() {
            if member.id == 0 {
                return Err(fail(format!("member[{index}].id: 0 is not a valid member id")));
            }
            if let Some(other) = config.members[..index].iter().find(|m| m.id == member.id) {
                return Err(fail(format!(
                    "member[{index}].id: {} is also the id of {:?}",
                    member.id, other.name
                )));
            }
            if let Some(other) = config.members[..index]
                .iter()
                .find(|m| m.peer == member.peer || m.client == member.client)
            {
                return Err(fail(format!(
                    "member[{index}] ({:?}) shares an address with {:?}",
                    member.name, other.name
                )));
            }
        }
        config.rotation_config().map_err(&fail)?;
        config.auto_compaction().map_err(&fail)?;
        config.check_tls().map_err(&fail)?;
        if !config.members.iter().any(|m| m.id == config.member_id) {
            return Err(fail(format!(
                "member_id: {} is not one of the [[member]] ids",
                config.member_id
            )));
        }
        Ok(config)
    }

    /// Every numeric setting within its bounds (no panic later, no cluster that can never
    /// elect): the line and the message naming the field.
    fn check_bounds(&self, text: &str) -> Result<(), (Option<usize>, String)> {
        let schedule = &self.schedule;
        let ranges: [(Option<&str>, &str, u64, u64, u64); 17] = [
            (None, "tick_ms", self.tick_ms, 1, TICK_MS_MAX),
            (None, "heartbeat_ticks", self.heartbeat_ticks as u64, 1, u64::from(u32::MAX)),
            (None, "election_ticks", self.election_ticks as u64, 2, u64::from(u32::MAX)),
            (None, "request_timeout_ms", self.request_timeout_ms, 1, REQUEST_TIMEOUT_MS_MAX),
            (None, "snapshot_entries", self.snapshot_entries, 2, SNAPSHOT_ENTRIES_MAX),
            (None, "quota_backend_bytes", self.quota_backend_bytes, 0, QUOTA_BYTES_MAX),
            (
                None,
                "watch_progress_notify_interval_ms",
                self.watch_progress_notify_interval_ms,
                1,
                86_400_000,
            ),
            (Some("schedule"), "slot_ms", schedule.slot_ms, 1, 86_400_000),
            (Some("schedule"), "slots_per_turn", schedule.slots_per_turn, 1, u64::from(u32::MAX)),
            (Some("schedule"), "slots_per_epoch", schedule.slots_per_epoch, 1, u64::from(u32::MAX)),
            (Some("schedule"), "genesis_unix_ms", schedule.genesis_unix_ms, 0, GENESIS_UNIX_MS_MAX),
            (Some("schedule"), "handoff_lead_ms", schedule.handoff_lead_ms, 0, WINDOW_MS_MAX),
            (Some("schedule"), "forward_ahead_ms", schedule.forward_ahead_ms, 0, WINDOW_MS_MAX),
            (Some("schedule"), "takeover_grace_ms", schedule.takeover_grace_ms, 0, WINDOW_MS_MAX),
            (Some("schedule"), "clock_skew_max_ms", schedule.clock_skew_max_ms, 0, WINDOW_MS_MAX),
            (
                Some("schedule"),
                "silence_heartbeats",
                u64::from(schedule.silence_heartbeats.unwrap_or(0)),
                0,
                u64::from(u32::MAX),
            ),
            (
                Some("schedule"),
                "max_lag_entries",
                schedule.max_lag_entries,
                0,
                SNAPSHOT_ENTRIES_MAX,
            ),
        ];
        for (table, field, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                let name = table.map_or(field.to_owned(), |table| format!("{table}.{field}"));
                return Err((
                    line_of(text, table, field),
                    format!("{name}: {value} is not between {min} and {max}"),
                ));
            }
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err((
                line_of(text, None, "election_ticks"),
                format!(
                    "election_ticks ({}) must be greater than heartbeat_ticks ({})",
                    self.election_ticks, self.heartbeat_ticks
                ),
            ));
        }
        let silence = schedule.silence_heartbeats.unwrap_or(0);
        if u64::from(silence) * self.heartbeat_ticks as u64 >= self.election_ticks as u64 {
            return Err((
                line_of(text, Some("schedule"), "silence_heartbeats"),
                format!(
                    "schedule.silence_heartbeats: {silence} heartbeats of {} ticks reach the {}-tick election timeout; a takeover must come before it (0 turns takeovers off)",
                    self.heartbeat_ticks, self.election_ticks
                ),
            ));
        }
        let election_timeout_ms = self.tick_ms * self.election_ticks as u64;
        if election_timeout_ms > ELECTION_TIMEOUT_MS_MAX {
            return Err((
                line_of(text, None, "election_ticks"),
                format!(
                    "election_ticks: {} ticks of {} ms make a {election_timeout_ms} ms election timeout; at most {ELECTION_TIMEOUT_MS_MAX} ms",
                    self.election_ticks, self.tick_ms
                ),
            ));
        }
        Ok(())
    }

    /// TLS tables that can work, and peer TLS wherever a peer address leaves this host
    /// (unless `allow_insecure_peers`).
    fn check_tls(&self) -> Result<(), String> {
        for (table, tls) in [("tls", &self.tls), ("peer_tls", &self.peer_tls)] {
            let Some(tls) = tls else { continue };
            if tls.client_cert_auth && tls.trusted_ca_file.is_none() {
                return Err(format!(
                    "{table}.client_cert_auth: needs {table}.trusted_ca_file to check client certificates against"
                ));
            }
        }
        if let Some(peer_tls) = &self.peer_tls {
            if peer_tls.trusted_ca_file.is_none() {
                return Err("peer_tls.trusted_ca_file: members authenticate each other, so a trusted CA is required".into());
            }
        }
        if self.peer_tls.is_none() && !self.allow_insecure_peers {
            if let Some(member) = self.members.iter().find(|m| !m.peer.ip().is_loopback()) {
                return Err(format!(
                    "member {:?}'s peer address {} is not loopback: set [peer_tls] (worknode certs init makes certificates), or allow_insecure_peers = true to let anyone who reaches the peer port speak as a member",
                    member.name, member.peer
                ));
            }
        }
        Ok(())
    }

    /// Whether peers talk without TLS across the network (allowed, and warned about).
    pub fn insecure_peers(&self) -> bool {
        self.peer_tls.is_none() && self.members.iter().any(|m| !m.peer.ip().is_loopback())
    }

    /// This member's entry.
    pub fn me(&self) -> &MemberConfig {
        self.members
            .iter()
            .find(|m| m.id == self.member_id)
            .unwrap_or_else(|| unreachable!("validated: member_id is listed"))
    }

    /// The cluster id: FNV-1a of the cluster name (stable everywhere).
    pub fn cluster_id(&self) -> u64 {
        cluster_id_of(&self.cluster)
    }

    /// Digests of what every member's config must say alike: the member list (ids,
    /// names, addresses, in id order) and the bootstrap schedule with each member's stake.
    /// Members compare them in their hellos and refuse peers that differ.
    pub fn agreement(&self) -> worknode_raft::frame::Agreement {
        let mut members: Vec<&MemberConfig> = self.members.iter().collect();
        members.sort_by_key(|m| m.id);
        let list: String = members
            .iter()
            .map(|m| format!("{}|{}|{}|{}|{:?};", m.id, m.name, m.peer, m.client, m.metrics))
            .collect();
        let s = &self.schedule;
        let stakes: String = members.iter().map(|m| format!("{}={};", m.id, m.stake)).collect();
        let schedule = format!(
            "{:?}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{stakes}",
            s.rotation,
            s.algorithm,
            s.slot_ms,
            s.slots_per_turn,
            s.slots_per_epoch,
            s.genesis_unix_ms,
            s.seed,
            s.handoff_lead_ms,
            s.forward_ahead_ms,
            s.max_lag_entries,
        );
        worknode_raft::frame::Agreement {
            members: fnv1a(list.as_bytes()),
            schedule: fnv1a(schedule.as_bytes()),
        }
    }

    /// The Raft node's tuning.
    pub fn node_config(&self) -> NodeConfig {
        let mut node = NodeConfig::new(self.member_id, self.members.iter().map(|m| m.id).collect());
        node.tick = Duration::from_millis(self.tick_ms);
        node.election_ticks = self.election_ticks;
        node.heartbeat_ticks = self.heartbeat_ticks;
        node.snapshot_entries = self.snapshot_entries;
        node.log_keep_entries = self.snapshot_entries / 2;
        node.retry_interval =
            (node.tick * self.election_ticks as u32 / 2).max(Duration::from_millis(20));
        node.rotation = self.rotation_config().ok();
        node
    }

    /// The bootstrap schedule settings (`[schedule]` and each member's stake); the
    /// cluster replicates changes to them (`worknode schedule set`).
    pub fn rotation_config(&self) -> Result<worknode_raft::rotation::RotationConfig, String> {
        let schedule = &self.schedule;
        let config = worknode_raft::rotation::RotationConfig {
            base: worknode_kv::ScheduleSettings {
                rotation: schedule.rotation == RotationSwitch::On,
                algorithm: schedule.algorithm.clone(),
                stakes: self.members.iter().map(|m| (m.id, m.stake)).collect(),
                slot_ms: schedule.slot_ms,
                slots_per_turn: schedule.slots_per_turn,
                slots_per_epoch: schedule.slots_per_epoch,
                seed: schedule.seed,
            },
            genesis_unix_ns: schedule.genesis_unix_ms.saturating_mul(1_000_000),
            handoff_lead: Duration::from_millis(schedule.handoff_lead_ms),
            max_lag_entries: schedule.max_lag_entries,
            forward_ahead: Duration::from_millis(schedule.forward_ahead_ms),
            silence_heartbeats: self.silence_heartbeats(),
            takeover_grace: Duration::from_millis(schedule.takeover_grace_ms),
            clock_skew_max: Duration::from_millis(schedule.clock_skew_max_ms),
        };
        worknode_raft::rotation::Rotation::new(config.clone()).map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// `schedule.silence_heartbeats`, or its default: three heartbeats, fewer where the
    /// election timeout would come first (takeovers off if not even one fits).
    pub fn silence_heartbeats(&self) -> u32 {
        self.schedule.silence_heartbeats.unwrap_or_else(|| {
            let fit = (self.election_ticks.saturating_sub(1) / self.heartbeat_ticks.max(1)) as u32;
            SILENCE_HEARTBEATS_DEFAULT.min(fit)
        })
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The shortest lease TTL granted (etcd's `minLeaseTTL`): 1.5 election timeouts, in
    /// whole seconds rounded up.
    pub fn lease_ttl_min(&self) -> i64 {
        let election_ms = self.tick_ms.saturating_mul(self.election_ticks as u64);
        i64::try_from((election_ms.saturating_mul(3) / 2).div_ceil(1000)).unwrap_or(i64::MAX)
    }

    /// What the member compacts by itself (`auto_compaction_mode` and `_retention`).
    pub fn auto_compaction(&self) -> Result<crate::compactor::AutoCompaction, String> {
        use crate::compactor::AutoCompaction;
        let retention = self.auto_compaction_retention.as_deref().map(str::trim);
        match (self.auto_compaction_mode.as_deref(), retention) {
            (None, None) => Ok(AutoCompaction::Off),
            (None, Some(_)) => Err("auto_compaction_retention: set auto_compaction_mode (\"periodic\" or \"revision\") too".into()),
            (Some(_), None) => Err("auto_compaction_mode: set auto_compaction_retention too".into()),
            (Some("periodic"), Some(text)) => {
                let retention = parse_retention(text).ok_or_else(|| {
                    format!("auto_compaction_retention: {text:?} is not a duration (\"72h\", \"30m\", \"90s\", or hours)")
                })?;
                if retention < Duration::from_secs(1) || retention > Duration::from_secs(10 * 365 * 86_400) {
                    return Err(format!("auto_compaction_retention: {text:?} is not between 1 s and 10 years"));
                }
                Ok(AutoCompaction::Periodic(retention))
            }
            (Some("revision"), Some(text)) => match text.parse::<i64>() {
                Ok(revisions) if revisions > 0 => Ok(AutoCompaction::Revision(revisions)),
                _ => Err(format!("auto_compaction_retention: {text:?} is not a positive number of revisions")),
            },
            (Some(mode), Some(_)) => Err(format!(
                "auto_compaction_mode: {mode:?} is neither \"periodic\" nor \"revision\""
            )),
        }
    }

    /// How often a quiet watch that asked for them hears the current revision.
    pub fn watch_progress_interval(&self) -> Duration {
        Duration::from_millis(self.watch_progress_notify_interval_ms)
    }

    /// The space quota in force (0 in the file: etcd's default).
    pub fn quota_bytes(&self) -> u64 {
        match self.quota_backend_bytes {
            0 => QUOTA_BYTES_DEFAULT,
            bytes => bytes,
        }
    }
}

/// The id of the cluster named `name` (what every member's hello and header carry).
pub fn cluster_id_of(name: &str) -> u64 {
    fnv1a(name.as_bytes())
}

/// FNV-1a, 64-bit: stable across platforms and releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The line where `key` is set, inside `[table]` when given (1-based).
fn line_of(text: &str, table: Option<&str>, key: &str) -> Option<usize> {
    let mut current: Option<&str> = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = Some(header.trim_end_matches(']').trim_matches(['[', ']']).trim());
            continue;
        }
        let sets_key =
            line.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='));
        if sets_key && current == table {
            return Some(number + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster = "demo"
member_id = 2
data_dir = "/tmp/wn/2"

[[member]]
id = 1
name = "n1"
peer = "127.0.0.1:12380"
client = "127.0.0.1:12379"

[[member]]
id = 2
name = "n2"
peer = "127.0.0.1:22380"
client = "127.0.0.1:22379"
"#;

    #[test]
    fn parses_and_derives() {
        let config = ServerConfig::parse("node.toml", GOOD).unwrap();
        assert_eq!(config.me().name, "n2");
        assert_eq!(config.node_config().voters, [1, 2]);
        assert_eq!(config.node_config().tick, Duration::from_millis(100));
        assert_eq!(config.cluster_id(), ServerConfig::parse("x", GOOD).unwrap().cluster_id());
        assert_eq!(config.cores.pin, Pinning::Auto);
    }

    #[test]
    fn members_agree_on_the_member_list_and_schedule_but_not_on_local_settings() {
        let two = ServerConfig::parse("a", GOOD).unwrap().agreement();
        let one = ServerConfig::parse("b", &GOOD.replace("member_id = 2", "member_id = 1"));
        let local = format!("tick_ms = 50\nrequest_timeout_ms = 900\n{GOOD}");
        assert_eq!(one.unwrap().agreement(), two);
        assert_eq!(ServerConfig::parse("c", &local).unwrap().agreement(), two);
        let staked = GOOD.replace("name = \"n2\"", "name = \"n2\"\nstake = 3");
        let staked = ServerConfig::parse("d", &staked).unwrap().agreement();
        assert_eq!(two.differences(&staked), ["the [schedule] settings or stakes"]);
        let moved = GOOD.replace("127.0.0.1:22379", "127.0.0.1:22378");
        let moved = ServerConfig::parse("e", &moved).unwrap().agreement();
        assert_eq!(two.differences(&moved), ["the [[member]] list"]);
        let slots = format!("{GOOD}\n[schedule]\nslot_ms = 200\n");
        let slots = ServerConfig::parse("f", &slots).unwrap().agreement();
        assert_eq!(two.differences(&slots), ["the [schedule] settings or stakes"]);
    }

    #[test]
    fn the_example_configs_load() {
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
        for dir in ["cluster", "cluster-tls"] {
            for member in 1..=3 {
                let path = PathBuf::from(examples).join(dir).join(format!("n{member}.toml"));
                let config = ServerConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(config.member_id, member);
                assert_eq!(config.tls.is_some(), dir == "cluster-tls");
            }
        }
    }

    #[test]
    fn peers_beyond_this_host_need_peer_tls_or_an_explicit_opt_out() {
        let remote = GOOD.replace("127.0.0.1:22380", "10.0.0.2:22380");
        assert!(ServerConfig::parse("a", &remote).is_err());
        let opted_out = format!("allow_insecure_peers = true\n{remote}");
        assert!(ServerConfig::parse("b", &opted_out).unwrap().insecure_peers());
        let tls = format!(
            "{remote}\n[peer_tls]\ncert_file = \"p.pem\"\nkey_file = \"k.pem\"\ntrusted_ca_file = \"ca.pem\"\n"
        );
        assert!(!ServerConfig::parse("c", &tls).unwrap().insecure_peers());
    }

    #[test]
    fn takeovers_come_before_the_election_timeout() {
        let default = ServerConfig::parse("a", GOOD).unwrap();
        assert_eq!(default.silence_heartbeats(), 3);
        assert_eq!(default.node_config().rotation.unwrap().takeover_grace.as_millis(), 50);
        // A short election timeout fits fewer heartbeats: the default shrinks to fit.
        let short = format!(
            "election_ticks = 3
{GOOD}"
        );
        assert_eq!(ServerConfig::parse("b", &short).unwrap().silence_heartbeats(), 2);
        let set = format!("{GOOD}\n[schedule]\nsilence_heartbeats = 10\n");
        let error = ServerConfig::parse("node.toml", &set).unwrap_err().to_string();
        assert!(
            error.contains("schedule.silence_heartbeats: 10 heartbeats of 1 ticks reach the 10-tick election timeout"),
            "{error}"
        );
        let off = format!("{GOOD}\n[schedule]\nsilence_heartbeats = 0\n");
        assert_eq!(ServerConfig::parse("c", &off).unwrap().silence_heartbeats(), 0);
    }

    #[test]
    fn auto_compaction_reads_etcds_forms() {
        use crate::compactor::AutoCompaction;
        let with = |mode: &str, retention: &str| {
            let text = format!(
                "auto_compaction_mode = \"{mode}\"\nauto_compaction_retention = \"{retention}\"\n{GOOD}"
            );
            ServerConfig::parse("node.toml", &text).map(|c| c.auto_compaction().unwrap())
        };
        let hour = Duration::from_secs(3600);
        assert_eq!(with("periodic", "72h").unwrap(), AutoCompaction::Periodic(72 * hour));
        assert_eq!(with("periodic", "2").unwrap(), AutoCompaction::Periodic(2 * hour));
        assert_eq!(
            with("periodic", "90s").unwrap(),
            AutoCompaction::Periodic(Duration::from_secs(90))
        );
        assert_eq!(with("revision", "1000").unwrap(), AutoCompaction::Revision(1000));
        assert_eq!(
            ServerConfig::parse("a", GOOD).unwrap().auto_compaction(),
            Ok(AutoCompaction::Off)
        );
        let error = |mode, retention| with(mode, retention).unwrap_err().to_string();
        assert!(error("periodic", "3 days")
            .contains("auto_compaction_retention: \"3 days\" is not a duration"));
        assert!(error("revision", "-5").contains("is not a positive number of revisions"));
        assert!(error("hourly", "1").contains("auto_compaction_mode: \"hourly\" is neither"));
        assert!(error("periodic", "0s").contains("is not between 1 s and 10 years"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (GOOD.replace("member_id = 2", "member_id = 9"), "member_id: 9 is not one of"),
            (GOOD.replace("127.0.0.1:22380", "nowhere"), "node.toml:15: invalid socket address"),
            (GOOD.replace("id = 2", "id = 1"), "member[1].id: 1 is also the id of \"n1\""),
            (GOOD.replace("data_dir", "datadir"), "node.toml:4: unknown field `datadir`"),
            (format!("tick_ms = 0\n{GOOD}"), "node.toml:1: tick_ms: 0 is not between 1 and 10000"),
            (
                format!("election_ticks = 4294967297\n{GOOD}"),
                "node.toml:1: election_ticks: 4294967297 is not between 2 and 4294967295",
            ),
            (
                format!("tick_ms = 1000\nelection_ticks = 100\n{GOOD}"),
                "node.toml:2: election_ticks: 100 ticks of 1000 ms make a 100000 ms election timeout",
            ),
            (
                format!("quota_backend_bytes = 9000000000\n{GOOD}"),
                "node.toml:1: quota_backend_bytes: 9000000000 is not between 0 and 8589934592",
            ),
            (
                format!("heartbeat_ticks = 10\n{GOOD}"),
                "election_ticks (10) must be greater than heartbeat_ticks (10)",
            ),
            (
                format!("{GOOD}\n[schedule]\nslot_ms = 0\n"),
                "node.toml:19: schedule.slot_ms: 0 is not between 1 and 86400000",
            ),
            (
                GOOD.replace("127.0.0.1:22380", "10.0.0.2:22380"),
                "member \"n2\"'s peer address 10.0.0.2:22380 is not loopback: set [peer_tls]",
            ),
            (
                format!("{GOOD}\n[peer_tls]\ncert_file = \"a\"\nkey_file = \"b\"\n"),
                "peer_tls.trusted_ca_file: members authenticate each other",
            ),
            (
                format!("{GOOD}\n[tls]\ncert_file = \"a\"\nkey_file = \"b\"\nclient_cert_auth = true\n"),
                "tls.client_cert_auth: needs tls.trusted_ca_file",
            ),
            (
                format!("{GOOD}\n[schedule]\ngenesis_unix_ms = 18446744073709551615\n"),
                "schedule.genesis_unix_ms: 18446744073709551615 is not between 0 and",
            ),
            (format!("net_threads = 0\n{GOOD}"), "net_threads: 0 is not between 1 and 1024"),
        ];
        for (text, expected) in cases {
            let error = ServerConfig::parse("node.toml", &text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }
}
