//! The multi-version store: every key's history since the last compaction.
//!
//! A write transaction advances the cluster revision by one; every key it writes records
//! that revision. A read at revision R sees, per key, the newest entry at or below R.
//! Compaction at C drops what no read at or after C can see.
//!
//! The key index is a persistent B-tree (`imbl::OrdMap`) whose values are shared
//! histories: cloning the store is O(1), and a write after a clone copies only the tree
//! nodes on its path and that key's history. So a snapshot is a clone taken in the Raft
//! loop and encoded on another thread while writes go on.

use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;

use serde::{Deserialize, Serialize};

use crate::types::*;

/// One entry of a key's history: its state as of `revision` (`None`: deleted).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) revision: i64,
    pub(crate) kv: Option<KeyValue>,
}

/// The multi-version key-value store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    #[serde(deserialize_with = "crate::decode::ord_map")]
    pub(crate) keys: OrdMap<Vec<u8>, Arc<Vec<Entry>>>,
    pub(crate) revision: i64,
    pub(crate) compact_revision: i64,
    /// History entries written by the running transaction (scratch, not state).
    #[serde(skip)]
    recorded: usize,
    /// [`Store::size_bytes`], kept as entries come and go (derived, not encoded).
    #[serde(skip)]
    bytes: u64,
}

/// Bookkeeping bytes counted per history entry besides its key and value: revisions,
/// counters and the index's share, about what the entry costs in memory.
pub const ENTRY_OVERHEAD_BYTES: u64 = 96;

fn entry_bytes(key: &[u8], entry: &Entry) -> u64 {
    let value = entry.kv.as_ref().map_or(0, |kv| kv.value.len());
    ENTRY_OVERHEAD_BYTES + (key.len() + value) as u64
}

/// What a transaction's check has seen so far.
struct Checked<'a> {
    /// Keys put.
    keys: Vec<Vec<u8>>,
    /// Ranges deleted.
    deleted: Vec<(Vec<u8>, Vec<u8>)>,
    lease_exists: &'a dyn Fn(i64) -> bool,
}

/// The key set a request names.
enum Span<'a> {
    One(&'a [u8]),
    From(&'a [u8]),
    Between(&'a [u8], &'a [u8]),
}

fn span<'a>(key: &'a [u8], range_end: &'a [u8]) -> Span<'a> {
    if range_end.is_empty() {
        Span::One(key)
    } else if range_end == [0] {
        // "\0" as the end means every key at or after `key` ("\0" as the key too: all).
        Span::From(key)
    } else {
        Span::Between(key, range_end)
    }
}

impl Store {
    /// An empty store at revision 1 (etcd starts counting there).
    pub fn new() -> Self {
        Self { keys: OrdMap::new(), revision: 1, compact_revision: 0, recorded: 0, bytes: 0 }
    }

    /// The store's size: every history entry's key, value and [`ENTRY_OVERHEAD_BYTES`].
    /// Like etcd's backend size it counts history that compaction has not dropped yet;
    /// unlike it, compaction frees the space at once (nothing to defragment).
    pub fn size_bytes(&self) -> u64 {
        self.bytes
    }

    /// Counts [`Store::size_bytes`] afresh, for a store that was decoded.
    pub(crate) fn recount(&mut self) {
        self.bytes = self
            .keys
            .iter()
            .flat_map(|(key, history)| history.iter().map(move |entry| entry_bytes(key, entry)))
            .sum();
    }

    /// Checks what every write relies on, for a store decoded from outside: revisions in
    /// order, each history non-empty and growing, every entry's key and revision its own.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.revision < 1 || !(0..=self.revision).contains(&self.compact_revision) {
            return Err(format!(
                "revision {} with compact revision {} is out of order",
                self.revision, self.compact_revision
            ));
        }
        for (key, history) in &self.keys {
            let name = || String::from_utf8_lossy(key).into_owned();
            if history.is_empty() {
                return Err(format!("key {:?} has an empty history", name()));
            }
            let mut previous = 0;
            for entry in history.iter() {
                if entry.revision <= previous || entry.revision > self.revision {
                    return Err(format!(
                        "key {:?} has revision {} after {previous} (store revision {})",
                        name(),
                        entry.revision,
                        self.revision
                    ));
                }
                previous = entry.revision;
                if let Some(kv) = &entry.kv {
                    let consistent = kv.key == *key
                        && kv.mod_revision == entry.revision
                        && (1..=kv.mod_revision).contains(&kv.create_revision)
                        && kv.version >= 1;
                    if !consistent {
                        return Err(format!(
                            "key {:?} at revision {} is inconsistent",
                            name(),
                            entry.revision
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The oldest revision that can still be read (0: never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Every history entry the store holds, by key and then revision: the key, the
    /// revision that wrote it and what it wrote (`None`: a delete).
    pub fn history(&self) -> impl Iterator<Item = (&[u8], i64, Option<&KeyValue>)> + '_ {
        self.keys.iter().flat_map(|(key, history)| {
            history.iter().map(move |entry| (key.as_slice(), entry.revision, entry.kv.as_ref()))
        })
    }

    pub(crate) fn keys_in<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Vec<Entry>)> + 'a> {
        let shared = |(key, history): (&'a Vec<u8>, &'a Arc<Vec<Entry>>)| (key, &**history);
        match span(key, range_end) {
            Span::One(key) => Box::new(self.keys.get_key_value(key).into_iter().map(shared)),
            Span::From(key) => Box::new(
                self.keys.range::<_, [u8]>((Bound::Included(key), Bound::Unbounded)).map(shared),
            ),
            Span::Between(key, end) if key < end => Box::new(
                self.keys
                    .range::<_, [u8]>((Bound::Included(key), Bound::Excluded(end)))
                    .map(shared),
            ),
            Span::Between(..) => Box::new(std::iter::empty()),
        }
    }

    /// The key's state as seen at `revision`.
    fn visible(history: &[Entry], revision: i64) -> Option<&KeyValue> {
        let index = history.partition_point(|entry| entry.revision <= revision);
        history[..index].last()?.kv.as_ref()
    }

    /// The key's latest state.
    fn current(&self, key: &[u8]) -> Option<&KeyValue> {
        self.keys.get(key)?.last()?.kv.as_ref()
    }

    pub(crate) fn check_revision(&self, revision: i64) -> Result<i64, KvError> {
        if revision <= 0 {
            return Ok(self.revision);
        }
        if revision < self.compact_revision {
            return Err(KvError::Compacted { compact_revision: self.compact_revision });
        }
        if revision > self.revision {
            return Err(KvError::FutureRevision);
        }
        Ok(revision)
    }

    /// Reads keys; `pending` is the revision a running transaction writes at (reads
    /// inside a transaction see its earlier writes).
    pub(crate) fn range_at(
        &self,
        request: &RangeRequest,
        pending: Option<i64>,
    ) -> Result<RangeResponse, KvError> {
        let at = match pending {
            Some(pending) if request.revision <= 0 => pending,
            _ => self.check_revision(request.revision)?,
        };
        let mut kvs: Vec<KeyValue> = self
            .keys_in(&request.key, &request.range_end)
            .filter_map(|(_, history)| Self::visible(history, at).cloned())
            .collect();
        let count = kvs.len() as i64;
        let bound = |value: i64, min: i64, max: i64| {
            (min <= 0 || value >= min) && (max <= 0 || value <= max)
        };
        kvs.retain(|kv| {
            bound(kv.mod_revision, request.min_mod_revision, request.max_mod_revision)
                && bound(
                    kv.create_revision,
                    request.min_create_revision,
                    request.max_create_revision,
                )
        });
        sort(&mut kvs, request.sort_order, request.sort_target);
        let limit = usize::try_from(request.limit).unwrap_or(0);
        let more = limit > 0 && kvs.len() > limit;
        if limit > 0 {
            kvs.truncate(limit);
        }
        if request.count_only {
            kvs.clear();
        } else if request.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse { kvs, more, count })
    }

    /// Reads keys at the request's revision.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, KvError> {
        self.range_at(request, None)
    }

    fn record(&mut self, key: &[u8], revision: i64, kv: Option<KeyValue>) {
        let history = Arc::make_mut(self.keys.entry(key.to_vec()).or_default());
        assert!(history.last().is_none_or(|last| last.revision < revision), "history must grow");
        let entry = Entry { revision, kv };
        self.bytes += entry_bytes(key, &entry);
        history.push(entry);
        self.recorded += 1;
    }

    /// Applies a put at `revision` (validated already).
    fn put_at(&mut self, request: &PutRequest, revision: i64) -> PutResponse {
        let previous = self.current(&request.key).cloned();
        let kv = KeyValue {
            key: request.key.clone(),
            create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            value: match (&previous, request.ignore_value) {
                (Some(previous), true) => previous.value.clone(),
                _ => request.value.clone(),
            },
            lease: match (&previous, request.ignore_lease) {
                (Some(previous), true) => previous.lease,
                _ => request.lease,
            },
        };
        self.record(&request.key, revision, Some(kv));
        PutResponse { prev_kv: if request.prev_kv { previous } else { None } }
    }

    fn delete_at(&mut self, request: &DeleteRangeRequest, revision: i64) -> DeleteRangeResponse {
        let doomed: Vec<KeyValue> = self
            .keys_in(&request.key, &request.range_end)
            .filter_map(|(_, history)| history.last()?.kv.clone())
            .collect();
        for kv in &doomed {
            self.record(&kv.key, revision, None);
        }
        DeleteRangeResponse {
            deleted: doomed.len() as i64,
            prev_kvs: if request.prev_kv { doomed } else { Vec::new() },
        }
    }

    fn compare_holds(&self, compare: &Compare) -> bool {
        let kvs: Vec<&KeyValue> = self
            .keys_in(&compare.key, &compare.range_end)
            .filter_map(|(_, history)| history.last()?.kv.as_ref())
            .collect();
        if kvs.is_empty() {
            // A missing key compares as zero; its value cannot be compared at all.
            if matches!(compare.target, CompareTarget::Value(_)) {
                return false;
            }
            return compare_one(&KeyValue::default(), compare);
        }
        kvs.into_iter().all(|kv| compare_one(kv, compare))
    }

    /// Which branch each (nested) transaction takes, decided on the state before any of
    /// its operations run, as etcd does.
    fn txn_path(&self, txn: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = txn.compare.iter().all(|compare| self.compare_holds(compare));
        path.push(succeeded);
        let ops = if succeeded { &txn.success } else { &txn.failure };
        for op in ops {
            if let RequestOp::Txn(nested) = op {
                self.txn_path(nested, path);
            }
        }
    }

    /// Checks the branch the path selects before anything is applied, so a transaction
    /// fails whole or applies whole.
    fn check_ops(
        &self,
        ops: &[RequestOp],
        path: &mut std::slice::Iter<'_, bool>,
        checked: &mut Checked<'_>,
    ) -> Result<(), KvError> {
        for op in ops {
            match op {
                RequestOp::Range(range) => {
                    self.check_revision(range.revision)?;
                }
                RequestOp::Put(put) => {
                    if put.key.is_empty() {
                        return Err(KvError::EmptyKey);
                    }
                    if (put.ignore_value || put.ignore_lease) && self.current(&put.key).is_none() {
                        return Err(KvError::KeyNotFound);
                    }
                    if put.lease != 0 && !put.ignore_lease && !(checked.lease_exists)(put.lease) {
                        return Err(KvError::LeaseNotFound);
                    }
                    if checked.keys.contains(&put.key) {
                        return Err(KvError::DuplicateKey);
                    }
                    checked.keys.push(put.key.clone());
                }
                RequestOp::DeleteRange(delete) => {
                    if delete.key.is_empty() {
                        return Err(KvError::EmptyKey);
                    }
                    checked.deleted.push((delete.key.clone(), delete.range_end.clone()));
                }
                RequestOp::Txn(nested) => {
                    let succeeded = *path.next().unwrap_or(&false);
                    let branch = if succeeded { &nested.success } else { &nested.failure };
                    self.check_ops(branch, path, checked)?;
                }
            }
        }
        // A key both put and deleted in one transaction is as ambiguous as two puts.
        for key in checked.keys.iter() {
            if checked.deleted.iter().any(|(start, end)| span_contains(key, start, end)) {
                return Err(KvError::DuplicateKey);
            }
        }
        Ok(())
    }

    fn run_ops(
        &mut self,
        ops: &[RequestOp],
        path: &mut std::slice::Iter<'_, bool>,
        revision: i64,
    ) -> Result<Vec<ResponseOp>, KvError> {
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(range) => ResponseOp::Range(self.range_at(range, Some(revision))?),
                RequestOp::Put(put) => ResponseOp::Put(self.put_at(put, revision)),
                RequestOp::DeleteRange(delete) => {
                    ResponseOp::DeleteRange(self.delete_at(delete, revision))
                }
                RequestOp::Txn(nested) => {
                    let succeeded = *path.next().unwrap_or(&false);
                    let branch = if succeeded { &nested.success } else { &nested.failure };
                    ResponseOp::Txn(TxnResponse {
                        succeeded,
                        responses: self.run_ops(branch, path, revision)?,
                    })
                }
            });
        }
        Ok(responses)
    }

    /// Runs a transaction atomically; writes share one new revision. A store alone has
    /// no leases: a put that names one is refused (see [`Store::txn_with_leases`]).
    pub fn txn(&mut self, txn: &TxnRequest) -> Result<TxnResponse, KvError> {
        self.txn_with_leases(txn, &|_| false)
    }

    /// [`Store::txn`], where a put may name a lease for which `lease_exists` holds.
    pub fn txn_with_leases(
        &mut self,
        txn: &TxnRequest,
        lease_exists: &dyn Fn(i64) -> bool,
    ) -> Result<TxnResponse, KvError> {
        if txn.success.len().max(txn.failure.len()) > TXN_OPS_MAX {
            return Err(KvError::TooManyOps);
        }
        let mut path = Vec::new();
        self.txn_path(txn, &mut path);
        let succeeded = path[0];
        let branch = if succeeded { &txn.success } else { &txn.failure };
        let mut written = Checked { keys: Vec::new(), deleted: Vec::new(), lease_exists };
        self.check_ops(branch, &mut path[1..].iter(), &mut written)?;
        let revision = self.revision + 1;
        self.recorded = 0;
        let responses = self.run_ops(branch, &mut path[1..].iter(), revision)?;
        // Only a transaction that wrote something takes a revision.
        if self.recorded > 0 {
            self.revision = revision;
        }
        self.recorded = 0;
        Ok(TxnResponse { succeeded, responses })
    }

    /// A put as a one-operation transaction.
    pub fn put(&mut self, request: &PutRequest) -> Result<PutResponse, KvError> {
        let txn =
            TxnRequest { success: vec![RequestOp::Put(request.clone())], ..TxnRequest::default() };
        match self.txn(&txn)?.responses.pop() {
            Some(ResponseOp::Put(response)) => Ok(response),
            _ => unreachable!("a put transaction answers with a put"),
        }
    }

    /// A delete as a one-operation transaction.
    pub fn delete_range(
        &mut self,
        request: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, KvError> {
        let txn = TxnRequest {
            success: vec![RequestOp::DeleteRange(request.clone())],
            ..TxnRequest::default()
        };
        match self.txn(&txn)?.responses.pop() {
            Some(ResponseOp::DeleteRange(response)) => Ok(response),
            _ => unreachable!("a delete transaction answers with a delete"),
        }
    }

    /// Deletes `keys` (those that exist) at one new revision, as a lease's revoke does,
    /// however many; how many were deleted.
    pub(crate) fn delete_keys(&mut self, keys: &[Vec<u8>]) -> i64 {
        let revision = self.revision + 1;
        let mut deleted = 0;
        for key in keys {
            if self.current(key).is_some() {
                self.record(key, revision, None);
                deleted += 1;
            }
        }
        if deleted > 0 {
            self.revision = revision;
        }
        self.recorded = 0;
        deleted
    }

    /// The lease key `key` is attached to now, if any.
    pub(crate) fn lease_of(&self, key: &[u8]) -> Option<i64> {
        self.current(key).map(|kv| kv.lease).filter(|lease| *lease != 0)
    }

    /// How many keys are attached to a lease now.
    pub(crate) fn leased_keys(&self) -> usize {
        self.keys
            .values()
            .filter(|history| {
                history.last().and_then(|e| e.kv.as_ref()).is_some_and(|kv| kv.lease != 0)
            })
            .count()
    }

    /// Forgets history before `revision`: reads below it fail with `Compacted`.
    pub fn compact(&mut self, revision: i64) -> Result<(), KvError> {
        if revision <= self.compact_revision {
            return Err(KvError::Compacted { compact_revision: self.compact_revision });
        }
        if revision > self.revision {
            return Err(KvError::FutureRevision);
        }
        // Keep the newest entry at or below `revision` (what a read at it sees) and
        // everything after; a tombstone seen at `revision` is dropped as well. Histories
        // that keep everything stay shared with earlier clones.
        let changed: Vec<(Vec<u8>, usize)> = self
            .keys
            .iter()
            .filter_map(|(key, history)| {
                let visible = history.partition_point(|entry| entry.revision <= revision);
                let mut keep_from = visible.saturating_sub(1);
                if history
                    .get(keep_from)
                    .is_some_and(|entry| entry.revision <= revision && entry.kv.is_none())
                {
                    keep_from += 1;
                }
                (keep_from > 0).then(|| (key.clone(), keep_from))
            })
            .collect();
        for (key, keep_from) in changed {
            let emptied = self.keys.get_mut(&key).is_some_and(|history| {
                // Moves the kept entries; copies them only if a snapshot shares them.
                let history = Arc::make_mut(history);
                let freed: u64 =
                    history.drain(..keep_from).map(|entry| entry_bytes(&key, &entry)).sum();
                self.bytes -= freed;
                history.is_empty()
            });
            if emptied {
                self.keys.remove(&key);
            }
        }
        self.compact_revision = revision;
        Ok(())
    }
}

pub(crate) fn span_contains(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match span(start, end) {
        Span::One(one) => key == one,
        Span::From(from) => key >= from,
        Span::Between(from, to) => key >= from && key < to,
    }
}

fn compare_one(kv: &KeyValue, compare: &Compare) -> bool {
    let ordering = match &compare.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
    };
    match compare.result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

fn sort(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    // etcd: no order with a non-key target means ascending; key order is the default.
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    kvs.sort_by(|a, b| {
        let ordering = match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if order == SortOrder::Descend {
            ordering.reverse()
        } else {
            ordering
        }
    });
}

#[cfg(test)]
mod size_tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn the_kept_size_is_what_counting_afresh_finds(
            ops in prop::collection::vec((0u8..4, 0u8..6, 0usize..40), 1..80),
        ) {
            let mut store = Store::new();
            for (kind, key, length) in ops {
                let key = vec![b'k', key];
                let _ = match kind {
                    0 | 1 => store
                        .put(&PutRequest { key, value: vec![7; length], ..Default::default() })
                        .map(drop),
                    2 => store.delete_range(&DeleteRangeRequest { key, ..Default::default() }).map(drop),
                    _ => store.compact(store.revision() - (length as i64 % 3)),
                };
                let kept = store.size_bytes();
                store.recount();
                prop_assert_eq!(kept, store.size_bytes());
            }
        }
    }
}
