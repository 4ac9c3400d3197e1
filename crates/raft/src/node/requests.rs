//! Client requests in the loop. The policy — pending writes and their retries, reads
//! batched into read-index requests — is [`crate::engine::requests`]; here the loop routes
//! each new write (to the leader, or ahead to the incoming one), carries out the policy's
//! actions on raft-rs and the transport, and answers reads with a view of the store.

use super::*;
use crate::engine::requests::{Action, Route};

/// A write's answer, sent once it is applied here.
pub(super) type WriteTx = oneshot::Sender<Result<WriteReply, NodeError>>;
/// A linearizable read's answer, sent once its read index is applied.
pub(super) type ReadTx = oneshot::Sender<Result<ReadView, NodeError>>;

impl<C: Clock, T: Transport, S: LogStore + raft::Storage> Node<C, T, S> {
    pub(super) fn accept(&mut self, request: ClientRequest) {
        let now = self.clock.now();
        match request {
            ClientRequest::Write { proposal, deadline, reply } => {
                if !self.pending.write_room() {
                    return self.too_many(reply);
                }
                let route = self.write_route(now);
                match self.pending.write(
                    proposal.id,
                    proposal.encode(),
                    deadline,
                    reply,
                    now,
                    route,
                ) {
                    Ok(action) => self.act_on_requests(action),
                    Err(reply) => self.too_many(reply),
                }
            }
            ClientRequest::Read { linearizable, reply, .. }
                if !linearizable || self.planted(crate::PlantedBug::ReadWithoutReadIndex) =>
            {
                let _ = reply.send(Ok(self.read_view()));
            }
            ClientRequest::Read { deadline, reply, .. } => {
                if let Err(reply) = self.pending.read(deadline, reply, now) {
                    self.too_many(reply);
                }
            }
            ClientRequest::Digest { reply } => {
                let _ = reply.send(self.machine.clone());
            }
            ClientRequest::Leases { reply } => {
                let leases = self.machine.leases().clone();
                let remaining = leases
                    .iter()
                    .map(|(id, _)| {
                        (
                            id,
                            self.leases.remaining(id, now).map_or(Duration::ZERO, |(left, _)| left),
                        )
                    })
                    .collect();
                let report = LeaseReport {
                    leases,
                    remaining,
                    revision: self.machine.store().revision(),
                    term: self.term(),
                    store: self.machine.store().clone(),
                    applied_index: self.machine.applied_index(),
                };
                let _ = reply.send(report);
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

    /// Where a new write goes: ahead to the incoming leader near a turn boundary (Gulf
    /// Stream: it proposes the write the moment it leads; its own writes wait here, the
    /// others' in `held`), retried after the boundary at the actual leader if the transfer
    /// fails; else to raft-rs here.
    fn write_route(&mut self, now: Instant) -> Route {
        let Some((target, until_boundary)) = self.forward_ahead_to_reachable() else {
            return Route::Leader;
        };
        self.handle.counters.forwarded_ahead.fetch_add(1, Ordering::Relaxed);
        let retry_at = now + until_boundary + self.forward_grace();
        self.due_at = Some(self.due_at.map_or(retry_at, |due| due.min(retry_at)));
        Route::Ahead { target, retry_at }
    }

    fn too_many<V>(&self, reply: oneshot::Sender<Result<V, NodeError>>) {
        self.handle.counters.rejected.fetch_add(1, Ordering::Relaxed);
        let _ = reply.send(Err(NodeError::TooManyRequests));
    }

    /// Carries out what the requests policy returned.
    pub(super) fn act_on_requests(
        &mut self,
        actions: impl IntoIterator<Item = Action<WriteTx, ReadTx>>,
    ) {
        for action in actions {
            match action {
                // A dropped proposal stays pending and is retried; only the deadline ends it.
                Action::Propose(data) => {
                    let _ = self.raw.propose(Vec::new(), data);
                }
                Action::ForwardAhead { target, data } => {
                    self.transport.send(vec![propose_message(self.config.id, target, &data)]);
                }
                Action::ReadIndex(context) => self.raw.read_index(context),
                Action::FailWrite(reply, error) => {
                    let _ = reply.send(Err(error));
                }
                Action::FailRead(reply, error) => {
                    let _ = reply.send(Err(error));
                }
            }
        }
    }

    pub(super) fn read_view(&self) -> ReadView {
        ReadView { store: self.machine.store().clone(), term: self.term() }
    }

    /// Requests past their deadline fail, writes due are proposed again, unanswered reads
    /// asked for again; writes held for a turn that did not come go to the actual leader.
    pub(super) fn expire_and_retry(&mut self, now: Instant) {
        if self.raw.raft.state != StateRole::Leader {
            for message in self.held.late(now) {
                self.handle.counters.held_fallback.fetch_add(1, Ordering::Relaxed);
                let _ = self.raw.step(message);
            }
        }
        let leader_known = self.raw.raft.leader_id != raft::INVALID_ID;
        let actions = self.pending.expire_and_retry(now, leader_known);
        let retried = actions.iter().filter(|a| matches!(a, Action::Propose(_))).count();
        self.handle.counters.retried.fetch_add(retried as u64, Ordering::Relaxed);
        self.act_on_requests(actions);
    }

    /// One read-index request for the reads that arrived since the last.
    pub(super) fn ask_read_index(&mut self) {
        let action = self.pending.ask_read_index();
        self.act_on_requests(action);
    }

    /// Answers the reads whose read index is applied.
    pub(super) fn serve_reads(&mut self) {
        for reply in self.pending.ready_reads(self.machine.applied_index()) {
            let _ = reply.send(Ok(self.read_view()));
        }
    }
}
