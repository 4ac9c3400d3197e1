//! `raft::Storage` over raft-engine, plus the writes the driver makes: entries and hard
//! state (one fdatasync per batch), installed snapshots, and log compaction.
//!
//! raft-engine keeps only an index in memory: every entry and every term raft-rs asks for
//! is a file read, decode and checksum. raft-rs asks for the newest entries all the time
//! (a term per append and per commit, the committed entries to apply), so the newest ones
//! stay in a bounded cache as well, as TiKV's entry cache does.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
    /// A snapshot from the leader that raft-rs accepted cannot be kept.
    #[error("a snapshot received from the leader cannot be installed: {0}")]
    ReceivedSnapshot(String),
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

impl SnapshotSlot {
    /// raft-rs's `Storage::snapshot`: the latest snapshot if it covers `request_index`;
    /// otherwise the driver is asked for a newer one (it makes it on its next turn) and
    /// raft-rs, told to wait, asks again.
    pub fn snapshot_at(&mut self, request_index: u64) -> raft::Result<Snapshot> {
        if let Some(snapshot) =
            self.latest.as_ref().filter(|s| s.get_metadata().index >= request_index)
        {
            return Ok(snapshot.clone());
        }
        self.wanted_index = Some(request_index);
        Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
    }
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
    /// Starts reading entries for lagging peers off the loop (see [`crate::fetch`]):
    /// `ready` receives the first index of each finished read, `setup` runs first on the
    /// reading thread. A store that does not read off the loop ignores this.
    fn fetch_off_loop(
        &mut self,
        _ready: crate::doorbell::LoopSender<u64>,
        _setup: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<()> {
        Ok(())
    }
    /// The raft-rs context of the finished read that begins at `low`, to hand back
    /// through `RawNode::on_entries_fetched`.
    fn fetched(&mut self, _low: u64) -> Option<GetEntriesContext> {
        None
    }
    /// Reads started off the loop, ever.
    fn reads_off_loop(&self) -> u64 {
        0
    }
}

/// Upper bounds (seconds) of the log sync duration histogram's buckets: from a good
/// SSD's tens of microseconds to a slow shared virtual disk's hundreds of milliseconds.
pub const LOG_SYNC_BUCKETS_S: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// The histogram bucket a duration falls in: the first whose upper bound (seconds) it
/// does not exceed, or `bounds.len()` above them all.
pub(crate) fn bucket(bounds: &[f64], took: Duration) -> usize {
    let seconds = took.as_secs_f64();
    bounds.iter().position(|&bound| seconds <= bound).unwrap_or(bounds.len())
}

/// The Raft log's write counters, shared with the metrics endpoint (atomics: the loop
/// never waits for a scrape).
#[derive(Debug, Default)]
pub struct LogStats {
    /// Synced writes per bucket of [`LOG_SYNC_BUCKETS_S`] by how long the write and its
    /// fdatasync took (not cumulative; the last counts those above the largest bound).
    pub sync_buckets: [AtomicU64; LOG_SYNC_BUCKETS_S.len() + 1],
    /// Sum of the synced writes' durations, nanoseconds.
    pub sync_ns_sum: AtomicU64,
    /// Entries appended (a follower's overwritten tail counts again).
    pub entries_appended: AtomicU64,
}

impl LogStats {
    fn record_sync(&self, took: Duration) {
        self.sync_buckets[bucket(&LOG_SYNC_BUCKETS_S, took)].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sync_ns_sum.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// raft-engine as the log store.
pub struct EngineStorage {
    engine: Arc<Engine>,
    dir: String,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_meta: SnapshotMetadata,
    slot: Arc<Mutex<SnapshotSlot>>,
    cache: EntryCache,
    /// Reads for lagging peers off the loop, once the node starts it.
    fetcher: Option<crate::fetch::Fetcher>,
    stats: Arc<LogStats>,
}

/// Most entries the cache holds.
pub const ENTRY_CACHE_MAX_ENTRIES: usize = 4096;
/// Most entry bytes (encoded) the cache holds.
pub const ENTRY_CACHE_MAX_BYTES: usize = 8 << 20;

/// The newest persisted entries, contiguous and ending at the log's last index. At its
/// bounds the oldest go; a read it does not fully cover goes to raft-engine.
#[derive(Debug, Default)]
struct EntryCache {
    /// Each entry with its encoded size.
    entries: VecDeque<(Entry, u64)>,
    bytes: u64,
}

impl EntryCache {
    /// Entries written at `entries[0].index` replace everything from there on.
    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        self.truncate_from(first.index);
        if self.entries.back().is_some_and(|(last, _)| last.index + 1 != first.index) {
            self.clear();
        }
        for entry in entries {
            let size = u64::from(entry.compute_size());
            self.bytes += size;
            self.entries.push_back((entry.clone(), size));
        }
        while self.entries.len() > ENTRY_CACHE_MAX_ENTRIES
            || self.bytes > ENTRY_CACHE_MAX_BYTES as u64
        {
            self.pop_front();
        }
    }

    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(last, _)| last.index >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Drops entries before `index` (compacted away).
    fn compact_to(&mut self, index: u64) {
        while self.entries.front().is_some_and(|(first, _)| first.index < index) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn position(&self, index: u64) -> Option<usize> {
        let first = self.entries.front()?.0.index;
        let offset = usize::try_from(index.checked_sub(first)?).ok()?;
        (offset < self.entries.len()).then_some(offset)
    }

    fn term(&self, index: u64) -> Option<u64> {
        self.position(index).map(|at| self.entries[at].0.term)
    }

    /// The newest entry's index (the log's last), if any is held.
    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _)| entry.index)
    }

    /// Entries `[low, high)` within `max_size` (at least one), if all are here.
    fn slice(&self, low: u64, high: u64, max_size: Option<u64>) -> Option<Vec<Entry>> {
        let start = self.position(low)?;
        let end = if high == low { start } else { self.position(high - 1)? + 1 };
        let mut entries: Vec<Entry> = Vec::with_capacity(end - start);
        let mut size = 0u64;
        for (entry, entry_size) in self.entries.range(start..end) {
            size += entry_size;
            if !entries.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            entries.push(entry.clone());
        }
        Some(entries)
    }
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
            cache: EntryCache::default(),
            fetcher: None,
            stats: Arc::default(),
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

    /// Voids the reads off the loop begun before the log changed under them.
    fn void_reads(&self) {
        if let Some(fetcher) = &self.fetcher {
            fetcher.invalidate();
        }
    }

    /// The write counters, for the metrics endpoint.
    pub fn stats(&self) -> Arc<LogStats> {
        Arc::clone(&self.stats)
    }

    /// The index of the newest snapshot recorded in the log store.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_meta.index
    }

    /// The term, vote and commit index as last persisted.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
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
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.first_index()?;
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let last = self.last_index()?;
        assert!(high <= last + 1, "entries [{low}, {high}) requested past the last index {last}");
        let max_size = max_size.into().filter(|&max| max != raft::NO_LIMIT);
        if let Some(entries) = self.cache.slice(low, high, max_size) {
            return Ok(entries);
        }
        let max_size = max_size.map(|size| size as usize);
        if let Some(fetcher) = self.fetcher.as_ref().filter(|_| context.can_async()) {
            match fetcher.get(low, high, max_size, context) {
                crate::fetch::Lookup::Ready(entries) => return Ok(entries),
                crate::fetch::Lookup::Pending => {
                    return Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable));
                }
                crate::fetch::Lookup::Inline => {}
            }
        }
        let mut entries = Vec::with_capacity((high - low) as usize);
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
        if let Some(term) = self.cache.term(index) {
            return Ok(term);
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
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).snapshot_at(request_index)
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
        // Reads off the loop must not outlive entries they hold being replaced (a former
        // leader's tail, overwritten): asked of the cache, raft-engine only when it is empty.
        let overwrites = self.fetcher.is_some()
            && entries.first().is_some_and(|first| {
                let last = self.cache.last_index().or_else(|| self.engine.last_index(GROUP));
                last.is_some_and(|last| first.index <= last)
            });
        let started = Instant::now();
        self.engine.write(&mut batch, sync).map_err(|error| self.engine_error(error))?;
        if sync {
            self.stats.record_sync(started.elapsed());
        }
        self.stats.entries_appended.fetch_add(entries.len() as u64, Ordering::Relaxed);
        if overwrites {
            self.void_reads();
        }
        self.cache.append(entries);
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
        self.void_reads();
        self.cache.clear();
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
            self.void_reads();
            self.cache.compact_to(compact_to);
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

    fn fetch_off_loop(
        &mut self,
        ready: crate::doorbell::LoopSender<u64>,
        setup: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<()> {
        self.fetcher = Some(crate::fetch::Fetcher::start(Arc::clone(&self.engine), ready, setup)?);
        Ok(())
    }

    fn fetched(&mut self, low: u64) -> Option<GetEntriesContext> {
        self.fetcher.as_ref()?.finished(low)
    }

    fn reads_off_loop(&self) -> u64 {
        self.fetcher.as_ref().map_or(0, crate::fetch::Fetcher::started)
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

#[cfg(test)]
mod tests;
