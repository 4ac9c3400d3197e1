//! Client requests in the loop: writes proposed and retried until applied or expired,
//! linearizable reads batched into one read-index request per turn and answered with a
//! view of the store once their index is applied.

use super::*;

pub(super) struct PendingWrite {
    pub(super) encoded: Vec<u8>,
    pub(super) deadline: Instant,
    pub(super) next_retry: Instant,
    pub(super) reply: oneshot::Sender<Result<WriteReply, NodeError>>,
}

pub(super) struct PendingRead {
    pub(super) deadline: Instant,
    pub(super) next_retry: Instant,
    /// Set once raft confirmed leadership at this index.
    pub(super) read_index: Option<u64>,
    /// The read-index request it waits on (see [`Node::ask_read_index`]).
    pub(super) batch: u64,
    pub(super) reply: oneshot::Sender<Result<ReadView, NodeError>>,
}

impl<C: Clock, T: Transport, S: LogStore + raft::Storage> Node<C, T, S> {
    pub(super) fn accept(&mut self, request: ClientRequest) {
        let now = self.clock.now();
        match request {
            ClientRequest::Write { proposal, deadline, reply } => {
                if self.writes.len() >= PENDING_WRITES_MAX {
                    self.handle.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(NodeError::TooManyRequests));
                    return;
                }
                let encoded = proposal.encode();
                // A dropped proposal stays pending and is retried; only the deadline ends it.
                let next_retry = match self.forward_ahead_to_reachable() {
                    // Gulf Stream: the incoming leader proposes it the moment it leads (its
                    // own writes wait here, the others' in `held`); if the transfer fails,
                    // the retry after the boundary sends it to the actual leader.
                    Some((target, until_boundary)) => {
                        if target != self.config.id {
                            self.transport.send(vec![propose_message(
                                self.config.id,
                                target,
                                &encoded,
                            )]);
                        }
                        self.handle.counters.forwarded_ahead.fetch_add(1, Ordering::Relaxed);
                        let retry = now + until_boundary + self.forward_grace();
                        self.due_at = Some(self.due_at.map_or(retry, |due| due.min(retry)));
                        retry
                    }
                    None => {
                        let _ = self.raw.propose(Vec::new(), encoded.clone());
                        now + self.config.retry_interval
                    }
                };
                self.writes
                    .insert(proposal.id, PendingWrite { encoded, deadline, next_retry, reply });
            }
            ClientRequest::Read { linearizable, reply, .. }
                if !linearizable || self.planted(crate::PlantedBug::ReadWithoutReadIndex) =>
            {
                let _ = reply.send(Ok(self.read_view()));
            }
            ClientRequest::Read { deadline, reply, .. } => {
                if self.reads.len() >= PENDING_READS_MAX {
                    self.handle.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(NodeError::TooManyRequests));
                    return;
                }
                let id = self.next_read_id;
                self.next_read_id += 1;
                self.unasked_reads.push(id);
                self.reads.insert(
                    id,
                    PendingRead {
                        deadline,
                        next_retry: now + self.config.retry_interval,
                        read_index: None,
                        batch: 0,
                        reply,
                    },
                );
            }
            ClientRequest::Digest { reply } => {
                let _ = reply.send(self.machine.clone());
            }
            ClientRequest::InjectPanic => panic!("fault injection: the Raft loop panics"),
            ClientRequest::TransferLeader { target, reply } => {
                let result = if self.raw.raft.state != StateRole::Leader {
                    Err(NodeError::NoLeader)
                } else {
                    self.raw.transfer_leader(target);
                    Ok(())
                };
                let _ = reply.send(result);
            }
        }
    }

    pub(super) fn read_view(&self) -> ReadView {
        ReadView { store: self.machine.store().clone(), term: self.term() }
    }

    pub(super) fn expire_and_retry(&mut self, now: Instant) {
        let leader_known = self.raw.raft.leader_id != raft::INVALID_ID;
        let expired: Vec<RequestId> =
            self.writes.iter().filter(|(_, w)| now >= w.deadline).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(write) = self.writes.remove(&id) {
                let error = if leader_known { NodeError::Timeout } else { NodeError::NoLeader };
                let _ = write.reply.send(Err(error));
            }
        }
        // Held writes whose turn did not come (the transfer failed): on to the actual leader.
        if self.raw.raft.state != StateRole::Leader && !self.held.is_empty() {
            let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|(_, release)| now >= *release);
            self.held = waiting;
            for (message, _) in late {
                self.handle.counters.held_fallback.fetch_add(1, Ordering::Relaxed);
                let _ = self.raw.step(message);
            }
        }
        let retry_interval = self.config.retry_interval;
        let mut retried = 0;
        for write in self.writes.values_mut().filter(|w| now >= w.next_retry) {
            write.next_retry = now + retry_interval;
            if leader_known {
                let _ = self.raw.propose(Vec::new(), write.encoded.clone());
                retried += 1;
            }
        }
        self.handle.counters.retried.fetch_add(retried as u64, Ordering::Relaxed);
        let expired: Vec<u64> =
            self.reads.iter().filter(|(_, r)| now >= r.deadline).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(read) = self.reads.remove(&id) {
                let error = if leader_known { NodeError::Timeout } else { NodeError::NoLeader };
                let _ = read.reply.send(Err(error));
            }
        }
        // A new leader drops read-index requests until it has committed in its term: ask again.
        let mut again = Vec::new();
        for (id, read) in
            self.reads.iter_mut().filter(|(_, r)| r.read_index.is_none() && now >= r.next_retry)
        {
            read.next_retry = now + retry_interval;
            again.push(*id);
        }
        self.unasked_reads.extend(again);
        self.ask_read_index();
    }

    /// One read-index request for every linearizable read that arrived since the last:
    /// the leader confirms its lead with one heartbeat round for all of them, as etcd's
    /// read loop does, instead of one round per read. Each read waits for an index at
    /// least the commit index when it arrived, so the batch stays linearizable.
    pub(super) fn ask_read_index(&mut self) {
        if self.unasked_reads.is_empty() {
            return;
        }
        let batch = self.next_read_batch;
        self.next_read_batch += 1;
        for id in self.unasked_reads.drain(..) {
            if let Some(read) = self.reads.get_mut(&id) {
                read.batch = batch;
            }
        }
        // The leader keeps one pending request per context and ignores another with the
        // same one: the context must be unique in the cluster, not only here (every
        // member's counter starts at 1, so a follower's first reads would collide with
        // the leader's own and wait out retries).
        let mut context = self.config.id.to_be_bytes().to_vec();
        context.extend_from_slice(&batch.to_be_bytes());
        self.raw.read_index(context);
    }

    pub(super) fn serve_reads(&mut self) {
        let applied = self.machine.applied_index();
        let ready: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.read_index.is_some_and(|index| index <= applied))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            if let Some(read) = self.reads.remove(&id) {
                let _ = read.reply.send(Ok(self.read_view()));
            }
        }
    }
}
