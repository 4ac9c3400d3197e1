//! Real etcd clients against a worknode cluster: Debian's etcdctl and the `etcd-client`
//! crate, unchanged.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use support::{etcdctl_with_input, ProcessCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_put_get_del_txn_status_members_move_leader() {
    let cluster = ProcessCluster::start("etcdctl", 3, 20);
    let leader = cluster.leader().await;
    let all = cluster.endpoints();
    let one = cluster.members[(leader + 1) % 3].client.to_string();

    assert_eq!(etcdctl_with_input(&all, &["put", "app/a", "1"], None).1.trim(), "OK");
    assert_eq!(
        etcdctl_with_input(&one, &["put", "app/b", "2"], None).1.trim(),
        "OK",
        "a follower accepts writes"
    );
    let (ok, out, err) = etcdctl_with_input(&all, &["get", "app", "--prefix"], None);
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["app/a", "1", "app/b", "2"]);
    let (_, out, _) = etcdctl_with_input(&one, &["get", "app/a", "--print-value-only"], None);
    assert_eq!(out.trim(), "1");

    let (ok, out, err) = etcdctl_with_input(
        &all,
        &["txn"],
        Some("value(\"app/a\") = \"1\"\n\nput app/a 10\nget app/b\n\nput app/a failed\n\n"),
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("SUCCESS"), "{out}");
    assert!(out.contains("app/b\n2"), "{out}");
    assert_eq!(
        etcdctl_with_input(&all, &["get", "app/a", "--print-value-only"], None).1.trim(),
        "10"
    );

    let (_, out, _) = etcdctl_with_input(&all, &["del", "app", "--prefix"], None);
    assert_eq!(out.trim(), "2");
    assert_eq!(etcdctl_with_input(&all, &["get", "app", "--prefix"], None).1, "");

    let (ok, out, err) = etcdctl_with_input(&all, &["endpoint", "status", "-w", "json"], None);
    assert!(ok, "{err}");
    let statuses: serde_json::Value = serde_json::from_str(&out).unwrap();
    let leaders: Vec<u64> = statuses
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().unwrap())
        .collect();
    assert!(leaders.iter().all(|l| *l == leaders[0]), "members agree on the leader: {leaders:?}");
    assert!(etcdctl_with_input(&one, &["endpoint", "health"], None).0);

    let (ok, out, _) = etcdctl_with_input(&all, &["member", "list"], None);
    assert!(ok);
    assert_eq!(out.lines().count(), 3, "{out}");

    let target = cluster.members[(leader + 2) % 3].id;
    let (ok, out, err) = etcdctl_with_input(&all, &["move-leader", &format!("{target:x}")], None);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "Leadership transferred from {:x} to {target:x}",
            cluster.members[leader].id
        )),
        "{out}"
    );
    assert_eq!(cluster.members[cluster.leader().await].id, target);

    // etcd's error text reaches etcdctl.
    etcdctl_with_input(&all, &["put", "k", "1"], None);
    etcdctl_with_input(&all, &["put", "k", "2"], None);
    let (_, out, _) = etcdctl_with_input(&all, &["get", "k", "-w", "json"], None);
    let revision = serde_json::from_str::<serde_json::Value>(&out).unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    assert!(etcdctl_with_input(&all, &["compaction", &revision.to_string()], None).0);
    let (ok, _, err) =
        etcdctl_with_input(&all, &["get", "k", &format!("--rev={}", revision - 1)], None);
    assert!(!ok);
    assert!(err.contains("required revision has been compacted"), "{err}");
    // etcd's checks before a request is served or proposed.
    let (ok, _, err) = etcdctl_with_input(&all, &["get", ""], None);
    assert!(!ok);
    assert!(err.contains("etcdserver: key is not provided"), "{err}");

    // HashKV agrees on every member at one revision, and moves with a write.
    let hashes = |at: i64| {
        let (ok, out, err) = etcdctl_with_input(
            &all,
            &["endpoint", "hashkv", &format!("--rev={at}"), "-w", "json"],
            None,
        );
        assert!(ok, "{err}");
        let answers: serde_json::Value = serde_json::from_str(&out).unwrap();
        let hashes: Vec<(u64, i64)> = answers
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let answer = &a["HashKV"];
                (answer["hash"].as_u64().unwrap(), answer["compact_revision"].as_i64().unwrap())
            })
            .collect();
        assert_eq!(hashes.len(), 3);
        assert!(hashes.iter().all(|h| *h == hashes[0]), "members disagree at {at}: {hashes:?}");
        hashes[0]
    };
    let (hash, compacted) = hashes(revision);
    assert_eq!(compacted, revision);
    etcdctl_with_input(&all, &["put", "k", "3"], None);
    // Wait for every member to apply it: a serializable read at each.
    for member in &cluster.members {
        let endpoint = member.client.to_string();
        for _ in 0..100 {
            let (_, out, _) = etcdctl_with_input(
                &endpoint,
                &["get", "k", "--consistency=s", "--print-value-only"],
                None,
            );
            if out.trim() == "3" {
                break;
            }
        }
    }
    assert_eq!(hashes(revision).0, hash, "the hash at an old revision does not move");
    assert_ne!(hashes(revision + 1).0, hash);

    // Endpoints with a scheme, as etcd's documentation writes them, and --cluster, which
    // dials the members' client URLs: etcdctl then sends the scheme in `:authority`.
    let schemed =
        cluster.members.iter().map(|m| format!("http://{}", m.client)).collect::<Vec<_>>();
    let (ok, _, err) = etcdctl_with_input(&schemed.join(","), &["put", "schemed", "yes"], None);
    assert!(ok, "{err}");
    let (ok, out, err) =
        etcdctl_with_input(&schemed[1], &["get", "schemed", "--print-value-only"], None);
    assert_eq!((ok, out.trim()), (true, "yes"), "{err}");
    let one_member = cluster.members[0].client.to_string();
    for command in [["endpoint", "status"], ["endpoint", "hashkv"], ["endpoint", "health"]] {
        let mut args = command.to_vec();
        args.push("--cluster");
        let (ok, out, err) = etcdctl_with_input(&one_member, &args, None);
        let members =
            schemed.iter().filter(|url| format!("{out}{err}").contains(url.as_str())).count();
        assert!(ok && members == 3, "etcdctl {args:?}: {out}{err}");
    }

    // check datascale writes 10,000 keys and reads each member's resident memory from
    // the Prometheus process metrics on its client port.
    let all = cluster.members.iter().map(|m| m.client.to_string()).collect::<Vec<_>>().join(",");
    let (ok, out, err) = etcdctl_with_input(&all, &["check", "datascale", "--load=s"], None);
    assert!(ok && out.contains("PASS: Approximate system memory used"), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_space_quota_raises_nospace_until_compaction_and_disarm() {
    // A 64 KiB quota: some 60 puts of 1 KiB.
    let cluster = ProcessCluster::start_with("quota", 3, 20, "quota_backend_bytes = 65536\n");
    cluster.leader().await;
    let all = cluster.endpoints();
    let value = "v".repeat(1024);
    let mut refused = None;
    for i in 0..200 {
        let (ok, _, err) = etcdctl_with_input(&all, &["put", &format!("k{i:03}"), &value], None);
        if !ok {
            refused = Some((i, err));
            break;
        }
    }
    let (stored, err) = refused.expect("the quota never refused a put");
    assert!(err.contains("etcdserver: mvcc: database space exceeded"), "{err}");
    assert!((40..64).contains(&stored), "refused after {stored} puts of 1 KiB");

    // The alarm is replicated: every member lists it and refuses puts, reads go on.
    for member in &cluster.members {
        let endpoint = member.client.to_string();
        let (ok, out, err) = etcdctl_with_input(&endpoint, &["alarm", "list"], None);
        assert!(ok && out.contains("alarm:NOSPACE"), "{endpoint}: {out}{err}");
        let (ok, _, err) = etcdctl_with_input(&endpoint, &["put", "small", "1"], None);
        assert!(!ok && err.contains("database space exceeded"), "{endpoint}: {err}");
        let (ok, out, _) =
            etcdctl_with_input(&endpoint, &["get", "k000", "--print-value-only"], None);
        assert!(ok && out.trim() == value, "{endpoint}: reads stop under the alarm");
    }
    let (ok, out, _) = etcdctl_with_input(&all, &["endpoint", "status", "-w", "json"], None);
    assert!(ok && out.contains("alarm:NOSPACE"), "{out}");
    assert!(out.contains("\"dbSize\""), "{out}");

    // etcd's routine: delete, compact, defragment, disarm; then writes work again.
    let (ok, out, _) = etcdctl_with_input(&all, &["del", "k", "--prefix"], None);
    assert!(ok && out.trim() == stored.to_string(), "{out}");
    let (_, out, _) = etcdctl_with_input(&all, &["get", "none", "-w", "json"], None);
    let revision = serde_json::from_str::<serde_json::Value>(&out).unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    assert!(etcdctl_with_input(&all, &["compaction", &revision.to_string()], None).0);
    let (ok, _, err) = etcdctl_with_input(&all, &["defrag"], None);
    assert!(ok, "{err}");
    let (ok, out, err) = etcdctl_with_input(&all, &["alarm", "disarm"], None);
    assert!(ok && out.contains("alarm:NOSPACE"), "{out}{err}");
    let (_, out, _) = etcdctl_with_input(&all, &["alarm", "list"], None);
    assert_eq!(out.trim(), "");
    let (ok, _, err) = etcdctl_with_input(&all, &["put", "small", "1"], None);
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_client_crate_works_unchanged() {
    let cluster = ProcessCluster::start("etcd-client", 3, 20);
    cluster.leader().await;
    let endpoints: Vec<String> =
        cluster.members.iter().map(|m| format!("http://{}", m.client)).collect();
    let mut client = Client::connect(endpoints, None).await.unwrap();
    let put = client.put("config/x", "1", None).await.unwrap();
    assert!(put.header().unwrap().revision() >= 2);
    client.put("config/y", "2", None).await.unwrap();
    let got = client.get("config/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let pairs: Vec<(String, String)> = got
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_owned(), kv.value_str().unwrap().to_owned()))
        .collect();
    assert_eq!(pairs, [("config/x".into(), "1".into()), ("config/y".into(), "2".into())]);
    assert_eq!(got.kvs()[0].version(), 1);

    let txn = Txn::new()
        .when([Compare::value("config/x", CompareOp::Equal, "1")])
        .and_then([TxnOp::put("config/x", "3", None), TxnOp::get("config/y", None)])
        .or_else([TxnOp::put("config/x", "failed", None)]);
    let response = client.txn(txn).await.unwrap();
    assert!(response.succeeded());
    let got = client.get("config/x", None).await.unwrap();
    assert_eq!(got.kvs()[0].value_str().unwrap(), "3");
    assert_eq!(got.kvs()[0].version(), 2);

    let deleted = client
        .delete("config/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 2);
    let status = client.status().await.unwrap();
    assert!(status.leader() != 0);
    let members = client.member_list().await.unwrap();
    assert_eq!(members.members().len(), 3);
}

/// `auto_compaction_mode = "periodic"`: history older than the retention goes by itself,
/// newer history stays, whichever member leads when a compaction falls due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_keeps_the_retention_and_drops_the_rest() {
    let config = "auto_compaction_mode = \"periodic\"\nauto_compaction_retention = \"2s\"\n[schedule]\nrotation = \"on\"\nslot_ms = 50\nslots_per_turn = 4\n";
    let cluster = ProcessCluster::start_with("auto-compaction", 3, 20, config);
    cluster.leader().await;
    let endpoints: Vec<String> =
        cluster.members.iter().map(|m| format!("http://{}", m.client)).collect();
    let mut client = Client::connect(endpoints, None).await.unwrap();
    let first = client.put("k", "0", None).await.unwrap().header().unwrap().revision();
    let started = std::time::Instant::now();
    let mut recent = first;
    while started.elapsed() < std::time::Duration::from_millis(3_500) {
        recent = client.put("k", "x", None).await.unwrap().header().unwrap().revision();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let old = client.get("k", Some(GetOptions::new().with_revision(first))).await;
    let error = old.expect_err("the first revision is older than the retention").to_string();
    assert!(error.contains("required revision has been compacted"), "{error}");
    let kept = client.get("k", Some(GetOptions::new().with_revision(recent - 5))).await;
    assert!(kept.is_ok(), "the last moments' history stays: {kept:?}");
}
