//! A member's key-value state in etcd's backend schema (etcd 3.4/3.5): the database a
//! snapshot of etcd holds, so etcd's tools read ours.
//!
//! - `key`: every history entry the store holds, keyed by its revision (8-byte
//!   big-endian main revision, `_`, 8-byte sub-revision; a delete adds `t`), valued by
//!   the `mvccpb.KeyValue` it wrote (a delete: the key alone).
//! - `lease`: each lease by its 8-byte big-endian id, valued by `leasepb.Lease` with the
//!   seconds it has left, which etcd restores instead of the whole TTL.
//! - `meta`: the applied index (`consistent_index`) and the compaction revision
//!   (`finishedCompactRev`, `scheduledCompactRev`).
//!
//! Members, alarms and auth are not written: a restore names its own members, and etcd
//! creates the buckets it misses.

use std::io::{self, Seek, Write};

use prost::encoding::{bytes, int64};
use worknode_kv::KeyValue;
use worknode_raft::LeaseReport;

use super::bbolt::DbWriter;

/// Writes the database of `state`; the writer and the database's size.
pub(crate) fn write<W: Write + Seek>(out: W, state: &LeaseReport) -> io::Result<(W, u64)> {
    let mut db = DbWriter::new(out)?;
    // etcd orders a revision's writes by sub-revision, in the order the transaction
    // made them; the store keeps no order within a revision, so key order stands in.
    let mut entries: Vec<(i64, &[u8], Option<&KeyValue>)> =
        state.store.history().map(|(key, revision, kv)| (revision, key, kv)).collect();
    entries.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut sub = 0i64;
    let mut previous = 0i64;
    db.bucket(
        b"key",
        entries.iter().map(|&(revision, key, kv)| {
            sub = if revision == previous { sub + 1 } else { 0 };
            previous = revision;
            (revision_key(revision, sub, kv.is_none()), key_value(key, kv))
        }),
    )?;
    db.bucket(
        b"lease",
        state.leases.iter().map(|(id, lease)| {
            let left =
                state.remaining.iter().find(|(lease, _)| *lease == id).map(|(_, left)| *left);
            // etcd reads 0 as "the whole TTL"; a lease that is due keeps a second.
            let left = left.map_or(lease.ttl, |left| left.as_secs_f64().ceil().max(1.0) as i64);
            let mut value = Vec::new();
            int64::encode(1, &id, &mut value);
            int64::encode(2, &lease.ttl, &mut value);
            int64::encode(3, &left, &mut value);
            (id.to_be_bytes(), value)
        }),
    )?;
    let mut meta: Vec<(&[u8], Vec<u8>)> =
        vec![(b"consistent_index", state.applied_index.to_be_bytes().to_vec())];
    let compacted = state.store.compact_revision();
    if compacted > 0 {
        meta.push((b"finishedCompactRev", revision_key(compacted, 0, false)));
        meta.push((b"scheduledCompactRev", revision_key(compacted, 0, false)));
    }
    meta.sort();
    db.bucket(b"meta", meta)?;
    db.finish()
}

/// etcd's key for a history entry (`revToBytes`, with the tombstone mark of a delete).
fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(&main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        key.push(b't');
    }
    key
}

/// `mvccpb.KeyValue` as etcd marshals it (fields at their zero value left out).
fn key_value(key: &[u8], kv: Option<&KeyValue>) -> Vec<u8> {
    let mut out = Vec::new();
    if !key.is_empty() {
        bytes::encode(1, &key.to_vec(), &mut out);
    }
    let Some(kv) = kv else { return out };
    for (field, value) in [(2, kv.create_revision), (3, kv.mod_revision), (4, kv.version)] {
        if value != 0 {
            int64::encode(field, &value, &mut out);
        }
    }
    if !kv.value.is_empty() {
        bytes::encode(5, &kv.value, &mut out);
    }
    if kv.lease != 0 {
        int64::encode(6, &kv.lease, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn key_values_decode_as_etcds_message() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: b"v".to_vec(),
            lease: 7,
        };
        let decoded = crate::mvccpb::KeyValue::decode(&key_value(b"k", Some(&kv))[..]).unwrap();
        assert_eq!(
            (decoded.key, decoded.create_revision, decoded.mod_revision, decoded.version),
            (b"k".to_vec(), 2, 5, 3)
        );
        assert_eq!((decoded.value, decoded.lease), (b"v".to_vec(), 7));
        let tombstone = crate::mvccpb::KeyValue::decode(&key_value(b"k", None)[..]).unwrap();
        assert_eq!((tombstone.key, tombstone.mod_revision), (b"k".to_vec(), 0));
    }

    #[test]
    fn revision_keys_sort_by_revision() {
        let mut keys =
            [revision_key(256, 0, false), revision_key(2, 1, true), revision_key(2, 0, false)];
        keys.sort();
        assert_eq!(keys[0], revision_key(2, 0, false));
        assert_eq!(keys[2], revision_key(256, 0, false));
        assert_eq!(keys[1].len(), 18);
    }
}
