//! The checks: those made while the run goes (one leader per term, equal state at equal
//! applied index) and those made on its history at the end (linearizability per key,
//! liveness after the faults heal, turns on schedule).

pub mod linearizable;

use std::collections::BTreeMap;

use worknode_kv::StateMachine;
use worknode_raft::rotation::TurnRecord;
use worknode_raft::NodeStatus;

use crate::workload::{Answer, Call, Operation, KEYS};
use crate::world::clock::{Nanos, SECOND};
use linearizable::{KeyOp, Timed, Verdict};

/// How long after the faults heal a write must succeed.
pub const LIVENESS_BOUND: Nanos = 5 * SECOND;
/// Share of turns that must be led by their scheduled member in a fault-free run.
pub const ON_SCHEDULE_MIN: f64 = 0.99;

/// Checks made as the run goes.
#[derive(Debug, Default)]
pub struct Observer {
    leaders: BTreeMap<u64, u64>,
    last_leader: (u64, u64),
    /// Times a member was seen to lead a new term.
    pub leader_changes: u64,
    /// When the first leader was seen.
    pub first_leader_at: Option<Nanos>,
    digests: BTreeMap<u64, (u64, u64)>,
    /// Digest samples compared.
    pub digests_compared: u64,
    /// The first failed check.
    pub failure: Option<String>,
}

/// Digest samples kept per applied index before the oldest are forgotten.
const DIGESTS_KEPT: usize = 4_096;

impl Observer {
    /// Records a failed check (the first one stands).
    pub fn fail(&mut self, why: String) {
        self.failure.get_or_insert(why);
    }

    /// A member's status after a turn: at most one leader per term. Returns a line for
    /// the trace when a new leader appears.
    pub fn status(&mut self, at: Nanos, status: &NodeStatus) -> Option<String> {
        if !status.is_leader {
            return None;
        }
        self.first_leader_at.get_or_insert(at);
        let leader = *self.leaders.entry(status.term).or_insert(status.id);
        if leader != status.id {
            self.fail(format!(
                "two leaders in term {}: members {leader} and {}",
                status.term, status.id
            ));
        }
        if self.last_leader == (status.term, status.id) {
            return None;
        }
        self.last_leader = (status.term, status.id);
        self.leader_changes += 1;
        Some(format!("member {} leads in term {}", status.id, status.term))
    }

    /// A member's state machine: equal to every other member's at the same applied index.
    pub fn digest(&mut self, member: u64, machine: &StateMachine) {
        let (applied, digest) = (machine.applied_index(), machine.digest());
        match self.digests.get(&applied) {
            Some(&(seen, other)) if seen != digest => self.fail(format!(
                "state machines differ at applied index {applied}: member {other} has digest {seen:016x}, member {member} {digest:016x}"
            )),
            Some(_) => self.digests_compared += 1,
            None => {
                if self.digests.len() == DIGESTS_KEPT {
                    self.digests.pop_first();
                }
                self.digests.insert(applied, (digest, member));
            }
        }
    }
}

/// Linearizability of every key's history; `Err` names the key and the operation no
/// order could place. Also returns how many keys were undecided (budget exhausted).
pub fn linearizability(history: &[Operation]) -> Result<usize, String> {
    let mut undecided = 0;
    for key in 0..KEYS {
        let ops: Vec<(usize, Timed)> = history
            .iter()
            .enumerate()
            .filter(|(_, op)| op.key == key)
            .filter_map(|(index, op)| timed(op).map(|timed| (index, timed)))
            .collect();
        let timed: Vec<Timed> = ops.iter().map(|(_, timed)| timed.clone()).collect();
        match linearizable::check(&timed) {
            Verdict::Linearizable => {}
            Verdict::Undecided => undecided += 1,
            Verdict::Violation { placed, stuck } => {
                let op = &history[ops[stuck].0];
                return Err(format!(
                    "key k{key} is not linearizable: {placed} of {} operations explained, then none could place client {}'s {:?} at member {} (called {:.3} ms, answered {:?}: {:?})",
                    timed.len(),
                    op.client,
                    op.call,
                    op.member,
                    op.called as f64 / 1e6,
                    op.answered.map(|at| format!("{:.3} ms", at as f64 / 1e6)),
                    op.answer
                ));
            }
        }
    }
    Ok(undecided)
}

/// The operation as the linearizability check sees it; `None` when it says nothing
/// (refused, an unanswered read, a serializable read).
fn timed(op: &Operation) -> Option<Timed> {
    let known = op.answer != Answer::Unknown;
    let ret = op.answered.filter(|_| known);
    let key_op = match (&op.call, &op.answer) {
        (_, Answer::Refused) => return None,
        (Call::Get { linearizable: true }, Answer::Read(seen)) => KeyOp::Get(*seen),
        (Call::Get { .. }, _) => return None,
        (Call::Put(value), _) => KeyOp::Put(*value),
        (Call::Delete, Answer::Written(deleted)) => KeyOp::Delete(*deleted),
        (Call::Delete, _) => KeyOp::Delete(None),
        (Call::CompareAndPut { expect, value }, answer) => KeyOp::CompareAndPut {
            expect: *expect,
            value: *value,
            succeeded: match answer {
                Answer::Written(succeeded) => *succeeded,
                _ => None,
            },
        },
    };
    Some(Timed { op: key_op, call: op.called, ret })
}

/// Serializable reads may be stale, but return only what some put wrote, with a version.
pub fn serializable_reads(history: &[Operation]) -> Result<(), String> {
    let written: std::collections::HashSet<u32> = history
        .iter()
        .filter_map(|op| match op.call {
            Call::Put(value) | Call::CompareAndPut { value, .. } => Some(value),
            _ => None,
        })
        .collect();
    for op in history {
        if let (Call::Get { linearizable: false }, Answer::Read(Some((value, version)))) =
            (&op.call, &op.answer)
        {
            if !written.contains(value) || *version == 0 {
                return Err(format!(
                    "a serializable read of k{} at member {} returned value {value} version {version}, which no put wrote",
                    op.key, op.member
                ));
            }
        }
    }
    Ok(())
}

/// How long after trouble ends writes are exempt from [`availability`]: elections that
/// trouble started may still be finishing.
pub const SETTLE: Nanos = 2 * SECOND;
/// Longest wait of a write outside trouble: a crashed leader is replaced within
/// milliseconds (its host refuses connections), and a handoff within a round trip.
pub const AVAILABILITY_BOUND: Nanos = 600 * crate::world::clock::MS;

/// Availability: a write called at least [`SETTLE`] after any trouble (see
/// [`crate::world::World::troubled`]) and answered before the next is acknowledged within
/// [`AVAILABILITY_BOUND`], crashes of a minority notwithstanding. Returns the longest wait.
/// A write called at a member that was down or still catching up after a rejoin (`downs`)
/// waits for that member, as its client would.
pub fn availability(
    history: &[Operation],
    troubled: &[(Nanos, Nanos)],
    freezes: &[(u64, Nanos, Nanos)],
    downs: &[(u64, Nanos, Nanos)],
) -> Result<Nanos, String> {
    let mut longest = 0;
    for op in history {
        let (Answer::Written(_), Some(answered)) = (&op.answer, op.answered) else {
            continue;
        };
        // A client of a frozen member waits for it, as a real client would.
        let frozen = freezes
            .iter()
            .any(|&(member, from, to)| member == op.member && from <= answered && op.called <= to);
        let member_down = downs
            .iter()
            .any(|&(member, from, to)| member == op.member && from <= op.called && op.called < to);
        if frozen || member_down {
            continue;
        }
        let clear = troubled
            .iter()
            .all(|&(from, to)| answered < from || op.called >= to.saturating_add(SETTLE));
        if !clear {
            continue;
        }
        let waited = answered - op.called;
        if waited > AVAILABILITY_BOUND {
            return Err(format!(
                "client {}'s {:?} of k{} at member {} waited {:.0} ms (called {:.3} s) with at most a minority down and nothing else wrong; bound {} ms",
                op.client,
                op.call,
                op.key,
                op.member,
                waited as f64 / 1e6,
                op.called as f64 / 1e9,
                AVAILABILITY_BOUND / crate::world::clock::MS
            ));
        }
        longest = longest.max(waited);
    }
    Ok(longest)
}

/// How long a member must have been down for its turn to be skipped: the leader's
/// liveness window (half an election timeout) and a tick.
pub const DOWN_BEFORE_TURN: Nanos = 600 * crate::world::clock::MS;

/// Scheduled leadership skips a member that is down: no leader starts a handoff to a
/// member down since [`DOWN_BEFORE_TURN`] before the handoff (away from trouble, so the
/// leader's clock and network are sound). Returns the turns judged.
pub fn down_members_skipped(
    turns: &[TurnRecord],
    downs: &[(u64, Nanos, Nanos)],
    troubled: &[(Nanos, Nanos)],
    handoff_lead: Nanos,
) -> Result<usize, String> {
    let mut judged = 0;
    for turn in turns {
        let boundary =
            (turn.boundary_unix_us * 1_000).saturating_sub(crate::world::clock::WALL_START_UNIX_NS);
        let decided = boundary.saturating_sub(handoff_lead);
        let attempted = turn.scheduled != turn.leader_before
            && (turn.skipped.is_none() || turn.skip_kind == Some("transfer_failed"));
        // The leader decided by its own clock, which a skew fault may have moved by up to
        // SKEW_MAX: the decision is judged only if no trouble was that near.
        let skew = crate::faults::SKEW_MAX;
        let sound = troubled
            .iter()
            .all(|&(from, to)| decided + skew < from || decided >= to.saturating_add(skew));
        if !sound || turn.scheduled == turn.leader_before {
            continue;
        }
        judged += 1;
        let down_long = downs.iter().any(|&(member, from, to)| {
            member == turn.scheduled && from + DOWN_BEFORE_TURN <= decided && decided < to
        });
        if attempted && down_long {
            return Err(format!(
                "member {} handed member {} the turn at slot {} ({:.3} s) although it had been down for over {} ms (led after: {}, {})",
                turn.leader_before,
                turn.scheduled,
                turn.first_slot,
                boundary as f64 / 1e9,
                DOWN_BEFORE_TURN / crate::world::clock::MS,
                turn.leader_after,
                turn.skipped.as_deref().unwrap_or("not skipped")
            ));
        }
    }
    Ok(judged)
}

/// Liveness: once the faults heal at `healed`, a write is acknowledged within
/// [`LIVENESS_BOUND`]. Returns how long the first one took.
pub fn liveness(history: &[Operation], healed: Nanos) -> Result<Nanos, String> {
    let first = history
        .iter()
        .filter(|op| op.called >= healed && matches!(op.answer, Answer::Written(_)))
        .filter_map(|op| op.answered)
        .min();
    match first {
        Some(at) if at <= healed + LIVENESS_BOUND => Ok(at - healed),
        Some(at) => Err(format!(
            "after the faults healed at {:.3} s the first write was acknowledged {:.3} s later (bound {} s)",
            healed as f64 / 1e9,
            (at - healed) as f64 / 1e9,
            LIVENESS_BOUND / SECOND
        )),
        None => Err(format!(
            "after the faults healed at {:.3} s no write was acknowledged",
            healed as f64 / 1e9
        )),
    }
}

/// In a fault-free run, at least [`ON_SCHEDULE_MIN`] of the turns beginning at the
/// `expected` first slots were led by their scheduled member; a turn no leader recorded
/// counts as missed. Returns the share.
pub fn turns_on_schedule(records: &[TurnRecord], expected: &[u64]) -> Result<f64, String> {
    let by_slot: BTreeMap<u64, &TurnRecord> = records.iter().map(|r| (r.first_slot, r)).collect();
    if expected.is_empty() {
        return Err("the run is too short to judge turns".into());
    }
    let mut off = Vec::new();
    for slot in expected {
        match by_slot.get(slot) {
            Some(record) if record.leader_after == record.scheduled => {}
            Some(record) => off.push(format!(
                "slot {slot} scheduled {} led by {} ({})",
                record.scheduled,
                record.leader_after,
                record.skipped.as_deref().unwrap_or("no reason recorded")
            )),
            None => off.push(format!("slot {slot}: no leader recorded the turn")),
        }
    }
    let on = expected.len() - off.len();
    let share = on as f64 / expected.len() as f64;
    if share < ON_SCHEDULE_MIN {
        off.truncate(5);
        return Err(format!(
            "{on} of {} turns led by their scheduled member ({:.1}%, at least {:.0}% wanted): {}",
            expected.len(),
            share * 100.0,
            ON_SCHEDULE_MIN * 100.0,
            off.join("; ")
        ));
    }
    Ok(share)
}
