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

/// The unsigned integer the window arithmetic runs in: `u64` when every member's
/// denominator `stake · (2k − 2)` fits and the total stake is below 2^62 (the usual case,
/// and faster), else `u128`.
trait Word:
    Copy
    + Ord
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    /// Narrows a value the caller has proven to fit.
    fn narrow(value: u128) -> Self;
    /// Adds two quotients. Quotients only matter up to the epoch's horizon (< 2^32); a
    /// member stops advancing once its release passes the horizon, so a quotient never
    /// exceeds `2^32 + 2·W + 2`, which fits `u64` when `W < 2^62`. `u128` saturates anyway.
    fn plus(self, other: Self) -> Self;
    /// The value as a turn number, clamped to `horizon`.
    fn turn(self, horizon: u32) -> u32;
    /// Quotient and remainder.
    fn div_rem(self, divisor: Self) -> (Self, Self);
    /// Wrapping addition and subtraction, for both arms of a branch-free select.
    fn wrapping_plus(self, other: Self) -> Self;
    fn wrapping_minus(self, other: Self) -> Self;
}

/// The parts of [`Word`] that are the same for every width.
macro_rules! word_common {
    ($int:ty) => {
        const ZERO: Self = 0;
        const ONE: Self = 1;
        #[inline]
        fn turn(self, horizon: u32) -> u32 {
            self.min(<$int>::from(horizon)) as u32
        }
        #[inline]
        fn wrapping_plus(self, other: Self) -> Self {
            self.wrapping_add(other)
        }
        #[inline]
        fn wrapping_minus(self, other: Self) -> Self {
            self.wrapping_sub(other)
        }
        #[inline]
        fn div_rem(self, divisor: Self) -> (Self, Self) {
            (self / divisor, self % divisor)
        }
    };
}

impl Word for u64 {
    word_common!(u64);
    #[inline]
    fn narrow(value: u128) -> Self {
        u64::try_from(value).expect("window arithmetic operand fits u64")
    }
    #[inline]
    fn plus(self, other: Self) -> Self {
        self + other
    }
}

impl Word for u128 {
    word_common!(u128);
    #[inline]
    fn narrow(value: u128) -> Self {
        value
    }
    #[inline]
    fn plus(self, other: Self) -> Self {
        self.saturating_add(other)
    }
}

/// A non-negative rational `quotient + remainder/denominator`.
#[derive(Clone, Copy, Debug)]
struct Fraction<T> {
    quotient: T,
    remainder: T,
}

impl<T: Word> Fraction<T> {
    /// Adds `step` (both with remainders below `denominator`).
    #[inline]
    fn advance(&mut self, step: &Fraction<T>, denominator: T) {
        // remainder + step.remainder may exceed the denominator once; compare before adding
        // so that the sum never overflows. The carry is a coin flip for the branch
        // predictor, so select both outcomes without branching.
        let room = denominator - step.remainder;
        let carry = self.remainder >= room;
        self.remainder = std::hint::select_unpredictable(
            carry,
            self.remainder.wrapping_minus(room),
            self.remainder.wrapping_plus(step.remainder),
        );
        let carried = self.quotient.plus(T::ONE);
        self.quotient =
            std::hint::select_unpredictable(carry, carried, self.quotient).plus(step.quotient);
    }

    /// `⌈self⌉`, clamped to `horizon`.
    #[inline]
    fn ceil_turn(&self, horizon: u32) -> u32 {
        let ceil =
            if self.remainder == T::ZERO { self.quotient } else { self.quotient.plus(T::ONE) };
        ceil.turn(horizon)
    }

    /// `⌊self⌋ + 1`, clamped to `horizon`.
    #[inline]
    fn floor_plus_one_turn(&self, horizon: u32) -> u32 {
        self.quotient.plus(T::ONE).turn(horizon)
    }
}

/// Per-member state: the window of its next turn.
#[derive(Clone, Copy, Debug)]
struct Pending<T> {
    /// `(c·q + 1)·W / (w·q)`: the job is released at its ceiling.
    release: Fraction<T>,
    /// `(c·q + q − 1)·W / (w·q)`: the job's deadline is its floor plus one.
    deadline: Fraction<T>,
    /// Both fractions grow by `W / w` per turn granted.
    step: Fraction<T>,
    /// Both fractions have this denominator: `w · q`.
    denominator: T,
}

impl<T: Word> Pending<T> {
    /// Job 0 of a member with stake `w`: release numerator `W`, deadline numerator
    /// `(q − 1)·W`, step `q·W`, all over `w·q` — computed in `T` without forming the
    /// large numerators: the step is `W/w` exactly, and the deadline is step − release.
    fn first_job(total: T, stake: T, q: T) -> Self {
        let denominator = stake * q;
        let (release_quotient, release_remainder) = T::div_rem(total, denominator);
        let (step_quotient, stake_remainder) = T::div_rem(total, stake);
        let step = Fraction { quotient: step_quotient, remainder: stake_remainder * q };
        let borrow = step.remainder < release_remainder;
        let deadline = Fraction {
            quotient: step.quotient - release_quotient - if borrow { T::ONE } else { T::ZERO },
            remainder: if borrow {
                // Below the denominator, so no intermediate overflows.
                denominator - release_remainder + step.remainder
            } else {
                step.remainder - release_remainder
            },
        };
        let release = Fraction { quotient: release_quotient, remainder: release_remainder };
        Self { release, deadline, step, denominator }
    }

    #[inline]
    fn advance(&mut self) {
        self.release.advance(&self.step, self.denominator);
        self.deadline.advance(&self.step, self.denominator);
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

    #[inline]
    fn push(&mut self, next: &mut [u32], bucket: u32, member: u32) {
        next[member as usize] = self.head[bucket as usize];
        self.head[bucket as usize] = member;
    }

    #[inline]
    fn pop(&mut self, next: &[u32], bucket: u32) -> Option<u32> {
        let member = self.head[bucket as usize];
        if member == NIL {
            return None;
        }
        self.head[bucket as usize] = next[member as usize];
        Some(member)
    }

    #[inline]
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

    #[inline]
    fn set(&mut self, bucket: u32) {
        self.words[bucket as usize / 64] |= 1 << (bucket % 64);
    }

    #[inline]
    fn clear(&mut self, bucket: u32) {
        self.words[bucket as usize / 64] &= !(1 << (bucket % 64));
    }

    /// The first occupied bucket at or after `from`.
    #[inline]
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

/// Candidates for the coming turns: jobs waiting for their release, bucketed by release
/// turn, and released jobs bucketed by deadline turn.
#[derive(Debug)]
struct Queues {
    released: Buckets,
    due: Buckets,
    occupancy: Occupancy,
    next: Vec<u32>,
    /// No occupied deadline bucket lies before this one.
    earliest_due: u32,
}

impl Queues {
    fn new(horizon: u32, member_count: usize) -> Self {
        let bucket_count = horizon as usize + 1;
        Self {
            released: Buckets::new(bucket_count),
            due: Buckets::new(bucket_count),
            occupancy: Occupancy::new(bucket_count),
            next: vec![NIL; member_count],
            earliest_due: horizon,
        }
    }

    #[inline]
    fn wait(&mut self, release_turn: u32, member: u32) {
        self.released.push(&mut self.next, release_turn, member);
    }

    #[inline]
    fn make_due(&mut self, deadline_turn: u32, member: u32) {
        self.due.push(&mut self.next, deadline_turn, member);
        self.occupancy.set(deadline_turn);
        self.earliest_due = self.earliest_due.min(deadline_turn);
    }

    #[inline]
    fn take_released(&mut self, turn: u32) -> Option<u32> {
        self.released.pop(&self.next, turn)
    }

    /// Removes and returns the released job with the earliest deadline, as
    /// (member, deadline turn).
    #[inline]
    fn take_earliest_due(&mut self) -> Option<(u32, u32)> {
        let bucket = self.occupancy.first_from(self.earliest_due)?;
        let member = self.due.pop(&self.next, bucket)?;
        if self.due.is_empty(bucket) {
            self.occupancy.clear(bucket);
        }
        self.earliest_due = bucket;
        Some((member, bucket))
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
    // B = (2k − 3) / (2k − 2) = 1 − 1/q with q = 2k − 2.
    let q = 2 * positive.len() as u128 - 2;
    let stake_max = stakes.members().iter().map(|member| member.stake).max().unwrap_or(0);
    if u128::from(stake_max) * q <= u128::from(u64::MAX) && stakes.total() < 1 << 62 {
        fill_with::<u64, I>(stakes, &positive, q, turns, out);
    } else {
        fill_with::<u128, I>(stakes, &positive, q, turns, out);
    }
    assert_eq!(out.len(), turns as usize);
}

fn fill_with<T: Word, I: TurnIndex>(
    stakes: &Stakes,
    positive: &[u32],
    q: u128,
    turns: u32,
    out: &mut Vec<I>,
) {
    let total = u128::from(stakes.total());
    // Turn numbers run 1..=turns; `horizon` is the catch-all bucket for deadlines (and
    // the sentinel for releases) beyond the epoch.
    let horizon = turns + 1;
    let mut queues = Queues::new(horizon, stakes.len());
    let mut pending: Vec<Pending<T>> = Vec::with_capacity(stakes.len());
    let q_word = T::narrow(q);
    let total_word = T::narrow(total);
    for member in stakes.members() {
        // Zero-stake members keep a placeholder that is never queued.
        let stake = T::narrow(u128::from(member.stake.max(1)));
        pending.push(Pending::first_job(total_word, stake, q_word));
    }
    for &member in positive {
        let release_turn = pending[member as usize].release.ceil_turn(horizon);
        assert!(release_turn >= 1);
        if release_turn < horizon {
            queues.wait(release_turn, member);
        }
    }

    for turn in 1..=turns {
        while let Some(member) = queues.take_released(turn) {
            let deadline_turn = pending[member as usize].deadline.floor_plus_one_turn(horizon);
            queues.make_due(deadline_turn, member);
        }
        // Tijdeman's theorem guarantees a released job whose deadline is not yet past.
        let Some((member, deadline_turn)) = queues.take_earliest_due() else {
            panic!("fair rotation found no eligible member at turn {turn}: invariant broken");
        };
        assert!(deadline_turn >= turn, "fair rotation missed a deadline at turn {turn}");
        out.push(I::from_index(member));

        let state = &mut pending[member as usize];
        state.advance();
        // A member holds at most one turn per step; its next job waits for the next one.
        let release_turn = state.release.ceil_turn(horizon).max(turn + 1);
        if release_turn == turn + 1 {
            // Released at the very next turn: skip the waiting list.
            queues.make_due(state.deadline.floor_plus_one_turn(horizon), member);
        } else if release_turn < horizon {
            queues.wait(release_turn, member);
        }
    }
}
