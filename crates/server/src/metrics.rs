//! Prometheus metrics over plain HTTP/1.1 on the member's `metrics` address
//! (`GET /metrics`): the node's Raft and rotation counters and the telemetry sampler's
//! per-CPU and per-worknode series. One small request per connection; anything else gets
//! 404 or 400, a slow or oversized request is dropped.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use worknode_raft::clock_offset::ClockOffset;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use worknode_cores::telemetry::Telemetry;
use worknode_raft::rotation::HANDOFF_BUCKETS_S;
use worknode_raft::storage::LOG_SYNC_BUCKETS_S;
use worknode_raft::transport::TransportStats;
use worknode_raft::{LogStats, NodeHandle};

/// Largest request head read before the connection is dropped.
const REQUEST_MAX_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the metrics are read from.
#[derive(Clone, Debug)]
pub struct MetricsSource {
    /// The Raft node.
    pub node: NodeHandle,
    /// The peer transport's counters.
    pub transport: Arc<TransportStats>,
    /// The Raft log's write counters.
    pub log: Arc<LogStats>,
    /// The process's CPU and thread samples.
    pub telemetry: Arc<Mutex<Telemetry>>,
    /// The watch streams' counters.
    pub watch: Arc<crate::watch::WatchStats>,
}

/// Serves `GET /metrics` until the listener fails.
pub async fn serve_metrics(listener: TcpListener, source: MetricsSource) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!("metrics listener: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &source).await {
                tracing::debug!(%peer, "metrics request dropped: {error}");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, source: &MetricsSource) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                return Err(std::io::Error::other("connection closed before the request ended"));
            }
            head.extend_from_slice(&buffer[..n]);
            if head.len() > REQUEST_MAX_BYTES {
                return Err(std::io::Error::other("request head over 8 KiB"));
            }
        }
        Ok(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::other("request not received within 5 s"))??;
    let request_line = String::from_utf8_lossy(&head);
    let mut words = request_line.lines().next().unwrap_or("").split_whitespace();
    let (status, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", render(source)),
        (Some("GET"), Some(_)) => ("404 Not Found", "only /metrics is served here\n".to_owned()),
        _ => ("400 Bad Request", "send GET /metrics\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn family(text: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} {kind}");
}

/// The exposition text.
pub fn render(source: &MetricsSource) -> String {
    let mut text = String::new();
    render_node(&mut text, source);
    render_rotation(&mut text, source);
    render_log(&mut text, &source.log);
    render_transport(&mut text, &source.transport);
    render_rejections(&mut text, &source.node.rejections().counts());
    render_watch(&mut text, &source.watch);
    render_process(&mut text);
    text.push_str(&source.telemetry.lock().unwrap_or_else(PoisonError::into_inner).prometheus());
    text
}

/// The Raft loop's gauges and counters, one sample each.
fn render_node(text: &mut String, source: &MetricsSource) {
    let status = source.node.status();
    let counters = source.node.counters();
    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let handoffs = source.node.rotation_metrics().handoffs_total;
    for (name, kind, help, value) in [
        ("worknode_raft_term", "gauge", "Current Raft term.", status.term as f64),
        (
            "worknode_is_leader",
            "gauge",
            "1 while this member leads.",
            f64::from(u8::from(status.is_leader)),
        ),
        ("worknode_commit_index", "gauge", "Raft commit index.", status.commit_index as f64),
        ("worknode_applied_index", "gauge", "Raft applied index.", status.applied_index as f64),
        (
            "worknode_pending_writes",
            "gauge",
            "Writes waiting to be applied.",
            status.pending_writes as f64,
        ),
        (
            "worknode_requests_rejected_total",
            "counter",
            "Requests refused at a queue bound.",
            count(&counters.rejected) as f64,
        ),
        (
            "worknode_proposals_retried_total",
            "counter",
            "Proposals proposed again after raft-rs dropped or lost them.",
            count(&counters.retried) as f64,
        ),
        (
            "worknode_leader_changes_total",
            "counter",
            "Leader changes this member has seen.",
            count(&counters.leader_changes) as f64,
        ),
        (
            "worknode_fast_failovers_total",
            "counter",
            "Failovers this member started without waiting out the election timeout, because the leader's host refused connections (its process was gone).",
            count(&counters.fast_failovers) as f64,
        ),
        (
            "worknode_takeovers_total",
            "counter",
            "Takeovers this member began because its leader had been silent for schedule.silence_heartbeats heartbeats and the schedule names it the successor.",
            count(&counters.takeovers) as f64,
        ),
        (
            "worknode_rotation_forward_unreachable_total",
            "counter",
            "Writes in the last part of a turn proposed to the leader instead of the incoming leader, which could not be reached.",
            count(&counters.forward_unreachable) as f64,
        ),
        (
            "worknode_raft_snapshot_requests_total",
            "counter",
            "Snapshots this member asked the leader for because its log lacked entries the leader counted here (after --rejoin, or a lost log tail).",
            count(&counters.snapshot_requests) as f64,
        ),
        (
            "worknode_rotation_handoffs_total",
            "counter",
            "Planned handoffs this member completed as the outgoing leader.",
            handoffs as f64,
        ),
        (
            "worknode_rotation_forwarded_ahead_total",
            "counter",
            "Writes sent to the incoming leader in the last part of a turn.",
            count(&counters.forwarded_ahead) as f64,
        ),
        (
            "worknode_rotation_held_fallback_total",
            "counter",
            "Writes held for this member's turn that went to the actual leader instead.",
            count(&counters.held_fallback) as f64,
        ),
        (
            "worknode_raft_optimistic_rejected_total",
            "counter",
            "Followers that lacked entries a new leader sent them before their first answer, probed back as raft-rs does.",
            count(&counters.optimistic_rejected) as f64,
        ),
        (
            "worknode_raft_snapshots_total",
            "counter",
            "State-machine snapshots written, taken here or received from the leader.",
            count(&counters.snapshots) as f64,
        ),
        (
            "worknode_raft_log_reads_off_loop_total",
            "counter",
            "Log reads for lagging followers done by the background reader instead of the Raft loop.",
            status.reads_off_loop_total as f64,
        ),
        (
            "worknode_raft_snapshot_index",
            "gauge",
            "Applied index of the latest durable snapshot (0: none).",
            status.snapshot_index as f64,
        ),
    ] {
        family(text, name, kind, help);
        let _ = writeln!(text, "{name} {value}");
    }
}

/// Turns kept by reason and the handoff duration histogram.
fn render_rotation(text: &mut String, source: &MetricsSource) {
    let rotation = source.node.rotation_metrics();
    family(
        text,
        "worknode_rotation_skipped_turns_total",
        "counter",
        "Turns this member kept leading instead of handing over, by reason.",
    );
    for (reason, count) in &rotation.skipped_total {
        let _ =
            writeln!(text, "worknode_rotation_skipped_turns_total{{reason=\"{reason}\"}} {count}");
    }
    histogram(
        text,
        "worknode_rotation_handoff_duration_seconds",
        "From transfer start to the target leading.",
        &HANDOFF_BUCKETS_S,
        &rotation.handoff_buckets,
        rotation.handoff_seconds_sum,
    );
}

/// The watch streams: how many, what they sent, how often a watch read history (it
/// fell behind the change feed, or started in the past) and how many compaction ended.
fn render_watch(text: &mut String, stats: &crate::watch::WatchStats) {
    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    for (name, kind, help, value) in [
        ("worknode_watch_streams", "gauge", "Open watch streams.", count(&stats.streams)),
        ("worknode_watches", "gauge", "Watches on the open streams.", count(&stats.watches)),
        ("worknode_watch_events_sent_total", "counter", "Events sent to watches.", count(&stats.events_sent)),
        (
            "worknode_watch_history_reads_total",
            "counter",
            "Batches of events a watch read from the store's history because the change feed no longer held them.",
            count(&stats.history_reads),
        ),
        (
            "worknode_watches_compacted_total",
            "counter",
            "Watches ended because compaction removed the revision they needed next.",
            count(&stats.compacted),
        ),
    ] {
        family(text, name, kind, help);
        let _ = writeln!(text, "{name} {value}");
    }
}

/// The process metrics every Prometheus client library exports (`etcdctl check
/// datascale` reads `process_resident_memory_bytes`), from `/proc/self`.
fn render_process(text: &mut String) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(field)?.trim().strip_suffix("kB")?;
            value.trim().parse::<u64>().ok().map(|kib| kib * 1024)
        })
    };
    // utime and stime, in USER_HZ (100 per second on Linux, whatever the kernel's HZ).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let cpu_ticks = stat.rsplit_once(')').and_then(|(_, rest)| {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    });
    let open_fds = std::fs::read_dir("/proc/self/fd").map(Iterator::count).ok();
    let samples = [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            kib("VmRSS:").map(|b| b as f64),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            kib("VmSize:").map(|b| b as f64),
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu_ticks.map(|t| t as f64 / 100.0),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open_fds.map(|n| n as f64),
        ),
    ];
    for (name, kind, help, value) in samples {
        if let Some(value) = value {
            family(text, name, kind, help);
            let _ = writeln!(text, "{name} {value}");
        }
    }
}

/// The Raft log's synced writes and entries appended (their ratio is the group-commit
/// batch).
fn render_log(text: &mut String, log: &LogStats) {
    let sync_buckets: Vec<u64> =
        log.sync_buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)).collect();
    histogram(
        text,
        "worknode_raft_log_sync_duration_seconds",
        "Raft log writes made durable (raft-engine write and fdatasync), by how long they took; one covers every entry and hard state of a Raft ready.",
        &LOG_SYNC_BUCKETS_S,
        &sync_buckets,
        log.sync_ns_sum.load(Ordering::Relaxed) as f64 / 1e9,
    );
    family(
        text,
        "worknode_raft_log_entries_appended_total",
        "counter",
        "Entries appended to the Raft log; divided by the synced writes, the group-commit batch size.",
    );
    let _ = writeln!(
        text,
        "worknode_raft_log_entries_appended_total {}",
        log.entries_appended.load(Ordering::Relaxed)
    );
}

/// A Prometheus histogram from per-bucket counts (not cumulative; one more than `bounds`,
/// the last for values above the largest bound).
fn histogram(text: &mut String, name: &str, help: &str, bounds: &[f64], counts: &[u64], sum: f64) {
    family(text, name, "histogram", help);
    let mut cumulative = 0;
    for (bound, count) in bounds.iter().zip(counts) {
        cumulative += count;
        let _ = writeln!(text, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += counts.get(bounds.len()).copied().unwrap_or(0);
    let _ = writeln!(text, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(text, "{name}_sum {sum}");
    let _ = writeln!(text, "{name}_count {cumulative}");
}

/// Peer messages rejected before raft-rs saw them, by reason.
fn render_rejections(text: &mut String, counts: &[u64]) {
    family(
        text,
        "worknode_peer_messages_rejected_total",
        "counter",
        "Peer messages dropped before raft-rs saw them, by reason (forged sender, not a member, out-of-range term or index, configuration change, ...).",
    );
    for (reason, count) in worknode_raft::validate::REASONS.iter().zip(counts) {
        let _ =
            writeln!(text, "worknode_peer_messages_rejected_total{{reason=\"{reason}\"}} {count}");
    }
}

/// The peer transport's counters: frames sent, frames dropped by reason, refused and
/// bad connections, and which peers look gone (their address refuses connections).
fn render_transport(text: &mut String, stats: &TransportStats) {
    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    family(text, "worknode_peer_frames_sent_total", "counter", "Frames written to peers.");
    let _ = writeln!(text, "worknode_peer_frames_sent_total {}", count(&stats.frames_sent));
    family(
        text,
        "worknode_peer_frames_dropped_total",
        "counter",
        "Frames not sent, by reason: the peer's queue was full, the peer could not be reached, or it is partitioned off (fault injection). Raft sends again what matters.",
    );
    for (reason, counter) in [
        ("queue_full", &stats.dropped_full),
        ("unreachable", &stats.dropped_unreachable),
        ("partitioned", &stats.dropped_blocked),
    ] {
        let _ = writeln!(
            text,
            "worknode_peer_frames_dropped_total{{reason=\"{reason}\"}} {}",
            count(counter)
        );
    }
    family(
        text,
        "worknode_peer_connections_refused_total",
        "counter",
        "Connection attempts a peer's address refused (nothing listening there).",
    );
    let _ = writeln!(text, "worknode_peer_connections_refused_total {}", count(&stats.refused));
    family(
        text,
        "worknode_peer_bad_connections_total",
        "counter",
        "Inbound peer connections closed for a bad frame, hello or message.",
    );
    let _ = writeln!(text, "worknode_peer_bad_connections_total {}", count(&stats.bad_connections));
    family(
        text,
        "worknode_peer_inbound_closed_total",
        "counter",
        "Inbound peer connections closed without a bad frame: no hello within a second, newer connections needed the room, or nothing came for a minute.",
    );
    for (reason, counter) in [
        ("hello_timeout", &stats.hello_timeouts),
        ("shed", &stats.shed_awaiting_hello),
        ("idle", &stats.idle_closed),
    ] {
        let _ = writeln!(
            text,
            "worknode_peer_inbound_closed_total{{reason=\"{reason}\"}} {}",
            count(counter)
        );
    }
    family(
        text,
        "worknode_peer_gone",
        "gauge",
        "1 while a peer's address refuses connections and it has not connected to us since.",
    );
    let mut peers: Vec<_> = stats.gone.iter().collect();
    peers.sort_by_key(|(peer, _)| **peer);
    for (peer, gone) in peers {
        let _ = writeln!(
            text,
            "worknode_peer_gone{{peer=\"{peer}\"}} {}",
            u8::from(gone.load(Ordering::Relaxed))
        );
    }
    render_clocks(text, stats);
}

/// A clock metric: name, help, and what it reads of an estimate.
type ClockFamily = (&'static str, &'static str, fn(&ClockOffset) -> i64);

/// The peers' clocks as the transport measures them, and how well.
fn render_clocks(text: &mut String, stats: &TransportStats) {
    let clocks = worknode_raft::clock_offset::ClockOffsets::lock(&stats.clocks)
        .all(std::time::Instant::now());
    let families: [ClockFamily; 2] = [
        (
            "worknode_peer_clock_offset_seconds",
            "A peer's wall clock minus this member's, from the exchange with the shortest round trip lately (absent without a fresh one).",
            |offset| offset.offset_ns,
        ),
        (
            "worknode_peer_round_trip_seconds",
            "The round trip of that exchange: the clock offset's error is below half of it.",
            |offset| offset.round_trip_ns,
        ),
    ];
    for (name, help, value) in families {
        family(text, name, "gauge", help);
        for (peer, offset) in &clocks {
            let seconds = value(offset) as f64 / 1e9;
            let _ = writeln!(text, "{name}{{peer=\"{peer}\"}} {seconds}");
        }
    }
}
