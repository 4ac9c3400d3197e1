//! Members' wall clocks measured against each other, from timestamps on the frames they
//! already exchange (a heartbeat and its answer at least every heartbeat interval).
//!
//! Every [`STAMP_EVERY`] a member stamps a frame to each peer with its wall clock, and
//! echoes the last stamp it received from that peer with the time it arrived — NTP's
//! exchange, on traffic that flows anyway. When A's stamp `t1` reaches B at `t2` and B's
//! next stamp, sent at `t3`, echoes both and reaches A at `t4`:
//!
//! ```text
//! B − A = ((t2 − t1) + (t3 − t4)) / 2        round trip = (t4 − t1) − (t3 − t2)
//! ```
//!
//! Each exchange is a sample in its own right (all four times from one moment of both
//! clocks), so a clock that jumps shows in the next sample. Of the last [`SAMPLES`],
//! the one with the shortest round trip is kept: its error is at most half the round
//! trip (the two directions' delays differing), microseconds on a LAN; frames that
//! queued (behind a snapshot, a busy loop) are passed over. The slot clock runs on wall
//! time, so these estimates let members follow one clock (the leader's) and notice one
//! that drifted beyond the bound.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a member stamps a frame to each peer.
pub const STAMP_EVERY: Duration = Duration::from_millis(50);
/// Exchanges kept per peer, the newest.
pub const SAMPLES: usize = 8;
/// A sample older than this is dropped: with no fresh exchange there is no estimate.
pub const STALE: Duration = Duration::from_secs(4);

/// A peer's clock against this member's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOffset {
    /// The peer's wall clock minus this member's, in nanoseconds.
    pub offset_ns: i64,
    /// The round trip of the exchange it comes from (the estimate's error is below half
    /// of it).
    pub round_trip_ns: i64,
}

/// What a stamp echoes: the last stamp received from the receiver and when it arrived
/// (both in nanoseconds since the UNIX epoch, the first on the receiver's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echo {
    /// The receiver's stamp.
    pub sent_unix_ns: u64,
    /// When it arrived here, by this member's clock.
    pub received_unix_ns: u64,
}

#[derive(Clone, Debug, Default)]
struct Peer {
    /// The last stamp from the peer, to echo.
    last: Option<Echo>,
    /// Exchanges completed, the newest last, with when.
    samples: VecDeque<(ClockOffset, Instant)>,
}

/// When each peer's frames were last stamped: a transport stamps one frame per peer every
/// [`STAMP_EVERY`].
#[derive(Clone, Debug, Default)]
pub struct Stamps(HashMap<u64, Instant>);

impl Stamps {
    /// Whether the next frame to `peer` carries a stamp; if so, it is recorded as sent.
    pub fn due(&mut self, peer: u64, now: Instant) -> bool {
        let due =
            self.0.get(&peer).is_none_or(|at| now.saturating_duration_since(*at) >= STAMP_EVERY);
        if due {
            self.0.insert(peer, now);
        }
        due
    }
}

/// Every peer's clock estimate; shared by the transport (which records and stamps) and the
/// Raft loop (which reads).
#[derive(Debug, Default)]
pub struct ClockOffsets {
    peers: HashMap<u64, Peer>,
}

/// [`ClockOffsets`] behind a lock, as the transport and the loop share it.
pub type SharedClockOffsets = Arc<Mutex<ClockOffsets>>;

impl ClockOffsets {
    /// Locks a shared set (a poisoned lock still holds valid estimates).
    pub fn lock(shared: &SharedClockOffsets) -> std::sync::MutexGuard<'_, Self> {
        shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A stamp from `peer` arrived at `received_unix_ns` (this member's wall clock): sent
    /// at `sent_unix_ns` (the peer's), echoing this member's earlier stamp if it had one.
    pub fn received(
        &mut self,
        peer: u64,
        sent_unix_ns: u64,
        received_unix_ns: u64,
        echo: Option<Echo>,
        now: Instant,
    ) {
        let entry = self.peers.entry(peer).or_default();
        entry.last = Some(Echo { sent_unix_ns, received_unix_ns });
        let Some(echo) = echo else {
            return;
        };
        let [t1, t2, t3, t4] =
            [echo.sent_unix_ns, echo.received_unix_ns, sent_unix_ns, received_unix_ns]
                .map(i128::from);
        let round_trip = (t4 - t1) - (t3 - t2);
        if round_trip < 0 {
            // A clock moved during the exchange: nothing to learn from it.
            return;
        }
        let offset = ((t2 - t1) + (t3 - t4)) / 2;
        let clamp = |value: i128| value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        let sample = ClockOffset { offset_ns: clamp(offset), round_trip_ns: clamp(round_trip) };
        if entry.samples.len() == SAMPLES {
            entry.samples.pop_front();
        }
        entry.samples.push_back((sample, now));
    }

    /// What a stamp to `peer` echoes: the last stamp from it.
    pub fn echo(&self, peer: u64) -> Option<Echo> {
        self.peers.get(&peer)?.last
    }

    /// `peer`'s clock against this member's: the fresh exchange with the shortest round
    /// trip.
    pub fn offset(&self, peer: u64, now: Instant) -> Option<ClockOffset> {
        self.peers
            .get(&peer)?
            .samples
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(*at) < STALE)
            .map(|(sample, _)| *sample)
            .min_by_key(|sample| sample.round_trip_ns)
    }

    /// When the oldest exchange kept for `peer` completed.
    pub fn oldest_sample(&self, peer: u64) -> Option<Instant> {
        self.peers.get(&peer)?.samples.front().map(|(_, at)| *at)
    }

    /// Every peer with an estimate, by id.
    pub fn all(&self, now: Instant) -> Vec<(u64, ClockOffset)> {
        let mut all: Vec<(u64, ClockOffset)> =
            self.peers.keys().filter_map(|&peer| Some((peer, self.offset(peer, now)?))).collect();
        all.sort_by_key(|(peer, _)| *peer);
        all
    }
}

/// The members whose clocks are more than `bound_ns` from the median of all known clocks
/// (this member's at 0, each peer's at its offset): with a majority agreeing, the one
/// that drifted is named, whoever measures. With two clocks known the median is the
/// later one, so a follower that sees only its leader names the pair's earlier clock;
/// the leader, which measures every member, names the right one.
pub fn beyond_bound(me: u64, offsets: &[(u64, ClockOffset)], bound_ns: i64) -> Vec<(u64, i64)> {
    let mut clocks: Vec<(u64, i64)> =
        offsets.iter().map(|(peer, o)| (*peer, o.offset_ns)).collect();
    clocks.push((me, 0));
    let mut values: Vec<i64> = clocks.iter().map(|(_, at)| *at).collect();
    values.sort_unstable();
    let median = values[values.len() / 2];
    let mut off: Vec<(u64, i64)> = clocks
        .into_iter()
        .map(|(member, at)| (member, at.saturating_sub(median)))
        .filter(|(_, from_median)| from_median.unsigned_abs() > bound_ns.unsigned_abs())
        .collect();
    off.sort_unstable();
    off
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Two members exchanging stamped frames every 50 ms for `rounds` rounds: B's wall
    /// clock `skew` ahead of A's, the delays A→B and B→A as given.
    fn exchange(
        skew: i64,
        delay_ab: u64,
        delay_ba: u64,
        rounds: u32,
    ) -> (ClockOffsets, ClockOffsets) {
        let (mut a, mut b) = (ClockOffsets::default(), ClockOffsets::default());
        let start = Instant::now();
        let at = |t: u64| start + Duration::from_nanos(t);
        let a_wall = |t: u64| 1_000_000 * MS + t;
        let b_wall = |t: u64| (1_000_000 * MS + t).saturating_add_signed(skew);
        for round in 0..rounds {
            let t = u64::from(round) * 50 * MS;
            let echo = a.echo(2);
            b.received(1, a_wall(t), b_wall(t + delay_ab), echo, at(t + delay_ab));
            let t = t + 10 * MS;
            let echo = b.echo(1);
            a.received(2, b_wall(t), a_wall(t + delay_ba), echo, at(t + delay_ba));
        }
        (a, b)
    }

    #[test]
    fn symmetric_delays_give_the_skew_and_the_round_trip() {
        let (a, b) = exchange(150 * MS as i64, 200_000, 200_000, 20);
        let now = Instant::now() + Duration::from_secs(1);
        let seen_by_a = a.offset(2, now).unwrap();
        assert_eq!(seen_by_a.offset_ns, 150 * MS as i64);
        assert_eq!(seen_by_a.round_trip_ns, 400_000);
        assert_eq!(b.offset(1, now).unwrap().offset_ns, -(150 * MS as i64));
    }

    #[test]
    fn asymmetric_delays_err_by_half_their_difference_and_queueing_is_passed_over() {
        let (mut a, _) = exchange(-2_000 * MS as i64, 100_000, 500_000, 20);
        let now = Instant::now() + Duration::from_secs(1);
        let seen = a.offset(2, now).unwrap();
        assert_eq!(seen.offset_ns, -2_000 * MS as i64 - 200_000);
        assert_eq!(seen.round_trip_ns, 600_000);
        // An exchange whose answer queued 10 ms loses to the fast ones.
        let echo = Echo { sent_unix_ns: 5_000 * MS, received_unix_ns: 3_000 * MS };
        a.received(2, 3_001 * MS, 5_012 * MS, Some(echo), now);
        assert_eq!(a.offset(2, now).unwrap(), seen);
    }

    #[test]
    fn a_clock_that_jumps_shows_within_a_few_exchanges() {
        let (mut a, mut b) = exchange(0, 100_000, 100_000, 10);
        // B's clock jumps 300 ms ahead; the next exchanges carry it.
        let start = Instant::now() + Duration::from_secs(1);
        for round in 0..(SAMPLES as u64 + 1) {
            let t = 10_000 * MS + round * 50 * MS;
            let at = start + Duration::from_nanos(round * 50 * MS);
            b.received(1, 1_000_000 * MS + t, 1_000_300 * MS + t + 100_000, a.echo(2), at);
            let echo = b.echo(1);
            a.received(
                2,
                1_000_300 * MS + t + 10 * MS,
                1_000_000 * MS + t + 10 * MS + 100_000,
                echo,
                at,
            );
        }
        let now = start + Duration::from_secs(1);
        assert_eq!(a.offset(2, now).unwrap().offset_ns, 300 * MS as i64);
    }

    #[test]
    fn stamps_go_out_at_most_every_interval_and_estimates_go_stale() {
        let mut stamps = Stamps::default();
        let now = Instant::now();
        assert!(stamps.due(2, now), "the first frame carries a stamp");
        assert!(!stamps.due(2, now + Duration::from_millis(10)));
        assert!(stamps.due(3, now + Duration::from_millis(10)), "per peer");
        assert!(stamps.due(2, now + STAMP_EVERY));
        let (a, _) = exchange(0, 100_000, 100_000, 5);
        let later = Instant::now() + STALE + Duration::from_secs(1);
        assert_eq!(a.offset(2, later), None, "no fresh exchange: no estimate");
        assert_eq!(a.all(Instant::now()).len(), 1);
    }

    #[test]
    fn the_member_beyond_the_bound_is_the_one_the_others_disagree_with() {
        let offset = |offset_ns: i64| ClockOffset { offset_ns, round_trip_ns: 0 };
        let bound = 500 * MS as i64;
        // The leader (1) sees member 3 two seconds ahead.
        let seen = [(2, offset(1_000_000)), (3, offset(2_000 * MS as i64))];
        assert_eq!(beyond_bound(1, &seen, bound), [(3, 2_000 * MS as i64 - 1_000_000)]);
        // The leader itself is two seconds behind: both followers look ahead of it.
        let seen = [(2, offset(2_000 * MS as i64)), (3, offset(2_001 * MS as i64))];
        assert_eq!(beyond_bound(1, &seen, bound), [(1, -(2_000 * MS as i64))]);
        // Within the bound: nobody.
        let seen = [(2, offset(150 * MS as i64)), (3, offset(-100 * MS as i64))];
        assert!(beyond_bound(1, &seen, bound).is_empty());
    }
}
