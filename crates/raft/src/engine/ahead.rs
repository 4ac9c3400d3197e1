//! Writes sent ahead (Gulf Stream): near a turn boundary a write goes to the incoming
//! leader instead of the current one, and the incoming leader holds it until it leads,
//! then proposes it at once — a planned handoff costs the client nothing.
//!
//! This module decides what becomes of a peer's proposal arriving here and keeps the
//! writes held for this member's turn; where a new write goes is
//! [`super::requests::Route`], chosen by the loop from the schedule.
//!
//! A proposal sent ahead carries the mark [`AHEAD`], which raft-rs keeps when a follower
//! passes it on to the leader, and a leader never sends a marked proposal ahead again:
//! two members whose views of the turn differ (their clocks, or the transfer each saw)
//! would otherwise bounce it between them for as long as their views differ, and a
//! network that duplicates messages multiplies every bounce.

use std::time::{Duration, Instant};

/// Proposals an incoming leader holds for its turn; beyond it they go to the leader.
pub const HELD_MAX: usize = 4_096;

/// The context that marks a proposal sent ahead (see the module above).
pub const AHEAD: &[u8] = b"ahead";

/// What becomes of a peer's proposal that arrives here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Hold it for this member's turn; if the turn has not come by `release`, it goes to
    /// the actual leader.
    Hold {
        /// When it goes to the actual leader instead.
        release: Instant,
    },
    /// Send it on, marked, to the member taking over (this member leads and hands over).
    PassAhead {
        /// The member taking over.
        target: u64,
    },
    /// Give it to raft-rs (which proposes it here, or passes it to the leader).
    Step,
}

/// What the loop knows when a peer's proposal arrives.
#[derive(Clone, Copy, Debug)]
pub struct Arriving {
    /// This member.
    pub me: u64,
    /// Whether this member leads.
    pub leads: bool,
    /// Whether the proposal carries [`AHEAD`].
    pub marked: bool,
    /// Where new writes go now: the incoming leader and the time to the boundary, if
    /// writes go ahead at all.
    pub ahead: Option<(u64, Duration)>,
    /// How long past the boundary a held write waits for the turn.
    pub grace: Duration,
    /// Whether the held writes are at their bound.
    pub held_full: bool,
    /// The time.
    pub now: Instant,
}

/// What becomes of a peer's proposal: held when this member is the incoming leader, sent
/// on when this member leads and hands over (unless it was sent ahead already), else
/// stepped into raft-rs.
pub fn arrival(at: &Arriving) -> Arrival {
    match at.ahead {
        _ if at.held_full => Arrival::Step,
        Some((target, until_boundary)) if target == at.me => {
            Arrival::Hold { release: at.now + until_boundary + at.grace }
        }
        Some((target, _)) if at.leads && !at.marked => Arrival::PassAhead { target },
        _ => Arrival::Step,
    }
}

/// The writes held for this member's turn, with when each goes to the actual leader.
#[derive(Debug)]
pub struct Held<M> {
    writes: Vec<(M, Instant)>,
}

impl<M> Default for Held<M> {
    fn default() -> Self {
        Self { writes: Vec::new() }
    }
}

impl<M> Held<M> {
    /// Whether no more may be held.
    pub fn full(&self) -> bool {
        self.writes.len() >= HELD_MAX
    }

    /// Holds `write` until this member leads, or until `release`.
    pub fn hold(&mut self, write: M, release: Instant) {
        self.writes.push((write, release));
    }

    /// This member leads: every held write, in arrival order, to propose.
    pub fn take_all(&mut self) -> Vec<M> {
        std::mem::take(&mut self.writes).into_iter().map(|(write, _)| write).collect()
    }

    /// The writes whose turn did not come by their release (the transfer failed), in
    /// arrival order, for the actual leader; the rest stay.
    pub fn late(&mut self, now: Instant) -> Vec<M> {
        if self.writes.is_empty() {
            return Vec::new();
        }
        let (late, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.writes).into_iter().partition(|(_, release)| now >= *release);
        self.writes = waiting;
        late.into_iter().map(|(write, _)| write).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 2;

    fn arriving(now: Instant) -> Arriving {
        Arriving {
            me: ME,
            leads: false,
            marked: false,
            ahead: None,
            grace: Duration::from_millis(10),
            held_full: false,
            now,
        }
    }

    #[test]
    fn the_incoming_leader_holds_a_write_until_the_boundary_and_the_grace() {
        let now = Instant::now();
        let at = Arriving { ahead: Some((ME, Duration::from_millis(30))), ..arriving(now) };
        assert_eq!(arrival(&at), Arrival::Hold { release: now + Duration::from_millis(40) });
        // Marked or not: it was sent here ahead, or passed on by the leader handing over.
        assert_eq!(arrival(&Arriving { marked: true, ..at }), arrival(&at));
    }

    #[test]
    fn a_leader_handing_over_passes_an_unmarked_write_on_once() {
        let now = Instant::now();
        let at = Arriving { leads: true, ahead: Some((3, Duration::ZERO)), ..arriving(now) };
        assert_eq!(arrival(&at), Arrival::PassAhead { target: 3 });
        // Sent ahead already: it stays here, or two views of the turn would bounce it.
        assert_eq!(arrival(&Arriving { marked: true, ..at }), Arrival::Step);
    }

    #[test]
    fn a_follower_steps_writes_for_others_and_everything_goes_to_raft_when_full() {
        let now = Instant::now();
        // A follower whose incoming leader is another member: raft-rs passes it to the leader.
        let at = Arriving { ahead: Some((3, Duration::from_millis(5))), ..arriving(now) };
        assert_eq!(arrival(&at), Arrival::Step);
        assert_eq!(arrival(&arriving(now)), Arrival::Step, "writes go to the leader");
        let mine = Arriving { ahead: Some((ME, Duration::ZERO)), held_full: true, ..arriving(now) };
        assert_eq!(arrival(&mine), Arrival::Step);
        let leading = Arriving { leads: true, ahead: Some((3, Duration::ZERO)), ..mine };
        assert_eq!(arrival(&leading), Arrival::Step);
    }

    #[test]
    fn held_writes_go_out_in_arrival_order_when_the_turn_comes_or_at_their_release() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut held = Held::default();
        held.hold("a", at(40));
        held.hold("b", at(20));
        held.hold("c", at(40));
        assert_eq!(held.late(at(19)), Vec::<&str>::new());
        assert_eq!(held.late(at(20)), vec!["b"]);
        held.hold("d", at(90));
        assert_eq!(held.late(at(40)), vec!["a", "c"]);
        held.hold("e", at(90));
        assert_eq!(held.take_all(), vec!["d", "e"], "this member leads: all at once");
        assert_eq!(held.late(at(1_000)), Vec::<&str>::new());
    }

    #[test]
    fn held_writes_are_bounded() {
        let now = Instant::now();
        let mut held = Held::default();
        for n in 0..HELD_MAX {
            assert!(!held.full());
            held.hold(n, now);
        }
        assert!(held.full());
        assert_eq!(held.late(now).len(), HELD_MAX);
        assert!(!held.full());
    }
}
