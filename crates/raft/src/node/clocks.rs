//! Members' clocks in the loop. The slot clock runs on wall time, so two members whose
//! clocks differ disagree on when a turn ends: a follower would forward writes to the
//! incoming leader before the leader hands over, and a takeover's voters would not name
//! the candidate. The transport measures every peer's clock against this member's
//! ([`crate::clock_offset`]); every tick the loop takes those estimates, and
//!
//! - a follower reads the schedule on its leader's clock (its own plus the leader's
//!   offset), so the whole cluster follows one clock, whoever leads;
//! - a member whose clock is beyond `clock_skew_max` from the others (the median of the
//!   clocks measured) is named in a warning, once per episode; while one is, the leader
//!   keeps its turns (no handoff: plain Raft, recorded as skipped for `clock_skew`), and a
//!   follower whose leader's clock is beyond the bound neither forwards writes ahead nor
//!   takes over. All of it resumes when the clocks agree again.

use super::*;
use crate::clock_offset::{beyond_bound, ClockOffset};

/// What the loop knows of the members' clocks.
#[derive(Clone, Debug, Default)]
pub(super) struct Clocks {
    /// The leader's clock minus this member's, while this member follows a leader whose
    /// clock is measured and within the bound.
    pub(super) leader_offset: Option<i64>,
    /// Whether this follower's leader's clock is measured beyond the bound.
    pub(super) leader_beyond: bool,
    /// Members beyond the bound (from the median of the clocks measured), with how far.
    pub(super) beyond: Vec<(u64, i64)>,
}

impl<C: Clock, T: Transport, S: LogStore + raft::Storage> Node<C, T, S> {
    /// Takes the transport's clock estimates (every tick).
    pub(super) fn check_clocks(&mut self) {
        let offsets = self.transport.clock_offsets();
        let bound = self.clock_bound_ns();
        let (me, leader) = (self.config.id, self.raw.raft.leader_id);
        let leader_offset = (leader != me)
            .then(|| offsets.iter().find(|(peer, _)| *peer == leader))
            .flatten()
            .map(|(_, offset)| offset.offset_ns);
        let leader_beyond =
            bound > 0 && leader_offset.is_some_and(|o| o.unsigned_abs() > bound.unsigned_abs());
        if leader_beyond != self.clocks.leader_beyond {
            self.warn_leader_clock(leader, leader_offset.unwrap_or(0), leader_beyond, bound);
        }
        self.clocks.leader_beyond = leader_beyond;
        self.clocks.leader_offset = leader_offset.filter(|_| !leader_beyond);
        // Only clocks measured for a majority (this member's included) tell which one
        // drifted: the leader's view. A follower sees its leader alone.
        let majority = self.config.voters.len() / 2 + 1;
        let beyond = if bound > 0 && offsets.len() + 1 >= majority.max(3) {
            beyond_bound(me, &offsets, bound)
        } else {
            Vec::new()
        };
        let named: Vec<u64> = beyond.iter().map(|(member, _)| *member).collect();
        let before: Vec<u64> = self.clocks.beyond.iter().map(|(member, _)| *member).collect();
        if named != before {
            self.warn_clocks(&beyond, bound);
        }
        self.clocks.beyond = beyond;
        *self.handle.clocks.lock().unwrap_or_else(PoisonError::into_inner) = offsets;
    }

    fn warn_clocks(&self, beyond: &[(u64, i64)], bound: i64) {
        let bound_ms = bound / 1_000_000;
        if beyond.is_empty() {
            tracing::info!(
                "no member's clock is measured beyond clock_skew_max_ms ({bound_ms}) now: rotation resumes"
            );
            return;
        }
        for (member, off) in beyond {
            let whose = if *member == self.config.id { " (this member)" } else { "" };
            let side = if *off > 0 { "ahead of" } else { "behind" };
            tracing::warn!(
                "member {member}'s clock{whose} is {} ms {side} the others', beyond clock_skew_max_ms ({bound_ms}): handoffs, writes forwarded ahead and takeovers pause until the clocks agree; check NTP there",
                off.unsigned_abs() / 1_000_000,
            );
        }
    }

    fn warn_leader_clock(&self, leader: u64, offset: i64, beyond: bool, bound: i64) {
        let bound_ms = bound / 1_000_000;
        if beyond {
            tracing::warn!(
                "this member's clock and its leader's (member {leader}) differ by {} ms, beyond clock_skew_max_ms ({bound_ms}): this member forwards no writes ahead and takes over from no one until they agree; the leader, which measures every member, names the one that is off",
                offset.unsigned_abs() / 1_000_000,
            );
        } else {
            tracing::info!("this member's clock and its leader's agree within {bound_ms} ms again");
        }
    }

    /// `clock_skew_max` in nanoseconds (0: not checked).
    fn clock_bound_ns(&self) -> i64 {
        let bound = self.config.rotation.as_ref().map_or(Duration::ZERO, |r| r.clock_skew_max);
        i64::try_from(bound.as_nanos()).unwrap_or(i64::MAX)
    }

    /// Now on the clock the schedule is read by: the leader's, as far as measured (this
    /// member's own while it leads or knows no better).
    pub(super) fn schedule_unix_ns(&self) -> u64 {
        let own = self.clock.unix_ns();
        own.saturating_add_signed(self.clocks.leader_offset.unwrap_or(0))
    }

    /// Why the leader keeps its turns: a member's clock beyond the bound.
    pub(super) fn clock_pause(&self) -> Option<String> {
        let (member, off) = self.clocks.beyond.first()?;
        Some(format!(
            "member {member}'s clock is {} ms off the others' (beyond clock_skew_max_ms)",
            off.unsigned_abs() / 1_000_000
        ))
    }
}

/// The clock estimates the loop took last, for status and metrics.
pub(super) type ClockView = Vec<(u64, ClockOffset)>;
