//! When leases expire: every member's own clock, the leader's decision.
//!
//! A lease's TTL starts again each time a member applies its grant or a keep-alive (both
//! travel through the log), so every member — not only the leader — knows how long each
//! lease has left, by its own monotonic clock. The leader revokes an expired lease
//! through the log; whoever leads next has been counting all along. So a leader change,
//! however frequent, never extends a lease: it expires between its TTL and its TTL plus
//! the time to elect a leader after its last keep-alive (a follower applies an entry at
//! most a heartbeat after the leader does, which only delays it). etcd instead restarts
//! every lease's TTL at each leader change, so under rotation its leases would never
//! expire.
//!
//! What a member cannot know is time that passed while it was not running, or before a
//! snapshot it installed: those leases count their whole TTL from when it learned of
//! them (as etcd does for every lease at every leader change).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::FixedHasher;

/// Stale queue entries tolerated before a rebuild, besides one per lease.
const QUEUE_SLACK: usize = 1024;

/// A lease as this member counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counted {
    deadline: Instant,
    ttl: Duration,
    /// When this member, leading, last proposed its revoke.
    revoke_proposed: Option<Instant>,
}

/// The leases' deadlines on this member's clock.
#[derive(Debug, Default)]
pub struct Leases {
    counted: HashMap<i64, Counted, FixedHasher>,
    /// Deadlines in order; an entry whose lease moved on since is skipped when it comes up.
    queue: BinaryHeap<Reverse<(Instant, i64)>>,
}

impl Leases {
    /// Lease `id` was granted or kept alive for `ttl`, as of `now`.
    pub fn renewed(&mut self, id: i64, ttl: Duration, now: Instant) {
        let deadline = now + ttl;
        self.counted.insert(id, Counted { deadline, ttl, revoke_proposed: None });
        self.queue.push(Reverse((deadline, id)));
        // Only a leader takes entries off the queue; a follower, which may never lead,
        // rebuilds it from the deadlines once stale entries outnumber live ones, so
        // keep-alives cost it no memory over time.
        if self.queue.len() > 2 * self.counted.len() + QUEUE_SLACK {
            self.queue =
                self.counted.iter().map(|(id, counted)| Reverse((counted.deadline, *id))).collect();
        }
    }

    /// Lease `id` is gone.
    pub fn revoked(&mut self, id: i64) {
        self.counted.remove(&id);
    }

    /// The state machine was replaced (a restart, a snapshot): `leases` count their whole
    /// TTL from `now`.
    pub fn restored(&mut self, leases: impl IntoIterator<Item = (i64, Duration)>, now: Instant) {
        self.counted.clear();
        self.queue.clear();
        for (id, ttl) in leases {
            self.renewed(id, ttl, now);
        }
    }

    /// What is left of lease `id` at `now` (zero once due), and its TTL.
    pub fn remaining(&self, id: i64, now: Instant) -> Option<(Duration, Duration)> {
        self.counted.get(&id).map(|c| (c.deadline.saturating_duration_since(now), c.ttl))
    }

    /// The leases a leader revokes at `now`: due, and not proposed for revoking within the
    /// last `retry` (a revoke raft-rs dropped, during a handoff, is proposed again then).
    /// At most `max` at once, the earliest first, so a mass expiry is spread over turns.
    pub fn due(&mut self, now: Instant, retry: Duration, max: usize) -> Vec<i64> {
        let mut due = Vec::new();
        while due.len() < max {
            let Some(Reverse((at, id))) = self.queue.peek().copied() else { break };
            if at > now {
                break;
            }
            self.queue.pop();
            let Some(counted) = self.counted.get_mut(&id) else { continue };
            if counted.deadline > now {
                continue; // renewed since this entry was queued
            }
            let asked_lately =
                counted.revoke_proposed.is_some_and(|asked| now.duration_since(asked) < retry);
            if !asked_lately {
                counted.revoke_proposed = Some(now);
                due.push(id);
            }
            let next = counted.revoke_proposed.map_or(now, |asked| asked + retry);
            self.queue.push(Reverse((next.max(now + Duration::from_nanos(1)), id)));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const RETRY: Duration = Duration::from_millis(500);

    #[test]
    fn a_lease_is_due_its_ttl_after_its_last_renewal() {
        let start = Instant::now();
        let mut leases = Leases::default();
        leases.renewed(7, 2 * SECOND, start);
        leases.renewed(7, 2 * SECOND, start + SECOND);
        assert_eq!(leases.due(start + 2 * SECOND, RETRY, 10), Vec::<i64>::new());
        assert_eq!(leases.remaining(7, start + 2 * SECOND), Some((SECOND, 2 * SECOND)));
        assert_eq!(leases.due(start + 3 * SECOND, RETRY, 10), vec![7]);
    }

    #[test]
    fn a_revoke_is_proposed_again_only_after_the_retry_interval() {
        let start = Instant::now();
        let mut leases = Leases::default();
        leases.renewed(1, SECOND, start);
        assert_eq!(leases.due(start + SECOND, RETRY, 10), vec![1]);
        assert!(leases.due(start + SECOND + RETRY / 2, RETRY, 10).is_empty());
        assert_eq!(leases.due(start + SECOND + RETRY, RETRY, 10), vec![1]);
        leases.revoked(1);
        assert!(leases.due(start + 10 * SECOND, RETRY, 10).is_empty());
    }

    #[test]
    fn a_mass_expiry_goes_out_earliest_first_in_bounded_rounds() {
        let start = Instant::now();
        let mut leases = Leases::default();
        for id in (1..=5).rev() {
            leases.renewed(id, SECOND + Duration::from_millis(id as u64), start);
        }
        let now = start + 2 * SECOND;
        assert_eq!(leases.due(now, RETRY, 2), vec![1, 2]);
        assert_eq!(leases.due(now, RETRY, 2), vec![3, 4]);
        assert_eq!(leases.due(now, RETRY, 2), vec![5]);
    }

    #[test]
    fn a_follower_kept_alive_for_long_holds_a_bounded_queue() {
        let start = Instant::now();
        let mut leases = Leases::default();
        for round in 0..100_000u64 {
            let id = (round % 10) as i64;
            leases.renewed(id, 5 * SECOND, start + Duration::from_millis(round));
        }
        assert!(leases.queue.len() <= 2 * 10 + QUEUE_SLACK + 1, "{}", leases.queue.len());
        // Leading later, it revokes what is due and nothing else.
        let last = start + Duration::from_millis(99_999);
        assert!(leases.due(last + 4 * SECOND, RETRY, 100).is_empty());
        let mut due = leases.due(last + 5 * SECOND, RETRY, 100);
        due.sort_unstable();
        assert_eq!(due, (0..10).collect::<Vec<i64>>());
    }

    #[test]
    fn restored_leases_count_their_whole_ttl_from_then() {
        let start = Instant::now();
        let mut leases = Leases::default();
        leases.renewed(1, SECOND, start);
        leases.restored([(2, 3 * SECOND)], start + SECOND);
        assert_eq!(leases.remaining(1, start + SECOND), None);
        assert!(leases.due(start + 3 * SECOND, RETRY, 10).is_empty());
        assert_eq!(leases.due(start + 4 * SECOND, RETRY, 10), vec![2]);
    }
}
