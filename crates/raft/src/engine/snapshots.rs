//! Snapshot decisions: when this member snapshots its state machine, and when it asks the
//! leader for a snapshot. The loop does the work (clones the state, a thread encodes and
//! syncs it, the log is compacted once it is durable); this says when.
//!
//! A snapshot encodes the whole state (with its history until compacted), so taking one
//! every fixed number of entries would cost more per write as the state grows, without
//! bound. A snapshot is due once `snapshot_entries` were applied since the last one *and*
//! the log since then is at least as many bytes as that snapshot: encoding stays at about
//! one byte per byte written, and a restart still replays at most a snapshot's worth of
//! log (as Redis rewrites its AOF at 100% growth). Members snapshot at different
//! intervals (by id), so they do not all pause at the same index. raft-rs's own request (a
//! follower needs a snapshot newer than the last) makes one due at once.

use std::time::{Duration, Instant};

/// When snapshots are taken and asked for.
#[derive(Clone, Debug)]
pub struct Snapshots {
    /// Entries between snapshots for this member (staggered by id).
    interval: u64,
    /// The shortest time between two requests for a snapshot to the leader.
    ask_every: Duration,
    /// The index of the latest snapshot (taken, installed or restored at start).
    last_index: u64,
    /// Its encoded size (0: none).
    last_bytes: u64,
    /// Bytes of entries applied since the latest snapshot began.
    bytes_since: u64,
    asked_at: Option<Instant>,
}

impl Snapshots {
    /// The policy of `member`: a snapshot every `snapshot_entries` entries (+1/8 per id
    /// mod 4), at most one request to the leader per `ask_every`, starting from the
    /// snapshot the member restored (`index` and encoded `bytes`; 0 and 0 for none).
    pub fn new(
        member: u64,
        snapshot_entries: u64,
        ask_every: Duration,
        index: u64,
        bytes: u64,
    ) -> Self {
        Self {
            interval: snapshot_entries + snapshot_entries * (member % 4) / 8,
            ask_every,
            last_index: index,
            last_bytes: bytes,
            bytes_since: 0,
            asked_at: None,
        }
    }

    /// The index of the latest snapshot.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// An entry of `bytes` was applied.
    pub fn applied(&mut self, bytes: u64) {
        self.bytes_since += bytes;
    }

    /// Whether to snapshot now, at the `applied` index, with raft-rs asking for a
    /// snapshot at `wanted` (if it does).
    pub fn due(&self, applied: u64, wanted: Option<u64>) -> bool {
        if applied == 0 || applied == self.last_index {
            return false;
        }
        let grown =
            applied >= self.last_index + self.interval && self.bytes_since >= self.last_bytes;
        grown || wanted.is_some_and(|index| index > self.last_index)
    }

    /// A snapshot began: the log since counts from here.
    pub fn started(&mut self) {
        self.bytes_since = 0;
    }

    /// The snapshot at `index`, `bytes` encoded, is durable.
    pub fn taken(&mut self, index: u64, bytes: u64) {
        self.last_index = index;
        self.last_bytes = bytes;
    }

    /// The leader's snapshot at `index`, `bytes` encoded, replaced the state.
    pub fn installed(&mut self, index: u64, bytes: u64) {
        self.taken(index, bytes);
        self.bytes_since = 0;
    }

    /// Whether to ask the leader for a snapshot now (the log lacks entries it counted):
    /// at most once per `ask_every`, so a leader that is slow to send one is not asked
    /// on every heartbeat.
    pub fn ask(&mut self, now: Instant) -> bool {
        if self.asked_at.is_some_and(|at| now < at + self.ask_every) {
            return false;
        }
        self.asked_at = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRIES: u64 = 800;

    fn policy(member: u64) -> Snapshots {
        Snapshots::new(member, ENTRIES, Duration::from_secs(1), 0, 0)
    }

    #[test]
    fn members_snapshot_at_intervals_staggered_by_id() {
        // +1/8 of the interval per id mod 4: 800, 900, 1000, 1100, then 800 again.
        for (member, interval) in [(4, 800), (1, 900), (2, 1000), (3, 1100), (5, 900)] {
            let snapshots = policy(member);
            assert!(!snapshots.due(interval - 1, None), "member {member} before {interval}");
            assert!(snapshots.due(interval, None), "member {member} at {interval}");
        }
    }

    #[test]
    fn a_snapshot_waits_until_the_log_since_is_as_large_as_the_last_one() {
        let mut snapshots = Snapshots::new(4, ENTRIES, Duration::from_secs(1), 1_000, 50_000);
        for _ in 0..ENTRIES {
            snapshots.applied(60);
        }
        // 800 entries of 60 bytes: 48,000 bytes, less than the 50,000 of the last one.
        assert!(!snapshots.due(1_800, None));
        snapshots.applied(2_000);
        assert!(snapshots.due(1_801, None));
        // Taken: the count starts again from the new one.
        snapshots.started();
        snapshots.taken(1_801, 70_000);
        assert_eq!(snapshots.last_index(), 1_801);
        snapshots.applied(69_999);
        assert!(!snapshots.due(1_801 + ENTRIES, None));
        snapshots.applied(1);
        assert!(snapshots.due(1_801 + ENTRIES, None));
    }

    #[test]
    fn raft_asking_for_a_newer_snapshot_makes_one_due_at_once() {
        let snapshots = Snapshots::new(4, ENTRIES, Duration::from_secs(1), 100, 10);
        assert!(snapshots.due(150, Some(150)));
        assert!(!snapshots.due(150, Some(100)), "the latest snapshot already covers it");
        assert!(!snapshots.due(100, Some(150)), "nothing applied since the latest");
        assert!(!policy(4).due(0, Some(5)), "nothing applied at all");
    }

    #[test]
    fn an_installed_snapshot_restarts_the_count() {
        let mut snapshots = policy(4);
        snapshots.applied(1_000_000);
        snapshots.installed(5_000, 2_000);
        assert_eq!(snapshots.last_index(), 5_000);
        assert!(!snapshots.due(5_000 + ENTRIES, None), "no log applied since the install");
        snapshots.applied(2_000);
        assert!(snapshots.due(5_000 + ENTRIES, None));
    }

    #[test]
    fn the_leader_is_asked_for_a_snapshot_at_most_once_per_interval() {
        let (mut snapshots, t0) = (policy(1), Instant::now());
        assert!(snapshots.ask(t0));
        assert!(!snapshots.ask(t0 + Duration::from_millis(999)));
        assert!(snapshots.ask(t0 + Duration::from_secs(1)));
        assert!(!snapshots.ask(t0 + Duration::from_millis(1_500)));
    }
}
