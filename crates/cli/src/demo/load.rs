//! The demo's clients: closed-loop writers and linearizable readers over the etcd KV API.
//!
//! Each client starts at its home member and, when a request fails (the member is down,
//! or it timed out), moves to the next member and tries again until the operation's
//! deadline; only then does the operation count as failed. Every completion is recorded
//! with its wall-clock time, so the demo can attribute it to a turn.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tonic::transport::{Channel, Endpoint};
use worknode_server::pb::kv_client::KvClient;
use worknode_server::pb::{PutRequest, RangeRequest};

/// One attempt may take this long (the members' request timeout is 3 s).
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(3_500);
/// An operation fails when it has not succeeded by this deadline.
const OPERATION_DEADLINE: Duration = Duration::from_secs(8);
/// Pause before trying the next member.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Bytes per written value.
const VALUE_BYTES: usize = 64;

/// One finished operation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Completion {
    /// When it finished, nanoseconds since the UNIX epoch.
    pub(crate) at_unix_ns: u64,
    pub(crate) latency: Duration,
    pub(crate) write: bool,
    pub(crate) ok: bool,
    /// Attempts that failed before the last one (each was retried on another member).
    pub(crate) retried: u32,
    /// For a write, its key: `demo/w{writer}/{sequence}` (see [`written_key`]).
    pub(crate) writer: usize,
    pub(crate) sequence: u64,
}

/// The key a writer's `sequence`-th write puts.
pub(crate) fn written_key(writer: usize, sequence: u64) -> Vec<u8> {
    format!("demo/w{writer}/{sequence}").into_bytes()
}

/// The value it puts: its own key, padded, so a value read back names the write it came
/// from.
pub(crate) fn written_value(writer: usize, sequence: u64) -> Vec<u8> {
    let mut value = written_key(writer, sequence);
    value.resize(VALUE_BYTES.max(value.len()), b'.');
    value
}

/// Running clients.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    completions: Arc<Mutex<Vec<Completion>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub(crate) fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Load {
    /// Starts `writers` writers and `readers` readers spread over the members.
    pub(crate) fn start(members: &[SocketAddr], writers: usize, readers: usize) -> Self {
        let channels: Vec<Channel> = members
            .iter()
            .filter_map(|address| {
                Endpoint::from_shared(format!("http://{address}")).ok().map(|e| {
                    e.tcp_nodelay(true).connect_timeout(Duration::from_secs(1)).connect_lazy()
                })
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let completions = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..writers + readers)
            .map(|client| {
                let clients: Vec<KvClient<Channel>> =
                    channels.iter().cloned().map(KvClient::new).collect();
                let write = client < writers;
                let key_of = if write { client } else { client % writers.max(1) };
                tokio::spawn(run_client(
                    clients,
                    client % members.len().max(1),
                    write,
                    key_of,
                    stop.clone(),
                    completions.clone(),
                ))
            })
            .collect();
        Self { stop, completions, tasks }
    }

    /// Completions recorded since the last call.
    pub(crate) fn take(&self) -> Vec<Completion> {
        std::mem::take(&mut *self.completions.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Stops the clients after their operation in flight.
    pub(crate) async fn stop(mut self) -> Vec<Completion> {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        self.take()
    }
}

async fn run_client(
    mut clients: Vec<KvClient<Channel>>,
    home: usize,
    write: bool,
    writer: usize,
    stop: Arc<AtomicBool>,
    completions: Arc<Mutex<Vec<Completion>>>,
) {
    let mut target = home;
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let key = written_key(writer, if write { sequence } else { 1 });
        let started = Instant::now();
        let mut retried = 0u32;
        let ok = loop {
            let client = &mut clients[target];
            let attempt = async {
                if write {
                    let put = PutRequest {
                        key: key.clone(),
                        value: written_value(writer, sequence),
                        ..Default::default()
                    };
                    client.put(put).await.map(drop)
                } else {
                    let range = RangeRequest { key: key.clone(), ..Default::default() };
                    client.range(range).await.map(drop)
                }
            };
            if matches!(tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await, Ok(Ok(()))) {
                break true;
            }
            if started.elapsed() >= OPERATION_DEADLINE || stop.load(Ordering::Relaxed) {
                break false;
            }
            retried += 1;
            target = (target + 1) % clients.len();
            tokio::time::sleep(RETRY_PAUSE).await;
        };
        if !ok && stop.load(Ordering::Relaxed) {
            // Abandoned because the demo is ending, not failed by the cluster.
            break;
        }
        let completion = Completion {
            at_unix_ns: unix_ns(),
            latency: started.elapsed(),
            write,
            ok,
            retried,
            writer,
            sequence,
        };
        completions.lock().unwrap_or_else(PoisonError::into_inner).push(completion);
    }
}

/// What reading every acknowledged write back found.
#[derive(Debug, Default)]
pub(crate) struct ReadBack {
    pub(crate) checked: usize,
    /// Acknowledged writes missing, or holding another value, or applied more often than
    /// they were sent: the first few keys, and how many in all.
    pub(crate) wrong: Vec<String>,
    pub(crate) wrong_total: usize,
}

/// Reads every acknowledged write back (one linearizable range over the demo's keys,
/// through the first member that answers): each key must hold its own value, at version
/// 1 — or at most one more per retry, since a retry on another member is a new request
/// that etcd's API cannot tell from the first.
pub(crate) async fn read_back(
    members: &[SocketAddr],
    acknowledged: &[Completion],
) -> Result<ReadBack, String> {
    let range = RangeRequest {
        key: b"demo/w".to_vec(),
        range_end: b"demo/x".to_vec(),
        ..Default::default()
    };
    let mut stored = None;
    let mut failures = Vec::new();
    for address in members {
        let endpoint =
            Endpoint::from_shared(format!("http://{address}")).map_err(|e| e.to_string())?;
        let attempt = async {
            let channel = endpoint.connect_timeout(Duration::from_secs(1)).connect().await?;
            let client = KvClient::new(channel).max_decoding_message_size(usize::MAX);
            Ok::<_, Box<dyn std::error::Error>>(
                client.clone().range(range.clone()).await?.into_inner(),
            )
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(Ok(response)) => {
                stored = Some(response);
                break;
            }
            Ok(Err(error)) => failures.push(format!("{address}: {error}")),
            Err(_) => failures.push(format!("{address}: timed out")),
        }
    }
    let stored = stored.ok_or_else(|| format!("no member answered: {}", failures.join("; ")))?;
    let stored: std::collections::HashMap<Vec<u8>, (Vec<u8>, i64)> =
        stored.kvs.into_iter().map(|kv| (kv.key, (kv.value, kv.version))).collect();
    let mut result = ReadBack::default();
    for write in acknowledged.iter().filter(|c| c.write && c.ok) {
        result.checked += 1;
        let key = written_key(write.writer, write.sequence);
        let fine = stored.get(&key).is_some_and(|(value, version)| {
            *value == written_value(write.writer, write.sequence)
                && (1..=i64::from(write.retried) + 1).contains(version)
        });
        if !fine {
            result.wrong_total += 1;
            if result.wrong.len() < 3 {
                result.wrong.push(String::from_utf8_lossy(&key).into_owned());
            }
        }
    }
    Ok(result)
}
