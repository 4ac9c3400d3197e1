//! A member's term and vote survive a restart: having voted in a term, a restarted member
//! refuses another candidate in that term (two leaders in one term otherwise). Through the
//! real member (raft-rs on raft-engine) and real sockets; its peers are this test.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use support::{addresses, receive, send_as, Running};

/// Asks member 1 for its vote as `candidate` in `term` (with a log as long as its own,
/// empty) and returns its answer.
fn ask_vote(
    member: &Running,
    listener: &std::net::TcpListener,
    candidate: u64,
    term: u64,
) -> Message {
    let mut request = Message { from: candidate, to: 1, term, ..Message::default() };
    request.set_msg_type(MessageType::MsgRequestVote);
    send_as(member.peer, candidate, &[request]);
    let answer = receive(listener, Duration::from_secs(5), |message| {
        message.get_msg_type() == MessageType::MsgRequestVoteResponse && message.term == term
    });
    answer.expect("member 1 answered the vote request")
}

#[test]
fn a_vote_given_before_a_restart_is_kept_after_it() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hard-state");
    let _ = std::fs::remove_dir_all(&root);
    let peers = addresses();
    let listeners: Vec<std::net::TcpListener> = peers[1..]
        .iter()
        .map(|(_, address)| std::net::TcpListener::bind(address).unwrap())
        .collect();
    // An election timeout of 2-4 s: member 1 never campaigns during the test, so its term
    // moves only with the requests here.
    let election_ticks = 200;

    let member = Running::start_at(&runtime, &root, peers.clone(), election_ticks);
    let granted = ask_vote(&member, &listeners[0], 2, 5);
    assert!(!granted.reject, "a fresh member refused its first vote in term 5");
    member.finish();

    let mut restarted = peers.clone();
    restarted[0].1 = addresses()[0].1;
    let member = Running::start_at(&runtime, &root, restarted, election_ticks);
    // The loop publishes its status after a turn.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while member.handle.status().term == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(member.handle.status().term, 5, "the term was lost in the restart");
    let refused = ask_vote(&member, &listeners[1], 3, 5);
    assert!(refused.reject, "member 1 voted twice in term 5: for 2, and after a restart for 3");
    // The member it voted for still gets the vote again (a retried request).
    let again = ask_vote(&member, &listeners[0], 2, 5);
    assert!(!again.reject, "member 1 forgot whom it voted for");
    member.finish();
}
