//! The watch and lease workloads of `worknode bench`: what etcd's users build on.
//!
//! - `watch`: `--watchers` streams watch one prefix while `--clients` writers put keys
//!   under it as fast as they are answered. Each value carries when its put was sent, so
//!   each watcher measures put-to-event latency; throughput is events delivered per
//!   second, summed over the watchers, until every watcher has seen the last put.
//! - `lease-grant`: clients grant 60 s leases one after another.
//! - `keep-alive`: each client holds a lease and sends keep-alives on its stream one
//!   after another, as fast as they are answered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use worknode_server::pb;
use worknode_server::pb::lease_client::LeaseClient;
use worknode_server::pb::watch_client::WatchClient;

use super::{kv_client, BenchArgs, Report, Tally, Workload};
use crate::CliError;

/// The prefix the watch workload writes and watches.
const WATCH_PREFIX: &[u8] = b"bench-watch-";
const WATCH_PREFIX_END: &[u8] = b"bench-watch.";
/// TTL of the leases the lease workloads grant: longer than any run.
const LEASE_TTL_S: i64 = 60;
/// How long a keep-alive may wait for its answer before the run counts it failed.
const ANSWER_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long watchers may take, after the writers stop, to deliver the last put.
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// Runs a watch or lease workload over `channels` (the clients' connections, spread over
/// the endpoints).
pub(super) async fn measure(
    args: &BenchArgs,
    channels: &[Channel],
    duration: Duration,
) -> Result<(Tally, f64, Option<u64>), CliError> {
    match args.workload {
        Workload::Watch => watch(args, channels, duration).await,
        Workload::LeaseGrant | Workload::KeepAlive => {
            let (tally, elapsed) = lease(args.workload, channels, args.clients, duration).await?;
            Ok((tally, elapsed, None))
        }
        _ => unreachable!("the unary workloads run in bench_cmd"),
    }
}

/// One watcher's count and latencies.
struct Watched {
    events: u64,
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    last_event: Instant,
}

/// `args.watchers` watch streams on one prefix while `args.clients` writers put under it.
async fn watch(
    args: &BenchArgs,
    channels: &[Channel],
    duration: Duration,
) -> Result<(Tally, f64, Option<u64>), CliError> {
    let BenchArgs { clients, watchers, value_size, key_space, .. } = *args;
    let start = Instant::now();
    // The revision of the last put answered, once the writers stop: a watcher is done
    // when it has seen it.
    let last_revision = Arc::new(AtomicI64::new(i64::MAX));
    let (ready_tx, mut ready) = mpsc::channel(watchers.max(1));
    let mut watching = Vec::with_capacity(watchers);
    for index in 0..watchers {
        let channel = channels[index % channels.len()].clone();
        watching.push(tokio::spawn(watcher(
            channel,
            start,
            Arc::clone(&last_revision),
            ready_tx.clone(),
        )));
    }
    drop(ready_tx);
    for _ in 0..watchers {
        match ready.recv().await {
            Some(Ok(())) => {}
            Some(Err(message)) => {
                return Err(CliError::runtime(format!("creating a watch: {message}")))
            }
            None => return Err(CliError::runtime("a watcher ended before its watch was created")),
        }
    }
    let writes_start = Instant::now();
    let end = writes_start + duration;
    let mut writers = Vec::with_capacity(clients);
    for index in 0..clients {
        let client = kv_client(channels[index % channels.len()].clone());
        writers.push(tokio::spawn(writer(client, index, start, end, value_size, key_space.max(1))));
    }
    let mut puts = 0;
    let mut highest = 0;
    let mut tally = Tally::new(writes_start, false);
    for task in writers {
        let (count, revision, errors) = task.await.unwrap_or_default();
        puts += count;
        highest = highest.max(revision);
        for (kind, count) in errors {
            tally.errors += count;
            *tally.error_kinds.entry(kind).or_default() += count;
        }
    }
    last_revision.store(highest, Ordering::SeqCst);
    let mut last_event = writes_start;
    for task in watching {
        let watched = task.await.map_err(|_| CliError::runtime("a watcher panicked"))?;
        tally.ops += watched.events;
        let _ = tally.latency.add(&watched.latency);
        last_event = last_event.max(watched.last_event);
        for (kind, count) in watched.errors {
            tally.errors += count;
            *tally.error_kinds.entry(kind).or_default() += count;
        }
    }
    let elapsed = (last_event - writes_start).as_secs_f64().max(duration.as_secs_f64());
    Ok((tally, elapsed, Some(puts)))
}

/// Puts under the watched prefix until `end`, each value starting with when it was
/// sent (µs since `start`); how many succeeded, the highest revision, the errors.
async fn writer(
    mut client: pb::kv_client::KvClient<Channel>,
    index: usize,
    start: Instant,
    end: Instant,
    value_size: usize,
    key_space: u64,
) -> (u64, i64, BTreeMap<String, u64>) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ index as u64;
    let (mut puts, mut revision, mut errors) = (0, 0, BTreeMap::new());
    while Instant::now() < end {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut key = WATCH_PREFIX.to_vec();
        key.extend_from_slice(format!("{:08}", state % key_space).as_bytes());
        let mut value = vec![b'x'; value_size.max(8)];
        value[..8].copy_from_slice(&(start.elapsed().as_micros() as u64).to_le_bytes());
        match client.put(pb::PutRequest { key, value, ..Default::default() }).await {
            Ok(answer) => {
                puts += 1;
                revision = revision.max(answer.get_ref().header.as_ref().map_or(0, |h| h.revision));
            }
            Err(status) => {
                *errors
                    .entry(format!("put: {:?}: {}", status.code(), status.message()))
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    (puts, revision, errors)
}

/// One watch stream on the prefix: reports when its watch is created, then counts
/// events until it has seen `last_revision` (or the drain limit passes).
async fn watcher(
    channel: Channel,
    start: Instant,
    last_revision: Arc<AtomicI64>,
    ready: mpsc::Sender<Result<(), String>>,
) -> Watched {
    let mut watched = Watched {
        events: 0,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)
            .unwrap_or_else(|_| unreachable!("valid bounds")),
        errors: BTreeMap::new(),
        last_event: Instant::now(),
    };
    let (requests, outgoing) = mpsc::channel(1);
    let create = pb::WatchCreateRequest {
        key: WATCH_PREFIX.to_vec(),
        range_end: WATCH_PREFIX_END.to_vec(),
        ..Default::default()
    };
    let request = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    };
    let _ = requests.send(request).await;
    let mut client = WatchClient::new(channel).max_decoding_message_size(1 << 30);
    let mut stream = match client.watch(ReceiverStream::new(outgoing)).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => {
            let _ = ready.send(Err(status.message().to_owned())).await;
            return watched;
        }
    };
    let mut created = false;
    let mut seen = 0i64;
    loop {
        let drained = seen >= last_revision.load(Ordering::SeqCst);
        if drained || watched.last_event.elapsed() > DRAIN_MAX {
            break;
        }
        let next = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
        let response = match next {
            Err(_) => continue,
            Ok(None) => break,
            Ok(Some(Err(status))) => {
                let kind = format!("watch: {:?}: {}", status.code(), status.message());
                *watched.errors.entry(kind).or_default() += 1;
                break;
            }
            Ok(Some(Ok(response))) => response,
        };
        if response.created && !created {
            created = true;
            watched.last_event = Instant::now();
            let _ = ready.send(Ok(())).await;
        }
        if response.canceled {
            let kind = format!("watch canceled: {}", response.cancel_reason);
            *watched.errors.entry(kind).or_default() += 1;
            break;
        }
        let now_us = start.elapsed().as_micros() as u64;
        for event in &response.events {
            let Some(kv) = &event.kv else { continue };
            if let Some(sent) = kv.value.get(..8) {
                let sent = u64::from_le_bytes(sent.try_into().unwrap_or_default());
                watched.latency.saturating_record(now_us.saturating_sub(sent).max(1));
            }
            seen = seen.max(kv.mod_revision);
            watched.events += 1;
        }
        if !response.events.is_empty() {
            watched.last_event = Instant::now();
        }
    }
    if !created {
        let _ = ready.send(Err("the stream ended before the watch was created".into())).await;
    }
    drop(requests);
    watched
}

async fn lease(
    workload: Workload,
    channels: &[Channel],
    clients: usize,
    duration: Duration,
) -> Result<(Tally, f64), CliError> {
    let start = Instant::now();
    let tally = Arc::new(Mutex::new(Tally::new(start, false)));
    let end = start + duration;
    let mut tasks = Vec::with_capacity(clients);
    for index in 0..clients {
        let client = LeaseClient::new(channels[index % channels.len()].clone());
        let tally = Arc::clone(&tally);
        tasks.push(tokio::spawn(async move {
            if workload == Workload::KeepAlive {
                keep_alive(client, index, end, &tally).await;
            } else {
                grant(client, index, end, &tally).await;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let tally = Arc::try_unwrap(tally)
        .map_err(|_| CliError::runtime("a lease client outlived its run"))?
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    Ok((tally, elapsed))
}

async fn grant(mut client: LeaseClient<Channel>, index: usize, end: Instant, tally: &Mutex<Tally>) {
    while Instant::now() < end {
        let began = Instant::now();
        let result = client.lease_grant(pb::LeaseGrantRequest { ttl: LEASE_TTL_S, id: 0 }).await;
        let now = Instant::now();
        let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(_) => tally.succeeded(index, began, now),
            Err(status) => tally.failed(&status, false, began, now),
        }
    }
}

/// Grants a lease, then keeps it alive on one stream, one keep-alive at a time.
async fn keep_alive(
    mut client: LeaseClient<Channel>,
    index: usize,
    end: Instant,
    tally: &Mutex<Tally>,
) {
    let failed = |status: &tonic::Status, began: Instant| {
        let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
        tally.failed(status, false, began, Instant::now());
    };
    let began = Instant::now();
    let id = match client.lease_grant(pb::LeaseGrantRequest { ttl: LEASE_TTL_S, id: 0 }).await {
        Ok(granted) => granted.into_inner().id,
        Err(status) => return failed(&status, began),
    };
    // The first keep-alive goes out with the call: etcd (grpc-go) sends a stream's
    // response headers only with its first answer, which the call waits for.
    let (requests, outgoing) = mpsc::channel(1);
    let mut began = Instant::now();
    let _ = requests.send(pb::LeaseKeepAliveRequest { id }).await;
    let mut answers = match client.lease_keep_alive(ReceiverStream::new(outgoing)).await {
        Ok(answers) => answers.into_inner(),
        Err(status) => return failed(&status, began),
    };
    loop {
        let answer = tokio::time::timeout(ANSWER_WAIT_MAX, answers.next()).await;
        let now = Instant::now();
        let status = match answer {
            Ok(Some(Ok(answer))) if answer.ttl > 0 => {
                tally.lock().unwrap_or_else(PoisonError::into_inner).succeeded(index, began, now);
                None
            }
            Ok(Some(Ok(_))) => Some(tonic::Status::not_found("the lease expired")),
            Ok(Some(Err(status))) => Some(status),
            Ok(None) => Some(tonic::Status::aborted("the keep-alive stream ended")),
            Err(_) => Some(tonic::Status::deadline_exceeded("no keep-alive answer in 10 s")),
        };
        if let Some(status) = status {
            return failed(&status, began);
        }
        if now >= end {
            return;
        }
        began = now;
        if requests.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
            return;
        }
    }
}

impl Report {
    /// The puts a watch run made, beside the events it delivered.
    pub(super) fn with_writes(mut self, writes: Option<u64>, writing: Duration) -> Self {
        if let Some(writes) = writes {
            self.writes_per_s = Some(writes as f64 / writing.as_secs_f64().max(1e-9));
            self.writes = Some(writes);
        }
        self
    }
}

/// A watch stream held open and left alone.
pub(super) type IdleWatch = (mpsc::Sender<pb::WatchRequest>, tonic::Streaming<pb::WatchResponse>);

/// Opens `count` watch streams over `channels`, each watching a prefix nobody writes:
/// the idle watchers a busy etcd carries, to measure what they cost other requests.
/// They stay open until the result is dropped.
pub(super) async fn idle_watchers(
    channels: &[Channel],
    count: usize,
) -> Result<Vec<IdleWatch>, CliError> {
    let mut held = Vec::with_capacity(count);
    for index in 0..count {
        let (requests, outgoing) = mpsc::channel(1);
        let create = pb::WatchCreateRequest {
            key: b"bench-idle-".to_vec(),
            range_end: b"bench-idle.".to_vec(),
            ..Default::default()
        };
        let request = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
        };
        let _ = requests.send(request).await;
        let mut client = WatchClient::new(channels[index % channels.len()].clone());
        let failed =
            |message: String| CliError::runtime(format!("idle watcher {index}: {message}"));
        let mut stream = client
            .watch(ReceiverStream::new(outgoing))
            .await
            .map_err(|status| failed(status.message().to_owned()))?
            .into_inner();
        match stream.next().await {
            Some(Ok(response)) if response.created => held.push((requests, stream)),
            Some(Ok(_)) => return Err(failed("the first answer did not create the watch".into())),
            Some(Err(status)) => return Err(failed(status.message().to_owned())),
            None => return Err(failed("the stream ended".into())),
        }
    }
    Ok(held)
}
