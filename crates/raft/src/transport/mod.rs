//! Peer transport over TCP: one outbound connection per peer, reconnecting with backoff,
//! one frame per peer per send (a writer that fell behind writes all it holds at once),
//! with TCP_NODELAY.
//!
//! The Raft loop never blocks on a peer: while a connection is up and nothing waits on
//! it, the loop writes each frame straight to the socket without blocking (a hand-off to
//! another thread costs a wake-up on the path of every append and every acknowledgement);
//! what the socket does not take at once waits in a bounded per-peer queue for the
//! peer's writer task. At the bound a frame is dropped and counted (Raft resends).
//! Inbound connections are `inbound.rs`.
//!
//! Each writer also watches its connection for the peer closing it (the peer never writes
//! on it), reconnects at once, and remembers a peer whose address refuses the connection:
//! its host is up and nothing listens, so the peer's process is gone. The Raft loop uses
//! that to fail over without waiting out the election timeout.
//!
//! Nothing queues for a peer that cannot be reached: from a failed connection attempt
//! until the next one succeeds, frames are dropped (and counted), as a network would
//! drop them. A member that was down for seconds would otherwise receive, the moment it
//! returns, heartbeats and vote requests from terms long gone, and answer every
//! heartbeat; each answer makes the leader send it a probe of up to 256 KiB of entries
//! read from disk, so a burst of them stalled the leader's loop past an election
//! timeout. When a peer that was unreachable connects to us (it restarted), our writer
//! reconnects to it at once instead of at the end of its backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use raft::eraftpb::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::frame::{self, Agreement, Frame};
use crate::node::{Transport, Waker};
use crate::storage::encode_message;
use crate::tls::PeerTls;

mod inbound;

pub use inbound::{
    serve_peers, AcceptFailures, ACCEPT_BACKOFF, AWAITING_HELLO_MAX, CONNECTIONS_PER_PEER_MAX,
    HELLO_TIMEOUT, IDLE_TIMEOUT,
};

/// First reconnect delay; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// A connection attempt that takes longer than this counts as failed: the peer is
/// unreachable (its host is down or cut off; the kernel would retry a lost SYN for
/// minutes while frames pile up for it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Read buffer growth step.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// Transport counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Frames dropped because a peer queue was full.
    pub dropped_full: AtomicU64,
    /// Frames dropped because the peer could not be reached (the last connection attempt
    /// failed and no new one has succeeded).
    pub dropped_unreachable: AtomicU64,
    /// Messages dropped because the peer is partitioned off (fault injection).
    pub dropped_blocked: AtomicU64,
    /// Frames sent (whole, straight from the loop or by a writer).
    pub frames_sent: AtomicU64,
    /// Connections closed because of a bad frame or hello.
    pub bad_connections: AtomicU64,
    /// Connection attempts a peer's address refused (nothing listening there).
    pub refused: AtomicU64,
    /// Inbound connections closed for sending no hello within [`HELLO_TIMEOUT`].
    pub hello_timeouts: AtomicU64,
    /// Inbound connections closed still waiting for their hello, to make room for newer
    /// ones ([`AWAITING_HELLO_MAX`]).
    pub shed_awaiting_hello: AtomicU64,
    /// Inbound connections closed after carrying nothing for [`IDLE_TIMEOUT`].
    pub idle_closed: AtomicU64,
    /// Per peer: its address refused our last connection attempt and it has not connected
    /// to us since (its process is gone). Set by the writers, cleared by a successful
    /// connect or by the peer's hello on an inbound connection (it restarted).
    pub gone: HashMap<u64, AtomicBool>,
    /// Per peer: wakes its writer out of a reconnect backoff (the peer connected to us).
    pub(crate) returned: HashMap<u64, tokio::sync::Notify>,
    /// Peers' clocks against this member's, from the stamps on their frames and ours.
    pub clocks: crate::clock_offset::SharedClockOffsets,
}

impl TransportStats {
    /// Records whether `peer` is gone; whether that changed.
    pub(crate) fn mark(&self, peer: u64, gone: bool) -> bool {
        self.gone.get(&peer).is_some_and(|flag| flag.swap(gone, Ordering::Relaxed) != gone)
    }
}

/// Peers this member currently refuses to talk to (fault injection for tests).
pub type Blocked = Arc<Mutex<HashSet<u64>>>;

/// Frames (or a frame's remainder) waiting for a peer's writer task, at most this many.
pub const PEER_QUEUE_MAX: usize = 4_096;

/// What waits to be written to one peer.
enum Pending {
    /// A whole frame: it may go on any connection.
    Frame(Vec<u8>),
    /// The rest of a frame the Raft loop began on the current connection: it belongs to
    /// that connection only.
    Rest(Vec<u8>),
}

/// One peer's outbound side, shared by the Raft loop and the peer's writer task. While
/// the connection is up and nothing waits, the loop writes a frame straight to the socket
/// (non-blocking) — no hand-off to another thread on the way to the peer; whatever does
/// not go at once waits here for the writer, which owns the connection.
#[derive(Default)]
struct Outbox {
    state: Mutex<OutboxState>,
    /// Wakes the writer: something waits, or the transport closed.
    notify: tokio::sync::Notify,
    closed: AtomicBool,
}

#[derive(Default)]
struct OutboxState {
    /// A second handle on the connected socket, lent to the Raft loop while the writer is
    /// idle: `None` while disconnected or while the writer writes.
    direct: Option<std::net::TcpStream>,
    pending: VecDeque<Pending>,
    /// Frames the loop wrote itself, ever.
    direct_frames: u64,
    /// The last connection attempt failed and none has succeeded since: frames offered
    /// now are dropped, not queued.
    unreachable: bool,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// For the writer: moves what waits into `buffer` and takes the socket back from the
    /// loop; the number of whole frames in it. `None` when nothing waits: then the loop
    /// may write to `direct` itself.
    fn take_pending(
        &self,
        buffer: &mut Vec<u8>,
        direct: Option<&std::net::TcpStream>,
    ) -> Option<u64> {
        let mut state = self.lock();
        if state.pending.is_empty() {
            if state.direct.is_none() {
                state.direct = direct.and_then(|direct| direct.try_clone().ok());
            }
            return None;
        }
        state.direct = None;
        buffer.clear();
        let mut frames = 0;
        for pending in state.pending.drain(..) {
            match pending {
                Pending::Frame(bytes) => {
                    frames += 1;
                    buffer.extend_from_slice(&bytes);
                }
                Pending::Rest(bytes) => buffer.extend_from_slice(&bytes),
            }
        }
        Some(frames)
    }

    /// Sends one encoded frame: straight to the socket when nothing waits before it,
    /// otherwise (or for what the socket did not take) through the writer.
    fn offer(&self, mut frame: Vec<u8>, stats: &TransportStats) {
        let mut state = self.lock();
        if state.pending.is_empty() {
            if let Some(socket) = state.direct.as_ref() {
                // A full socket buffer or a broken connection writes nothing: the writer
                // takes over.
                let written: usize = (&*socket).write(&frame).unwrap_or_default();
                if written == frame.len() {
                    state.direct_frames += 1;
                    stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                state.direct = None;
                if written > 0 {
                    frame.drain(..written);
                    state.pending.push_back(Pending::Rest(frame));
                    drop(state);
                    self.notify.notify_one();
                    return;
                }
            }
        }
        if state.unreachable {
            stats.dropped_unreachable.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if state.pending.len() >= PEER_QUEUE_MAX {
            stats.dropped_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.pending.push_back(Pending::Frame(frame));
        drop(state);
        self.notify.notify_one();
    }
}

/// The sending side, owned by the Raft loop.
pub struct TcpTransport {
    outboxes: HashMap<u64, Arc<Outbox>>,
    /// Wakes the Raft loop when a peer is found gone.
    waker: Arc<OnceLock<Waker>>,
    stats: Arc<TransportStats>,
    blocked: Blocked,
    /// When each peer's frames were last stamped with this member's clock.
    stamps: crate::clock_offset::Stamps,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The waker (a closure) has nothing to show; the stats hold the gone flags.
        f.debug_struct("TcpTransport")
            .field("peers", &self.outboxes.keys().collect::<Vec<_>>())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Transport for TcpTransport {
    fn send(&mut self, messages: Vec<Message>) {
        let blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner).clone();
        // One frame per peer per call, messages in order.
        let mut per_peer: Vec<(u64, &Outbox, Vec<Vec<u8>>)> = Vec::new();
        for message in messages {
            if blocked.contains(&message.to) {
                self.stats.dropped_blocked.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(outbox) = self.outboxes.get(&message.to) else {
                continue;
            };
            let encoded = encode_message(&message);
            match per_peer.iter_mut().find(|(peer, _, _)| *peer == message.to) {
                Some((_, _, batch)) => batch.push(encoded),
                None => per_peer.push((message.to, outbox, vec![encoded])),
            }
        }
        let now = std::time::Instant::now();
        for (peer, outbox, batch) in per_peer {
            // Each unit is whole frames (all parts of a snapshot in one), written in order
            // on one connection; every STAMP_EVERY the first begins with a clock stamp.
            let mut units = frame::encode_batch(batch);
            if let Some(first) = units.first_mut() {
                if self.stamps.due(peer, now) {
                    let stamp = self.stamp(peer);
                    let mut stamped = Vec::with_capacity(stamp.len() + first.len());
                    stamped.extend_from_slice(&stamp);
                    stamped.append(first);
                    *first = stamped;
                }
            }
            for unit in units {
                outbox.offer(unit, &self.stats);
            }
        }
    }

    fn clock_offsets(&self) -> Vec<(u64, crate::clock_offset::ClockOffset)> {
        let now = std::time::Instant::now();
        crate::clock_offset::ClockOffsets::lock(&self.stats.clocks).all(now)
    }

    fn peer_gone(&self, peer: u64) -> bool {
        self.stats.gone.get(&peer).is_some_and(|gone| gone.load(Ordering::Relaxed))
    }

    fn peer_reachable(&self, peer: u64) -> bool {
        !self.peer_gone(peer)
            && self.outboxes.get(&peer).is_some_and(|outbox| !outbox.lock().unreachable)
    }

    fn set_waker(&mut self, waker: Waker) {
        let _ = self.waker.set(waker);
    }
}

impl TcpTransport {
    /// A clock frame for `peer`: this member's wall clock now, echoing the peer's last
    /// stamp.
    fn stamp(&self, peer: u64) -> Vec<u8> {
        let echo = crate::clock_offset::ClockOffsets::lock(&self.stats.clocks).echo(peer);
        let sent_unix_ns = crate::node::Clock::unix_ns(&crate::node::SystemClock);
        let mut bytes = Vec::with_capacity(frame::HEADER_BYTES + frame::CLOCK_PAYLOAD_BYTES);
        frame::encode(&Frame::Clock { sent_unix_ns, echo }, &mut bytes);
        bytes
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        // The node stopped: its writers close their connections and end.
        for outbox in self.outboxes.values() {
            outbox.closed.store(true, Ordering::Relaxed);
            outbox.notify.notify_one();
        }
    }
}

/// Who this member is on its outbound connections.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    /// The cluster.
    pub cluster_id: u64,
    /// This member.
    pub my_id: u64,
    /// The settings digests its hello carries.
    pub agreement: Agreement,
    /// Peer TLS, when configured: connections are mutually authenticated.
    pub tls: Option<PeerTls>,
}

/// Starts one writer task per peer on the current tokio runtime.
pub fn connect_peers(
    identity: PeerIdentity,
    peers: &[(u64, SocketAddr)],
    blocked: Blocked,
) -> (TcpTransport, Arc<TransportStats>) {
    let my_id = identity.my_id;
    let others: Vec<(u64, SocketAddr)> =
        peers.iter().copied().filter(|(id, _)| *id != my_id).collect();
    let gone = others.iter().map(|(id, _)| (*id, AtomicBool::new(false))).collect();
    let returned = others.iter().map(|(id, _)| (*id, tokio::sync::Notify::new())).collect();
    let stats = Arc::new(TransportStats { gone, returned, ..TransportStats::default() });
    let mut outboxes = HashMap::new();
    let waker = Arc::new(OnceLock::new());
    for (peer, address) in others {
        let outbox = Arc::new(Outbox::default());
        outboxes.insert(peer, Arc::clone(&outbox));
        let link = Link { identity: identity.clone(), peer, address, waker: Arc::clone(&waker) };
        tokio::spawn(writer(link, outbox, Arc::clone(&stats), Arc::clone(&blocked)));
    }
    let transport = TcpTransport {
        outboxes,
        waker,
        stats: Arc::clone(&stats),
        blocked,
        stamps: crate::clock_offset::Stamps::default(),
    };
    (transport, stats)
}

/// One outbound connection's identity.
struct Link {
    identity: PeerIdentity,
    peer: u64,
    address: SocketAddr,
    waker: Arc<OnceLock<Waker>>,
}

async fn writer(link: Link, outbox: Arc<Outbox>, stats: Arc<TransportStats>, blocked: Blocked) {
    let (peer, address) = (link.peer, link.address);
    let mut backoff = BACKOFF_MIN;
    while !outbox.closed.load(Ordering::Relaxed) {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await;
        let attempt = attempt.unwrap_or_else(|_| Err(ErrorKind::TimedOut.into()));
        let stream = match attempt {
            Ok(stream) => {
                stats.mark(peer, false);
                outbox.lock().unreachable = false;
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
                // Drop what queued, and what is offered until a connection succeeds: it
                // would be stale by the time it arrives, and Raft sends again what matters.
                {
                    let mut state = outbox.lock();
                    let dropped = state.pending.len() as u64;
                    stats.dropped_unreachable.fetch_add(dropped, Ordering::Relaxed);
                    state.pending.clear();
                    state.unreachable = true;
                }
                if let Some(returned) = stats.returned.get(&peer) {
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = returned.notified() => {}
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Whether the connection carried a frame, from the writer or straight from the loop.
        let direct_before = outbox.lock().direct_frames;
        let sent_any = match Connection::open(stream, &link.identity, peer).await {
            Some(connection) => connection.serve(&outbox, peer, &stats, &blocked).await,
            None => false,
        } || outbox.lock().direct_frames != direct_before;
        // The loop must not write to a connection that is gone.
        outbox.lock().direct = None;
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

/// Either kind of peer stream.
trait PeerStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> PeerStream for T {}

/// An outbound connection past its hello; over plain TCP, with a second handle on the
/// socket to lend the Raft loop (a TLS connection's bytes must pass through its session,
/// so the writer writes them all).
struct Connection {
    incoming: tokio::io::ReadHalf<Box<dyn PeerStream>>,
    outgoing: tokio::io::WriteHalf<Box<dyn PeerStream>>,
    direct: Option<std::net::TcpStream>,
}

impl Connection {
    async fn open(stream: TcpStream, identity: &PeerIdentity, peer: u64) -> Option<Self> {
        let (stream, direct): (Box<dyn PeerStream>, _) = match &identity.tls {
            None => {
                // Both handles share one non-blocking open file: the loop's writes never
                // block.
                let std_stream = stream.into_std().ok()?;
                let direct = std_stream.try_clone().ok()?;
                (Box::new(TcpStream::from_std(std_stream).ok()?), Some(direct))
            }
            Some(tls) => {
                // The name dialed is the peer's member name: verifying it proves whom
                // this connection reached.
                let name = rustls::pki_types::ServerName::try_from(tls.name_of(peer)).ok()?;
                let handshake = tls.connector.connect(name, stream);
                match tokio::time::timeout(HELLO_TIMEOUT, handshake).await {
                    Ok(Ok(stream)) => (Box::new(stream), None),
                    Ok(Err(error)) => {
                        tracing::warn!(peer, "peer TLS handshake failed: {error}");
                        return None;
                    }
                    Err(_) => return None,
                }
            }
        };
        let (incoming, mut outgoing) = tokio::io::split(stream);
        let mut hello = Vec::new();
        let hello_frame = Frame::Hello {
            cluster_id: identity.cluster_id,
            from: identity.my_id,
            agreement: Some(identity.agreement),
        };
        frame::encode(&hello_frame, &mut hello);
        outgoing.write_all(&hello).await.ok()?;
        outgoing.flush().await.ok()?;
        Some(Self { incoming, outgoing, direct })
    }

    /// Writes what waits until the connection breaks, the peer is partitioned off or the
    /// transport closes; whether the writer wrote anything.
    async fn serve(
        mut self,
        outbox: &Outbox,
        peer: u64,
        stats: &TransportStats,
        blocked: &Blocked,
    ) -> bool {
        let mut sent_any = false;
        let mut buffer = Vec::new();
        let mut probe = [0u8; 64];
        // A remainder begun on an earlier connection means nothing on this one.
        outbox.lock().pending.retain(|pending| matches!(pending, Pending::Frame(_)));
        loop {
            if outbox.closed.load(Ordering::Relaxed) {
                return sent_any;
            }
            if let Some(frames) = outbox.take_pending(&mut buffer, self.direct.as_ref()) {
                if blocked.lock().unwrap_or_else(PoisonError::into_inner).contains(&peer) {
                    // Partitioned: close the connection and drop what was queued.
                    stats.dropped_blocked.fetch_add(1, Ordering::Relaxed);
                    return sent_any;
                }
                if self.outgoing.write_all(&buffer).await.is_err()
                    || self.outgoing.flush().await.is_err()
                {
                    return sent_any;
                }
                sent_any = true;
                stats.frames_sent.fetch_add(frames, Ordering::Relaxed);
                // More may have queued meanwhile: look again before lending the socket.
                continue;
            }
            tokio::select! {
                () = outbox.notify.notified() => {}
                // The peer never writes here: end of stream or an error means it closed the
                // connection (or died). Reconnect at once rather than at the next send.
                read = self.incoming.read(&mut probe) => match read {
                    Ok(0) | Err(_) => return sent_any,
                    Ok(_) => {}
                },
            }
        }
    }
}
