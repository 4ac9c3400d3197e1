//! Elections: timeouts drawn from the node's seed, the schedule's favour for the member
//! whose turn it is, and fast failover from a leader whose process is gone.

use super::*;

impl<C: Clock, T: Transport, S: LogStore + raft::Storage> Node<C, T, S> {
    /// Replaces raft-rs's draw of the election timeout, made whenever it resets its
    /// timer (a change of term or role), with one from the node's seeded draws. A reset
    /// shows as a new term or role, or as a timeout other than the one set here last.
    pub(super) fn draw_election_timeout(&mut self) {
        let raft = &self.raw.raft;
        let now = (raft.term, raft.state, raft.randomized_election_timeout());
        if self.timer_drawn_at == Some(now) {
            return;
        }
        let timeout = self.draws.election_timeout(raft.election_timeout());
        self.set_election_timeout(timeout);
        // A favoured timeout set before this change no longer holds.
        self.biased = false;
    }

    /// Sets raft-rs's election timeout, remembering it as the node's own.
    fn set_election_timeout(&mut self, ticks: usize) {
        let raft = &mut self.raw.raft;
        raft.set_randomized_election_timeout(ticks);
        self.timer_drawn_at = Some((raft.term, raft.state, ticks));
    }

    /// Elections favour the scheduled member: its election timeout is E + 2 ticks, while
    /// the others draw theirs from [E, 2E) as usual, so after a crash it usually campaigns
    /// first and the cluster stays on schedule. Not exactly E: the other follower, whose
    /// last heartbeat may have arrived a tick later, would still be in its leader lease and
    /// refuse the pre-vote, costing a whole second round. (No raft-rs priorities: they
    /// interact badly with pre-vote, DESIGN.md §4.)
    pub(super) fn bias_election(&mut self) {
        if self.raw.raft.state != StateRole::Follower || self.failing_over() {
            return;
        }
        let Some(rotation) = &mut self.rotation else {
            return;
        };
        let unix_ns = self.clock.unix_ns();
        let raft = &self.raw.raft;
        let election = raft.election_timeout();
        if rotation.favoured(unix_ns, raft.leader_id) == Some(raft.id) {
            // raft-rs accepts [E, 2E); with E < 3 ticks the bias is E itself.
            let favoured = if election >= 3 { election + 2 } else { election };
            if raft.randomized_election_timeout() != favoured {
                self.set_election_timeout(favoured);
            }
            self.biased = true;
        } else if self.biased {
            // No longer favoured: draw at random again, or two members could both sit at
            // E + 2 and split the vote.
            let timeout = self.draws.election_timeout(election);
            self.set_election_timeout(timeout);
            self.biased = false;
        }
    }

    /// Whether this follower is failing over from a leader whose process is gone.
    pub(super) fn failing_over(&self) -> bool {
        let raft = &self.raw.raft;
        self.gone_leader == Some((raft.term, raft.leader_id))
    }

    /// How often a failing-over successor asks for votes until it leads.
    pub(super) const FAILOVER_RETRY: Duration = Duration::from_millis(5);

    /// Fast failover. A follower whose leader's process is gone (its host refused our
    /// connection: the process crashed or was killed) need not wait out the election
    /// timeout, which exists to tell a dead leader from a slow one: this one is known
    /// dead. It gives up the leader lease at once (so it grants the successor's vote) and
    /// the successor — the member elections favour, else the lowest-id live voter —
    /// campaigns a moment later; the others spread their timeouts over [E + 2, 2E) in case
    /// it fails. Only liveness changes: votes and commits follow Raft as always, and a leader
    /// that is silent but not refusing (a partition, a dead host) is left to the timeout.
    pub(super) fn notice_leader_gone(&mut self, now: Instant) {
        if let Some(at) = self.campaign_at {
            if now >= at {
                self.campaign_at = None;
                let within = self.failover_until.is_some_and(|until| now < until);
                let state = self.raw.raft.state;
                // Asked again while the pre-vote goes unanswered: a follower whose own
                // connection has not yet been refused still holds the leader lease and
                // ignores the pre-vote without a word, and raft-rs would ask again only
                // at its election timeout: a whole timeout of stalled writes.
                // A pre-vote changes no term, so asking again disturbs nobody.
                if (self.failing_over() && state == StateRole::Follower)
                    || (within && state == StateRole::PreCandidate)
                {
                    let _ = self.raw.campaign();
                    if within {
                        self.campaign_at = Some(now + Self::FAILOVER_RETRY);
                    }
                } else {
                    self.failover_until = None;
                }
            }
        }
        let raft = &self.raw.raft;
        let leader = raft.leader_id;
        if raft.state != StateRole::Follower
            || leader == raft::INVALID_ID
            || self.failing_over()
            || !self.transport.peer_gone(leader)
        {
            return;
        }
        self.gone_leader = Some((raft.term, leader));
        self.handle.counters.fast_failovers.fetch_add(1, Ordering::Relaxed);
        let successor = self.successor(leader);
        let raft = &mut self.raw.raft;
        let election = raft.election_timeout();
        raft.election_elapsed = raft.election_elapsed.max(election);
        if election >= 2 {
            // The successor goes first; should it fail, the others' timeouts stay spread
            // over [E + 2, 2E) so that they do not all campaign on the same tick.
            let spread = election.saturating_sub(3).max(1) as u64;
            let draw = self.draws.below(spread);
            let timeout = (election + 2 + draw as usize).min(2 * election - 1);
            self.set_election_timeout(timeout.max(election));
        }
        let (me, term) = (self.raw.raft.id, self.raw.raft.term);
        if successor == me {
            // Usually long enough for the other followers' connections to see the same
            // refusal; if not, it asks again every FAILOVER_RETRY for an election timeout.
            self.campaign_at = Some(now + Self::FAILOVER_RETRY.min(self.config.tick));
            self.failover_until = Some(now + self.config.tick * election as u32);
        }
        tracing::info!(
            leader,
            term,
            successor,
            "the leader's process is gone (its host refuses connections): failing over"
        );
    }

    /// Who campaigns when `gone` is known dead: the member elections favour if it is
    /// alive as far as this member knows, else the lowest-id other live voter.
    pub(super) fn successor(&mut self, gone: u64) -> u64 {
        let alive = |id: u64| id != gone && (id == self.config.id || !self.transport.peer_gone(id));
        let unix_ns = self.clock.unix_ns();
        let favoured = self.rotation.as_mut().and_then(|rotation| rotation.favoured(unix_ns, gone));
        match favoured {
            Some(member) if alive(member) && self.config.voters.contains(&member) => member,
            _ => self
                .config
                .voters
                .iter()
                .copied()
                .filter(|&id| alive(id))
                .min()
                .unwrap_or(self.config.id),
        }
    }
}
