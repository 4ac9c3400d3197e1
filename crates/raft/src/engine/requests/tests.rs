//! The requests policy, by the actions it returns. Replies are plain names, so each test
//! says which request an answer goes to.

use std::time::{Duration, Instant};

use worknode_kv::RequestId;

use super::{Action, Requests, Route, PENDING_READS_MAX, PENDING_WRITES_MAX};
use crate::node::NodeError;

const RETRY: Duration = Duration::from_millis(200);
const ME: u64 = 2;

type Actions = Vec<Action<&'static str, &'static str>>;

fn requests() -> Requests<&'static str, &'static str> {
    Requests::new(ME, RETRY)
}

fn id(sequence: u64) -> RequestId {
    RequestId { session: 7, sequence }
}

fn ms(start: Instant, ms: u64) -> Instant {
    start + Duration::from_millis(ms)
}

/// The context this member's read-index request `batch` carries.
fn context(batch: u64) -> Vec<u8> {
    [ME.to_be_bytes(), batch.to_be_bytes()].concat()
}

#[test]
fn a_write_is_proposed_and_retried_every_interval_while_a_leader_is_known() {
    let (mut requests, t0) = (requests(), Instant::now());
    let first = requests.write(id(1), b"w1".to_vec(), ms(t0, 5_000), "w1", t0, Route::Leader);
    assert_eq!(first.ok(), Some(Some(Action::Propose(b"w1".to_vec()))));
    assert_eq!(requests.expire_and_retry(ms(t0, 199), true), Actions::new(), "not yet due");
    assert_eq!(requests.expire_and_retry(ms(t0, 200), true), vec![Action::Propose(b"w1".to_vec())]);
    assert_eq!(requests.expire_and_retry(ms(t0, 300), true), Actions::new(), "next at 400");
    // Without a leader nothing is proposed, and the next try is an interval on.
    assert_eq!(requests.expire_and_retry(ms(t0, 400), false), Actions::new());
    assert_eq!(requests.expire_and_retry(ms(t0, 599), true), Actions::new());
    assert_eq!(requests.expire_and_retry(ms(t0, 600), true), vec![Action::Propose(b"w1".to_vec())]);
}

#[test]
fn an_applied_write_is_answered_once_and_retried_no_more() {
    let (mut requests, t0) = (requests(), Instant::now());
    let _ = requests.write(id(1), b"w1".to_vec(), ms(t0, 5_000), "w1", t0, Route::Leader);
    assert_eq!(requests.applied(&id(1)), Some("w1"));
    assert_eq!(requests.applied(&id(1)), None, "a second apply of the id answers no one");
    assert_eq!(requests.pending_writes(), 0);
    assert_eq!(requests.expire_and_retry(ms(t0, 1_000), true), Actions::new());
}

#[test]
fn a_write_past_its_deadline_fails_timeout_or_no_leader() {
    let (mut requests, t0) = (requests(), Instant::now());
    let _ = requests.write(id(1), b"w1".to_vec(), ms(t0, 500), "w1", t0, Route::Leader);
    let _ = requests.write(id(2), b"w2".to_vec(), ms(t0, 900), "w2", t0, Route::Leader);
    let actions = requests.expire_and_retry(ms(t0, 500), true);
    assert_eq!(
        actions,
        vec![Action::FailWrite("w1", NodeError::Timeout), Action::Propose(b"w2".to_vec())]
    );
    let actions = requests.expire_and_retry(ms(t0, 900), false);
    assert_eq!(actions, vec![Action::FailWrite("w2", NodeError::NoLeader)]);
    assert_eq!(requests.pending_writes(), 0);
}

#[test]
fn a_write_sent_ahead_waits_for_the_boundary_before_its_retry() {
    let (mut requests, t0) = (requests(), Instant::now());
    let route = Route::Ahead { target: 3, retry_at: ms(t0, 80) };
    let sent = requests.write(id(1), b"w1".to_vec(), ms(t0, 5_000), "w1", t0, route);
    assert_eq!(sent.ok(), Some(Some(Action::ForwardAhead { target: 3, data: b"w1".to_vec() })));
    assert_eq!(requests.expire_and_retry(ms(t0, 79), true), Actions::new());
    // The handoff did not come by then: on to the actual leader, then every interval.
    assert_eq!(requests.expire_and_retry(ms(t0, 80), true), vec![Action::Propose(b"w1".to_vec())]);
    assert_eq!(requests.expire_and_retry(ms(t0, 279), true), Actions::new());
    assert_eq!(requests.expire_and_retry(ms(t0, 280), true), vec![Action::Propose(b"w1".to_vec())]);
}

#[test]
fn a_write_ahead_to_this_member_waits_here_without_a_message() {
    let (mut requests, t0) = (requests(), Instant::now());
    let route = Route::Ahead { target: ME, retry_at: ms(t0, 40) };
    let sent = requests.write(id(1), b"w1".to_vec(), ms(t0, 5_000), "w1", t0, route);
    assert_eq!(sent.ok(), Some(None), "proposed when this member leads (leader_changed)");
    assert_eq!(requests.leader_changed(ms(t0, 30)), vec![Action::Propose(b"w1".to_vec())]);
    // The new leader proposed it: the next retry is an interval after that.
    assert_eq!(requests.expire_and_retry(ms(t0, 40), true), Actions::new());
    assert_eq!(requests.expire_and_retry(ms(t0, 230), true), vec![Action::Propose(b"w1".to_vec())]);
}

#[test]
fn writes_beyond_the_bound_are_refused_with_their_reply() {
    let (mut requests, t0) = (requests(), Instant::now());
    for n in 0..PENDING_WRITES_MAX as u64 {
        assert!(requests.write(id(n), vec![], ms(t0, 5_000), "w", t0, Route::Leader).is_ok());
    }
    assert!(!requests.write_room());
    let refused = requests.write(id(u64::MAX), vec![], ms(t0, 5_000), "last", t0, Route::Leader);
    assert_eq!(refused.err(), Some("last"));
    // Once one is applied there is room again.
    assert_eq!(requests.applied(&id(0)), Some("w"));
    assert!(requests.write_room());
    assert!(requests.write(id(u64::MAX), vec![], ms(t0, 5_000), "last", t0, Route::Leader).is_ok());
}

#[test]
fn reads_that_arrive_together_share_one_read_index_request() {
    let (mut requests, t0) = (requests(), Instant::now());
    for name in ["r1", "r2", "r3"] {
        requests.read(ms(t0, 5_000), name, t0).unwrap();
    }
    assert_eq!(requests.ask_read_index(), Some(Action::ReadIndex(context(1))));
    assert_eq!(requests.ask_read_index(), None, "nothing new to ask for");
    requests.read(ms(t0, 5_000), "r4", t0).unwrap();
    assert_eq!(requests.ask_read_index(), Some(Action::ReadIndex(context(2))));
    requests.read_index_confirmed(&context(1), 40);
    assert_eq!(requests.ready_reads(39), Vec::<&str>::new(), "index 40 not applied yet");
    assert_eq!(requests.ready_reads(40), vec!["r1", "r2", "r3"]);
    assert_eq!(requests.ready_reads(1_000), Vec::<&str>::new(), "r4's request unanswered");
    requests.read_index_confirmed(&context(2), 41);
    assert_eq!(requests.ready_reads(41), vec!["r4"]);
}

#[test]
fn another_members_read_index_answers_none_of_this_members_reads() {
    let (mut requests, t0) = (requests(), Instant::now());
    requests.read(ms(t0, 5_000), "r1", t0).unwrap();
    assert_eq!(requests.ask_read_index(), Some(Action::ReadIndex(context(1))));
    let others = [3u64.to_be_bytes(), 1u64.to_be_bytes()].concat();
    requests.read_index_confirmed(&others, 10);
    requests.read_index_confirmed(b"short", 10);
    assert_eq!(requests.ready_reads(100), Vec::<&str>::new());
    // The first confirmation of a batch counts; a later one does not move its index.
    requests.read_index_confirmed(&context(1), 20);
    requests.read_index_confirmed(&context(1), 10);
    assert_eq!(requests.ready_reads(19), Vec::<&str>::new());
    assert_eq!(requests.ready_reads(20), vec!["r1"]);
}

#[test]
fn an_unanswered_read_is_asked_for_again_and_expires_at_its_deadline() {
    let (mut requests, t0) = (requests(), Instant::now());
    requests.read(ms(t0, 500), "r1", t0).unwrap();
    requests.read(ms(t0, 5_000), "r2", ms(t0, 100)).unwrap();
    assert_eq!(requests.ask_read_index(), Some(Action::ReadIndex(context(1))));
    // r1's retry is due at 200, r2's at 300: each asks again in a batch of its own.
    assert_eq!(requests.expire_and_retry(ms(t0, 200), true), vec![Action::ReadIndex(context(2))]);
    assert_eq!(requests.expire_and_retry(ms(t0, 300), true), vec![Action::ReadIndex(context(3))]);
    requests.read_index_confirmed(&context(3), 7);
    // r2 has its index: it is not asked for again, and r1 fails at its deadline.
    assert_eq!(
        requests.expire_and_retry(ms(t0, 500), false),
        vec![Action::FailRead("r1", NodeError::NoLeader)]
    );
    assert_eq!(requests.ready_reads(7), vec!["r2"]);
}

#[test]
fn a_new_leader_gets_every_pending_write_and_unanswered_read_at_once() {
    let (mut requests, t0) = (requests(), Instant::now());
    let _ = requests.write(id(1), b"w1".to_vec(), ms(t0, 5_000), "w1", t0, Route::Leader);
    let ahead = Route::Ahead { target: 3, retry_at: ms(t0, 90) };
    let _ = requests.write(id(2), b"w2".to_vec(), ms(t0, 5_000), "w2", t0, ahead);
    requests.read(ms(t0, 5_000), "r1", t0).unwrap();
    requests.read(ms(t0, 5_000), "r2", t0).unwrap();
    assert_eq!(requests.ask_read_index(), Some(Action::ReadIndex(context(1))));
    requests.read(ms(t0, 5_000), "r3", t0).unwrap();
    let mut actions = requests.leader_changed(ms(t0, 50));
    let read_index = actions.pop();
    actions.sort_by_key(|a| format!("{a:?}"));
    assert_eq!(actions, vec![Action::Propose(b"w1".to_vec()), Action::Propose(b"w2".to_vec())]);
    // r1 and r2 asked again with r3, in one new request.
    assert_eq!(read_index, Some(Action::ReadIndex(context(2))));
    requests.read_index_confirmed(&context(2), 12);
    assert_eq!(requests.ready_reads(12), vec!["r1", "r2", "r3"]);
    // Both writes were just proposed: none is due again before an interval passes.
    assert_eq!(requests.expire_and_retry(ms(t0, 249), true), Actions::new());
}

#[test]
fn reads_beyond_the_bound_are_refused_and_a_stop_answers_everything() {
    let (mut requests, t0) = (requests(), Instant::now());
    for _ in 0..PENDING_READS_MAX {
        requests.read(ms(t0, 5_000), "r", t0).unwrap();
    }
    assert_eq!(requests.read(ms(t0, 5_000), "last", t0), Err("last"));
    let _ = requests.write(id(1), b"w1".to_vec(), ms(t0, 5_000), "w1", t0, Route::Leader);
    let (writes, reads) = requests.drain();
    assert_eq!((writes, reads.len()), (vec!["w1"], PENDING_READS_MAX));
    assert_eq!(requests.ask_read_index(), None);
    assert_eq!(requests.expire_and_retry(ms(t0, 10_000), true), Actions::new());
}
