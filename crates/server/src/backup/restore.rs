//! `worknode snapshot restore`: a snapshot file — from `etcdctl snapshot save` against
//! worknode or etcd, or an etcd member's `member/snap/db` — read into the state machine
//! it holds, and a new member's data directory written from it. Every member of the new
//! cluster is restored from the same file, as with `etcdctl snapshot restore`.
//!
//! What is kept: every key's history since the backup's compaction (values, versions,
//! create and mod revisions, leases), the revision, the compaction revision, and each
//! lease with its TTL, which starts anew when the cluster does (etcd restores the time
//! a lease had left; worknode keeps no clock in its state). Members, alarms and auth are
//! not: the configuration names the members, and etcd's auth is not served.

use std::path::Path;

use prost::Message as _;
use sha2::{Digest, Sha256};
use worknode_kv::{BackupContents, KeyValue, StateMachine};

use super::bbolt_reader::Db;
use crate::mvccpb;

/// What a restore read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The state machine, as of log index 1.
    pub machine: StateMachine,
    /// Whether the file carried `etcdctl snapshot save`'s SHA-256 and it matched.
    pub hash_checked: bool,
}

/// The log index a restored state stands at: the new cluster's first.
const RESTORED_INDEX: u64 = 1;

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseRecord {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
}

/// Reads the snapshot at `path`. A file from `etcdctl snapshot save` ends in the
/// database's SHA-256, which must match; a database without it (copied from a member's
/// data directory) is read only with `skip_hash_check`, as etcd's restore does.
pub fn read(path: &Path, skip_hash_check: bool) -> Result<Restored, String> {
    let name = path.display();
    let file = std::fs::read(path).map_err(|error| format!("snapshot {name}: {error}"))?;
    let (db, hash_checked) =
        split_hash(&file, skip_hash_check).map_err(|error| format!("snapshot {name}: {error}"))?;
    let contents = contents(db).map_err(|error| format!("snapshot {name}: {error}"))?;
    let machine = StateMachine::from_backup(contents, RESTORED_INDEX)
        .map_err(|error| format!("snapshot {name}: {error}"))?;
    Ok(Restored { machine, hash_checked })
}

/// The database and whether its hash was checked. etcd appends the 32-byte SHA-256 to a
/// database whose size is a multiple of its page size, so a size 32 past a multiple of
/// 512 means a hash follows.
fn split_hash(file: &[u8], skip_hash_check: bool) -> Result<(&[u8], bool), String> {
    if file.len() % 512 == Sha256::output_size() {
        let (db, hash) = file.split_at(file.len() - Sha256::output_size());
        if Sha256::digest(db).as_slice() != hash {
            return Err("its SHA-256 does not match its contents (damaged or cut short)".into());
        }
        return Ok((db, true));
    }
    if !skip_hash_check {
        return Err(
            "it has no SHA-256 at its end, as `etcdctl snapshot save` writes; pass --skip-hash-check to restore a database copied from a member's data directory"
                .into(),
        );
    }
    Ok((file, false))
}

/// The history, leases and compaction revision of an etcd backend database.
fn contents(db: &[u8]) -> Result<BackupContents, String> {
    let db = Db::open(db)?;
    let Some(keys) = db.bucket(b"key")? else {
        return Err("the database has no \"key\" bucket: it is not etcd's backend".into());
    };
    let mut contents = BackupContents::default();
    for (key, value) in keys {
        contents.entries.push(entry(key, value)?);
    }
    for (key, value) in db.bucket(b"lease")?.unwrap_or_default() {
        let record = LeaseRecord::decode(value)
            .map_err(|error| format!("lease {}: does not decode: {error}", hex(key)))?;
        if key != record.id.to_be_bytes() {
            return Err(format!("lease {} is filed under key {}", record.id, hex(key)));
        }
        contents.leases.push((record.id, record.ttl));
    }
    let meta = db.bucket(b"meta")?.unwrap_or_default();
    if let Some((_, value)) = meta.iter().find(|(key, _)| *key == b"finishedCompactRev") {
        contents.compact_revision = revision(value)
            .ok_or_else(|| format!("meta finishedCompactRev {} is not a revision", hex(value)))?
            .0;
    }
    Ok(contents)
}

/// One history entry: etcd keys it by revision (8-byte big-endian main revision, `_`,
/// 8-byte sub-revision, and `t` for a delete) and values it by the `mvccpb.KeyValue`
/// written (a delete's holds only the key).
fn entry(key: &[u8], value: &[u8]) -> Result<(i64, Vec<u8>, Option<KeyValue>), String> {
    let (main, tombstone) =
        revision(key).ok_or_else(|| format!("key bucket entry {} is not a revision", hex(key)))?;
    let kv = mvccpb::KeyValue::decode(value)
        .map_err(|error| format!("the entry at revision {main} does not decode: {error}"))?;
    if tombstone {
        return Ok((main, kv.key, None));
    }
    let key = kv.key.clone();
    Ok((main, key, Some(crate::convert::state_key_value(kv))))
}

/// The main revision of an etcd revision key and whether it marks a delete.
fn revision(key: &[u8]) -> Option<(i64, bool)> {
    let tombstone = match key.len() {
        17 => false,
        18 if key[17] == b't' => true,
        _ => return None,
    };
    if key[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(key[..8].try_into().ok()?);
    Some((main, tombstone))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::time::Duration;

    use worknode_kv::{Command, Proposal, PutRequest, RequestId};
    use worknode_raft::LeaseReport;

    use super::*;

    fn apply(machine: &mut StateMachine, command: Command) {
        let index = machine.applied_index() + 1;
        machine.apply(index, &Proposal { id: RequestId { session: 3, sequence: index }, command });
    }

    /// A member's state with history, a compaction, a lease and a large value (so the
    /// database has overflow pages and branch pages).
    fn state() -> StateMachine {
        let mut machine = StateMachine::new();
        apply(&mut machine, Command::LeaseGrant { id: 77, ttl: 45 });
        for round in 0..3 {
            for key in 0..400 {
                let value = format!("{round}-{key}").repeat(if key == 7 { 3_000 } else { 3 });
                let lease = if key % 100 == 0 { 77 } else { 0 };
                let put = PutRequest {
                    key: format!("key/{key:04}").into_bytes(),
                    value: value.into_bytes(),
                    lease,
                    ..PutRequest::default()
                };
                apply(&mut machine, Command::Put(put));
            }
        }
        apply(&mut machine, Command::Compact { revision: 300 });
        machine
    }

    /// The snapshot `etcdctl snapshot save` would store for `machine`.
    fn saved(machine: &StateMachine) -> Vec<u8> {
        let report = LeaseReport {
            leases: machine.leases().clone(),
            remaining: vec![(77, Duration::from_secs(12))],
            revision: machine.store().revision(),
            term: 2,
            store: machine.store().clone(),
            applied_index: machine.applied_index(),
        };
        let (file, _) = super::super::etcd_db::write(Cursor::new(Vec::new()), &report).unwrap();
        let mut bytes = file.into_inner();
        let hash = Sha256::digest(&bytes);
        bytes.extend_from_slice(&hash);
        bytes
    }

    fn restore(bytes: &[u8], skip_hash_check: bool) -> Result<Restored, String> {
        let (db, hash_checked) = split_hash(bytes, skip_hash_check)?;
        let machine = StateMachine::from_backup(contents(db)?, RESTORED_INDEX)?;
        Ok(Restored { machine, hash_checked })
    }

    #[test]
    fn a_saved_snapshot_restores_the_store_and_leases() {
        let machine = state();
        let restored = restore(&saved(&machine), false).unwrap();
        assert!(restored.hash_checked);
        assert_eq!(restored.machine.store(), machine.store());
        assert_eq!(restored.machine.leases(), machine.leases());
        assert_eq!(restored.machine.applied_index(), RESTORED_INDEX);
    }

    #[test]
    fn a_database_without_its_hash_needs_the_skip_flag() {
        let machine = state();
        let file = saved(&machine);
        let db = &file[..file.len() - 32];
        let error = restore(db, false).unwrap_err();
        assert!(error.contains("--skip-hash-check"), "{error}");
        let restored = restore(db, true).unwrap();
        assert!(!restored.hash_checked);
        assert_eq!(restored.machine.store(), machine.store());
    }

    #[test]
    fn a_changed_byte_fails_the_hash() {
        let mut file = saved(&state());
        let middle = file.len() / 2;
        file[middle] ^= 0x40;
        let error = restore(&file, false).unwrap_err();
        assert!(error.contains("SHA-256 does not match"), "{error}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_named_as_such() {
        let error = restore(&vec![0u8; 8192], true).unwrap_err();
        assert!(error.contains("not a bbolt database"), "{error}");
    }

    /// Without the hash, damage reaches the reader: any byte changed or any cut gives an
    /// error or a state that passed every check, never a panic.
    #[test]
    fn damaged_databases_are_refused_or_restored_never_a_panic() {
        let file = saved(&state());
        let db = &file[..file.len() - 32];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..400 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut damaged = db.to_vec();
            if round % 4 == 0 {
                damaged.truncate(state as usize % db.len());
            } else {
                for flip in 0..(1 + round % 3) {
                    let at = (state as usize).wrapping_add(flip * 7919) % damaged.len();
                    damaged[at] ^= 1u8 << (state >> 61);
                }
            }
            let _ = restore(&damaged, true);
        }
    }

    #[test]
    fn revision_keys_decode_and_malformed_ones_do_not() {
        let mut key = 5i64.to_be_bytes().to_vec();
        key.push(b'_');
        key.extend_from_slice(&0i64.to_be_bytes());
        assert_eq!(revision(&key), Some((5, false)));
        key.push(b't');
        assert_eq!(revision(&key), Some((5, true)));
        key[8] = b'-';
        assert_eq!(revision(&key), None);
        assert_eq!(revision(b"short"), None);
    }
}
