//! Leases from real etcd clients, and what is built on them (etcdctl's lock and elect),
//! against a worknode cluster whose leadership rotates every 200 ms.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use support::{etcdctl, ProcessCluster};

/// 200 ms turns; 20 ms ticks and 10-tick elections make a 200 ms election timeout and a
/// 1 s shortest lease.
const ROTATION: &str = "[schedule]\nrotation = \"on\"\nslot_ms = 50\nslots_per_turn = 4\n";
const ELECTION: Duration = Duration::from_millis(200);

async fn client(cluster: &ProcessCluster, index: usize) -> Client {
    let endpoint = format!("http://{}", cluster.members[index].client);
    Client::connect([endpoint], None).await.unwrap()
}

/// Polls until `key` is gone; when, measured from `from`.
async fn gone_after(client: &mut Client, key: &str, from: Instant, limit: Duration) -> Duration {
    loop {
        let got = client.get(key, None).await.unwrap();
        if got.kvs().is_empty() {
            return from.elapsed();
        }
        assert!(from.elapsed() < limit, "{key} still there after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_attach_keep_alive_time_to_live_list_and_revoke() {
    let cluster = ProcessCluster::start_with("lease-basics", 3, 20, ROTATION);
    cluster.leader().await;
    let mut c = client(&cluster, 0).await;
    let granted = c.lease_grant(30, None).await.unwrap();
    assert_eq!(granted.ttl(), 30);
    let id = granted.id();
    assert!(id > 0);
    c.put("svc/a", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    c.put("svc/b", "2", Some(PutOptions::new().with_lease(id))).await.unwrap();
    c.put("svc/c", "3", None).await.unwrap();
    let got = c.get("svc/a", None).await.unwrap();
    assert_eq!(got.kvs()[0].lease(), id);

    // Any member answers: it counts the lease on its own clock.
    let mut other = client(&cluster, 2).await;
    let ttl = other
        .lease_time_to_live(id, Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 30);
    assert!((28..=30).contains(&ttl.ttl()), "{}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"svc/a".to_vec(), b"svc/b".to_vec()]);
    let leases = other.leases().await.unwrap();
    assert_eq!(leases.leases().iter().map(|l| l.id()).collect::<Vec<_>>(), [id]);

    let (mut keeper, mut answers) = c.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let answer = answers.message().await.unwrap().unwrap();
    assert_eq!((answer.id(), answer.ttl()), (id, 30));

    // A key put again without the lease leaves it.
    let put = c.put("svc/b", "2", None).await.unwrap();
    // From the revision after that put: member 3 may not have applied it yet, and a watch
    // from "now" there would see it.
    let after = put.header().unwrap().revision() + 1;
    let options = WatchOptions::new().with_prefix().with_start_revision(after);
    let mut watch = other.watch("svc/", Some(options)).await.unwrap();
    assert!(watch.message().await.unwrap().unwrap().created());
    c.lease_revoke(id).await.unwrap();
    let deleted = watch.message().await.unwrap().unwrap();
    let events: Vec<_> = deleted
        .events()
        .iter()
        .map(|e| (e.event_type(), e.kv().unwrap().key_str().unwrap().to_owned()))
        .collect();
    assert_eq!(events, [(EventType::Delete, "svc/a".to_owned())], "one revision, the lease's keys");
    let left = c.get("svc/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(left.kvs().len(), 2);
    assert_eq!(other.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
    let error = c.lease_revoke(id).await.unwrap_err().to_string();
    assert!(error.contains("requested lease not found"), "{error}");
    let error = c.put("k", "v", Some(PutOptions::new().with_lease(id))).await.unwrap_err();
    assert!(error.to_string().contains("requested lease not found"), "{error}");

    // A lease id of the client's choosing; twice is refused.
    c.lease_grant(5, Some(etcd_client::LeaseGrantOptions::new().with_id(4242))).await.unwrap();
    let error = c
        .lease_grant(5, Some(etcd_client::LeaseGrantOptions::new().with_id(4242)))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("lease already exists"), "{error}");
    // The shortest lease is 1.5 election timeouts, rounded up to a second.
    assert_eq!(c.lease_grant(0, None).await.unwrap().ttl(), 1);
}

/// A lease with no keep-alive expires between its TTL and its TTL plus an election
/// timeout after its last refresh, while leadership moves every 200 ms (an etcd-style
/// lease, restarted at every leader change, would never expire here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expires_on_time_however_often_leadership_rotates() {
    let cluster = ProcessCluster::start_with("lease-rotation", 3, 20, ROTATION);
    cluster.leader().await;
    let mut c = client(&cluster, 1).await;
    let ttl = Duration::from_secs(2);
    let id = c.lease_grant(2, None).await.unwrap().id();
    let granted = Instant::now();
    c.put("held", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    let expired = gone_after(&mut c, "held", granted, 10 * ttl).await;
    assert!(expired >= ttl, "expired after {expired:?}, before its TTL");
    assert!(expired <= ttl + ELECTION + Duration::from_millis(150), "expired after {expired:?}");

    // Kept alive across many turns, it stays; left alone, it goes a TTL later.
    let id = c.lease_grant(2, None).await.unwrap().id();
    c.put("kept", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    let (mut keeper, mut answers) = c.lease_keep_alive(id).await.unwrap();
    let mut last = Instant::now();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        keeper.keep_alive().await.unwrap();
        assert_eq!(answers.message().await.unwrap().unwrap().ttl(), 2);
        last = Instant::now();
        assert_eq!(c.get("kept", None).await.unwrap().kvs().len(), 1);
    }
    drop(keeper);
    let expired = gone_after(&mut c, "kept", last, 10 * ttl).await;
    assert!(
        expired >= ttl - Duration::from_millis(50),
        "expired {expired:?} after its last keep-alive"
    );
    assert!(
        expired <= ttl + ELECTION + Duration::from_millis(150),
        "expired {expired:?} after its last keep-alive"
    );
}

/// The leader killed mid-lease: the next leader has counted the lease all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expires_on_time_when_the_leader_is_killed() {
    let mut cluster = ProcessCluster::start("lease-kill", 3, 20);
    let leader = cluster.leader().await;
    let survivor = (leader + 1) % 3;
    let mut c = client(&cluster, survivor).await;
    let ttl = Duration::from_secs(2);
    let id = c.lease_grant(2, None).await.unwrap().id();
    let granted = Instant::now();
    c.put("held", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    cluster.kill(leader);
    let expired = gone_after(&mut c, "held", granted, 10 * ttl).await;
    assert!(expired >= ttl, "expired after {expired:?}");
    assert!(expired <= ttl + ELECTION + Duration::from_millis(150), "expired after {expired:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lease_commands_print_what_etcds_do() {
    let cluster = ProcessCluster::start("lease-etcdctl", 3, 20);
    cluster.leader().await;
    let all = cluster.endpoints();
    let (ok, out, err) = etcdctl(&all, &["lease", "grant", "60"]);
    assert!(ok, "{err}");
    // "lease 000000000000000b granted with TTL(60s)"
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    assert!(out.trim().ends_with("granted with TTL(60s)"), "{out}");
    let (ok, _, err) = etcdctl(&all, &["put", "--lease", &id, "k", "v"]);
    assert!(ok, "{err}");
    let (ok, out, err) = etcdctl(&all, &["lease", "timetolive", &id, "--keys"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("lease {id} granted with TTL(60s), remaining(")), "{out}");
    assert!(out.trim().ends_with("attached keys([k])"), "{out}");
    let (ok, out, err) = etcdctl(&all, &["lease", "keep-alive", "--once", &id]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("lease {id} keepalived with TTL(60)"));
    let (_, out, _) = etcdctl(&all, &["lease", "list"]);
    assert!(out.contains(&id), "{out}");
    let (ok, out, err) = etcdctl(&all, &["lease", "revoke", &id]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("lease {id} revoked"));
    let (_, out, _) = etcdctl(&all, &["get", "k"]);
    assert_eq!(out, "");
    let (_, out, _) = etcdctl(&all, &["lease", "timetolive", &id]);
    assert_eq!(out.trim(), format!("lease {id} already expired"));
}

/// A line printer for a long-running etcdctl.
fn spawn_lines(endpoints: &str, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new("etcdctl")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// `etcdctl lock`: one holder at a time; a holder that is killed (no unlock) loses the
/// lock when its session's lease expires, and the waiter gets it then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_excludes_and_passes_on_when_a_holder_dies() {
    let cluster = ProcessCluster::start_with("lease-lock", 3, 20, ROTATION);
    cluster.leader().await;
    let all = cluster.endpoints();
    let (mut first, first_lines) = spawn_lines(&all, &["lock", "--ttl=2", "jobs"]);
    let held = first_lines.recv_timeout(Duration::from_secs(10)).expect("the first locker holds");
    assert!(held.starts_with("jobs/"), "{held}");
    let (mut second, second_lines) = spawn_lines(&all, &["lock", "--ttl=2", "jobs"]);
    assert!(
        second_lines.recv_timeout(Duration::from_millis(1_500)).is_err(),
        "the second locker waits while the first holds"
    );
    let killed = Instant::now();
    let _ = first.kill();
    let _ = first.wait();
    let taken = second_lines.recv_timeout(Duration::from_secs(10)).expect("the lock passes on");
    let waited = killed.elapsed();
    assert!(taken.starts_with("jobs/") && taken != held, "{taken} after {held}");
    assert!(waited <= Duration::from_secs(2) + ELECTION + Duration::from_millis(500), "{waited:?}");
    let _ = second.kill();
    let _ = second.wait();
}

/// `etcdctl elect`: the first campaigner leads, an observer sees it, and when it is
/// interrupted (it resigns) the second leads. (etcdctl 3.4's elect has no `--ttl`: a
/// killed campaigner would hold on for its 60 s session; the lock test kills one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_campaigns_observes_and_fails_over() {
    let cluster = ProcessCluster::start_with("lease-elect", 3, 20, ROTATION);
    cluster.leader().await;
    let all = cluster.endpoints();
    let (mut first, first_lines) = spawn_lines(&all, &["elect", "pool", "alpha"]);
    assert!(first_lines.recv_timeout(Duration::from_secs(10)).unwrap().starts_with("pool/"));
    assert_eq!(first_lines.recv_timeout(Duration::from_secs(5)).unwrap(), "alpha");
    let (mut observer, observed) = spawn_lines(&all, &["elect", "--listen", "pool"]);
    assert!(observed.recv_timeout(Duration::from_secs(10)).unwrap().starts_with("pool/"));
    assert_eq!(observed.recv_timeout(Duration::from_secs(5)).unwrap(), "alpha");
    let (mut second, second_lines) = spawn_lines(&all, &["elect", "pool", "beta"]);
    assert!(second_lines.recv_timeout(Duration::from_millis(1_500)).is_err(), "beta waits");
    let interrupted = Command::new("kill").args(["-INT", &first.id().to_string()]).status();
    assert!(interrupted.unwrap().success());
    let _ = first.wait();
    assert!(second_lines.recv_timeout(Duration::from_secs(10)).unwrap().starts_with("pool/"));
    assert_eq!(second_lines.recv_timeout(Duration::from_secs(5)).unwrap(), "beta");
    assert!(observed.recv_timeout(Duration::from_secs(10)).unwrap().starts_with("pool/"));
    assert_eq!(observed.recv_timeout(Duration::from_secs(5)).unwrap(), "beta");
    for child in [&mut second, &mut observer] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `v3lockpb.Lock` through the `etcd-client` crate (it calls the service rather than
/// running the recipe): one holder; the next gets it on unlock, and the one after when its
/// holder's lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_service_hands_the_lock_on_at_unlock_and_at_lease_expiry() {
    use etcd_client::LockOptions;
    let cluster = ProcessCluster::start_with("lock-service", 3, 20, ROTATION);
    cluster.leader().await;
    let mut c = client(&cluster, 0).await;
    let leases: Vec<i64> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(c.lease_grant(2, None).await.unwrap().id());
        }
        ids
    };
    let first = c.lock("jobs", Some(LockOptions::new().with_lease(leases[0]))).await.unwrap();
    assert_eq!(first.key(), format!("jobs/{:x}", leases[0]).as_bytes());
    let mut keeper = c.lease_keep_alive(leases[0]).await.unwrap().0;
    keeper.keep_alive().await.unwrap();
    let waiting = |lease: i64| {
        let cluster_client = cluster.members[1].client;
        tokio::spawn(async move {
            let mut c = Client::connect([format!("http://{cluster_client}")], None).await.unwrap();
            let response = c.lock("jobs", Some(LockOptions::new().with_lease(lease))).await;
            (response.map(|r| r.key().to_vec()), Instant::now())
        })
    };
    // The second keeps its lease alive; the third does not need to (it waits behind it).
    let mut second_keeper = c.lease_keep_alive(leases[1]).await.unwrap().0;
    let second = waiting(leases[1]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = waiting(leases[2]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished() && !third.is_finished(), "both wait for the holder");
    let unlocked = Instant::now();
    c.unlock(first.key()).await.unwrap();
    let (key, at) = second.await.unwrap();
    assert_eq!(key.unwrap(), format!("jobs/{:x}", leases[1]).into_bytes());
    assert!(at.duration_since(unlocked) < Duration::from_secs(1));
    // The second holder dies (its lease is no longer kept alive): the third's lease,
    // granted at the start and never kept alive, has expired too, so it is refused.
    second_keeper.keep_alive().await.unwrap();
    drop(second_keeper);
    drop(keeper);
    let (third_key, _) = third.await.unwrap();
    let error = third_key.unwrap_err().to_string();
    assert!(error.contains("session is expired") || error.contains("lease not found"), "{error}");
}

/// `v3electionpb.Election` through the `etcd-client` crate: campaign, leader, proclaim,
/// observe, resign — and the next campaigner leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_election_service_campaigns_proclaims_observes_and_resigns() {
    use etcd_client::{ProclaimOptions, ResignOptions};
    let cluster = ProcessCluster::start_with("election-service", 3, 20, ROTATION);
    cluster.leader().await;
    let mut c = client(&cluster, 0).await;
    let error = c.leader("pool").await.unwrap_err().to_string();
    assert!(error.contains("election: no leader"), "{error}");
    let alpha = c.lease_grant(30, None).await.unwrap().id();
    let beta = c.lease_grant(30, None).await.unwrap().id();
    let campaign = c.campaign("pool", "alpha", alpha).await.unwrap();
    let leader = campaign.leader().unwrap().clone();
    assert_eq!(leader.key(), format!("pool/{alpha:x}").as_bytes());
    assert_eq!(c.leader("pool").await.unwrap().kv().unwrap().value(), b"alpha");

    let mut watcher = client(&cluster, 2).await;
    let mut observed = watcher.observe("pool").await.unwrap();
    assert_eq!(observed.message().await.unwrap().unwrap().kv().unwrap().value(), b"alpha");
    c.proclaim("alpha-2", Some(ProclaimOptions::new().with_leader(leader.clone()))).await.unwrap();
    assert_eq!(observed.message().await.unwrap().unwrap().kv().unwrap().value(), b"alpha-2");

    let endpoint = cluster.members[1].client;
    let second = tokio::spawn(async move {
        let mut c = Client::connect([format!("http://{endpoint}")], None).await.unwrap();
        c.campaign("pool", "beta", beta).await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "beta waits while alpha leads");
    c.resign(Some(ResignOptions::new().with_leader(leader.clone()))).await.unwrap();
    let beta_leads = second.await.unwrap();
    assert_eq!(beta_leads.leader().unwrap().key(), format!("pool/{beta:x}").as_bytes());
    assert_eq!(observed.message().await.unwrap().unwrap().kv().unwrap().value(), b"beta");
    let error =
        c.proclaim("late", Some(ProclaimOptions::new().with_leader(leader))).await.unwrap_err();
    assert!(error.to_string().contains("election: not leader"), "{error}");
}
