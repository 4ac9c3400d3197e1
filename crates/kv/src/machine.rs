//! The replicated state machine: commands from the Raft log applied to the store, at
//! most once per request id, with snapshots and a state digest.

use imbl::{OrdMap, Vector};
use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::leases::Leases;
use crate::store::Store;
use crate::types::*;

/// Request ids remembered for deduplication (FIFO by apply order, so every member evicts
/// the same ids). A client retrying within this many later writes gets the first answer.
pub const DEDUP_WINDOW: usize = 65_536;

/// Identifies one client request across retries: the accepting member's session and a
/// sequence number unique within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    /// A random session id chosen by the accepting member at start.
    pub session: u64,
    /// Increasing within the session.
    pub sequence: u64,
}

/// Schedule changes remembered: the one in force and those pending, newest last.
pub const SCHEDULE_CHANGES_MAX: usize = 16;

/// Scheduled leadership settings as the cluster replicates them. Plain data: the Raft
/// layer validates and interprets them (this crate knows nothing of schedules).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSettings {
    /// Whether leadership rotates (`false`: plain Raft).
    pub rotation: bool,
    /// `fair`, `lottery` or `solana`.
    pub algorithm: String,
    /// (member id, stake) for every member.
    pub stakes: Vec<(u64, u64)>,
    /// Slot length in milliseconds.
    pub slot_ms: u64,
    /// Consecutive slots one leader holds.
    pub slots_per_turn: u64,
    /// Slots in an epoch.
    pub slots_per_epoch: u64,
    /// Cluster seed (the lottery's).
    pub seed: u64,
}

/// New settings in force from the first slot of `epoch`. The proposer anchors the epoch
/// in time (its first slot number and start, derived from the settings before it), so
/// every member derives the same slot clock from the log alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleChange {
    /// The epoch the settings start with.
    pub epoch: u64,
    /// That epoch's first slot.
    pub first_slot: u64,
    /// When that slot begins, nanoseconds since the UNIX epoch.
    pub start_unix_ns: u64,
    /// The epoch of the newest change the proposer built on (0: the bootstrap settings).
    /// Applied only if that is still the newest: two concurrent changes cannot silently
    /// undo each other's fields.
    pub based_on: u64,
    /// The settings.
    pub settings: ScheduleSettings,
}

/// A write, as it travels through the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Put one key.
    Put(PutRequest),
    /// Delete a key or range.
    DeleteRange(DeleteRangeRequest),
    /// A transaction.
    Txn(TxnRequest),
    /// Compact history.
    Compact {
        /// Revision to compact to.
        revision: i64,
    },
    /// Change the schedule settings from an epoch on (replaces pending changes that
    /// would start at or after it).
    SetSchedule(ScheduleChange),
    /// Raise an alarm (etcd's `AlarmRequest` ACTIVATE).
    RaiseAlarm(AlarmMember),
    /// Clear an alarm (etcd's `AlarmRequest` DEACTIVATE).
    ClearAlarm(AlarmMember),
    /// Grant a lease (id 0: the state machine chooses one).
    LeaseGrant {
        /// The id asked for, or 0.
        id: i64,
        /// Seconds.
        ttl: i64,
    },
    /// Revoke a lease, deleting its keys at one revision (also how a lease expires: the
    /// leader proposes it).
    LeaseRevoke {
        /// The lease.
        id: i64,
    },
    /// A keep-alive: the lease's TTL starts again from when each member applies this.
    LeaseRefresh {
        /// The lease.
        id: i64,
    },
}

/// A log entry's payload: the command and who asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Deduplication id.
    pub id: RequestId,
    /// The command.
    pub command: Command,
}

impl Proposal {
    /// Encodes for the Raft log.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self)
            .unwrap_or_else(|error| unreachable!("encoding to memory cannot fail: {error}"))
    }

    /// Decodes a log entry; `None` if it is not a proposal (corrupt or foreign).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

/// The result of applying a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A put's result.
    Put(PutResponse),
    /// A delete's result.
    DeleteRange(DeleteRangeResponse),
    /// A transaction's result.
    Txn(TxnResponse),
    /// Compaction done.
    Compact,
    /// Schedule settings recorded; in force from this epoch.
    ScheduleSet {
        /// The epoch.
        epoch: u64,
    },
    /// Another change was recorded since the proposer read the settings; nothing changed.
    ScheduleConflict {
        /// The epoch of the newest change.
        newest: u64,
    },
    /// The command was refused.
    Error(KvError),
    /// The alarm raised or cleared (empty: it already was, or was not raised).
    Alarm(Option<AlarmMember>),
    /// A lease granted.
    LeaseGranted {
        /// Its id.
        id: i64,
        /// Its TTL in seconds.
        ttl: i64,
    },
    /// A lease revoked (its keys deleted).
    LeaseRevoked {
        /// Keys deleted.
        deleted: i64,
    },
    /// A lease kept alive.
    LeaseRefreshed {
        /// Its TTL in seconds.
        ttl: i64,
    },
}

/// What applying returns: the outcome and the revision after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The outcome.
    pub outcome: Outcome,
    /// Store revision after applying.
    pub revision: i64,
    /// The id had been applied before; this is the first answer, replayed.
    pub duplicate: bool,
}

/// Store plus deduplication plus the applied log position.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    store: Store,
    applied_index: u64,
    /// Persistent collections, like the store's index: a clone for a snapshot is O(1).
    #[serde(deserialize_with = "crate::decode::vector")]
    recent: Vector<RequestId>,
    #[serde(deserialize_with = "crate::decode::ord_map")]
    answers: OrdMap<RequestId, (Outcome, i64)>,
    schedule: Vec<ScheduleChange>,
    /// Raised alarms, sorted. After the fields above, so that a state written before
    /// alarms existed decodes as the same fields without it (see
    /// [`StateMachine::restore`]).
    alarms: Vec<AlarmMember>,
    /// Leases; last, for the same reason.
    leases: Leases,
}

/// A state machine as encoded before leases.
#[derive(Deserialize)]
struct BeforeLeases {
    store: Store,
    applied_index: u64,
    #[serde(deserialize_with = "crate::decode::vector")]
    recent: Vector<RequestId>,
    #[serde(deserialize_with = "crate::decode::ord_map")]
    answers: OrdMap<RequestId, (Outcome, i64)>,
    schedule: Vec<ScheduleChange>,
    alarms: Vec<AlarmMember>,
}

/// A state machine as encoded before alarms.
#[derive(Deserialize)]
struct BeforeAlarms {
    store: Store,
    applied_index: u64,
    #[serde(deserialize_with = "crate::decode::vector")]
    recent: Vector<RequestId>,
    #[serde(deserialize_with = "crate::decode::ord_map")]
    answers: OrdMap<RequestId, (Outcome, i64)>,
    schedule: Vec<ScheduleChange>,
}

impl StateMachine {
    /// An empty state machine.
    pub fn new() -> Self {
        Self { store: Store::new(), ..Self::default() }
    }

    /// A state machine holding `store` and `leases`, as of log entry `applied_index`,
    /// with nothing in its deduplication window (a backup restored).
    pub(crate) fn rebuilt(store: Store, leases: Leases, applied_index: u64) -> Self {
        Self { store, leases, applied_index, ..Self::default() }
    }

    /// The store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Replicated schedule changes, oldest first (empty: the settings every member was
    /// configured with at bootstrap are in force).
    pub fn schedule_changes(&self) -> &[ScheduleChange] {
        &self.schedule
    }

    /// Index of the last applied log entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Records that log entry `index` (an empty or configuration entry) was applied.
    pub fn skip(&mut self, index: u64) {
        assert!(index > self.applied_index, "entry {index} applied twice");
        self.applied_index = index;
    }

    /// Applies log entry `index`, at most once per request id.
    pub fn apply(&mut self, index: u64, proposal: &Proposal) -> Applied {
        assert!(
            index > self.applied_index,
            "entry {index} applied twice (applied {})",
            self.applied_index
        );
        self.applied_index = index;
        if let Some((outcome, revision)) = self.answers.get(&proposal.id) {
            return Applied { outcome: outcome.clone(), revision: *revision, duplicate: true };
        }
        let outcome = match &proposal.command {
            Command::Put(_) | Command::Txn(_)
                if self.no_space() && adds_data(&proposal.command) =>
            {
                Err(KvError::NoSpace)
            }
            Command::Put(_) | Command::DeleteRange(_) | Command::Txn(_) => {
                self.write(&proposal.command)
            }
            Command::LeaseGrant { id, ttl } => {
                // The entry's index suggests the id: unique in the log, the same everywhere.
                let suggested = i64::try_from(index).unwrap_or(i64::MAX);
                self.leases
                    .grant(*id, *ttl, suggested)
                    .map(|id| Outcome::LeaseGranted { id, ttl: *ttl })
            }
            Command::LeaseRevoke { id } => self
                .leases
                .revoke(*id)
                .map(|keys| Outcome::LeaseRevoked { deleted: self.store.delete_keys(&keys) }),
            Command::LeaseRefresh { id } => self
                .leases
                .get(*id)
                .map(|lease| Outcome::LeaseRefreshed { ttl: lease.ttl })
                .ok_or(KvError::LeaseNotFound),
            Command::Compact { revision } => {
                self.store.compact(*revision).map(|()| Outcome::Compact)
            }
            Command::SetSchedule(change)
                if change.based_on != self.schedule.last().map_or(0, |c| c.epoch) =>
            {
                Ok(Outcome::ScheduleConflict {
                    newest: self.schedule.last().map_or(0, |c| c.epoch),
                })
            }
            Command::SetSchedule(change) => {
                self.schedule.retain(|known| known.epoch < change.epoch);
                self.schedule.push(change.clone());
                if self.schedule.len() > SCHEDULE_CHANGES_MAX {
                    self.schedule.remove(0);
                }
                Ok(Outcome::ScheduleSet { epoch: change.epoch })
            }
            Command::RaiseAlarm(alarm) => {
                Ok(Outcome::Alarm(match self.alarms.binary_search(alarm) {
                    Ok(_) => None,
                    Err(at) => {
                        self.alarms.insert(at, *alarm);
                        Some(*alarm)
                    }
                }))
            }
            Command::ClearAlarm(alarm) => Ok(Outcome::Alarm(
                self.alarms.binary_search(alarm).ok().map(|at| self.alarms.remove(at)),
            )),
        }
        .unwrap_or_else(Outcome::Error);
        let revision = self.store.revision();
        self.remember(proposal.id, outcome.clone(), revision);
        Applied { outcome, revision, duplicate: false }
    }

    /// A put, delete or transaction, with the leases' keys kept in step.
    fn write(&mut self, command: &Command) -> Result<Outcome, KvError> {
        let leases = &self.leases;
        let lease_exists = |id: i64| leases.get(id).is_some();
        let single = |op: RequestOp| TxnRequest { success: vec![op], ..TxnRequest::default() };
        let before = self.store.revision();
        let outcome = match command {
            Command::Put(put) => {
                let txn = single(RequestOp::Put(put.clone()));
                match self.store.txn_with_leases(&txn, &lease_exists)?.responses.pop() {
                    Some(ResponseOp::Put(put)) => Outcome::Put(put),
                    _ => unreachable!("a put transaction answers with a put"),
                }
            }
            Command::DeleteRange(delete) => Outcome::DeleteRange(self.store.delete_range(delete)?),
            Command::Txn(txn) => Outcome::Txn(self.store.txn_with_leases(txn, &lease_exists)?),
            _ => unreachable!("only writes are written"),
        };
        if !self.leases.is_empty() && self.store.revision() > before {
            let spans = self.watch_spans(command);
            for (key, old, new) in self.store.head_lease_moves(&spans) {
                self.leases.moved(&key, old, new);
            }
        }
        Ok(outcome)
    }

    fn remember(&mut self, id: RequestId, outcome: Outcome, revision: i64) {
        if self.recent.len() == DEDUP_WINDOW {
            if let Some(oldest) = self.recent.pop_front() {
                self.answers.remove(&oldest);
            }
        }
        self.recent.push_back(id);
        self.answers.insert(id, (outcome, revision));
        assert_eq!(self.recent.len(), self.answers.len());
    }

    /// The key ranges `command` may write, taken before it is applied (a lease's
    /// revoke writes the keys attached to it then): for [`StateMachine::events_in`].
    /// Both branches of a transaction alike; what did not change is no event.
    pub fn watch_spans(&self, command: &Command) -> Vec<(Vec<u8>, Vec<u8>)> {
        fn spans(ops: &[RequestOp], out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
            for op in ops {
                match op {
                    RequestOp::Put(put) => out.push((put.key.clone(), Vec::new())),
                    RequestOp::DeleteRange(delete) => {
                        out.push((delete.key.clone(), delete.range_end.clone()));
                    }
                    RequestOp::Txn(nested) => {
                        spans(&nested.success, out);
                        spans(&nested.failure, out);
                    }
                    RequestOp::Range(_) => {}
                }
            }
        }
        let mut named = Vec::new();
        match command {
            Command::Put(put) => named.push((put.key.clone(), Vec::new())),
            Command::DeleteRange(delete) => {
                named.push((delete.key.clone(), delete.range_end.clone()));
            }
            Command::Txn(txn) => {
                spans(&txn.success, &mut named);
                spans(&txn.failure, &mut named);
            }
            Command::LeaseRevoke { id } => {
                if let Some(lease) = self.leases.get(*id) {
                    named.extend(lease.keys().map(|key| (key.clone(), Vec::new())));
                }
            }
            _ => {}
        }
        named
    }

    /// The events of the newest revision among `spans` ([`StateMachine::watch_spans`] of
    /// the command that took it, when applying it advanced the revision).
    pub fn events_in(&self, spans: &[(Vec<u8>, Vec<u8>)]) -> Vec<Event> {
        self.store.head_events(spans)
    }

    /// The leases.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Raised alarms, sorted.
    pub fn alarms(&self) -> &[AlarmMember] {
        &self.alarms
    }

    fn no_space(&self) -> bool {
        self.alarms.iter().any(|raised| raised.alarm == AlarmType::NoSpace)
    }

    /// The whole state, for a Raft snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(self)
            .unwrap_or_else(|error| unreachable!("encoding to memory cannot fail: {error}"))
    }

    /// Restores a snapshot taken by [`StateMachine::snapshot`]. The bytes may come from a
    /// peer: decoding allocates only for what they hold, and a state this crate could
    /// never have built (one a later write would panic on) is refused.
    pub fn restore(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut machine: Self = match postcard::from_bytes(bytes) {
            Ok(machine) => machine,
            Err(error) => match postcard::from_bytes::<BeforeLeases>(bytes) {
                Ok(before) => Self {
                    store: before.store,
                    applied_index: before.applied_index,
                    recent: before.recent,
                    answers: before.answers,
                    schedule: before.schedule,
                    alarms: before.alarms,
                    leases: Leases::default(),
                },
                Err(_) => match postcard::from_bytes::<BeforeAlarms>(bytes) {
                    Ok(before) => Self {
                        store: before.store,
                        applied_index: before.applied_index,
                        recent: before.recent,
                        answers: before.answers,
                        schedule: before.schedule,
                        alarms: Vec::new(),
                        leases: Leases::default(),
                    },
                    Err(_) => return Err(SnapshotError(error.to_string())),
                },
            },
        };
        machine.store.check().map_err(SnapshotError)?;
        machine.store.recount();
        machine.leases.check(&machine.store).map_err(SnapshotError)?;
        if !machine.alarms.is_sorted_by(|a, b| a < b) {
            return Err(SnapshotError("the alarms are not a sorted set".into()));
        }
        let window: std::collections::HashSet<&RequestId> = machine.recent.iter().collect();
        if machine.recent.len() > DEDUP_WINDOW
            || window.len() != machine.recent.len()
            || machine.answers.len() != machine.recent.len()
            || machine.answers.keys().any(|id| !window.contains(id))
        {
            return Err(SnapshotError("the deduplication window is inconsistent".into()));
        }
        if machine.schedule.len() > SCHEDULE_CHANGES_MAX {
            return Err(SnapshotError(format!(
                "{} schedule changes (at most {SCHEDULE_CHANGES_MAX} are kept)",
                machine.schedule.len()
            )));
        }
        Ok(machine)
    }

    /// A digest of the replicated state (store and deduplication window, not the applied
    /// index), equal on members that applied the same entries.
    pub fn digest(&self) -> u64 {
        let mut hash = Fnv::default();
        hash.write(&postcard::to_allocvec(&self.store).unwrap_or_default());
        for id in &self.recent {
            hash.write(&id.session.to_le_bytes());
            hash.write(&id.sequence.to_le_bytes());
        }
        hash.write(&postcard::to_allocvec(&self.schedule).unwrap_or_default());
        // Only when raised, so a state without alarms digests as it did before they existed.
        if !self.alarms.is_empty() {
            hash.write(&postcard::to_allocvec(&self.alarms).unwrap_or_default());
        }
        if !self.leases.is_empty() {
            hash.write(&postcard::to_allocvec(&self.leases).unwrap_or_default());
        }
        hash.0
    }
}

/// Whether a command stores more data: a put, or a transaction with a put in any branch
/// (etcd's quota counts every branch).
fn adds_data(command: &Command) -> bool {
    fn ops_put(ops: &[RequestOp]) -> bool {
        ops.iter().any(|op| match op {
            RequestOp::Put(_) => true,
            RequestOp::Txn(nested) => ops_put(&nested.success) || ops_put(&nested.failure),
            _ => false,
        })
    }
    match command {
        Command::Put(_) => true,
        Command::Txn(txn) => ops_put(&txn.success) || ops_put(&txn.failure),
        _ => false,
    }
}

/// A snapshot that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("snapshot does not decode: {0}")]
pub struct SnapshotError(pub String);

/// FNV-1a, 64-bit: stable across platforms and versions, unlike `std`'s hasher.
pub(crate) struct Fnv(pub(crate) u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_encode_as_they_did_before_they_were_byte_strings() {
        // Logs and snapshots written when keys and values went through serde as
        // sequences of u8 (a call per byte) must still decode: postcard writes a byte
        // string and a sequence of u8 the same way.
        #[derive(Serialize)]
        struct Before {
            key: Vec<u8>,
            create_revision: i64,
            mod_revision: i64,
            version: i64,
            value: Vec<u8>,
            lease: i64,
        }
        let value: Vec<u8> = (0..=255).collect();
        let now = KeyValue {
            key: b"key".to_vec(),
            create_revision: 2,
            mod_revision: 300,
            version: 1,
            value: value.clone(),
            lease: 0,
        };
        let before = Before {
            key: b"key".to_vec(),
            create_revision: 2,
            mod_revision: 300,
            version: 1,
            value,
            lease: 0,
        };
        let old_bytes = postcard::to_allocvec(&before).unwrap();
        assert_eq!(postcard::to_allocvec(&now).unwrap(), old_bytes);
        assert_eq!(postcard::from_bytes::<KeyValue>(&old_bytes).unwrap(), now);
    }

    fn change(epoch: u64, based_on: u64) -> Proposal {
        Proposal {
            id: RequestId { session: 1, sequence: epoch * 1_000 + based_on },
            command: Command::SetSchedule(ScheduleChange {
                epoch,
                first_slot: epoch * 10,
                start_unix_ns: epoch * 1_000,
                based_on,
                settings: ScheduleSettings {
                    rotation: true,
                    algorithm: "fair".into(),
                    stakes: vec![(1, 1), (2, 1)],
                    slot_ms: 100,
                    slots_per_turn: 2,
                    slots_per_epoch: 10,
                    seed: 0,
                },
            }),
        }
    }

    #[test]
    fn a_schedule_change_replaces_pending_ones_at_or_after_its_epoch() {
        let mut machine = StateMachine::new();
        machine.apply(1, &change(3, 0));
        machine.apply(2, &change(5, 3));
        let applied = machine.apply(3, &change(4, 5));
        assert_eq!(applied.outcome, Outcome::ScheduleSet { epoch: 4 });
        let epochs: Vec<u64> = machine.schedule_changes().iter().map(|c| c.epoch).collect();
        assert_eq!(epochs, [3, 4]);
        // Snapshots carry the changes, and the digest covers them.
        let restored = StateMachine::restore(&machine.snapshot()).map_err(|e| e.0);
        assert_eq!(
            restored.as_ref().map(StateMachine::schedule_changes),
            Ok(machine.schedule_changes())
        );
        let mut other = StateMachine::new();
        other.apply(1, &change(3, 0));
        assert_ne!(other.digest(), machine.digest());
    }

    #[test]
    fn a_change_built_on_stale_settings_is_refused() {
        let mut machine = StateMachine::new();
        machine.apply(1, &change(3, 0));
        // A second proposer also read the bootstrap settings.
        let applied = machine.apply(2, &change(4, 0));
        assert_eq!(applied.outcome, Outcome::ScheduleConflict { newest: 3 });
        assert_eq!(machine.schedule_changes().len(), 1);
    }

    #[test]
    fn at_most_the_newest_changes_are_kept() {
        let mut machine = StateMachine::new();
        for epoch in 1..=(SCHEDULE_CHANGES_MAX as u64 + 5) {
            machine.apply(epoch, &change(epoch, epoch - 1));
        }
        assert_eq!(machine.schedule_changes().len(), SCHEDULE_CHANGES_MAX);
        assert_eq!(machine.schedule_changes()[0].epoch, 6);
    }
}

#[cfg(test)]
mod restore_tests {
    use proptest::prelude::*;

    use super::*;

    fn put(sequence: u64, key: &[u8]) -> Proposal {
        Proposal {
            id: RequestId { session: 7, sequence },
            command: Command::Put(PutRequest {
                key: key.to_vec(),
                value: vec![sequence as u8; 3],
                ..PutRequest::default()
            }),
        }
    }

    fn written() -> StateMachine {
        let mut machine = StateMachine::new();
        for (index, key) in [b"a", b"b", b"a", b"c"].iter().enumerate() {
            machine.apply(index as u64 + 1, &put(index as u64, *key));
        }
        machine
    }

    /// After a successful restore, writing and compacting must not panic.
    fn exercise(mut machine: StateMachine) {
        let next = machine.applied_index() + 1;
        for (offset, key) in [&b"a"[..], b"b", b"z"].into_iter().enumerate() {
            machine.apply(next + offset as u64, &put(1_000 + offset as u64, key));
        }
        let _ = machine.store.compact(machine.store.revision());
    }

    #[test]
    fn a_snapshot_restores_to_the_same_state() {
        let machine = written();
        assert_eq!(StateMachine::restore(&machine.snapshot()), Ok(machine));
    }

    #[test]
    fn a_history_that_goes_back_in_revision_is_refused() {
        let mut machine = written();
        machine.store.revision = 2;
        let error = StateMachine::restore(&machine.snapshot()).unwrap_err();
        assert!(error.0.contains("after"), "{error}");
    }

    #[test]
    fn a_window_without_its_answers_is_refused() {
        let mut machine = written();
        machine.answers = OrdMap::new();
        machine.recent = Vector::from(vec![RequestId { session: 1, sequence: 1 }]);
        machine.answers.insert(RequestId { session: 2, sequence: 2 }, (Outcome::Compact, 1));
        let error = StateMachine::restore(&machine.snapshot()).unwrap_err();
        assert!(error.0.contains("deduplication"), "{error}");
    }

    #[test]
    fn alarms_survive_a_snapshot_and_a_state_from_before_alarms_restores() {
        let mut machine = written();
        let digest_without = machine.digest();
        // The layout before alarms: the same fields without the last.
        let before = postcard::to_allocvec(&(
            &machine.store,
            machine.applied_index,
            &machine.recent,
            &machine.answers,
            &machine.schedule,
        ))
        .unwrap();
        assert_eq!(StateMachine::restore(&before).unwrap(), machine);

        let no_space = AlarmMember { member_id: 2, alarm: AlarmType::NoSpace };
        let index = machine.applied_index() + 1;
        let raise = Proposal {
            id: RequestId { session: 8, sequence: 1 },
            command: Command::RaiseAlarm(no_space),
        };
        machine.apply(index, &raise);
        let restored = StateMachine::restore(&machine.snapshot()).unwrap();
        assert_eq!(restored.alarms(), &[no_space]);
        assert_ne!(restored.digest(), digest_without);
    }

    proptest! {
        #[test]
        fn damaged_snapshots_are_refused_or_usable(
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = written().snapshot();
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            if let Ok(machine) = StateMachine::restore(&bytes) {
                exercise(machine);
            }
        }

        #[test]
        fn arbitrary_bytes_are_refused_or_usable(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(machine) = StateMachine::restore(&bytes) {
                exercise(machine);
            }
        }
    }
}
