//! Assembling a member from its data directory: lock, log, snapshot, transport, node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use raft::eraftpb::{HardState, Snapshot};
use raft_engine::{Config as EngineConfig, Engine, RecoveryMode};

use crate::datadir::{DataDir, DataDirError};
use crate::log_tail::{self, Tail};
use crate::node::{Node, NodeConfig, NodeHandle, StartError, SystemClock};
use crate::snapshot_file::{SnapshotFile, SnapshotFileError};
use crate::storage::{EngineStorage, LogStore, SnapshotSlot, StoreError};
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
    /// Accept a damaged log tail even where it may hold acknowledged writes
    /// (raft-engine's tolerant recovery). A torn tail from a crash needs no flag: it is
    /// cut at start by itself.
    pub recover_tail: bool,
    /// Wipe this member's log and snapshot (keeping its term and vote when the old log
    /// still reads) and catch up from the cluster by snapshot.
    pub rejoin: bool,
    /// The node's tuning; `node.id` is this member.
    pub node: NodeConfig,
    /// Digests of the settings every member must share (sent in each hello).
    pub agreement: crate::frame::Agreement,
    /// Peer TLS (`[peer_tls]`): connections mutually authenticated by member.
    pub peer_tls: Option<crate::tls::PeerTls>,
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
    #[error("raft log at {dir} does not open: {reason}; start with --rejoin to rebuild this member from the cluster (or --recover-tail to accept losing the damaged tail)")]
    Log {
        /// The log directory.
        dir: String,
        /// raft-engine's error.
        reason: String,
    },
    /// A complete, synced batch of the log fails its checksum.
    #[error("raft log file {file} is corrupt at byte {offset} ({reason}) and valid writes follow it, so acknowledged data was damaged; start with --rejoin to rebuild this member from the cluster")]
    Corrupt {
        /// The file.
        file: String,
        /// Where the damaged batch begins.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The state the log's start depends on is gone or does not fit it.
    #[error("{0}")]
    Inconsistent(String),
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
    let snapshot_file = SnapshotFile::in_dir(data_dir.path());
    let kept = if spec.rejoin { Some(wipe_for_rejoin(&log_dir, &snapshot_file)?) } else { None };
    let (engine, recovery_note) = open_log(&log_dir, spec.recover_tail)?;
    let slot = Arc::new(Mutex::new(SnapshotSlot::default()));
    let voters: Vec<u64> = spec.peers.iter().map(|(id, _)| *id).collect();
    let mut storage = EngineStorage::open(Arc::new(engine), &voters, Arc::clone(&slot))?;
    if let Some(Some(hard_state)) = kept {
        // The term and vote survive: this member never votes twice in one term.
        let kept = HardState { commit: 0, ..hard_state };
        storage.persist(&[], Some(&kept), true)?;
    }
    let log_stats = storage.stats();
    let snapshot = snapshot_file.load()?;
    check_start(&mut storage, snapshot.as_ref(), &snapshot_file, &log_dir)?;
    let blocked: Blocked = Arc::default();
    let identity = transport::PeerIdentity {
        cluster_id: spec.cluster_id,
        my_id: spec.node.id,
        agreement: spec.agreement,
        tls: spec.peer_tls.clone(),
    };
    let (transport, stats) = transport::connect_peers(identity, &spec.peers, Arc::clone(&blocked));
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

/// Writes a new member's data directory whose state is `machine` (a backup restored):
/// a snapshot at the machine's applied index, term 1, with `voters` as the configuration.
/// Every member restored from one backup gets the same snapshot, so they start as one
/// cluster with equal state, and the first start records it in the log
/// ([`check_start`]). Only a new or empty data directory is written.
pub fn bootstrap_restored(
    data_dir: &Path,
    cluster_id: u64,
    member_id: u64,
    voters: &[u64],
    machine: &worknode_kv::StateMachine,
) -> Result<(), OpenError> {
    let dir = DataDir::open(data_dir, cluster_id, member_id)?;
    let snapshot_file = SnapshotFile::in_dir(dir.path());
    let log_dir = dir.log_dir();
    let log_written = std::fs::read_dir(&log_dir).is_ok_and(|mut entries| entries.next().is_some());
    if log_written || snapshot_file.path().exists() {
        return Err(OpenError::Inconsistent(format!(
            "data dir {} already holds a member's log or snapshot: a restore writes only into a new or empty data dir (move this one away first)",
            data_dir.display()
        )));
    }
    let mut snapshot = Snapshot::default();
    let metadata = snapshot.mut_metadata();
    metadata.index = machine.applied_index();
    metadata.term = 1;
    metadata.mut_conf_state().voters = voters.to_vec();
    snapshot.set_data(machine.snapshot().into());
    snapshot_file.save(&snapshot)?;
    Ok(())
}

/// Reads every log file before raft-engine does: a complete batch that fails its checksum
/// with valid ones after it is corruption and refuses the start (raft-engine checks the
/// entries of only each file's last batch, and would fail on the others when a peer needs
/// them); the newest files' torn tails (zeros allocated ahead, a cut batch, recycled
/// leftovers — never acknowledged) are cut. Then the log opens strictly. `recover_tail`
/// lets raft-engine's tolerant recovery drop what else it cannot read; it cannot repair
/// corruption (raft-engine would open such a log and fail when the entries are read), so
/// that refuses the start either way.
fn open_log(log_dir: &str, recover_tail: bool) -> Result<(Engine, Option<String>), OpenError> {
    let cut = repair_tails(log_dir)?;
    let strict = match open_engine(log_dir, RecoveryMode::AbsoluteConsistency) {
        Ok(engine) => {
            let end = engine.last_index(crate::storage::GROUP).unwrap_or(0);
            let note = (!cut.is_empty()).then(|| format!(
                "the raft log ended in unsynced bytes after a crash (never acknowledged): cut {}; the log now ends at index {end}",
                cut.join(", ")
            ));
            return Ok((engine, note));
        }
        Err(error) => error,
    };
    if !recover_tail {
        return Err(OpenError::Log { dir: log_dir.to_owned(), reason: strict.to_string() });
    }
    let engine = open_engine(log_dir, RecoveryMode::TolerateTailCorruption)
        .map_err(|again| OpenError::Log { dir: log_dir.to_owned(), reason: again.to_string() })?;
    let end = engine.last_index(crate::storage::GROUP).unwrap_or(0);
    let note = format!("--recover-tail: the log at {log_dir} was damaged ({strict}); the damaged tail after index {end} was dropped");
    Ok((engine, Some(note)))
}

/// Checks every log file (see [`open_log`]) and cuts the newest files' torn tails; what
/// was cut, for the log.
fn repair_tails(log_dir: &str) -> Result<Vec<String>, OpenError> {
    let failed = |reason: String| OpenError::Log { dir: log_dir.to_owned(), reason };
    let files = match log_tail::all_files(Path::new(log_dir)) {
        Ok(files) => files,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(failed(error.to_string())),
    };
    let newest = log_tail::newest_of(&files);
    let mut cut = Vec::new();
    for (file, seq) in files {
        let bytes = std::fs::read(&file).map_err(|e| failed(format!("{}: {e}", file.display())))?;
        let name = file.display().to_string();
        match log_tail::inspect(&bytes, seq) {
            Tail::Corrupt { offset, reason } => {
                return Err(OpenError::Corrupt { file: name, offset, reason });
            }
            Tail::Valid { end, size, rest }
                if end < size && newest.contains(&(file.clone(), seq)) =>
            {
                log_tail::truncate(&file, end)
                    .map_err(|e| failed(format!("cannot cut the torn tail of {name}: {e}")))?;
                cut.push(format!("{name} at byte {end} ({} bytes of {rest})", size - end));
            }
            _ => {}
        }
    }
    Ok(cut)
}

/// What the log's start needs from the snapshot file, checked before raft-rs sees either:
/// a log compacted past its start needs the snapshot that holds what it dropped; a
/// snapshot newer than the whole log (a crash between saving a received snapshot and
/// recording it in the log) is recorded now, as the install would have; a commit index
/// past the log's end means committed entries are gone.
fn check_start(
    storage: &mut EngineStorage,
    snapshot: Option<&Snapshot>,
    file: &SnapshotFile,
    log_dir: &str,
) -> Result<(), OpenError> {
    let path = file.path().display();
    let first = raft::Storage::first_index(storage).unwrap_or(1);
    let snapshot_index = snapshot.map_or(0, |s| s.get_metadata().index);
    if first > 1 && snapshot.is_none() {
        return Err(OpenError::Inconsistent(format!(
            "snapshot file {path} is missing, and the raft log at {log_dir} starts at index {first}: the state before it exists only in that snapshot. Restore the file, or start with --rejoin to rebuild this member from the cluster"
        )));
    }
    if snapshot.is_some() && snapshot_index + 1 < first {
        return Err(OpenError::Inconsistent(format!(
            "snapshot file {path} holds the state at index {snapshot_index}, but the raft log at {log_dir} starts at index {first}: the entries between are gone (an older snapshot file was put back?). Restore the newest snapshot, or start with --rejoin"
        )));
    }
    let last = raft::Storage::last_index(storage).unwrap_or(0);
    if let Some(snapshot) = snapshot.filter(|_| snapshot_index > last) {
        storage.install_snapshot(snapshot)?;
    }
    let last = last.max(snapshot_index);
    let commit = storage.hard_state().commit;
    if commit > last {
        return Err(OpenError::Inconsistent(format!(
            "the raft log at {log_dir} ends at index {last} but records entries up to {commit} as committed: committed entries are missing (the log was truncated). Start with --rejoin to rebuild this member from the cluster"
        )));
    }
    Ok(())
}

/// Empties the log and removes the snapshot for `--rejoin`; the old hard state, when the
/// old log still opens (tolerating any damage), so the member keeps its term and vote.
fn wipe_for_rejoin(
    log_dir: &str,
    snapshot_file: &SnapshotFile,
) -> Result<Option<HardState>, OpenError> {
    let hard_state =
        open_engine(log_dir, RecoveryMode::TolerateAnyCorruption).ok().and_then(|engine| {
            let slot = Arc::new(Mutex::new(SnapshotSlot::default()));
            let storage = EngineStorage::open(Arc::new(engine), &[], slot).ok()?;
            Some(storage.hard_state().clone())
        });
    let io = |what: &str, error: std::io::Error| {
        OpenError::Inconsistent(format!("--rejoin cannot {what}: {error}"))
    };
    match std::fs::remove_dir_all(log_dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(&format!("remove {log_dir}"), error))
        }
        _ => {}
    }
    snapshot_file.remove()?;
    match &hard_state {
        Some(state) => tracing::warn!(
            "--rejoin: the log and snapshot were removed; keeping term {} and vote {}, this member catches up from the cluster",
            state.term,
            state.vote
        ),
        None => tracing::warn!(
            "--rejoin: the log and snapshot were removed; the old log did not open, so this member's last vote is unknown (safe once the cluster has moved past the term it last voted in)"
        ),
    }
    Ok(hard_state)
}
