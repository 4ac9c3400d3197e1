//! Leases as replicated state: each lease's granted TTL and the keys attached to it.
//!
//! Time is not state: when a lease expires is decided by the leader's clock, outside this
//! crate, and carried out through the log as a revoke. What the log holds is what every
//! member must agree on — which leases exist, their TTLs, which keys die with them — so a
//! revoke deletes the same keys at the same revision everywhere.

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::types::KvError;

/// etcd's `MaxLeaseTTL`: a longer TTL is refused.
pub const LEASE_TTL_MAX: i64 = 9_000_000_000;

/// One lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Seconds granted.
    pub ttl: i64,
    /// The keys attached (a set; the map's values are nothing).
    #[serde(deserialize_with = "crate::decode::ord_map")]
    keys: OrdMap<Vec<u8>, ()>,
}

impl Lease {
    /// The keys attached, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.keys.keys()
    }
}

/// Every lease, by id. Persistent like the store (a clone is O(1)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leases {
    #[serde(deserialize_with = "crate::decode::ord_map")]
    table: OrdMap<i64, Lease>,
}

impl Leases {
    /// Whether there is none (the write path skips lease bookkeeping then).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Lease `id`.
    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.table.get(&id)
    }

    /// Every lease with its id, by id.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &Lease)> {
        self.table.iter().map(|(id, lease)| (*id, lease))
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Grants lease `id` (0: the first free id from `suggested` on) for `ttl` seconds;
    /// the id granted.
    pub(crate) fn grant(&mut self, id: i64, ttl: i64, suggested: i64) -> Result<i64, KvError> {
        if ttl > LEASE_TTL_MAX {
            return Err(KvError::LeaseTtlTooLarge);
        }
        let id = if id == 0 {
            // Positive and unused: the same choice on every member (it is the log's).
            let mut id = suggested.max(1);
            while self.table.contains_key(&id) {
                id = id.checked_add(1).unwrap_or(1);
            }
            id
        } else if self.table.contains_key(&id) {
            return Err(KvError::LeaseExists);
        } else {
            id
        };
        self.table.insert(id, Lease { ttl, keys: OrdMap::new() });
        Ok(id)
    }

    /// Removes lease `id`; its keys (to delete).
    pub(crate) fn revoke(&mut self, id: i64) -> Result<Vec<Vec<u8>>, KvError> {
        let lease = self.table.remove(&id).ok_or(KvError::LeaseNotFound)?;
        Ok(lease.keys.keys().cloned().collect())
    }

    /// `key` moved from lease `old` to lease `new` (0: none).
    pub(crate) fn moved(&mut self, key: &[u8], old: i64, new: i64) {
        if old == new {
            return;
        }
        if let Some(lease) = self.table.get_mut(&old) {
            lease.keys.remove(key);
        }
        if let Some(lease) = self.table.get_mut(&new) {
            lease.keys.insert(key.to_vec(), ());
        }
    }

    /// Checks a decoded table against its store: every attached key exists there with
    /// that lease, every leased key of the store is attached, TTLs in bounds.
    pub(crate) fn check(&self, store: &Store) -> Result<(), String> {
        let mut attached = 0usize;
        for (id, lease) in &self.table {
            if *id == 0 || !(0..=LEASE_TTL_MAX).contains(&lease.ttl) {
                return Err(format!("lease {id} with TTL {} is out of bounds", lease.ttl));
            }
            for key in lease.keys.keys() {
                if store.lease_of(key) != Some(*id) {
                    return Err(format!(
                        "lease {id} holds key {:?}, which is not attached to it",
                        String::from_utf8_lossy(key)
                    ));
                }
                attached += 1;
            }
        }
        let leased = store.leased_keys();
        if leased != attached {
            return Err(format!("{leased} keys name a lease but {attached} are attached"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PutRequest;

    #[test]
    fn a_table_that_disagrees_with_its_store_is_refused() {
        let mut store = Store::new();
        let mut leases = Leases::default();
        leases.grant(1, 10, 1).unwrap();
        let put = |lease| PutRequest { key: b"a".to_vec(), lease, ..PutRequest::default() };
        store
            .txn_with_leases(
                &crate::types::TxnRequest {
                    success: vec![crate::types::RequestOp::Put(put(1))],
                    ..Default::default()
                },
                &|id| id == 1,
            )
            .unwrap();
        let error = leases.check(&store).unwrap_err();
        assert_eq!(error, "1 keys name a lease but 0 are attached");
        leases.moved(b"a", 0, 1);
        assert_eq!(leases.check(&store), Ok(()));
        leases.grant(2, 10, 1).unwrap();
        leases.moved(b"b", 0, 2);
        let error = leases.check(&store).unwrap_err();
        assert!(error.contains("lease 2 holds key \"b\""), "{error}");
    }
}
