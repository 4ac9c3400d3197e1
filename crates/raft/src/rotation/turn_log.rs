//! What each turn boundary did, kept in a bounded log, and the counters since start.

use super::*;

/// What happened at one turn boundary, as seen by the member that led into it.
#[derive(Clone, Debug, PartialEq)]
pub struct TurnRecord {
    /// Epoch of the turn.
    pub epoch: u64,
    /// Turn number within the epoch.
    pub turn: u32,
    /// The turn's first slot.
    pub first_slot: u64,
    /// When the turn begins on the slot clock (UNIX µs): the handoff's deadline.
    pub boundary_unix_us: u64,
    /// The member the schedule names.
    pub scheduled: u64,
    /// The member leading when the decision was made.
    pub leader_before: u64,
    /// The member that led once the handoff settled (0 while it has not).
    pub leader_after: u64,
    /// How long the transfer took, when there was one.
    pub handoff: Option<Duration>,
    /// Into the transfer, when the leader sent the target MsgTimeoutNow (the target had
    /// caught up); a late one means the target lagged.
    pub timeout_now: Option<Duration>,
    /// Into the transfer, when the leader stepped down (the target's campaign reached it);
    /// the rest of the handoff is the election finishing and the new leader's first append.
    pub stepped_down: Option<Duration>,
    /// Why the turn was skipped, when it was.
    pub skipped: Option<String>,
    /// The kind of reason, a fixed word for metrics labels (`silent`, `lagging`, …).
    pub skip_kind: Option<&'static str>,
    /// When this member took the turn over from a silent leader: whom, the silence it saw
    /// and how far into the turn ([`crate::engine::elections`]).
    pub takeover: Option<String>,
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
    pub(super) fn handoff(&mut self, duration: Duration) {
        self.handoff_buckets[crate::storage::bucket(&HANDOFF_BUCKETS_S, duration)] += 1;
        self.handoff_seconds_sum += duration.as_secs_f64();
        self.handoffs_total += 1;
    }

    pub(super) fn skip(&mut self, kind: &'static str) {
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
