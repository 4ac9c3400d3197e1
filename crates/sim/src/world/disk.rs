//! A simulated log store: what raft-rs sees is what was written; what survives a crash is
//! what was synced, and of the writes made since the last sync, those the kernel happened
//! to write back before the crash — some first ones, in order, any number of them, as an
//! append-only log with checksummed batches (raft-engine) leaves them: a batch torn by the
//! crash and everything after it is cut at start. A member therefore restarts with
//! anything from exactly what it acknowledged to every entry and vote it wrote. Syncs take
//! time (moving the member's cursor on), and can be slowed by a fault.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use worknode_raft::draws::Draws;
use worknode_raft::{LogStore, SnapshotSlot, StoreError};

use super::clock::{Nanos, MS};

/// The log as stored: entries from `first`, the hard state, the configuration, and the
/// position of the snapshot the log starts after.
#[derive(Clone, Debug, Default)]
pub struct Image {
    /// Entries, the first at index `first`.
    pub entries: Vec<Entry>,
    /// Index of `entries[0]`.
    pub first: u64,
    /// Term of the entry before `first` (the snapshot's).
    pub before_term: u64,
    /// Term, vote and commit.
    pub hard_state: HardState,
    /// The voters.
    pub conf_state: ConfState,
}

impl Image {
    /// A fresh member's log: empty, with the voters.
    pub fn bootstrap(voters: &[u64]) -> Self {
        let conf_state = ConfState { voters: voters.to_vec(), ..ConfState::default() };
        Self { first: 1, conf_state, ..Self::default() }
    }

    /// Last index (the snapshot's when the log is empty).
    pub fn last_index(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }

    fn append(&mut self, entries: &[Entry]) {
        let Some(head) = entries.first() else {
            return;
        };
        // Entries below the log's start were compacted into a snapshot: already applied.
        let skip = self.first.saturating_sub(head.index) as usize;
        let entries = &entries[skip.min(entries.len())..];
        let Some(head) = entries.first() else {
            return;
        };
        let keep = (head.index - self.first) as usize;
        self.entries.truncate(keep.min(self.entries.len()));
        self.entries.extend_from_slice(entries);
    }

    fn apply(&mut self, write: &Write) {
        match write {
            Write::Entries(entries) => self.append(entries),
            Write::HardState(hard_state) => self.hard_state = hard_state.clone(),
        }
    }

    fn reset_to(&mut self, index: u64, term: u64) {
        self.entries.clear();
        self.first = index + 1;
        self.before_term = term;
    }

    fn compact_to(&mut self, index: u64) {
        if index <= self.first {
            return;
        }
        let drop = ((index - self.first) as usize).min(self.entries.len());
        if let Some(last_dropped) = self.entries.get(drop.wrapping_sub(1)) {
            self.before_term = last_dropped.term;
        }
        self.entries.drain(..drop);
        self.first = index;
    }
}

/// One write not yet synced.
#[derive(Clone, Debug)]
enum Write {
    Entries(Vec<Entry>),
    HardState(HardState),
}

/// What outlives the member's process: the synced image, the disk's speed, and counters.
#[derive(Debug)]
pub struct Disk {
    /// What a restart finds.
    pub durable: Image,
    /// Extra time every sync takes now (a slow-disk fault), nanoseconds.
    pub slow_ns: Nanos,
    /// The disk is full: writes fail with ENOSPC.
    pub full: bool,
    /// Syncs so far.
    pub syncs: u64,
    /// Writes a crash dropped because they were not synced.
    pub lost_writes: u64,
    /// Writes not synced that a crash kept (written back before it).
    pub kept_writes: u64,
    /// The synced log is damaged (the damage fault): the member refuses to start until
    /// it rejoins.
    pub damaged: bool,
    /// Rejoins so far.
    pub rejoins: u64,
    /// Writes made and not yet synced, oldest first.
    unsynced: Vec<Write>,
    draws: Draws,
}

impl Disk {
    /// A fresh member's disk.
    pub fn new(voters: &[u64], seed: u64) -> Self {
        Self {
            durable: Image::bootstrap(voters),
            slow_ns: 0,
            full: false,
            syncs: 0,
            lost_writes: 0,
            kept_writes: 0,
            damaged: false,
            rejoins: 0,
            unsynced: Vec::new(),
            draws: Draws::new(seed),
        }
    }

    /// The member crashed: of the writes not synced, some first ones (any number, drawn)
    /// reached the disk, the rest are gone. Returns how many were lost and kept.
    pub fn crash(&mut self) -> (u64, u64) {
        let unsynced = std::mem::take(&mut self.unsynced);
        let kept = self.draws.below(unsynced.len() as u64 + 1) as usize;
        for write in &unsynced[..kept] {
            self.durable.apply(write);
        }
        let lost = (unsynced.len() - kept) as u64;
        self.lost_writes += lost;
        self.kept_writes += kept as u64;
        (lost, kept as u64)
    }

    /// `--rejoin`: the log is wiped, and the term and vote kept (a damaged batch leaves
    /// the hard state readable), as a fresh member's log with them.
    pub fn rejoin(&mut self) {
        let hard_state = HardState { commit: 0, ..self.durable.hard_state.clone() };
        let voters = self.durable.conf_state.voters.clone();
        self.durable = Image { hard_state, ..Image::bootstrap(&voters) };
        self.unsynced.clear();
        self.damaged = false;
        self.rejoins += 1;
    }

    /// Planted bug: a restarted member has lost its term and vote (it keeps its commit
    /// index, which its snapshot may need).
    pub fn forget_hard_state(&mut self) {
        self.durable.hard_state.term = 0;
        self.durable.hard_state.vote = 0;
    }

    /// How long one sync takes: a fast SSD's tens of microseconds to a millisecond,
    /// plus the slow-disk fault's share.
    fn sync_ns(&mut self) -> Nanos {
        50_000 + self.draws.below(MS) + self.slow_ns
    }
}

/// The store a simulated member runs on.
#[derive(Debug)]
pub struct SimStore {
    live: Image,
    disk: Arc<Mutex<Disk>>,
    cursor: Arc<AtomicU64>,
    /// The latest snapshot, shared with the driver, which takes them.
    slot: Arc<Mutex<SnapshotSlot>>,
    /// Planted bug: a sync leaves the write it was asked for unsynced.
    ack_before_sync: bool,
}

impl SimStore {
    /// Opens what `disk` holds. `cursor` is the member's place in time, which syncs move;
    /// `slot` the snapshot the driver keeps for lagging followers.
    pub fn open(
        disk: Arc<Mutex<Disk>>,
        cursor: Arc<AtomicU64>,
        slot: Arc<Mutex<SnapshotSlot>>,
        ack_before_sync: bool,
    ) -> Self {
        let live = disk.lock().unwrap_or_else(PoisonError::into_inner).durable.clone();
        Self { live, disk, cursor, slot, ack_before_sync }
    }

    fn with_disk<R>(&self, f: impl FnOnce(&mut Disk) -> R) -> R {
        f(&mut self.disk.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes the writes so far durable, except the last `keep` of them, and takes the
    /// sync's time.
    fn sync(&mut self, keep: usize) {
        let took = self.with_disk(|disk| {
            let flush = disk.unsynced.len() - keep.min(disk.unsynced.len());
            for write in disk.unsynced.drain(..flush) {
                disk.durable.apply(&write);
            }
            disk.syncs += 1;
            disk.sync_ns()
        });
        self.cursor.fetch_add(took, Ordering::Relaxed);
    }
}

impl raft::Storage for SimStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.live.hard_state.clone(), self.live.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.live.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.live.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let start = (low - self.live.first) as usize;
        let end = (high - self.live.first) as usize;
        let mut entries = self.live.entries[start..end].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index + 1 == self.live.first {
            return Ok(self.live.before_term);
        }
        if index < self.live.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.live.entries.get((index - self.live.first) as usize) {
            Some(entry) => Ok(entry.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.live.first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.live.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).snapshot_at(request_index)
    }
}

impl LogStore for SimStore {
    fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StoreError> {
        if self.with_disk(|disk| disk.full) {
            return Err(StoreError::Engine {
                dir: "<simulated>".into(),
                source: raft_engine::Error::Io(std::io::Error::from_raw_os_error(28)),
            });
        }
        let mut writes = Vec::with_capacity(2);
        if !entries.is_empty() {
            writes.push(Write::Entries(entries.to_vec()));
        }
        if let Some(hard_state) = hard_state {
            writes.push(Write::HardState(hard_state.clone()));
        }
        let written = writes.len();
        for write in &writes {
            self.live.apply(write);
        }
        self.with_disk(|disk| disk.unsynced.extend(writes));
        if sync {
            self.sync(if self.ack_before_sync { written } else { 0 });
        }
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let meta = snapshot.get_metadata();
        // What the member now starts from is what it can send a peer that lags (as the
        // real store does): its log is gone below the snapshot.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).latest = Some(snapshot.clone());
        self.sync(0);
        for image in
            [&mut self.live, &mut self.disk.lock().unwrap_or_else(PoisonError::into_inner).durable]
        {
            image.reset_to(meta.index, meta.term);
            image.hard_state.commit = image.hard_state.commit.max(meta.index);
            image.conf_state = meta.get_conf_state().clone();
        }
        Ok(())
    }

    fn snapshot_taken(&mut self, snapshot: Snapshot, compact_to: u64) -> Result<(), StoreError> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).latest = Some(snapshot);
        self.sync(0);
        self.live.compact_to(compact_to);
        self.with_disk(|disk| disk.durable.compact_to(compact_to));
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<(), StoreError> {
        self.live.conf_state = conf_state.clone();
        self.with_disk(|disk| disk.durable.conf_state = conf_state.clone());
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.live.hard_state.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Entry::default() }
    }

    fn store(ack_before_sync: bool) -> (SimStore, Arc<Mutex<Disk>>) {
        let disk = Arc::new(Mutex::new(Disk::new(&[1, 2, 3], 1)));
        (SimStore::open(Arc::clone(&disk), Arc::default(), Arc::default(), ack_before_sync), disk)
    }

    #[test]
    fn synced_writes_and_a_first_part_of_the_others_survive_a_crash() {
        let mut survived = std::collections::BTreeSet::new();
        for seed in 0..40 {
            let disk = Arc::new(Mutex::new(Disk::new(&[1, 2, 3], seed)));
            let mut store =
                SimStore::open(Arc::clone(&disk), Arc::default(), Arc::default(), false);
            store.persist(&[entry(1, 1), entry(2, 1)], None, true).unwrap();
            store.persist(&[entry(3, 1)], None, false).unwrap();
            let vote = HardState { term: 2, vote: 3, ..HardState::default() };
            store.persist(&[entry(4, 2)], Some(&vote), false).unwrap();
            assert_eq!(raft::Storage::last_index(&store).unwrap(), 4);
            drop(store);
            let (lost, kept) = disk.lock().unwrap().crash();
            assert_eq!(lost + kept, 3, "three writes were not synced");
            let reopened = SimStore::open(disk, Arc::default(), Arc::default(), false);
            let last = raft::Storage::last_index(&reopened).unwrap();
            let term = reopened.hard_state().term;
            // In order: entry 3, then entry 4, then the vote; never a later one alone.
            let expected = [(2, 0), (3, 0), (4, 0), (4, 2)][kept as usize];
            assert_eq!((last, term), expected, "seed {seed}");
            survived.insert(kept);
        }
        assert_eq!(survived.len(), 4, "every prefix is drawn: {survived:?}");
    }

    #[test]
    fn an_overwritten_suffix_is_replaced() {
        let (mut store, _) = store(false);
        store.persist(&[entry(1, 1), entry(2, 1), entry(3, 1)], None, true).unwrap();
        store.persist(&[entry(2, 2)], None, true).unwrap();
        assert_eq!(raft::Storage::last_index(&store).unwrap(), 2);
        assert_eq!(raft::Storage::term(&store, 2).unwrap(), 2);
    }

    #[test]
    fn the_planted_bug_leaves_the_acknowledged_write_unsynced() {
        let (mut store, disk) = store(true);
        store.persist(&[entry(1, 1)], None, true).unwrap();
        store.persist(&[entry(2, 1)], None, true).unwrap();
        drop(store);
        let (lost, kept) = disk.lock().unwrap().crash();
        assert_eq!(lost + kept, 1, "the acknowledged write was never synced");
        let reopened = SimStore::open(disk, Arc::default(), Arc::default(), false);
        assert_eq!(raft::Storage::last_index(&reopened).unwrap(), 1 + kept);
    }

    #[test]
    fn syncs_take_time_on_the_members_cursor() {
        let (mut store, _) = store(false);
        store.persist(&[entry(1, 1)], None, false).unwrap();
        assert_eq!(store.cursor.load(Ordering::Relaxed), 0);
        store.persist(&[entry(2, 1)], None, true).unwrap();
        assert!(store.cursor.load(Ordering::Relaxed) >= 50_000);
    }
}
