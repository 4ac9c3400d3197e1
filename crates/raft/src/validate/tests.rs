//! Peer messages refused before raft-rs sees them, by rule.

use raft::eraftpb::{ConfState, Entry, Snapshot};

use super::*;

fn rules() -> PeerRules {
    PeerRules::new(1, &[1, 2, 3])
}

fn message(kind: MessageType) -> Message {
    let mut message = Message::default();
    message.set_msg_type(kind);
    message.from = 2;
    message.to = 1;
    message.term = 5;
    message
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, ..Entry::default() }
}

#[test]
fn a_well_formed_message_from_its_connection_passes() {
    let mut append = message(MessageType::MsgAppend);
    append.index = 10;
    append.log_term = 4;
    append.set_entries(vec![entry(11, 4), entry(12, 5)].into());
    assert_eq!(rules().check(&append, 2), Ok(()));
    assert_eq!(rules().check(&message(MessageType::MsgHeartbeat), 2), Ok(()));
}

#[test]
fn the_sender_must_be_the_connection_and_a_voter() {
    let forged = message(MessageType::MsgHeartbeat);
    assert_eq!(
        rules().check(&forged, 3),
        Err(Rejection::ForgedSender { claimed: 2, connection: 3 })
    );
    let mut stranger = message(MessageType::MsgHeartbeat);
    stranger.from = 99;
    assert_eq!(rules().check(&stranger, 99), Err(Rejection::NotAMember(99)));
    let mut myself = message(MessageType::MsgHeartbeat);
    myself.from = 1;
    assert_eq!(rules().check(&myself, 1), Err(Rejection::NotAMember(1)));
    let mut elsewhere = message(MessageType::MsgHeartbeat);
    elsewhere.to = 3;
    assert_eq!(rules().check(&elsewhere, 2), Err(Rejection::NotForMe { to: 3, me: 1 }));
}

#[test]
fn a_transfer_request_names_its_target_in_from() {
    let mut transfer = message(MessageType::MsgTransferLeader);
    transfer.term = 0;
    transfer.from = 3;
    assert_eq!(rules().check(&transfer, 2), Ok(()));
    transfer.from = 1;
    assert_eq!(rules().check(&transfer, 2), Ok(()));
    transfer.from = 9;
    assert_eq!(rules().check(&transfer, 2), Err(Rejection::NotAMember(9)));
}

#[test]
fn terms_and_indexes_near_the_top_of_u64_are_refused() {
    let mut heartbeat = message(MessageType::MsgHeartbeat);
    heartbeat.term = u64::MAX;
    assert_eq!(rules().check(&heartbeat, 2).map_err(|r| r.reason()), Err("out_of_range"));
    heartbeat.term = TERM_OR_INDEX_MAX;
    assert_eq!(rules().check(&heartbeat, 2), Ok(()));
    heartbeat.commit = TERM_OR_INDEX_MAX + 1;
    assert_eq!(
        rules().check(&heartbeat, 2),
        Err(Rejection::OutOfRange { field: "commit", value: TERM_OR_INDEX_MAX + 1 })
    );
}

#[test]
fn only_forwarded_requests_come_without_a_term() {
    let mut vote = message(MessageType::MsgRequestPreVote);
    vote.term = 0;
    assert_eq!(
        rules().check(&vote, 2),
        Err(Rejection::MissingTerm(MessageType::MsgRequestPreVote))
    );
    let mut propose = message(MessageType::MsgPropose);
    propose.term = 0;
    assert_eq!(rules().check(&propose, 2), Ok(()));
    propose.term = 3;
    assert_eq!(rules().check(&propose, 2), Err(Rejection::UnexpectedTerm(MessageType::MsgPropose)));
}

#[test]
fn local_message_types_never_come_from_a_peer() {
    for kind in [MessageType::MsgHup, MessageType::MsgBeat, MessageType::MsgCheckQuorum] {
        assert_eq!(rules().check(&message(kind), 2), Err(Rejection::LocalType(kind)));
    }
}

#[test]
fn configuration_changes_are_refused_in_any_message() {
    let mut propose = message(MessageType::MsgPropose);
    propose.term = 0;
    let mut change = entry(0, 0);
    change.set_entry_type(EntryType::EntryConfChange);
    propose.set_entries(vec![change].into());
    assert_eq!(rules().check(&propose, 2), Err(Rejection::ConfChange));
}

#[test]
fn appended_entries_must_follow_the_previous_index_and_never_go_back_in_term() {
    let mut gap = message(MessageType::MsgAppend);
    gap.index = 10;
    gap.log_term = 4;
    gap.set_entries(vec![entry(11, 4), entry(13, 4)].into());
    assert_eq!(rules().check(&gap, 2).map_err(|r| r.reason()), Err("entries"));
    let mut back = message(MessageType::MsgAppend);
    back.index = 10;
    back.log_term = 4;
    back.set_entries(vec![entry(11, 3)].into());
    assert_eq!(rules().check(&back, 2).map_err(|r| r.reason()), Err("entries"));
    let mut future = message(MessageType::MsgAppend);
    future.set_entries(vec![entry(1, 6)].into());
    assert_eq!(rules().check(&future, 2).map_err(|r| r.reason()), Err("entries"));
}

#[test]
fn a_snapshot_must_carry_this_clusters_voters() {
    let mut install = message(MessageType::MsgSnapshot);
    let mut snapshot = snapshot_at(7);
    snapshot.mut_metadata().set_conf_state(ConfState::from((vec![3, 1, 2], vec![])));
    install.set_snapshot(snapshot.clone());
    assert_eq!(rules().check(&install, 2), Ok(()));
    snapshot.mut_metadata().set_conf_state(ConfState::from((vec![1, 2, 99], vec![])));
    install.set_snapshot(snapshot);
    assert_eq!(rules().check(&install, 2), Err(Rejection::SnapshotConf(vec![1, 2, 99])));
}

/// A snapshot of an empty state machine that has applied `index` entries.
fn snapshot_at(index: u64) -> Snapshot {
    let mut machine = worknode_kv::StateMachine::new();
    machine.skip(index);
    let mut snapshot = Snapshot { data: machine.snapshot().into(), ..Snapshot::default() };
    snapshot.mut_metadata().index = index;
    snapshot.mut_metadata().set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
    snapshot
}

#[test]
fn a_snapshot_must_hold_a_state_at_its_own_index() {
    let mut install = message(MessageType::MsgSnapshot);
    let mut snapshot = snapshot_at(7);
    snapshot.mut_metadata().index = 8;
    install.set_snapshot(snapshot.clone());
    let refused = rules().check(&install, 2).unwrap_err();
    assert_eq!(refused.reason(), "snapshot_data");
    assert!(refused.to_string().contains("at index 7, its metadata says 8"), "{refused}");
    // Claims 2^42 keys in a few bytes: refused without reserving them.
    snapshot.data = vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01].into();
    install.set_snapshot(snapshot);
    assert_eq!(rules().check(&install, 2).map_err(|r| r.reason()), Err("snapshot_data"));
}

#[test]
fn every_reason_has_its_own_label() {
    let mut labels = REASONS.to_vec();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), REASONS.len());
    assert_eq!(Rejection::ConfChange.reason(), "conf_change");
}

fn view<'a>(term_at: &'a dyn Fn(u64) -> Option<u64>) -> LogView<'a> {
    LogView { term: 5, leader: 2, last_index: 20, committed: 15, term_at }
}

#[test]
fn a_heartbeat_may_not_commit_past_the_log() {
    let terms = |_| Some(5);
    let mut heartbeat = message(MessageType::MsgHeartbeat);
    heartbeat.commit = 20;
    assert_eq!(check_against_log(&heartbeat, &view(&terms)), Ok(()));
    heartbeat.commit = 21;
    assert_eq!(
        check_against_log(&heartbeat, &view(&terms)),
        Err(Rejection::CommitPastLog { commit: 21, last: 20 })
    );
    // A later term: raft-rs follows the sender and then commits all the same.
    heartbeat.term = 6;
    assert!(check_against_log(&heartbeat, &view(&terms)).is_err());
    // An earlier one: raft-rs answers it without touching the log.
    heartbeat.term = 4;
    assert_eq!(check_against_log(&heartbeat, &view(&terms)), Ok(()));
}

#[test]
fn an_append_may_repeat_committed_entries_but_not_rewrite_them() {
    let terms = |index| (index >= 3).then_some(if index <= 14 { 4 } else { 5 });
    let mut append = message(MessageType::MsgAppend);
    append.index = 13;
    append.set_entries(vec![entry(14, 4), entry(15, 5), entry(16, 5)].into());
    assert_eq!(check_against_log(&append, &view(&terms)), Ok(()));
    append.set_entries(vec![entry(14, 5)].into());
    assert_eq!(
        check_against_log(&append, &view(&terms)),
        Err(Rejection::RewritesCommitted { index: 14, term: 5, ours: 4 })
    );
}

#[test]
fn only_the_leader_may_hand_over_by_timeout_now() {
    let terms = |_| None;
    let mut timeout_now = message(MessageType::MsgTimeoutNow);
    assert_eq!(check_against_log(&timeout_now, &view(&terms)), Ok(()));
    timeout_now.from = 3;
    assert_eq!(
        check_against_log(&timeout_now, &view(&terms)),
        Err(Rejection::TimeoutNowNotFromLeader { from: 3, term: 5 })
    );
    let mut later = message(MessageType::MsgTimeoutNow);
    later.term = 1_000;
    assert_eq!(
        check_against_log(&later, &view(&terms)),
        Err(Rejection::TimeoutNowNotFromLeader { from: 2, term: 1_000 })
    );
}
