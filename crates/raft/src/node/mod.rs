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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError};
use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{ProgressState, RawNode, ReadOnlyOption, StateRole};
use tokio::sync::oneshot;
use worknode_kv::{
    Applied, Command, KvError, Outcome, Proposal, RangeRequest, RangeResponse, RequestId,
    ScheduleChange, StateMachine,
};

use crate::doorbell::{Doorbell, LoopSender};
use crate::engine::ahead::{self, AHEAD};
use crate::snapshot_file::SnapshotFile;
use crate::storage::{LogStore, SnapshotSlot};
use crate::validate::{check_against_log, LogView, Rejection, Rejections};

/// A proposal forwarded ahead to `to`, marked (raft-rs forwards proposals the same way;
/// see [`crate::engine::ahead`]).
fn propose_message(from: u64, to: u64, data: &[u8]) -> Message {
    let entry = Entry { data: data.to_vec().into(), ..Entry::default() };
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgPropose);
    message.from = from;
    message.to = to;
    message.set_context(AHEAD.to_vec().into());
    message.mut_entries().push(entry);
    message
}

/// Client requests waiting for the Raft loop.
pub const REQUEST_QUEUE_MAX: usize = 8_192;
/// Peer messages waiting for the Raft loop.
pub const PEER_INBOX_MAX: usize = 16_384;
/// Messages taken from a channel per loop turn, so neither starves the other.
const DRAIN_MAX: usize = 1_024;

mod api;
mod clocks;
mod elections;
mod leadership;
mod leases;
mod ready;
mod requests;
mod snapshots;

pub use crate::engine::requests::{PENDING_READS_MAX, PENDING_WRITES_MAX};
use crate::engine::FixedHasher;
pub use api::*;
use requests::{ReadTx, WriteTx};
use snapshots::SnapshotJob;

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
    /// When snapshots are taken and asked for ([`crate::engine::snapshots`]).
    snapshots: crate::engine::snapshots::Snapshots,
    requests: Receiver<ClientRequest>,
    inbox: Receiver<Message>,
    /// What the producers of all the queues ring (see [`crate::doorbell`]).
    bell: Arc<Doorbell>,
    /// First indexes of the log reads for lagging peers that finished off the loop.
    fetched: Receiver<u64>,
    handle: NodeHandle,
    /// Client writes and linearizable reads until answered ([`crate::engine::requests`]).
    pending: crate::engine::requests::Requests<WriteTx, ReadTx>,
    rotation: Option<crate::rotation::Rotation>,
    /// When each peer's last message arrived (liveness for handoff decisions).
    last_heard: HashMap<u64, Instant, FixedHasher>,
    /// Proposals forwarded ahead to this member (the incoming leader), until it leads.
    held: ahead::Held<Message>,
    /// Proposals this leader passed on to the member taking over, until the handoff
    /// completes or is given up.
    passed_ahead: Vec<Message>,
    /// Followers this new leader replicates to before their first answer (see
    /// [`Node::replicate_at_once`]), until that answer comes.
    optimistic: crate::engine::optimistic::Optimistic,
    /// Election timeouts, the schedule's favour, failover and takeover
    /// ([`crate::engine::elections`]).
    elections: crate::engine::elections::Elections,
    /// When the elections need the loop next.
    elections_due: Option<Instant>,
    /// Members' clocks as the transport measured them ([`clocks`]).
    clocks: clocks::Clocks,
    /// The takeover this member began, until its campaign ends: (term, silent leader,
    /// what the turn log records if it wins).
    takeover_note: Option<(u64, u64, String)>,
    last_leader: u64,
    /// The earliest time a write forwarded ahead must be retried or a held write released.
    due_at: Option<Instant>,
    /// When raft-rs ticks next.
    next_tick: Instant,
    /// The leases' deadlines on this member's clock ([`crate::engine::leases`]).
    leases: crate::engine::leases::Leases,
    /// Revokes this member proposed as leader: (its term then, how many), for their
    /// request ids.
    revokes: (u64, u64),
    /// Followers sent a snapshot during this Ready, to report once it is done.
    snapshots_sent: Vec<u64>,
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
        let machine = restore_machine(snapshot.as_ref(), &snapshot_file)?;
        let snapshots = snapshot_policy(&config, machine.applied_index(), snapshot.as_ref());
        if let Some(snapshot) = snapshot {
            slot.lock().unwrap_or_else(PoisonError::into_inner).latest = Some(snapshot);
        }
        let raft_config = raft_config(&config, machine.applied_index());
        raft_config.validate()?;
        let bell = Arc::new(Doorbell::default());
        let fetched = start_log_reader(&config, &mut storage, &bell);
        let raw = RawNode::new(&raft_config, storage, &crate::raft_log::logger())?;
        let rotation = start_rotation(&config, &machine)?;
        let schedule = Arc::new(Mutex::new(machine.schedule_changes().to_vec()));
        let turns = rotation.as_ref().map(crate::rotation::Rotation::log).unwrap_or_default();
        let (request_tx, request_rx) = crossbeam_channel::bounded(REQUEST_QUEUE_MAX);
        let (inbox_tx, inbox_rx) = crossbeam_channel::bounded(PEER_INBOX_MAX);
        let transport_bell = Arc::clone(&bell);
        transport.set_waker(Arc::new(move || transport_bell.ring()));
        let handle = NodeHandle::new(
            config.id,
            LoopSender::new(request_tx, Arc::clone(&bell)),
            LoopSender::new(inbox_tx, Arc::clone(&bell)),
            turns,
            schedule,
            Arc::new(crate::changes::ChangeFeed::new(
                crate::changes::FEED_BYTES_DEFAULT,
                machine.store().revision(),
            )),
        );
        let (seed, tick, now) = (config.seed, config.tick, clock.now());
        let elections = crate::engine::elections::Elections::new(election_settings(&config), seed);
        let pending = crate::engine::requests::Requests::new(config.id, config.retry_interval);
        let mut node = Self {
            config,
            clock,
            transport,
            raw,
            machine,
            snapshot_file,
            snapshot_job: None,
            slot,
            snapshots,
            requests: request_rx,
            inbox: inbox_rx,
            bell,
            fetched,
            handle: handle.clone(),
            pending,
            rotation,
            due_at: None,
            last_heard: HashMap::default(),
            held: ahead::Held::default(),
            passed_ahead: Vec::new(),
            optimistic: crate::engine::optimistic::Optimistic::default(),
            elections,
            elections_due: None,
            clocks: clocks::Clocks::default(),
            snapshots_sent: Vec::new(),
            takeover_note: None,
            last_leader: raft::INVALID_ID,
            next_tick: now + tick,
            leases: crate::engine::leases::Leases::default(),
            revokes: (0, 0),
        };
        node.restore_leases(now);
        node.draw_election_timeout();
        Ok((node, handle))
    }

    /// Runs until [`NodeHandle::stop`]; then answers what is left with `Stopped`.
    pub fn run(mut self) -> Result<(), crate::storage::StoreError> {
        self.bell.answer_here();
        while !self.handle.stop.load(Ordering::Relaxed) {
            let timeout = self.until_due();
            self.wait_for_input(timeout);
            self.turn()?;
        }
        self.finish_snapshot()?;
        let (writes, reads) = self.pending.drain();
        for reply in writes {
            let _ = reply.send(Err(NodeError::Stopped));
        }
        for reply in reads {
            let _ = reply.send(Err(NodeError::Stopped));
        }
        Ok(())
    }

    /// How long the loop may wait for input before a tick, a turn boundary, a failover
    /// campaign or a forwarded write falls due.
    fn until_due(&self) -> Duration {
        let mut timeout =
            self.next_tick.saturating_duration_since(self.clock.now()).min(self.config.tick);
        if let Some(rotation) = &self.rotation {
            if self.raw.raft.state == StateRole::Leader {
                timeout = timeout.min(rotation.next_wakeup(self.schedule_unix_ns()));
            }
        }
        if let Some(at) = self.elections_due {
            timeout = timeout.min(at.saturating_duration_since(self.clock.now()));
        }
        if let Some(at) = self.due_at {
            timeout = timeout.min(at.saturating_duration_since(self.clock.now()));
        }
        timeout
    }

    /// One turn, after the input that arrived was taken: the tick if one is due, retries
    /// and expiries, snapshots, `Ready`, leadership changes, the schedule's handoffs, and
    /// the status it publishes. Reads the time once, from the node's clock.
    fn turn(&mut self) -> Result<(), crate::storage::StoreError> {
        self.ask_read_index();
        let now = self.clock.now();
        self.watch_leader(now);
        let due = self.due_at.is_some_and(|at| now >= at);
        let ticked = now >= self.next_tick;
        if ticked {
            self.draw_election_timeout();
            self.raw.tick();
            self.check_clocks();
            self.next_tick += self.config.tick;
            if self.next_tick < now {
                self.next_tick = now + self.config.tick;
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
            self.expire_leases(now);
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
        self.plan_election_wakeup(now);
        self.publish_status();
        Ok(())
    }

    /// Runs the loop once without waiting, for a simulator that owns time: takes the input
    /// that arrived, runs a turn, and says when the loop must run again if nothing more
    /// arrives.
    pub fn poll(&mut self) -> Result<Instant, crate::storage::StoreError> {
        self.take_input();
        self.turn()?;
        Ok(self.clock.now() + self.until_due())
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
        if elections::is_vote_request(&message) {
            // A candidate that saw the leader's process gone may ask before this loop
            // looked: look now, or the leader lease refuses the vote for a whole timeout.
            self.watch_leader(self.clock.now());
            // Someone else is campaigning already: two candidates would split the vote.
            if message.from != self.config.id {
                self.elections.other_candidate();
            }
            if message.get_context() == crate::engine::elections::TAKEOVER {
                self.judge_takeover(&mut message);
            }
            self.judge_transfer(&mut message);
        }
        if self.rotation.is_some() {
            self.last_heard.insert(message.from, self.clock.now());
        }
        if message.get_msg_type() == MessageType::MsgTimeoutNow
            && self.stale_timeout_now(&mut message)
        {
            return;
        }
        let proposed_elsewhere =
            message.get_msg_type() == MessageType::MsgPropose && message.from != self.config.id;
        if proposed_elsewhere {
            let Some(stepped) = self.peer_proposal(message) else {
                return;
            };
            message = stepped;
        }
        if self.optimistic.awaiting() {
            self.first_answer(&message);
        }
        // Messages for another member, or from a removed one, are not ours to act on.
        let _ = self.raw.step(message);
    }

    /// A peer's write arriving here: held for this member's turn (it was sent ahead to
    /// this member as the incoming leader), passed on to the member taking over (this
    /// member leads and hands over), or returned to be stepped into raft-rs.
    fn peer_proposal(&mut self, mut message: Message) -> Option<Message> {
        // Passed on (ahead, or by raft-rs to the leader), it goes as this member's own:
        // peers accept a message only from the member whose connection carries it
        // (crate::validate).
        message.from = self.config.id;
        let arriving = ahead::Arriving {
            me: self.config.id,
            leads: self.raw.raft.state == StateRole::Leader,
            marked: message.get_context() == AHEAD,
            ahead: self.forward_ahead(),
            grace: self.forward_grace(),
            held_full: self.held.full(),
            now: self.clock.now(),
        };
        match ahead::arrival(&arriving) {
            ahead::Arrival::Hold { release } => {
                self.due_at = Some(self.due_at.map_or(release, |due| due.min(release)));
                self.held.hold(message, release);
                None
            }
            ahead::Arrival::PassAhead { target } => {
                message.to = target;
                message.set_context(AHEAD.to_vec().into());
                // Kept until the handoff completes: if it is given up (the target went
                // silent), this member proposes them itself at once.
                if self.passed_ahead.len() < ahead::HELD_MAX {
                    self.passed_ahead.push(message.clone());
                }
                self.transport.send(vec![message]);
                None
            }
            ahead::Arrival::Step => Some(message),
        }
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

    /// Whether the simulator planted `bug` in this member ([`crate::planted`]).
    fn planted(&self, bug: crate::PlantedBug) -> bool {
        self.config.planted == Some(bug)
    }

    fn term(&self) -> u64 {
        self.raw.raft.term
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
            compact_revision: self.machine.store().compact_revision(),
            store_bytes: self.machine.store().size_bytes(),
            alarms: self.machine.alarms().to_vec(),
            pending_writes: self.pending.pending_writes(),
            snapshot_index: self.snapshots.last_index(),
            reads_off_loop_total: self.raw.store().reads_off_loop(),
        };
        *self.handle.status.write().unwrap_or_else(PoisonError::into_inner) = status;
    }
}

/// The elections policy's timing: takeovers only under rotation, after
/// `silence_heartbeats` heartbeat intervals without a word from the leader.
fn election_settings(config: &NodeConfig) -> crate::engine::elections::Settings {
    let heartbeat = config.tick * config.heartbeat_ticks as u32;
    let (mut silence, grace) =
        config.rotation.as_ref().map_or((Duration::ZERO, Duration::ZERO), |r| {
            (heartbeat * r.silence_heartbeats, r.takeover_grace)
        });
    if config.planted == Some(crate::PlantedBug::NoTakeover) {
        silence = Duration::ZERO;
    }
    crate::engine::elections::Settings { tick: config.tick, silence, grace }
}

/// When this member snapshots and asks for snapshots, from the one it restored (if any).
fn snapshot_policy(
    config: &NodeConfig,
    applied: u64,
    snapshot: Option<&Snapshot>,
) -> crate::engine::snapshots::Snapshots {
    crate::engine::snapshots::Snapshots::new(
        config.id,
        config.snapshot_entries,
        config.election_timeout(),
        applied,
        snapshot.map_or(0, |s| s.get_data().len() as u64),
    )
}

/// The state machine as of `snapshot` (a fresh one without).
fn restore_machine(
    snapshot: Option<&Snapshot>,
    file: &SnapshotFile,
) -> Result<StateMachine, StartError> {
    match snapshot {
        Some(snapshot) => StateMachine::restore(snapshot.get_data())
            .map_err(|error| StartError::Snapshot(format!("{}: {error}", file.path().display()))),
        None => Ok(StateMachine::new()),
    }
}

/// Scheduled leadership, with the schedule changes the state machine has applied.
fn start_rotation(
    config: &NodeConfig,
    machine: &StateMachine,
) -> Result<Option<crate::rotation::Rotation>, StartError> {
    let mut rotation = config.rotation.clone().map(crate::rotation::Rotation::new).transpose()?;
    if let Some(rotation) = &mut rotation {
        rotation.set_changes(machine.schedule_changes());
    }
    Ok(rotation)
}

/// raft-rs's settings for this member.
fn raft_config(config: &NodeConfig, applied: u64) -> raft::Config {
    raft::Config {
        id: config.id,
        election_tick: config.election_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        applied,
        max_size_per_msg: 256 * 1024,
        max_inflight_msgs: 32,
        check_quorum: true,
        pre_vote: true,
        read_only_option: ReadOnlyOption::Safe,
        max_uncommitted_size: 64 * 1024 * 1024,
        ..raft::Config::default()
    }
}

/// Starts reading entries for lagging followers off the loop ([`crate::fetch`]), on the
/// housekeeping CPUs; the receiver yields the first index of each finished read.
fn start_log_reader<S: LogStore>(
    config: &NodeConfig,
    storage: &mut S,
    bell: &Arc<Doorbell>,
) -> Receiver<u64> {
    let (fetched_tx, fetched_rx) = crossbeam_channel::unbounded();
    let fetched_tx = LoopSender::new(fetched_tx, Arc::clone(bell));
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
    fetched_rx
}

fn tracing_error(message: &str) {
    tracing::error!("{message}");
}
