//! Linearizability of one key's history: a search for an order of the operations that
//! respects real time and the register's semantics (Wing and Gong's algorithm with
//! Lowe's memoization of visited states, as Porcupine does it).
//!
//! An operation whose outcome the client never learned (timed out, member crashed) may
//! have taken effect at any point after its call, or not at all: it has no return, so the
//! search may place it anywhere after its call, including after everything else.

use std::collections::HashSet;

use crate::world::clock::Nanos;

/// What one key holds: a value (by its id; every put writes a value no other put wrote)
/// and its version (puts since creation), or nothing.
pub type Register = Option<(u32, u32)>;

/// An operation on the key, with what the client saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOp {
    /// Put a value; always succeeds.
    Put(u32),
    /// Delete; `Some(deleted)` when the client saw how many keys went.
    Delete(Option<bool>),
    /// A linearizable read and what it returned.
    Get(Register),
    /// Put `value` if the key holds `expect` (`None`: absent); `Some(succeeded)` when known.
    CompareAndPut {
        /// The value expected.
        expect: Option<u32>,
        /// The value to put.
        value: u32,
        /// Whether the client saw it succeed.
        succeeded: Option<bool>,
    },
}

impl KeyOp {
    /// Applies the operation to `state`: the state after, or `None` if what the client
    /// saw contradicts `state`.
    fn step(&self, state: Register) -> Option<Register> {
        let put = |value: u32| Some((value, state.map_or(1, |(_, version)| version + 1)));
        match *self {
            Self::Put(value) => Some(put(value)),
            Self::Delete(deleted) => {
                (deleted.is_none() || deleted == Some(state.is_some())).then_some(None)
            }
            Self::Get(seen) => (seen == state).then_some(state),
            Self::CompareAndPut { expect, value, succeeded } => {
                let holds = state.map(|(current, _)| current) == expect;
                match succeeded {
                    Some(seen) if seen != holds => None,
                    _ if holds => Some(put(value)),
                    _ => Some(state),
                }
            }
        }
    }
}

/// One operation of the history.
#[derive(Clone, Debug)]
pub struct Timed {
    /// The operation and its result.
    pub op: KeyOp,
    /// When the client called.
    pub call: Nanos,
    /// When it got the answer; `None` if it never learned the outcome.
    pub ret: Option<Nanos>,
}

/// The verdict on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order explains every result.
    Linearizable,
    /// None does; the longest prefix found explains this many operations, and
    /// `stuck` is the operation (index into the history) none of the orders could place.
    Violation {
        /// Operations placed in the longest explained prefix.
        placed: usize,
        /// An operation that could not be placed next.
        stuck: usize,
    },
    /// The search gave up after its step budget.
    Undecided,
}

/// Most search steps per key before the checker gives up (a verdict `Undecided`); the
/// memo of visited states grows by at most one entry (24 bytes) per step.
pub const STEP_BUDGET: u64 = 4_000_000;

/// Checks one key's history, starting from an absent key.
pub fn check(history: &[Timed]) -> Verdict {
    Search::new(history).run()
}

/// The events list: calls and returns in time order, linked so that placed operations
/// can be lifted out and put back.
struct Search<'a> {
    history: &'a [Timed],
    /// Event `e` is op `e / 2`'s call (even) or return (odd); `EVENTS` is the head.
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl<'a> Search<'a> {
    fn new(history: &'a [Timed]) -> Self {
        let mut events: Vec<(Nanos, bool, usize)> = Vec::with_capacity(history.len() * 2);
        for (index, timed) in history.iter().enumerate() {
            events.push((timed.call, false, 2 * index));
            // An unknown outcome returns after everything.
            events.push((timed.ret.unwrap_or(Nanos::MAX), true, 2 * index + 1));
        }
        // At equal times calls come first: the operations overlap (the lenient reading).
        events.sort_unstable();
        let head = history.len() * 2;
        let mut next = vec![usize::MAX; head + 1];
        let mut prev = vec![usize::MAX; head + 1];
        let mut last = head;
        for &(_, _, event) in &events {
            next[last] = event;
            prev[event] = last;
            last = event;
        }
        Self { history, next, prev }
    }

    fn head(&self) -> usize {
        self.history.len() * 2
    }

    fn lift(&mut self, op: usize) {
        for event in [2 * op, 2 * op + 1] {
            let (p, n) = (self.prev[event], self.next[event]);
            self.next[p] = n;
            if n != usize::MAX {
                self.prev[n] = p;
            }
        }
    }

    fn unlift(&mut self, op: usize) {
        for event in [2 * op + 1, 2 * op] {
            let (p, n) = (self.prev[event], self.next[event]);
            self.next[p] = event;
            if n != usize::MAX {
                self.prev[n] = event;
            }
        }
    }

    fn run(mut self) -> Verdict {
        // The set of placed operations, as the XOR of a random 128-bit key per operation
        // (Zobrist hashing): updated in O(1), and a collision is a 2^-128 chance.
        let keys: Vec<u128> = {
            let mut draws = worknode_raft::draws::Draws::new(self.history.len() as u64);
            (0..self.history.len())
                .map(|_| (u128::from(draws.next_u64()) << 64) | u128::from(draws.next_u64()))
                .collect()
        };
        let mut placed = 0u128;
        let mut seen: HashSet<(u128, Register)> = HashSet::new();
        let mut stack: Vec<(usize, Register)> = Vec::new();
        let mut state: Register = None;
        let mut event = self.next[self.head()];
        let (mut best, mut stuck) = (0, 0);
        let mut steps = 0u64;
        while self.next[self.head()] != usize::MAX {
            steps += 1;
            if steps > STEP_BUDGET {
                return Verdict::Undecided;
            }
            let op = event / 2;
            if event.is_multiple_of(2) {
                if let Some(after) = self.history[op].op.step(state) {
                    if seen.insert((placed ^ keys[op], after)) {
                        placed ^= keys[op];
                        stack.push((op, state));
                        state = after;
                        self.lift(op);
                        event = self.next[self.head()];
                        continue;
                    }
                }
                event = self.next[event];
            } else {
                // A return before its call was placed: some earlier choice was wrong.
                if stack.len() >= best {
                    (best, stuck) = (stack.len(), op);
                }
                let Some((undone, before)) = stack.pop() else {
                    return Verdict::Violation { placed: best, stuck };
                };
                placed ^= keys[undone];
                state = before;
                self.unlift(undone);
                event = self.next[2 * undone];
            }
        }
        Verdict::Linearizable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: KeyOp, call: Nanos, ret: Nanos) -> Timed {
        Timed { op, call, ret: Some(ret) }
    }

    #[test]
    fn sequential_puts_and_reads_are_linearizable() {
        let history = [
            op(KeyOp::Put(1), 0, 10),
            op(KeyOp::Get(Some((1, 1))), 11, 20),
            op(KeyOp::Put(2), 21, 30),
            op(KeyOp::Get(Some((2, 2))), 31, 40),
            op(KeyOp::Delete(Some(true)), 41, 50),
            op(KeyOp::Get(None), 51, 60),
        ];
        assert_eq!(check(&history), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_put_is_a_violation() {
        let history = [
            op(KeyOp::Put(1), 0, 10),
            op(KeyOp::Put(2), 11, 20),
            op(KeyOp::Get(Some((1, 1))), 21, 30),
        ];
        assert!(matches!(check(&history), Verdict::Violation { stuck: 2, .. }));
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let history = [
            op(KeyOp::Put(1), 0, 100),
            op(KeyOp::Put(2), 10, 90),
            op(KeyOp::Get(Some((1, 2))), 95, 120),
        ];
        assert_eq!(check(&history), Verdict::Linearizable);
    }

    #[test]
    fn an_unknown_outcome_may_or_may_not_have_happened() {
        let lost = Timed { op: KeyOp::Put(1), call: 0, ret: None };
        let read_absent = [lost.clone(), op(KeyOp::Get(None), 10, 20)];
        assert_eq!(check(&read_absent), Verdict::Linearizable);
        let read_present = [lost, op(KeyOp::Get(Some((1, 1))), 10, 20)];
        assert_eq!(check(&read_present), Verdict::Linearizable);
    }

    #[test]
    fn a_put_applied_twice_shows_in_the_version() {
        let history = [op(KeyOp::Put(1), 0, 10), op(KeyOp::Get(Some((1, 2))), 11, 20)];
        assert!(matches!(check(&history), Verdict::Violation { .. }));
    }

    #[test]
    fn compare_and_put_follows_the_value() {
        let history = [
            op(KeyOp::Put(1), 0, 10),
            op(KeyOp::CompareAndPut { expect: Some(1), value: 2, succeeded: Some(true) }, 11, 20),
            op(KeyOp::CompareAndPut { expect: Some(1), value: 3, succeeded: Some(false) }, 21, 30),
            op(KeyOp::Get(Some((2, 2))), 31, 40),
        ];
        assert_eq!(check(&history), Verdict::Linearizable);
        let wrong = [
            op(KeyOp::Put(1), 0, 10),
            op(KeyOp::CompareAndPut { expect: Some(1), value: 2, succeeded: Some(false) }, 11, 20),
        ];
        assert!(matches!(check(&wrong), Verdict::Violation { .. }));
    }
}
