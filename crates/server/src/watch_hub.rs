//! Which watch streams an applied revision concerns: one dispatcher task reads the
//! change feed as revisions are applied, matches their keys against every stream's
//! watched ranges, and wakes only the streams with a match. A stream whose watches see
//! nothing sleeps, however fast the cluster writes: a thousand idle watchers cost a
//! write one pass over a list, not a thousand task wake-ups.
//!
//! A stream skips the revisions the dispatcher has checked for it without a match. So
//! that a skip is never wrong, each stream's slot records the lowest revision with a
//! match not yet taken (`pending`) and the newest revision checked against its ranges
//! (`checked_through`); a watch added to a slot skips nothing up to the
//! `checked_through` of the moment it was added (those revisions were checked without
//! it), and a stream never moves a watch past a revision it has not finished reading.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use worknode_kv as kv;
use worknode_raft::changes::{ChangeFeed, FeedRead, Revision};

/// Events the dispatcher reads from the feed at a time.
const DISPATCH_BATCH_BYTES: usize = 1 << 20;

/// The streams' watched ranges, for the dispatcher.
#[derive(Debug)]
pub(crate) struct WatchHub {
    state: Mutex<HubState>,
}

#[derive(Debug, Default)]
struct HubState {
    slots: HashMap<u64, SlotState>,
    next_slot: u64,
    /// The newest revision the dispatcher has checked against every slot.
    dispatched_through: i64,
    /// The node stopped: no revision comes any more.
    closed: bool,
}

#[derive(Debug)]
struct SlotState {
    /// Each watch's id and range (`range_end` as the watch gave it).
    ranges: Vec<(i64, Vec<u8>, Vec<u8>)>,
    /// The lowest revision with a match not yet taken (`i64::MAX`: none).
    pending: i64,
    checked_through: i64,
    wake: Arc<Notify>,
}

/// One stream's place in the hub; dropping it leaves.
#[derive(Debug)]
pub(crate) struct Slot {
    hub: Arc<WatchHub>,
    id: u64,
    /// Woken when a revision with a match is checked, or when the node stops.
    pub(crate) wake: Arc<Notify>,
}

/// What a slot's stream may know when it wakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Checked {
    /// The lowest revision with a match since the last take (`i64::MAX`: none).
    pub(crate) pending: i64,
    /// Every revision up to this one is checked against the slot's ranges.
    pub(crate) through: i64,
    /// The node stopped.
    pub(crate) closed: bool,
}

impl WatchHub {
    /// A hub whose dispatcher, spawned on the current runtime, reads `feed`.
    pub(crate) fn start(feed: Arc<ChangeFeed>) -> Arc<Self> {
        let head = feed.head();
        let hub = Arc::new(Self {
            state: Mutex::new(HubState { dispatched_through: head, ..HubState::default() }),
        });
        tokio::spawn(dispatch(Arc::clone(&hub), feed, head + 1));
        hub
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new stream.
    pub(crate) fn slot(self: &Arc<Self>) -> Slot {
        let mut state = self.state();
        let id = state.next_slot;
        state.next_slot += 1;
        let wake = Arc::new(Notify::new());
        let slot = SlotState {
            ranges: Vec::new(),
            pending: i64::MAX,
            checked_through: state.dispatched_through,
            wake: Arc::clone(&wake),
        };
        state.slots.insert(id, slot);
        Slot { hub: Arc::clone(self), id, wake }
    }

    /// The dispatcher checked `revisions` (consecutive, through `through`).
    fn checked(&self, revisions: &[Arc<Revision>], through: i64) {
        let mut state = self.state();
        for slot in state.slots.values_mut() {
            let matched = revisions.iter().find(|revision| {
                revision.events.iter().any(|event| {
                    slot.ranges.iter().any(|(_, key, end)| kv::in_range(&event.kv.key, key, end))
                })
            });
            if let Some(revision) = matched {
                slot.pending = slot.pending.min(revision.revision);
                slot.wake.notify_one();
            }
            slot.checked_through = through;
        }
        state.dispatched_through = through;
    }

    /// Revisions from `from` through `through` cannot be checked (their events were not
    /// built, or a snapshot replaced the store): every stream looks for itself.
    fn unchecked(&self, from: i64, through: i64) {
        let mut state = self.state();
        for slot in state.slots.values_mut() {
            slot.pending = slot.pending.min(from);
            slot.checked_through = through;
            slot.wake.notify_one();
        }
        state.dispatched_through = through;
    }

    fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        for slot in state.slots.values() {
            slot.wake.notify_one();
        }
    }
}

impl Slot {
    /// Adds watch `id` on `[key, range_end)`; the newest revision checked without it.
    pub(crate) fn add(&self, id: i64, key: &[u8], range_end: &[u8]) -> i64 {
        let mut state = self.hub.state();
        let Some(slot) = state.slots.get_mut(&self.id) else { return i64::MAX };
        slot.ranges.push((id, key.to_vec(), range_end.to_vec()));
        slot.checked_through
    }

    /// Removes watch `id`.
    pub(crate) fn remove(&self, id: i64) {
        if let Some(slot) = self.hub.state().slots.get_mut(&self.id) {
            slot.ranges.retain(|(watch, _, _)| *watch != id);
        }
    }

    /// Takes the lowest revision with a match, with how far the slot is checked.
    pub(crate) fn take(&self) -> Checked {
        let mut state = self.hub.state();
        let closed = state.closed;
        match state.slots.get_mut(&self.id) {
            Some(slot) => Checked {
                pending: std::mem::replace(&mut slot.pending, i64::MAX),
                through: slot.checked_through,
                closed,
            },
            None => Checked { pending: i64::MAX, through: i64::MIN, closed },
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.hub.state().slots.remove(&self.id);
    }
}

/// The dispatcher: checks each applied revision from `next` on, until the node stops.
async fn dispatch(hub: Arc<WatchHub>, feed: Arc<ChangeFeed>, mut next: i64) {
    let mut heads = feed.heads();
    loop {
        let head = *heads.borrow_and_update();
        while next <= head {
            match feed.read(next, DISPATCH_BATCH_BYTES) {
                FeedRead::Revisions(revisions) => {
                    let Some(last) = revisions.last().map(|revision| revision.revision) else {
                        break;
                    };
                    hub.checked(&revisions, last);
                    next = last + 1;
                }
                FeedRead::Gone => {
                    hub.unchecked(next, head);
                    next = head + 1;
                }
            }
        }
        if heads.changed().await.is_err() {
            hub.close();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, revision: i64) -> kv::Event {
        kv::Event {
            kind: kv::EventKind::Put,
            kv: kv::KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: revision,
                ..kv::KeyValue::default()
            },
            prev_kv: None,
        }
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_streams_with_a_match_are_woken_and_skips_are_never_past_a_match() {
        let feed = Arc::new(ChangeFeed::new(1 << 20, 1));
        let hub = WatchHub::start(Arc::clone(&feed));
        let (a, b) = (hub.slot(), hub.slot());
        let subscription = feed.subscribe();
        assert_eq!(a.add(1, b"a", b""), 1, "revision 1 was checked before the watch");
        assert_eq!(b.add(7, b"b", b"c"), 1);
        feed.applied(vec![(2, Some(vec![event("x", 2)])), (3, Some(vec![event("bb", 3)]))]);
        settle().await;
        let checked = b.take();
        assert_eq!((checked.pending, checked.through), (3, 3));
        assert_eq!(a.take(), Checked { pending: i64::MAX, through: 3, closed: false });
        assert_eq!(b.take().pending, i64::MAX, "taken once");
        // No match: no wake-up permit stored for a.
        let woken = tokio::time::timeout(std::time::Duration::from_millis(20), a.wake.notified());
        assert!(woken.await.is_err(), "a stream with nothing to see sleeps");
        b.remove(7);
        feed.applied(vec![(4, Some(vec![event("bc", 4), event("a", 4)]))]);
        settle().await;
        assert_eq!(a.take().pending, 4);
        assert_eq!(b.take().pending, i64::MAX, "a removed watch matches nothing");
        drop(subscription);
        // Events not built (no one subscribed): everyone looks for itself.
        feed.applied(vec![(5, None)]);
        settle().await;
        assert_eq!(b.take(), Checked { pending: 5, through: 5, closed: false });
    }
}
