//! `FairRotation`: deterministic stake-proportional turns with the tightest possible
//! prefix bound.
//!
//! Think of member `i`'s `c`-th turn (counting from 0) as a unit job with a window of
//! turn numbers in which granting it keeps the member's count within `B` of its exact
//! share `n·w/W` after every prefix of `n` turns:
//!
//! * granting it at turn `n` must not put the member ahead by more than `B`:
//!   `c + 1 − n·w/W ≤ B`, so the job is *released* at `r = ⌈(c + 1 − B)·W/w⌉`;
//! * leaving it ungranted at turn `n` must not leave the member behind by more than `B`:
//!   `n·w/W − c ≤ B`, so its *deadline* is `d = ⌊(c + B)·W/w⌋ + 1`.
//!
//! Tijdeman's chairman-assignment theorem says a sequence meeting
//! `B = 1 − 1/(2(k − 1))` exists for `k` members with positive stake, which is the best
//! bound possible in general. Earliest-deadline-first is optimal for unit jobs with
//! integer release times and deadlines, so granting each turn to the released job with
//! the earliest deadline meets every window: the counts stay within `B` (< 1) of the
//! exact shares after every prefix. Smooth weighted round-robin, by contrast, exceeds
//! one turn on some inputs (see `tests/fairness.rs`).
//!
//! The arithmetic is exact (integers only) and incremental: moving a member from job `c`
//! to job `c + 1` adds the same fraction `W/w` to both its release and its deadline, so
//! the hot loop does no division. Pending jobs sit in intrusive lists bucketed by
//! release turn and by deadline turn, with a bitset over deadline buckets, so each turn
//! costs O(1) plus a short bitset scan.

use crate::schedule::TurnIndex;
use crate::stakes::Stakes;

/// Marks the end of an intrusive list.
const NIL: u32 = u32::MAX;

/// A non-negative rational `quotient + remainder/denominator`, advanced by a fixed step.
#[derive(Clone, Copy, Debug)]
struct Fraction {
    quotient: u128,
    remainder: u128,
}

impl Fraction {
    fn new(numerator: u128, denominator: u128) -> Self {
        Self { quotient: numerator / denominator, remainder: numerator % denominator }
    }

    fn advance(&mut self, step: &Fraction, denominator: u128) {
        debug_assert!(step.remainder < denominator && self.remainder < denominator);
        self.quotient += step.quotient;
        self.remainder += step.remainder;
        if self.remainder >= denominator {
            self.remainder -= denominator;
            self.quotient += 1;
        }
    }

    fn ceil(&self) -> u128 {
        self.quotient + u128::from(self.remainder != 0)
    }
}

/// Per-member state: where its next turn's window starts and ends.
#[derive(Clone, Copy, Debug)]
struct Pending {
    release: Fraction,
    deadline: Fraction,
    /// Both fractions have this denominator: `stake · (2k − 2)`.
    denominator: u128,
    /// Both fractions grow by `W / stake` per turn granted.
    step: Fraction,
    /// The current job's deadline as a turn number, clamped to `turns + 1`.
    deadline_turn: u32,
}

impl Pending {
    /// Turn numbers of the current job's window, clamped to `horizon`.
    fn window(&self, horizon: u32) -> (u32, u32) {
        let clamp = |turn: u128| turn.min(u128::from(horizon)) as u32;
        (clamp(self.release.ceil()), clamp(self.deadline.quotient + 1))
    }
}

/// Intrusive singly linked lists, bucketed by turn number, over member indexes.
#[derive(Debug)]
struct Buckets {
    head: Vec<u32>,
}

impl Buckets {
    fn new(bucket_count: usize) -> Self {
        Self { head: vec![NIL; bucket_count] }
    }

    fn push(&mut self, next: &mut [u32], bucket: u32, member: u32) {
        next[member as usize] = self.head[bucket as usize];
        self.head[bucket as usize] = member;
    }

    fn pop(&mut self, next: &[u32], bucket: u32) -> Option<u32> {
        let member = self.head[bucket as usize];
        if member == NIL {
            return None;
        }
        self.head[bucket as usize] = next[member as usize];
        Some(member)
    }

    fn is_empty(&self, bucket: u32) -> bool {
        self.head[bucket as usize] == NIL
    }
}

/// Occupancy bits over deadline buckets, to find the earliest non-empty one quickly.
#[derive(Debug)]
struct Occupancy {
    words: Vec<u64>,
}

impl Occupancy {
    fn new(bucket_count: usize) -> Self {
        Self { words: vec![0; bucket_count.div_ceil(64)] }
    }

    fn set(&mut self, bucket: u32) {
        self.words[bucket as usize / 64] |= 1 << (bucket % 64);
    }

    fn clear(&mut self, bucket: u32) {
        self.words[bucket as usize / 64] &= !(1 << (bucket % 64));
    }

    /// The first occupied bucket at or after `from`.
    fn first_from(&self, from: u32) -> Option<u32> {
        let mut word_index = from as usize / 64;
        let mut word = *self.words.get(word_index)? & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                return Some((word_index * 64) as u32 + word.trailing_zeros());
            }
            word_index += 1;
            word = *self.words.get(word_index)?;
        }
    }
}

/// Computes `turns` leaders with the earliest-deadline-first chairman assignment.
///
/// Pure: depends only on `stakes` (in canonical order) and `turns`; there is no
/// randomness, so the epoch and seed play no part.
pub(crate) fn fill<I: TurnIndex>(stakes: &Stakes, turns: u32, out: &mut Vec<I>) {
    assert!(out.is_empty());
    assert!(turns < u32::MAX - 1, "turn numbers must leave room for the catch-all bucket");
    out.reserve_exact(turns as usize);
    let positive: Vec<u32> = (0..stakes.len() as u32)
        .filter(|&index| stakes.members()[index as usize].stake > 0)
        .collect();
    assert!(!positive.is_empty());
    if positive.len() == 1 {
        out.extend((0..turns).map(|_| I::from_index(positive[0])));
        return;
    }

    let total = u128::from(stakes.total());
    // B = (2k − 3) / (2k − 2); windows are computed with numerators over `stake · q`.
    let q = 2 * positive.len() as u128 - 2;
    // Turn numbers run 1..=turns; `horizon` is the catch-all bucket for deadlines (and
    // the sentinel for releases) beyond the epoch.
    let horizon = turns + 1;
    let bucket_count = horizon as usize + 1;
    let mut released = Buckets::new(bucket_count);
    let mut due = Buckets::new(bucket_count);
    let mut occupancy = Occupancy::new(bucket_count);
    let mut next = vec![NIL; stakes.len()];
    let mut pending: Vec<Option<Pending>> = vec![None; stakes.len()];

    for &member in &positive {
        let stake = u128::from(stakes.members()[member as usize].stake);
        let denominator = stake * q;
        let state = Pending {
            // Job 0: release numerator (0·q + 1)·W, deadline numerator (0·q + q − 1)·W.
            release: Fraction::new(total, denominator),
            deadline: Fraction::new((q - 1) * total, denominator),
            denominator,
            step: Fraction::new(q * total, denominator),
            deadline_turn: 0,
        };
        let (release_turn, _) = state.window(horizon);
        pending[member as usize] = Some(state);
        if release_turn < horizon {
            released.push(&mut next, release_turn.max(1), member);
        }
    }

    let mut earliest_due = horizon;
    for turn in 1..=turns {
        // Jobs released at this turn become candidates, bucketed by deadline.
        while let Some(member) = released.pop(&next, turn) {
            let Some(state) = pending[member as usize].as_mut() else {
                unreachable!("member {member} was released without a pending turn");
            };
            let (_, deadline_turn) = state.window(horizon);
            state.deadline_turn = deadline_turn;
            due.push(&mut next, deadline_turn, member);
            occupancy.set(deadline_turn);
            earliest_due = earliest_due.min(deadline_turn);
        }

        // Tijdeman's theorem guarantees a released job whose deadline is not yet past.
        let bucket = occupancy.first_from(earliest_due);
        let Some(bucket) = bucket else {
            panic!("fair rotation found no eligible member at turn {turn}: invariant broken");
        };
        assert!(bucket >= turn, "fair rotation missed a deadline at turn {turn}");
        let Some(member) = due.pop(&next, bucket) else {
            unreachable!("occupied deadline bucket {bucket} was empty");
        };
        if due.is_empty(bucket) {
            occupancy.clear(bucket);
        }
        earliest_due = bucket;
        out.push(I::from_index(member));

        let Some(state) = pending[member as usize].as_mut() else {
            unreachable!("member {member} was chosen without a pending turn");
        };
        assert_eq!(state.deadline_turn, bucket);
        let step = state.step;
        state.release.advance(&step, state.denominator);
        state.deadline.advance(&step, state.denominator);
        let (release_turn, _) = state.window(horizon);
        // A member holds at most one turn per step; its next job waits for the next one.
        let release_turn = release_turn.max(turn + 1);
        if release_turn < horizon {
            released.push(&mut next, release_turn, member);
        }
    }
    assert_eq!(out.len(), turns as usize);
}
