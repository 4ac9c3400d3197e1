//! Succession when a leader falls silent: who takes over on the schedule, and the turn
//! log's record of a takeover ([`crate::engine::elections`]).

use super::*;

/// Turns [`Rotation::successor`] looks ahead for a member other than the leader.
pub const SUCCESSION_TURNS: usize = 8;

/// The member that takes over from a silent leader ([`Rotation::successor`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Succession {
    /// The member.
    pub member: u64,
    /// Whether its turn has begun (else the leader's own turn runs and the member's
    /// comes later: it takes the rest of the leader's turn early).
    pub turn_began: bool,
    /// How long the current turn has run.
    pub into_turn: Duration,
}

impl Rotation {
    /// Who takes over from `leader` should it fall silent now: the current turn's member
    /// when that is not the leader (its turn began and no handoff came), else the first
    /// later turn's member that is not the leader, looking [`SUCCESSION_TURNS`] turns
    /// ahead. `None` where rotation is off or no such turn is near.
    pub fn successor(&mut self, now_unix_ns: u64, leader: u64) -> Option<Succession> {
        let position = self.position(now_unix_ns)?;
        let into_turn =
            Duration::from_nanos(position.into_turn_ns.min(u128::from(u64::MAX)) as u64);
        let current = self.scheduled_leader(position.slot)?;
        if current != leader {
            return Some(Succession { member: current, turn_began: true, into_turn });
        }
        let mut first_slot = position.next_turn_slot;
        for _ in 0..SUCCESSION_TURNS {
            let member = self.scheduled_leader(first_slot)?;
            if member != leader {
                return Some(Succession { member, turn_began: false, into_turn });
            }
            first_slot = self.turn_last_slot(first_slot) + 1;
        }
        None
    }

    /// Records the current turn as taken over by `me` from the silent `leader`.
    pub fn record_takeover(&mut self, now_unix_ns: u64, me: u64, leader: u64, note: String) {
        let Some(position) = self.position(now_unix_ns) else {
            return;
        };
        let first_slot = position.turn_first_slot;
        let Some(scheduled) = self.scheduled_leader(first_slot) else {
            return;
        };
        let boundary = u128::from(now_unix_ns).saturating_sub(position.into_turn_ns);
        let record = self.turn_record(first_slot, boundary, scheduled, leader);
        self.record(TurnRecord { leader_after: me, takeover: Some(note), ..record });
    }

    /// The record of the turn beginning at `first_slot` (at `boundary`, UNIX ns), as
    /// `leader` found it: nothing happened yet.
    pub(super) fn turn_record(
        &self,
        first_slot: u64,
        boundary: u128,
        scheduled: u64,
        leader: u64,
    ) -> TurnRecord {
        let segment = &self.segments[self.segment_for_slot(first_slot)];
        let settings = &segment.settings;
        TurnRecord {
            epoch: segment.epoch_of(first_slot),
            turn: ((first_slot - segment.first_slot) % settings.slots_per_epoch
                / settings.slots_per_turn) as u32,
            first_slot,
            boundary_unix_us: u64::try_from(boundary / 1_000).unwrap_or(u64::MAX),
            scheduled,
            leader_before: leader,
            leader_after: leader,
            handoff: None,
            timeout_now: None,
            stepped_down: None,
            skipped: None,
            skip_kind: None,
            takeover: None,
        }
    }
}
