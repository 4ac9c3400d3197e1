//! `etcdserverpb.Watch`: many watches per bidirectional stream, each on a key, a range
//! or a prefix, from any revision the store's history still holds.
//!
//! Every stream is one task, woken by the hub ([`crate::watch_hub`]) only when an
//! applied revision touches one of its watches. It reads the node's change feed
//! ([`worknode_raft::changes`]) for the revisions applied since each watch's last, and
//! the store's history for revisions the feed no longer holds (a watch that starts in
//! the past, or one whose client read slower than the cluster wrote). Either way a watch
//! delivers every revision once, in order; its client resumes on any member from the
//! revision after the last it saw. The task waits for its client when the client reads
//! slowly, and nothing else does: the Raft loop never waits for a watcher, and a watcher
//! never holds more than one batch of events, so a slow client costs memory for one
//! batch and, if compaction passes it by, its watch (cancelled with the compaction
//! revision, as etcd does).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};
use worknode_kv as kv;
use worknode_raft::changes::Subscription;

use crate::convert::REQUEST_BYTES_MAX;
use crate::pb;
use crate::pb::watch_request::RequestUnion;
use crate::service::Shared;
use crate::watch_hub::{Slot, WatchHub};

mod delivery;

/// Events read per watch at a time (from the feed or from history): about one message.
const BATCH_BYTES: usize = REQUEST_BYTES_MAX;

/// A fragmenting watch splits a response larger than this (etcd's request limit plus its
/// allowance for gRPC framing).
const FRAGMENT_BYTES: usize = REQUEST_BYTES_MAX + 512 * 1024;

/// Responses queued for a client before its stream's task waits for it to read: each is
/// about a batch, so a client that stops reading holds a few MiB, not the cluster's
/// write rate.
const OUTBOUND_MAX: usize = 4;

/// etcd's `AutoWatchID`: the client asks the server to choose.
const AUTO_WATCH_ID: i64 = 0;

/// etcd's `InvalidWatchID`: a response about no one watch (a refusal, progress for all).
const INVALID_WATCH_ID: i64 = -1;

/// etcd's reasons, which clients show.
const REASON_COMPACTED: &str = "mvcc: required revision has been compacted";
const REASON_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const REASON_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// What the watch streams of a member do, for `/metrics`.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Open watch streams.
    pub streams: AtomicU64,
    /// Watches on them.
    pub watches: AtomicU64,
    /// Events sent.
    pub events_sent: AtomicU64,
    /// Batches read from the store's history (the feed no longer held them).
    pub history_reads: AtomicU64,
    /// Watches ended because compaction passed their next revision.
    pub compacted: AtomicU64,
}

/// `etcdserverpb.Watch`.
#[derive(Clone, Debug)]
pub struct WatchService {
    shared: Arc<Shared>,
    /// Started with the first stream, on the runtime that serves the streams.
    hub: Arc<std::sync::OnceLock<Arc<WatchHub>>>,
}

impl WatchService {
    /// Watches served through `shared`'s node; watches that ask for progress
    /// notifications get one every [`Shared::watch_progress_interval`] they receive
    /// nothing else.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared, hub: Arc::default() }
    }
}

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = Shared::requires_leader(&request);
        Ok(Response::new(self.open(request.into_inner(), require_leader)?))
    }
}

/// What a stream's client sends.
pub(crate) trait Inbound:
    tokio_stream::Stream<Item = Result<pb::WatchRequest, Status>> + Send + Unpin + 'static
{
}

impl<S> Inbound for S where
    S: tokio_stream::Stream<Item = Result<pb::WatchRequest, Status>> + Send + Unpin + 'static
{
}

impl WatchService {
    /// Opens a watch stream reading `inbound` (gRPC's, or the JSON gateway's requests).
    pub(crate) fn open(
        &self,
        inbound: impl Inbound,
        require_leader: bool,
    ) -> Result<ReceiverStream<Result<pb::WatchResponse, Status>>, Status> {
        if require_leader && self.shared.node.status().leader_id == 0 {
            return Err(Shared::no_leader());
        }
        let (out, responses) = mpsc::channel(OUTBOUND_MAX);
        self.shared.watch_stats.streams.fetch_add(1, Ordering::Relaxed);
        let changes = self.shared.node.changes();
        let hub = self.hub.get_or_init(|| WatchHub::start(Arc::clone(changes)));
        let stream = WatchStream {
            shared: Arc::clone(&self.shared),
            slot: hub.slot(),
            skip_floor: i64::MAX,
            subscription: changes.subscribe(),
            out,
            watches: BTreeMap::new(),
            next_id: 0,
            progress_asked: false,
            require_leader,
        };
        tokio::spawn(stream.run(inbound, self.shared.watch_progress_interval));
        Ok(ReceiverStream::new(responses))
    }
}

/// One watch of a stream.
#[derive(Debug)]
struct Watch {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The next revision to deliver.
    next: i64,
    /// The newest revision the hub checked before this watch was added: the watch reads
    /// its way past it before it skips anything.
    unchecked_through: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// Events went out since the last progress tick (the tick then sends nothing).
    sent_since_tick: bool,
}

impl Watch {
    fn wants(&self, event: &kv::Event) -> bool {
        let filtered = match event.kind {
            kv::EventKind::Put => self.no_put,
            kv::EventKind::Delete => self.no_delete,
        };
        !filtered && kv::in_range(&event.kv.key, &self.key, &self.range_end)
    }
}

/// Why a stream's task ends.
enum End {
    /// The client went away (or closed its side).
    Client,
    /// The node stopped.
    Stopped,
    /// The member has no leader and the client requires one.
    NoLeader,
}

struct WatchStream {
    shared: Arc<Shared>,
    /// The hub wakes this stream for revisions its watches want.
    slot: Slot,
    /// No watch moves past this revision without reading it: a match the hub reported
    /// that some watch has not reached yet (`i64::MAX`: none).
    skip_floor: i64,
    /// Keeps the loop building events while the stream lives.
    subscription: Subscription,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watches: BTreeMap<i64, Watch>,
    next_id: i64,
    /// A `WatchProgressRequest` waits for every watch to catch up.
    progress_asked: bool,
    /// The client asked etcd's `hasleader`: the stream ends while the member has no
    /// leader.
    require_leader: bool,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let stats = &self.shared.watch_stats;
        stats.streams.fetch_sub(1, Ordering::Relaxed);
        stats.watches.fetch_sub(self.watches.len() as u64, Ordering::Relaxed);
    }
}

impl WatchStream {
    fn stats(&self) -> &WatchStats {
        &self.shared.watch_stats
    }

    async fn run(mut self, mut inbound: impl Inbound, progress_interval: Duration) {
        // A client that closes its side has sent all its requests; its watches go on
        // until it goes away (as etcd's do).
        let mut inbound_open = true;
        let mut progress = tokio::time::interval(progress_interval);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        progress.reset();
        // etcd looks once an election timeout for streams that require a leader.
        let mut leader_check = tokio::time::interval(self.shared.election_timeout);
        leader_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        leader_check.reset();
        let end = loop {
            let behind = match self.deliver().await {
                Ok(behind) => behind,
                Err(end) => break end,
            };
            let step = if behind {
                // Still catching up: take a request if one is waiting, then go on.
                tokio::select! {
                    biased;
                    request = inbound.next(), if inbound_open => self.on_request(request, &mut inbound_open).await,
                    () = std::future::ready(()) => Ok(()),
                }
            } else {
                tokio::select! {
                    request = inbound.next(), if inbound_open => self.on_request(request, &mut inbound_open).await,
                    () = self.slot.wake.notified() => Ok(()),
                    () = self.out.closed() => Err(End::Client),
                    _ = progress.tick() => self.progress_tick().await,
                    _ = leader_check.tick(), if self.require_leader => self.check_leader(),
                }
            };
            if let Err(end) = step {
                break end;
            }
        };
        match end {
            End::Stopped => {
                let _ = self.out.send(Err(Status::unavailable("etcdserver: server stopped"))).await;
            }
            End::NoLeader => {
                let _ = self.out.send(Err(Shared::no_leader())).await;
            }
            End::Client => {}
        }
    }

    async fn on_request(
        &mut self,
        request: Option<Result<pb::WatchRequest, Status>>,
        inbound_open: &mut bool,
    ) -> Result<(), End> {
        let request = match request {
            Some(Ok(request)) => request,
            Some(Err(_)) => return Err(End::Client),
            None => {
                *inbound_open = false;
                return Ok(());
            }
        };
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watches.remove(&cancel.watch_id).is_none() {
                    // etcd answers nothing for a watch it does not have.
                    return Ok(());
                }
                self.slot.remove(cancel.watch_id);
                self.stats().watches.fetch_sub(1, Ordering::Relaxed);
                let response = pb::WatchResponse {
                    header: Some(self.header(self.subscription.feed().head())),
                    watch_id: cancel.watch_id,
                    canceled: true,
                    ..pb::WatchResponse::default()
                };
                self.send(response).await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_asked = true;
                Ok(())
            }
            // A request of a kind this server does not know ends nothing (as in etcd).
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> Result<(), End> {
        let head = self.subscription.feed().head();
        let refuse = |reason: &str| pb::WatchResponse {
            header: Some(self.header(head)),
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..pb::WatchResponse::default()
        };
        // An empty key is the smallest key, "\0" (etcd).
        let key = if create.key.is_empty() { vec![0] } else { create.key };
        let range_end = create.range_end;
        let refusal = if create.start_revision < 0 {
            Some(REASON_COMPACTED)
        } else if !range_end.is_empty() && range_end != [0] && key >= range_end {
            Some(REASON_EMPTY_RANGE)
        } else if create.watch_id != AUTO_WATCH_ID && self.watches.contains_key(&create.watch_id) {
            Some(REASON_DUPLICATE_ID)
        } else {
            None
        };
        if let Some(reason) = refusal {
            let response = refuse(reason);
            return self.send(response).await;
        }
        let id = if create.watch_id == AUTO_WATCH_ID {
            while self.watches.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else {
            create.watch_id
        };
        let filters =
            |kind: pb::watch_create_request::FilterType| create.filters.contains(&(kind as i32));
        let unchecked_through = self.slot.add(id, &key, &range_end);
        let watch = Watch {
            key,
            range_end,
            next: if create.start_revision == 0 { head + 1 } else { create.start_revision },
            unchecked_through,
            no_put: filters(pb::watch_create_request::FilterType::Noput),
            no_delete: filters(pb::watch_create_request::FilterType::Nodelete),
            prev_kv: create.prev_kv,
            fragment: create.fragment,
            progress_notify: create.progress_notify,
            sent_since_tick: false,
        };
        self.watches.insert(id, watch);
        self.stats().watches.fetch_add(1, Ordering::Relaxed);
        let response = pb::WatchResponse {
            header: Some(self.header(head)),
            watch_id: id,
            created: true,
            ..pb::WatchResponse::default()
        };
        self.send(response).await
    }

    /// Every watch that asked for progress notifications, is caught up and sent nothing
    /// since the last tick hears the current revision.
    async fn progress_tick(&mut self) -> Result<(), End> {
        let head = self.subscription.feed().head();
        let mut quiet = Vec::new();
        for (id, watch) in &mut self.watches {
            if watch.progress_notify && !watch.sent_since_tick && watch.next > head {
                quiet.push(*id);
            }
            watch.sent_since_tick = false;
        }
        for id in quiet {
            let response = pb::WatchResponse {
                header: Some(self.header(head)),
                watch_id: id,
                ..pb::WatchResponse::default()
            };
            self.send(response).await?;
        }
        Ok(())
    }

    fn check_leader(&self) -> Result<(), End> {
        if self.shared.node.status().leader_id == 0 {
            return Err(End::NoLeader);
        }
        Ok(())
    }

    fn header(&self, revision: i64) -> pb::ResponseHeader {
        self.shared.header_at(revision)
    }

    async fn send(&self, response: pb::WatchResponse) -> Result<(), End> {
        self.out.send(Ok(response)).await.map_err(|_| End::Client)
    }
}
