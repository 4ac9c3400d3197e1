//! Assembling a member from its data directory: lock, log, snapshot, transport, node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use raft_engine::{Config as EngineConfig, Engine, RecoveryMode};

use crate::datadir::{DataDir, DataDirError};
use crate::node::{Node, NodeConfig, NodeHandle, StartError, SystemClock};
use crate::snapshot_file::{SnapshotFile, SnapshotFileError};
use crate::storage::{EngineStorage, SnapshotSlot, StoreError};
use crate::transport::{self, Blocked, TcpTransport, TransportStats};

/// Everything that identifies and tunes one member.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    /// The cluster.
    pub cluster_id: u64,
    /// Voters and their peer addresses (this member included).
    pub peers: Vec<(u64, SocketAddr)>,
    /// Where the lock, log and snapshot live.
    pub data_dir: PathBuf,
    /// Accept a torn log tail by truncating it (and saying what was dropped).
    pub recover_tail: bool,
    /// The node's tuning; `node.id` is this member.
    pub node: NodeConfig,
    /// Digests of the settings every member must share (sent in each hello).
    pub agreement: crate::frame::Agreement,
}

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory.
    #[error("{0}")]
    DataDir(#[from] DataDirError),
    /// The log store.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The snapshot file.
    #[error("{0}")]
    Snapshot(#[from] SnapshotFileError),
    /// raft-rs.
    #[error("{0}")]
    Start(#[from] StartError),
    /// The log does not open.
    #[error("raft log at {dir} does not open: {reason}; if the damage is a torn tail from a crash, start with --recover-tail to truncate it")]
    Log {
        /// The log directory.
        dir: String,
        /// raft-engine's error.
        reason: String,
    },
}

/// The Raft loop of a member on the real clock, transport and log.
pub type MemberNode = Node<SystemClock, TcpTransport, EngineStorage>;

/// A member ready to run: the node (run it on the Raft worknode's thread) and its parts.
#[allow(missing_debug_implementations, reason = "holds the node, which has no useful Debug")]
pub struct OpenMember {
    /// The Raft loop; call `run` on its thread.
    pub node: MemberNode,
    /// Its handle for servers and the peer listener.
    pub handle: NodeHandle,
    /// Transport counters.
    pub stats: Arc<TransportStats>,
    /// Raft log write counters.
    pub log_stats: Arc<crate::storage::LogStats>,
    /// Fault injection: peers to cut off.
    pub blocked: Blocked,
    /// Holds the data-directory lock while the member lives.
    pub data_dir: DataDir,
    /// What recovery did, if anything worth saying.
    pub recovery_note: Option<String>,
}

fn open_engine(dir: &str, mode: RecoveryMode) -> Result<Engine, raft_engine::Error> {
    let config = EngineConfig {
        dir: dir.to_owned(),
        recovery_mode: mode,
        // No compression: entries are small and latency matters more than space.
        batch_compression_threshold: raft_engine::ReadableSize(0),
        target_file_size: raft_engine::ReadableSize::mb(64),
        purge_threshold: raft_engine::ReadableSize::gb(2),
        ..EngineConfig::default()
    };
    Engine::open(config)
}

/// Opens a member's storage and starts its peer writers on the current tokio runtime.
pub fn open_member(spec: &MemberSpec) -> Result<OpenMember, OpenError> {
    let data_dir = DataDir::open(&spec.data_dir, spec.cluster_id, spec.node.id)?;
    let log_dir = data_dir.log_dir().display().to_string();
    let (engine, recovery_note) = match open_engine(&log_dir, RecoveryMode::AbsoluteConsistency) {
        Ok(engine) => (engine, None),
        Err(error) if spec.recover_tail => {
            let engine =
                open_engine(&log_dir, RecoveryMode::TolerateTailCorruption).map_err(|again| {
                    OpenError::Log { dir: log_dir.clone(), reason: again.to_string() }
                })?;
            let end = engine.last_index(crate::storage::GROUP).unwrap_or(0);
            let note = format!("--recover-tail: the log at {log_dir} was damaged ({error}); the torn tail after index {end} was dropped");
            (engine, Some(note))
        }
        Err(error) => return Err(OpenError::Log { dir: log_dir, reason: error.to_string() }),
    };
    let slot = Arc::new(Mutex::new(SnapshotSlot::default()));
    let voters: Vec<u64> = spec.peers.iter().map(|(id, _)| *id).collect();
    let storage = EngineStorage::open(Arc::new(engine), &voters, Arc::clone(&slot))?;
    let log_stats = storage.stats();
    let snapshot_file = SnapshotFile::in_dir(data_dir.path());
    let snapshot = snapshot_file.load()?;
    let blocked: Blocked = Arc::default();
    let (transport, stats) = transport::connect_peers(
        spec.cluster_id,
        spec.node.id,
        spec.agreement,
        &spec.peers,
        Arc::clone(&blocked),
    );
    let (node, handle) = Node::new(
        spec.node.clone(),
        SystemClock,
        transport,
        storage,
        snapshot,
        snapshot_file,
        slot,
    )?;
    Ok(OpenMember { node, handle, stats, log_stats, blocked, data_dir, recovery_note })
}
