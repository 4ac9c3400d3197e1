//! `raft::Storage` over raft-engine, plus the writes the driver makes: entries and hard
//! state (one fdatasync per batch), installed snapshots, and log compaction.

use std::sync::{Arc, Mutex, PoisonError};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Command, Engine, LogBatch, MessageExt};

/// The one Raft group a worknode cluster runs.
pub const GROUP: u64 = 1;
const HARD_STATE_KEY: &[u8] = b"hard_state";
const CONF_STATE_KEY: &[u8] = b"conf_state";
const SNAPSHOT_META_KEY: &[u8] = b"snapshot_meta";

/// Tells raft-engine how to index raft-rs entries.
#[derive(Clone, Copy, Debug)]
pub struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;

    fn index(entry: &Entry) -> u64 {
        entry.index
    }
}

/// A failure of the log store: the disk, or a record that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// raft-engine reported an error.
    #[error("raft log at {dir}: {source}")]
    Engine {
        /// The log directory.
        dir: String,
        /// The error.
        #[source]
        source: raft_engine::Error,
    },
    /// A stored record does not decode.
    #[error("raft log at {dir}: stored {what} does not decode: {message}")]
    Corrupt {
        /// The log directory.
        dir: String,
        /// Which record.
        what: &'static str,
        /// Why.
        message: String,
    },
}

/// The latest state-machine snapshot, shared between the driver (which makes them) and
/// the storage (which raft asks for one when a follower is too far behind).
#[derive(Debug, Default)]
pub struct SnapshotSlot {
    /// The snapshot, data included.
    pub latest: Option<Snapshot>,
    /// Raft asked for a snapshot at or after this index that `latest` does not cover.
    pub wanted_index: Option<u64>,
}

/// The log store the driver persists to. raft-rs reads it through `raft::Storage`.
pub trait LogStore: raft::Storage + Send {
    /// Appends entries (truncating any newer suffix) and the hard state, durably when
    /// `sync`, in one write.
    fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StoreError>;
    /// Replaces the log with an installed snapshot's position.
    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError>;
    /// Records a snapshot of the local state machine and drops log entries before
    /// `compact_to`.
    fn snapshot_taken(&mut self, snapshot: Snapshot, compact_to: u64) -> Result<(), StoreError>;
    /// Records the configuration after a conf change.
    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<(), StoreError>;
    /// The persisted hard state.
    fn hard_state(&self) -> HardState;
}

/// raft-engine as the log store.
#[derive(Clone)]
pub struct EngineStorage {
    engine: Arc<Engine>,
    dir: String,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_meta: SnapshotMetadata,
    slot: Arc<Mutex<SnapshotSlot>>,
}

impl std::fmt::Debug for EngineStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineStorage")
            .field("dir", &self.dir)
            .field("hard_state", &self.hard_state)
            .field("snapshot_index", &self.snapshot_meta.index)
            .finish_non_exhaustive()
    }
}

fn decode<M: protobuf::Message>(
    dir: &str,
    what: &'static str,
    bytes: Option<Vec<u8>>,
) -> Result<Option<M>, StoreError> {
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    M::parse_from_bytes(&bytes).map(Some).map_err(|error| StoreError::Corrupt {
        dir: dir.to_owned(),
        what,
        message: error.to_string(),
    })
}

impl EngineStorage {
    /// Opens the store; a new one starts with `initial_voters` as its configuration.
    pub fn open(
        engine: Arc<Engine>,
        initial_voters: &[u64],
        slot: Arc<Mutex<SnapshotSlot>>,
    ) -> Result<Self, StoreError> {
        let dir = engine.path().to_owned();
        let hard_state: Option<HardState> =
            decode(&dir, "hard state", engine.get(GROUP, HARD_STATE_KEY))?;
        let conf_state: Option<ConfState> =
            decode(&dir, "conf state", engine.get(GROUP, CONF_STATE_KEY))?;
        let snapshot_meta: Option<SnapshotMetadata> =
            decode(&dir, "snapshot metadata", engine.get(GROUP, SNAPSHOT_META_KEY))?;
        let mut storage = Self {
            engine,
            dir,
            hard_state: hard_state.unwrap_or_default(),
            conf_state: conf_state.clone().unwrap_or_default(),
            snapshot_meta: snapshot_meta.unwrap_or_default(),
            slot,
        };
        if conf_state.is_none() {
            let initial = ConfState { voters: initial_voters.to_vec(), ..ConfState::default() };
            storage.set_conf_state(&initial)?;
        }
        Ok(storage)
    }

    fn engine_error(&self, source: raft_engine::Error) -> StoreError {
        StoreError::Engine { dir: self.dir.clone(), source }
    }

    /// The index of the newest snapshot recorded in the log store.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_meta.index
    }

    fn put<M: protobuf::Message>(
        &self,
        batch: &mut LogBatch,
        key: &[u8],
        message: &M,
    ) -> Result<(), StoreError> {
        batch.put_message(GROUP, key.to_vec(), message).map_err(|error| self.engine_error(error))
    }
}

fn storage_error(error: raft_engine::Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(error)))
}

impl raft::Storage for EngineStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.first_index()?;
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let last = self.last_index()?;
        assert!(high <= last + 1, "entries [{low}, {high}) requested past the last index {last}");
        let mut entries = Vec::with_capacity((high - low) as usize);
        let max_size = max_size.into().map(|size| size as usize);
        self.engine
            .fetch_entries_to::<EntryExt>(GROUP, low, high, max_size, &mut entries)
            .map_err(storage_error)?;
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot_meta.index {
            return Ok(self.snapshot_meta.term);
        }
        if index < self.first_index()? {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last_index()? {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.engine.get_entry::<EntryExt>(GROUP, index).map_err(storage_error)? {
            Some(entry) => Ok(entry.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.engine.first_index(GROUP).unwrap_or(self.snapshot_meta.index + 1))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.engine.last_index(GROUP).unwrap_or(self.snapshot_meta.index))
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(snapshot) =
            slot.latest.as_ref().filter(|s| s.get_metadata().index >= request_index)
        {
            return Ok(snapshot.clone());
        }
        // The driver makes one on its next turn; raft asks again.
        slot.wanted_index = Some(request_index);
        Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
    }
}

impl LogStore for EngineStorage {
    fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StoreError> {
        let mut batch = LogBatch::default();
        if !entries.is_empty() {
            batch
                .add_entries::<EntryExt>(GROUP, entries)
                .map_err(|error| self.engine_error(error))?;
        }
        if let Some(hard_state) = hard_state {
            self.put(&mut batch, HARD_STATE_KEY, hard_state)?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.engine.write(&mut batch, sync).map_err(|error| self.engine_error(error))?;
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state.clone();
        }
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let meta = snapshot.get_metadata();
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = hard_state.commit.max(meta.index);
        hard_state.term = hard_state.term.max(meta.term);
        let mut batch = LogBatch::default();
        // Clean drops the whole group (entries and keys); the keys are written again after it.
        batch.add_command(GROUP, Command::Clean);
        self.put(&mut batch, HARD_STATE_KEY, &hard_state)?;
        self.put(&mut batch, CONF_STATE_KEY, meta.get_conf_state())?;
        let stored_meta = meta.clone();
        self.put(&mut batch, SNAPSHOT_META_KEY, &stored_meta)?;
        self.engine.write(&mut batch, true).map_err(|error| self.engine_error(error))?;
        self.hard_state = hard_state;
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot_meta = stored_meta;
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).latest = Some(snapshot.clone());
        Ok(())
    }

    fn snapshot_taken(&mut self, snapshot: Snapshot, compact_to: u64) -> Result<(), StoreError> {
        let meta = snapshot.get_metadata().clone();
        assert!(compact_to <= meta.index, "compacting past the snapshot would lose entries");
        let mut batch = LogBatch::default();
        self.put(&mut batch, SNAPSHOT_META_KEY, &meta)?;
        self.engine.write(&mut batch, true).map_err(|error| self.engine_error(error))?;
        self.snapshot_meta = meta;
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).latest = Some(snapshot);
        let first = self.engine.first_index(GROUP).unwrap_or(self.snapshot_meta.index + 1);
        if compact_to > first {
            self.engine.compact_to(GROUP, compact_to);
            // Old files are reclaimed once nothing in them is live.
            let _ = self.engine.purge_expired_files();
        }
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.hard_state.clone()
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<(), StoreError> {
        let mut batch = LogBatch::default();
        self.put(&mut batch, CONF_STATE_KEY, conf_state)?;
        self.engine.write(&mut batch, true).map_err(|error| self.engine_error(error))?;
        self.conf_state = conf_state.clone();
        Ok(())
    }
}

/// Encodes a Raft message for the wire.
pub fn encode_message(message: &raft::eraftpb::Message) -> Vec<u8> {
    message
        .write_to_bytes()
        .unwrap_or_else(|error| unreachable!("encoding to memory cannot fail: {error}"))
}

/// Decodes a Raft message from the wire.
pub fn decode_message(bytes: &[u8]) -> Result<raft::eraftpb::Message, String> {
    raft::eraftpb::Message::parse_from_bytes(bytes).map_err(|error| error.to_string())
}
