//! etcd's v3 semantics, case by case.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use worknode_kv::*;

fn put(store: &mut Store, key: &str, value: &str) -> PutResponse {
    store
        .put(&PutRequest {
            key: key.into(),
            value: value.into(),
            prev_kv: true,
            ..PutRequest::default()
        })
        .unwrap()
}

fn get(store: &Store, key: &str, range_end: &[u8]) -> RangeResponse {
    store
        .range(&RangeRequest {
            key: key.into(),
            range_end: range_end.to_vec(),
            ..RangeRequest::default()
        })
        .unwrap()
}

fn keys(response: &RangeResponse) -> Vec<String> {
    response.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect()
}

#[test]
fn revisions_versions_and_prev_kv() {
    let mut store = Store::new();
    assert_eq!(store.revision(), 1);
    assert_eq!(put(&mut store, "a", "1").prev_kv, None);
    let previous = put(&mut store, "a", "2").prev_kv.unwrap();
    assert_eq!(
        (previous.value.as_slice(), previous.version, previous.mod_revision),
        (&b"1"[..], 1, 2)
    );
    let kv = &get(&store, "a", b"").kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    let deleted = store
        .delete_range(&DeleteRangeRequest { key: "a".into(), prev_kv: true, ..Default::default() })
        .unwrap();
    assert_eq!(deleted.deleted, 1);
    assert_eq!(deleted.prev_kvs[0].value, b"2");
    assert_eq!(store.revision(), 4);
    // Deleting nothing writes nothing.
    assert_eq!(
        store
            .delete_range(&DeleteRangeRequest { key: "a".into(), ..Default::default() })
            .unwrap()
            .deleted,
        0
    );
    assert_eq!(store.revision(), 4);
    put(&mut store, "a", "3");
    let kv = &get(&store, "a", b"").kvs[0];
    assert_eq!((kv.create_revision, kv.version), (5, 1), "recreated key starts over");
}

#[test]
fn range_forms_limit_count_sort() {
    let mut store = Store::new();
    for (key, value) in [("foo", "3"), ("foo/a", "1"), ("foo/b", "2"), ("fop", "9"), ("zed", "0")] {
        put(&mut store, key, value);
    }
    assert_eq!(keys(&get(&store, "foo/", b"foo0")), ["foo/a", "foo/b"], "prefix: last byte + 1");
    assert_eq!(keys(&get(&store, "fop", b"\0")), ["fop", "zed"], "\\0: every key from");
    assert_eq!(get(&store, "\0", b"\0").count, 5, "\\0 \\0: everything");
    let limited = store
        .range(&RangeRequest {
            key: "a".into(),
            range_end: "z".into(),
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((limited.kvs.len(), limited.more, limited.count), (2, true, 4));
    let by_value = store
        .range(&RangeRequest {
            key: "\0".into(),
            range_end: vec![0],
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Value,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&by_value), ["fop", "foo", "foo/b", "foo/a", "zed"]);
    let counted = store
        .range(&RangeRequest {
            key: "\0".into(),
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((counted.kvs.len(), counted.count), (0, 5));
    let bare = store
        .range(&RangeRequest { key: "foo".into(), keys_only: true, ..Default::default() })
        .unwrap();
    assert!(bare.kvs[0].value.is_empty());
    let recent = store
        .range(&RangeRequest {
            key: "\0".into(),
            range_end: vec![0],
            min_mod_revision: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&recent), ["fop", "zed"]);
}

#[test]
fn historical_reads_and_compaction() {
    let mut store = Store::new();
    put(&mut store, "k", "v1"); // rev 2
    put(&mut store, "k", "v2"); // rev 3
    store.delete_range(&DeleteRangeRequest { key: "k".into(), ..Default::default() }).unwrap(); // rev 4
    let at = |store: &Store, revision| {
        store.range(&RangeRequest { key: "k".into(), revision, ..Default::default() })
    };
    assert_eq!(at(&store, 2).unwrap().kvs[0].value, b"v1");
    assert_eq!(at(&store, 3).unwrap().kvs[0].value, b"v2");
    assert!(at(&store, 4).unwrap().kvs.is_empty());
    assert_eq!(at(&store, 5), Err(KvError::FutureRevision));
    store.compact(3).unwrap();
    assert_eq!(at(&store, 2), Err(KvError::Compacted { compact_revision: 3 }));
    assert_eq!(
        at(&store, 3).unwrap().kvs[0].value,
        b"v2",
        "the compacted revision is still readable"
    );
    assert_eq!(store.compact(3), Err(KvError::Compacted { compact_revision: 3 }));
    assert_eq!(store.compact(9), Err(KvError::FutureRevision));
    assert_eq!(
        KvError::Compacted { compact_revision: 3 }.to_string(),
        "etcdserver: mvcc: required revision has been compacted"
    );
}

fn compare(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare { result, target, key: key.into(), range_end: Vec::new() }
}

#[test]
fn transactions_compare_branch_and_nest() {
    let mut store = Store::new();
    put(&mut store, "lock", "free");
    let txn = TxnRequest {
        compare: vec![
            compare("lock", CompareResult::Equal, CompareTarget::Value("free".into())),
            compare("lock", CompareResult::Equal, CompareTarget::Version(1)),
            compare("missing", CompareResult::Equal, CompareTarget::Create(0)),
        ],
        success: vec![
            RequestOp::Put(PutRequest {
                key: "lock".into(),
                value: "held".into(),
                ..Default::default()
            }),
            RequestOp::Put(PutRequest {
                key: "owner".into(),
                value: "me".into(),
                ..Default::default()
            }),
            RequestOp::Range(RangeRequest { key: "lock".into(), ..Default::default() }),
            RequestOp::Txn(TxnRequest {
                compare: vec![compare("lock", CompareResult::Greater, CompareTarget::Mod(0))],
                success: vec![RequestOp::Put(PutRequest {
                    key: "nested".into(),
                    value: "yes".into(),
                    ..Default::default()
                })],
                failure: vec![],
            }),
        ],
        failure: vec![RequestOp::Range(RangeRequest { key: "lock".into(), ..Default::default() })],
    };
    let response = store.txn(&txn).unwrap();
    assert!(response.succeeded);
    assert_eq!(store.revision(), 3, "one revision for the whole transaction");
    match &response.responses[2] {
        ResponseOp::Range(range) => {
            assert_eq!(range.kvs[0].value, b"held", "reads see earlier writes")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&response.responses[3], ResponseOp::Txn(nested) if nested.succeeded));
    assert_eq!(get(&store, "nested", b"").kvs[0].mod_revision, 3);
    // Now the guard fails and the failure branch only reads.
    let response = store.txn(&txn).unwrap();
    assert!(!response.succeeded);
    assert_eq!(store.revision(), 3, "a read-only branch writes nothing");
    // A value compare on a missing key is false, not an error.
    let missing = TxnRequest {
        compare: vec![compare("nope", CompareResult::NotEqual, CompareTarget::Value("x".into()))],
        ..Default::default()
    };
    assert!(!store.txn(&missing).unwrap().succeeded);
}

#[test]
fn invalid_requests_change_nothing() {
    let mut store = Store::new();
    put(&mut store, "a", "1");
    let revision = store.revision();
    let duplicate = TxnRequest {
        success: vec![
            RequestOp::Put(PutRequest { key: "x".into(), value: "1".into(), ..Default::default() }),
            RequestOp::Put(PutRequest { key: "x".into(), value: "2".into(), ..Default::default() }),
        ],
        ..Default::default()
    };
    assert_eq!(store.txn(&duplicate), Err(KvError::DuplicateKey));
    let put_and_delete = TxnRequest {
        success: vec![
            RequestOp::Put(PutRequest { key: "b".into(), value: "1".into(), ..Default::default() }),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: "a".into(),
                range_end: "c".into(),
                prev_kv: false,
            }),
        ],
        ..Default::default()
    };
    assert_eq!(store.txn(&put_and_delete), Err(KvError::DuplicateKey));
    let late_error = TxnRequest {
        success: vec![
            RequestOp::Put(PutRequest { key: "y".into(), value: "1".into(), ..Default::default() }),
            RequestOp::Put(PutRequest {
                key: "ghost".into(),
                ignore_value: true,
                ..Default::default()
            }),
        ],
        ..Default::default()
    };
    assert_eq!(store.txn(&late_error), Err(KvError::KeyNotFound));
    assert_eq!(store.put(&PutRequest::default()), Err(KvError::EmptyKey));
    let too_many = TxnRequest {
        success: (0..=TXN_OPS_MAX)
            .map(|i| {
                RequestOp::Put(PutRequest { key: format!("k{i}").into(), ..Default::default() })
            })
            .collect(),
        ..Default::default()
    };
    assert_eq!(store.txn(&too_many), Err(KvError::TooManyOps));
    assert_eq!(store.revision(), revision, "nothing was applied");
    assert!(get(&store, "y", b"").kvs.is_empty());
    // ignore_value keeps the value and bumps the version.
    let kept = store
        .put(&PutRequest { key: "a".into(), ignore_value: true, ..Default::default() })
        .unwrap();
    assert_eq!(kept.prev_kv, None);
    let kv = &get(&store, "a", b"").kvs[0];
    assert_eq!((kv.value.as_slice(), kv.version), (&b"1"[..], 2));
}

#[test]
fn machine_dedups_snapshots_and_digests() {
    let mut machine = StateMachine::new();
    let proposal = |sequence, key: &str| Proposal {
        id: RequestId { session: 7, sequence },
        command: Command::Put(PutRequest {
            key: key.into(),
            value: "v".into(),
            ..Default::default()
        }),
    };
    let first = machine.apply(1, &proposal(1, "a"));
    let retried = machine.apply(2, &proposal(1, "a"));
    assert!(!first.duplicate && retried.duplicate);
    assert_eq!(first.outcome, retried.outcome);
    assert_eq!(machine.store().revision(), 2, "the retry was not applied again");
    machine.skip(3);
    machine.apply(4, &proposal(2, "b"));
    let encoded = Proposal::decode(&proposal(3, "c").encode()).unwrap();
    assert_eq!(encoded, proposal(3, "c"));
    let restored = StateMachine::restore(&machine.snapshot()).unwrap();
    assert_eq!(restored, machine);
    assert_eq!(restored.digest(), machine.digest());
    assert_eq!(restored.applied_index(), 4);
    let mut other = machine.clone();
    other.apply(5, &proposal(4, "d"));
    assert_ne!(other.digest(), machine.digest());
    assert!(StateMachine::restore(b"garbage").is_err());
}

#[test]
fn a_clone_keeps_its_state_while_the_original_moves_on() {
    // The Raft loop snapshots by cloning the machine and encoding the clone on another
    // thread while it applies more entries: the clone must not see them.
    let proposal =
        |sequence: u64, command| Proposal { id: RequestId { session: 9, sequence }, command };
    let put = |key: String, value: String| {
        Command::Put(PutRequest { key: key.into(), value: value.into(), ..Default::default() })
    };
    let mut machine = StateMachine::new();
    for i in 1..=500u64 {
        machine.apply(i, &proposal(i, put(format!("k{:03}", i % 300), format!("v{i}"))));
    }
    let encoded = machine.snapshot();
    let digest = machine.digest();
    let frozen = machine.clone();
    for i in 501..=900u64 {
        machine.apply(i, &proposal(i, put(format!("k{:03}", i % 350), format!("w{i}"))));
    }
    let delete = Command::DeleteRange(DeleteRangeRequest {
        key: "k1".into(),
        range_end: "k2".into(),
        ..Default::default()
    });
    machine.apply(901, &proposal(901, delete));
    machine.apply(902, &proposal(902, Command::Compact { revision: 700 }));
    assert_eq!(frozen.snapshot(), encoded, "the clone changed under later writes");
    assert_eq!(frozen.digest(), digest);
    assert_eq!(StateMachine::restore(&encoded).unwrap(), frozen);
    let now = machine.store();
    assert_eq!(now.compact_revision(), 700);
    assert_eq!(get(now, "k1", b"k2").count, 0);
    assert_eq!(get(frozen.store(), "k1", b"k2").count, 100);
    let latest = get(now, "k050", b"").kvs.pop().unwrap();
    assert_eq!(latest.value, b"w750");
    let old = get(frozen.store(), "k050", b"").kvs.pop().unwrap();
    assert_eq!(old.value, b"v350");
}
