//! The Raft driver: one loop that owns raft-rs, the log store and the state machine.
//!
//! Each turn: take peer messages and client requests (bounded), tick on time, then handle
//! `Ready` in the order raft-rs requires — send `messages()` at once, install a snapshot,
//! apply committed entries, persist entries and hard state with one fdatasync, send
//! `persisted_messages()`, advance. Proposals that arrive while a sync is in flight wait
//! in the channel and share the next sync (group commit).
//!
//! Any member accepts requests. A follower's proposal goes to the leader through raft-rs;
//! the member that accepted it answers when the entry is applied locally, matched by
//! request id. Proposals raft-rs drops (no leader, transfer in progress, lost on the way)
//! are proposed again every `retry_interval` until applied or the deadline passes; the
//! state machine applies each request id at most once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError};
use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{ProgressState, RawNode, ReadOnlyOption, StateRole};
use tokio::sync::oneshot;
use worknode_kv::{
    Applied, Command, KvError, Proposal, RangeRequest, RangeResponse, RequestId, ScheduleChange,
    StateMachine,
};

use crate::doorbell::{Doorbell, LoopSender};
use crate::snapshot_file::SnapshotFile;
use crate::storage::{LogStore, SnapshotSlot};
use crate::validate::{check_against_log, LogView, Rejection, Rejections};

/// A snapshot of a clone of the state machine, encoded, written and synced by a thread of
/// its own, so the loop waits neither on the encoder nor on the disk.
struct SnapshotJob {
    index: u64,
    compact_to: u64,
    started: Instant,
    /// Time the loop spent (cloning the state, syncing the hard state).
    encoded: Duration,
    thread: std::thread::JoinHandle<Result<Snapshot, String>>,
}

/// Proposals an incoming leader holds for its turn; beyond it they go to the leader.
const HELD_MAX: usize = 4_096;

/// A proposal addressed to `to` (raft-rs forwards proposals the same way).
fn propose_message(from: u64, to: u64, data: &[u8]) -> Message {
    let entry = Entry { data: data.to_vec().into(), ..Entry::default() };
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgPropose);
    message.from = from;
    message.to = to;
    message.mut_entries().push(entry);
    message
}

/// Client requests waiting for the Raft loop.
pub const REQUEST_QUEUE_MAX: usize = 8_192;
/// Peer messages waiting for the Raft loop.
pub const PEER_INBOX_MAX: usize = 16_384;
/// Writes proposed and not yet applied, per member.
pub const PENDING_WRITES_MAX: usize = 16_384;
/// Linearizable reads waiting for their read index, per member.
pub const PENDING_READS_MAX: usize = 16_384;
/// Messages taken from a channel per loop turn, so neither starves the other.
const DRAIN_MAX: usize = 1_024;

/// Time, as the driver sees it (a simulator passes its own).
pub trait Clock: Send {
    /// Now, monotonic.
    fn now(&self) -> Instant;
    /// Now, wall clock, in nanoseconds since the UNIX epoch (for the slot clock).
    fn unix_ns(&self) -> u64;
}

/// The machine's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_ns(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64)
    }
}

/// Where outgoing Raft messages go (a simulator passes its own network).
pub trait Transport: Send {
    /// Sends messages to their `to` members; may drop them (Raft retries).
    fn send(&mut self, messages: Vec<Message>);

    /// Whether `peer`'s process is known to be gone: its host answered and refused our
    /// connection since we last reached it. `false` when unknown (a silent or partitioned
    /// peer is not known to be gone).
    fn peer_gone(&self, _peer: u64) -> bool {
        false
    }

    /// Whether messages to `peer` can be delivered now: `false` while the last attempt to
    /// reach it failed (refused, or no answer in time). `true` when unknown.
    fn peer_reachable(&self, _peer: u64) -> bool {
        true
    }

    /// Takes the function that wakes the Raft loop, for news from the transport's own
    /// threads (a peer found gone). Transports without such news ignore it.
    fn set_waker(&mut self, _waker: Waker) {}
}

/// Wakes the Raft loop from another thread.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// Why a request could not be served; the text is etcd's, which clients match on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// No leader is known.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The deadline passed.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A queue is at its bound.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// The node is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The request itself was refused by the state machine.
    #[error("{0}")]
    Kv(KvError),
}

/// Tuning of one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This member's id.
    pub id: u64,
    /// Every voter's id, this member's included.
    pub voters: Vec<u64>,
    /// Length of a tick.
    pub tick: Duration,
    /// Ticks without a leader before an election (randomized up to twice this).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries between state-machine snapshots, at least; a snapshot also waits
    /// until the log written since the last one is as large as that snapshot was (see
    /// [`Node::maybe_snapshot`]).
    pub snapshot_entries: u64,
    /// Entries kept in the log behind a snapshot, for followers that lag a little.
    pub log_keep_entries: u64,
    /// How often an unapplied proposal or unanswered read index is retried.
    pub retry_interval: Duration,
    /// Scheduled leadership; `None` runs plain Raft.
    pub rotation: Option<crate::rotation::RotationConfig>,
    /// The core plan's authority, when the member pins: the loop's own threads (the
    /// snapshot encoder) run on its housekeeping CPUs, not on the loop's isolated core.
    pub cores: Option<Arc<worknode_cores::CoreAuthority>>,
    /// The seed of the node's random draws (election timeouts, failover spreads).
    pub seed: u64,
}

impl NodeConfig {
    /// etcd's timing: 100 ms heartbeat, 1 s election timeout.
    pub fn new(id: u64, voters: Vec<u64>) -> Self {
        Self {
            id,
            voters,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_entries: 10_000,
            log_keep_entries: 5_000,
            retry_interval: Duration::from_millis(300),
            rotation: None,
            cores: None,
            seed: crate::draws::Draws::entropy_seed(),
        }
    }

    /// The election timeout.
    pub fn election_timeout(&self) -> Duration {
        self.tick * self.election_ticks as u32
    }
}

/// A write's answer: what the state machine did and the term it happened in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReply {
    /// The state machine's result.
    pub applied: Applied,
    /// Raft term at the time.
    pub term: u64,
}

/// What a read is served from: the store as of the read's point (a clone, O(1): the
/// store is a persistent map), with the term then. The range itself is computed by the
/// caller, off the Raft loop: a read of any size costs the loop the same.
#[derive(Clone, Debug)]
pub struct ReadView {
    /// The store, frozen at the read's point.
    pub store: worknode_kv::Store,
    /// Raft term at the time.
    pub term: u64,
}

impl ReadView {
    /// Serves `request` from the view.
    pub fn serve(&self, request: &RangeRequest) -> Result<ReadReply, NodeError> {
        let response = self.store.range(request).map_err(NodeError::Kv)?;
        Ok(ReadReply { response, revision: self.store.revision(), term: self.term })
    }
}

/// A read's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadReply {
    /// The keys.
    pub response: RangeResponse,
    /// Store revision at the time.
    pub revision: i64,
    /// Raft term at the time.
    pub term: u64,
}

/// A request for the Raft loop.
#[derive(Debug)]
pub enum ClientRequest {
    /// A write through the log.
    Write {
        /// The command with its request id.
        proposal: Proposal,
        /// When to give up.
        deadline: Instant,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<WriteReply, NodeError>>,
    },
    /// A view of the local state machine to read from, after a read index when
    /// linearizable ([`ReadView::serve`] answers the range).
    Read {
        /// Confirm leadership first (etcd's default); else serve the local state.
        linearizable: bool,
        /// When to give up.
        deadline: Instant,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<ReadView, NodeError>>,
    },
    /// The state machine as applied now (a clone, O(1)): its digest is computed by the
    /// caller, off the loop.
    Digest {
        /// Where the answer goes.
        reply: oneshot::Sender<StateMachine>,
    },
    /// Fault injection: the loop panics, as a bug in it would (see fail-stop in the
    /// server, which must end the process).
    InjectPanic,
    /// Hand leadership to another member.
    TransferLeader {
        /// The member.
        target: u64,
        /// Answered at once (the transfer itself is asynchronous).
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
}

/// What the node publishes about itself after every turn.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// This member.
    pub id: u64,
    /// The leader it knows (0: none).
    pub leader_id: u64,
    /// Current term.
    pub term: u64,
    /// Whether this member leads.
    pub is_leader: bool,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Store revision.
    pub revision: i64,
    /// The store's size ([`worknode_kv::Store::size_bytes`]), what the space quota counts.
    pub store_bytes: u64,
    /// Raised alarms (replicated).
    pub alarms: Vec<worknode_kv::AlarmMember>,
    /// Writes waiting to be applied.
    pub pending_writes: usize,
    /// Requests refused at a queue bound, since start.
    pub rejected_total: u64,
    /// Proposals proposed again after raft-rs dropped or lost them, since start.
    pub retried_total: u64,
    /// Leader changes seen, since start.
    pub leader_changes_total: u64,
    /// Failovers started early because the leader's process was found gone.
    pub fast_failovers_total: u64,
    /// Snapshots this member asked the leader for because its log lacked entries the
    /// leader counted (after `--rejoin`, or a lost tail), since start.
    pub snapshot_requests_total: u64,
    /// Writes in the last part of a turn proposed to the leader because the incoming
    /// leader could not be reached, since start.
    pub forward_unreachable_total: u64,
    /// Writes sent to (or, here, kept for) the incoming leader in the last part of a
    /// turn, since start.
    pub forwarded_ahead_total: u64,
    /// Writes held for this member's turn that went to the actual leader instead (the
    /// transfer did not happen), since start.
    pub held_fallback_total: u64,
    /// Followers that, as this member took over, lacked entries it replicated to them at
    /// once, and were probed back as raft-rs does (since start).
    pub optimistic_rejected_total: u64,
    /// State-machine snapshots written (taken or received), since start.
    pub snapshots_total: u64,
    /// Applied index of the latest durable snapshot (0: none).
    pub snapshot_index: u64,
    /// Log reads for lagging peers done off the loop, since start.
    pub reads_off_loop_total: u64,
}

/// The driver's side of the channels, held by servers and transports.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    requests: LoopSender<ClientRequest>,
    inbox: LoopSender<Message>,
    status: Arc<RwLock<NodeStatus>>,
    stop: Arc<AtomicBool>,
    dropped_inbound: Arc<AtomicU64>,
    turns: Arc<Mutex<crate::rotation::TurnLog>>,
    schedule: Arc<Mutex<Vec<ScheduleChange>>>,
    rejections: Arc<Rejections>,
}

impl NodeHandle {
    /// Peer messages rejected before raft-rs saw them, by the readers and the loop.
    pub fn rejections(&self) -> &Arc<Rejections> {
        &self.rejections
    }

    /// The replicated schedule changes as applied here, oldest first.
    pub fn schedule_changes(&self) -> Vec<ScheduleChange> {
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The turn log of scheduled leadership (empty when rotation is off), oldest first.
    pub fn turns(&self) -> Vec<crate::rotation::TurnRecord> {
        self.turns.lock().unwrap_or_else(PoisonError::into_inner).records.iter().cloned().collect()
    }

    /// Scheduled leadership's counters since start (zero when rotation is off).
    pub fn rotation_metrics(&self) -> crate::rotation::RotationMetrics {
        self.turns.lock().unwrap_or_else(PoisonError::into_inner).metrics.clone()
    }

    /// Queues a client request; `TooManyRequests` at the bound.
    pub fn submit(&self, request: ClientRequest) -> Result<(), NodeError> {
        match self.requests.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(NodeError::TooManyRequests),
            Err(TrySendError::Disconnected(_)) => Err(NodeError::Stopped),
        }
    }

    /// Delivers a peer's message; dropped (and counted) at the bound — Raft resends.
    /// Returns false once the node has stopped, so connections to it close.
    pub fn deliver(&self, message: Message) -> bool {
        match self.inbox.try_send(message) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped_inbound.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// The latest published status.
    pub fn status(&self) -> NodeStatus {
        self.status.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Asks the loop to stop after its current turn.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether [`NodeHandle::stop`] was asked: a loop that ends without it failed.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Peer messages dropped at the inbox bound.
    pub fn dropped_inbound(&self) -> u64 {
        self.dropped_inbound.load(Ordering::Relaxed)
    }
}

struct PendingWrite {
    encoded: Vec<u8>,
    deadline: Instant,
    next_retry: Instant,
    reply: oneshot::Sender<Result<WriteReply, NodeError>>,
}

struct PendingRead {
    deadline: Instant,
    next_retry: Instant,
    /// Set once raft confirmed leadership at this index.
    read_index: Option<u64>,
    /// The read-index request it waits on (see [`Node::ask_read_index`]).
    batch: u64,
    reply: oneshot::Sender<Result<ReadView, NodeError>>,
}

/// The Raft loop's state.
#[allow(
    missing_debug_implementations,
    reason = "raw raft state has no useful Debug; see NodeStatus"
)]
pub struct Node<C: Clock, T: Transport, S: LogStore + raft::Storage> {
    config: NodeConfig,
    clock: C,
    transport: T,
    raw: RawNode<S>,
    machine: StateMachine,
    snapshot_file: SnapshotFile,
    /// A snapshot being written by a background thread.
    snapshot_job: Option<SnapshotJob>,
    slot: Arc<Mutex<SnapshotSlot>>,
    last_snapshot_index: u64,
    /// Encoded size of the latest snapshot (0: none).
    last_snapshot_bytes: u64,
    /// Bytes of entries applied since the latest snapshot began.
    log_bytes_since_snapshot: u64,
    snapshots_total: u64,
    requests: Receiver<ClientRequest>,
    inbox: Receiver<Message>,
    /// What the producers of all the queues ring (see [`crate::doorbell`]).
    bell: Arc<Doorbell>,
    /// First indexes of the log reads for lagging peers that finished off the loop.
    fetched: Receiver<u64>,
    handle: NodeHandle,
    writes: HashMap<RequestId, PendingWrite>,
    reads: BTreeMap<u64, PendingRead>,
    next_read_id: u64,
    /// Linearizable reads not yet covered by a read-index request.
    unasked_reads: Vec<u64>,
    next_read_batch: u64,
    rejected_total: u64,
    retried_total: u64,
    rotation: Option<crate::rotation::Rotation>,
    /// When each peer's last message arrived (liveness for handoff decisions).
    last_heard: HashMap<u64, Instant>,
    /// Proposals forwarded ahead to this member (the incoming leader), until it leads.
    held: Vec<(Message, Instant)>,
    /// Followers this new leader replicates to before their first answer (see
    /// [`Node::replicate_at_once`]), until that answer comes.
    optimistic: Vec<u64>,
    /// Whether this member's election timeout is pinned by the schedule's favour.
    biased: bool,
    /// The node's random draws, from `NodeConfig::seed`.
    draws: crate::draws::Draws,
    /// The term and role at which the election timeout was last drawn here: raft-rs
    /// draws its own (from `thread_rng`) on every change of either.
    timer_drawn_at: Option<(u64, StateRole)>,
    forwarded_ahead_total: u64,
    held_fallback_total: u64,
    optimistic_rejected_total: u64,
    last_leader: u64,
    leader_changes_total: u64,
    /// The (term, leader) whose process this follower found gone, once per term.
    gone_leader: Option<(u64, u64)>,
    /// When this member campaigns because its leader's process is gone.
    campaign_at: Option<Instant>,
    /// Until when the successor asks again while its pre-votes go unanswered.
    failover_until: Option<Instant>,
    fast_failovers_total: u64,
    /// When this member last asked the leader for a snapshot (see
    /// [`Node::ask_for_snapshot`]).
    snapshot_asked_at: Option<Instant>,
    snapshot_requests_total: u64,
    /// The earliest time a write forwarded ahead must be retried or a held write released.
    due_at: Option<Instant>,
    /// Writes proposed to the leader because the incoming one could not be reached.
    forward_unreachable_total: u64,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// raft-rs refused the configuration or storage.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The snapshot could not be restored.
    #[error("{0}")]
    Snapshot(String),
    /// The rotation settings are invalid.
    #[error("{0}")]
    Rotation(#[from] crate::rotation::RotationError),
}

impl<C: Clock, T: Transport, S: LogStore + raft::Storage> Node<C, T, S> {
    /// Builds the node from its storage and the latest snapshot (if any).
    pub fn new(
        config: NodeConfig,
        clock: C,
        mut transport: T,
        mut storage: S,
        snapshot: Option<Snapshot>,
        snapshot_file: SnapshotFile,
        slot: Arc<Mutex<SnapshotSlot>>,
    ) -> Result<(Self, NodeHandle), StartError> {
        let machine = match &snapshot {
            Some(snapshot) => StateMachine::restore(snapshot.get_data()).map_err(|error| {
                StartError::Snapshot(format!("{}: {error}", snapshot_file.path().display()))
            })?,
            None => StateMachine::new(),
        };
        let last_snapshot_index = machine.applied_index();
        let last_snapshot_bytes = snapshot.as_ref().map_or(0, |s| s.get_data().len() as u64);
        if let Some(snapshot) = snapshot {
            slot.lock().unwrap_or_else(PoisonError::into_inner).latest = Some(snapshot);
        }
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: machine.applied_index(),
            max_size_per_msg: 256 * 1024,
            max_inflight_msgs: 32,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            max_uncommitted_size: 64 * 1024 * 1024,
            ..raft::Config::default()
        };
        raft_config.validate()?;
        // Entries for a lagging follower are read off the loop (crate::fetch).
        let bell = Arc::new(Doorbell::default());
        let (fetched_tx, fetched_rx) = crossbeam_channel::unbounded();
        let fetched_tx = LoopSender::new(fetched_tx, Arc::clone(&bell));
        let cores = config.cores.clone();
        let setup = Box::new(move || {
            if let Err(error) = worknode_cores::make_current_background(cores.as_deref(), 10) {
                tracing::warn!("the log reader stays where the Raft loop runs: {error}");
            }
        });
        if let Err(error) = storage.fetch_off_loop(fetched_tx, setup) {
            tracing::warn!(
                "cannot start the log reader; lagging peers are read for on the loop: {error}"
            );
        }
        let raw = RawNode::new(&raft_config, storage, &crate::raft_log::logger())?;
        let mut rotation =
            config.rotation.clone().map(crate::rotation::Rotation::new).transpose()?;
        if let Some(rotation) = &mut rotation {
            rotation.set_changes(machine.schedule_changes());
        }
        let schedule = Arc::new(Mutex::new(machine.schedule_changes().to_vec()));
        let turns = rotation.as_ref().map(crate::rotation::Rotation::log).unwrap_or_default();
        let (request_tx, request_rx) = crossbeam_channel::bounded(REQUEST_QUEUE_MAX);
        let (inbox_tx, inbox_rx) = crossbeam_channel::bounded(PEER_INBOX_MAX);
        let transport_bell = Arc::clone(&bell);
        transport.set_waker(Arc::new(move || transport_bell.ring()));
        let handle = NodeHandle {
            requests: LoopSender::new(request_tx, Arc::clone(&bell)),
            inbox: LoopSender::new(inbox_tx, Arc::clone(&bell)),
            status: Arc::new(RwLock::new(NodeStatus { id: config.id, ..NodeStatus::default() })),
            stop: Arc::new(AtomicBool::new(false)),
            dropped_inbound: Arc::new(AtomicU64::new(0)),
            turns,
            schedule,
            rejections: Arc::default(),
        };
        let seed = config.seed;
        let mut node = Self {
            config,
            clock,
            transport,
            raw,
            machine,
            snapshot_file,
            snapshot_job: None,
            slot,
            last_snapshot_index,
            last_snapshot_bytes,
            log_bytes_since_snapshot: 0,
            snapshots_total: 0,
            requests: request_rx,
            inbox: inbox_rx,
            bell,
            fetched: fetched_rx,
            handle: handle.clone(),
            writes: HashMap::new(),
            reads: BTreeMap::new(),
            next_read_id: 1,
            unasked_reads: Vec::new(),
            next_read_batch: 1,
            rejected_total: 0,
            retried_total: 0,
            rotation,
            gone_leader: None,
            campaign_at: None,
            failover_until: None,
            fast_failovers_total: 0,
            snapshot_asked_at: None,
            snapshot_requests_total: 0,
            due_at: None,
            forward_unreachable_total: 0,
            last_heard: HashMap::new(),
            held: Vec::new(),
            optimistic: Vec::new(),
            biased: false,
            draws: crate::draws::Draws::new(seed),
            timer_drawn_at: None,
            forwarded_ahead_total: 0,
            held_fallback_total: 0,
            optimistic_rejected_total: 0,
            last_leader: raft::INVALID_ID,
            leader_changes_total: 0,
        };
        node.draw_election_timeout();
        Ok((node, handle))
    }

    /// Runs until [`NodeHandle::stop`]; then answers what is left with `Stopped`.
    pub fn run(mut self) -> Result<(), crate::storage::StoreError> {
        self.bell.answer_here();
        let mut next_tick = self.clock.now() + self.config.tick;
        while !self.handle.stop.load(Ordering::Relaxed) {
            let mut timeout =
                next_tick.saturating_duration_since(self.clock.now()).min(self.config.tick);
            if let Some(rotation) = &self.rotation {
                if self.raw.raft.state == StateRole::Leader {
                    timeout = timeout.min(rotation.next_wakeup(self.clock.unix_ns()));
                }
            }
            if let Some(at) = self.campaign_at {
                timeout = timeout.min(at.saturating_duration_since(self.clock.now()));
            }
            if let Some(at) = self.due_at {
                timeout = timeout.min(at.saturating_duration_since(self.clock.now()));
            }
            self.wait_for_input(timeout);
            self.ask_read_index();
            let now = self.clock.now();
            self.notice_leader_gone(now);
            let due = self.due_at.is_some_and(|at| now >= at);
            let ticked = now >= next_tick;
            if ticked {
                self.draw_election_timeout();
                self.raw.tick();
                next_tick += self.config.tick;
                if next_tick < now {
                    next_tick = now + self.config.tick;
                }
            }
            if ticked || due {
                // On every tick, and the moment a write forwarded ahead or held for a turn
                // falls due (the boundary passed without the handoff it waited for): a tick
                // later would add up to a tick to those writes.
                if due {
                    self.due_at = None;
                }
                self.expire_and_retry(now);
            }
            self.maybe_snapshot()?;
            self.handle_ready()?;
            if self.follow_leadership(now) {
                // What it proposed on taking over goes out now, not on the next input.
                self.handle_ready()?;
            }
            self.draw_election_timeout();
            self.bias_election();
            if self.rotate(now) {
                // The transfer's messages go out in this turn, not the next.
                self.handle_ready()?;
            }
            self.publish_status();
        }
        self.finish_snapshot()?;
        for (_, write) in self.writes.drain() {
            let _ = write.reply.send(Err(NodeError::Stopped));
        }
        for (_, read) in std::mem::take(&mut self.reads) {
            let _ = read.reply.send(Err(NodeError::Stopped));
        }
        Ok(())
    }

    /// Takes what the queues hold; when they are empty, sleeps until something arrives,
    /// the transport rings, or `timeout` passes, and takes what arrived.
    fn wait_for_input(&mut self, timeout: Duration) {
        if !self.take_input() {
            Doorbell::wait(timeout);
            self.take_input();
        }
    }

    /// Takes finished log reads, then peer messages and client requests (bounded per
    /// turn, so neither starves the other); whether there was any.
    fn take_input(&mut self) -> bool {
        let mut taken = false;
        while let Ok(low) = self.fetched.try_recv() {
            self.entries_fetched(low);
            taken = true;
        }
        for _ in 0..DRAIN_MAX {
            match self.inbox.try_recv() {
                Ok(message) => self.step(message),
                Err(_) => break,
            }
            taken = true;
        }
        for _ in 0..DRAIN_MAX {
            match self.requests.try_recv() {
                Ok(request) => self.accept(request),
                Err(_) => break,
            }
            taken = true;
        }
        taken
    }

    /// A log read for a lagging peer finished off the loop: raft-rs asks for the entries
    /// again (now answered from memory) and sends them, if it still leads in that term.
    fn entries_fetched(&mut self, low: u64) {
        if let Some(context) = self.raw.mut_store().fetched(low) {
            self.raw.on_entries_fetched(context);
        }
    }

    /// Whether a new write goes to the incoming leader instead of the current one: on a
    /// follower in the last `forward_ahead` of a turn, on the leader while it hands over.
    /// The target and the time to the boundary.
    fn forward_ahead(&mut self) -> Option<(u64, Duration)> {
        if self.raw.raft.state == StateRole::Leader {
            // Handing over (scheduled): raft-rs refuses proposals until the transfer ends,
            // so new writes go to the member taking over, which holds them for the moment
            // it leads instead of waiting here to see the change first.
            let handing_over = self.rotation.is_some();
            return self
                .raw
                .raft
                .lead_transferee
                .filter(|_| handing_over)
                .map(|t| (t, Duration::ZERO));
        }
        let unix_ns = self.clock.unix_ns();
        self.rotation.as_mut()?.incoming(unix_ns)
    }

    /// [`Node::forward_ahead`], unless the incoming leader cannot be reached now (its
    /// process is gone or our last attempt to connect failed): a write sent there would be
    /// lost and wait out its retry, so it goes to the member that leads instead.
    fn forward_ahead_to_reachable(&mut self) -> Option<(u64, Duration)> {
        let (target, until_boundary) = self.forward_ahead()?;
        if target != self.config.id && !self.transport.peer_reachable(target) {
            self.forward_unreachable_total += 1;
            return None;
        }
        Some((target, until_boundary))
    }

    /// How long past the boundary a write forwarded ahead waits for the incoming leader
    /// before going to the actual one: the transfer completes by the boundary, so a tick
    /// (at least 10 ms) later it has failed or was skipped (the target may be down).
    fn forward_grace(&self) -> Duration {
        self.config.tick.max(Duration::from_millis(10))
    }

    fn step(&mut self, mut message: Message) {
        match self.check_against_log(&message) {
            Ok(()) => {}
            Err(Rejection::CommitPastLog { commit, last }) => {
                // The leader counts entries this member no longer has (it rejoined with
                // an empty log, or lost its tail): the heartbeat still says who leads,
                // but commits only what is here, and the leader is asked for a snapshot.
                message.commit = last;
                self.ask_for_snapshot(message.from, commit);
            }
            Err(rejection) => {
                let source = format_args!("member {}", message.from);
                self.handle.rejections.record(&rejection, &source);
                return;
            }
        }
        if matches!(
            message.get_msg_type(),
            MessageType::MsgRequestPreVote | MessageType::MsgRequestVote
        ) {
            // A candidate that saw the leader's process gone may ask before this loop
            // looked: look now, or the leader lease refuses the vote for a whole timeout.
            self.notice_leader_gone(self.clock.now());
            // Someone else is campaigning already: two candidates would split the vote.
            if message.from != self.config.id {
                self.campaign_at = None;
            }
        }
        if self.rotation.is_some() {
            self.last_heard.insert(message.from, self.clock.now());
        }
        let proposed_elsewhere =
            message.get_msg_type() == MessageType::MsgPropose && message.from != self.config.id;
        if proposed_elsewhere {
            // A peer's write that this member passes on (ahead to the incoming leader, or
            // by raft-rs to the leader) goes as this member's own: peers accept a message
            // only from the member whose connection carries it (crate::validate).
            message.from = self.config.id;
        }
        // A write forwarded ahead to this member as the incoming leader waits for its turn;
        // one that reaches a leader handing over goes on to the member taking over.
        if proposed_elsewhere && self.held.len() < HELD_MAX {
            if let Some((target, until_boundary)) = self.forward_ahead() {
                if target == self.config.id {
                    let release = self.clock.now() + until_boundary + self.forward_grace();
                    self.due_at = Some(self.due_at.map_or(release, |due| due.min(release)));
                    self.held.push((message, release));
                    return;
                }
                if self.raw.raft.state == StateRole::Leader {
                    message.to = target;
                    self.transport.send(vec![message]);
                    return;
                }
            }
        }
        if !self.optimistic.is_empty() {
            self.first_answer(&message);
        }
        // Messages for another member, or from a removed one, are not ours to act on.
        let _ = self.raw.step(message);
    }

    /// Asks `leader`, which believes this member holds entries up to `commit`, for a
    /// snapshot: raft-rs's own request needs a log whose last term is the current one,
    /// which an emptied log lacks, and the leader ignores plain rejections below what it
    /// believes matched. At most once per election timeout.
    fn ask_for_snapshot(&mut self, leader: u64, commit: u64) {
        let now = self.clock.now();
        if self.snapshot_asked_at.is_some_and(|at| now < at + self.config.election_timeout()) {
            return;
        }
        self.snapshot_asked_at = Some(now);
        self.snapshot_requests_total += 1;
        let raft_log = &self.raw.raft.raft_log;
        let last = raft_log.last_index();
        tracing::info!(
            "the leader (member {leader}) counts entries up to {commit} here, but this member's log ends at {last}: asking it for a snapshot"
        );
        let mut request = Message::default();
        request.set_msg_type(MessageType::MsgAppendResponse);
        request.from = self.config.id;
        request.to = leader;
        request.term = self.raw.raft.term;
        // At least what the leader believes matched, or it takes this for a stale answer.
        request.index = commit;
        request.reject = true;
        request.reject_hint = last;
        request.log_term = raft_log.term(last).unwrap_or(0);
        request.commit = raft_log.committed;
        request.request_snapshot = commit;
        self.transport.send(vec![request]);
    }

    /// What raft-rs would treat as fatal, checked against the log first
    /// ([`crate::validate`]).
    fn check_against_log(&self, message: &Message) -> Result<(), Rejection> {
        let raft_log = &self.raw.raft.raft_log;
        let term_at = |index: u64| raft_log.term(index).ok();
        let view = LogView {
            term: self.raw.raft.term,
            leader: self.raw.raft.leader_id,
            last_index: raft_log.last_index(),
            committed: raft_log.committed,
            term_at: &term_at,
        };
        check_against_log(message, &view)
    }

    fn term(&self) -> u64 {
        self.raw.raft.term
    }

    fn accept(&mut self, request: ClientRequest) {
        let now = self.clock.now();
        match request {
            ClientRequest::Write { proposal, deadline, reply } => {
                if self.writes.len() >= PENDING_WRITES_MAX {
                    self.rejected_total += 1;
                    let _ = reply.send(Err(NodeError::TooManyRequests));
                    return;
                }
                let encoded = proposal.encode();
                // A dropped proposal stays pending and is retried; only the deadline ends it.
                let next_retry = match self.forward_ahead_to_reachable() {
                    // Gulf Stream: the incoming leader proposes it the moment it leads (its
                    // own writes wait here, the others' in `held`); if the transfer fails,
                    // the retry after the boundary sends it to the actual leader.
                    Some((target, until_boundary)) => {
                        if target != self.config.id {
                            self.transport.send(vec![propose_message(
                                self.config.id,
                                target,
                                &encoded,
                            )]);
                        }
                        self.forwarded_ahead_total += 1;
                        let retry = now + until_boundary + self.forward_grace();
                        self.due_at = Some(self.due_at.map_or(retry, |due| due.min(retry)));
                        retry
                    }
                    None => {
                        let _ = self.raw.propose(Vec::new(), encoded.clone());
                        now + self.config.retry_interval
                    }
                };
                self.writes
                    .insert(proposal.id, PendingWrite { encoded, deadline, next_retry, reply });
            }
            ClientRequest::Read { linearizable: false, reply, .. } => {
                let _ = reply.send(Ok(self.read_view()));
            }
            ClientRequest::Read { linearizable: true, deadline, reply } => {
                if self.reads.len() >= PENDING_READS_MAX {
                    self.rejected_total += 1;
                    let _ = reply.send(Err(NodeError::TooManyRequests));
                    return;
                }
                let id = self.next_read_id;
                self.next_read_id += 1;
                self.unasked_reads.push(id);
                self.reads.insert(
                    id,
                    PendingRead {
                        deadline,
                        next_retry: now + self.config.retry_interval,
                        read_index: None,
                        batch: 0,
                        reply,
                    },
                );
            }
            ClientRequest::Digest { reply } => {
                let _ = reply.send(self.machine.clone());
            }
            ClientRequest::InjectPanic => panic!("fault injection: the Raft loop panics"),
            ClientRequest::TransferLeader { target, reply } => {
                let result = if self.raw.raft.state != StateRole::Leader {
                    Err(NodeError::NoLeader)
                } else {
                    self.raw.transfer_leader(target);
                    Ok(())
                };
                let _ = reply.send(result);
            }
        }
    }

    fn read_view(&self) -> ReadView {
        ReadView { store: self.machine.store().clone(), term: self.term() }
    }

    fn expire_and_retry(&mut self, now: Instant) {
        let leader_known = self.raw.raft.leader_id != raft::INVALID_ID;
        let expired: Vec<RequestId> =
            self.writes.iter().filter(|(_, w)| now >= w.deadline).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(write) = self.writes.remove(&id) {
                let error = if leader_known { NodeError::Timeout } else { NodeError::NoLeader };
                let _ = write.reply.send(Err(error));
            }
        }
        // Held writes whose turn did not come (the transfer failed): on to the actual leader.
        if self.raw.raft.state != StateRole::Leader && !self.held.is_empty() {
            let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|(_, release)| now >= *release);
            self.held = waiting;
            for (message, _) in late {
                self.held_fallback_total += 1;
                let _ = self.raw.step(message);
            }
        }
        let retry_interval = self.config.retry_interval;
        let mut retried = 0;
        for write in self.writes.values_mut().filter(|w| now >= w.next_retry) {
            write.next_retry = now + retry_interval;
            if leader_known {
                let _ = self.raw.propose(Vec::new(), write.encoded.clone());
                retried += 1;
            }
        }
        self.retried_total += retried;
        let expired: Vec<u64> =
            self.reads.iter().filter(|(_, r)| now >= r.deadline).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(read) = self.reads.remove(&id) {
                let error = if leader_known { NodeError::Timeout } else { NodeError::NoLeader };
                let _ = read.reply.send(Err(error));
            }
        }
        // A new leader drops read-index requests until it has committed in its term: ask again.
        let mut again = Vec::new();
        for (id, read) in
            self.reads.iter_mut().filter(|(_, r)| r.read_index.is_none() && now >= r.next_retry)
        {
            read.next_retry = now + retry_interval;
            again.push(*id);
        }
        self.unasked_reads.extend(again);
        self.ask_read_index();
    }

    /// One read-index request for every linearizable read that arrived since the last:
    /// the leader confirms its lead with one heartbeat round for all of them, as etcd's
    /// read loop does, instead of one round per read. Each read waits for an index at
    /// least the commit index when it arrived, so the batch stays linearizable.
    fn ask_read_index(&mut self) {
        if self.unasked_reads.is_empty() {
            return;
        }
        let batch = self.next_read_batch;
        self.next_read_batch += 1;
        for id in self.unasked_reads.drain(..) {
            if let Some(read) = self.reads.get_mut(&id) {
                read.batch = batch;
            }
        }
        // The leader keeps one pending request per context and ignores another with the
        // same one: the context must be unique in the cluster, not only here (member
        // counters all start at 1, and a follower's first reads were dropped for a
        // collision with the leader's own, then waited out two retries, 600 ms).
        let mut context = self.config.id.to_be_bytes().to_vec();
        context.extend_from_slice(&batch.to_be_bytes());
        self.raw.read_index(context);
    }

    /// On a leader change, proposes every pending write and read again at once, so what
    /// waited through a handoff (refused while the transfer ran, or forwarded to the old
    /// leader and lost) reaches the new leader the moment it leads. Whether this member
    /// has just become the leader.
    fn follow_leadership(&mut self, now: Instant) -> bool {
        let leader = self.raw.raft.leader_id;
        if let Some(rotation) = &mut self.rotation {
            // The wall clock is read only when rotation needs it: this runs every turn.
            rotation.observe_leader(leader, self.config.id, now, self.clock.unix_ns());
        }
        if leader == self.last_leader {
            return false;
        }
        self.last_leader = leader;
        if leader == raft::INVALID_ID {
            return false;
        }
        self.leader_changes_total += 1;
        let leads = leader == self.config.id;
        if leads {
            self.replicate_at_once();
            // Writes forwarded ahead to this member: its turn has come.
            for (message, _) in std::mem::take(&mut self.held) {
                for entry in message.entries.iter() {
                    let _ = self.raw.propose(Vec::new(), entry.data.to_vec());
                }
            }
        }
        for write in self.writes.values_mut() {
            let _ = self.raw.propose(Vec::new(), write.encoded.clone());
            write.next_retry = now + self.config.retry_interval;
        }
        let unanswered = self.reads.iter().filter(|(_, r)| r.read_index.is_none());
        self.unasked_reads.extend(unanswered.map(|(id, _)| *id));
        self.ask_read_index();
        leads
    }

    /// A new leader's first append (its empty entry) probes each follower, and raft-rs
    /// sends nothing more to it until it answers: the writes held for this member's turn
    /// would wait a second round trip and log sync on every follower. Right after a
    /// handoff the followers' logs end where this one does, so they are treated as
    /// replicating at once: the held writes follow the empty entry without waiting. The
    /// progress state decides only what is sent when, never what commits (that rests on
    /// the followers' answers); a follower that turns out to lack entries answers with a
    /// rejection, and [`Node::step`] puts it back to probing with raft-rs's usual hint.
    fn replicate_at_once(&mut self) {
        let raft = &mut self.raw.raft;
        let (me, last) = (raft.id, raft.raft_log.last_index());
        self.optimistic.clear();
        for (&id, progress) in raft.mut_prs().iter_mut() {
            // Probing from the empty entry (next = last), the probe sent and unanswered.
            if id != me
                && progress.state == ProgressState::Probe
                && progress.paused
                && progress.next_idx == last
            {
                progress.state = ProgressState::Replicate;
                progress.paused = false;
                progress.next_idx = last + 1;
                progress.ins.reset();
                self.optimistic.push(id);
            }
        }
    }

    /// A follower's first answer to a new leader that replicated to it at once: accepted,
    /// raft-rs's own bookkeeping takes over; rejected, it goes back to probing (in
    /// replicating state raft-rs would restart from its match, still 0: the whole log, or
    /// a snapshot).
    fn first_answer(&mut self, message: &Message) {
        if message.get_msg_type() != MessageType::MsgAppendResponse
            || self.raw.raft.state != StateRole::Leader
            || message.term != self.raw.raft.term
        {
            return;
        }
        let Some(at) = self.optimistic.iter().position(|&id| id == message.from) else {
            return;
        };
        self.optimistic.swap_remove(at);
        if message.reject {
            if let Some(progress) = self.raw.raft.mut_prs().get_mut(message.from) {
                if progress.state == ProgressState::Replicate && progress.matched == 0 {
                    // Probing from this rejection: raft-rs takes it as the probe's answer
                    // and moves back by the follower's hint.
                    progress.state = ProgressState::Probe;
                    progress.paused = false;
                    progress.next_idx = message.index + 1;
                    progress.ins.reset();
                    self.optimistic_rejected_total += 1;
                }
            }
        }
    }

    /// Replaces raft-rs's draw of the election timeout, made whenever the term or role
    /// changed, with one from the node's seeded draws.
    fn draw_election_timeout(&mut self) {
        let raft = &mut self.raw.raft;
        let now = (raft.term, raft.state);
        if self.timer_drawn_at == Some(now) {
            return;
        }
        self.timer_drawn_at = Some(now);
        let timeout = self.draws.election_timeout(raft.election_timeout());
        raft.set_randomized_election_timeout(timeout);
        // A favoured timeout set before this change no longer holds.
        self.biased = false;
    }

    /// Elections favour the scheduled member: its election timeout is E + 2 ticks, while
    /// the others draw theirs from [E, 2E) as usual, so after a crash it usually campaigns
    /// first and the cluster stays on schedule. Not exactly E: the other follower, whose
    /// last heartbeat may have arrived a tick later, would still be in its leader lease and
    /// refuse the pre-vote, costing a whole second round. (No raft-rs priorities: they
    /// interact badly with pre-vote, DESIGN.md §4.)
    fn bias_election(&mut self) {
        if self.raw.raft.state != StateRole::Follower || self.failing_over() {
            return;
        }
        let Some(rotation) = &mut self.rotation else {
            return;
        };
        let unix_ns = self.clock.unix_ns();
        let raft = &mut self.raw.raft;
        if rotation.favoured(unix_ns, raft.leader_id) == Some(raft.id) {
            let election = raft.election_timeout();
            // raft-rs accepts [E, 2E); with E < 3 ticks the bias is E itself.
            let favoured = if election >= 3 { election + 2 } else { election };
            if raft.randomized_election_timeout() != favoured {
                raft.set_randomized_election_timeout(favoured);
            }
            self.biased = true;
        } else if self.biased {
            // No longer favoured: draw at random again, or two members could both sit at
            // E + 2 and split the vote.
            let timeout = self.draws.election_timeout(raft.election_timeout());
            raft.set_randomized_election_timeout(timeout);
            self.biased = false;
        }
    }

    /// Whether this follower is failing over from a leader whose process is gone.
    fn failing_over(&self) -> bool {
        let raft = &self.raw.raft;
        self.gone_leader == Some((raft.term, raft.leader_id))
    }

    /// How often a failing-over successor asks for votes until it leads.
    const FAILOVER_RETRY: Duration = Duration::from_millis(5);

    /// Fast failover. A follower whose leader's process is gone (its host refused our
    /// connection: the process crashed or was killed) need not wait out the election
    /// timeout, which exists to tell a dead leader from a slow one: this one is known
    /// dead. It gives up the leader lease at once (so it grants the successor's vote) and
    /// the successor — the member elections favour, else the lowest-id live voter —
    /// campaigns a moment later; the others spread their timeouts over [E + 2, 2E) in case
    /// it fails. Only liveness changes: votes and commits follow Raft as always, and a leader
    /// that is silent but not refusing (a partition, a dead host) is left to the timeout.
    fn notice_leader_gone(&mut self, now: Instant) {
        if let Some(at) = self.campaign_at {
            if now >= at {
                self.campaign_at = None;
                let within = self.failover_until.is_some_and(|until| now < until);
                let state = self.raw.raft.state;
                // Asked again while the pre-vote goes unanswered: a follower whose own
                // connection has not yet been refused still holds the leader lease and
                // ignores the pre-vote without a word, and raft-rs would ask again only
                // at its election timeout (kill -9 of the leader stalled writes 158-300 ms
                // in 4 of 28 trials that way).
                // A pre-vote changes no term, so asking again disturbs nobody.
                if (self.failing_over() && state == StateRole::Follower)
                    || (within && state == StateRole::PreCandidate)
                {
                    let _ = self.raw.campaign();
                    if within {
                        self.campaign_at = Some(now + Self::FAILOVER_RETRY);
                    }
                } else {
                    self.failover_until = None;
                }
            }
        }
        let raft = &self.raw.raft;
        let leader = raft.leader_id;
        if raft.state != StateRole::Follower
            || leader == raft::INVALID_ID
            || self.failing_over()
            || !self.transport.peer_gone(leader)
        {
            return;
        }
        self.gone_leader = Some((raft.term, leader));
        self.fast_failovers_total += 1;
        let successor = self.successor(leader);
        let raft = &mut self.raw.raft;
        let election = raft.election_timeout();
        raft.election_elapsed = raft.election_elapsed.max(election);
        if election >= 2 {
            // The successor goes first; should it fail, the others' timeouts stay spread
            // over [E + 2, 2E) so that they do not all campaign on the same tick.
            let spread = election.saturating_sub(3).max(1) as u64;
            let draw = self.draws.below(spread);
            let timeout = (election + 2 + draw as usize).min(2 * election - 1);
            raft.set_randomized_election_timeout(timeout.max(election));
        }
        if successor == raft.id {
            // Usually long enough for the other followers' connections to see the same
            // refusal; if not, it asks again every FAILOVER_RETRY for an election timeout.
            self.campaign_at = Some(now + Self::FAILOVER_RETRY.min(self.config.tick));
            self.failover_until = Some(now + self.config.tick * election as u32);
        }
        tracing::info!(
            leader,
            term = raft.term,
            successor,
            "the leader's process is gone (its host refuses connections): failing over"
        );
    }

    /// Who campaigns when `gone` is known dead: the member elections favour if it is
    /// alive as far as this member knows, else the lowest-id other live voter.
    fn successor(&mut self, gone: u64) -> u64 {
        let alive = |id: u64| id != gone && (id == self.config.id || !self.transport.peer_gone(id));
        let unix_ns = self.clock.unix_ns();
        let favoured = self.rotation.as_mut().and_then(|rotation| rotation.favoured(unix_ns, gone));
        match favoured {
            Some(member) if alive(member) && self.config.voters.contains(&member) => member,
            _ => self
                .config
                .voters
                .iter()
                .copied()
                .filter(|&id| alive(id))
                .min()
                .unwrap_or(self.config.id),
        }
    }

    /// Scheduled leadership: the leader starts the handoff to the next turn's member.
    fn rotate(&mut self, now: Instant) -> bool {
        if self.raw.raft.state != StateRole::Leader {
            return false;
        }
        let unix_ns = self.clock.unix_ns();
        let Some(rotation) = &mut self.rotation else {
            return false;
        };
        // A live follower answers every heartbeat; silence for three heartbeats or half an
        // election timeout, whichever is longer, means it is down (a shorter window skips
        // live members whose answers queue behind a busy CPU).
        let window = (self.config.tick * (self.config.heartbeat_ticks as u32 * 3).max(3))
            .max(self.config.tick * self.config.election_ticks as u32 / 2);
        let (heard, transport) = (&self.last_heard, &self.transport);
        let heard_recently = |id: u64| {
            !transport.peer_gone(id)
                && heard.get(&id).is_some_and(|at| now.duration_since(*at) <= window)
        };
        match rotation.decide(&self.raw.raft, unix_ns, now, heard_recently) {
            Some(target) => {
                self.raw.transfer_leader(target);
                true
            }
            None => false,
        }
    }

    fn handle_ready(&mut self) -> Result<(), crate::storage::StoreError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            let messages = ready.take_messages();
            self.note_timeout_now(&messages);
            self.transport.send(messages);
        }
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.install_snapshot(&snapshot)?;
        }
        let committed = ready.take_committed_entries();
        self.apply(committed);
        let hard_state = ready.hs().cloned();
        // Entries, a term and a vote must be on disk before the messages that rest on them
        // go out; a commit index alone need not be (it is learned again from the leader
        // after a restart). Syncing a commit-only change cost the leader a second
        // fdatasync per write, on the loop's path to the next proposal.
        let stored = self.raw.store().hard_state();
        let sync = !ready.entries().is_empty()
            || hard_state
                .as_ref()
                .is_some_and(|hs| hs.term != stored.term || hs.vote != stored.vote);
        if ready.entries().is_empty() && ready.snapshot().is_empty() {
            // A candidate's vote requests go out while its own term and vote are synced
            // (Raft thesis §10.2.1): they rest on its log, which is on disk already, and
            // it counts the answers only after this sync, so it never leads on a vote
            // it could forget. A handoff's election waits on one sync less.
            let (early, later): (Vec<Message>, Vec<Message>) =
                ready.take_persisted_messages().into_iter().partition(|m| {
                    matches!(
                        m.get_msg_type(),
                        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                    )
                });
            if !early.is_empty() {
                self.transport.send(early);
            }
            self.raw.mut_store().persist(&[], hard_state.as_ref(), sync)?;
            if !later.is_empty() {
                self.transport.send(later);
            }
        } else {
            self.raw.mut_store().persist(ready.entries(), hard_state.as_ref(), sync)?;
        }
        if !ready.persisted_messages().is_empty() {
            self.transport.send(ready.take_persisted_messages());
        }
        for state in ready.take_read_states() {
            let (member, batch) = state.request_ctx.split_at(state.request_ctx.len().min(8));
            if member != self.config.id.to_be_bytes() {
                continue;
            }
            let batch = u64::from_be_bytes(batch.try_into().unwrap_or_default());
            for read in self.reads.values_mut().filter(|r| r.batch == batch) {
                read.read_index = read.read_index.or(Some(state.index));
            }
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            let mut hard_state = self.raw.store().hard_state();
            hard_state.commit = commit;
            // The commit index may lag on disk: a restarted member learns it again from the
            // leader (snapshots sync it first, so it always covers the applied state).
            self.raw.mut_store().persist(&[], Some(&hard_state), false)?;
        }
        if !light.messages().is_empty() {
            let messages = light.take_messages();
            self.note_timeout_now(&messages);
            self.transport.send(messages);
        }
        self.apply(light.take_committed_entries());
        self.raw.advance_apply();
        self.serve_reads();
        Ok(())
    }

    /// A handing-over leader's MsgTimeoutNow marks a phase of the handoff (turn log).
    fn note_timeout_now(&mut self, messages: &[Message]) {
        if self.raw.raft.lead_transferee.is_none() {
            return;
        }
        if messages.iter().any(|m| m.get_msg_type() == MessageType::MsgTimeoutNow) {
            if let Some(rotation) = &mut self.rotation {
                rotation.timeout_now_sent(self.clock.now());
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            self.log_bytes_since_snapshot += entry.data.len() as u64;
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                if entry.get_entry_type() != EntryType::EntryNormal {
                    // Membership is fixed at bootstrap; a conf change entry still advances
                    // raft's view so it never waits on it.
                    let mut change = raft::eraftpb::ConfChange::default();
                    if protobuf::Message::merge_from_bytes(&mut change, &entry.data).is_ok() {
                        let _ = self.raw.apply_conf_change(&change);
                    }
                }
                self.machine.skip(entry.index);
                continue;
            }
            let Some(proposal) = Proposal::decode(&entry.data) else {
                // Not ours to interpret; applying nothing keeps every member equal.
                self.machine.skip(entry.index);
                continue;
            };
            let applied = self.machine.apply(entry.index, &proposal);
            if matches!(proposal.command, Command::SetSchedule(_)) {
                self.schedule_changed();
            }
            if let Some(write) = self.writes.remove(&proposal.id) {
                let _ = write.reply.send(Ok(WriteReply { applied, term: self.term() }));
            }
        }
    }

    fn serve_reads(&mut self) {
        let applied = self.machine.applied_index();
        let ready: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.read_index.is_some_and(|index| index <= applied))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            if let Some(read) = self.reads.remove(&id) {
                let _ = read.reply.send(Ok(self.read_view()));
            }
        }
    }

    /// The replicated schedule settings changed (a change applied, or a snapshot installed).
    fn schedule_changed(&mut self) {
        let changes = self.machine.schedule_changes();
        if let Some(rotation) = &mut self.rotation {
            rotation.set_changes(changes);
        }
        *self.handle.schedule.lock().unwrap_or_else(PoisonError::into_inner) = changes.to_vec();
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), crate::storage::StoreError> {
        match StateMachine::restore(snapshot.get_data()) {
            Ok(machine) => {
                // A local snapshot still being written is older than this one: let it finish
                // (one writer of the file at a time) and drop it.
                if let Some(job) = self.snapshot_job.take() {
                    let _ = job.thread.join();
                }
                // Durable first: a restart must find this state even if the log was cleaned.
                // raft-rs has taken the snapshot as this member's state: not keeping it
                // would leave the state machine behind the log, so the member stops.
                if let Err(error) = self.snapshot_file.save(snapshot) {
                    return Err(crate::storage::StoreError::ReceivedSnapshot(format!(
                        "saving it failed: {error}"
                    )));
                }
                self.raw.mut_store().install_snapshot(snapshot)?;
                self.machine = machine;
                self.last_snapshot_index = snapshot.get_metadata().index;
                self.last_snapshot_bytes = snapshot.get_data().len() as u64;
                self.log_bytes_since_snapshot = 0;
                self.snapshots_total += 1;
                self.schedule_changed();
            }
            Err(error) => {
                return Err(crate::storage::StoreError::ReceivedSnapshot(format!(
                    "it does not decode: {error}"
                )))
            }
        }
        Ok(())
    }

    fn maybe_snapshot(&mut self) -> Result<(), crate::storage::StoreError> {
        if let Some(job) = &self.snapshot_job {
            if !job.thread.is_finished() {
                return Ok(());
            }
            self.finish_snapshot()?;
        }
        let applied = self.machine.applied_index();
        let wanted = self.slot.lock().unwrap_or_else(PoisonError::into_inner).wanted_index.take();
        // Members snapshot at different intervals (by id), so they do not all pause to
        // encode at the same index.
        let interval =
            self.config.snapshot_entries + self.config.snapshot_entries * (self.config.id % 4) / 8;
        // A snapshot encodes the whole state (with its history until compacted), so taking
        // one every `interval` entries costs more per write as the state grows: at 50k
        // revisions each took 0.5-1.3 s of a CPU every 4 s under load. Waiting also until
        // the log since the last one is as large as that snapshot keeps the encoding to
        // about one byte per byte written, and a restart still replays at most a
        // snapshot's worth of log (as Redis rewrites its AOF at 100% growth).
        let due = applied >= self.last_snapshot_index + interval
            && self.log_bytes_since_snapshot >= self.last_snapshot_bytes;
        let needed = wanted.is_some_and(|index| index > self.last_snapshot_index);
        if !(due || needed) || applied == self.last_snapshot_index || applied == 0 {
            return Ok(());
        }
        let term = self.raw.raft.raft_log.term(applied).unwrap_or(0);
        let started = Instant::now();
        // The state machine's collections are persistent: this clone is O(1), and the
        // writes applied while the thread encodes it copy only what they touch. (Encoding
        // in the loop cost 15-60 ms at 10-30k keys on this VM, a stall for every client.)
        let machine = self.machine.clone();
        let mut snapshot = Snapshot::default();
        let metadata = snapshot.mut_metadata();
        metadata.index = applied;
        metadata.term = term;
        metadata.set_conf_state(self.conf_state());
        // The commit index on disk must cover the snapshot before the snapshot exists.
        let mut hard_state = self.raw.store().hard_state();
        hard_state.commit = hard_state.commit.max(self.raw.raft.raft_log.committed);
        self.raw.mut_store().persist(&[], Some(&hard_state), true)?;
        let encoded = started.elapsed();
        self.log_bytes_since_snapshot = 0;
        let file = self.snapshot_file.clone();
        let cores = self.config.cores.clone();
        let thread = std::thread::Builder::new().name("snapshot".into()).spawn(move || {
            // Born with the loop's mask and policy: off its core, below its priority.
            if let Err(error) = worknode_cores::make_current_background(cores.as_deref(), 10) {
                tracing::warn!("the snapshot thread stays where the Raft loop runs: {error}");
            }
            snapshot.set_data(machine.snapshot().into());
            drop(machine);
            file.save(&snapshot).map(|()| snapshot).map_err(|error| error.to_string())
        });
        match thread {
            Ok(thread) => {
                self.snapshot_job = Some(SnapshotJob {
                    index: applied,
                    compact_to: applied.saturating_sub(self.config.log_keep_entries).max(1),
                    started,
                    encoded,
                    thread,
                });
            }
            Err(error) => tracing_error(&format!("cannot start the snapshot writer: {error}")),
        }
        Ok(())
    }

    /// Waits for the snapshot being written and, once it is durable, compacts the log.
    fn finish_snapshot(&mut self) -> Result<(), crate::storage::StoreError> {
        let Some(job) = self.snapshot_job.take() else {
            return Ok(());
        };
        let snapshot = match job.thread.join() {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(error)) => {
                tracing_error(&format!("writing the snapshot failed, keeping the log: {error}"));
                return Ok(());
            }
            Err(_) => {
                tracing_error("the snapshot writer panicked; keeping the log");
                return Ok(());
            }
        };
        let bytes = snapshot.get_data().len();
        self.raw.mut_store().snapshot_taken(snapshot, job.compact_to)?;
        self.last_snapshot_index = job.index;
        self.last_snapshot_bytes = bytes as u64;
        self.snapshots_total += 1;
        tracing::info!(
            index = job.index,
            bytes,
            in_loop_ms = job.encoded.as_secs_f64() * 1e3,
            total_ms = job.started.elapsed().as_secs_f64() * 1e3,
            "snapshot taken"
        );
        Ok(())
    }

    fn conf_state(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        let status = NodeStatus {
            id: self.config.id,
            leader_id: raft.leader_id,
            term: raft.term,
            is_leader: raft.state == StateRole::Leader,
            commit_index: raft.raft_log.committed,
            applied_index: self.machine.applied_index(),
            revision: self.machine.store().revision(),
            store_bytes: self.machine.store().size_bytes(),
            alarms: self.machine.alarms().to_vec(),
            pending_writes: self.writes.len(),
            rejected_total: self.rejected_total,
            retried_total: self.retried_total,
            leader_changes_total: self.leader_changes_total,
            fast_failovers_total: self.fast_failovers_total,
            snapshot_requests_total: self.snapshot_requests_total,
            forward_unreachable_total: self.forward_unreachable_total,
            forwarded_ahead_total: self.forwarded_ahead_total,
            held_fallback_total: self.held_fallback_total,
            optimistic_rejected_total: self.optimistic_rejected_total,
            snapshots_total: self.snapshots_total,
            snapshot_index: self.last_snapshot_index,
            reads_off_loop_total: self.raw.store().reads_off_loop(),
        };
        *self.handle.status.write().unwrap_or_else(PoisonError::into_inner) = status;
    }
}

fn tracing_error(message: &str) {
    tracing::error!("{message}");
}
