//! A stream's delivery pass: each watch behind the newest revision reads its next batch
//! from the change feed (or, when the feed no longer holds it, from the store's history)
//! and sends it, fragmented if the watch asked; revisions the hub checked and found
//! nothing in for this stream are skipped without reading.

use std::sync::atomic::Ordering;

use prost::Message as _;
use worknode_kv as kv;
use worknode_raft::changes::FeedRead;

use super::{End, WatchStream, BATCH_BYTES, FRAGMENT_BYTES, INVALID_WATCH_ID, REASON_COMPACTED};
use crate::convert;
use crate::pb;

impl WatchStream {
    /// One batch for every watch that is behind the newest revision; whether any still
    /// is. Answers a progress request once none is.
    pub(super) async fn deliver(&mut self) -> Result<bool, End> {
        let head = self.subscription.seen();
        self.skip_checked(head)?;
        let ids: Vec<i64> = self
            .watches
            .iter()
            .filter(|(_, watch)| watch.next <= head)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.deliver_batch(id).await?;
        }
        let behind = self.watches.values().any(|watch| watch.next <= head);
        // A watch still behind has not read everything up to `head`: none moves past
        // where it stands; a match newer than `head` stays recorded.
        let unread = self.watches.values().map(|watch| watch.next).filter(|&next| next <= head);
        let carried = if self.skip_floor > head { self.skip_floor } else { i64::MAX };
        self.skip_floor = unread.min().unwrap_or(i64::MAX).min(carried);
        if !behind && self.progress_asked {
            self.progress_asked = false;
            let response = pb::WatchResponse {
                header: Some(self.header(head)),
                watch_id: INVALID_WATCH_ID,
                ..pb::WatchResponse::default()
            };
            self.send(response).await?;
        }
        Ok(behind)
    }

    /// Moves each watch past the revisions the hub checked without finding anything
    /// for this stream (never past a reported match, nor past what a watch added since
    /// the check has not read itself).
    fn skip_checked(&mut self, head: i64) -> Result<(), End> {
        let checked = self.slot.take();
        if checked.closed {
            return Err(End::Stopped);
        }
        self.skip_floor = self.skip_floor.min(checked.pending);
        let skip_to = self.skip_floor.min(checked.through.saturating_add(1)).min(head + 1);
        for watch in self.watches.values_mut() {
            if watch.next > watch.unchecked_through && watch.next < skip_to {
                watch.next = skip_to;
            }
        }
        Ok(())
    }

    /// The next batch of watch `id`'s revisions: from the feed, or from history when the
    /// feed no longer holds them.
    async fn deliver_batch(&mut self, id: i64) -> Result<(), End> {
        let Some(watch) = self.watches.get(&id) else { return Ok(()) };
        let prev_kv = watch.prev_kv;
        let (events, through) = match self.subscription.feed().read(watch.next, BATCH_BYTES) {
            FeedRead::Revisions(revisions) => {
                let Some(last) = revisions.last() else { return Ok(()) };
                let through = last.revision;
                // Shared by every watcher: each copies only what it sends.
                let events: Vec<_> = revisions
                    .iter()
                    .flat_map(|revision| revision.events.iter())
                    .filter(|event| watch.wants(event))
                    .map(|event| convert::event_ref(event, prev_kv))
                    .collect();
                (events, through)
            }
            FeedRead::Gone => {
                self.stats().history_reads.fetch_add(1, Ordering::Relaxed);
                let (key, range_end, from) =
                    (watch.key.clone(), watch.range_end.clone(), watch.next);
                // As this member has applied it: a watch follows the member it is on.
                let view = match self.shared.view(false).await {
                    Ok(view) => view,
                    Err(_) => return Err(End::Stopped),
                };
                let read = tokio::task::spawn_blocking(move || {
                    view.store.changes(&key, &range_end, from, BATCH_BYTES)
                })
                .await
                .map_err(|_| End::Stopped)?;
                match read {
                    Ok(changes) => {
                        let events = changes
                            .events
                            .into_iter()
                            .filter(|event| watch.wants(event))
                            .map(|mut event| {
                                if !prev_kv {
                                    event.prev_kv = None;
                                }
                                convert::event(event)
                            })
                            .collect();
                        (events, changes.through)
                    }
                    Err(kv::KvError::Compacted { compact_revision }) => {
                        return self.compacted(id, compact_revision).await;
                    }
                    Err(_) => return Ok(()),
                }
            }
        };
        let Some(watch) = self.watches.get_mut(&id) else { return Ok(()) };
        // Not past `from` (a view older than the feed's head): the next pass reads again.
        if through < watch.next {
            return Ok(());
        }
        watch.next = through + 1;
        if events.is_empty() {
            return Ok(());
        }
        watch.sent_since_tick = true;
        self.shared.watch_stats.events_sent.fetch_add(events.len() as u64, Ordering::Relaxed);
        let fragment = watch.fragment;
        let response = pb::WatchResponse {
            header: Some(self.header(through)),
            watch_id: id,
            events,
            ..pb::WatchResponse::default()
        };
        if fragment {
            for part in fragments(response, FRAGMENT_BYTES) {
                self.send(part).await?;
            }
            Ok(())
        } else {
            self.send(response).await
        }
    }

    /// The history watch `id` needs is compacted away: the watch ends with the
    /// compaction revision, as etcd ends it.
    async fn compacted(&mut self, id: i64, compact_revision: i64) -> Result<(), End> {
        self.slot.remove(id);
        if self.watches.remove(&id).is_some() {
            self.stats().watches.fetch_sub(1, Ordering::Relaxed);
            self.stats().compacted.fetch_add(1, Ordering::Relaxed);
        }
        let response = pb::WatchResponse {
            header: Some(self.header(self.subscription.feed().head())),
            watch_id: id,
            canceled: true,
            compact_revision,
            cancel_reason: REASON_COMPACTED.to_string(),
            ..pb::WatchResponse::default()
        };
        self.send(response).await
    }
}

/// `response` as etcd's fragmenting watch sends it: whole when it fits in `limit` bytes
/// or has one event, else in parts of as many events as fit (at least one), every part
/// but the last marked `fragment`.
fn fragments(response: pb::WatchResponse, limit: usize) -> Vec<pb::WatchResponse> {
    if response.encoded_len() < limit || response.events.len() < 2 {
        return vec![response];
    }
    let empty = pb::WatchResponse { events: Vec::new(), fragment: true, ..response.clone() };
    let base = empty.encoded_len();
    let mut parts = Vec::new();
    let mut part = empty.clone();
    let mut bytes = base;
    for event in response.events {
        let size = event.encoded_len() + 1 + prost::length_delimiter_len(event.encoded_len());
        if !part.events.is_empty() && bytes + size >= limit {
            parts.push(std::mem::replace(&mut part, empty.clone()));
            bytes = base;
        }
        bytes += size;
        part.events.push(event);
    }
    part.fragment = false;
    parts.push(part);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, value_bytes: usize) -> crate::mvccpb::Event {
        crate::mvccpb::Event {
            r#type: 0,
            kv: Some(crate::mvccpb::KeyValue {
                key: key.as_bytes().to_vec(),
                value: vec![b'v'; value_bytes],
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn a_response_within_the_limit_goes_whole() {
        let response = pb::WatchResponse {
            watch_id: 3,
            events: vec![event("a", 10), event("b", 10)],
            ..Default::default()
        };
        let parts = fragments(response.clone(), 1_000);
        assert_eq!(parts, vec![response]);
    }

    #[test]
    fn a_large_response_is_split_with_every_part_but_the_last_marked() {
        let events: Vec<_> = (0..10).map(|i| event(&format!("k{i}"), 300)).collect();
        let response =
            pb::WatchResponse { watch_id: 3, events: events.clone(), ..Default::default() };
        let parts = fragments(response, 1_000);
        assert!(parts.len() > 3, "{} parts", parts.len());
        assert!(parts.iter().all(|part| part.encoded_len() < 1_000 && part.watch_id == 3));
        assert!(parts[..parts.len() - 1].iter().all(|part| part.fragment));
        assert!(!parts[parts.len() - 1].fragment);
        let joined: Vec<_> = parts.into_iter().flat_map(|part| part.events).collect();
        assert_eq!(joined, events);
    }

    #[test]
    fn one_event_larger_than_the_limit_is_sent_alone() {
        let response = pb::WatchResponse {
            events: vec![event("a", 5_000), event("b", 5_000)],
            ..Default::default()
        };
        let parts = fragments(response, 1_000);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].fragment && !parts[1].fragment);
    }
}
