//! Watches from real etcd clients: the `etcd-client` crate and Debian's etcdctl, against
//! a worknode cluster whose leadership rotates.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use etcd_client::{
    Client, DeleteOptions, EventType, PutOptions, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};
use support::ProcessCluster;

const ROTATION: &str = "[schedule]\nrotation = \"on\"\nslot_ms = 50\nslots_per_turn = 4\n";

async fn client(cluster: &ProcessCluster, index: usize) -> Client {
    let endpoint = format!("http://{}", cluster.members[index].client);
    Client::connect([endpoint], None).await.unwrap()
}

/// The next response, within a few seconds.
async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch response within 10 s")
        .unwrap()
        .expect("the stream stays open")
}

/// Events as "PUT key=value (prev)" / "DELETE key (prev)", with their revisions.
fn lines(response: &WatchResponse) -> Vec<(i64, String)> {
    response
        .events()
        .iter()
        .map(|event| {
            let kv = event.kv().unwrap();
            let prev = event.prev_kv().map(|p| format!(" (was {})", p.value_str().unwrap()));
            let line = match event.event_type() {
                EventType::Put => {
                    format!("PUT {}={}", kv.key_str().unwrap(), kv.value_str().unwrap())
                }
                EventType::Delete => format!("DELETE {}", kv.key_str().unwrap()),
            };
            (kv.mod_revision(), line + &prev.unwrap_or_default())
        })
        .collect()
}

/// Reads events until `count` have arrived.
async fn events(stream: &mut WatchStream, count: usize) -> Vec<(i64, String)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let response = next(stream).await;
        assert!(!response.canceled(), "cancelled: {}", response.cancel_reason());
        seen.extend(lines(&response));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_follow_writes_replay_history_filter_and_cancel() {
    let cluster = ProcessCluster::start_with("watch-basics", 3, 20, ROTATION);
    cluster.leader().await;
    let mut writer = client(&cluster, 0).await;
    let mut watcher = client(&cluster, 1).await;

    let first = writer.put("app/a", "1", None).await.unwrap().header().unwrap().revision();
    // The watch starts at its member's newest revision: the put must have reached it (a
    // linearizable read there waits for that), or the watch would see the put.
    watcher.get("app/a", None).await.unwrap();
    let mut prefix = watcher
        .watch("app/", Some(WatchOptions::new().with_prefix().with_prev_key()))
        .await
        .unwrap();
    let created = next(&mut prefix).await;
    assert!(created.created() && !created.canceled());
    assert!(created.header().unwrap().revision() >= first);
    let id = created.watch_id();

    writer.put("app/a", "2", None).await.unwrap();
    writer.put("other", "x", None).await.unwrap();
    writer.put("app/b", "1", None).await.unwrap();
    writer.delete("app/", Some(DeleteOptions::new().with_prefix())).await.unwrap();
    let seen: Vec<String> =
        events(&mut prefix, 4).await.into_iter().map(|(_, line)| line).collect();
    assert_eq!(
        seen,
        ["PUT app/a=2 (was 1)", "PUT app/b=1", "DELETE app/a (was 2)", "DELETE app/b (was 1)"]
    );

    // A second watch on the same stream, from the first revision: the history again,
    // deletes only.
    prefix
        .watch(
            "app/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(first)
                    .with_filters([WatchFilterType::NoPut]),
            ),
        )
        .await
        .unwrap();
    let created = next(&mut prefix).await;
    assert!(created.created());
    let replay = created.watch_id();
    assert_ne!(replay, id);
    let deletes = events(&mut prefix, 2).await;
    assert_eq!(deletes.len(), 2);
    assert!(deletes.iter().all(|(_, line)| line.starts_with("DELETE")), "{deletes:?}");
    assert_eq!(deletes[0].0, deletes[1].0, "one delete, one revision");

    prefix.cancel(id).await.unwrap();
    let cancelled = next(&mut prefix).await;
    assert!(cancelled.canceled() && cancelled.watch_id() == id);
    writer.put("app/c", "1", None).await.unwrap();
    writer.delete("app/c", None).await.unwrap();
    let after = next(&mut prefix).await;
    assert_eq!(after.watch_id(), replay, "only the replaying watch is left");
    assert_eq!(lines(&after).len(), 1);

    // A progress request is answered with the current revision once every watch is
    // caught up: the watcher's member's revision, so the put must have reached it (a
    // linearizable read there waits for that) before the request.
    let head = writer.put("zz", "1", None).await.unwrap().header().unwrap().revision();
    watcher.get("zz", None).await.unwrap();
    prefix.request_progress().await.unwrap();
    let progress = loop {
        let response = next(&mut prefix).await;
        if response.events().is_empty() {
            break response;
        }
    };
    assert_eq!(progress.watch_id(), -1);
    assert!(progress.header().unwrap().revision() >= head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_start_and_bad_requests_are_refused_as_etcd_refuses_them() {
    let cluster = ProcessCluster::start("watch-refusals", 3, 20);
    cluster.leader().await;
    let mut writer = client(&cluster, 0).await;
    for value in 0..5 {
        writer.put("k", value.to_string(), None).await.unwrap();
    }
    let head = writer.get("k", None).await.unwrap().header().unwrap().revision();
    writer.compact(head - 1, None).await.unwrap();

    let mut stream =
        writer.watch("k", Some(WatchOptions::new().with_start_revision(2))).await.unwrap();
    let created = next(&mut stream).await;
    assert!(created.created());
    let cancelled = next(&mut stream).await;
    assert!(cancelled.canceled());
    assert_eq!(cancelled.compact_revision(), head - 1);
    assert_eq!(cancelled.cancel_reason(), "mvcc: required revision has been compacted");

    // From the compaction revision on, the history is still there.
    stream.watch("k", Some(WatchOptions::new().with_start_revision(head - 1))).await.unwrap();
    assert!(next(&mut stream).await.created());
    let kept = events(&mut stream, 2).await;
    assert_eq!(kept.iter().map(|(revision, _)| *revision).collect::<Vec<_>>(), [head - 1, head]);

    stream.watch("b", Some(WatchOptions::new().with_range("a"))).await.unwrap();
    let empty = next(&mut stream).await;
    assert!(empty.created() && empty.canceled() && empty.watch_id() == -1);
    assert_eq!(empty.cancel_reason(), "mvcc: watcher range is empty");

    stream.watch("k", Some(WatchOptions::new().with_watch_id(7))).await.unwrap();
    assert_eq!(next(&mut stream).await.watch_id(), 7);
    stream.watch("k", Some(WatchOptions::new().with_watch_id(7))).await.unwrap();
    let duplicate = next(&mut stream).await;
    assert!(duplicate.canceled());
    assert_eq!(duplicate.cancel_reason(), "mvcc: duplicate watch ID provided on the WatchStream");
}

/// A watcher whose member is killed resumes on another from the revision after the
/// last it saw: every write, once, in order, while leadership rotates and a writer
/// keeps writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumes_on_another_member_with_no_event_lost_or_repeated() {
    let mut cluster = ProcessCluster::start_with("watch-resume", 3, 20, ROTATION);
    cluster.leader().await;
    let mut writer = client(&cluster, 2).await;
    let start = writer.put("seq/start", "", None).await.unwrap().header().unwrap().revision();
    let writes = tokio::spawn(async move {
        let mut revisions = Vec::new();
        for n in 0..400 {
            let options = Some(PutOptions::new());
            loop {
                // A write may fail over while a member is killed; retried, it is applied
                // once or twice (both are events), so the check below follows revisions.
                match writer.put(format!("seq/{:03}", n % 20), n.to_string(), options.clone()).await
                {
                    Ok(put) => {
                        revisions.push(put.header().unwrap().revision());
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        revisions
    });

    let mut seen: Vec<(i64, String)> = Vec::new();
    let mut from = start + 1;
    for member in [0, 1] {
        let mut watcher = client(&cluster, member).await;
        let mut stream = watcher
            .watch("seq/", Some(WatchOptions::new().with_prefix().with_start_revision(from)))
            .await
            .unwrap();
        assert!(next(&mut stream).await.created());
        let batch = events(&mut stream, 100).await;
        from = batch.last().unwrap().0 + 1;
        seen.extend(batch);
        if member == 0 {
            cluster.kill(0);
        }
    }
    let revisions = writes.await.unwrap();
    let last = *revisions.last().unwrap();
    let mut watcher = client(&cluster, 1).await;
    let mut stream = watcher
        .watch("seq/", Some(WatchOptions::new().with_prefix().with_start_revision(from)))
        .await
        .unwrap();
    assert!(next(&mut stream).await.created());
    while seen.last().unwrap().0 < last {
        seen.extend(lines(&next(&mut stream).await));
    }
    let seen_revisions: Vec<i64> = seen.iter().map(|(revision, _)| *revision).collect();
    let expected: Vec<i64> = (start + 1..=last).collect();
    assert_eq!(seen_revisions, expected, "every revision once, in order");
    for revision in revisions {
        assert!(seen_revisions.binary_search(&revision).is_ok(), "write at {revision} seen");
    }
}

/// `etcdctl watch` (Debian's etcd-client package) prints what etcd's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_prints_puts_and_deletes() {
    let cluster = ProcessCluster::start("watch-etcdctl", 3, 20);
    cluster.leader().await;
    let mut writer = client(&cluster, 0).await;
    let mut child = Command::new("etcdctl")
        .arg(format!("--endpoints={}", cluster.members[1].client))
        .args(["watch", "--prefix", "--prev-kv", "cfg/"])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl is installed (scripts/deps.sh installs Debian's etcd-client)");
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // etcdctl prints nothing when its watch is created: write until it reports.
    let mut printed = Vec::new();
    for attempt in 0..50 {
        writer.put("cfg/ready", attempt.to_string(), None).await.unwrap();
        if let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(200)) {
            printed.push(line);
            break;
        }
    }
    assert_eq!(printed, ["PUT"], "etcdctl's watch reports within 10 s");
    while lines_rx.recv_timeout(Duration::from_millis(300)).is_ok() {}
    writer.put("cfg/x", "1", None).await.unwrap();
    writer.put("cfg/x", "2", None).await.unwrap();
    writer.delete("cfg/x", None).await.unwrap();
    let mut out = Vec::new();
    while out.len() < 13 {
        out.push(
            lines_rx.recv_timeout(Duration::from_secs(10)).expect("etcdctl prints the events"),
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        out,
        [
            "PUT", "cfg/x", "1", // created
            "PUT", "cfg/x", "1", "cfg/x", "2", // the previous pair, then the new one
            "DELETE", "cfg/x", "2", "cfg/x", "", // a deleted pair has no value
        ],
        "etcdctl --prev-kv prints the previous pair before the new one"
    );
}

/// The metric `name`'s value in member `index`'s exposition.
fn metric(cluster: &ProcessCluster, index: usize, name: &str) -> u64 {
    let text = support::scrape(cluster.members[index].metrics);
    let line = text.lines().find(|line| line.split(' ').next() == Some(name));
    line.and_then(|line| line.split(' ').nth(1)).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_watch_that_asked_hears_progress_and_a_busy_one_does_not() {
    let cluster = ProcessCluster::start_with(
        "watch-progress",
        3,
        20,
        "watch_progress_notify_interval_ms = 300",
    );
    cluster.leader().await;
    let mut writer = client(&cluster, 0).await;
    let head = writer.put("p", "1", None).await.unwrap().header().unwrap().revision();
    let mut watcher = client(&cluster, 1).await;
    // Progress carries the watcher's member's revision: the put has reached it.
    watcher.get("p", None).await.unwrap();
    let mut stream =
        watcher.watch("p", Some(WatchOptions::new().with_progress_notify())).await.unwrap();
    let id = next(&mut stream).await.watch_id();
    let progress = next(&mut stream).await;
    assert_eq!(progress.watch_id(), id);
    assert!(progress.events().is_empty());
    assert!(progress.header().unwrap().revision() >= head);

    // Without progress_notify: only events.
    stream.watch("q", None).await.unwrap();
    let quiet = loop {
        let response = next(&mut stream).await;
        if response.created() {
            break response.watch_id();
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1_000);
    while let Ok(response) = tokio::time::timeout_at(deadline, next(&mut stream)).await {
        assert_ne!(response.watch_id(), quiet, "a watch that did not ask hears no progress");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmenting_watch_gets_a_large_revision_in_parts() {
    use worknode_server::pb;
    let cluster = ProcessCluster::start("watch-fragment", 3, 20);
    cluster.leader().await;
    let mut writer = client(&cluster, 0).await;
    let value = vec![b'v'; 1 << 20];
    let mut written = 0;
    for key in ["big/1", "big/2", "big/3"] {
        written = writer.put(key, value.clone(), None).await.unwrap().header().unwrap().revision();
    }
    let (requests, inbound) = tokio::sync::mpsc::channel(4);
    // From the revision after the puts: member 1 may not have applied them yet, and a
    // watch from its own newest revision would see them.
    let create = pb::WatchCreateRequest {
        key: b"big/".to_vec(),
        range_end: b"big0".to_vec(),
        start_revision: written + 1,
        prev_kv: true,
        fragment: true,
        ..Default::default()
    };
    let request = pb::watch_request::RequestUnion::CreateRequest(create);
    requests.send(pb::WatchRequest { request_union: Some(request) }).await.unwrap();
    let mut watch = pb::watch_client::WatchClient::new(cluster.channel(1).await)
        .max_decoding_message_size(64 << 20);
    let mut responses = watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(inbound))
        .await
        .unwrap()
        .into_inner();
    assert!(responses.message().await.unwrap().unwrap().created);
    writer.delete("big/", Some(DeleteOptions::new().with_prefix())).await.unwrap();
    let mut parts = Vec::new();
    loop {
        let part = responses.message().await.unwrap().unwrap();
        let last = !part.fragment;
        parts.push(part);
        if last {
            break;
        }
    }
    assert!(parts.len() >= 2, "3 MiB of previous values in {} part(s)", parts.len());
    let deleted: Vec<Vec<u8>> =
        parts.iter().flat_map(|p| &p.events).map(|e| e.kv.as_ref().unwrap().key.clone()).collect();
    assert_eq!(deleted, [b"big/1".to_vec(), b"big/2".to_vec(), b"big/3".to_vec()]);
    assert!(parts
        .iter()
        .flat_map(|p| &p.events)
        .all(|e| e.prev_kv.as_ref().unwrap().value == value));
}

/// A client that stops reading while the cluster writes more than the change feed keeps
/// loses nothing: its watch reads the rest from the store's history, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_catches_up_from_history() {
    let cluster = ProcessCluster::start("watch-slow", 3, 20);
    cluster.leader().await;
    let mut writer = client(&cluster, 0).await;
    let mut watcher = client(&cluster, 1).await;
    let mut stream = watcher.watch("slow", None).await.unwrap();
    let first = next(&mut stream).await.header().unwrap().revision() + 1;
    // 48 revisions of a 1 MiB value with its 1 MiB previous value: past the feed's
    // 64 MiB while this client reads nothing.
    let value = vec![b's'; 1 << 20];
    let mut last = 0;
    for _ in 0..48 {
        last = writer.put("slow", value.clone(), None).await.unwrap().header().unwrap().revision();
    }
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(revision, _)| *revision < last) {
        let response = next(&mut stream).await;
        seen.extend(
            response
                .events()
                .iter()
                .map(|e| (e.kv().unwrap().mod_revision(), e.kv().unwrap().value().len())),
        );
    }
    let revisions: Vec<i64> = seen.iter().map(|(revision, _)| *revision).collect();
    assert_eq!(revisions, (first..=last).collect::<Vec<_>>());
    assert!(seen.iter().all(|(_, length)| *length == value.len()));
    assert!(
        metric(&cluster, 1, "worknode_watch_history_reads_total") > 0,
        "the feed dropped what it could not keep"
    );
    assert_eq!(metric(&cluster, 1, "worknode_watches"), 1);
}

/// A watch that requires a leader (clientv3's `WithRequireLeader`, which Kubernetes
/// uses) ends with "no leader" once its member is cut off, so its client moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_requires_a_leader_ends_when_its_member_loses_it() {
    let cluster = ProcessCluster::start("watch-leader", 3, 20);
    let leader = cluster.leader().await;
    let cut = (leader + 1) % 3;
    let options = etcd_client::ConnectOptions::new().with_require_leader(true);
    let endpoint = format!("http://{}", cluster.members[cut].client);
    let mut watcher = Client::connect([endpoint], Some(options)).await.unwrap();
    let mut stream = watcher.watch("k", None).await.unwrap();
    assert!(next(&mut stream).await.created());
    cluster.isolate(cut).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends within 10 s");
    let error = ended.unwrap_err().to_string();
    assert!(error.contains("etcdserver: no leader"), "{error}");
    // Created afresh while the member has no leader, it is refused at once.
    let error = watcher.watch("k", None).await.map(drop).unwrap_err().to_string();
    assert!(error.contains("etcdserver: no leader"), "{error}");
    cluster.heal().await;
}

/// Watchers on many narrow ranges, some created while writes go on, on every member:
/// each sees exactly the writes to its range after its creation, in order — the streams
/// the hub does not wake skip what is not theirs and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_on_many_ranges_see_exactly_their_writes_while_others_write() {
    const PREFIXES: usize = 12;
    let cluster = ProcessCluster::start_with("watch-many", 3, 20, ROTATION);
    cluster.leader().await;
    let prefix = |p: usize| format!("r/{p:02}/");
    let watch = |member: usize, p: usize| {
        let endpoint = format!("http://{}", cluster.members[member].client);
        async move {
            let mut client = Client::connect([endpoint], None).await.unwrap();
            let options = WatchOptions::new().with_prefix();
            let mut stream = client.watch(prefix(p), Some(options)).await.unwrap();
            let created = next(&mut stream).await;
            assert!(created.created());
            (p, created.header().unwrap().revision(), client, stream)
        }
    };
    let mut watchers = Vec::new();
    for p in 0..PREFIXES {
        watchers.push(watch(p % 3, p).await);
    }
    // Writers put keys under twice as many prefixes as are watched.
    let mut writers = Vec::new();
    for w in 0..4usize {
        let mut writer = client(&cluster, w % 3).await;
        writers.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for n in 0..150usize {
                let key = format!("r/{:02}/{w}-{n}", (n * 7 + w * 5) % (2 * PREFIXES));
                let put = writer.put(key.clone(), "v", None).await.unwrap();
                written.push((put.header().unwrap().revision(), key));
            }
            written
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    for p in 0..PREFIXES {
        watchers.push(watch((p + 1) % 3, p).await);
    }
    let mut written = Vec::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    written.sort();
    for (p, created, _client, mut stream) in watchers {
        let expected: Vec<(i64, String)> = written
            .iter()
            .filter(|(revision, key)| *revision > created && key.starts_with(&prefix(p)))
            .map(|(revision, key)| (*revision, format!("PUT {key}=v")))
            .collect();
        let seen = events(&mut stream, expected.len()).await;
        assert_eq!(seen, expected, "prefix {} watched from {created}", prefix(p));
    }
}
