//! Structured fuzzing of the inbound peer path: arbitrary Raft messages (every field any
//! value, biased toward the values that pass the checks so raft-rs itself is reached) in
//! well-formed frames, over real TCP after a peer's hello, into a live member. Whatever
//! arrives, the member's Raft loop keeps running and answers. Snapshots carry states that
//! install, that are at the wrong index, damaged, or any bytes. `WORKNODE_FUZZ_CASES` sets
//! how many frames (default a short run for CI), `WORKNODE_FUZZ_SEED` the seed. Beside it,
//! the inbound path's idle limit, on the same live member.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use protobuf::ProtobufEnum as _;
use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use support::{send, Running, CLUSTER};
use worknode_raft::frame::{encode, Frame};
use worknode_raft::transport::IDLE_TIMEOUT;
use worknode_raft::NodeHandle;

/// A u64 that is usually small, sometimes near the checks' limits, sometimes anything.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        40 => 0u64..64,
        1 => (u64::MAX >> 2) - 2..=(u64::MAX >> 2) + 2,
        1 => u64::MAX - 2..=u64::MAX,
        1 => any::<u64>(),
    ]
}

fn member() -> impl Strategy<Value = u64> {
    prop_oneof![30 => Just(2u64), 1 => 0u64..5, 1 => any::<u64>()]
}

fn entry() -> impl Strategy<Value = Entry> {
    let kind = prop_oneof![10 => Just(0i32), 1 => 0i32..3];
    (kind, number(), number(), prop::collection::vec(any::<u8>(), 0..48)).prop_map(
        |(kind, term, index, data)| {
            let mut entry = Entry { term, index, data: data.into(), ..Entry::default() };
            entry.set_entry_type(EntryType::from_i32(kind).unwrap_or(EntryType::EntryNormal));
            entry
        },
    )
}

fn snapshot() -> impl Strategy<Value = Option<Snapshot>> {
    let voters = prop_oneof![Just(vec![1u64, 2, 3]), prop::collection::vec(0u64..5, 0..4)];
    // The state: one at the snapshot's index (installable), at another index, damaged, or
    // any bytes at all.
    let data = (0u8..4, prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4));
    prop::option::weighted(
        0.1,
        (number(), number(), voters, data).prop_map(|(index, term, voters, (kind, flips))| {
            let mut machine = worknode_kv::StateMachine::new();
            let state_index = if kind == 1 { index.wrapping_add(1) } else { index };
            if state_index > 0 {
                machine.skip(state_index);
            }
            let mut data = machine.snapshot();
            match kind {
                2 => {
                    for (at, value) in flips {
                        let at = at.index(data.len());
                        data[at] = value;
                    }
                }
                3 => data = flips.iter().map(|(_, value)| *value).collect(),
                _ => {}
            }
            let mut snapshot = Snapshot { data: data.into(), ..Snapshot::default() };
            snapshot.mut_metadata().index = index;
            snapshot.mut_metadata().term = term;
            snapshot.mut_metadata().set_conf_state(ConfState::from((voters, vec![])));
            snapshot
        }),
    )
}

prop_compose! {
    fn message()(
        kind in 0i32..20,
        from in member(),
        to in prop_oneof![30 => Just(1u64), 1 => any::<u64>()],
        term in number(), log_term in number(), index in number(), commit in number(),
        commit_term in number(), reject in any::<bool>(), reject_hint in number(),
        request_snapshot in prop_oneof![9 => Just(0u64), 1 => number()],
        entries in prop::collection::vec(entry(), 0..4),
        context in prop::collection::vec(any::<u8>(), 0..16),
        snapshot in snapshot(),
    ) -> Message {
        let mut message = Message {
            from, to, term, log_term, index, commit, commit_term, reject, reject_hint,
            request_snapshot, context: context.into(), ..Message::default()
        };
        message.set_msg_type(MessageType::from_i32(kind).unwrap_or(MessageType::MsgHeartbeat));
        message.set_entries(entries.into());
        if let Some(snapshot) = snapshot {
            message.set_snapshot(snapshot);
        }
        message
    }
}

/// Frames sent to one fresh member: a term near 2^62 soon makes every later message stale
/// to raft-rs, so a long run is many short rounds, each from an empty log.
const FRAMES_PER_ROUND: u32 = 250;

#[test]
fn arbitrary_peer_messages_never_stop_the_raft_loop() {
    let frames: u32 =
        std::env::var("WORKNODE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    // A fixed seed by default, so the suite's run is the same every time; longer runs take
    // WORKNODE_FUZZ_SEED=random or a number.
    let seed: u64 = match std::env::var("WORKNODE_FUZZ_SEED").ok().as_deref() {
        Some("random") => worknode_raft::draws::Draws::entropy_seed(),
        Some(number) => number.parse().unwrap(),
        None => 0x5EED,
    };
    println!("seed {seed}");
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-inbound");
    let _ = std::fs::remove_dir_all(&root);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (mut rejected, mut reached, mut leader_rounds) = (0, 0, 0);
    for round in 0..frames.div_ceil(FRAMES_PER_ROUND) {
        let outcome = fuzz_round(&runtime, &root.join(format!("round-{round}")), seed, round);
        rejected += outcome.rejected;
        reached += outcome.reached;
        leader_rounds += u32::from(outcome.led);
    }
    println!(
        "{frames} frames: {rejected} messages refused before raft-rs, {reached} not refused (a \
         refusal closes the connection, so some of those never arrived); the member led in \
         {leader_rounds} rounds; the loop ran on in every round"
    );
    assert!(reached > u64::from(frames) / 4, "too few messages passed the checks: {reached}");
}

/// Grants the member member 2's pre-vote and vote until it leads (it campaigns on its own
/// after an election timeout, as member 3 is never there).
fn win_election(peer: SocketAddr, handle: &NodeHandle) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while handle.status().leader_id != 1 {
        assert!(std::time::Instant::now() < deadline, "the member never campaigned");
        let term = handle.status().term;
        let grant = |kind, term| {
            let mut message = Message { from: 2, to: 1, term, ..Message::default() };
            message.set_msg_type(kind);
            message
        };
        send(
            peer,
            &[
                grant(MessageType::MsgRequestPreVoteResponse, term + 1),
                grant(MessageType::MsgRequestVoteResponse, term),
            ],
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct RoundOutcome {
    rejected: u64,
    reached: u64,
    led: bool,
}

/// Starts a fresh member, sends it `FRAMES_PER_ROUND` frames of arbitrary messages as
/// member 2, and checks that its Raft loop runs on and answers.
fn fuzz_round(
    runtime: &tokio::runtime::Runtime,
    data_dir: &std::path::Path,
    seed: u64,
    round: u32,
) -> RoundOutcome {
    let member = Running::start(runtime, data_dir);
    let (peer, handle) = (member.peer, &member.handle);
    // Half the rounds start with the member leading, so the leader's paths are fuzzed too.
    if round % 2 == 1 {
        win_election(peer, handle);
    }
    let mut runner = TestRunner::new(Config {
        cases: FRAMES_PER_ROUND,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed.wrapping_add(u64::from(round))),
        ..Config::default()
    });
    let sent = std::cell::Cell::new(0u64);
    let led = std::cell::Cell::new(false);
    runner
        .run(&prop::collection::vec(message(), 1..4), |messages| {
            sent.set(sent.get() + messages.len() as u64);
            send(peer, &messages);
            prop_assert!(
                !member.loop_thread.is_finished(),
                "the Raft loop ended (seed {seed}, round {round}) on {messages:?}"
            );
            led.set(led.get() || handle.status().leader_id == 1);
            Ok(())
        })
        .unwrap();
    let rejected = handle.rejections().total();
    member.finish();
    RoundOutcome { rejected, reached: sent.get().saturating_sub(rejected), led: led.get() }
}

#[test]
fn a_peer_connection_that_carries_nothing_for_a_minute_is_closed() {
    // The clock is tokio's, paused: it jumps to the next timer whenever every task waits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("inbound-idle");
    let _ = std::fs::remove_dir_all(&root);
    let member = Running::start(&runtime, &root);
    let closed_after = runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(member.peer).await.unwrap();
        let mut hello = Vec::new();
        encode(&Frame::Hello { cluster_id: CLUSTER, from: 2, agreement: None }, &mut hello);
        stream.write_all(&hello).await.unwrap();
        let start = tokio::time::Instant::now();
        let mut sink = [0u8; 64];
        // The member never writes on an inbound connection: the read ends when it closes.
        while stream.read(&mut sink).await.unwrap_or(0) > 0 {}
        start.elapsed()
    });
    assert!(closed_after >= IDLE_TIMEOUT, "closed after {closed_after:?}");
    assert_eq!(member.stats.idle_closed.load(std::sync::atomic::Ordering::Relaxed), 1);
    member.finish();
}
