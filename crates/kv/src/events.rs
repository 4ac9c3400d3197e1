//! Watch events: what each revision changed, read from the store's history.
//!
//! Every write transaction takes one revision and records an entry per key it wrote, so
//! the events of revision R are the history entries at R: a put where the entry holds a
//! value, a delete where it is a tombstone. The previous value is the entry before it.
//! The same history answers a watcher that resumes from an old revision (until compaction
//! drops it) and the watchers that follow the newest writes, so both see one stream.
//!
//! etcd's HashKV reads the same history, so members that applied the same log agree on
//! it at a revision.
//!
//! Within one revision events come in key order, live and replayed alike (etcd lists a
//! transaction's events in operation order; no client relies on the order inside one
//! revision, and one order for both keeps a resumed stream identical to a live one).

use serde::{Deserialize, Serialize};

use crate::store::{span_contains, Entry, Store};
use crate::types::*;

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// Written.
    Put,
    /// Deleted.
    Delete,
}

/// One key's change at one revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key as written; for a delete only the key and the deleting revision (etcd's
    /// form).
    pub kv: KeyValue,
    /// The key before this change, when it existed and its history still holds it.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }

    /// Bytes the event carries (keys and values), for memory and message budgets.
    pub fn size_bytes(&self) -> usize {
        let kv = |kv: &KeyValue| kv.key.len() + kv.value.len() + EVENT_OVERHEAD_BYTES;
        kv(&self.kv) + self.prev_kv.as_ref().map_or(0, kv)
    }

    fn from_history(key: &[u8], history: &[Entry], at: usize) -> Self {
        let entry = &history[at];
        let prev_kv = at.checked_sub(1).and_then(|before| history[before].kv.clone());
        match &entry.kv {
            Some(kv) => Event { kind: EventKind::Put, kv: kv.clone(), prev_kv },
            None => Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.to_vec(),
                    mod_revision: entry.revision,
                    ..KeyValue::default()
                },
                prev_kv,
            },
        }
    }
}

/// Counters and framing counted per key-value besides its key and value.
pub const EVENT_OVERHEAD_BYTES: usize = 48;

/// Events read from history: whole revisions from the one asked for, and how far they go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The events, by revision, then key.
    pub events: Vec<Event>,
    /// Every event through this revision is in `events` (the next read starts after it).
    pub through: i64,
}

impl Store {
    /// The events in `key`..`range_end` (a range as [`RangeRequest`] names one) at
    /// revisions `from` through the store's, whole revisions only, stopping after the
    /// revision that takes the events past `budget_bytes` (at least one revision is read,
    /// however large). `Compacted` when `from` is below the compaction revision: those
    /// events are gone.
    pub fn changes(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        budget_bytes: usize,
    ) -> Result<Changes, KvError> {
        if from < self.compact_revision {
            return Err(KvError::Compacted { compact_revision: self.compact_revision });
        }
        // Positions first (cheap), values only for the revisions that fit the budget.
        let mut found: Vec<(i64, &Vec<u8>, &[Entry], usize)> = Vec::new();
        for (key, history) in self.keys_in(key, range_end) {
            let first = history.partition_point(|entry| entry.revision < from);
            for at in first..history.len() {
                found.push((history[at].revision, key, history, at));
            }
        }
        // Stable: keys stay in order within a revision.
        found.sort_by_key(|(revision, ..)| *revision);
        let mut changes = Changes { events: Vec::new(), through: self.revision };
        let mut bytes = 0;
        for (revision, key, history, at) in found {
            if bytes > budget_bytes
                && changes.events.last().is_some_and(|e| e.revision() < revision)
            {
                changes.through = revision - 1;
                break;
            }
            let event = Event::from_history(key, history, at);
            bytes += event.size_bytes();
            changes.events.push(event);
        }
        Ok(changes)
    }

    /// The events of the store's newest revision among the keys `spans` names (each a key
    /// and range end, as a request names them): every such key whose history ends at that
    /// revision. Spans may name keys the revision did not touch; they are not events.
    pub fn head_events(&self, spans: &[(Vec<u8>, Vec<u8>)]) -> Vec<Event> {
        let mut events: Vec<Event> = Vec::new();
        for (key, range_end) in spans {
            for (key, history) in self.keys_in(key, range_end) {
                let at = history.len() - 1;
                if history[at].revision == self.revision {
                    events.push(Event::from_history(key, history, at));
                }
            }
        }
        events.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
        events.dedup_by(|a, b| a.kv.key == b.kv.key);
        events
    }
}

impl Store {
    /// etcd's HashKV: a hash of every history entry (key, revision, value or deletion) at
    /// or below `revision` (0: the current one) that compaction kept, with the compaction
    /// revision. Members that applied the same log agree on it at the same revision.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64), KvError> {
        let at = self.check_revision(revision)?;
        let mut hash = crate::machine::Fnv::default();
        hash.write(&self.compact_revision.to_le_bytes());
        for (key, history) in &self.keys {
            for entry in history.iter().take_while(|entry| entry.revision <= at) {
                hash.write(&(key.len() as u64).to_le_bytes());
                hash.write(key);
                hash.write(&entry.revision.to_le_bytes());
                match &entry.kv {
                    Some(kv) => {
                        hash.write(&[1]);
                        hash.write(&kv.create_revision.to_le_bytes());
                        hash.write(&kv.version.to_le_bytes());
                        hash.write(&kv.lease.to_le_bytes());
                        hash.write(&(kv.value.len() as u64).to_le_bytes());
                        hash.write(&kv.value);
                    }
                    None => hash.write(&[0]),
                }
            }
        }
        // Folded to etcd's 32 bits.
        Ok(((hash.0 >> 32) as u32 ^ hash.0 as u32, self.compact_revision))
    }

    /// For every key among `spans` written at the newest revision: the lease it was
    /// attached to before and the one after (0: none).
    pub(crate) fn head_lease_moves(
        &self,
        spans: &[(Vec<u8>, Vec<u8>)],
    ) -> Vec<(Vec<u8>, i64, i64)> {
        let mut moves = Vec::new();
        for (key, range_end) in spans {
            for (key, history) in self.keys_in(key, range_end) {
                let at = history.len() - 1;
                if history[at].revision != self.revision {
                    continue;
                }
                let lease = |entry: Option<&Entry>| {
                    entry.and_then(|e| e.kv.as_ref()).map_or(0, |kv| kv.lease)
                };
                let old = lease(at.checked_sub(1).map(|before| &history[before]));
                let new = lease(Some(&history[at]));
                if old != new {
                    moves.push((key.clone(), old, new));
                }
            }
        }
        moves.sort();
        moves.dedup();
        moves
    }
}

/// Whether `key` is in the range `start`..`end` names (one key, from a key, or between).
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    span_contains(key, start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &mut Store, key: &str, value: &str) {
        store
            .put(&PutRequest { key: key.into(), value: value.into(), ..PutRequest::default() })
            .unwrap();
    }

    fn delete(store: &mut Store, key: &str, range_end: &str) {
        store
            .delete_range(&DeleteRangeRequest {
                key: key.into(),
                range_end: range_end.into(),
                ..DeleteRangeRequest::default()
            })
            .unwrap();
    }

    fn summary(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|event| {
                let prev = event
                    .prev_kv
                    .as_ref()
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                format!(
                    "{} {:?} {}={} prev={}",
                    event.revision(),
                    event.kind,
                    String::from_utf8_lossy(&event.kv.key),
                    String::from_utf8_lossy(&event.kv.value),
                    prev.unwrap_or_else(|| "-".into())
                )
            })
            .collect()
    }

    #[test]
    fn history_replays_puts_and_deletes_with_their_previous_values() {
        let mut store = Store::new();
        put(&mut store, "a", "1"); // 2
        put(&mut store, "b", "1"); // 3
        put(&mut store, "a", "2"); // 4
        delete(&mut store, "a", "c"); // 5
        put(&mut store, "c", "1"); // 6
        let all = store.changes(b"a", b"c", 3, usize::MAX).unwrap();
        assert_eq!(
            summary(&all.events),
            ["3 Put b=1 prev=-", "4 Put a=2 prev=1", "5 Delete a= prev=2", "5 Delete b= prev=1"]
        );
        assert_eq!(all.through, 6);
        let one = store.changes(b"a", b"", 0, usize::MAX).unwrap();
        assert_eq!(one.events.len(), 3);
        assert_eq!(one.events[2].kv.mod_revision, 5);
        assert_eq!(
            one.events[2].kv.create_revision, 0,
            "a delete carries the key and revision only"
        );
    }

    #[test]
    fn a_budget_ends_the_read_after_a_whole_revision() {
        let mut store = Store::new();
        put(&mut store, "a", "1"); // 2
        delete(&mut store, "a", ""); // 3
        put(&mut store, "a", "2"); // 4
        put(&mut store, "b", "2"); // 5
        let first = store.changes(b"a", b"\0", 0, 1).unwrap();
        assert_eq!(summary(&first.events), ["2 Put a=1 prev=-"]);
        assert_eq!(first.through, 2);
        // The delete (with its previous pair) fits, the put after it takes the read past.
        let budget = first.events[0].size_bytes() * 2 + 10;
        let second = store.changes(b"a", b"\0", first.through + 1, budget).unwrap();
        assert_eq!(summary(&second.events), ["3 Delete a= prev=1", "4 Put a=2 prev=-"]);
        assert_eq!(second.through, 4);
        let rest = store.changes(b"a", b"\0", second.through + 1, usize::MAX).unwrap();
        assert_eq!(summary(&rest.events), ["5 Put b=2 prev=-"]);
        assert_eq!(rest.through, 5);
    }

    #[test]
    fn compacted_history_is_an_error_naming_the_compaction() {
        let mut store = Store::new();
        put(&mut store, "a", "1");
        put(&mut store, "a", "2");
        put(&mut store, "a", "3");
        store.compact(3).unwrap();
        assert_eq!(
            store.changes(b"a", b"", 2, usize::MAX),
            Err(KvError::Compacted { compact_revision: 3 })
        );
        assert_eq!(
            summary(&store.changes(b"a", b"", 3, usize::MAX).unwrap().events),
            ["3 Put a=2 prev=-", "4 Put a=3 prev=2"]
        );
    }

    #[test]
    fn head_events_are_the_newest_revisions_keys_only() {
        let mut store = Store::new();
        put(&mut store, "a", "1");
        put(&mut store, "b", "1");
        let txn = TxnRequest {
            success: vec![
                RequestOp::Put(PutRequest {
                    key: b"c".to_vec(),
                    value: b"2".to_vec(),
                    ..Default::default()
                }),
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    ..Default::default()
                }),
            ],
            ..TxnRequest::default()
        };
        store.txn(&txn).unwrap();
        let spans = [(b"c".to_vec(), vec![]), (b"a".to_vec(), vec![0]), (b"z".to_vec(), vec![])];
        assert_eq!(summary(&store.head_events(&spans)), ["4 Delete a= prev=1", "4 Put c=2 prev=-"]);
    }
}
