//! Whole clusters in one process: real raft-engine logs in temporary directories, real
//! TCP between members on loopback.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use worknode_kv::{Command, Outcome, Proposal, PutRequest, RangeRequest, RequestId};
use worknode_raft::member::{open_member, MemberSpec};
use worknode_raft::transport::serve_peers;
use worknode_raft::{
    ClientRequest, NodeConfig, NodeError, NodeHandle, ReadReply, ReadView, WriteReply,
};

const CLUSTER: u64 = 0xC1;

struct Running {
    handle: NodeHandle,
    thread: thread::JoinHandle<()>,
    blocked: worknode_raft::transport::Blocked,
    stats: std::sync::Arc<worknode_raft::transport::TransportStats>,
}

struct Cluster {
    runtime: tokio::runtime::Runtime,
    root: PathBuf,
    peers: Vec<(u64, SocketAddr)>,
    members: Vec<Option<Running>>,
    snapshot_entries: u64,
    rotation: Option<worknode_raft::rotation::RotationConfig>,
    retry_interval: Duration,
    /// Election timeout in 10 ms ticks.
    election_ticks: usize,
}

impl Cluster {
    fn new(name: &str, size: u64, snapshot_entries: u64) -> Self {
        Self::with_rotation(name, size, snapshot_entries, None)
    }

    fn with_rotation(
        name: &str,
        size: u64,
        snapshot_entries: u64,
        rotation: Option<worknode_raft::rotation::RotationConfig>,
    ) -> Self {
        Self::with_options(name, size, snapshot_entries, rotation, Duration::from_millis(100))
    }

    fn with_options(
        name: &str,
        size: u64,
        snapshot_entries: u64,
        rotation: Option<worknode_raft::rotation::RotationConfig>,
        retry_interval: Duration,
    ) -> Self {
        Self::build(name, size, snapshot_entries, rotation, retry_interval, 10)
    }

    fn build(
        name: &str,
        size: u64,
        snapshot_entries: u64,
        rotation: Option<worknode_raft::rotation::RotationConfig>,
        retry_interval: Duration,
        election_ticks: usize,
    ) -> Self {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::remove_dir_all(&root);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let peers: Vec<(u64, SocketAddr)> = (1..=size)
            .map(|id| {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                (id, listener.local_addr().unwrap())
            })
            .collect();
        let mut cluster = Cluster {
            runtime,
            root,
            peers,
            members: Vec::new(),
            snapshot_entries,
            rotation,
            retry_interval,
            election_ticks,
        };
        for index in 0..size as usize {
            cluster.members.push(None);
            cluster.start(index);
        }
        cluster
    }

    fn start(&mut self, index: usize) {
        let (id, address) = self.peers[index];
        let mut node = NodeConfig::new(id, self.peers.iter().map(|(id, _)| *id).collect());
        node.tick = Duration::from_millis(10);
        node.election_ticks = self.election_ticks;
        node.retry_interval = self.retry_interval;
        node.snapshot_entries = self.snapshot_entries;
        node.log_keep_entries = self.snapshot_entries / 2;
        node.rotation = self.rotation.clone();
        let spec = MemberSpec {
            cluster_id: CLUSTER,
            peers: self.peers.clone(),
            data_dir: self.root.join(format!("member-{id}")),
            recover_tail: false,
            rejoin: false,
            node,
            agreement: worknode_raft::frame::Agreement::default(),
            peer_tls: None,
        };
        let _guard = self.runtime.enter();
        let member = open_member(&spec).unwrap();
        // The address was free a moment ago; a restart may race its old socket, so retry.
        let listener = (0..100)
            .find_map(|_| {
                std::net::TcpListener::bind(address).ok().or_else(|| {
                    thread::sleep(Duration::from_millis(20));
                    None
                })
            })
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let handle = member.handle.clone();
        let voters: Vec<u64> = self.peers.iter().map(|(id, _)| *id).collect();
        let peer_server = self.runtime.spawn(serve_peers(
            listener,
            CLUSTER,
            worknode_raft::validate::PeerRules::new(id, &voters),
            None,
            handle.clone(),
            member.stats.clone(),
            member.blocked.clone(),
        ));
        let blocked = member.blocked.clone();
        let stats = member.stats.clone();
        let node = member.node;
        let data_dir = member.data_dir;
        let thread = thread::spawn(move || {
            node.run().unwrap();
            peer_server.abort();
            drop(data_dir);
        });
        self.members[index] = Some(Running { handle, thread, blocked, stats });
    }

    fn stop(&mut self, index: usize) {
        if let Some(running) = self.members[index].take() {
            running.handle.stop();
            running.thread.join().unwrap();
            // Let the aborted listener release its port.
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Drops (or, with `false`, delivers again) what members `a` and `b` send each other.
    fn cut(&self, a: usize, b: usize, cut: bool) {
        for (from, to) in [(a, b), (b, a)] {
            let to_id = self.peers[to].0;
            let mut blocked = self.members[from].as_ref().unwrap().blocked.lock().unwrap();
            if cut {
                blocked.insert(to_id);
            } else {
                blocked.remove(&to_id);
            }
        }
    }

    fn handle(&self, index: usize) -> &NodeHandle {
        &self.members[index].as_ref().unwrap().handle
    }

    fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| m.as_ref().is_some_and(|m| m.handle.status().is_leader))
    }

    /// Stops a follower of `leader` and returns its index.
    fn stop_a_follower(&mut self, leader: usize) -> usize {
        let follower = (leader + 1) % self.members.len();
        self.stop(follower);
        follower
    }

    fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(leader) = self.leader() {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader elected");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn put(
        &self,
        index: usize,
        session: u64,
        sequence: u64,
        key: &str,
        value: &str,
    ) -> Result<WriteReply, NodeError> {
        let answer =
            self.submit_put(index, session, sequence, key, value, Duration::from_secs(5))?;
        answer.blocking_recv().unwrap_or(Err(NodeError::Stopped))
    }

    /// Submits a put without waiting for it; its answer comes on the returned channel.
    fn submit_put(
        &self,
        index: usize,
        session: u64,
        sequence: u64,
        key: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<oneshot::Receiver<Result<WriteReply, NodeError>>, NodeError> {
        let (reply, answer) = oneshot::channel();
        let proposal = Proposal {
            id: RequestId { session, sequence },
            command: Command::Put(PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
        };
        let deadline = Instant::now() + timeout;
        self.handle(index).submit(ClientRequest::Write { proposal, deadline, reply })?;
        Ok(answer)
    }

    fn get(&self, index: usize, key: &str) -> Result<ReadReply, NodeError> {
        let request = RangeRequest { key: key.into(), ..Default::default() };
        let answer = self.submit_read(index, Duration::from_secs(5))?;
        answer.blocking_recv().unwrap_or(Err(NodeError::Stopped))?.serve(&request)
    }

    /// Submits a linearizable read without waiting; its view comes on the returned channel.
    fn submit_read(
        &self,
        index: usize,
        timeout: Duration,
    ) -> Result<oneshot::Receiver<Result<ReadView, NodeError>>, NodeError> {
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + timeout;
        self.handle(index).submit(ClientRequest::Read { linearizable: true, deadline, reply })?;
        Ok(answer)
    }

    fn digest(&self, index: usize) -> (u64, u64) {
        let (reply, answer) = oneshot::channel();
        self.handle(index).submit(ClientRequest::Digest { reply }).unwrap();
        let machine = answer.blocking_recv().unwrap();
        (machine.applied_index(), machine.digest())
    }

    /// Waits until every running member applied the same index, then compares digests.
    fn assert_converged(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let digests: Vec<(u64, u64)> = (0..self.members.len())
                .filter(|&i| self.members[i].is_some())
                .map(|i| self.digest(i))
                .collect();
            if digests.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(Instant::now() < deadline, "members did not converge: {digests:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.stop(index);
        }
    }
}

fn value_of(reply: &ReadReply) -> Option<String> {
    reply.response.kvs.first().map(|kv| String::from_utf8(kv.value.clone()).unwrap())
}

#[test]
fn three_members_replicate_and_any_member_accepts_writes() {
    let cluster = Cluster::new("three", 3, 10_000);
    let leader = cluster.wait_for_leader();
    let follower = (leader + 1) % 3;
    let written = cluster.put(follower, 1, 1, "greeting", "hello").unwrap();
    assert!(matches!(written.applied.outcome, Outcome::Put(_)));
    assert_eq!(written.applied.revision, 2);
    for member in 0..3 {
        assert_eq!(
            value_of(&cluster.get(member, "greeting").unwrap()).as_deref(),
            Some("hello"),
            "member {member}"
        );
    }
    // A retried request id is applied once and answered with the first result.
    let again = cluster.put(leader, 1, 1, "greeting", "hello").unwrap();
    assert!(again.applied.duplicate);
    assert_eq!(again.applied.revision, 2);
    cluster.assert_converged();
}

#[test]
fn five_members_survive_two_failures_and_catch_up() {
    let mut cluster = Cluster::new("five", 5, 10_000);
    cluster.wait_for_leader();
    for i in 0..20 {
        cluster.put(i % 5, 2, i as u64, &format!("k{i}"), "v").unwrap();
    }
    let leader = cluster.wait_for_leader();
    let down = [(leader + 1) % 5, (leader + 2) % 5];
    for &index in &down {
        cluster.stop(index);
    }
    let alive = (0..5).find(|i| !down.contains(i)).unwrap();
    for i in 20..40 {
        cluster.put(alive, 2, i, &format!("k{i}"), "v").unwrap();
    }
    for &index in &down {
        cluster.start(index);
    }
    cluster.assert_converged();
    let restarted = down[0];
    assert_eq!(cluster.get(restarted, "k39").unwrap().response.count, 1);
}

#[test]
fn the_minority_side_of_a_partition_never_acknowledges() {
    let cluster = Cluster::new("partition", 3, 10_000);
    let leader = cluster.wait_for_leader();
    cluster.put(leader, 3, 1, "before", "x").unwrap();
    // Cut the leader off from both followers, in both directions.
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader as u64 + 1).collect();
    cluster.members[leader]
        .as_ref()
        .unwrap()
        .blocked
        .lock()
        .unwrap()
        .extend(others.iter().copied());
    for &other in &others {
        cluster.members[other as usize - 1]
            .as_ref()
            .unwrap()
            .blocked
            .lock()
            .unwrap()
            .insert(leader as u64 + 1);
    }
    let (reply, answer) = oneshot::channel();
    let proposal = Proposal {
        id: RequestId { session: 3, sequence: 2 },
        command: Command::Put(PutRequest {
            key: "isolated".into(),
            value: "x".into(),
            ..Default::default()
        }),
    };
    cluster
        .handle(leader)
        .submit(ClientRequest::Write {
            proposal,
            deadline: Instant::now() + Duration::from_millis(800),
            reply,
        })
        .unwrap();
    let minority = answer.blocking_recv().unwrap();
    assert!(minority.is_err(), "the isolated member acknowledged a write: {minority:?}");
    // The majority elects a new leader and keeps accepting writes.
    let majority = others[0] as usize - 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if cluster.put(majority, 3, 3, "after", "y").is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the majority never recovered");
    }
    // Heal; the write the old leader held is either applied once or not at all.
    cluster.members[leader].as_ref().unwrap().blocked.lock().unwrap().clear();
    for &other in &others {
        cluster.members[other as usize - 1].as_ref().unwrap().blocked.lock().unwrap().clear();
    }
    cluster.assert_converged();
    assert_eq!(value_of(&cluster.get(leader, "after").unwrap()).as_deref(), Some("y"));
}

#[test]
fn a_cut_off_leader_never_answers_a_linearizable_read_with_a_stale_value() {
    let cluster = Cluster::new("stale-read", 3, 10_000);
    let old = cluster.wait_for_leader();
    cluster.put(old, 5, 1, "k", "old").unwrap();
    assert_eq!(value_of(&cluster.get(old, "k").unwrap()).as_deref(), Some("old"));
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    for &other in &others {
        cluster.cut(old, other, true);
    }
    // The majority elects a leader and acknowledges a newer value.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.put(others[0], 5, 2, "k", "new").is_err() {
        assert!(Instant::now() < deadline, "the majority never took the write");
    }
    // Whether the old leader still believes it leads or has stepped down, a linearizable
    // read there must wait (and time out) rather than answer "old".
    let answer = cluster.submit_read(old, Duration::from_millis(500)).unwrap();
    let request = RangeRequest { key: "k".into(), ..Default::default() };
    match answer.blocking_recv().unwrap() {
        Ok(view) => {
            let read = view.serve(&request).unwrap();
            panic!("a cut-off member answered a linearizable read: {:?}", value_of(&read));
        }
        Err(error) => {
            assert!(matches!(error, NodeError::Timeout | NodeError::NoLeader), "{error:?}")
        }
    }
    for &other in &others {
        cluster.cut(old, other, false);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(read) = cluster.get(old, "k") {
            assert_eq!(value_of(&read).as_deref(), Some("new"));
            break;
        }
        assert!(Instant::now() < deadline, "the healed member never answered");
    }
}

#[test]
fn a_member_far_behind_is_brought_back_by_snapshot() {
    let mut cluster = Cluster::new("snapshot", 3, 50);
    let leader = cluster.wait_for_leader();
    let lagging = cluster.stop_a_follower(leader);
    let writer = (0..3).find(|&i| i != lagging).unwrap();
    for i in 0..300u64 {
        cluster.put(writer, 4, i, &format!("key{:03}", i % 40), &i.to_string()).unwrap();
    }
    cluster.start(lagging);
    cluster.assert_converged();
    assert_eq!(value_of(&cluster.get(lagging, "key019").unwrap()).as_deref(), Some("299"));
    // Its own restart finds the same state from its snapshot and log.
    cluster.stop(lagging);
    cluster.start(lagging);
    cluster.assert_converged();
}

#[test]
fn a_snapshot_larger_than_a_frame_travels_in_parts() {
    // 60 keys of 200 KiB: a 12 MiB state, three parts' worth (frame::PART_BYTES).
    let mut cluster = Cluster::new("snapshot-parts", 3, 50);
    let leader = cluster.wait_for_leader();
    let lagging = cluster.stop_a_follower(leader);
    let writer = (0..3).find(|&i| i != lagging).unwrap();
    for i in 0..120u64 {
        let value = format!("{i:0>8}").repeat(25 * 1024);
        cluster.put(writer, 4, i, &format!("key{:03}", i % 60), &value).unwrap();
    }
    cluster.start(lagging);
    cluster.assert_converged();
    let status = cluster.handle(lagging).status();
    assert!(status.snapshot_index >= 50, "caught up without a snapshot: {status:?}");
    let value = value_of(&cluster.get(lagging, "key059").unwrap()).unwrap();
    assert_eq!(value, format!("{:0>8}", 119).repeat(25 * 1024));
}

#[test]
fn snapshots_thin_out_as_the_state_grows() {
    // Every write adds a key, so each snapshot is larger than the last. One every
    // `snapshot_entries` (50 here; 56 for member 1) would be 14 over 800 writes; waiting
    // also for a snapshot's size of log makes them about geometric: 50, ~100, ~200, ~400.
    let cluster = Cluster::new("snapshot-growth", 3, 50);
    let leader = cluster.wait_for_leader();
    let value = "v".repeat(64);
    for i in 0..800u64 {
        cluster.put(leader, 5, i, &format!("grow{i:04}"), &value).unwrap();
    }
    cluster.assert_converged();
    for member in 0..3 {
        let status = cluster.handle(member).status();
        let snapshots = cluster.handle(member).counters().snapshots.load(Ordering::Relaxed);
        println!(
            "member {}: {snapshots} snapshots, latest at {}",
            status.id, status.snapshot_index
        );
        assert!(
            (2..=7).contains(&snapshots),
            "member {} took {snapshots} snapshots over 800 growing writes (expected 2-7)",
            status.id,
        );
        assert!(status.snapshot_index >= 200, "member {}: {status:?}", status.id);
    }
}

#[test]
fn leadership_follows_the_schedule_and_writes_never_fail() {
    let rotation = worknode_raft::rotation::RotationConfig {
        base: worknode_kv::ScheduleSettings {
            rotation: true,
            algorithm: "fair".into(),
            stakes: vec![(1, 1), (2, 1), (3, 1)],
            slot_ms: 50,
            slots_per_turn: 2,
            slots_per_epoch: 4_000,
            seed: 0,
        },
        genesis_unix_ns: 0,
        handoff_lead: Duration::from_millis(5),
        max_lag_entries: 1_000,
        forward_ahead: Duration::from_millis(10),
        silence_heartbeats: 3,
        takeover_grace: Duration::from_millis(50),
        clock_skew_max: Duration::from_millis(500),
    };
    let cluster = Cluster::with_rotation("rotation", 3, 10_000, Some(rotation));
    cluster.wait_for_leader();
    let end = Instant::now() + Duration::from_secs(5);
    let mut sequence = 0;
    let mut failures = Vec::new();
    while Instant::now() < end {
        sequence += 1;
        if let Err(error) =
            cluster.put(sequence as usize % 3, 9, sequence, &format!("r{sequence}"), "v")
        {
            failures.push(error);
        }
    }
    let mut turns: Vec<worknode_raft::rotation::TurnRecord> =
        (0..3).flat_map(|i| cluster.handle(i).turns()).collect();
    turns.sort_by_key(|t| t.first_slot);
    turns.dedup_by_key(|t| t.first_slot);
    // Turns decided by a leader that had settled (the last one may still be in flight).
    let settled: Vec<_> = turns.iter().filter(|t| t.leader_after != 0).collect();
    let on_schedule = settled.iter().filter(|t| t.leader_after == t.scheduled).count();
    let share = on_schedule as f64 / settled.len().max(1) as f64;
    let handoffs: Vec<Duration> = settled.iter().filter_map(|t| t.handoff).collect();
    println!(
        "{} turns, {:.1}% on schedule, {} handoffs (max {:?}), {} writes, {} failed",
        settled.len(),
        share * 100.0,
        handoffs.len(),
        handoffs.iter().max(),
        sequence,
        failures.len()
    );
    assert!(settled.len() >= 40, "too few turns recorded: {}", settled.len());
    assert!(
        share >= 0.95,
        "only {:.1}% of turns on schedule: {:?}",
        share * 100.0,
        settled.iter().filter(|t| t.leader_after != t.scheduled).take(5).collect::<Vec<_>>()
    );
    assert!(failures.is_empty(), "writes failed during handoffs: {failures:?}");
    cluster.assert_converged();
}

/// Waits (up to 5 s) until some running member's transport says whether `peer` is gone.
fn wait_gone(cluster: &Cluster, peer: u64, gone: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = cluster.members.iter().flatten().filter_map(|m| m.stats.gone.get(&peer));
        let flags: Vec<bool> = seen.map(|flag| flag.load(Ordering::Relaxed)).collect();
        if (gone && flags.contains(&true)) || (!gone && !flags.contains(&true)) {
            return;
        }
        assert!(Instant::now() < deadline, "member {peer} gone flags stay {flags:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_stopped_member_is_known_gone_until_it_connects_again() {
    // The transport's evidence for fast failover: a refused connection marks the peer
    // gone, and the peer's own hello when it returns clears the mark at once (a stale
    // mark would make a live leader look dead).
    let mut cluster = Cluster::new("gone", 3, 10_000);
    let leader = cluster.wait_for_leader();
    let down = cluster.stop_a_follower(leader);
    let down_id = cluster.peers[down].0;
    wait_gone(&cluster, down_id, true);
    cluster.start(down);
    wait_gone(&cluster, down_id, false);
    cluster.put(down, 2, 1, "back", "1").unwrap();
    cluster.assert_converged();
}

#[test]
fn a_successor_whose_pre_vote_goes_unanswered_asks_again_at_once() {
    // When a leader's process dies its followers each learn of it when their own
    // connection is refused, not at the same moment. The successor asks for pre-votes
    // first; a follower that has not seen the refusal yet still holds the leader lease
    // and ignores the request without answering. Here the followers' messages to each
    // other are dropped for the first 150 ms after the leader stops, standing in for a
    // refusal seen late. The election timeout is 1 s: a successor that asked only once
    // would wait most of it to ask again (writes stalled 150-370 ms that way under
    // kill -9); one that asks again every few milliseconds leads moments after the cut
    // heals (10 ms here; asking once, 90-930 ms in five runs).
    let mut cluster =
        Cluster::build("failover-retry", 3, 10_000, None, Duration::from_millis(100), 100);
    let leader = cluster.wait_for_leader();
    cluster.put(leader, 1, 1, "before", "1").unwrap();
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.cut(followers[0], followers[1], true);
    let stopped = Instant::now();
    cluster.stop(leader);
    wait_gone(&cluster, cluster.peers[leader].0, true);
    thread::sleep(Duration::from_millis(150).saturating_sub(stopped.elapsed()));
    cluster.cut(followers[0], followers[1], false);
    let healed = Instant::now();
    let new_leader = cluster.wait_for_leader();
    let took = healed.elapsed();
    println!("member {} leads {took:?} after the cut healed", cluster.peers[new_leader].0);
    assert!(
        took < Duration::from_millis(150),
        "a leader only {took:?} after the followers heard each other again (election timeout 1 s)"
    );
    cluster.put(new_leader, 2, 1, "after", "1").unwrap();
    cluster.assert_converged();
}

#[test]
fn a_new_leader_brings_back_a_follower_that_lacks_entries() {
    // A new leader replicates to every follower at once, before its first answer; one
    // that was down meanwhile rejects, is probed back, and catches up from the log (the
    // leader has compacted: restarting from index 1 would mean a snapshot).
    let mut cluster = Cluster::new("takeover", 3, 50);
    let leader = cluster.wait_for_leader();
    for i in 0..80u64 {
        cluster.put(leader, 5, i, &format!("key{:02}", i % 20), &i.to_string()).unwrap();
    }
    let down = (leader + 1) % 3;
    let heir = (leader + 2) % 3;
    cluster.stop(down);
    for i in 80..100u64 {
        cluster.put(leader, 5, i, &format!("key{:02}", i % 20), &i.to_string()).unwrap();
    }
    let (reply, answer) = oneshot::channel();
    let target = cluster.peers[heir].0;
    cluster.handle(leader).submit(ClientRequest::TransferLeader { target, reply }).unwrap();
    answer.blocking_recv().unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.leader() != Some(heir) {
        assert!(Instant::now() < deadline, "the transfer to member {target} did not happen");
        thread::sleep(Duration::from_millis(5));
    }
    for i in 100..110u64 {
        cluster.put(heir, 5, i, &format!("key{:02}", i % 20), &i.to_string()).unwrap();
    }
    cluster.start(down);
    cluster.assert_converged();
    assert_eq!(value_of(&cluster.get(down, "key09").unwrap()).as_deref(), Some("109"));
    let status = cluster.handle(heir).status();
    assert!(status.is_leader, "member {target} lost the lead: {status:?}");
    let probed_back = cluster.handle(heir).counters().optimistic_rejected.load(Ordering::Relaxed);
    assert!(probed_back >= 1, "the lagging follower was never probed back: {status:?}");
}

#[test]
fn a_follower_far_behind_is_caught_up_by_reads_off_the_loop() {
    // More entries than the entry cache holds (4,096) are written while a follower is
    // down: the leader reads the oldest of what it sends it from the log files, on the
    // background reader, and raft-rs sends each batch once its read is done.
    let mut cluster = Cluster::new("fetch", 3, 1_000_000);
    let leader = cluster.wait_for_leader();
    let down = cluster.stop_a_follower(leader);
    let value = "v".repeat(100);
    for chunk in 0..6u64 {
        // A thousand writes in flight at once: they share log syncs.
        let answers: Vec<_> = (0..1_000u64)
            .map(|i| {
                let sequence = chunk * 1_000 + i;
                let key = format!("key{:03}", sequence % 100);
                let timeout = Duration::from_secs(30);
                cluster.submit_put(leader, 6, sequence, &key, &value, timeout).unwrap()
            })
            .collect();
        for answer in answers {
            answer.blocking_recv().unwrap().unwrap();
        }
    }
    cluster.start(down);
    cluster.assert_converged();
    let status = cluster.handle(leader).status();
    assert!(status.is_leader, "the leader changed: {status:?}");
    assert!(status.reads_off_loop_total >= 1, "no read was done off the loop: {status:?}");
    let follower = cluster.handle(down).status();
    assert_eq!(follower.reads_off_loop_total, 0, "a follower read for peers: {follower:?}");
}

#[test]
fn first_reads_at_every_member_need_no_retry() {
    // Every member numbers its read-index requests from 1, and the leader ignores a
    // request whose context is already pending: without the member in the context, the
    // first reads at two members collided and one waited for a retry. With retries a
    // minute apart, such a read would miss its 5 s deadline.
    let cluster = Cluster::with_options("reads", 3, 10_000, None, Duration::from_secs(60));
    let leader = cluster.wait_for_leader();
    cluster.put(leader, 7, 1, "k", "v").unwrap();
    for round in 0..3 {
        let answers: Vec<_> = (0..3)
            .flat_map(|member| (0..4).map(move |_| member))
            .map(|member| (member, cluster.submit_read(member, Duration::from_secs(5)).unwrap()))
            .collect();
        for (member, answer) in answers {
            let reply = answer.blocking_recv().unwrap();
            let request = RangeRequest { key: "k".into(), ..Default::default() };
            let served = reply.and_then(|view| view.serve(&request));
            assert!(served.is_ok(), "round {round}: a read at member {member} failed: {served:?}");
        }
    }
}
