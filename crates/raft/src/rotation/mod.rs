//! Scheduled leadership: the leader hands over to the next turn's scheduled member by
//! Raft leadership transfer, started `handoff_lead` before the turn boundary.
//!
//! The schedule is a hint on top of Raft, never part of its safety: when the target is not
//! fit to lead (not recently active, in snapshot state, its log more than
//! `max_lag_entries` behind, a conf change pending, another transfer running) the leader
//! keeps leading and records the skipped turn with the reason. A member that leads outside
//! its turn (it won an election after a crash) hands over at the next boundary the same way.
//!
//! The settings come from the replicated log: the bootstrap settings (identical in every
//! member's `node.toml`) hold from genesis, and each committed change holds from the epoch
//! it names, anchored in time by its proposer. The slot clock is therefore piecewise — one
//! segment per change — and every member derives the same schedule from the same log.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use raft::{ProgressState, Raft};
use worknode_kv::{ScheduleChange, ScheduleSettings};
use worknode_schedule::{Algorithm, LeaderSchedule, Member, ScheduleParams, SlotClock, Stakes};

/// Turn records kept per member.
pub const TURN_LOG_MAX: usize = 1_024;
/// Epoch schedules kept.
const SCHEDULES_MAX: usize = 4;
/// Most turns an epoch may have: computing a schedule is linear in them, and the Raft loop
/// computes one at each epoch boundary.
pub const TURNS_PER_EPOCH_MAX: u64 = 1 << 20;

/// How rotation runs; identical on every member.
#[derive(Clone, Debug)]
pub struct RotationConfig {
    /// The settings from genesis until the first replicated change.
    pub base: ScheduleSettings,
    /// Slot 0 begins here (nanoseconds since the UNIX epoch).
    pub genesis_unix_ns: u64,
    /// Start a handoff this long before the turn boundary.
    pub handoff_lead: Duration,
    /// Largest log gap the target may have for a handoff to start.
    pub max_lag_entries: u64,
    /// In this last part of a turn, members send new writes straight to the incoming
    /// leader (Gulf Stream); zero turns forwarding off.
    pub forward_ahead: Duration,
    /// Heartbeat intervals without a word from the leader after which its successor on
    /// the schedule takes over ([`crate::engine::elections`]); 0 turns takeovers off.
    pub silence_heartbeats: u32,
    /// How long past a turn boundary the incoming member waits for the handoff before it
    /// takes over; also the clock skew a voter allows when it checks the candidate.
    pub takeover_grace: Duration,
    /// How far members' clocks may differ before handoffs, writes forwarded ahead and
    /// takeovers pause ([`crate::clock_offset`]); zero: not checked.
    pub clock_skew_max: Duration,
}

/// Settings in force from one epoch on.
#[derive(Clone, Debug)]
struct Segment {
    epoch: u64,
    first_slot: u64,
    start_unix_ns: u64,
    /// The slot clock of this segment, its slot 0 at `start_unix_ns`.
    clock: SlotClock,
    stakes: Stakes,
    params: ScheduleParams,
    settings: ScheduleSettings,
}

impl Segment {
    fn new(
        epoch: u64,
        first_slot: u64,
        start_unix_ns: u64,
        settings: &ScheduleSettings,
    ) -> Result<Self, RotationError> {
        let algorithm: Algorithm = settings
            .algorithm
            .parse()
            .map_err(|e| RotationError::Settings(format!("algorithm: {e}")))?;
        if algorithm == Algorithm::SolanaCompatible {
            return Err(RotationError::Settings(
                "algorithm: solana needs vote keys; use fair or lottery for a cluster".into(),
            ));
        }
        if settings.slot_ms == 0 {
            return Err(RotationError::Settings("slot_ms: must be at least 1".into()));
        }
        let clock = SlotClock::new(
            start_unix_ns,
            settings.slot_ms.saturating_mul(1_000_000),
            settings.slots_per_epoch,
            settings.slots_per_turn,
        )?;
        let turns = settings.slots_per_epoch.div_ceil(settings.slots_per_turn);
        if turns > TURNS_PER_EPOCH_MAX {
            return Err(RotationError::Settings(format!(
                "slots_per_epoch: {} slots of {} per turn make {turns} turns; at most {TURNS_PER_EPOCH_MAX} are allowed",
                settings.slots_per_epoch, settings.slots_per_turn
            )));
        }
        let stakes = Stakes::new(
            settings.stakes.iter().map(|&(id, stake)| Member { id, key: None, stake }).collect(),
        )
        .map_err(|e| RotationError::Settings(format!("stakes: {e}")))?;
        let mut cluster_seed = [0u8; 32];
        cluster_seed[..8].copy_from_slice(&settings.seed.to_le_bytes());
        let params = ScheduleParams {
            algorithm,
            epoch,
            cluster_seed,
            slots_per_epoch: settings.slots_per_epoch,
            slots_per_turn: settings.slots_per_turn,
        };
        Ok(Self {
            epoch,
            first_slot,
            start_unix_ns,
            clock,
            stakes,
            params,
            settings: settings.clone(),
        })
    }

    fn slot_ns(&self) -> u64 {
        self.clock.slot_duration_ns()
    }

    /// Proves the settings yield a schedule (computes one epoch's).
    fn check(&self) -> Result<(), RotationError> {
        LeaderSchedule::compute(&self.stakes, &self.params)?;
        Ok(())
    }

    /// Length of an epoch.
    fn epoch_ns(&self) -> u128 {
        u128::from(self.settings.slots_per_epoch) * u128::from(self.slot_ns())
    }

    /// Where epoch `epoch` (not before this segment's) begins on this segment's grid.
    fn anchor_of(&self, epoch: u64) -> Option<Anchor> {
        let epochs = epoch.checked_sub(self.epoch)?;
        let start = u128::from(self.start_unix_ns) + u128::from(epochs) * self.epoch_ns();
        Some(Anchor {
            epoch,
            first_slot: self
                .first_slot
                .checked_add(epochs.checked_mul(self.settings.slots_per_epoch)?)?,
            start_unix_ns: u64::try_from(start).ok()?,
        })
    }

    /// The epoch holding `slot` (at or after this segment's first slot).
    fn epoch_of(&self, slot: u64) -> u64 {
        self.epoch + (slot - self.first_slot) / self.settings.slots_per_epoch
    }
}

/// Where a moment falls on the piecewise slot clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Epoch.
    pub epoch: u64,
    /// Absolute slot.
    pub slot: u64,
    /// First slot of the current turn.
    pub turn_first_slot: u64,
    /// First slot of the next turn.
    pub next_turn_slot: u64,
    /// Time since the current turn began.
    pub into_turn_ns: u128,
    /// Time until the next turn begins.
    pub until_next_turn_ns: u128,
    /// Slot length in force.
    pub slot_ns: u64,
    /// Whether leadership rotates now.
    pub rotating: bool,
}

/// When a schedule change would take effect, as a proposer computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// The epoch.
    pub epoch: u64,
    /// Its first slot.
    pub first_slot: u64,
    /// When it begins, nanoseconds since the UNIX epoch.
    pub start_unix_ns: u64,
}

/// A leadership transfer in flight.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    target: u64,
    started: Instant,
    /// The first slot of the turn it is for.
    first_slot: u64,
    timeout_now: Option<Instant>,
    stepped_down: Option<Instant>,
}

/// A transfer not done by then has failed.
const TRANSFER_GIVE_UP: Duration = Duration::from_secs(5);

/// Rotation state, owned by the Raft loop.
#[derive(Debug)]
pub struct Rotation {
    config: RotationConfig,
    /// The bootstrap segment first, then one per replicated change, by epoch.
    segments: Vec<Segment>,
    /// Computed schedules by (segment first slot, epoch).
    schedules: BTreeMap<(u64, u64), LeaderSchedule>,
    /// First slot of the turn already decided.
    decided: Option<u64>,
    /// Transfer in flight.
    transfer: Option<Transfer>,
    /// When this member last became leader (UNIX ns), while it leads.
    led_since_unix_ns: Option<u64>,
    /// The leader this member sees and since when (schedule time): whether it came in at
    /// its turn's boundary or has been keeping turns.
    leader_since: Option<(u64, u64)>,
    log: Arc<Mutex<TurnLog>>,
}

/// Why rotation cannot start, or a settings change is refused.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The slot settings are invalid.
    #[error("schedule: {0}")]
    Clock(#[from] worknode_schedule::ClockError),
    /// The schedule cannot be computed.
    #[error("schedule: {0}")]
    Schedule(#[from] worknode_schedule::ScheduleError),
    /// A setting is invalid.
    #[error("schedule.{0}")]
    Settings(String),
}

/// Shortest turn a proposer or a bootstrap config may set: a handoff takes a few
/// milliseconds, and shorter turns would spend the cluster's time changing leaders.
pub const TURN_MS_MIN: u64 = 20;

/// Turns of at least [`TURN_MS_MIN`] (replicated changes are judged when proposed, so a
/// change already in the log is read the same way on every member whatever this says).
fn check_turn(settings: &ScheduleSettings) -> Result<(), RotationError> {
    let turn_ms = settings.slot_ms.saturating_mul(settings.slots_per_turn);
    if turn_ms < TURN_MS_MIN {
        return Err(RotationError::Settings(format!(
            "slot_ms: {} ms slots of {} per turn make {turn_ms} ms turns; at least {TURN_MS_MIN} ms",
            settings.slot_ms, settings.slots_per_turn
        )));
    }
    Ok(())
}

impl Rotation {
    /// Validates the bootstrap settings by computing epoch 0's schedule.
    pub fn new(config: RotationConfig) -> Result<Self, RotationError> {
        let base = Segment::new(0, 0, config.genesis_unix_ns, &config.base)?;
        check_turn(&config.base)?;
        base.check()?;
        Ok(Self {
            config,
            segments: vec![base],
            schedules: BTreeMap::new(),
            decided: None,
            transfer: None,
            led_since_unix_ns: None,
            leader_since: None,
            log: Arc::default(),
        })
    }

    /// Checks settings a proposer is about to replicate.
    pub fn validate(settings: &ScheduleSettings) -> Result<(), RotationError> {
        let segment = Segment::new(0, 0, 0, settings)?;
        check_turn(settings)?;
        segment.check()
    }

    /// Takes the replicated changes (all of them, oldest first). A change that does not
    /// validate is ignored on every member alike; proposers validate before proposing.
    pub fn set_changes(&mut self, changes: &[ScheduleChange]) {
        self.segments.truncate(1);
        for change in changes {
            // A change must start on an epoch boundary of the settings before it.
            let expected = self
                .segments
                .last()
                .filter(|last| change.epoch > last.epoch)
                .and_then(|last| last.anchor_of(change.epoch));
            let on_grid = expected.is_some_and(|anchor| {
                anchor.first_slot == change.first_slot
                    && anchor.start_unix_ns == change.start_unix_ns
            });
            if !on_grid {
                tracing::warn!(epoch = change.epoch, "schedule change off the epoch grid; ignored");
                continue;
            }
            match Segment::new(
                change.epoch,
                change.first_slot,
                change.start_unix_ns,
                &change.settings,
            ) {
                Ok(segment) => self.segments.push(segment),
                Err(error) => {
                    tracing::warn!(epoch = change.epoch, "schedule change ignored: {error}")
                }
            }
        }
        self.schedules.clear();
    }

    /// The shared turn log.
    pub fn log(&self) -> Arc<Mutex<TurnLog>> {
        Arc::clone(&self.log)
    }

    /// The newest settings (in force, or pending from a later epoch).
    pub fn latest_settings(&self) -> &ScheduleSettings {
        &self.segments[self.segments.len() - 1].settings
    }

    /// The settings in force at `now_unix_ns` and the epoch a pending change starts at.
    pub fn settings_at(&self, now_unix_ns: u64) -> (&ScheduleSettings, Option<u64>) {
        let index = self.segment_at(now_unix_ns).unwrap_or(0);
        let pending = self.segments.get(index + 1).map(|s| s.epoch);
        (&self.segments[index].settings, pending)
    }

    /// Where a change proposed now should start: the first epoch boundary at least
    /// `margin` away (so every member applies it before it holds), on the grid of the
    /// newest settings — a pending change's when there is one, which the new change then
    /// replaces if it starts at the same epoch.
    pub fn anchor(&self, now_unix_ns: u64, margin: Duration) -> Option<Anchor> {
        let position = self.position(now_unix_ns)?;
        let latest = self.segments.last()?;
        let earliest = u128::from(now_unix_ns) + margin.as_nanos();
        let epoch =
            if latest.start_unix_ns > now_unix_ns { latest.epoch } else { position.epoch + 1 };
        // The first boundary past the margin: skip whole epochs arithmetically.
        let first = latest.anchor_of(epoch)?;
        let behind = earliest.saturating_sub(u128::from(first.start_unix_ns));
        let skip = u64::try_from(behind.div_ceil(latest.epoch_ns())).ok()?;
        latest.anchor_of(epoch.checked_add(skip)?)
    }

    fn segment_at(&self, now_unix_ns: u64) -> Option<usize> {
        self.segments.iter().rposition(|s| s.start_unix_ns <= now_unix_ns)
    }

    fn segment_for_slot(&self, slot: u64) -> usize {
        self.segments.iter().rposition(|s| s.first_slot <= slot).unwrap_or(0)
    }

    /// Where `now_unix_ns` falls; `None` before genesis.
    pub fn position(&self, now_unix_ns: u64) -> Option<Position> {
        let segment = &self.segments[self.segment_at(now_unix_ns)?];
        let p = segment.clock.position(now_unix_ns).ok()?;
        let into_turn_slots = p.slot_in_epoch % segment.settings.slots_per_turn;
        Some(Position {
            epoch: segment.epoch + p.epoch,
            slot: segment.first_slot + p.slot,
            turn_first_slot: segment.first_slot + p.slot - into_turn_slots,
            next_turn_slot: segment.first_slot + p.next_turn_slot,
            into_turn_ns: u128::from(into_turn_slots) * u128::from(segment.slot_ns())
                + u128::from(p.offset_in_slot_ns),
            until_next_turn_ns: p.until_next_turn_ns,
            slot_ns: segment.slot_ns(),
            rotating: segment.settings.rotation,
        })
    }

    /// The last slot of the turn that starts at `first_slot`.
    pub fn turn_last_slot(&self, first_slot: u64) -> u64 {
        let segment = &self.segments[self.segment_for_slot(first_slot)];
        let per_epoch = segment.settings.slots_per_epoch;
        let in_epoch = (first_slot - segment.first_slot) % per_epoch;
        let epoch_end = first_slot - in_epoch + per_epoch;
        (first_slot + segment.settings.slots_per_turn).min(epoch_end) - 1
    }

    /// The member the schedule names for an absolute slot; `None` where rotation is off.
    pub fn scheduled_leader(&mut self, slot: u64) -> Option<u64> {
        let segment = &self.segments[self.segment_for_slot(slot)];
        if !segment.settings.rotation {
            return None;
        }
        let epoch = segment.epoch_of(slot);
        let per_epoch = segment.settings.slots_per_epoch;
        let in_epoch = (slot - segment.first_slot) % per_epoch;
        let key = (segment.first_slot, epoch);
        if self.schedules.len() >= SCHEDULES_MAX && !self.schedules.contains_key(&key) {
            // Evict before inserting, so the schedule asked for is never the one evicted.
            self.schedules.pop_first();
        }
        let schedule = match self.schedules.entry(key) {
            std::collections::btree_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                let params = ScheduleParams { epoch, ..segment.params };
                slot.insert(LeaderSchedule::compute(&segment.stakes, &params).ok()?)
            }
        };
        // The schedule crate numbers an epoch's slots from epoch · slots_per_epoch.
        schedule.leader(epoch * per_epoch + in_epoch)
    }

    /// The member elections should favour now: the current turn's member — or, while that
    /// member leads (an election then means the leader is gone), the next turn's.
    pub fn favoured(&mut self, now_unix_ns: u64, leader: u64) -> Option<u64> {
        let position = self.position(now_unix_ns)?;
        let current = self.scheduled_leader(position.slot)?;
        if current != leader {
            return Some(current);
        }
        self.scheduled_leader(position.next_turn_slot)
    }

    /// Whether any segment, the bootstrap one or a replicated change, turns rotation on.
    pub fn ever_rotates(&self) -> bool {
        self.segments.iter().any(|segment| segment.settings.rotation)
    }

    /// The member the schedule names for the turn `now_unix_ns` falls in.
    pub fn scheduled_at(&mut self, now_unix_ns: u64) -> Option<u64> {
        let slot = self.position(now_unix_ns)?.slot;
        self.scheduled_leader(slot)
    }

    /// Whether `leader` came in with the current turn (at its boundary, by a handoff or
    /// an election since): not a leader that has been keeping turns — one that paused
    /// rotation (a member's clock beyond the bound) or whose last handoff failed keeps
    /// the next turn too, most likely, and a write sent ahead would wait for a handoff
    /// that does not come.
    pub fn leader_came_with_turn(&self, leader: u64, now_unix_ns: u64) -> bool {
        let (Some(position), Some((seen, since))) = (self.position(now_unix_ns), self.leader_since)
        else {
            return false;
        };
        let turn_start = u128::from(now_unix_ns).saturating_sub(position.into_turn_ns);
        // The handoff begins handoff_lead before the boundary; this member learns of it
        // up to a grace later.
        let early = (self.config.handoff_lead + self.config.takeover_grace).as_nanos();
        seen == leader && u128::from(since) + early >= turn_start
    }

    /// Inside the last `forward_ahead` of a turn: the next turn's member and the time left
    /// until its turn begins.
    pub fn incoming(&mut self, now_unix_ns: u64) -> Option<(u64, Duration)> {
        let position = self.position(now_unix_ns)?;
        if position.until_next_turn_ns > self.config.forward_ahead.as_nanos() {
            return None;
        }
        let member = self.scheduled_leader(position.next_turn_slot)?;
        Some((member, Duration::from_nanos(position.until_next_turn_ns as u64)))
    }

    /// How long the leader's loop may sleep before it must look again: until the next
    /// handoff window opens, or, inside a window, until its boundary. An idle loop that
    /// slept through a window would otherwise miss the turn.
    pub fn next_wakeup(&self, now_unix_ns: u64) -> Duration {
        let Some(position) = self.position(now_unix_ns) else {
            return Duration::from_millis(10);
        };
        let until = position.until_next_turn_ns;
        let lead = self.config.handoff_lead.as_nanos();
        let wait = if until > lead { until - lead } else { until };
        Duration::from_nanos(wait.min(u128::from(u64::MAX)) as u64).max(Duration::from_micros(100))
    }

    /// The turn a decision is due for at `now_unix_ns`: the next turn inside the handoff
    /// window before its boundary, or the current turn during its first slot (the loop
    /// woke late). Returns the turn's first slot and its boundary (UNIX ns).
    fn due_turn(&self, now_unix_ns: u64) -> Option<(u64, u128)> {
        let position = self.position(now_unix_ns)?;
        let now = u128::from(now_unix_ns);
        if position.until_next_turn_ns <= self.config.handoff_lead.as_nanos() {
            return Some((position.next_turn_slot, now + position.until_next_turn_ns));
        }
        (position.into_turn_ns < u128::from(position.slot_ns))
            .then(|| (position.turn_first_slot, now - position.into_turn_ns))
    }

    fn record(&self, record: TurnRecord) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kind) = record.skip_kind {
            log.metrics.skip(kind);
        }
        if log.records.len() == TURN_LOG_MAX {
            log.records.pop_front();
        }
        log.records.push_back(record);
    }

    /// Notes the leader the loop currently sees (`me` is this member); completes a
    /// running handoff.
    pub fn observe_leader(&mut self, leader: u64, me: u64, now: Instant, now_unix_ns: u64) {
        match (leader == me, self.led_since_unix_ns) {
            (true, None) => self.led_since_unix_ns = Some(now_unix_ns),
            (false, Some(_)) => self.led_since_unix_ns = None,
            _ => {}
        }
        if self.leader_since.is_none_or(|(seen, _)| seen != leader) {
            self.leader_since = Some((leader, now_unix_ns));
        }
        let Some(transfer) = &mut self.transfer else {
            return;
        };
        if leader != me {
            transfer.stepped_down.get_or_insert(now);
        }
        // raft-rs abandons a transfer after an election timeout; this is well past it.
        if leader == transfer.target || now.duration_since(transfer.started) > TRANSFER_GIVE_UP {
            self.finish_transfer(leader, now);
        }
    }

    /// The running transfer's target, once the transfer has missed its boundary by more
    /// than the takeover grace. A target that is alive and reachable has asked for votes
    /// by then (a transfer takes a round trip or two; the grace covers it), and its vote
    /// request deposes this leader, ending the transfer; one that has not is gone (a dead
    /// host, a frozen process, a cut link). The leader then abandons the transfer and
    /// keeps the turn instead of refusing every write until raft-rs gives the transfer up
    /// an election timeout later. The grace must cover a handoff's round trips on slow
    /// networks: a vote request still on its way when the leader takes writes again finds
    /// the leader's log longer than the candidate's and may lose, costing an election.
    pub fn overdue_transfer(&self, now: Instant) -> Option<u64> {
        let limit = self.config.handoff_lead + self.config.takeover_grace;
        self.transfer.filter(|t| now.duration_since(t.started) > limit).map(|t| t.target)
    }

    /// The running transfer is abandoned (see [`Rotation::overdue_transfer`]): the turn
    /// log records it as failed, the turn kept by `me`.
    pub fn abandon_transfer(&mut self, me: u64, now: Instant) {
        self.finish_transfer(me, now);
    }

    /// Notes that the leader sent the transfer target MsgTimeoutNow.
    pub fn timeout_now_sent(&mut self, now: Instant) {
        if let Some(transfer) = &mut self.transfer {
            transfer.timeout_now.get_or_insert(now);
        }
    }

    /// Closes the running transfer: a handoff if `leader` is its target, else a failure.
    fn finish_transfer(&mut self, leader: u64, now: Instant) {
        let Some(Transfer { target, started, first_slot, timeout_now, stepped_down }) =
            self.transfer.take()
        else {
            return;
        };
        let took = now.duration_since(started);
        let since_start = |at: Option<Instant>| at.map(|at| at.duration_since(started));
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if leader == target {
            log.metrics.handoff(took);
        } else {
            log.metrics.skip("transfer_failed");
        }
        if let Some(record) = log.records.iter_mut().rev().find(|r| r.first_slot == first_slot) {
            record.leader_after = leader;
            record.timeout_now = since_start(timeout_now);
            record.stepped_down = since_start(stepped_down);
            if leader == target {
                record.handoff = Some(took);
            } else {
                record.skipped = Some("transfer did not complete".into());
                record.skip_kind = Some("transfer_failed");
            }
        }
    }
}

mod handoff;
pub use handoff::TransferView;
mod succession;
pub use succession::{Succession, SUCCESSION_TURNS};
mod turn_log;
pub use turn_log::{RotationMetrics, TurnLog, TurnRecord, HANDOFF_BUCKETS_S};

#[cfg(test)]
mod tests;
