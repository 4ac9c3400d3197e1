//! Snapshots both ways between worknode and etcd. `etcdctl snapshot save` against
//! worknode is checked by etcd's own tools (`etcdctl snapshot status` checks the file as
//! a bbolt database, `etcdctl snapshot restore` makes an etcd member of it), and
//! `worknode snapshot restore` makes a new worknode cluster of it, and of a snapshot of
//! etcd (saved, or its member's database file). Each restored cluster serves what the
//! original served: every key with its revisions and version, history back to the
//! compaction, leases with their keys, and goes on from the same revision.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use std::path::Path;
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

/// What the original served, for comparison with a restored cluster.
struct Served {
    now: Vec<String>,
    /// Every key a few revisions past the compaction.
    then: Vec<String>,
    compacted: i64,
    head: i64,
    lease: i64,
}

/// Overwrites, deletes, a transaction of several keys, values that span pages, leased
/// keys, and a compaction in the middle of it all; what `c` then serves.
async fn write_history(c: &mut Client) -> Served {
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
    let now = everything(c, 0).await.unwrap();
    let then = everything(c, compacted + 3).await.unwrap();
    Served { now, then, compacted, head, lease }
}

/// A client of `url` once it answers reads.
async fn ready_client(url: &str, what: &str) -> Client {
    let started = Instant::now();
    loop {
        if let Ok(mut client) = Client::connect([url], None).await {
            if client.get("k/000", None).await.is_ok() {
                return client;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{what} did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The restored cluster behind `restored` serves what `served` recorded, and goes on
/// from its revision.
async fn serves_the_same(restored: &mut Client, served: &Served) {
    assert_eq!(everything(restored, 0).await.unwrap(), served.now);
    assert_eq!(everything(restored, served.compacted + 3).await.unwrap(), served.then);
    let below = everything(restored, served.compacted - 1).await.unwrap_err();
    assert!(below.to_string().contains("compacted"), "{below}");
    let ttl = restored
        .lease_time_to_live(served.lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    // etcd lists a lease's keys in its map's order.
    let mut keys = ttl.keys().to_vec();
    keys.sort();
    assert_eq!(keys, [b"svc/a".to_vec(), b"svc/b".to_vec()]);
    assert!((580..=600).contains(&ttl.ttl()), "the lease lives on: {} s left", ttl.ttl());
    let put = restored.put("after", "restore", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), served.head + 1);
}

/// An etcd member on fresh loopback ports serving `data_dir`; its client URL.
fn start_etcd(data_dir: &Path, log: &Path) -> (Etcd, String) {
    let addresses = worknode_server::local_cluster::loopback_members(1).unwrap();
    let (peer_url, client_url) =
        (format!("http://{}", addresses[0].peer), format!("http://{}", addresses[0].client));
    let initial = format!("e1={peer_url}");
    let etcd = Etcd(
        Command::new("etcd")
            .args(["--name", "e1", "--data-dir", data_dir.to_str().unwrap()])
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("etcd is installed (scripts/deps.sh installs Debian's etcd-server)"),
    );
    (etcd, client_url)
}

/// `worknode snapshot restore FILE --config CONFIG ARGS`: whether it succeeded, and what
/// it printed (stdout, then stderr).
fn worknode_restore(file: &Path, config: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_worknode"))
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    support::outcome(output)
}

/// A new three-member worknode cluster restored from `file`, started.
fn restored_worknode(name: &str, file: &Path, args: &[&str]) -> ProcessCluster {
    let mut cluster = ProcessCluster::configure(name, 3, 20, ROTATION);
    for index in 0..3 {
        let (ok, text) = worknode_restore(file, &cluster.config_path(index), args);
        assert!(ok && text.starts_with("restored "), "{text}");
    }
    for index in 0..3 {
        cluster.spawn(index);
    }
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worknode_snapshot_restores_into_etcd_and_into_a_new_worknode_cluster() {
    let cluster = ProcessCluster::start_with("snapshot", 3, 20, ROTATION);
    cluster.leader().await;
    let endpoint = cluster.members[0].client.to_string();
    let mut c = Client::connect([format!("http://{endpoint}")], None).await.unwrap();
    let served = write_history(&mut c).await;

    let dir = cluster.root.join("backup");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("snapshot.db");
    let (ok, out, err) = etcdctl(&endpoint, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(ok && out.contains("Snapshot saved at"), "{out}{err}");
    let (ok, status, err) =
        etcdctl(&endpoint, &["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert!(ok, "etcdctl snapshot status (bbolt's check included): {err}");
    assert!(status.contains(&format!("\"revision\":{},", served.head)), "{status}");

    // Into etcd, by etcd's restore.
    let etcd_dir = dir.join("etcd");
    let addresses = worknode_server::local_cluster::loopback_members(1).unwrap();
    let peer_url = format!("http://{}", addresses[0].peer);
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
    drop(addresses);
    let (_etcd, client_url) = start_etcd(&etcd_dir, &dir.join("etcd.log"));
    let mut etcd = ready_client(&client_url, "etcd restored from worknode's snapshot").await;
    serves_the_same(&mut etcd, &served).await;

    // Into a new worknode cluster, by worknode's.
    let restored = restored_worknode("snapshot-restored", &file, &[]);
    restored.leader().await;
    let url = format!("http://{}", restored.members[1].client);
    let mut worknode = ready_client(&url, "worknode restored from its snapshot").await;
    serves_the_same(&mut worknode, &served).await;

    // A data directory in use is not written over; a file without its hash needs the flag.
    let (ok, text) = worknode_restore(&file, &restored.config_path(0), &[]);
    assert!(!ok && text.contains("in use by another worknode process"), "{text}");
    let bytes = std::fs::read(&file).unwrap();
    let bare = dir.join("bare.db");
    std::fs::write(&bare, &bytes[..bytes.len() - 32]).unwrap();
    let fresh = ProcessCluster::configure("snapshot-bare", 1, 20, "");
    let (ok, text) = worknode_restore(&bare, &fresh.config_path(0), &[]);
    assert!(!ok && text.contains("--skip-hash-check") && text.contains("bare.db"), "{text}");
    let (ok, text) = worknode_restore(&bare, &fresh.config_path(0), &["--skip-hash-check"]);
    assert!(ok, "{text}");
    let (ok, text) = worknode_restore(&bare, &fresh.config_path(0), &["--skip-hash-check"]);
    assert!(!ok && text.contains("already holds a member's log or snapshot"), "{text}");
}

/// From etcd to worknode: a snapshot etcd streamed, and the database file of a stopped
/// etcd member (no hash: `--skip-hash-check`), each restore into a worknode cluster
/// that serves what etcd served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_snapshot_restores_into_a_new_worknode_cluster() {
    let root = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("snapshot-from-etcd");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let etcd_dir = root.join("etcd");
    let (etcd, client_url) = start_etcd(&etcd_dir, &root.join("etcd.log"));
    let mut c = ready_client(&client_url, "etcd").await;
    let served = write_history(&mut c).await;
    let saved = root.join("etcd-snapshot.db");
    let endpoint = client_url.trim_start_matches("http://");
    let (ok, out, err) = etcdctl(endpoint, &["snapshot", "save", saved.to_str().unwrap()]);
    assert!(ok && out.contains("Snapshot saved at"), "{out}{err}");
    // The save committed etcd's backend, so its database file holds every write too.
    drop(c);
    drop(etcd);

    let restored = restored_worknode("snapshot-from-etcd-saved", &saved, &[]);
    restored.leader().await;
    let url = format!("http://{}", restored.members[0].client);
    serves_the_same(&mut ready_client(&url, "worknode restored from etcd").await, &served).await;
    drop(restored);

    let db = etcd_dir.join("member/snap/db");
    let restored = restored_worknode("snapshot-from-etcd-db", &db, &["--skip-hash-check"]);
    restored.leader().await;
    let url = format!("http://{}", restored.members[2].client);
    serves_the_same(&mut ready_client(&url, "worknode restored from etcd's db").await, &served)
        .await;
}
