//! The simulated world: members running the real Raft driver and state machine on a
//! simulated disk, network and clocks, clients, and the fault plan — all in one thread,
//! advanced from event to event, so a run is a function of its seed.

pub mod clock;
pub mod disk;
mod faults;
pub mod net;
mod rejoin;
mod requests;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use worknode_kv::{ScheduleSettings, StateMachine};
use worknode_raft::clock_offset::{ClockOffsets, SharedClockOffsets};
use worknode_raft::rotation::{RotationConfig, TurnRecord};
use worknode_raft::snapshot_file::SnapshotFile;
use worknode_raft::{
    ClientRequest, Node, NodeConfig, NodeCounters, NodeHandle, PlantedBug, SnapshotSlot,
};

use crate::check::Observer;
use crate::faults::{FaultEvent, Plan};
use crate::trace::Trace;
use crate::workload::{Answer, Client, Operation, REQUEST_TIMEOUT};
use crate::RunConfig;
use clock::{nanos_since, Nanos, SimClock, MS, SECOND, WALL_START_UNIX_NS};
use disk::{Disk, SimStore};
use net::{Envelope, Links, Network, SimTransport};

type SimNode = Node<SimClock, SimTransport, SimStore>;

/// One member: its process (absent while down) and what outlives it.
struct Member {
    id: u64,
    node: Option<(SimNode, NodeHandle)>,
    /// When its loop must run next (if nothing arrives before).
    wake_at: Nanos,
    cursor: Arc<AtomicU64>,
    wall_offset: Arc<AtomicI64>,
    disk: Arc<Mutex<Disk>>,
    /// The member's snapshot, which outlives its process as the disk does.
    snapshot_file: SnapshotFile,
    outbox: Arc<Mutex<Vec<Envelope>>>,
    /// Starts so far (a restart draws new timeouts).
    starts: u64,
    /// Digest requests waiting for the loop.
    digests: Vec<oneshot::Receiver<StateMachine>>,
    /// Its process is stopped (the freeze fault): input queues up, nothing runs.
    frozen: bool,
    /// Its transport's measurements of the peers' clocks (its process's memory).
    clocks: SharedClockOffsets,
    /// When its wall clock last moved (a skew fault began or ended).
    clock_moved_at: Nanos,
    /// Its log is damaged and its operator waits to start it with `--rejoin`: when to
    /// look again whether the others hold what it held.
    rejoin_at: Option<Nanos>,
    /// It rejoined and has not caught up: the commit index it must apply first. Until
    /// then it holds nothing the cluster can count on, and counts as down.
    catch_up: Option<u64>,
}

impl Member {
    /// Input arrived at `now`: the loop runs as soon as it is free (a member busy with a
    /// sync takes it when the sync is done).
    fn wake(&mut self, now: Nanos) {
        self.wake_at = self.wake_at.min(self.cursor.load(Ordering::Relaxed).max(now));
    }
}

/// The whole simulated cluster and its clients.
#[allow(missing_debug_implementations, reason = "the members' raft state has no useful Debug")]
pub struct World {
    config: RunConfig,
    base: Instant,
    /// Now, on the cluster's timeline.
    pub now: Nanos,
    members: Vec<Member>,
    /// Messages in flight.
    pub network: Network,
    clients: Vec<Client>,
    /// Every operation the clients called, in call order.
    pub history: Vec<Operation>,
    next_value: u32,
    plan: std::collections::VecDeque<(Nanos, FaultEvent)>,
    /// What happened, hashed, and the latest events.
    pub trace: Trace,
    /// The checks made while the run goes.
    pub observer: Observer,
    /// Whether clients still call.
    pub calling: bool,
    /// Stretches when more than crashes of a minority were in force (a network fault, a
    /// skewed clock, a slow disk, or a majority down), as (from, to); the last may be open.
    pub troubled: Vec<(Nanos, Nanos)>,
    /// When members were down: (member, from, to); `to` is `Nanos::MAX` while down.
    pub downs: Vec<(u64, Nanos, Nanos)>,
    /// Turn records of members' processes that crashed (the live ones keep theirs).
    pub turns: Vec<TurnRecord>,
    /// Snapshots members took or installed, their crashed processes' included.
    pub snapshots: u64,
    /// Takeovers from a silent leader by crashed processes (the live ones count theirs).
    takeovers: u64,
    /// When members were frozen: (member, from, to); `to` is `Nanos::MAX` while frozen.
    pub freezes: Vec<(u64, Nanos, Nanos)>,
    /// Clock estimates checked against the truth.
    pub clock_estimates_checked: u64,
    /// Snapshots delivered from a leader to a member that lagged.
    pub snapshots_sent: u64,
    next_sample: Nanos,
}

/// How often each member's state-machine digest is sampled.
const SAMPLE_EVERY: Nanos = SECOND;
/// Applied entries between snapshots (at least; see `Node::maybe_snapshot`).
const SNAPSHOT_ENTRIES: u64 = 300;

/// A turn of scheduled leadership: four slots of 100 ms.
pub const TURN: Nanos = 400 * MS;

/// How often an operator waiting to rejoin a damaged member looks at the cluster again.
const REJOIN_RETRY: Nanos = 20 * MS;

/// Clients calling at once.
const CLIENTS: u32 = 4;
/// Messages in flight that only a storm explains: a healthy cluster of five with every
/// client busy has a few hundred.
const STORM: usize = 20_000;

impl World {
    /// The cluster of `config`, fresh, with the fault plan `plan`.
    pub fn new(config: RunConfig, plan: Plan) -> Self {
        let ids: Vec<u64> = (1..=config.members as u64).collect();
        let seed = config.seed;
        let members = ids
            .iter()
            .map(|&id| Member {
                id,
                node: None,
                wake_at: 0,
                cursor: Arc::default(),
                wall_offset: Arc::default(),
                disk: Arc::new(Mutex::new(Disk::new(&ids, mix(seed, 0xD15C, id)))),
                snapshot_file: SnapshotFile::in_memory(),
                outbox: Arc::default(),
                starts: 0,
                digests: Vec::new(),
                frozen: false,
                clocks: SharedClockOffsets::default(),
                clock_moved_at: 0,
                rejoin_at: None,
                catch_up: None,
            })
            .collect();
        let clients =
            (0..CLIENTS).map(|id| Client::new(id, mix(seed, 0xC11E, u64::from(id)))).collect();
        let trace = Trace::new(config.trace, config.trace_messages);
        let mut world = Self {
            base: Instant::now(),
            now: 0,
            members,
            network: Network::new(mix(seed, 0x4E7, 0)),
            clients,
            history: Vec::new(),
            next_value: 0,
            plan: plan.events.into(),
            trace,
            observer: Observer::default(),
            calling: true,
            // The first election: no leader yet.
            troubled: vec![(0, 0)],
            downs: Vec::new(),
            turns: Vec::new(),
            snapshots: 0,
            takeovers: 0,
            freezes: Vec::new(),
            clock_estimates_checked: 0,
            snapshots_sent: 0,
            next_sample: SAMPLE_EVERY,
            config,
        };
        for index in 0..world.members.len() {
            world.start(index);
        }
        world
    }

    /// Member ids.
    pub fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    fn node_config(&self, member: &Member) -> NodeConfig {
        let ids = self.ids();
        let mut config = NodeConfig::new(member.id, ids.clone());
        config.seed = mix(self.config.seed, member.id, member.starts);
        // Snapshots every few hundred entries, keeping a quarter behind: a member down
        // for a second or two catches up from a snapshot.
        config.snapshot_entries = SNAPSHOT_ENTRIES;
        config.log_keep_entries = SNAPSHOT_ENTRIES / 4;
        config.retry_interval = config.election_timeout() / 2;
        config.planted = self.config.bug;
        config.rotation = self.config.rotation.then(|| RotationConfig {
            base: ScheduleSettings {
                rotation: true,
                algorithm: "fair".into(),
                stakes: ids.iter().map(|id| (*id, 1)).collect(),
                slot_ms: 100,
                slots_per_turn: 4,
                slots_per_epoch: 432_000,
                seed: self.config.seed,
            },
            genesis_unix_ns: WALL_START_UNIX_NS,
            handoff_lead: Duration::from_millis(10),
            max_lag_entries: 128,
            forward_ahead: Duration::from_millis(10),
            silence_heartbeats: 3,
            takeover_grace: Duration::from_millis(50),
            clock_skew_max: Duration::from_millis(500),
        });
        config
    }

    /// Starts member `index`'s process from its disk.
    fn start(&mut self, index: usize) {
        if self.members[index].disk.lock().unwrap_or_else(PoisonError::into_inner).damaged
            && !self.rejoin(index)
        {
            return;
        }
        let config = self.node_config(&self.members[index]);
        let links = Arc::clone(&self.network.links);
        let now = self.now;
        let bug = self.config.bug;
        let member = &mut self.members[index];
        if member.starts > 0 && bug == Some(PlantedBug::ForgetHardState) {
            member.disk.lock().unwrap_or_else(PoisonError::into_inner).forget_hard_state();
        }
        member.starts += 1;
        member.cursor.store(now, Ordering::Relaxed);
        let clock =
            SimClock::new(self.base, Arc::clone(&member.cursor), Arc::clone(&member.wall_offset));
        member.clocks = SharedClockOffsets::default();
        let transport = SimTransport::new(
            member.id,
            Arc::clone(&member.outbox),
            Arc::clone(&links),
            clock.clone(),
            Arc::clone(&member.clocks),
        );
        let slot = Arc::new(Mutex::new(SnapshotSlot::default()));
        let store = SimStore::open(
            Arc::clone(&member.disk),
            Arc::clone(&member.cursor),
            Arc::clone(&slot),
            bug == Some(PlantedBug::AckBeforeSync),
        );
        let snapshot = match member.snapshot_file.load() {
            Ok(snapshot) => snapshot,
            Err(error) => {
                let id = member.id;
                self.fail(format!("member {id}'s snapshot does not load: {error}"));
                return;
            }
        };
        let file = member.snapshot_file.clone();
        let started = crate::trace::as_member(|| {
            Node::new(config, clock, transport, store, snapshot, file, slot)
        });
        let started = started.unwrap_or_else(|_| {
            Err(worknode_raft::StartError::Snapshot(format!(
                "panicked: {}",
                crate::trace::last_panic()
            )))
        });
        match started {
            Ok(started) => {
                member.node = Some(started);
                member.wake_at = now;
                if member.catch_up.is_none() {
                    for down in
                        self.downs.iter_mut().filter(|d| d.0 == member.id && d.2 == Nanos::MAX)
                    {
                        down.2 = now;
                    }
                }
                links.lock().unwrap_or_else(PoisonError::into_inner).down.remove(&member.id);
                self.trace.event(now, format_args!("member {} starts", member.id));
            }
            Err(error) => {
                let id = member.id;
                self.fail(format!("member {id} cannot start: {error}"));
            }
        }
    }

    fn crash(&mut self, index: usize) {
        let now = self.now;
        let member = &mut self.members[index];
        let Some((node, handle)) = member.node.take() else {
            return;
        };
        // Its clients learn now what it answered before it died; the others' connections
        // break (their calls' outcomes are unknown).
        drop(node);
        let id = member.id;
        self.collect_answers(id, now);
        let member = &mut self.members[index];
        self.turns.extend(handle.turns());
        self.snapshots += handle.counters().snapshots.load(Ordering::Relaxed);
        self.takeovers += handle.counters().takeovers.load(Ordering::Relaxed);
        if !self.downs.iter().any(|d| d.0 == member.id && d.2 == Nanos::MAX) {
            self.downs.push((member.id, now, Nanos::MAX));
        }
        if std::mem::take(&mut member.frozen) {
            for freeze in self.freezes.iter_mut().filter(|f| f.0 == member.id && f.2 == Nanos::MAX)
            {
                freeze.2 = now;
            }
        }
        member.digests.clear();
        member.outbox.lock().unwrap_or_else(PoisonError::into_inner).clear();
        let (lost, kept) = member.disk.lock().unwrap_or_else(PoisonError::into_inner).crash();
        self.network.links.lock().unwrap_or_else(PoisonError::into_inner).down.insert(member.id);
        self.trace.event(
            now,
            format_args!("member {id} crashes (unsynced writes: {lost} lost, {kept} written back)"),
        );
    }

    fn fail(&mut self, why: String) {
        self.trace.event(self.now, format_args!("FAILED: {why}"));
        self.observer.fail(why);
    }

    /// Runs until `until` (simulated) or the first failed check.
    pub fn run_until(&mut self, until: Nanos) {
        while self.observer.failure.is_none() {
            let next = self.next_event().min(until);
            if next > until || (next == until && self.now == until) {
                break;
            }
            self.now = self.now.max(next);
            self.apply_faults();
            self.rejoin_due();
            self.deliver();
            self.call();
            self.run_members();
            self.caught_up();
            if self.network.in_flight() > STORM {
                let kinds = self.network.in_flight_kinds();
                let top: Vec<String> =
                    kinds.iter().take(3).map(|(k, n)| format!("{n} {k}")).collect();
                self.fail(format!(
                    "message storm: {} messages in flight ({})",
                    self.network.in_flight(),
                    top.join(", ")
                ));
            }
            if self.now >= self.next_sample {
                self.next_sample = self.now + SAMPLE_EVERY;
                self.sample_digests();
            }
            if self.now >= until {
                break;
            }
        }
    }

    fn next_event(&self) -> Nanos {
        let mut next = Nanos::MAX;
        for member in self.members.iter().filter(|m| m.node.is_some() && !m.frozen) {
            next = next.min(member.wake_at);
        }
        if let Some(at) = self.network.next_arrival() {
            next = next.min(at);
        }
        if let Some((at, _)) = self.plan.front() {
            next = next.min(*at);
        }
        for at in self.members.iter().filter_map(|m| m.rejoin_at) {
            next = next.min(at);
        }
        if self.calling {
            for client in self.clients.iter().filter(|c| c.waiting.is_none()) {
                next = next.min(client.next_call);
            }
        }
        next.min(self.next_sample)
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    fn deliver(&mut self) {
        while let Some(envelope) = self.network.arrived(self.now) {
            let to = envelope.message.to;
            self.trace.message(self.now, &envelope);
            if envelope.message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                self.snapshots_sent += 1;
            }
            let Some(index) = self.index_of(to) else {
                continue;
            };
            let now = self.now;
            let instant = self.instant(now);
            let member = &mut self.members[index];
            if let Some((_, handle)) = &member.node {
                if let Some((sent, echo)) = envelope.stamp {
                    // The receiving transport reads its own wall clock as the frame lands.
                    let offset = member.wall_offset.load(Ordering::Relaxed);
                    let received = (WALL_START_UNIX_NS + now).saturating_add_signed(offset);
                    ClockOffsets::lock(&member.clocks).received(
                        envelope.from,
                        sent,
                        received,
                        echo,
                        instant,
                    );
                }
                handle.deliver(envelope.message);
                member.wake(now);
            }
        }
    }

    fn run_members(&mut self) {
        for index in 0..self.members.len() {
            let due = {
                let member = &self.members[index];
                member.node.is_some() && !member.frozen && member.wake_at <= self.now
            };
            if due {
                self.run_member(index);
            }
        }
    }

    fn run_member(&mut self, index: usize) {
        let now = self.now;
        let base = self.base;
        let member = &mut self.members[index];
        let id = member.id;
        let start = member.cursor.load(Ordering::Relaxed).max(now);
        member.cursor.store(start, Ordering::Relaxed);
        let Some((node, handle)) = member.node.as_mut() else {
            return;
        };
        let polled = crate::trace::as_member(|| node.poll());
        let after = member.cursor.load(Ordering::Relaxed);
        match polled {
            Ok(Ok(next)) => {
                member.wake_at = nanos_since(base, next).max(after).max(now + 1_000);
            }
            Ok(Err(error)) => {
                // Fail-stop: a member that cannot write its log stops, as the server does;
                // only a full disk (the fault) may cause that here.
                let full = member.disk.lock().unwrap_or_else(PoisonError::into_inner).full;
                self.crash(index);
                self.note_trouble();
                if full {
                    self.trace.event(now, format_args!("member {id} stops: {error}"));
                } else {
                    self.fail(format!("member {id} stopped: {error}"));
                }
                return;
            }
            Err(_) => {
                let why = format!("member {id} panicked: {}", crate::trace::last_panic());
                self.crash(index);
                self.fail(why);
                return;
            }
        }
        let status = handle.status();
        self.trace.poll(id, start);
        let outbox =
            std::mem::take(&mut *member.outbox.lock().unwrap_or_else(PoisonError::into_inner));
        let digests = std::mem::take(&mut member.digests);
        let mut waiting_digests = Vec::new();
        for mut receiver in digests {
            match receiver.try_recv() {
                Ok(machine) => self.observer.digest(id, &machine),
                Err(oneshot::error::TryRecvError::Empty) => waiting_digests.push(receiver),
                Err(oneshot::error::TryRecvError::Closed) => {}
            }
        }
        self.members[index].digests = waiting_digests;
        for envelope in outbox {
            self.network.send(envelope);
        }
        if let Some(event) = self.observer.status(after, &status) {
            self.trace.event(after, format_args!("{event}"));
        }
        self.collect_answers(id, after);
    }

    /// Every turn record: those of crashed processes and of the live ones.
    pub fn all_turns(&self) -> Vec<TurnRecord> {
        let mut turns = self.turns.clone();
        turns.extend(self.handles().iter().flat_map(|(_, handle)| handle.turns()));
        turns
    }

    /// Members' handles, for the checks at the end (down members have none).
    pub fn handles(&self) -> Vec<(u64, NodeHandle)> {
        self.members
            .iter()
            .filter_map(|m| m.node.as_ref().map(|(_, handle)| (m.id, handle.clone())))
            .collect()
    }

    /// Snapshots taken or installed by every process, crashed ones included.
    pub fn snapshots_taken(&self) -> u64 {
        self.snapshots + self.live_total(|counters| &counters.snapshots)
    }

    /// Takeovers from a silent leader by every process, crashed ones included.
    pub fn takeovers(&self) -> u64 {
        self.takeovers + self.live_total(|counters| &counters.takeovers)
    }

    /// One of the loop's counters summed over the live processes.
    fn live_total(&self, counter: impl Fn(&NodeCounters) -> &AtomicU64) -> u64 {
        self.handles()
            .iter()
            .map(|(_, handle)| counter(handle.counters()).load(Ordering::Relaxed))
            .sum()
    }

    /// Disk counters summed over members: syncs, and the unsynced writes crashes lost and
    /// kept.
    pub fn disk_totals(&self) -> (u64, u64, u64, u64) {
        self.members.iter().fold((0, 0, 0, 0), |(syncs, lost, kept, rejoins), member| {
            let disk = member.disk.lock().unwrap_or_else(PoisonError::into_inner);
            (
                syncs + disk.syncs,
                lost + disk.lost_writes,
                kept + disk.kept_writes,
                rejoins + disk.rejoins,
            )
        })
    }

    /// The instant simulated time `at` stands for.
    pub fn instant(&self, at: Nanos) -> Instant {
        self.base + Duration::from_nanos(at)
    }
}

/// A seed for one purpose of one run: the run's seed, a purpose tag and an index mixed.
pub fn mix(seed: u64, tag: u64, index: u64) -> u64 {
    let mut draws = worknode_raft::draws::Draws::new(
        seed ^ tag.rotate_left(32) ^ index.wrapping_mul(0x9E37_79B9),
    );
    draws.next_u64()
}
