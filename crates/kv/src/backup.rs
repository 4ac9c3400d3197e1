//! A state machine rebuilt from a backup's contents: what etcd's backend holds (every
//! history entry by revision, the leases, the compaction revision), from a snapshot of
//! etcd or of worknode.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::leases::Leases;
use crate::machine::StateMachine;
use crate::store::{Entry, Store};
use crate::types::KeyValue;

/// What a backup holds, as read from it (in any order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupContents {
    /// Every history entry: the revision that wrote it, the key, and what it wrote
    /// (`None`: a delete).
    pub entries: Vec<(i64, Vec<u8>, Option<KeyValue>)>,
    /// Every lease: its id and TTL in seconds.
    pub leases: Vec<(i64, i64)>,
    /// The revision compaction reached (0: never compacted).
    pub compact_revision: i64,
}

impl StateMachine {
    /// The state machine a backup holds, as if it had applied log entry `applied_index`.
    /// Checked as a snapshot from a peer is: a backup that breaks what every write relies
    /// on (a key written twice at one revision, a key on a lease the backup lacks,
    /// revisions out of order) is refused with what is wrong.
    pub fn from_backup(contents: BackupContents, applied_index: u64) -> Result<Self, String> {
        let BackupContents { mut entries, leases, compact_revision } = contents;
        if compact_revision < 0 {
            return Err(format!("compaction revision {compact_revision} is negative"));
        }
        entries.sort_unstable_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
        let mut store = Store::new();
        store.compact_revision = compact_revision;
        store.revision = compact_revision.max(1);
        if let Some(pair) =
            entries.windows(2).find(|pair| pair[0].0 == pair[1].0 && pair[0].1 == pair[1].1)
        {
            return Err(format!(
                "key {:?} is written twice at revision {}",
                lossy(&pair[0].1),
                pair[0].0
            ));
        }
        let mut histories: BTreeMap<Vec<u8>, Vec<Entry>> = BTreeMap::new();
        for (revision, key, kv) in entries {
            if revision < 1 {
                return Err(format!("key {:?} at revision {revision}", lossy(&key)));
            }
            if kv.as_ref().is_some_and(|kv| kv.key != key) {
                return Err(format!(
                    "the entry of key {:?} at revision {revision} names another key",
                    lossy(&key)
                ));
            }
            store.revision = store.revision.max(revision);
            histories.entry(key).or_default().push(Entry { revision, kv });
        }
        store.keys = histories.into_iter().map(|(key, history)| (key, Arc::new(history))).collect();
        store.check()?;
        store.recount();
        let mut table = Leases::default();
        for (id, ttl) in leases {
            if id == 0 {
                return Err("a lease has id 0, which names no lease".into());
            }
            table.grant(id, ttl, 0).map_err(|error| format!("lease {id}: {error}"))?;
        }
        for (key, history) in &store.keys {
            let Some(kv) = history.last().and_then(|entry| entry.kv.as_ref()) else { continue };
            if kv.lease != 0 {
                if table.get(kv.lease).is_none() {
                    return Err(format!(
                        "key {:?} is attached to lease {}, which the backup does not hold",
                        lossy(key),
                        kv.lease
                    ));
                }
                table.moved(key, 0, kv.lease);
            }
        }
        table.check(&store)?;
        Ok(Self::rebuilt(store, table, applied_index))
    }
}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Command, Proposal, RequestId};
    use crate::types::{DeleteRangeRequest, PutRequest};

    fn apply(machine: &mut StateMachine, command: Command) {
        let index = machine.applied_index() + 1;
        let id = RequestId { session: 9, sequence: index };
        machine.apply(index, &Proposal { id, command });
    }

    fn put(key: &str, lease: i64) -> Command {
        Command::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: format!("value of {key}").into_bytes(),
            lease,
            ..PutRequest::default()
        })
    }

    /// A machine with history, a delete, a compaction and a lease with keys.
    fn written() -> StateMachine {
        let mut machine = StateMachine::new();
        apply(&mut machine, Command::LeaseGrant { id: 40, ttl: 30 });
        for key in ["a", "b", "a", "c", "b"] {
            apply(&mut machine, put(key, 0));
        }
        apply(&mut machine, Command::Compact { revision: 3 });
        apply(
            &mut machine,
            Command::DeleteRange(DeleteRangeRequest { key: b"c".to_vec(), ..Default::default() }),
        );
        apply(&mut machine, put("leased", 40));
        apply(&mut machine, put("d", 0));
        machine
    }

    fn contents_of(machine: &StateMachine) -> BackupContents {
        let store = machine.store();
        let mut entries: Vec<_> = store
            .history()
            .map(|(key, revision, kv)| (revision, key.to_vec(), kv.cloned()))
            .collect();
        entries.reverse();
        BackupContents {
            entries,
            leases: machine.leases().iter().map(|(id, lease)| (id, lease.ttl)).collect(),
            compact_revision: store.compact_revision(),
        }
    }

    #[test]
    fn a_backup_of_a_machine_rebuilds_its_store_and_leases() {
        let machine = written();
        let rebuilt = StateMachine::from_backup(contents_of(&machine), 1).unwrap();
        assert_eq!(rebuilt.store(), machine.store());
        assert_eq!(rebuilt.leases(), machine.leases());
        assert_eq!(rebuilt.store().revision(), machine.store().revision());
        assert_eq!(rebuilt.store().compact_revision(), 3);
        assert_eq!(rebuilt.store().size_bytes(), machine.store().size_bytes());
        assert_eq!(rebuilt.applied_index(), 1);
        // It goes on as the original would: a revoke deletes the leased key.
        let (mut original, mut restored) = (machine.clone(), rebuilt);
        for machine in [&mut original, &mut restored] {
            let index = machine.applied_index() + 1;
            let id = RequestId { session: 1, sequence: 1 };
            machine.apply(index, &Proposal { id, command: Command::LeaseRevoke { id: 40 } });
        }
        assert_eq!(original.store(), restored.store());
    }

    #[test]
    fn an_empty_backup_is_an_empty_store_at_revision_one() {
        let rebuilt = StateMachine::from_backup(BackupContents::default(), 1).unwrap();
        assert_eq!(rebuilt.store(), StateMachine::new().store());
    }

    #[test]
    fn a_key_written_twice_at_one_revision_is_refused() {
        let mut contents = contents_of(&written());
        let first = contents.entries[0].clone();
        contents.entries.push(first);
        let error = StateMachine::from_backup(contents, 1).unwrap_err();
        assert!(error.contains("written twice at revision"), "{error}");
    }

    #[test]
    fn a_key_on_a_lease_the_backup_lacks_is_refused() {
        let mut contents = contents_of(&written());
        contents.leases.clear();
        let error = StateMachine::from_backup(contents, 1).unwrap_err();
        assert!(error.contains("\"leased\" is attached to lease 40"), "{error}");
    }

    #[test]
    fn an_entry_filed_under_another_key_is_refused() {
        let mut contents = contents_of(&written());
        contents.entries[0].1 = b"elsewhere".to_vec();
        let error = StateMachine::from_backup(contents, 1).unwrap_err();
        assert!(error.contains("names another key"), "{error}");
    }

    #[test]
    fn inconsistent_revisions_are_refused() {
        let mut contents = contents_of(&written());
        let Some(kv) = contents.entries.iter_mut().find_map(|entry| entry.2.as_mut()) else {
            panic!("no put")
        };
        kv.mod_revision += 1;
        let error = StateMachine::from_backup(contents, 1).unwrap_err();
        assert!(error.contains("inconsistent"), "{error}");
    }
}
