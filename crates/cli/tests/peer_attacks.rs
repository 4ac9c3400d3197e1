//! A stranger on a member's peer port, through real sockets against real `worknode serve`
//! processes: forged and out-of-range messages are refused before raft-rs sees them,
//! connections that never say hello cost nothing, and the cluster serves on throughout,
//! with the reason in the member's log and metrics.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, Message, MessageType};
use support::{scrape, ProcessCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use worknode_raft::frame::{encode, Frame};
use worknode_raft::storage::encode_message;
use worknode_server::pb::{PutRequest, RangeRequest};

/// Sends a hello as `from` and then `messages` in one frame; whether the member closed
/// the connection within two seconds.
async fn send_as(peer: SocketAddr, cluster_id: u64, from: u64, messages: &[Message]) -> bool {
    let mut stream = TcpStream::connect(peer).await.unwrap();
    let mut bytes = Vec::new();
    encode(&Frame::Hello { cluster_id, from, agreement: None }, &mut bytes);
    if !messages.is_empty() {
        encode(&Frame::Messages(messages.iter().map(encode_message).collect()), &mut bytes);
    }
    stream.write_all(&bytes).await.unwrap();
    closed_within(&mut stream, Duration::from_secs(2)).await
}

async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(within, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

fn message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut message = Message::default();
    message.set_msg_type(kind);
    message.from = from;
    message.to = to;
    message.term = term;
    message
}

/// A put through member `index` succeeds, and reads back.
async fn put_and_read(cluster: &ProcessCluster, index: usize, key: &str) {
    let mut client = cluster.kv(index).await;
    let put = PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() };
    tokio::time::timeout(Duration::from_secs(10), client.put(put))
        .await
        .expect("the put answers in time")
        .expect("the put succeeds");
    let range = client.range(RangeRequest { key: key.into(), ..Default::default() }).await;
    assert_eq!(range.unwrap().into_inner().kvs.len(), 1, "{key} reads back");
}

/// The value of one series in a metrics exposition.
fn metric(metrics: &str, series: &str) -> u64 {
    let name = format!("{series} ");
    let line = metrics.lines().find(|line| line.starts_with(&name)).unwrap();
    line[name.len()..].parse().unwrap()
}

fn rejected(metrics: &str, reason: &str) -> u64 {
    metric(metrics, &format!("worknode_peer_messages_rejected_total{{reason=\"{reason}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_out_of_range_peer_messages_are_refused_and_the_cluster_serves_on() {
    let mut cluster = ProcessCluster::start("attack-forged", 3, 20);
    cluster.leader().await;
    put_and_read(&cluster, 0, "before").await;
    let cluster_id = cluster.cluster_id();
    let target = cluster.members[0].peer;

    // A term raft-rs would wrap at `term + 1`, panicking the loop (for good: it persists).
    let mut wrap = message(MessageType::MsgHeartbeat, 2, 1, u64::MAX);
    wrap.commit = 1;
    assert!(send_as(target, cluster_id, 2, &[wrap]).await, "term u64::MAX closes the connection");
    // Speaking as another member than the connection's.
    let mut propose = message(MessageType::MsgPropose, 99, 1, 0);
    propose.set_entries(vec![Entry { data: b"forged".to_vec().into(), ..Entry::default() }].into());
    assert!(send_as(target, cluster_id, 2, &[propose]).await, "a forged from closes");
    // A stranger's hello.
    assert!(send_as(target, cluster_id, 99, &[]).await, "member 99's hello closes");
    // A fake voter.
    let mut change = ConfChange::default();
    change.set_change_type(ConfChangeType::AddNode);
    change.node_id = 99;
    let mut entry = Entry::default();
    entry.set_entry_type(EntryType::EntryConfChange);
    entry.data = protobuf::Message::write_to_bytes(&change).unwrap().into();
    let mut add_node = message(MessageType::MsgPropose, 2, 1, 0);
    add_node.set_entries(vec![entry].into());
    assert!(send_as(target, cluster_id, 2, &[add_node]).await, "a conf change closes");
    // Messages raft-rs makes for itself, and one for another member.
    assert!(send_as(target, cluster_id, 2, &[message(MessageType::MsgHup, 2, 1, 0)]).await);
    assert!(send_as(target, cluster_id, 2, &[message(MessageType::MsgHeartbeat, 2, 3, 1)]).await);
    // A leader change ordered by someone who does not lead this term (checked on the loop).
    send_as(target, cluster_id, 2, &[message(MessageType::MsgTimeoutNow, 2, 1, 1_000)]).await;

    for index in 0..3 {
        assert!(cluster.is_alive(index), "member {index} still runs");
        put_and_read(&cluster, index, &format!("after-{index}")).await;
    }
    cluster.assert_converged().await;
    let metrics = scrape(cluster.members[0].metrics);
    for reason in ["out_of_range", "forged_sender", "conf_change", "local_type", "not_for_me"] {
        assert_eq!(rejected(&metrics, reason), 1, "{reason}:\n{metrics}");
    }
    assert_eq!(rejected(&metrics, "timeout_now_not_from_leader"), 1);
    let log = cluster.log(0);
    assert!(log.contains("rejected: term 18446744073709551615 is out of range"), "{log}");
    assert!(log.contains("hello from member 99, which is not a peer"), "{log}");

    // Nothing of it was persisted: the member restarts and serves.
    assert!(cluster.terminate(0).success());
    cluster.spawn(0);
    cluster.leader().await;
    put_and_read(&cluster, 0, "restarted").await;
    cluster.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_say_hello_cost_no_memory_and_close() {
    let cluster = ProcessCluster::start("attack-idle", 3, 20);
    cluster.leader().await;
    let target = cluster.members[0].peer;
    let rss_before = rss_kib(cluster.pid(0));

    // A header announcing 256 MiB before any hello: refused by the header alone.
    let mut oversized = TcpStream::connect(target).await.unwrap();
    let mut header = vec![1u8, 2];
    header.extend_from_slice(&(256u32 << 20).to_be_bytes());
    header.extend_from_slice(&[0; 4]);
    oversized.write_all(&header).await.unwrap();
    oversized.write_all(&vec![0u8; 1 << 20]).await.unwrap_or_default();
    assert!(closed_within(&mut oversized, Duration::from_secs(2)).await, "closed at once");

    // 2,000 connections that say nothing.
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        idle.push(TcpStream::connect(target).await.unwrap());
    }
    put_and_read(&cluster, 0, "while-idle").await;
    let started = Instant::now();
    for stream in &mut idle {
        let left = Duration::from_secs(5).saturating_sub(started.elapsed());
        assert!(closed_within(stream, left).await, "an idle connection is closed");
    }
    let grown_kib = rss_kib(cluster.pid(0)).saturating_sub(rss_before);
    assert!(grown_kib < 64 * 1024, "the member grew by {grown_kib} KiB");
    put_and_read(&cluster, 0, "after-idle").await;
    let metrics = scrape(cluster.members[0].metrics);
    let closed = metric(&metrics, "worknode_peer_inbound_closed_total{reason=\"shed\"}")
        + metric(&metrics, "worknode_peer_inbound_closed_total{reason=\"hello_timeout\"}");
    assert!(closed >= 2_000, "{closed} idle connections closed:\n{metrics}");
}

/// Resident memory of a process.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// CPU time a process has used (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_open_files_limit_a_member_backs_off_says_so_and_recovers() {
    let mut cluster = ProcessCluster::start("attack-nofile", 3, 20);
    cluster.leader().await;
    put_and_read(&cluster, 0, "before").await;
    let pid = cluster.pid(0);
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let limit = open + 16;
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:{limit}")])
        .status()
        .unwrap();
    assert!(status.success(), "prlimit");
    // Client connections until the member cannot accept another, and some to spare.
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(TcpStream::connect(cluster.members[0].client).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    // 100 ticks a second: spinning on accept would use about 200.
    assert!(used < 60, "the member used {used} ticks in 2 s at the limit");
    assert!(cluster.is_alive(0));
    put_and_read(&cluster, 1, "at-the-limit").await;
    let log = cluster.log(0);
    assert!(log.contains("client listener") && log.contains("cannot accept"), "{log}");
    drop(held);
    put_and_read(&cluster, 0, "after").await;
    cluster.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_configured_with_another_schedule_is_refused_and_shown_until_it_agrees() {
    let mut cluster = ProcessCluster::start("attack-disagree", 3, 20);
    cluster.leader().await;
    let config = cluster.root.join("n3.toml");
    let agreed = std::fs::read_to_string(&config).unwrap();
    assert!(cluster.terminate(2).success());
    let skewed = agreed.replace("[cores]", "[schedule]\nslot_ms = 250\n\n[cores]");
    std::fs::write(&config, skewed).unwrap();
    cluster.spawn(2);
    let deadline = Instant::now() + Duration::from_secs(10);
    let expected = "member 3 disagrees: the [schedule] settings or stakes differ from ours";
    loop {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_worknode"))
            .args(["status", "--endpoints", &cluster.members[0].client.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        if text.contains(&format!("warning from member 1: {expected}")) {
            break;
        }
        assert!(Instant::now() < deadline, "worknode status shows no disagreement:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = cluster.log(0);
    assert!(
        log.contains("member 3 is configured differently: the [schedule] settings or stakes differ from ours"),
        "{log}"
    );
    assert_eq!(log.matches("member 3 is configured differently").count(), 1, "logged once");
    put_and_read(&cluster, 0, "two-agree").await;

    assert!(cluster.terminate(2).success());
    std::fs::write(&config, agreed).unwrap();
    cluster.spawn(2);
    put_and_read(&cluster, 2, "three-agree").await;
    cluster.assert_converged().await;
}
