//! Faults: which kinds a run injects, and the plan of when — drawn from the seed before
//! the run starts, so the plan is the same whatever the cluster does.

use std::fmt;

use worknode_raft::draws::Draws;

use crate::world::clock::{Nanos, MS, SECOND};
use crate::world::net::Weather;

/// The largest wall-clock offset the skew fault gives a member.
pub const SKEW_MAX: Nanos = 2 * SECOND;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Members' processes die (unsynced writes lost) and restart later: one, a majority,
    /// or all of them at once.
    Crash,
    /// A member cut off from the others, both ways.
    Partition,
    /// One link cut in one direction only.
    OneWay,
    /// Messages lost at random.
    Loss,
    /// Messages delivered twice.
    Duplicate,
    /// Messages delayed by up to tens of milliseconds, or one time in four by up to
    /// 150–450 ms (around the takeover's silence threshold), so reordered.
    Delay,
    /// A member's wall clock off by up to two seconds, or jumping.
    Skew,
    /// A member's syncs slowed by up to 100 ms, or stalled for up to two seconds.
    SlowDisk,
    /// A member's disk full: its next write fails and the member stops (fail-stop); it
    /// starts again once there is space.
    DiskFull,
    /// The leader's process stops without a word (SIGSTOP, a frozen VM, a host that lost
    /// power) and, unless it crashes, resumes later: its peers' connections stay open, so
    /// only its silence tells.
    Freeze,
    /// A down member's synced log is damaged (a flipped bit its checksums find): it
    /// refuses to start, and its operator starts it with `--rejoin` (log and snapshot
    /// wiped, term and vote kept, caught up from the cluster) once the others hold
    /// everything it held, as `--rejoin` requires.
    Damage,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [Self; 11] = [
        Self::Crash,
        Self::Partition,
        Self::OneWay,
        Self::Loss,
        Self::Duplicate,
        Self::Delay,
        Self::Skew,
        Self::SlowDisk,
        Self::DiskFull,
        Self::Freeze,
        Self::Damage,
    ];

    /// The name `--faults` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Partition => "partition",
            Self::OneWay => "one-way",
            Self::Loss => "loss",
            Self::Duplicate => "duplicate",
            Self::Delay => "delay",
            Self::Skew => "skew",
            Self::SlowDisk => "slow-disk",
            Self::DiskFull => "disk-full",
            Self::Freeze => "freeze",
            Self::Damage => "damage",
        }
    }

    /// Parses `--faults`: `all`, `none`, or names separated by commas.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        match text {
            "all" => return Ok(Self::ALL.to_vec()),
            "none" => return Ok(Vec::new()),
            _ => {}
        }
        let mut kinds = Vec::new();
        for name in text.split(',').map(str::trim) {
            let kind = Self::ALL.into_iter().find(|kind| kind.name() == name).ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|kind| kind.name()).collect();
                format!(
                    "--faults: unknown fault {name:?}; use all, none, or some of {}",
                    names.join(", ")
                )
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A change the plan makes to the world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultEvent {
    /// The members' processes die together (one, a majority, or all: a power cut).
    Crash(Vec<u64>),
    /// They start again from their disks.
    Restart(Vec<u64>),
    /// Links cut, (from, to).
    Cut(Vec<(u64, u64)>),
    /// Those links work again.
    Mend(Vec<(u64, u64)>),
    /// The network's weather from now on.
    Weather(Weather),
    /// The member's wall clock is off by this many nanoseconds from now on.
    Skew(u64, i64),
    /// The member's syncs take this much longer from now on.
    SlowDisk(u64, Nanos),
    /// The member's disk is full (`true`) or has space again.
    DiskFull(u64, bool),
    /// The member that leads now (else `member`) stops without a word; with `incoming`,
    /// the member whose turn is next instead (under rotation), so the leader's handoff at
    /// the boundary goes to a member that will never answer.
    Freeze {
        /// Who stops when no one leads (or no turn is next).
        member: u64,
        /// The next turn's member rather than the leader.
        incoming: bool,
    },
    /// The member's process dies and its log is damaged: its restarts rejoin.
    Damage(u64),
    /// The frozen member resumes.
    Thaw,
    /// Every fault ends: members restart, links mend, weather clears, clocks agree.
    HealAll,
}

/// A fault plan: when each change happens, in time order, and how many faults of each kind.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The changes.
    pub events: Vec<(Nanos, FaultEvent)>,
    /// Faults begun, by kind.
    pub injected: Vec<(FaultKind, u32)>,
}

/// Draws a plan: faults one after another (each lasting 20 ms to 3 s, with gaps between)
/// from one second in until `heal_at`, where everything heals.
pub fn plan(seed: u64, members: &[u64], kinds: &[FaultKind], heal_at: Nanos) -> Plan {
    let mut draws = Draws::new(seed);
    let mut plan = Plan::default();
    if kinds.is_empty() {
        return plan;
    }
    let pick = |draws: &mut Draws, bound: usize| draws.below(bound as u64) as usize;
    // Crashes, the commonest failure (and the one durability rests on), come twice as
    // often as each other kind.
    let weighted: Vec<FaultKind> = kinds
        .iter()
        .flat_map(|&kind| std::iter::repeat_n(kind, if kind == FaultKind::Crash { 2 } else { 1 }))
        .collect();
    let mut at = SECOND;
    while at < heal_at {
        let kind = weighted[pick(&mut draws, weighted.len())];
        let long = 20 * MS + draws.below(3 * SECOND);
        let end = (at + long).min(heal_at);
        let member = members[pick(&mut draws, members.len())];
        let other = members[(members.iter().position(|m| *m == member).unwrap_or(0)
            + 1
            + pick(&mut draws, members.len() - 1))
            % members.len()];
        let (start, stop) = draw(kind, member, other, members, &mut draws);
        plan.events.push((at, start));
        plan.events.push((end, stop));
        match plan.injected.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => *count += 1,
            None => plan.injected.push((kind, 1)),
        }
        at = end + 100 * MS + draws.below(1_500 * MS);
    }
    plan.events.push((heal_at, FaultEvent::HealAll));
    plan.injected.sort();
    plan
}

/// One fault of `kind` on `member` (and `other`, for a one-way cut): how it begins and
/// how it ends.
fn draw(
    kind: FaultKind,
    member: u64,
    other: u64,
    members: &[u64],
    draws: &mut Draws,
) -> (FaultEvent, FaultEvent) {
    match kind {
        FaultKind::Crash => {
            let majority = members.len() / 2 + 1;
            let count = match draws.below(100) {
                0..60 => 1,
                60..85 => majority,
                _ => members.len(),
            };
            let first = members.iter().position(|m| *m == member).unwrap_or(0);
            let crashed: Vec<u64> =
                (0..count).map(|k| members[(first + k) % members.len()]).collect();
            (FaultEvent::Crash(crashed.clone()), FaultEvent::Restart(crashed))
        }
        FaultKind::Partition => {
            let links: Vec<(u64, u64)> = members
                .iter()
                .filter(|m| **m != member)
                .flat_map(|m| [(member, *m), (*m, member)])
                .collect();
            (FaultEvent::Cut(links.clone()), FaultEvent::Mend(links))
        }
        FaultKind::OneWay => {
            (FaultEvent::Cut(vec![(member, other)]), FaultEvent::Mend(vec![(member, other)]))
        }
        FaultKind::Loss => {
            weather(Weather { loss_ppm: 10_000 + draws.below(290_000), ..Weather::default() })
        }
        FaultKind::Duplicate => {
            weather(Weather { duplicate_ppm: 10_000 + draws.below(290_000), ..Weather::default() })
        }
        FaultKind::Delay => {
            // Mostly tens of milliseconds; one time in four around the takeover's
            // silence threshold (three 100 ms heartbeats), where a slow leader and a
            // silent one are hardest to tell apart.
            let jitter = if draws.below(4) == 0 {
                150 * MS + draws.below(300 * MS)
            } else {
                MS + draws.below(50 * MS)
            };
            weather(Weather { jitter_ns: jitter, ..Weather::default() })
        }
        FaultKind::Skew => {
            let offset = (draws.below(2 * SKEW_MAX) as i64) - SKEW_MAX as i64;
            (FaultEvent::Skew(member, offset), FaultEvent::Skew(member, 0))
        }
        FaultKind::SlowDisk => {
            // Mostly slow; one time in five a stall (a disk's firmware, a full queue).
            let slow = if draws.below(5) == 0 {
                500 * MS + draws.below(1_500 * MS)
            } else {
                MS + draws.below(100 * MS)
            };
            (FaultEvent::SlowDisk(member, slow), FaultEvent::SlowDisk(member, 0))
        }
        FaultKind::DiskFull => {
            (FaultEvent::DiskFull(member, true), FaultEvent::DiskFull(member, false))
        }
        FaultKind::Freeze => {
            let incoming = draws.below(2) == 0;
            (FaultEvent::Freeze { member, incoming }, FaultEvent::Thaw)
        }
        FaultKind::Damage => (FaultEvent::Damage(member), FaultEvent::Restart(vec![member])),
    }
}

fn weather(weather: Weather) -> (FaultEvent, FaultEvent) {
    (FaultEvent::Weather(weather), FaultEvent::Weather(Weather::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unknown_ones_are_named_in_the_error() {
        assert_eq!(FaultKind::parse_list("all").ok(), Some(FaultKind::ALL.to_vec()));
        assert_eq!(FaultKind::parse_list("none").ok(), Some(Vec::new()));
        assert_eq!(
            FaultKind::parse_list("crash,loss").ok(),
            Some(vec![FaultKind::Crash, FaultKind::Loss])
        );
        let error = FaultKind::parse_list("crash,flood").unwrap_err();
        assert!(error.contains("\"flood\"") && error.contains("slow-disk"), "{error}");
    }

    #[test]
    fn a_plan_is_ordered_ends_in_a_heal_and_repeats_by_seed() {
        let members = [1, 2, 3];
        let plan = plan(9, &members, &FaultKind::ALL, 60 * SECOND);
        assert!(plan.events.windows(2).all(|pair| pair[0].0 <= pair[1].0));
        assert_eq!(plan.events.last().map(|e| &e.1), Some(&FaultEvent::HealAll));
        assert!(plan.injected.iter().map(|(_, n)| n).sum::<u32>() >= 10);
        let again = super::plan(9, &members, &FaultKind::ALL, 60 * SECOND);
        assert_eq!(plan.events, again.events);
    }

    #[test]
    fn a_one_way_cut_joins_two_different_members() {
        for seed in 0..50 {
            for (_, event) in plan(seed, &[1, 2, 3], &[FaultKind::OneWay], 20 * SECOND).events {
                if let FaultEvent::Cut(links) = event {
                    assert!(links.iter().all(|(from, to)| from != to));
                }
            }
        }
    }
}
