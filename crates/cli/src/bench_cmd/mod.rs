//! `worknode bench put|get|range|fill|watch|lease-grant|keep-alive`: a closed-loop load
//! generator speaking the etcd v3 API, for worknode and etcd alike, over plain TCP or TLS.

mod streams;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use worknode_server::pb;
use worknode_server::pb::kv_client::KvClient;

use crate::jitter_cmd::parse_duration;
use crate::CliError;

/// Distinct error messages remembered in a report.
const ERROR_KINDS_MAX: usize = 16;
/// Gaps between completions at least this long are listed in the report, with when they
/// ended, so they can be lined up with handoffs and faults.
const STALL_LISTED_MIN: Duration = Duration::from_millis(2);
/// Listed gaps kept; the report says how many more there were.
const STALLS_LISTED_MAX: usize = 10_000;
/// Completions kept for `--completions` (16 bytes each); the report says how many more
/// there were.
const COMPLETIONS_MAX: usize = 20_000_000;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Workload {
    /// Puts of random keys.
    Put,
    /// Gets of one key (linearizable unless --serializable).
    Get,
    /// Unlimited ranges over every key `fill` and `put` write (linearizable unless
    /// --serializable): the large reads a client can ask for.
    Range,
    /// Writes each of the --key-space keys once, then stops (the data `range` reads).
    Fill,
    /// --watchers watch streams on one prefix while --clients put under it: events
    /// delivered per second and put-to-event latency.
    Watch,
    /// Lease grants (60 s TTL), one after another per client.
    LeaseGrant,
    /// Keep-alives of one lease per client on its own stream, one after another.
    KeepAlive,
}

/// Arguments of `worknode bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// put or get.
    #[arg(value_enum)]
    workload: Workload,
    /// Client endpoints, comma-separated host:port.
    #[arg(long, default_value = "127.0.0.1:2379", value_name = "LIST")]
    endpoints: String,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// gRPC connections shared by the clients (spread over the endpoints).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Value size in bytes (put).
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys written (put).
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    /// How long to run: 10s, 500ms, 1m.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Watch streams (watch), each watching the written prefix.
    #[arg(long, default_value_t = 64)]
    watchers: usize,
    /// Watch streams to open first and hold, idle (on a prefix nobody writes), through
    /// the run: what watchers a workload carries cost it.
    #[arg(long, default_value_t = 0)]
    idle_watchers: usize,
    /// Serve gets from the member's local state (no read index).
    #[arg(long)]
    serializable: bool,
    /// Print JSON instead of a line of text.
    #[arg(long)]
    json: bool,
    /// CA certificate to check the members' TLS certificates against (PEM); with it the
    /// endpoints are reached over TLS.
    #[arg(long, value_name = "FILE")]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate for TLS (PEM), with --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Also write every completed request to FILE, one line each: when it completed
    /// (UNIX µs), its latency (µs) and the client that sent it. For lining throughput up
    /// with events such as handoffs.
    #[arg(long, value_name = "FILE")]
    completions: Option<std::path::PathBuf>,
}

/// The measured result.
#[derive(Debug, Serialize)]
struct Report {
    workload: &'static str,
    clients: usize,
    connections: usize,
    endpoints: Vec<String>,
    duration_s: f64,
    ops: u64,
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    errors: u64,
    /// The longest a request waited before it failed (0: none failed): a request that
    /// waits and then fails is not in the latencies above, and can be the longest wait.
    failed_max_ms: f64,
    error_kinds: BTreeMap<String, u64>,
    /// Requests that never reached a member (its address refused the connection): the
    /// client moves to the next endpoint at once, as etcd's client does. Not errors.
    failovers: u64,
    stall_ms_max: f64,
    /// Gaps between completions of at least 2 ms.
    stalls: Vec<Stall>,
    /// Such gaps beyond the listed ones.
    stalls_unlisted: u64,
    /// Completions left out of the `--completions` file (beyond its bound).
    #[serde(skip_serializing_if = "is_zero")]
    completions_unlisted: u64,
    /// Puts made by a watch run (its ops are the events delivered).
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    writes_per_s: Option<f64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One completed request, for `--completions`.
#[derive(Debug, Clone, Copy)]
struct Completion {
    unix_us: u64,
    latency_us: u32,
    client: u32,
}

/// One gap between completions.
#[derive(Debug, Clone, Serialize)]
struct Stall {
    /// When the gap ended (UNIX µs).
    end_unix_us: u64,
    ms: f64,
}

/// Shared between client tasks.
struct Tally {
    latency: Histogram<u64>,
    ops: u64,
    errors: u64,
    failed_max: Duration,
    error_kinds: BTreeMap<String, u64>,
    failovers: u64,
    last_completion: Instant,
    stall_max: Duration,
    stalls: Vec<Stall>,
    stalls_unlisted: u64,
    /// Kept only with `--completions`.
    completions: Option<Vec<Completion>>,
    completions_unlisted: u64,
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

impl Tally {
    fn new(start: Instant, keep_completions: bool) -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| unreachable!("valid bounds")),
            ops: 0,
            errors: 0,
            failed_max: Duration::ZERO,
            error_kinds: BTreeMap::new(),
            failovers: 0,
            last_completion: start,
            stall_max: Duration::ZERO,
            stalls: Vec::new(),
            stalls_unlisted: 0,
            completions: keep_completions.then(Vec::new),
            completions_unlisted: 0,
        }
    }

    /// A request of `client`'s, begun at `began`, answered at `now`.
    fn succeeded(&mut self, client: usize, began: Instant, now: Instant) {
        self.ops += 1;
        let micros = (now - began).as_micros().clamp(1, 60_000_000) as u64;
        self.latency.saturating_record(micros);
        self.complete(now);
        self.record(client, micros);
    }

    /// A request begun at `began` failed at `now` with `status`; a `failover` never left
    /// the client (it goes to the next endpoint) and is no error.
    fn failed(&mut self, status: &tonic::Status, failover: bool, began: Instant, now: Instant) {
        if failover {
            self.failovers += 1;
            return;
        }
        self.errors += 1;
        self.failed_max = self.failed_max.max(now - began);
        let kind = format!("{:?}: {}", status.code(), status.message());
        if self.error_kinds.len() < ERROR_KINDS_MAX || self.error_kinds.contains_key(&kind) {
            *self.error_kinds.entry(kind).or_default() += 1;
        }
    }

    /// The report of `args`' run against `endpoints`, `elapsed` seconds long.
    fn report(&self, args: &BenchArgs, endpoints: &[String], elapsed: f64) -> Report {
        let ms = |q: f64| {
            if self.latency.is_empty() {
                0.0
            } else {
                self.latency.value_at_quantile(q) as f64 / 1e3
            }
        };
        Report {
            workload: match args.workload {
                Workload::Put => "put",
                Workload::Get if args.serializable => "get (serializable)",
                Workload::Get => "get (linearizable)",
                Workload::Range if args.serializable => "range (serializable)",
                Workload::Range => "range (linearizable)",
                Workload::Fill => "fill",
                Workload::Watch => "watch (events delivered; latency put to event)",
                Workload::LeaseGrant => "lease grant",
                Workload::KeepAlive => "lease keep-alive",
            },
            clients: args.clients,
            connections: args.connections,
            endpoints: endpoints.to_vec(),
            duration_s: elapsed,
            ops: self.ops,
            ops_per_s: self.ops as f64 / elapsed,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: if self.latency.is_empty() { 0.0 } else { self.latency.max() as f64 / 1e3 },
            errors: self.errors,
            failed_max_ms: self.failed_max.as_secs_f64() * 1e3,
            error_kinds: self.error_kinds.clone(),
            failovers: self.failovers,
            stall_ms_max: self.stall_max.as_secs_f64() * 1e3,
            stalls: self.stalls.clone(),
            stalls_unlisted: self.stalls_unlisted,
            completions_unlisted: self.completions_unlisted,
            writes: None,
            writes_per_s: None,
        }
    }

    fn complete(&mut self, now: Instant) {
        let gap = now - self.last_completion;
        self.stall_max = self.stall_max.max(gap);
        self.last_completion = now;
        if gap >= STALL_LISTED_MIN {
            if self.stalls.len() < STALLS_LISTED_MAX {
                self.stalls.push(Stall { end_unix_us: unix_us(), ms: gap.as_secs_f64() * 1e3 });
            } else {
                self.stalls_unlisted += 1;
            }
        }
    }

    fn record(&mut self, client: usize, latency_us: u64) {
        if let Some(completions) = &mut self.completions {
            if completions.len() < COMPLETIONS_MAX {
                let latency_us = u32::try_from(latency_us).unwrap_or(u32::MAX);
                let client = u32::try_from(client).unwrap_or(u32::MAX);
                completions.push(Completion { unix_us: unix_us(), latency_us, client });
            } else {
                self.completions_unlisted += 1;
            }
        }
    }
}

/// What every client of a run does.
#[derive(Clone)]
struct Load {
    workload: Workload,
    key_space: u64,
    serializable: bool,
    clients: u64,
    end: Instant,
    value: Vec<u8>,
}

/// Client `index` sends requests one after another until the run ends, moving to the
/// next of `others` when its member cannot be reached, as etcd's client does.
async fn run_client(
    index: usize,
    mut client: KvClient<Channel>,
    mut others: impl Iterator<Item = Channel>,
    tally: Arc<Mutex<Tally>>,
    load: Load,
) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ index as u64;
    let mut next_fill = index as u64;
    while Instant::now() < load.end {
        if load.workload == Workload::Fill && next_fill >= load.key_space {
            break;
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let began = Instant::now();
        let key = match load.workload {
            Workload::Fill => next_fill,
            _ => state % load.key_space,
        };
        let result = call(&mut client, load.workload, key, &load.value, load.serializable).await;
        if load.workload == Workload::Fill && result.is_ok() {
            next_fill += load.clients;
        }
        let now = Instant::now();
        let status = match result {
            Ok(()) => {
                tally.lock().unwrap_or_else(PoisonError::into_inner).succeeded(index, began, now);
                continue;
            }
            Err(status) => status,
        };
        // Like etcd's client: a member that cannot be reached is left for the next.
        let next = if connection_failed(&status) { others.next() } else { None };
        let moved = next.is_some();
        if let Some(next) = next {
            client = kv_client(next);
        }
        let failover = moved && unsent(&status);
        tally.lock().unwrap_or_else(PoisonError::into_inner).failed(&status, failover, began, now);
        if failover {
            continue;
        }
        // A failing member: do not spin on it.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One request of `workload` on key number `key` (puts and fills write `value`).
async fn call(
    client: &mut KvClient<Channel>,
    workload: Workload,
    key: u64,
    value: &[u8],
    serializable: bool,
) -> Result<(), tonic::Status> {
    match workload {
        Workload::Put | Workload::Fill => {
            let key = format!("bench-{key:08}").into_bytes();
            let put = pb::PutRequest { key, value: value.to_vec(), ..Default::default() };
            client.put(put).await.map(|_| ())
        }
        Workload::Get => {
            let key = b"bench-read-key".to_vec();
            let request = pb::RangeRequest { key, serializable, ..Default::default() };
            client.range(request).await.map(|_| ())
        }
        Workload::Watch | Workload::LeaseGrant | Workload::KeepAlive => {
            unreachable!("streams.rs runs the stream workloads")
        }
        Workload::Range => {
            let request = pb::RangeRequest {
                key: b"bench-".to_vec(),
                range_end: b"bench.".to_vec(),
                serializable,
                ..Default::default()
            };
            client.range(request).await.map(|_| ())
        }
    }
}

/// Whether a failed request never left this client: the member's address refused the
/// connection (or none could be made), so sending it elsewhere cannot apply it twice.
fn unsent(status: &tonic::Status) -> bool {
    // tonic's own words for a failed connect; a server's Unavailable (etcd's "request
    // timed out, possibly due to connection lost") may have been applied and is an error.
    let message = status.message();
    status.code() == tonic::Code::Unavailable
        && (message.contains("tcp connect error") || message.contains("error trying to connect"))
}

/// Whether the connection itself failed (the member may be gone): try another endpoint.
fn connection_failed(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
        && status.message().contains("transport error")
        || unsent(status)
}

pub(crate) fn run(args: &BenchArgs, out: &mut impl Write) -> Result<(), CliError> {
    let duration =
        parse_duration(&args.duration).map_err(|e| CliError::input(format!("--duration: {e}")))?;
    if args.clients == 0 || args.connections == 0 {
        return Err(CliError::input("--clients and --connections must be at least 1"));
    }
    let endpoints: Vec<String> = args
        .endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    if endpoints.is_empty() {
        return Err(CliError::input("--endpoints is empty"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("tokio runtime: {e}")))?;
    let (report, completions) = runtime.block_on(measure(args, &endpoints, duration))?;
    if let Some(path) = &args.completions {
        write_completions(path, &completions)
            .map_err(|e| CliError::runtime(format!("--completions {}: {e}", path.display())))?;
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(CliError::output)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{}: {} clients over {} connections to {} endpoint(s), {:.1} s: {:.1} ops/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, {} errors, {} failovers, longest stall {:.1} ms",
            report.workload,
            report.clients,
            report.connections,
            report.endpoints.len(),
            report.duration_s,
            report.ops_per_s,
            report.p50_ms,
            report.p99_ms,
            report.p999_ms,
            report.max_ms,
            report.errors,
            report.failovers,
            report.stall_ms_max
        )?;
        if let (Some(writes), Some(per_s)) = (report.writes, report.writes_per_s) {
            writeln!(out, "  {writes} puts ({per_s:.1}/s) to {} watchers", args.watchers)?;
        }
        for (kind, count) in &report.error_kinds {
            writeln!(out, "  {count} × {kind}")?;
        }
        if report.errors > 0 {
            writeln!(out, "  the longest failed after {:.1} ms", report.failed_max_ms)?;
        }
    }
    Ok(())
}

fn write_completions(path: &std::path::Path, completions: &[Completion]) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for c in completions {
        writeln!(file, "{} {} {}", c.unix_us, c.latency_us, c.client)?;
    }
    file.flush()
}

/// Largest response accepted: an unlimited range returns every key at once.
const RESPONSE_BYTES_MAX: usize = 1 << 30;

fn kv_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX)
}

/// Client TLS from --cacert, --cert and --key, when given.
fn tls_config(args: &BenchArgs) -> Result<Option<tonic::transport::ClientTlsConfig>, CliError> {
    let Some(ca) = &args.cacert else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| CliError::input(format!("{}: {e}", path.display())))
    };
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

async fn connect(
    endpoint: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Channel, CliError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("{scheme}://{endpoint}")
    };
    let mut builder = Endpoint::from_shared(uri.clone())
        .map_err(|e| CliError::input(format!("--endpoints: {uri:?} is not an address: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(3));
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls.clone())
            .map_err(|e| CliError::input(format!("TLS for {endpoint}: {}", with_causes(&e))))?;
    }
    builder.connect().await.map_err(|e| {
        CliError::runtime(format!("cannot connect to {endpoint}: {}", with_causes(&e)))
    })
}

/// An error and its causes on one line: tonic's own message is only "transport error".
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        line.push_str(": ");
        line.push_str(&inner.to_string());
        cause = inner.source();
    }
    line
}

async fn measure(
    args: &BenchArgs,
    endpoints: &[String],
    duration: Duration,
) -> Result<(Report, Vec<Completion>), CliError> {
    let tls = tls_config(args)?;
    let mut channels = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        channels.push(connect(&endpoints[index % endpoints.len()], tls.as_ref()).await?);
    }
    let _idle = streams::idle_watchers(&channels, args.idle_watchers).await?;
    if matches!(args.workload, Workload::Watch | Workload::LeaseGrant | Workload::KeepAlive) {
        let (tally, elapsed, writes) = streams::measure(args, &channels, duration).await?;
        let report = tally.report(args, endpoints, elapsed).with_writes(writes, duration);
        return Ok((report, Vec::new()));
    }
    let value = vec![b'x'; args.value_size];
    if args.workload == Workload::Get {
        // One key to read, so reads return a value as they would in use.
        let mut client = KvClient::new(channels[0].clone());
        let put = pb::PutRequest {
            key: b"bench-read-key".to_vec(),
            value: value.clone(),
            ..Default::default()
        };
        client
            .put(put)
            .await
            .map_err(|e| CliError::runtime(format!("preparing the read key: {}", e.message())))?;
    }
    let start = Instant::now();
    let tally = Arc::new(Mutex::new(Tally::new(start, args.completions.is_some())));
    let load = Load {
        workload: args.workload,
        key_space: args.key_space.max(1),
        serializable: args.serializable,
        clients: args.clients as u64,
        end: start + duration,
        value,
    };
    let mut tasks = Vec::with_capacity(args.clients);
    for index in 0..args.clients {
        // Connections to the other endpoints, in turn, for failover (none: one endpoint).
        let at = index % channels.len();
        let endpoint_of = |channel: usize| channel % endpoints.len();
        let others = (1..channels.len())
            .map(|step| (at + step) % channels.len())
            .filter(|&other| endpoint_of(other) != endpoint_of(at))
            .map(|other| channels[other].clone())
            .collect::<Vec<_>>()
            .into_iter()
            .cycle();
        let client = kv_client(channels[at].clone());
        tasks.push(tokio::spawn(run_client(
            index,
            client,
            others,
            Arc::clone(&tally),
            load.clone(),
        )));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
    let completions = tally.completions.take().unwrap_or_default();
    let report = tally.report(args, endpoints, elapsed);
    Ok((report, completions))
}
