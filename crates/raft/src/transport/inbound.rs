//! Inbound peer connections. Each starts with a hello naming the cluster and sender,
//! judged by its header before its payload is read and due within [`HELLO_TIMEOUT`] (a TLS
//! handshake included); a sender that is not a peer of this cluster, settings that differ,
//! a certificate that does not name the sender, a malformed or oversized frame, or a
//! message that fails [`PeerRules::check`] (its `from` must be the hello's sender) closes
//! that connection with a logged reason, and the node runs on. Connections waiting for a
//! hello and connections per peer are capped, so strangers cannot hold a member's memory
//! or descriptors.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::{Blocked, TransportStats, READ_CHUNK};
use crate::frame::{self, Agreement, Frame, Reassembly};
use crate::node::NodeHandle;
use crate::storage::decode_message;
use crate::tls::PeerTls;
use crate::validate::PeerRules;

/// Inbound connections waiting for their hello, at most this many: at the limit the
/// oldest of them is closed, so strangers holding connections open cannot keep a member's
/// peers out (a peer's hello follows its connect within a round trip).
pub const AWAITING_HELLO_MAX: usize = 32;
/// Live inbound connections per peer: one is normal, and a peer that restarted overlaps
/// its old connection briefly. Beyond it a new connection is closed after its hello.
pub const CONNECTIONS_PER_PEER_MAX: usize = 4;
/// An inbound connection that carries nothing for this long is closed (its peer's writer
/// opens a new one when it has something to send).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a new connection has to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after `accept` fails for lack of descriptors or memory: the condition lasts, and
/// retrying at once would spin a core.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Shortest time between two log lines about failing accepts.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What every inbound connection of one member shares.
struct Inbound {
    cluster_id: u64,
    rules: PeerRules,
    /// Peer TLS: connections are TLS, and the client certificate must name the member the
    /// hello claims.
    tls: Option<PeerTls>,
    node: NodeHandle,
    stats: Arc<TransportStats>,
    blocked: Blocked,
    admission: Mutex<Admission>,
}

/// Which inbound connections are still waiting for their hello, and how many each peer
/// has past it.
#[derive(Default)]
struct Admission {
    next_ticket: u64,
    awaiting: VecDeque<(u64, tokio::task::AbortHandle)>,
    per_peer: HashMap<u64, usize>,
}

/// One inbound connection's place in [`Admission`], given back when the connection ends.
struct Ticket {
    number: u64,
    inbound: Arc<Inbound>,
    peer: Option<u64>,
}

impl Ticket {
    /// Moves the connection from the waiting list to its peer's; false if that peer has
    /// too many connections already.
    fn admit(&mut self, peer: u64) -> bool {
        let mut admission = self.inbound.admission.lock().unwrap_or_else(PoisonError::into_inner);
        admission.awaiting.retain(|(number, _)| *number != self.number);
        let count = admission.per_peer.entry(peer).or_default();
        if *count >= CONNECTIONS_PER_PEER_MAX {
            return false;
        }
        *count += 1;
        self.peer = Some(peer);
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut admission = self.inbound.admission.lock().unwrap_or_else(PoisonError::into_inner);
        admission.awaiting.retain(|(number, _)| *number != self.number);
        if let Some(peer) = self.peer {
            if let Some(count) = admission.per_peer.get_mut(&peer) {
                *count = count.saturating_sub(1);
            }
        }
    }
}

/// Accepts peer connections and delivers their messages to the node, each checked by
/// `rules` ([`crate::validate`]) on the way. The connections belong to this task: when it
/// ends (aborted, or its runtime shut down) they close with it, and peers see this member
/// go as they would see its process die.
pub async fn serve_peers(
    listener: TcpListener,
    cluster_id: u64,
    rules: PeerRules,
    tls: Option<PeerTls>,
    node: NodeHandle,
    stats: Arc<TransportStats>,
    blocked: Blocked,
) {
    let admission = Mutex::default();
    let inbound = Arc::new(Inbound { cluster_id, rules, tls, node, stats, blocked, admission });
    let mut readers = tokio::task::JoinSet::new();
    let mut accept_failures = AcceptFailures::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_failures.note("peer", &error, listener.local_addr().ok());
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                admit(&inbound, &mut readers, stream, remote);
            }
            // Reap connections that ended, so the set holds only live ones.
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
        }
    }
}

/// Starts a reader for a new connection, closing the oldest one still waiting for its
/// hello if [`AWAITING_HELLO_MAX`] are.
fn admit(
    inbound: &Arc<Inbound>,
    readers: &mut tokio::task::JoinSet<()>,
    stream: TcpStream,
    remote: SocketAddr,
) {
    let shed = {
        let mut admission = inbound.admission.lock().unwrap_or_else(PoisonError::into_inner);
        let shed = if admission.awaiting.len() >= AWAITING_HELLO_MAX {
            admission.awaiting.pop_front()
        } else {
            None
        };
        let number = admission.next_ticket;
        admission.next_ticket += 1;
        let ticket = Ticket { number, inbound: Arc::clone(inbound), peer: None };
        // Registered under the lock: the reader takes itself off the list under it too.
        let handle = readers.spawn(reader(stream, remote, ticket));
        admission.awaiting.push_back((number, handle));
        shed
    };
    if let Some((_, oldest)) = shed {
        inbound.stats.shed_awaiting_hello.fetch_add(1, Ordering::Relaxed);
        oldest.abort();
    }
}

/// Failing accepts on a listener, logged at most once a second with how many failed
/// meanwhile (the caller pauses [`ACCEPT_BACKOFF`] after each).
#[derive(Debug, Default)]
pub struct AcceptFailures {
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
}

impl AcceptFailures {
    /// Notes a failed accept on the `what` listener at `address`.
    pub fn note(&mut self, what: &str, error: &std::io::Error, address: Option<SocketAddr>) {
        let now = std::time::Instant::now();
        if self.last_logged.is_some_and(|last| now.duration_since(last) < ACCEPT_LOG_INTERVAL) {
            self.unlogged += 1;
            return;
        }
        let unlogged = std::mem::take(&mut self.unlogged);
        self.last_logged = Some(now);
        tracing::error!(
            unlogged,
            "{what} listener {address:?} cannot accept ({error}); retrying every {} ms (at the open-files limit, raise it: LimitNOFILE= / ulimit -n)",
            ACCEPT_BACKOFF.as_millis()
        );
    }
}

/// Closes an inbound connection for a reason worth counting and saying.
fn refuse(stats: &TransportStats, remote: SocketAddr, reason: &dyn std::fmt::Display) {
    stats.bad_connections.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%remote, "peer connection closed: {reason}");
}

/// Reads the connection's hello within [`HELLO_TIMEOUT`]: the sender, and any bytes that
/// followed the hello. `None` once the connection was refused.
async fn read_hello(
    stream: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
    remote: SocketAddr,
    inbound: &Inbound,
    deadline: tokio::time::Instant,
) -> Option<(u64, Vec<u8>)> {
    let mut buffer = Vec::with_capacity(frame::HEADER_BYTES + frame::HELLO_PAYLOAD_BYTES);
    let mut chunk = [0u8; 256];
    let (hello, used) = loop {
        match frame::begins_with_hello(&buffer).and_then(|_| frame::decode(&buffer)) {
            Ok(Some(decoded)) => break decoded,
            Ok(None) => {}
            Err(error) => {
                refuse(&inbound.stats, remote, &format_args!("bad first frame ({error})"));
                return None;
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return None,
            Ok(Ok(read)) => buffer.extend_from_slice(&chunk[..read]),
            Err(_) => {
                inbound.stats.hello_timeouts.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
    };
    let Frame::Hello { cluster_id: theirs, from, agreement } = hello else {
        unreachable!("begins_with_hello admits only a hello");
    };
    if theirs != inbound.cluster_id {
        let ours = inbound.cluster_id;
        refuse(
            &inbound.stats,
            remote,
            &format_args!("hello from cluster {theirs:#x}, not ours ({ours:#x})"),
        );
        return None;
    }
    if !inbound.rules.is_peer(from) {
        refuse(
            &inbound.stats,
            remote,
            &format_args!(
                "hello from member {from}, which is not a peer in this cluster's configuration"
            ),
        );
        return None;
    }
    if let Some(theirs) = agreement {
        if !agree(inbound, from, remote, &theirs) {
            return None;
        }
    }
    buffer.drain(..used);
    Some((from, buffer))
}

/// Whether a peer's settings digests match ours; a mismatch is recorded (shown by
/// `worknode status`) and logged once per change, not at every reconnect.
fn agree(inbound: &Inbound, from: u64, remote: SocketAddr, theirs: &Agreement) -> bool {
    let differences = inbound.rules.agreement().differences(theirs);
    let rejections = inbound.node.rejections();
    if differences.is_empty() {
        if rejections.set_disagreement(from, None) {
            tracing::info!(%remote, "member {from}'s settings agree with ours again");
        }
        return true;
    }
    let difference = format!("{} differ from ours", differences.join(" and "));
    inbound.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
    if rejections.set_disagreement(from, Some(difference.clone())) {
        tracing::error!(%remote, "member {from} is configured differently: {difference}; refusing its connections until the configs agree");
    }
    false
}

/// A peer connection's stream for reading: plain, or TLS with the client's certificate.
type Incoming = (Box<dyn tokio::io::AsyncRead + Send + Unpin>, Option<CertificateDer<'static>>);

/// Completes the TLS handshake when peer TLS is on (by `deadline`, which the hello shares).
async fn handshake(
    stream: TcpStream,
    remote: SocketAddr,
    inbound: &Inbound,
    deadline: tokio::time::Instant,
) -> Option<Incoming> {
    let Some(tls) = &inbound.tls else {
        return Some((Box::new(stream), None));
    };
    match tokio::time::timeout_at(deadline, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
            Some((Box::new(stream), cert))
        }
        Ok(Err(error)) => {
            refuse(&inbound.stats, remote, &format_args!("TLS handshake failed ({error})"));
            None
        }
        Err(_) => {
            inbound.stats.hello_timeouts.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

async fn reader(stream: TcpStream, remote: SocketAddr, mut ticket: Ticket) {
    let inbound = Arc::clone(&ticket.inbound);
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let Some((mut stream, cert)) = handshake(stream, remote, &inbound, deadline).await else {
        return;
    };
    let Some((sender, mut buffer)) = read_hello(&mut *stream, remote, &inbound, deadline).await
    else {
        return;
    };
    if let Some(tls) = &inbound.tls {
        let name = tls.name_of(sender);
        if !cert.as_ref().is_some_and(|cert| crate::tls::certificate_names(cert, &name)) {
            let reason = format_args!(
                "its hello claims member {sender}, but its certificate does not name {name}"
            );
            refuse(&inbound.stats, remote, &reason);
            return;
        }
    }
    if !ticket.admit(sender) {
        let limit = CONNECTIONS_PER_PEER_MAX;
        refuse(
            &inbound.stats,
            remote,
            &format_args!("member {sender} already has {limit} connections here"),
        );
        return;
    }
    // It connected to us: its process runs (again), and our writer need not wait out its
    // backoff to reach it.
    inbound.stats.mark(sender, false);
    if let Some(returned) = inbound.stats.returned.get(&sender) {
        returned.notify_one();
    }
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut reassembly = Reassembly::default();
    loop {
        loop {
            let clocks = &inbound.stats.clocks;
            let stamped = |sent_unix_ns, echo| {
                let received = crate::node::Clock::unix_ns(&crate::node::SystemClock);
                crate::clock_offset::ClockOffsets::lock(clocks).received(
                    sender,
                    sent_unix_ns,
                    received,
                    echo,
                    std::time::Instant::now(),
                );
            };
            match next_messages(&mut buffer, &mut reassembly, stamped) {
                Ok(Some(messages)) => {
                    if !messages.is_empty() && !deliver(&inbound, sender, remote, messages) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(reason) => {
                    refuse(&inbound.stats, remote, &reason);
                    return;
                }
            }
        }
        // A member's connection carries heartbeats while it leads and answers while it
        // follows; one silent this long belongs to a peer that vanished without closing it.
        match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(read)) => buffer.extend_from_slice(&chunk[..read]),
            Err(_) => {
                inbound.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Takes the next frame off the front of `buffer`: the messages it completes (none for a
/// part of a split message that is not the last, or a clock stamp, which goes to
/// `stamped`), `None` when more bytes are needed, or why the connection must close.
fn next_messages(
    buffer: &mut Vec<u8>,
    reassembly: &mut Reassembly,
    stamped: impl FnOnce(u64, Option<crate::clock_offset::Echo>),
) -> Result<Option<Vec<Vec<u8>>>, String> {
    let (decoded, used) = match frame::decode(buffer) {
        Ok(Some(frame)) => frame,
        Ok(None) => return Ok(None),
        Err(error) => return Err(format!("bad frame ({error})")),
    };
    buffer.drain(..used);
    match decoded {
        Frame::Messages(_) | Frame::Hello { .. } | Frame::Clock { .. }
            if reassembly.in_progress() =>
        {
            Err("a frame inside a split message".to_owned())
        }
        Frame::Messages(messages) => Ok(Some(messages)),
        Frame::Part { total, bytes } => match reassembly.push(total, bytes) {
            Ok(message) => Ok(Some(message.into_iter().collect())),
            Err(error) => Err(format!("bad part ({error})")),
        },
        Frame::Hello { .. } => Err("a second hello".to_owned()),
        Frame::Clock { sent_unix_ns, echo } => {
            stamped(sent_unix_ns, echo);
            Ok(Some(Vec::new()))
        }
    }
}

/// Checks and hands one frame's messages to the node; false when the connection must
/// close (a message was refused, the peer is cut off, or the node stopped).
fn deliver(inbound: &Inbound, sender: u64, remote: SocketAddr, messages: Vec<Vec<u8>>) -> bool {
    if inbound.blocked.lock().unwrap_or_else(PoisonError::into_inner).contains(&sender) {
        inbound.stats.dropped_blocked.fetch_add(messages.len() as u64, Ordering::Relaxed);
        return false;
    }
    for bytes in messages {
        let message = match decode_message(&bytes) {
            Ok(message) => message,
            Err(error) => {
                refuse(
                    &inbound.stats,
                    remote,
                    &format_args!("undecodable raft message from member {sender} ({error})"),
                );
                return false;
            }
        };
        if let Err(rejection) = inbound.rules.check(&message, sender) {
            inbound.stats.bad_connections.fetch_add(1, Ordering::Relaxed);
            let source = format_args!("member {sender} at {remote}");
            inbound.node.rejections().record(&rejection, &source);
            return false;
        }
        if !inbound.node.deliver(message) {
            return false; // The node stopped: close the connection.
        }
    }
    true
}
