//! Leases as replicated state, through the state machine's public API: grants and their
//! ids, keys attached and moved, revokes at one revision, snapshots.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use worknode_kv::*;

struct Log {
    machine: StateMachine,
    index: u64,
}

impl Log {
    fn new() -> Self {
        Self { machine: StateMachine::new(), index: 0 }
    }

    fn apply(&mut self, command: Command) -> Applied {
        self.index += 1;
        let id = RequestId { session: 9, sequence: self.index };
        self.machine.apply(self.index, &Proposal { id, command })
    }

    fn put(&mut self, key: &str, lease: i64) -> Applied {
        let put =
            PutRequest { key: key.into(), value: b"v".to_vec(), lease, ..PutRequest::default() };
        self.apply(Command::Put(put))
    }

    fn keys(&self, id: i64) -> Vec<String> {
        let lease = self.machine.leases().get(id).unwrap();
        lease.keys().map(|key| String::from_utf8_lossy(key).into_owned()).collect()
    }
}

#[test]
fn a_grant_takes_the_id_asked_for_or_the_first_free_one_from_the_log_index() {
    let mut log = Log::new();
    assert_eq!(
        log.apply(Command::LeaseGrant { id: 2, ttl: 10 }).outcome,
        Outcome::LeaseGranted { id: 2, ttl: 10 }
    );
    // Entry 2 suggests id 2, which is taken.
    assert_eq!(
        log.apply(Command::LeaseGrant { id: 0, ttl: 5 }).outcome,
        Outcome::LeaseGranted { id: 3, ttl: 5 }
    );
    assert_eq!(
        log.apply(Command::LeaseGrant { id: 2, ttl: 1 }).outcome,
        Outcome::Error(KvError::LeaseExists)
    );
    assert_eq!(
        log.apply(Command::LeaseGrant { id: 0, ttl: LEASE_TTL_MAX + 1 }).outcome,
        Outcome::Error(KvError::LeaseTtlTooLarge)
    );
    assert_eq!(log.machine.leases().len(), 2);
    assert_eq!(
        log.apply(Command::LeaseRefresh { id: 3 }).outcome,
        Outcome::LeaseRefreshed { ttl: 5 }
    );
    assert_eq!(
        log.apply(Command::LeaseRefresh { id: 4 }).outcome,
        Outcome::Error(KvError::LeaseNotFound)
    );
}

#[test]
fn keys_follow_their_lease_through_puts_deletes_and_transactions() {
    let mut log = Log::new();
    log.apply(Command::LeaseGrant { id: 1, ttl: 10 });
    log.apply(Command::LeaseGrant { id: 2, ttl: 10 });
    assert_eq!(log.put("a", 7).outcome, Outcome::Error(KvError::LeaseNotFound));
    log.put("a", 1);
    log.put("b", 1);
    log.put("c", 2);
    assert_eq!(log.keys(1), ["a", "b"]);
    log.put("b", 2); // moves
    log.put("a", 0); // leaves
    assert_eq!(log.keys(1), Vec::<String>::new());
    assert_eq!(log.keys(2), ["b", "c"]);
    let txn = TxnRequest {
        success: vec![
            RequestOp::DeleteRange(DeleteRangeRequest { key: b"c".to_vec(), ..Default::default() }),
            RequestOp::Put(PutRequest { key: b"d".to_vec(), lease: 2, ..Default::default() }),
        ],
        ..TxnRequest::default()
    };
    log.apply(Command::Txn(txn));
    assert_eq!(log.keys(2), ["b", "d"]);
    // ignore_lease keeps the key where it is.
    let keep = PutRequest { key: b"d".to_vec(), ignore_lease: true, ..PutRequest::default() };
    log.apply(Command::Put(keep));
    assert_eq!(log.keys(2), ["b", "d"]);
}

#[test]
fn a_revoke_deletes_every_key_of_its_lease_at_one_revision_however_many() {
    let mut log = Log::new();
    log.apply(Command::LeaseGrant { id: 5, ttl: 10 });
    for n in 0..300 {
        log.put(&format!("k{n:03}"), 5);
    }
    log.put("other", 0);
    let before = log.machine.store().revision();
    let spans = log.machine.watch_spans(&Command::LeaseRevoke { id: 5 });
    let revoked = log.apply(Command::LeaseRevoke { id: 5 });
    assert_eq!(revoked.outcome, Outcome::LeaseRevoked { deleted: 300 });
    assert_eq!(revoked.revision, before + 1);
    let events = log.machine.events_in(&spans);
    assert_eq!(events.len(), 300);
    assert!(events.iter().all(|e| e.kind == EventKind::Delete && e.revision() == before + 1));
    let all = RangeRequest { key: vec![0], range_end: vec![0], ..RangeRequest::default() };
    assert_eq!(log.machine.store().range(&all).unwrap().count, 1);
    assert_eq!(
        log.apply(Command::LeaseRevoke { id: 5 }).outcome,
        Outcome::Error(KvError::LeaseNotFound)
    );
    // A lease without keys goes without a revision.
    log.apply(Command::LeaseGrant { id: 6, ttl: 10 });
    let empty = log.apply(Command::LeaseRevoke { id: 6 });
    assert_eq!((empty.outcome, empty.revision), (Outcome::LeaseRevoked { deleted: 0 }, before + 1));
}

#[test]
fn leases_travel_in_snapshots_and_one_out_of_bounds_is_refused() {
    let mut log = Log::new();
    log.apply(Command::LeaseGrant { id: 1, ttl: 10 });
    log.put("a", 1);
    let restored = StateMachine::restore(&log.machine.snapshot()).unwrap();
    assert_eq!(restored, log.machine);
    assert_eq!(restored.digest(), log.machine.digest());

    let mut other = Log::new();
    other.apply(Command::LeaseGrant { id: 1, ttl: 10 });
    other.put("a", 1);
    other.apply(Command::LeaseGrant { id: 2, ttl: 10 });
    other.put("a", 2);
    let mut bytes = other.machine.snapshot();
    let good = StateMachine::restore(&bytes).unwrap();
    assert_eq!(good.leases().get(2).unwrap().keys().count(), 1);
    // Flip the TTL of lease 2 to a negative number: refused with a reason.
    // The table ends with lease 2: its TTL, one key, the key's length and its byte.
    let ttl_at = bytes.len() - 4;
    assert_eq!(bytes[ttl_at], 20, "postcard's zigzag of 10");
    bytes[ttl_at] = 1; // zigzag of -1
    let error = StateMachine::restore(&bytes).unwrap_err().to_string();
    assert!(error.contains("lease 2 with TTL -1"), "{error}");
}
