//! Compaction without an operator: etcd's `--auto-compaction-mode` and
//! `--auto-compaction-retention`.
//!
//! - `periodic`: keep the history of the last `retention` (a duration). Every tenth of it
//!   (every hour when it is an hour or more) the member notes the current revision and
//!   compacts to the newest revision it noted at least `retention` ago.
//! - `revision`: keep the last `retention` revisions. Every five minutes the member
//!   compacts to the current revision minus `retention`.
//!
//! Every member takes notes and proposes what falls due once it leads, or drops it once
//! another member has compacted since: under rotation the leader changes every few
//! hundred milliseconds, and a compactor that ran only where it started would rarely find
//! itself leading.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use worknode_kv as kv;

use crate::service::Shared;

/// How often the revision mode compacts (etcd's).
const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The longest interval of the periodic mode (etcd's).
const PERIODIC_INTERVAL_MAX: Duration = Duration::from_secs(60 * 60);

/// What the member compacts by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Nothing: an operator compacts.
    Off,
    /// Keep the history of this long.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

impl AutoCompaction {
    /// How often the compactor looks.
    pub fn interval(&self) -> Option<Duration> {
        match self {
            AutoCompaction::Off => None,
            AutoCompaction::Periodic(retention) => {
                Some((*retention / 10).min(PERIODIC_INTERVAL_MAX))
            }
            AutoCompaction::Revision(_) => Some(REVISION_INTERVAL),
        }
    }
}

/// The compactor's notes and decisions, without I/O (time comes in as arguments).
#[derive(Debug)]
pub struct Compactor {
    mode: AutoCompaction,
    /// (when, revision then), oldest first.
    notes: VecDeque<(Instant, i64)>,
}

impl Compactor {
    /// A compactor for `mode`.
    pub fn new(mode: AutoCompaction) -> Self {
        Self { mode, notes: VecDeque::new() }
    }

    /// At `now` the store is at `revision`, compacted at `compacted`: the revision to
    /// compact to, if any.
    pub fn look(&mut self, now: Instant, revision: i64, compacted: i64) -> Option<i64> {
        let target = match self.mode {
            AutoCompaction::Off => return None,
            AutoCompaction::Revision(retention) => revision - retention,
            AutoCompaction::Periodic(retention) => {
                self.notes.push_back((now, revision));
                // The newest note at least `retention` old; older ones are not needed again.
                let old_enough = |at: &Instant| now.saturating_duration_since(*at) >= retention;
                let mut target = None;
                while self.notes.front().is_some_and(|(at, _)| old_enough(at)) {
                    target = self.notes.pop_front().map(|(_, revision)| revision);
                }
                if let Some(revision) = target {
                    // Kept as the next look's baseline: it is old enough already.
                    self.notes.push_front((now - retention, revision));
                }
                target?
            }
        };
        (target > compacted && target > 0).then_some(target)
    }
}

/// Starts [`run`] on the current runtime, unless `mode` is off.
pub fn start(shared: Arc<Shared>, mode: AutoCompaction) {
    if mode != AutoCompaction::Off {
        tracing::info!(?mode, "compacting the history by itself (auto-compaction)");
        tokio::spawn(run(shared, mode));
    }
}

/// How often a member that has a compaction due looks whether it leads now.
const LEADS_YET: Duration = Duration::from_millis(50);

/// Runs `mode` for this member until the process ends: takes notes every interval and
/// proposes what falls due once it leads (or drops it once another member compacted
/// since). Waiting to lead matters under rotation: a member's interval can fall at the same
/// phase of the schedule every time, always inside other members' turns.
pub async fn run(shared: Arc<Shared>, mode: AutoCompaction) {
    let Some(interval) = mode.interval() else { return };
    let mut compactor = Compactor::new(mode);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leads_yet = tokio::time::interval(LEADS_YET);
    leads_yet.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The target due, and the compaction revision when it fell due: a member that sees
    // another compact since drops its own (each compaction scans the whole store, and the
    // members' notes differ by moments, so each would otherwise compact once more).
    let mut due: Option<(i64, i64)> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let status = shared.node.status();
                let now = Instant::now();
                if let Some(target) = compactor.look(now, status.revision, status.compact_revision) {
                    let target = due.map_or(target, |(earlier, _)| earlier.max(target));
                    due = Some((target, status.compact_revision));
                }
            }
            _ = leads_yet.tick(), if due.is_some() => {}
        }
        let Some((target, compacted_then)) = due else { continue };
        let status = shared.node.status();
        if target <= status.compact_revision || status.compact_revision > compacted_then {
            due = None;
            continue;
        }
        if !status.is_leader {
            continue;
        }
        due = None;
        match shared.write(kv::Command::Compact { revision: target }).await {
            Ok(written) => match written.applied.outcome {
                kv::Outcome::Compact => {
                    tracing::info!(
                        revision = target,
                        ?mode,
                        "compacted the history (auto-compaction)"
                    );
                }
                kv::Outcome::Error(kv::KvError::Compacted { .. }) => {}
                other => tracing::warn!(revision = target, "auto-compaction answered {other:?}"),
            },
            Err(status) => {
                tracing::warn!(revision = target, "auto-compaction failed: {}", status.message());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn periodic_compacts_to_what_the_store_was_a_retention_ago() {
        let start = Instant::now();
        let mut compactor = Compactor::new(AutoCompaction::Periodic(10 * SECOND));
        assert_eq!(AutoCompaction::Periodic(10 * SECOND).interval(), Some(SECOND));
        let mut decisions = Vec::new();
        for second in 0..=13u32 {
            let revision = 100 + i64::from(second) * 10;
            decisions.push(compactor.look(start + SECOND * second, revision, 0));
        }
        // Nothing for the first 10 s; then each second the revision of 10 s before.
        assert!(decisions[..10].iter().all(Option::is_none), "{decisions:?}");
        assert_eq!(&decisions[10..], [Some(100), Some(110), Some(120), Some(130)]);
    }

    #[test]
    fn revision_keeps_the_last_retention_revisions_and_never_goes_back() {
        let mut compactor = Compactor::new(AutoCompaction::Revision(1000));
        let now = Instant::now();
        assert_eq!(compactor.look(now, 500, 0), None);
        assert_eq!(compactor.look(now, 5000, 0), Some(4000));
        assert_eq!(compactor.look(now, 5000, 4000), None, "compacted already");
        assert_eq!(AutoCompaction::Revision(1).interval(), Some(REVISION_INTERVAL));
        assert_eq!(
            AutoCompaction::Periodic(72 * 3600 * SECOND).interval(),
            Some(PERIODIC_INTERVAL_MAX)
        );
        assert_eq!(Compactor::new(AutoCompaction::Off).look(now, 10, 0), None);
    }
}
