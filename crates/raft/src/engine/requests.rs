//! Client requests: writes proposed and retried until applied or expired, linearizable
//! reads batched into one read-index request and answered once their index is applied.
//!
//! Any member accepts requests. A write raft-rs drops (no leader, a transfer under way,
//! lost on the way) stays pending and is proposed again every retry interval until it is
//! applied or its deadline passes; the state machine applies each request id at most
//! once, so a retry never applies twice. Reads that arrive between two read-index
//! requests share the next one: the leader confirms its lead with one heartbeat round for
//! all of them, as etcd's read loop does. Each read waits for an index at least the
//! commit index when it arrived, so a shared batch stays linearizable.
//!
//! Generic over the reply handles (`W` for writes, `R` for reads): the loop's are oneshot
//! senders; the tests' are plain values, so they assert which request an action answers.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use worknode_kv::RequestId;

use super::FixedHasher;
use crate::node::NodeError;

/// Writes proposed and not yet applied, per member.
pub const PENDING_WRITES_MAX: usize = 16_384;
/// Linearizable reads waiting for their read index, per member.
pub const PENDING_READS_MAX: usize = 16_384;

/// Where a new write goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To raft-rs here (a follower's proposal travels to the leader through it).
    Leader,
    /// Ahead to the incoming leader (Gulf Stream), which proposes it the moment it leads.
    Ahead {
        /// The incoming leader; this member itself holds its own write here.
        target: u64,
        /// When the write goes to the actual leader if the handoff has not come.
        retry_at: Instant,
    },
}

/// What the loop does for requests.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<W, R> {
    /// Propose this encoded write to raft-rs.
    Propose(Vec<u8>),
    /// Send an encoded write ahead to the incoming leader.
    ForwardAhead {
        /// The incoming leader.
        target: u64,
        /// The encoded write.
        data: Vec<u8>,
    },
    /// Ask raft-rs for a read index with this context.
    ReadIndex(Vec<u8>),
    /// Answer a write with this error.
    FailWrite(W, NodeError),
    /// Answer a read with this error.
    FailRead(R, NodeError),
}

struct Write<W> {
    encoded: Vec<u8>,
    deadline: Instant,
    next_retry: Instant,
    reply: W,
}

struct Read<R> {
    deadline: Instant,
    next_retry: Instant,
    /// Set once raft-rs confirmed the lead at this index.
    read_index: Option<u64>,
    /// The read-index request it waits on.
    batch: u64,
    reply: R,
}

/// The pending requests of one member.
pub struct Requests<W, R> {
    member: u64,
    retry_interval: Duration,
    /// Fixed hashing: retries go out in an order the inputs alone decide (simulation).
    writes: HashMap<RequestId, Write<W>, FixedHasher>,
    reads: BTreeMap<u64, Read<R>>,
    next_read: u64,
    /// Reads not yet covered by a read-index request.
    unasked: Vec<u64>,
    next_batch: u64,
}

impl<W, R> std::fmt::Debug for Requests<W, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests")
            .field("writes", &self.writes.len())
            .field("reads", &self.reads.len())
            .field("unasked", &self.unasked.len())
            .finish()
    }
}

impl<W, R> Requests<W, R> {
    /// No requests yet, for `member`, retrying every `retry_interval`.
    pub fn new(member: u64, retry_interval: Duration) -> Self {
        Self {
            member,
            retry_interval,
            writes: HashMap::default(),
            reads: BTreeMap::new(),
            next_read: 1,
            unasked: Vec::new(),
            next_batch: 1,
        }
    }

    /// Writes waiting to be applied.
    pub fn pending_writes(&self) -> usize {
        self.writes.len()
    }

    /// Whether a new write fits (the loop asks before it routes one: routing counts
    /// writes sent ahead).
    pub fn write_room(&self) -> bool {
        self.writes.len() < PENDING_WRITES_MAX
    }

    /// A new write, proposed or sent ahead by the action; its reply back when this member
    /// has as many writes pending as it may (the caller answers it `TooManyRequests`).
    pub fn write(
        &mut self,
        id: RequestId,
        encoded: Vec<u8>,
        deadline: Instant,
        reply: W,
        now: Instant,
        route: Route,
    ) -> Result<Option<Action<W, R>>, W> {
        if !self.write_room() {
            return Err(reply);
        }
        let (action, next_retry) = match route {
            Route::Leader => (Some(Action::Propose(encoded.clone())), now + self.retry_interval),
            Route::Ahead { target, retry_at } if target == self.member => (None, retry_at),
            Route::Ahead { target, retry_at } => {
                (Some(Action::ForwardAhead { target, data: encoded.clone() }), retry_at)
            }
        };
        self.writes.insert(id, Write { encoded, deadline, next_retry, reply });
        Ok(action)
    }

    /// The write with this id was applied: its reply, if this member accepted it.
    pub fn applied(&mut self, id: &RequestId) -> Option<W> {
        self.writes.remove(id).map(|write| write.reply)
    }

    /// A new linearizable read, asked for with the next read-index request; its reply
    /// back when this member has as many reads pending as it may.
    pub fn read(&mut self, deadline: Instant, reply: R, now: Instant) -> Result<(), R> {
        if self.reads.len() >= PENDING_READS_MAX {
            return Err(reply);
        }
        let id = self.next_read;
        self.next_read += 1;
        self.unasked.push(id);
        let next_retry = now + self.retry_interval;
        self.reads.insert(id, Read { deadline, next_retry, read_index: None, batch: 0, reply });
        Ok(())
    }

    /// One read-index request for every read that arrived since the last, if any did.
    pub fn ask_read_index(&mut self) -> Option<Action<W, R>> {
        if self.unasked.is_empty() {
            return None;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        for id in self.unasked.drain(..) {
            if let Some(read) = self.reads.get_mut(&id) {
                read.batch = batch;
            }
        }
        // The leader keeps one pending request per context and ignores another with the
        // same one: the context must be unique in the cluster, not only here (every
        // member's counter starts at 1, so a follower's first reads would collide with
        // the leader's own and wait out retries).
        let mut context = self.member.to_be_bytes().to_vec();
        context.extend_from_slice(&batch.to_be_bytes());
        Some(Action::ReadIndex(context))
    }

    /// raft-rs confirmed the lead at `index` for the request with `context`: the reads it
    /// covers wait for that index to be applied. Contexts of other members are not ours.
    pub fn read_index_confirmed(&mut self, context: &[u8], index: u64) {
        let Some((member, batch)) = context.split_first_chunk::<8>() else {
            return;
        };
        let Ok(batch) = <[u8; 8]>::try_from(batch) else {
            return;
        };
        if u64::from_be_bytes(*member) != self.member {
            return;
        }
        let batch = u64::from_be_bytes(batch);
        for read in self.reads.values_mut().filter(|r| r.batch == batch) {
            read.read_index = read.read_index.or(Some(index));
        }
    }

    /// The replies of the reads whose index is applied, in arrival order; the caller
    /// answers each with a view of the store now.
    pub fn ready_reads(&mut self, applied: u64) -> Vec<R> {
        if self.reads.is_empty() {
            return Vec::new();
        }
        let ready: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.read_index.is_some_and(|index| index <= applied))
            .map(|(id, _)| *id)
            .collect();
        ready.into_iter().filter_map(|id| self.reads.remove(&id)).map(|r| r.reply).collect()
    }

    /// On a tick (or when a write sent ahead falls due): requests past their deadline fail
    /// (`Timeout`, or `NoLeader` when no leader is known), writes due for a retry are
    /// proposed again if a leader is known, and reads whose read index never came (a new
    /// leader drops read-index requests until it has committed in its term) are asked for
    /// again.
    pub fn expire_and_retry(&mut self, now: Instant, leader_known: bool) -> Vec<Action<W, R>> {
        let error = if leader_known { NodeError::Timeout } else { NodeError::NoLeader };
        let mut actions = Vec::new();
        let expired: Vec<RequestId> =
            self.writes.iter().filter(|(_, w)| now >= w.deadline).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(write) = self.writes.remove(&id) {
                actions.push(Action::FailWrite(write.reply, error.clone()));
            }
        }
        for write in self.writes.values_mut().filter(|w| now >= w.next_retry) {
            write.next_retry = now + self.retry_interval;
            if leader_known {
                actions.push(Action::Propose(write.encoded.clone()));
            }
        }
        let expired: Vec<u64> =
            self.reads.iter().filter(|(_, r)| now >= r.deadline).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(read) = self.reads.remove(&id) {
                actions.push(Action::FailRead(read.reply, error.clone()));
            }
        }
        for (id, read) in
            self.reads.iter_mut().filter(|(_, r)| r.read_index.is_none() && now >= r.next_retry)
        {
            read.next_retry = now + self.retry_interval;
            self.unasked.push(*id);
        }
        actions.extend(self.ask_read_index());
        actions
    }

    /// A new leader (or a leader taking writes again after giving a handoff up): every
    /// pending write is proposed again at once and every read without its index asked for
    /// again, so what waited through a handoff (refused while the transfer ran, or sent to
    /// a member that did not take over and lost) reaches the leader the moment it leads.
    pub fn leader_changed(&mut self, now: Instant) -> Vec<Action<W, R>> {
        let mut actions = Vec::with_capacity(self.writes.len() + 1);
        for write in self.writes.values_mut() {
            actions.push(Action::Propose(write.encoded.clone()));
            write.next_retry = now + self.retry_interval;
        }
        let unanswered = self.reads.iter().filter(|(_, r)| r.read_index.is_none());
        self.unasked.extend(unanswered.map(|(id, _)| *id));
        actions.extend(self.ask_read_index());
        actions
    }

    /// Every pending request's reply, for the loop that stops.
    pub fn drain(&mut self) -> (Vec<W>, Vec<R>) {
        let writes = self.writes.drain().map(|(_, w)| w.reply).collect();
        let reads = std::mem::take(&mut self.reads).into_values().map(|r| r.reply).collect();
        self.unasked.clear();
        (writes, reads)
    }
}

#[cfg(test)]
mod tests;
