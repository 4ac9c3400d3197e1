//! What the loop offers the rest of the member, and what it needs from it: requests and
//! their answers, its status, its configuration, the handle that carries them, and the
//! clock and transport it runs on (a simulator passes its own).

use super::*;

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

    /// Peers' wall clocks against this member's, where measured lately
    /// ([`crate::clock_offset`]), by peer id.
    fn clock_offsets(&self) -> Vec<(u64, crate::clock_offset::ClockOffset)> {
        Vec::new()
    }
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
    /// A bug planted on purpose by the simulator ([`crate::planted`]); always `None` in
    /// a server.
    pub planted: Option<crate::PlantedBug>,
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
            planted: None,
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

/// The leases a member knows and how long each has left by its clock, with the store as
/// of the same applied entry (together: what a backup of the member holds).
#[derive(Clone, Debug)]
pub struct LeaseReport {
    /// The leases (a clone, O(1)).
    pub leases: worknode_kv::Leases,
    /// Time left per lease id (zero: due, its revoke on its way).
    pub remaining: Vec<(i64, Duration)>,
    /// Store revision at the time.
    pub revision: i64,
    /// Raft term at the time.
    pub term: u64,
    /// The store (a clone, O(1)).
    pub store: worknode_kv::Store,
    /// The last log entry applied to both.
    pub applied_index: u64,
}

impl LeaseReport {
    /// What lease `id` has left, in whole seconds (the fraction dropped, as etcd reports
    /// it).
    pub fn remaining_seconds(&self, id: i64) -> Option<i64> {
        let (_, left) = self.remaining.iter().find(|(lease, _)| *lease == id)?;
        Some(i64::try_from(left.as_secs()).unwrap_or(i64::MAX))
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
    /// The leases as this member has applied them, with what each has left by its clock.
    Leases {
        /// Where the answer goes.
        reply: oneshot::Sender<LeaseReport>,
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
    /// Store compaction revision (0: never compacted).
    pub compact_revision: i64,
    /// The store's size ([`worknode_kv::Store::size_bytes`]), what the space quota counts.
    pub store_bytes: u64,
    /// Raised alarms (replicated).
    pub alarms: Vec<worknode_kv::AlarmMember>,
    /// Writes waiting to be applied.
    pub pending_writes: usize,
    /// Applied index of the latest durable snapshot (0: none).
    pub snapshot_index: u64,
    /// Log reads for lagging peers done off the loop, since start.
    pub reads_off_loop_total: u64,
}

/// The loop's event counters since start, each kept in one place: the loop adds, anyone
/// holding the handle reads (metrics, `worknode status`, tests).
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Requests refused at a queue bound.
    pub rejected: AtomicU64,
    /// Proposals proposed again after raft-rs dropped or lost them.
    pub retried: AtomicU64,
    /// Leader changes seen.
    pub leader_changes: AtomicU64,
    /// Failovers started early because the leader's process was found gone.
    pub fast_failovers: AtomicU64,
    /// Takeovers this member began because its leader had been silent for the threshold
    /// and the schedule names it the successor ([`crate::engine::elections`]).
    pub takeovers: AtomicU64,
    /// Snapshots this member asked the leader for because its log lacked entries the
    /// leader counted (after `--rejoin`, or a lost tail).
    pub snapshot_requests: AtomicU64,
    /// Writes in the last part of a turn proposed to the leader because the incoming
    /// leader could not be reached.
    pub forward_unreachable: AtomicU64,
    /// Writes sent to (or, here, kept for) the incoming leader in the last part of a
    /// turn.
    pub forwarded_ahead: AtomicU64,
    /// Writes held for this member's turn that went to the actual leader instead (the
    /// transfer did not happen).
    pub held_fallback: AtomicU64,
    /// Followers that, as this member took over, lacked entries it replicated to them at
    /// once, and were probed back as raft-rs does.
    pub optimistic_rejected: AtomicU64,
    /// State-machine snapshots written (taken or received).
    pub snapshots: AtomicU64,
}

/// The driver's side of the channels, held by servers and transports.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    pub(super) requests: LoopSender<ClientRequest>,
    pub(super) inbox: LoopSender<Message>,
    pub(super) status: Arc<RwLock<NodeStatus>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) dropped_inbound: Arc<AtomicU64>,
    pub(super) turns: Arc<Mutex<crate::rotation::TurnLog>>,
    pub(super) schedule: Arc<Mutex<Vec<ScheduleChange>>>,
    pub(super) rejections: Arc<Rejections>,
    pub(super) counters: Arc<NodeCounters>,
    pub(super) clocks: Arc<Mutex<clocks::ClockView>>,
    pub(super) changes: Arc<crate::changes::ChangeFeed>,
}

impl NodeHandle {
    pub(super) fn new(
        id: u64,
        requests: LoopSender<ClientRequest>,
        inbox: LoopSender<Message>,
        turns: Arc<Mutex<crate::rotation::TurnLog>>,
        schedule: Arc<Mutex<Vec<ScheduleChange>>>,
        changes: Arc<crate::changes::ChangeFeed>,
    ) -> Self {
        Self {
            requests,
            inbox,
            status: Arc::new(RwLock::new(NodeStatus { id, ..NodeStatus::default() })),
            stop: Arc::new(AtomicBool::new(false)),
            dropped_inbound: Arc::new(AtomicU64::new(0)),
            turns,
            schedule,
            rejections: Arc::default(),
            counters: Arc::default(),
            clocks: Arc::default(),
            changes,
        }
    }

    /// What applied revisions changed, for watchers.
    pub fn changes(&self) -> &Arc<crate::changes::ChangeFeed> {
        &self.changes
    }

    /// Peers' wall clocks against this member's, as the loop took them last (every tick).
    pub fn clock_offsets(&self) -> Vec<(u64, crate::clock_offset::ClockOffset)> {
        self.clocks.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The loop's event counters.
    pub fn counters(&self) -> &NodeCounters {
        &self.counters
    }

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
