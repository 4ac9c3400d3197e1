//! The store against a naive model: a full copy of every key at every revision.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use std::collections::BTreeMap;

use proptest::prelude::*;
use worknode_kv::*;

/// Every revision's complete state; index = revision.
struct Model {
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compacted: i64,
}

impl Model {
    fn new() -> Self {
        // Revisions 0 and 1 are both empty (the store starts at revision 1).
        Self { states: vec![BTreeMap::new(), BTreeMap::new()], compacted: 0 }
    }

    fn revision(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn current(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
        self.states.last().unwrap()
    }

    fn write(&mut self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) {
        let revision = self.revision() + 1;
        let mut next = self.current().clone();
        let mut changed = false;
        for (key, value) in writes {
            match value {
                Some(value) => {
                    let previous = next.get(key);
                    let kv = KeyValue {
                        key: key.clone(),
                        create_revision: previous.map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                        version: previous.map_or(1, |p| p.version + 1),
                        value: value.clone(),
                        lease: 0,
                    };
                    next.insert(key.clone(), kv);
                    changed = true;
                }
                None => changed |= next.remove(key).is_some(),
            }
        }
        if changed {
            self.states.push(next);
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    DeleteRange(u8, u8),
    GuardedPut { key: u8, expected_version: i64, value: u8 },
    Compact(i64),
    Read { revision_back: i64 },
}

fn key(k: u8) -> Vec<u8> {
    format!("key{:02}", k % 12).into_bytes()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => any::<u8>().prop_map(Op::Delete),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::DeleteRange(a, b)),
        2 => (any::<u8>(), 0i64..3, any::<u8>()).prop_map(|(key, expected_version, value)| Op::GuardedPut { key, expected_version, value }),
        1 => (0i64..20).prop_map(Op::Compact),
        3 => (0i64..30).prop_map(|revision_back| Op::Read { revision_back }),
    ]
}

fn check_read(store: &Store, model: &Model, revision: i64) {
    let request =
        RangeRequest { key: vec![0], range_end: vec![0], revision, ..RangeRequest::default() };
    let response = store.range(&request);
    if revision < model.compacted {
        assert_eq!(response, Err(KvError::Compacted { compact_revision: model.compacted }));
        return;
    }
    let expected: Vec<KeyValue> = model.states[revision as usize].values().cloned().collect();
    let response = response.unwrap();
    assert_eq!(response.kvs, expected, "at revision {revision}");
    assert_eq!(response.count, expected.len() as i64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model(ops in prop::collection::vec(op(), 1..120)) {
        let mut store = Store::new();
        let mut model = Model::new();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    store.put(&PutRequest { key: key(k), value: vec![v], ..Default::default() }).unwrap();
                    model.write(&[(key(k), Some(vec![v]))]);
                }
                Op::Delete(k) => {
                    store.delete_range(&DeleteRangeRequest { key: key(k), ..Default::default() }).unwrap();
                    model.write(&[(key(k), None)]);
                }
                Op::DeleteRange(a, b) => {
                    let (start, end) = (key(a.min(b)), key(a.max(b)));
                    store.delete_range(&DeleteRangeRequest { key: start.clone(), range_end: end.clone(), prev_kv: false }).unwrap();
                    let doomed: Vec<_> = model.current().keys().filter(|k| **k >= start && **k < end).map(|k| (k.clone(), None)).collect();
                    model.write(&doomed);
                }
                Op::GuardedPut { key: k, expected_version, value } => {
                    let txn = TxnRequest {
                        compare: vec![Compare { result: CompareResult::Equal, target: CompareTarget::Version(expected_version), key: key(k), range_end: vec![] }],
                        success: vec![RequestOp::Put(PutRequest { key: key(k), value: vec![value], ..Default::default() })],
                        failure: vec![],
                    };
                    let succeeded = store.txn(&txn).unwrap().succeeded;
                    let version = model.current().get(&key(k)).map_or(0, |kv| kv.version);
                    prop_assert_eq!(succeeded, version == expected_version);
                    if succeeded {
                        model.write(&[(key(k), Some(vec![value]))]);
                    }
                }
                Op::Compact(back) => {
                    let target = (model.revision() - back).max(1);
                    let result = store.compact(target);
                    if target <= model.compacted {
                        prop_assert!(result.is_err());
                    } else {
                        result.unwrap();
                        model.compacted = target;
                    }
                }
                Op::Read { revision_back } => {
                    let revision = (model.revision() - revision_back).max(1);
                    check_read(&store, &model, revision);
                }
            }
            prop_assert_eq!(store.revision(), model.revision());
        }
        for revision in model.compacted.max(1)..=model.revision() {
            check_read(&store, &model, revision);
        }
    }
}
