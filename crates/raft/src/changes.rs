//! The change feed: what each applied revision changed, from the Raft loop to watchers.
//!
//! The loop appends each revision's events and moves on; it never waits for a watcher.
//! Watchers read from the feed at their own pace on their own tasks. The feed keeps the
//! newest revisions up to a byte budget and drops the oldest beyond it, so a watcher
//! that falls behind never holds memory or the loop: it finds its next revision gone
//! from the feed and reads it from the store's history instead (as etcd moves a slow
//! watcher to its unsynced group), where it stays until compaction.
//!
//! With no watcher subscribed the loop builds no events at all; the feed then only marks
//! that it holds nothing before the newest revision, which sends a watcher that
//! subscribes later to the history for anything older than its subscription.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use worknode_kv::Event;

/// The bytes of events the feed keeps by default (see [`ChangeFeed::new`]).
pub const FEED_BYTES_DEFAULT: usize = 64 << 20;

/// One revision's events, shared by every watcher that reads it.
#[derive(Debug)]
pub struct Revision {
    /// The revision.
    pub revision: i64,
    /// Its events, in key order.
    pub events: Vec<Event>,
    bytes: usize,
}

/// What a read of the feed found.
#[derive(Debug)]
pub enum FeedRead {
    /// Revisions from the one asked for, in order, none skipped (may be empty: nothing
    /// newer yet).
    Revisions(Vec<Arc<Revision>>),
    /// The revision asked for is no longer (or never was) in the feed: read it from the
    /// store's history.
    Gone,
}

#[derive(Debug, Default)]
struct Held {
    revisions: VecDeque<Arc<Revision>>,
    /// The oldest revision the feed can answer: the first held, or the next to come.
    first: i64,
    bytes: usize,
}

/// Applied revisions' events for watchers (see the module above).
#[derive(Debug)]
pub struct ChangeFeed {
    held: Mutex<Held>,
    budget_bytes: usize,
    subscribers: AtomicUsize,
    head: tokio::sync::watch::Sender<i64>,
}

impl ChangeFeed {
    /// A feed that keeps up to `budget_bytes` of events, the store at `revision`.
    pub fn new(budget_bytes: usize, revision: i64) -> Self {
        Self {
            held: Mutex::new(Held { first: revision + 1, ..Held::default() }),
            budget_bytes,
            subscribers: AtomicUsize::new(0),
            head: tokio::sync::watch::Sender::new(revision),
        }
    }

    /// Subscribes: from now on the loop records events, and the subscription wakes when
    /// a revision is applied.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        self.subscribers.fetch_add(1, Ordering::SeqCst);
        Subscription { head: self.head.subscribe(), feed: Arc::clone(self) }
    }

    /// The newest applied revision as it changes, without subscribing to events (for
    /// waiting on a state rather than on a stream of changes).
    pub fn heads(&self) -> tokio::sync::watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Whether anyone reads the feed (the loop builds events only then).
    pub fn watched(&self) -> bool {
        self.subscribers.load(Ordering::SeqCst) > 0
    }

    /// The newest applied revision.
    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// Revisions from `from` on, up to about `budget_bytes` of events (at least one
    /// revision when there is one).
    pub fn read(&self, from: i64, budget_bytes: usize) -> FeedRead {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if from < held.first {
            return FeedRead::Gone;
        }
        let skip = usize::try_from(from - held.first).unwrap_or(usize::MAX);
        let mut taken = Vec::new();
        let mut bytes = 0;
        for revision in held.revisions.iter().skip(skip) {
            if bytes > budget_bytes {
                break;
            }
            bytes += revision.bytes;
            taken.push(Arc::clone(revision));
        }
        FeedRead::Revisions(taken)
    }

    /// The loop applied `revisions` (consecutive, each one revision after the last
    /// recorded, with their events when [`ChangeFeed::watched`]; `None`: no one watched,
    /// the events were not built).
    pub fn applied(&self, revisions: Vec<(i64, Option<Vec<Event>>)>) {
        let Some(newest) = revisions.last().map(|(revision, _)| *revision) else {
            return;
        };
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            for (revision, events) in revisions {
                let expected = held.first + held.revisions.len() as i64;
                match events {
                    Some(events) if revision == expected => {
                        let bytes = events.iter().map(Event::size_bytes).sum();
                        held.bytes += bytes;
                        held.revisions.push_back(Arc::new(Revision { revision, events, bytes }));
                    }
                    // Not built, or not following on: nothing before it can be answered.
                    _ => {
                        held.revisions.clear();
                        held.bytes = 0;
                        held.first = revision + 1;
                    }
                }
            }
            while held.bytes > self.budget_bytes {
                let Some(oldest) = held.revisions.pop_front() else { break };
                held.bytes -= oldest.bytes;
                held.first = oldest.revision + 1;
            }
        }
        self.head.send_replace(newest);
    }

    /// The store was replaced (a snapshot installed) at `revision`: nothing held before
    /// it is answered from the feed any more.
    pub(crate) fn reset(&self, revision: i64) {
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            held.revisions.clear();
            held.bytes = 0;
            held.first = revision + 1;
        }
        self.head.send_replace(revision);
    }
}

/// A watcher's subscription to the feed; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    head: tokio::sync::watch::Receiver<i64>,
    feed: Arc<ChangeFeed>,
}

impl Subscription {
    /// The feed.
    pub fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    /// Waits until a revision newer than the last seen here is applied; the newest.
    /// Never returns while the node runs and nothing is applied; errs once the loop and
    /// its feed are gone.
    pub async fn changed(&mut self) -> Result<i64, FeedClosed> {
        self.head.changed().await.map_err(|_| FeedClosed)?;
        Ok(*self.head.borrow_and_update())
    }

    /// Marks the newest revision as seen: [`Subscription::changed`] waits for a newer one.
    pub fn seen(&mut self) -> i64 {
        *self.head.borrow_and_update()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.feed.subscribers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The node stopped: no more revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the node stopped")]
pub struct FeedClosed;

#[cfg(test)]
mod tests {
    use worknode_kv::{EventKind, KeyValue};

    use super::*;

    fn events(revision: i64, value_bytes: usize) -> Option<Vec<Event>> {
        let kv = KeyValue {
            key: b"k".to_vec(),
            mod_revision: revision,
            value: vec![0; value_bytes],
            ..KeyValue::default()
        };
        Some(vec![Event { kind: EventKind::Put, kv, prev_kv: None }])
    }

    fn revisions(read: FeedRead) -> Option<Vec<i64>> {
        match read {
            FeedRead::Revisions(revisions) => Some(revisions.iter().map(|r| r.revision).collect()),
            FeedRead::Gone => None,
        }
    }

    #[test]
    fn reads_follow_on_from_the_revision_asked_for() {
        let feed = ChangeFeed::new(1 << 20, 1);
        feed.applied(vec![(2, events(2, 1)), (3, events(3, 1)), (4, events(4, 1))]);
        assert_eq!(revisions(feed.read(3, usize::MAX)), Some(vec![3, 4]));
        assert_eq!(revisions(feed.read(5, usize::MAX)), Some(vec![]));
        assert_eq!(revisions(feed.read(1, usize::MAX)), None, "before the feed began");
        assert_eq!(revisions(feed.read(2, 1)), Some(vec![2]), "one revision, however large");
        assert_eq!(feed.head(), 4);
    }

    #[test]
    fn the_budget_drops_the_oldest_revisions() {
        let feed = ChangeFeed::new(3 * (100 + 2 * worknode_kv::EVENT_OVERHEAD_BYTES), 1);
        let applied: Vec<_> = (2..=6).map(|r| (r, events(r, 100))).collect();
        feed.applied(applied);
        assert_eq!(revisions(feed.read(3, usize::MAX)), None);
        assert_eq!(revisions(feed.read(4, usize::MAX)), Some(vec![4, 5, 6]));
    }

    #[test]
    fn unbuilt_events_and_a_snapshot_send_readers_to_history() {
        let feed = ChangeFeed::new(1 << 20, 1);
        feed.applied(vec![(2, events(2, 1)), (3, None), (4, events(4, 1))]);
        assert_eq!(revisions(feed.read(3, usize::MAX)), None);
        assert_eq!(revisions(feed.read(4, usize::MAX)), Some(vec![4]));
        feed.reset(10);
        assert_eq!(revisions(feed.read(4, usize::MAX)), None);
        assert_eq!(revisions(feed.read(11, usize::MAX)), Some(vec![]));
        assert_eq!(feed.head(), 10);
    }

    #[test]
    fn subscribers_are_counted_while_they_live() {
        let feed = Arc::new(ChangeFeed::new(1 << 20, 1));
        assert!(!feed.watched());
        let first = feed.subscribe();
        let second = feed.subscribe();
        drop(first);
        assert!(feed.watched());
        drop(second);
        assert!(!feed.watched());
    }
}
