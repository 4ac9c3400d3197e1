//! `etcdctl snapshot save` against worknode, checked by etcd's own tools: `etcdctl
//! snapshot status` checks the file as a bbolt database, `etcdctl snapshot restore`
//! makes an etcd member of it, and that etcd serves what worknode served — every key
//! with its revisions and version, history back to the compaction, leases with their keys.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp};
use support::{etcdctl, ProcessCluster};

const ROTATION: &str = "[schedule]\nrotation = \"on\"\nslot_ms = 50\nslots_per_turn = 4\n";

/// An etcd process, killed when dropped.
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A value of `len` bytes that differs per key.
fn value(key: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (key * 31 + i) as u8).collect()
}

/// Every key at `revision` (0: now), with what etcd reports of each.
async fn everything(client: &mut Client, revision: i64) -> Result<Vec<String>, etcd_client::Error> {
    let options = GetOptions::new().with_all_keys().with_revision(revision);
    let got = client.get("", Some(options)).await?;
    Ok(got
        .kvs()
        .iter()
        .map(|kv| {
            let digest: u64 = kv.value().iter().fold(0, |h, b| h.wrapping_mul(31) + u64::from(*b));
            format!(
                "{} len={} digest={digest} create={} mod={} version={} lease={}",
                String::from_utf8_lossy(kv.key()),
                kv.value().len(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease()
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restores_a_worknode_snapshot_and_serves_the_same_history() {
    let cluster = ProcessCluster::start_with("snapshot", 3, 20, ROTATION);
    cluster.leader().await;
    let endpoint = cluster.members[0].client.to_string();
    let mut c = Client::connect([format!("http://{endpoint}")], None).await.unwrap();

    // Overwrites, deletes, a transaction of several keys, values that span pages, leased
    // keys, and a compaction in the middle of it all.
    for i in 0..200 {
        let len = if i % 40 == 0 { 100_000 } else { 10 + i };
        c.put(format!("k/{i:03}"), value(i, len), None).await.unwrap();
    }
    for i in (0..200).step_by(7) {
        c.delete(format!("k/{i:03}"), None).await.unwrap();
    }
    for i in (0..200).step_by(5) {
        c.put(format!("k/{i:03}"), "second", None).await.unwrap();
    }
    let txn = Txn::new().and_then([
        TxnOp::put("t/a", "1", None),
        TxnOp::put("t/b", "2", None),
        TxnOp::delete("k/001", None),
    ]);
    c.txn(txn).await.unwrap();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    for key in ["svc/a", "svc/b"] {
        c.put(key, "up", Some(PutOptions::new().with_lease(lease))).await.unwrap();
    }
    let compacted = c.get("k/000", None).await.unwrap().header().unwrap().revision() - 20;
    c.compact(compacted, None).await.unwrap();
    for i in 0..10 {
        c.put(format!("k/{i:03}"), "third", None).await.unwrap();
    }
    let head = c.get("k/000", None).await.unwrap().header().unwrap().revision();
    let worknode_now = everything(&mut c, 0).await.unwrap();
    let worknode_then = everything(&mut c, compacted + 3).await.unwrap();

    let dir = cluster.root.join("backup");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("snapshot.db");
    let (ok, out, err) = etcdctl(&endpoint, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(ok && out.contains("Snapshot saved at"), "{out}{err}");
    let (ok, status, err) =
        etcdctl(&endpoint, &["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert!(ok, "etcdctl snapshot status (bbolt's check included): {err}");
    assert!(status.contains(&format!("\"revision\":{head},")), "{status}");

    let etcd_dir = dir.join("etcd");
    let addresses = worknode_server::local_cluster::loopback_members(1).unwrap();
    let (peer, client_addr) = (addresses[0].peer, addresses[0].client);
    let peer_url = format!("http://{peer}");
    let initial = format!("e1={peer_url}");
    let (ok, _, err) = etcdctl(
        &endpoint,
        &[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            etcd_dir.to_str().unwrap(),
            "--name",
            "e1",
            "--initial-cluster",
            &initial,
            "--initial-advertise-peer-urls",
            &peer_url,
        ],
    );
    assert!(ok, "etcdctl snapshot restore: {err}");
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    let client_url = format!("http://{client_addr}");
    let _etcd = Etcd(
        Command::new("etcd")
            .args(["--name", "e1", "--data-dir", etcd_dir.to_str().unwrap()])
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (scripts/deps.sh installs Debian's etcd-server)"),
    );
    let started = Instant::now();
    let mut etcd = loop {
        if let Ok(mut client) = Client::connect([client_url.as_str()], None).await {
            if client.get("k/000", None).await.is_ok() {
                break client;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "etcd did not start on the snapshot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    assert_eq!(everything(&mut etcd, 0).await.unwrap(), worknode_now);
    assert_eq!(everything(&mut etcd, compacted + 3).await.unwrap(), worknode_then);
    let below = everything(&mut etcd, compacted - 1).await.unwrap_err();
    assert!(below.to_string().contains("compacted"), "{below}");
    let ttl = etcd
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    // etcd lists a lease's keys in its map's order.
    let mut keys = ttl.keys().to_vec();
    keys.sort();
    assert_eq!(keys, [b"svc/a".to_vec(), b"svc/b".to_vec()]);
    assert!((590..=600).contains(&ttl.ttl()), "the lease keeps what it had left: {}", ttl.ttl());
    // The restored etcd is a live cluster that goes on from worknode's revision.
    let put = etcd.put("after", "restore", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), head + 1);
}
