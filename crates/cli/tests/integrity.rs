//! A member never starts on data it cannot trust: a missing snapshot the compacted log
//! depends on, or a damaged batch with valid writes after it, refuses the start with one
//! line naming the file and the remedy (`--rejoin`, which rebuilds the member from the
//! cluster); a torn tail a crash left is cut by a plain restart, losing nothing
//! acknowledged. Real `worknode serve` processes.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::ProcessCluster;
use worknode_raft::log_tail::{all_files, inspect, Tail};
use worknode_server::pb::{PutRequest, RangeRequest};

/// Writes `count` keys through member `index`, eight at a time.
async fn fill(cluster: &ProcessCluster, index: usize, prefix: &str, count: usize) {
    let mut writers = Vec::new();
    for writer in 0..8 {
        let mut client = cluster.kv(index).await;
        let prefix = prefix.to_owned();
        writers.push(tokio::spawn(async move {
            for n in (writer..count).step_by(8) {
                let put = PutRequest {
                    key: format!("{prefix}-{n:05}").into_bytes(),
                    value: vec![b'v'; 100],
                    ..Default::default()
                };
                // Elections may come and go on a loaded host: a write is retried until
                // it lands (the same key and value, so a retry changes nothing but the
                // version, which these tests do not look at).
                let mut attempts = 0;
                while client.put(put.clone()).await.is_err() {
                    attempts += 1;
                    assert!(attempts < 100, "{} never landed", n);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
}

/// Waits until member `index` serves `expected` keys under `prefix` (a member that just
/// started answers "no leader" until it hears from one).
async fn assert_serves(cluster: &ProcessCluster, index: usize, prefix: &str, expected: i64) {
    let mut client = cluster.kv(index).await;
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let range =
        RangeRequest { key: prefix.into(), range_end: end, count_only: true, ..Default::default() };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = client.range(range.clone()).await.map(|r| r.into_inner().count);
        if found.as_ref().is_ok_and(|count| *count == expected) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member {index} serves {found:?}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts member `index` with `args` and expects it to refuse: its log's last lines.
fn refused_start(cluster: &mut ProcessCluster, index: usize, args: &[&str]) -> String {
    cluster.spawn_with(index, args);
    let status = cluster.wait_exit(index, Duration::from_secs(10)).expect("the start is refused");
    assert!(!status.success(), "{status}");
    cluster.log(index)
}

/// Member 1's newest log file, its bytes, and where its valid batches end.
fn newest_log_file(cluster: &ProcessCluster) -> (PathBuf, Vec<u8>, u64) {
    let files = all_files(&cluster.root.join("data-1").join("raft-log")).unwrap();
    let (file, seq) =
        files.into_iter().rfind(|(path, _)| path.extension().unwrap() == "raftlog").unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let Tail::Valid { end, .. } = inspect(&bytes, seq) else { panic!("the log is whole") };
    (file, bytes, end)
}

/// Flips a byte at `end / divisor` of member 1's newest log file: inside what was synced
/// and acknowledged. The file.
fn flip_a_synced_byte(cluster: &ProcessCluster, divisor: u64) -> PathBuf {
    let (file, mut bytes, end) = newest_log_file(cluster);
    bytes[(end / divisor) as usize] ^= 0x5a;
    std::fs::write(&file, &bytes).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_snapshot_refuses_the_start_and_rejoin_rebuilds_the_member() {
    let mut cluster = ProcessCluster::start("integrity-snapshot", 3, 20);
    cluster.leader().await;
    // More than snapshot_entries (2,000): every member snapshots and compacts its log.
    fill(&cluster, 1, "k", 3_000).await;
    let snapshot = cluster.root.join("data-1").join("snapshot.bin");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !snapshot.exists() {
        assert!(std::time::Instant::now() < deadline, "no snapshot was taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cluster.terminate(0).success());
    std::fs::remove_file(&snapshot).unwrap();

    let log = refused_start(&mut cluster, 0, &[]);
    let expected = format!("snapshot file {} is missing", snapshot.display());
    assert!(log.contains(&expected) && log.contains("start with --rejoin"), "{log}");

    cluster.spawn_with(0, &["--rejoin"]);
    cluster.leader().await;
    assert_serves(&cluster, 0, "k", 3_000).await;
    cluster.assert_converged().await;
    assert!(cluster.log(0).contains("--rejoin: the log and snapshot were removed; keeping term"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_with_writes_after_it_refuses_the_start() {
    let mut cluster = ProcessCluster::start("integrity-flip", 3, 20);
    cluster.leader().await;
    fill(&cluster, 1, "k", 400).await;
    assert!(cluster.terminate(0).success());
    let file = flip_a_synced_byte(&cluster, 2);

    let log = refused_start(&mut cluster, 0, &[]);
    assert!(log.contains(&format!("raft log file {} is corrupt at byte", file.display())), "{log}");
    assert!(log.contains("start with --rejoin"), "{log}");

    cluster.spawn_with(0, &["--rejoin"]);
    cluster.leader().await;
    assert_serves(&cluster, 0, "k", 400).await;
    cluster.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_batch_is_cut_by_a_plain_restart() {
    let mut cluster = ProcessCluster::start("integrity-torn", 3, 20);
    cluster.leader().await;
    fill(&cluster, 1, "k", 200).await;
    assert!(cluster.terminate(0).success());
    let (file, mut bytes, end) = newest_log_file(&cluster);
    // The first half of a copy of the log's first batch: a write torn by a crash.
    let first = 69;
    let batch_len = (u64::from_be_bytes(bytes[first..first + 8].try_into().unwrap()) >> 8) as usize;
    let torn: Vec<u8> = bytes[first..first + batch_len / 2].to_vec();
    bytes.truncate(end as usize);
    bytes.extend_from_slice(&torn);
    bytes.resize(bytes.len() + 65_536, 0);
    std::fs::write(&file, &bytes).unwrap();

    cluster.spawn(0);
    cluster.leader().await;
    assert_serves(&cluster, 0, "k", 200).await;
    cluster.assert_converged().await;
    let log = cluster.log(0);
    let cut = format!("cut {} at byte {end} (", file.display());
    assert!(log.contains(&cut), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_tail_refuses_damage_mid_log_instead_of_panicking_later() {
    let mut cluster = ProcessCluster::start("integrity-recover-tail", 3, 20);
    cluster.leader().await;
    fill(&cluster, 1, "k", 400).await;
    assert!(cluster.terminate(0).success());
    flip_a_synced_byte(&cluster, 4);

    // raft-engine checks the entries of only each file's last batch: it would open this
    // log and fail when the damaged entries are read (raft-rs panics on that). The start
    // is refused up front, naming the damage and the way out.
    let log = refused_start(&mut cluster, 0, &["--recover-tail"]);
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("is corrupt at byte") && log.contains("--rejoin"), "{log}");
    cluster.spawn_with(0, &["--rejoin"]);
    cluster.leader().await;
    assert_serves(&cluster, 0, "k", 400).await;
    cluster.assert_converged().await;
}
