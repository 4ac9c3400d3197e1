//! Simulated time: one timeline for the whole cluster, in nanoseconds, and a clock per
//! member that reads it through the member's own cursor (a member busy with a slow sync
//! is ahead of the cluster's now) and, for wall time, its own offset (skew and jumps).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use worknode_raft::Clock;

/// Simulated nanoseconds since the run began.
pub type Nanos = u64;

/// One millisecond of simulated time.
pub const MS: Nanos = 1_000_000;
/// One second of simulated time.
pub const SECOND: Nanos = 1_000 * MS;

/// Wall time when every run begins: fixed, so the slot clock, the schedule and therefore
/// the trace are the same in every run of a seed.
pub const WALL_START_UNIX_NS: u64 = 1_800_000_000 * 1_000_000_000;

/// A member's view of time. `cursor` is where the member is on the timeline (the world
/// sets it before each turn; a sync moves it on); `wall_offset` is how far its wall clock
/// is from the true one.
#[derive(Clone, Debug)]
pub struct SimClock {
    base: Instant,
    cursor: Arc<AtomicU64>,
    wall_offset: Arc<AtomicI64>,
}

impl SimClock {
    /// A clock reading `cursor` from `base`, with `wall_offset` nanoseconds of skew.
    pub fn new(base: Instant, cursor: Arc<AtomicU64>, wall_offset: Arc<AtomicI64>) -> Self {
        Self { base, cursor, wall_offset }
    }

    /// The member's cursor.
    pub fn cursor(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.cursor)
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.cursor.load(Ordering::Relaxed))
    }

    fn unix_ns(&self) -> u64 {
        let true_ns = WALL_START_UNIX_NS + self.cursor.load(Ordering::Relaxed);
        true_ns.saturating_add_signed(self.wall_offset.load(Ordering::Relaxed))
    }
}

/// The simulated time of `instant` on a timeline that began at `base`.
pub fn nanos_since(base: Instant, instant: Instant) -> Nanos {
    instant.saturating_duration_since(base).as_nanos() as Nanos
}
