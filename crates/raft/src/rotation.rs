//! Scheduled leadership: the leader hands over to the next turn's scheduled member by
//! Raft leadership transfer, started `handoff_lead` before the turn boundary.
//!
//! The schedule is a hint on top of Raft, never part of its safety: when the target is not
//! fit to lead (not recently active, in snapshot state, its log more than
//! `max_lag_entries` behind, a conf change pending, another transfer running) the leader
//! keeps leading and records the skipped turn with the reason. A member that leads outside
//! its turn (it won an election after a crash) hands over at the next boundary the same way.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use raft::{ProgressState, Raft};
use worknode_schedule::{LeaderSchedule, ScheduleParams, SlotClock, Stakes};

/// Turn records kept per member.
pub const TURN_LOG_MAX: usize = 1_024;
/// Epoch schedules kept (the current one and the next).
const SCHEDULES_MAX: usize = 2;

/// How rotation runs; identical on every member.
#[derive(Clone, Debug)]
pub struct RotationConfig {
    /// Member ids and stakes.
    pub stakes: Stakes,
    /// Algorithm, seed, epoch and turn length (the epoch field is ignored: it comes from
    /// the clock).
    pub schedule: ScheduleParams,
    /// Length of a slot.
    pub slot: Duration,
    /// Slot 0 begins here (nanoseconds since the UNIX epoch).
    pub genesis_unix_ns: u64,
    /// Start a handoff this long before the turn boundary.
    pub handoff_lead: Duration,
    /// Largest log gap the target may have for a handoff to start.
    pub max_lag_entries: u64,
}

/// What happened at one turn boundary, as seen by the member that led into it.
#[derive(Clone, Debug, PartialEq)]
pub struct TurnRecord {
    /// Epoch of the turn.
    pub epoch: u64,
    /// Turn number within the epoch.
    pub turn: u32,
    /// The turn's first slot.
    pub first_slot: u64,
    /// The member the schedule names.
    pub scheduled: u64,
    /// The member leading when the decision was made.
    pub leader_before: u64,
    /// The member that led once the handoff settled (0 while it has not).
    pub leader_after: u64,
    /// How long the transfer took, when there was one.
    pub handoff: Option<Duration>,
    /// Why the turn was skipped, when it was.
    pub skipped: Option<String>,
    /// The kind of reason, a fixed word for metrics labels (`silent`, `lagging`, …).
    pub skip_kind: Option<&'static str>,
}

/// Upper bounds (seconds) of the handoff duration histogram's buckets.
pub const HANDOFF_BUCKETS_S: [f64; 10] =
    [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];

/// Counters since the member started (they never go down, unlike the bounded log).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RotationMetrics {
    /// Handoffs that completed.
    pub handoffs_total: u64,
    /// Skipped turns by kind of reason.
    pub skipped_total: BTreeMap<&'static str, u64>,
    /// Completed handoffs per bucket of [`HANDOFF_BUCKETS_S`] (not cumulative); the
    /// last entry counts those above the largest bound.
    pub handoff_buckets: [u64; HANDOFF_BUCKETS_S.len() + 1],
    /// Sum of completed handoff durations, seconds.
    pub handoff_seconds_sum: f64,
}

impl RotationMetrics {
    fn handoff(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = HANDOFF_BUCKETS_S.iter().position(|&bound| seconds <= bound);
        self.handoff_buckets[bucket.unwrap_or(HANDOFF_BUCKETS_S.len())] += 1;
        self.handoff_seconds_sum += seconds;
        self.handoffs_total += 1;
    }

    fn skip(&mut self, kind: &'static str) {
        *self.skipped_total.entry(kind).or_insert(0) += 1;
    }
}

/// The bounded turn log and the counters, shared with the node's handle.
#[derive(Debug, Default)]
pub struct TurnLog {
    /// The newest [`TURN_LOG_MAX`] records, oldest first.
    pub records: VecDeque<TurnRecord>,
    /// Counters since start.
    pub metrics: RotationMetrics,
}

/// Rotation state, owned by the Raft loop.
#[derive(Debug)]
pub struct Rotation {
    config: RotationConfig,
    clock: SlotClock,
    schedules: BTreeMap<u64, LeaderSchedule>,
    /// (epoch, turn) already decided.
    decided: Option<(u64, u32)>,
    /// Transfer in flight: target and start.
    transfer: Option<(u64, Instant)>,
    /// When this member last became leader (UNIX ns), while it leads.
    led_since_unix_ns: Option<u64>,
    log: Arc<Mutex<TurnLog>>,
}

/// Why rotation cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The slot settings are invalid.
    #[error("schedule: {0}")]
    Clock(#[from] worknode_schedule::ClockError),
    /// The schedule cannot be computed.
    #[error("schedule: {0}")]
    Schedule(#[from] worknode_schedule::ScheduleError),
}

impl Rotation {
    /// Validates the settings by computing epoch 0's schedule.
    pub fn new(config: RotationConfig) -> Result<Self, RotationError> {
        let clock = SlotClock::new(
            config.genesis_unix_ns,
            config.slot.as_nanos() as u64,
            config.schedule.slots_per_epoch,
            config.schedule.slots_per_turn,
        )?;
        LeaderSchedule::compute(&config.stakes, &ScheduleParams { epoch: 0, ..config.schedule })?;
        Ok(Self {
            config,
            clock,
            schedules: BTreeMap::new(),
            decided: None,
            transfer: None,
            led_since_unix_ns: None,
            log: Arc::default(),
        })
    }

    /// The shared turn log (newest last).
    pub fn log(&self) -> Arc<Mutex<TurnLog>> {
        Arc::clone(&self.log)
    }

    /// The slot clock.
    pub fn clock(&self) -> &SlotClock {
        &self.clock
    }

    /// The member the schedule names for an absolute slot.
    pub fn scheduled_leader(&mut self, slot: u64) -> Option<u64> {
        let epoch = slot / self.config.schedule.slots_per_epoch;
        if !self.schedules.contains_key(&epoch) {
            let params = ScheduleParams { epoch, ..self.config.schedule };
            let schedule = LeaderSchedule::compute(&self.config.stakes, &params).ok()?;
            self.schedules.insert(epoch, schedule);
            while self.schedules.len() > SCHEDULES_MAX {
                self.schedules.pop_first();
            }
        }
        self.schedules.get(&epoch)?.leader(slot)
    }

    /// The member elections should favour now: the current turn's member — or, while that
    /// member leads (an election then means the leader is gone), the next turn's.
    pub fn favoured(&mut self, now_unix_ns: u64, leader: u64) -> Option<u64> {
        let position = self.clock.position(now_unix_ns).ok()?;
        let current = self.scheduled_leader(position.slot)?;
        if current != leader {
            return Some(current);
        }
        self.scheduled_leader(position.next_turn_slot)
    }

    /// How long the leader's loop may sleep before it must look again: until the next
    /// handoff window opens, or, inside a window, until its boundary. An idle loop that
    /// slept through a window would otherwise miss the turn.
    pub fn next_wakeup(&self, now_unix_ns: u64) -> Duration {
        let Ok(position) = self.clock.position(now_unix_ns) else {
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
        let position = self.clock.position(now_unix_ns).ok()?;
        let now = u128::from(now_unix_ns);
        if position.until_next_turn_ns <= self.config.handoff_lead.as_nanos() {
            return Some((position.next_turn_slot, now + position.until_next_turn_ns));
        }
        let first = position.slot - position.slot_in_epoch % self.config.schedule.slots_per_turn;
        let slot_ns = u128::from(self.clock.slot_duration_ns());
        let elapsed =
            u128::from(position.slot - first) * slot_ns + u128::from(position.offset_in_slot_ns);
        (elapsed < slot_ns).then(|| (first, now - elapsed))
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
        let Some((target, started)) = self.transfer else {
            return;
        };
        if leader == target || now.duration_since(started) > Duration::from_secs(5) {
            self.transfer = None;
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            let took = now.duration_since(started);
            if leader == target {
                log.metrics.handoff(took);
            } else {
                log.metrics.skip("transfer_failed");
            }
            if let Some(last) = log.records.back_mut() {
                last.leader_after = leader;
                if leader == target {
                    last.handoff = Some(took);
                } else {
                    last.skipped = Some("transfer did not complete".into());
                    last.skip_kind = Some("transfer_failed");
                }
            }
        }
    }

    /// Called on the leader every loop turn: the member to transfer to now, if any.
    /// `heard_recently(id)` says whether a message from that member arrived within the
    /// liveness window (raft-rs keeps a silent follower in replicate state).
    pub fn decide<S: raft::Storage>(
        &mut self,
        raft: &Raft<S>,
        now_unix_ns: u64,
        now: Instant,
        heard_recently: impl Fn(u64) -> bool,
    ) -> Option<u64> {
        let (next_slot, boundary) = self.due_turn(now_unix_ns)?;
        let epoch = next_slot / self.config.schedule.slots_per_epoch;
        let turn = ((next_slot % self.config.schedule.slots_per_epoch)
            / self.config.schedule.slots_per_turn) as u32;
        if self.decided == Some((epoch, turn)) {
            return None;
        }
        self.decided = Some((epoch, turn));
        // A member that took over inside this decision window (the handoff into this very
        // turn) leaves the record to the member that handed over.
        let window_start = boundary.saturating_sub(self.config.handoff_lead.as_nanos());
        if self.led_since_unix_ns.is_some_and(|since| u128::from(since) > window_start) {
            return None;
        }
        let scheduled = self.scheduled_leader(next_slot)?;
        let me = raft.id;
        let mut record = TurnRecord {
            epoch,
            turn,
            first_slot: next_slot,
            scheduled,
            leader_before: me,
            leader_after: me,
            handoff: None,
            skipped: None,
            skip_kind: None,
        };
        if scheduled == me {
            self.record(record);
            return None;
        }
        let silent = (!heard_recently(scheduled))
            .then(|| ("silent", format!("member {scheduled} has not been heard from recently")));
        if let Some((kind, reason)) =
            silent.or_else(|| unfit(raft, scheduled, self.config.max_lag_entries))
        {
            record.skipped = Some(reason);
            record.skip_kind = Some(kind);
            self.record(record);
            return None;
        }
        record.leader_after = 0;
        self.record(record);
        self.transfer = Some((scheduled, now));
        Some(scheduled)
    }
}

/// Why `target` should not take over now (TiKV's pre-transfer checks): a kind for
/// metrics and the reason in words.
fn unfit<S: raft::Storage>(
    raft: &Raft<S>,
    target: u64,
    max_lag: u64,
) -> Option<(&'static str, String)> {
    if raft.lead_transferee.is_some() {
        return Some(("transfer_running", "a transfer is already running".into()));
    }
    if raft.has_pending_conf() {
        return Some(("conf_change", "a configuration change is pending".into()));
    }
    let Some(progress) = raft.prs().get(target) else {
        return Some(("not_voter", format!("member {target} is not a voter")));
    };
    // Replicate state means the target acknowledges appends as they stream; probe means
    // the leader has not heard from it lately (raft-rs resets `recent_active` at every
    // quorum check, so that flag alone flickers).
    match progress.state {
        ProgressState::Replicate => {}
        ProgressState::Snapshot => {
            return Some(("snapshot", format!("member {target} is receiving a snapshot")))
        }
        ProgressState::Probe => {
            return Some((
                "not_replicating",
                format!("member {target} is not acknowledging (unreachable or recovering)"),
            ))
        }
    }
    let last = raft.raft_log.last_index();
    if progress.matched + max_lag < last {
        return Some((
            "lagging",
            format!("member {target} is {} entries behind", last - progress.matched),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

    use super::*;
    use worknode_schedule::Member;

    const MS: u64 = 1_000_000;

    /// 50 ms slots, 4 per turn (200 ms turns), a 10 ms handoff window, genesis at 1 s.
    fn rotation() -> Rotation {
        let stakes =
            Stakes::new((1..=3).map(|id| Member { id, key: None, stake: 1 }).collect()).unwrap();
        Rotation::new(RotationConfig {
            stakes,
            schedule: ScheduleParams {
                slots_per_epoch: 96,
                slots_per_turn: 4,
                ..Default::default()
            },
            slot: Duration::from_millis(50),
            genesis_unix_ns: 1_000 * MS,
            handoff_lead: Duration::from_millis(10),
            max_lag_entries: 100,
        })
        .unwrap()
    }

    #[test]
    fn handoff_durations_land_in_their_buckets_and_skips_count_by_kind() {
        let mut metrics = RotationMetrics::default();
        metrics.handoff(Duration::from_micros(1_500));
        metrics.handoff(Duration::from_millis(2));
        metrics.handoff(Duration::from_secs(3));
        metrics.skip("silent");
        metrics.skip("silent");
        assert_eq!(metrics.handoffs_total, 3);
        assert_eq!(metrics.handoff_buckets[1], 2, "1.5 ms and 2 ms are ≤ 2 ms");
        assert_eq!(metrics.handoff_buckets[HANDOFF_BUCKETS_S.len()], 1, "3 s is above 1 s");
        assert_eq!(metrics.skipped_total["silent"], 2);
    }

    #[test]
    fn the_loop_wakes_when_the_handoff_window_opens_and_at_the_boundary() {
        let rotation = rotation();
        // 30 ms into turn 0: the window before turn 1 (at 200 ms) opens at 190 ms.
        assert_eq!(rotation.next_wakeup(1_030 * MS), Duration::from_millis(160));
        // Inside the window: wake at the boundary.
        assert_eq!(rotation.next_wakeup(1_195 * MS), Duration::from_millis(5));
        // Before genesis: look again soon.
        assert_eq!(rotation.next_wakeup(10 * MS), Duration::from_millis(10));
    }

    #[test]
    fn elections_favour_the_turns_member_or_the_next_while_it_leads() {
        let mut rotation = rotation();
        let now = 1_030 * MS;
        let current = rotation.scheduled_leader(0).unwrap();
        let next = rotation.scheduled_leader(4).unwrap();
        assert_ne!(current, next);
        assert_eq!(rotation.favoured(now, 0), Some(current));
        assert_eq!(rotation.favoured(now, next), Some(current));
        assert_eq!(rotation.favoured(now, current), Some(next));
        assert_eq!(rotation.favoured(10 * MS, 0), None, "before genesis");
    }

    #[test]
    fn a_decision_is_due_in_the_window_and_late_within_the_first_slot() {
        let rotation = rotation();
        assert_eq!(rotation.due_turn(1_195 * MS), Some((4, u128::from(1_200 * MS))));
        // Woke 30 ms after the boundary: the current turn is still due.
        assert_eq!(rotation.due_turn(1_230 * MS), Some((4, u128::from(1_200 * MS))));
        // Past the turn's first slot, and before the window: nothing is due.
        assert_eq!(rotation.due_turn(1_260 * MS), None);
        assert_eq!(rotation.due_turn(1_100 * MS), None);
    }
}
