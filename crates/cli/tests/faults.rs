//! A three-member cluster of `worknode serve` processes under a write load, with members
//! killed by SIGKILL and partitioned off: no acknowledged write is lost, none is applied
//! twice, every state machine ends equal, and a minority never acknowledges.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::ProcessCluster;
use worknode_server::pb::{PutRequest, RangeRequest};

const ROUNDS: usize = 20;
const WRITERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_loses_no_acknowledged_write() {
    let mut cluster = ProcessCluster::start("faults-kill", 3, 20);
    cluster.leader().await;
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        // Each writer keeps one connection per member and rotates over them.
        let mut clients = Vec::new();
        for index in 0..3 {
            clients.push(cluster.kv(index).await);
        }
        let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            let mut sequence = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sequence += 1;
                // Every key is written by exactly one request and never retried: a second
                // application would show as version 2.
                let key = format!("w{writer}-{sequence:06}");
                let client = &mut clients[(sequence as usize) % 3];
                let put = PutRequest {
                    key: key.clone().into_bytes(),
                    value: sequence.to_string().into_bytes(),
                    ..Default::default()
                };
                match tokio::time::timeout(Duration::from_secs(3), client.put(put)).await {
                    Ok(Ok(_)) => {
                        acknowledged.lock().unwrap().insert(key, sequence.to_string());
                    }
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
    }
    for round in 0..ROUNDS {
        let leader = cluster.leader().await;
        // Alternate: the leader on even rounds, a follower on odd ones.
        let victim = if round % 2 == 0 { leader } else { (leader + 1 + round % 2) % 3 };
        cluster.kill(victim);
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.spawn(victim);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    cluster.assert_converged().await;

    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 200,
        "the load made little progress: {} writes",
        acknowledged.len()
    );
    let mut client = cluster.kv(0).await;
    let everything = client
        .range(RangeRequest { key: b"w".to_vec(), range_end: b"x".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let stored: HashMap<String, (String, i64)> = everything
        .kvs
        .into_iter()
        .map(|kv| {
            (String::from_utf8(kv.key).unwrap(), (String::from_utf8(kv.value).unwrap(), kv.version))
        })
        .collect();
    for (key, value) in &acknowledged {
        let (stored_value, _) =
            stored.get(key).unwrap_or_else(|| panic!("acknowledged write {key} was lost"));
        assert_eq!(stored_value, value, "{key}");
    }
    for (key, (_, version)) in &stored {
        assert_eq!(*version, 1, "{key} was applied {version} times");
    }
    let recovered = (1..=3)
        .map(|id| {
            std::fs::read_to_string(cluster.root.join(format!("n{id}.log"))).unwrap_or_default()
        })
        .filter(|log| log.contains("the raft log ended in unsynced bytes"))
        .count();
    println!("{ROUNDS} kill -9 rounds: {} acknowledged writes, {} stored, none lost or doubled; {recovered} member(s) truncated a torn tail", acknowledged.len(), stored.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_never_acknowledges() {
    let cluster = ProcessCluster::start("faults-partition", 3, 20);
    let leader = cluster.leader().await;
    let mut old_leader = cluster.kv(leader).await;
    old_leader
        .put(PutRequest { key: b"before".to_vec(), value: b"1".to_vec(), ..Default::default() })
        .await
        .unwrap();
    cluster.isolate(leader).await;
    let isolated = tokio::time::timeout(
        Duration::from_secs(6),
        old_leader.put(PutRequest {
            key: b"minority".to_vec(),
            value: b"x".to_vec(),
            ..Default::default()
        }),
    )
    .await;
    assert!(!matches!(isolated, Ok(Ok(_))), "the minority acknowledged a write: {isolated:?}");
    // The majority elects a leader and keeps accepting writes.
    let majority = (leader + 1) % 3;
    let mut client = cluster.kv(majority).await;
    let mut accepted = false;
    for _ in 0..50 {
        if client
            .put(PutRequest {
                key: b"majority".to_vec(),
                value: b"y".to_vec(),
                ..Default::default()
            })
            .await
            .is_ok()
        {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the majority side never accepted a write");
    // Still cut off, the old leader must not answer a linearizable read from its state,
    // which lacks the majority's write: it fails or waits.
    let stale = tokio::time::timeout(
        Duration::from_secs(2),
        old_leader.range(RangeRequest { key: b"majority".to_vec(), ..Default::default() }),
    )
    .await;
    assert!(
        !matches!(&stale, Ok(Ok(reply)) if reply.get_ref().kvs.is_empty()),
        "the cut-off old leader answered a stale read: {stale:?}"
    );
    cluster.heal().await;
    cluster.assert_converged().await;
    let read = old_leader
        .range(RangeRequest { key: b"majority".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.kvs[0].value, b"y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_restart_recovers_the_state() {
    let mut cluster = ProcessCluster::start("faults-restart", 3, 20);
    cluster.leader().await;
    let mut client = cluster.kv(0).await;
    for i in 0..50 {
        client
            .put(PutRequest {
                key: format!("r{i:02}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for index in 0..3 {
        let status = cluster.terminate(index);
        assert!(status.success(), "member {index} exited with {status}");
    }
    for index in 0..3 {
        cluster.spawn(index);
    }
    cluster.leader().await;
    cluster.assert_converged().await;
    let mut client = cluster.kv(2).await;
    let read = client
        .range(RangeRequest {
            key: b"r".to_vec(),
            range_end: b"s".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.count, 50);
    // A second process on the same data directory is refused.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_worknode"))
        .args(["serve", "--config"])
        .arg(cluster.root.join("n1.toml"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("cannot listen on")
            || stderr.contains("in use by another worknode process"),
        "{stderr}"
    );
}
