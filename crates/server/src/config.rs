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
/// longer window only makes them wait there for it (measured: 20 ms cost 2–5% of
/// throughput under a closed-loop load).
fn default_forward_ahead_ms() -> u64 {
    default_handoff_lead_ms()
}
fn default_max_lag() -> u64 {
    128
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
    /// Threads of the net worknode's runtime (client gRPC, peer connections). Default:
    /// one per CPU the core plan gives the net worknode, or 1 when pinning is off. With
    /// 1 the runtime runs on the worknode's own thread and every wakeup stays on it.
    #[serde(default)]
    pub net_threads: Option<usize>,
    /// Allow the fault-injection RPC (partitioning peers) — for tests only.
    #[serde(default)]
    pub allow_fault_injection: bool,
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
        if config.tick_ms == 0 {
            return Err(fail("tick_ms: must be at least 1".into()));
        }
        if let Some(threads) = config.net_threads {
            if !(1..=MAX_NET_THREADS).contains(&threads) {
                return Err(fail(format!(
                    "net_threads: {threads} is not between 1 and {MAX_NET_THREADS}"
                )));
            }
        }
        if config.heartbeat_ticks == 0 || config.election_ticks <= config.heartbeat_ticks {
            return Err(fail(format!(
                "election_ticks ({}) must be greater than heartbeat_ticks ({}), which must be at least 1",
                config.election_ticks, config.heartbeat_ticks
            )));
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
        if !config.members.iter().any(|m| m.id == config.member_id) {
            return Err(fail(format!(
                "member_id: {} is not one of the [[member]] ids",
                config.member_id
            )));
        }
        Ok(config)
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
        self.cluster.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
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
        };
        worknode_raft::rotation::Rotation::new(config.clone()).map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
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
    fn errors_name_the_field() {
        let cases = [
            (GOOD.replace("member_id = 2", "member_id = 9"), "member_id: 9 is not one of"),
            (GOOD.replace("127.0.0.1:22380", "nowhere"), "node.toml:15: invalid socket address"),
            (GOOD.replace("id = 2", "id = 1"), "member[1].id: 1 is also the id of \"n1\""),
            (GOOD.replace("data_dir", "datadir"), "node.toml:4: unknown field `datadir`"),
            (format!("tick_ms = 0\n{GOOD}"), "tick_ms: must be at least 1"),
            (format!("net_threads = 0\n{GOOD}"), "net_threads: 0 is not between 1 and 1024"),
        ];
        for (text, expected) in cases {
            let error = ServerConfig::parse("node.toml", &text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }
}
