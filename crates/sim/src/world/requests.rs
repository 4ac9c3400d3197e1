//! Requests from outside the members: the clients' calls and their answers, digest
//! samples, and the final checks' own requests.

use super::*;

impl World {
    pub(super) fn call(&mut self) {
        if !self.calling {
            return;
        }
        let ids = self.ids();
        for index in 0..self.clients.len() {
            let client = &mut self.clients[index];
            if client.waiting.is_some() || client.next_call > self.now {
                continue;
            }
            let (member, key, call) = client.pick(&ids, &mut self.next_value);
            let deadline = self.base + Duration::from_nanos(self.now + REQUEST_TIMEOUT);
            let (request, waiting) = client.request(key, &call, deadline);
            let operation = Operation {
                client: client.id,
                member,
                key,
                call,
                called: self.now,
                answered: None,
                answer: Answer::Unknown,
            };
            let Some(member_index) = ids.iter().position(|id| *id == member) else {
                continue;
            };
            let target = &mut self.members[member_index];
            let Some((_, handle)) = &target.node else {
                // The member is down: the connection is refused; nothing was asked.
                client.rest(self.now);
                continue;
            };
            self.trace.event(
                self.now,
                format_args!(
                    "client {} calls member {member}: {:?} k{key}",
                    client.id, operation.call
                ),
            );
            if handle.submit(request).is_err() {
                client.rest(self.now);
                continue;
            }
            client.waiting = Some((self.history.len(), waiting));
            self.history.push(operation);
            target.wake(self.now);
        }
    }

    /// Submits a request to member `id` from outside the clients (final reads, probes).
    pub fn submit(&mut self, id: u64, request: ClientRequest) -> bool {
        let now = self.now;
        let Some(member) = self.index_of(id).map(|index| &mut self.members[index]) else {
            return false;
        };
        let Some((_, handle)) = &member.node else {
            return false;
        };
        let submitted = handle.submit(request).is_ok();
        member.wake(now);
        submitted
    }

    pub(super) fn collect_answers(&mut self, member: u64, at: Nanos) {
        for client in &mut self.clients {
            let Some((operation, _)) = &client.waiting else {
                continue;
            };
            let operation = *operation;
            if self.history[operation].member != member {
                continue;
            }
            if let Some(answer) = client.poll_answer(&self.history[operation]) {
                self.trace.event(at, format_args!("client {} answered: {answer:?}", client.id));
                let recorded = &mut self.history[operation];
                recorded.answered = Some(at);
                recorded.answer = answer;
                client.rest(at);
            }
        }
    }

    /// Clients waiting on a member that went down learn so (their connection breaks).
    pub fn settle_orphans(&mut self) {
        for client in &mut self.clients {
            let Some((operation, _)) = &client.waiting else {
                continue;
            };
            let operation = *operation;
            if let Some(answer) = client.poll_answer(&self.history[operation]) {
                let recorded = &mut self.history[operation];
                recorded.answered = Some(self.now);
                recorded.answer = answer;
                client.rest(self.now);
            }
        }
    }

    pub(super) fn sample_digests(&mut self) {
        self.settle_orphans();
        self.check_clock_estimates();
        for member in &mut self.members {
            let Some((_, handle)) = &member.node else {
                continue;
            };
            let (reply, receiver) = oneshot::channel();
            if handle.submit(ClientRequest::Digest { reply }).is_ok() {
                member.digests.push(receiver);
                member.wake(self.now);
            }
        }
    }

    /// Every member's estimates of its peers' clocks are the truth within half the round
    /// trip they measured — judged where every exchange the estimate may come from began
    /// after both clocks last moved (an exchange completes within a round trip and a
    /// stamp's wait, far below the margin).
    fn check_clock_estimates(&mut self) {
        const MARGIN: Nanos = 300 * MS;
        let instant = self.instant(self.now);
        let clocks: Vec<(u64, i64, Nanos)> = self
            .members
            .iter()
            .map(|m| (m.id, m.wall_offset.load(Ordering::Relaxed), m.clock_moved_at))
            .collect();
        let mut wrong = None;
        for member in self.members.iter().filter(|m| m.node.is_some()) {
            let mine = member.wall_offset.load(Ordering::Relaxed);
            let offsets = ClockOffsets::lock(&member.clocks);
            for (peer, estimate) in offsets.all(instant) {
                let Some(&(_, theirs, moved_at)) = clocks.iter().find(|(id, _, _)| *id == peer)
                else {
                    continue;
                };
                let settled = moved_at.max(member.clock_moved_at) + MARGIN;
                let oldest = offsets.oldest_sample(peer).map(|at| nanos_since(self.base, at));
                if oldest.is_none_or(|oldest| oldest < settled) {
                    continue;
                }
                self.clock_estimates_checked += 1;
                let truth = theirs - mine;
                let error = (estimate.offset_ns - truth).unsigned_abs();
                if error > (estimate.round_trip_ns.unsigned_abs() / 2).max(1) {
                    wrong = Some(format!(
                        "member {} estimates member {peer}'s clock {:.3} ms off its own; it is {:.3} ms off (round trip {:.3} ms)",
                        member.id,
                        estimate.offset_ns as f64 / 1e6,
                        truth as f64 / 1e6,
                        estimate.round_trip_ns as f64 / 1e6,
                    ));
                }
            }
        }
        if let Some(why) = wrong {
            self.fail(why);
        }
    }
}
