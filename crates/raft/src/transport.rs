//! Peer transport over TCP: one outbound connection per peer, reconnecting with backoff,
//! batching everything queued into one frame per flush, with TCP_NODELAY.
//!
//! The Raft loop hands messages to bounded per-peer queues and never blocks: at the bound
//! a message is dropped and counted (Raft resends). Inbound connections start with a
//! hello naming the cluster and sender; a malformed or oversized frame, or a hello from
//! another cluster, closes that connection with a logged reason, and the node runs on.
//!
//! Each writer also watches its connection for the peer closing it (the peer never writes
//! on it), reconnects at once, and remembers a peer whose address refuses the connection:
//! its host is up and nothing listens, so the peer's process is gone. The Raft loop uses
//! that to fail over without waiting out the election timeout.

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use raft::eraftpb::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::frame::{self, Frame, MESSAGES_PER_FRAME_MAX};
use crate::node::{NodeHandle, Transport, Waker};
use crate::storage::{decode_message, encode_message};

/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE_MAX: usize = 4_096;
/// First reconnect delay; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;

/// Transport counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Messages dropped because a peer queue was full.
    pub dropped_full: AtomicU64,
    /// Messages dropped because the peer is partitioned off (fault injection).
    pub dropped_blocked: AtomicU64,
    /// Frames sent.
    pub frames_sent: AtomicU64,
    /// Connections closed because of a bad frame or hello.
    pub bad_connections: AtomicU64,
    /// Connection attempts a peer's address refused (nothing listening there).
    pub refused: AtomicU64,
    /// Per peer: its address refused our last connection attempt and it has not connected
    /// to us since (its process is gone). Set by the writers, cleared by a successful
    /// connect or by the peer's hello on an inbound connection (it restarted).
    pub gone: HashMap<u64, AtomicBool>,
}

impl TransportStats {
    fn mark(&self, peer: u64, gone: bool) -> bool {
        self.gone.get(&peer).is_some_and(|flag| flag.swap(gone, Ordering::Relaxed) != gone)
    }
}

/// Peers this member currently refuses to talk to (fault injection for tests).
pub type Blocked = Arc<Mutex<HashSet<u64>>>;

/// The sending side, owned by the Raft loop.
pub struct TcpTransport {
    queues: HashMap<u64, mpsc::Sender<Vec<u8>>>,
    /// Wakes the Raft loop when a peer is found gone.
    waker: Arc<OnceLock<Waker>>,
    stats: Arc<TransportStats>,
    blocked: Blocked,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The waker (a closure) has nothing to show; the stats hold the gone flags.
        f.debug_struct("TcpTransport")
            .field("peers", &self.queues.keys().collect::<Vec<_>>())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Transport for TcpTransport {
    fn send(&mut self, messages: Vec<Message>) {
        let blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for message in messages {
            if blocked.contains(&message.to) {
                self.stats.dropped_blocked.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(queue) = self.queues.get(&message.to) else {
                continue;
            };
            if queue.try_send(encode_message(&message)).is_err() {
                self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn peer_gone(&self, peer: u64) -> bool {
        self.stats.gone.get(&peer).is_some_and(|gone| gone.load(Ordering::Relaxed))
    }

    fn set_waker(&mut self, waker: Waker) {
        let _ = self.waker.set(waker);
    }
}

/// Starts one writer task per peer on the current tokio runtime.
pub fn connect_peers(
    cluster_id: u64,
    my_id: u64,
    peers: &[(u64, SocketAddr)],
    blocked: Blocked,
) -> (TcpTransport, Arc<TransportStats>) {
    let others: Vec<(u64, SocketAddr)> =
        peers.iter().copied().filter(|(id, _)| *id != my_id).collect();
    let gone = others.iter().map(|(id, _)| (*id, AtomicBool::new(false))).collect();
    let stats = Arc::new(TransportStats { gone, ..TransportStats::default() });
    let mut queues = HashMap::new();
    let waker = Arc::new(OnceLock::new());
    for (peer, address) in others {
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
        queues.insert(peer, tx);
        let link = Link { cluster_id, my_id, peer, address, waker: Arc::clone(&waker) };
        tokio::spawn(writer(link, rx, Arc::clone(&stats), Arc::clone(&blocked)));
    }
    (TcpTransport { queues, waker, stats: Arc::clone(&stats), blocked }, stats)
}

/// One outbound connection's identity.
struct Link {
    cluster_id: u64,
    my_id: u64,
    peer: u64,
    address: SocketAddr,
    waker: Arc<OnceLock<Waker>>,
}

async fn writer(
    link: Link,
    mut queue: mpsc::Receiver<Vec<u8>>,
    stats: Arc<TransportStats>,
    blocked: Blocked,
) {
    let Link { cluster_id, my_id, peer, address, .. } = link;
    let mut backoff = BACKOFF_MIN;
    loop {
        let stream = match TcpStream::connect(address).await {
            Ok(stream) => {
                stats.mark(peer, false);
                stream
            }
            Err(error) => {
                if error.kind() == ErrorKind::ConnectionRefused {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    if stats.mark(peer, true) {
                        tracing::info!(peer, %address, "peer refuses connections: its process is not running");
                        if let Some(wake) = link.waker.get() {
                            wake();
                        }
                    }
                }
                // Drop what queued while the peer is unreachable: it would be stale by the
                // time it arrives, and Raft sends again what still matters.
                loop {
                    match queue.try_recv() {
                        Ok(_) => {}
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut incoming, mut stream) = stream.into_split();
        let mut buffer = Vec::new();
        frame::encode(&Frame::Hello { cluster_id, from: my_id }, &mut buffer);
        let mut sent_any = false;
        if stream.write_all(&buffer).await.is_ok() {
            let served =
                serve_connection(&mut queue, &mut incoming, &mut stream, peer, &stats, &blocked);
            match served.await {
                Some(sent) => sent_any = sent,
                None => return,
            }
        }
        if sent_any {
            backoff = BACKOFF_MIN;
        } else {
            // Closed before carrying anything (a peer that accepts and hangs up): wait
            // before trying again rather than spin on connect, hello, close.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Sends what is queued on one connection until it breaks or the peer is partitioned
/// off; whether it carried any frame. `None`: the queue closed (the node stopped).
async fn serve_connection(
    queue: &mut mpsc::Receiver<Vec<u8>>,
    incoming: &mut tokio::net::tcp::OwnedReadHalf,
    stream: &mut tokio::net::tcp::OwnedWriteHalf,
    peer: u64,
    stats: &TransportStats,
    blocked: &Blocked,
) -> Option<bool> {
    let mut sent_any = false;
    let mut buffer = Vec::new();
    let mut probe = [0u8; 64];
    loop {
        let first = tokio::select! {
            message = queue.recv() => message?,
            // The peer never writes here: end of stream or an error means it closed the
            // connection (or died). Reconnect at once rather than at the next send.
            read = incoming.read(&mut probe) => match read {
                Ok(0) | Err(_) => return Some(sent_any),
                Ok(_) => continue,
            },
        };
        if blocked.lock().unwrap_or_else(PoisonError::into_inner).contains(&peer) {
            // Partitioned: close the connection and drop what was queued.
            stats.dropped_blocked.fetch_add(1, Ordering::Relaxed);
            return Some(sent_any);
        }
        let mut batch = vec![first];
        while batch.len() < MESSAGES_PER_FRAME_MAX {
            match queue.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        buffer.clear();
        frame::encode(&Frame::Messages(batch), &mut buffer);
        if stream.write_all(&buffer).await.is_err() {
            return Some(sent_any);
        }
        sent_any = true;
        stats.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// Accepts peer connections and delivers their messages to the node.
pub async fn serve_peers(
    listener: TcpListener,
    cluster_id: u64,
    node: NodeHandle,
    stats: Arc<TransportStats>,
    blocked: Blocked,
) {
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(reader(
            stream,
            remote,
            cluster_id,
            node.clone(),
            Arc::clone(&stats),
            Arc::clone(&blocked),
        ));
    }
}

async fn reader(
    mut stream: TcpStream,
    remote: SocketAddr,
    cluster_id: u64,
    node: NodeHandle,
    stats: Arc<TransportStats>,
    blocked: Blocked,
) {
    let mut buffer: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut from: Option<u64> = None;
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        loop {
            match frame::decode(&buffer) {
                Ok(Some((decoded, used))) => {
                    buffer.drain(..used);
                    match (decoded, from) {
                        (Frame::Hello { cluster_id: theirs, from: sender }, None) => {
                            if theirs != cluster_id {
                                stats.bad_connections.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(%remote, "peer connection from cluster {theirs:#x}, not ours ({cluster_id:#x}): closed");
                                return;
                            }
                            from = Some(sender);
                            // It connected to us: its process runs (again).
                            stats.mark(sender, false);
                        }
                        (Frame::Messages(messages), Some(sender)) => {
                            if blocked
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .contains(&sender)
                            {
                                stats
                                    .dropped_blocked
                                    .fetch_add(messages.len() as u64, Ordering::Relaxed);
                                return;
                            }
                            for bytes in messages {
                                match decode_message(&bytes) {
                                    Ok(message) => {
                                        if !node.deliver(message) {
                                            return; // The node stopped: close the connection.
                                        }
                                    }
                                    Err(error) => {
                                        stats.bad_connections.fetch_add(1, Ordering::Relaxed);
                                        tracing::warn!(%remote, "undecodable raft message ({error}): connection closed");
                                        return;
                                    }
                                }
                            }
                        }
                        (_, _) => {
                            stats.bad_connections.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%remote, "peer connection did not start with one hello: closed");
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    stats.bad_connections.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%remote, "bad frame ({error}): connection closed");
                    return;
                }
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}
