//! The state machine's alarms, its size accounting and its deduplication window, through
//! its public API.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use worknode_kv::*;

fn proposal(sequence: u64, command: Command) -> Proposal {
    Proposal { id: RequestId { session: 3, sequence }, command }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest { key: key.into(), value: value.into(), ..PutRequest::default() })
}

const NO_SPACE: AlarmMember = AlarmMember { member_id: 2, alarm: AlarmType::NoSpace };

#[test]
fn the_size_counts_history_until_compaction_drops_it() {
    let mut machine = StateMachine::new();
    machine.apply(1, &proposal(1, put("key", "12345")));
    let one = ENTRY_OVERHEAD_BYTES + 3 + 5;
    assert_eq!(machine.store().size_bytes(), one);
    machine.apply(2, &proposal(2, put("key", "1234567890")));
    assert_eq!(machine.store().size_bytes(), one + one + 5);
    let restored = StateMachine::restore(&machine.snapshot()).unwrap();
    assert_eq!(restored.store().size_bytes(), machine.store().size_bytes());
    machine.apply(3, &proposal(3, Command::Compact { revision: 3 }));
    assert_eq!(machine.store().size_bytes(), one + 5);
}

#[test]
fn with_no_space_raised_only_writes_that_add_data_are_refused() {
    let mut machine = StateMachine::new();
    machine.apply(1, &proposal(1, put("a", "1")));
    let raised = machine.apply(2, &proposal(2, Command::RaiseAlarm(NO_SPACE)));
    assert_eq!(raised.outcome, Outcome::Alarm(Some(NO_SPACE)));
    let again = machine.apply(3, &proposal(3, Command::RaiseAlarm(NO_SPACE)));
    assert_eq!(again.outcome, Outcome::Alarm(None));
    assert_eq!(machine.alarms(), &[NO_SPACE]);

    let refused = machine.apply(4, &proposal(4, put("b", "2")));
    assert_eq!(refused.outcome, Outcome::Error(KvError::NoSpace));
    // A put in a branch that would not run still counts, as in etcd.
    let guarded = TxnRequest {
        failure: vec![RequestOp::Put(PutRequest { key: "c".into(), ..Default::default() })],
        ..TxnRequest::default()
    };
    let refused = machine.apply(5, &proposal(5, Command::Txn(guarded)));
    assert_eq!(refused.outcome, Outcome::Error(KvError::NoSpace));
    let delete = DeleteRangeRequest { key: "a".into(), ..Default::default() };
    let deleted = machine.apply(6, &proposal(6, Command::DeleteRange(delete)));
    assert!(matches!(deleted.outcome, Outcome::DeleteRange(_)), "{deleted:?}");
    let compacted = machine.apply(7, &proposal(7, Command::Compact { revision: 3 }));
    assert_eq!(compacted.outcome, Outcome::Compact);

    let cleared = machine.apply(8, &proposal(8, Command::ClearAlarm(NO_SPACE)));
    assert_eq!(cleared.outcome, Outcome::Alarm(Some(NO_SPACE)));
    assert!(machine.alarms().is_empty());
    assert!(matches!(machine.apply(9, &proposal(9, put("b", "2"))).outcome, Outcome::Put(_)));
}

fn numbered_put(sequence: u64) -> Proposal {
    Proposal {
        id: RequestId { session: 9, sequence },
        command: Command::Put(PutRequest {
            key: b"k".to_vec(),
            value: sequence.to_le_bytes().to_vec(),
            ..PutRequest::default()
        }),
    }
}

#[test]
fn a_retry_within_the_window_gets_the_first_answer_and_one_past_it_applies_again() {
    let mut machine = StateMachine::new();
    let first = machine.apply(1, &numbered_put(0));
    // The first id and DEDUP_WINDOW - 1 later ones fill the window exactly.
    for sequence in 1..DEDUP_WINDOW as u64 {
        machine.apply(sequence + 1, &numbered_put(sequence));
    }
    let mut index = DEDUP_WINDOW as u64 + 1;
    let retried = machine.apply(index, &numbered_put(0));
    assert!(retried.duplicate, "a retry inside the window applied again");
    assert_eq!(retried.outcome, first.outcome);
    assert_eq!(retried.revision, first.revision);
    let revision = machine.store().revision();
    // One more id evicts the first: its retry now applies as a new write.
    index += 1;
    machine.apply(index, &numbered_put(DEDUP_WINDOW as u64));
    index += 1;
    let late = machine.apply(index, &numbered_put(0));
    assert!(!late.duplicate, "a retry past the window was answered from memory");
    assert_eq!(machine.store().revision(), revision + 2);
    // That new write took a place in the window too, evicting the second id; the
    // third is still inside.
    index += 1;
    assert!(!machine.apply(index, &numbered_put(1)).duplicate);
    index += 1;
    assert!(machine.apply(index, &numbered_put(3)).duplicate);
}
