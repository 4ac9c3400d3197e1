//! Scheduled leadership in the loop: writes forwarded ahead to the incoming leader,
//! held for this member's turn, replicated at once on taking over, and the handoff at
//! each turn boundary.

use super::*;
use crate::engine::optimistic::{Action as OptimisticAction, AppendAnswer, FollowerProgress};

impl<C: Clock, T: Transport, S: LogStore + raft::Storage> Node<C, T, S> {
    /// Whether a new write goes to the incoming leader instead of the current one: on a
    /// follower in the last `forward_ahead` of a turn, on the leader while it hands over.
    /// The target and the time to the boundary.
    pub(super) fn forward_ahead(&mut self) -> Option<(u64, Duration)> {
        if self.raw.raft.state == StateRole::Leader {
            // Handing over (scheduled): raft-rs refuses proposals until the transfer ends,
            // so new writes go to the member taking over, which holds them for the moment
            // it leads instead of waiting here to see the change first.
            let handing_over = self.rotation.is_some();
            return self
                .raw
                .raft
                .lead_transferee
                .filter(|_| handing_over)
                .map(|t| (t, Duration::ZERO));
        }
        if self.clocks.leader_beyond {
            // This member and the leader disagree on the turn: the leader decides.
            return None;
        }
        let unix_ns = self.schedule_unix_ns();
        let leader = self.raw.raft.leader_id;
        let rotation = self.rotation.as_mut()?;
        // Only while the schedule is on track (the leader is the turn's own member and
        // came in with it): a leader that kept a turn (the handoff skipped — a member's
        // clock beyond the bound, a silent or lagging target) most likely keeps the next
        // one too, and writes sent ahead would wait at a member that does not lead.
        if rotation.scheduled_at(unix_ns) != Some(leader)
            || !rotation.leader_came_with_turn(leader, unix_ns)
        {
            return None;
        }
        rotation.incoming(unix_ns)
    }

    /// [`Node::forward_ahead`], unless the incoming leader cannot be reached now (its
    /// process is gone or our last attempt to connect failed): a write sent there would be
    /// lost and wait out its retry, so it goes to the member that leads instead.
    pub(super) fn forward_ahead_to_reachable(&mut self) -> Option<(u64, Duration)> {
        let (target, until_boundary) = self.forward_ahead()?;
        if target != self.config.id && !self.transport.peer_reachable(target) {
            self.handle.counters.forward_unreachable.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some((target, until_boundary))
    }

    /// How long past the boundary a write forwarded ahead waits for the incoming leader
    /// before going to the actual one: the transfer completes by the boundary, so a tick
    /// (at least 10 ms) later it has failed or was skipped (the target may be down).
    pub(super) fn forward_grace(&self) -> Duration {
        self.config.tick.max(Duration::from_millis(10))
    }

    /// On a leader change, proposes every pending write and read again at once, so what
    /// waited through a handoff (refused while the transfer ran, or forwarded to the old
    /// leader and lost) reaches the new leader the moment it leads. Whether this member
    /// has just become the leader.
    pub(super) fn follow_leadership(&mut self, now: Instant) -> bool {
        let leader = self.raw.raft.leader_id;
        if self.rotation.is_some() {
            // The wall clock is read only when rotation needs it: this runs every turn.
            let unix_ns = self.schedule_unix_ns();
            if let Some(rotation) = &mut self.rotation {
                rotation.observe_leader(leader, self.config.id, now, unix_ns);
            }
        }
        if leader == self.last_leader {
            return false;
        }
        self.last_leader = leader;
        // The handoff these were passed on for is over: the new leader has them.
        self.passed_ahead.clear();
        if leader == raft::INVALID_ID {
            return false;
        }
        self.handle.counters.leader_changes.fetch_add(1, Ordering::Relaxed);
        let leads = leader == self.config.id;
        if leads {
            self.record_takeover();
            self.replicate_at_once();
            // Writes forwarded ahead to this member: its turn has come.
            for message in self.held.take_all() {
                for entry in message.entries.iter() {
                    let _ = self.raw.propose(Vec::new(), entry.data.to_vec());
                }
            }
        }
        let actions = self.pending.leader_changed(now);
        self.act_on_requests(actions);
        leads
    }

    /// A takeover that won: the turn log says so (see [`Node::watch_leader`]).
    fn record_takeover(&mut self) {
        let Some((term, leader, note)) = self.takeover_note.take() else {
            return;
        };
        // Won in the term after the one it began in (a pre-vote changes no term).
        if self.raw.raft.term != term + 1 {
            return;
        }
        let unix_ns = self.schedule_unix_ns();
        if let Some(rotation) = &mut self.rotation {
            rotation.record_takeover(unix_ns, self.config.id, leader, note);
        }
    }

    /// A new leader replicates at once to the followers whose logs end where its own
    /// does (see [`crate::engine::optimistic`]).
    pub(super) fn replicate_at_once(&mut self) {
        let raft = &mut self.raw.raft;
        let (me, last) = (raft.id, raft.raft_log.last_index());
        let followers: Vec<FollowerProgress> =
            raft.prs().iter().map(|(&id, progress)| follower_progress(id, progress)).collect();
        for action in self.optimistic.took_over(me, last, followers) {
            self.act_on_progress(action);
        }
    }

    /// A follower's answer, for the followers replicated to at once: the first ends the
    /// wait, or sends a rejecting follower back to probing.
    pub(super) fn first_answer(&mut self, message: &Message) {
        let raft = &self.raw.raft;
        if message.get_msg_type() != MessageType::MsgAppendResponse
            || raft.state != StateRole::Leader
            || message.term != raft.term
        {
            return;
        }
        let answer =
            AppendAnswer { from: message.from, reject: message.reject, index: message.index };
        let progress = raft.prs().get(message.from).map(|p| follower_progress(message.from, p));
        if let Some(action) = self.optimistic.answered(answer, progress) {
            self.act_on_progress(action);
            self.handle.counters.optimistic_rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn act_on_progress(&mut self, action: OptimisticAction) {
        let (id, state, next) = match action {
            OptimisticAction::Replicate { id, next } => (id, ProgressState::Replicate, next),
            OptimisticAction::Probe { id, next } => (id, ProgressState::Probe, next),
        };
        if let Some(progress) = self.raw.raft.mut_prs().get_mut(id) {
            progress.state = state;
            progress.paused = false;
            progress.next_idx = next;
            progress.ins.reset();
        }
    }

    /// Scheduled leadership: the leader starts the handoff to the next turn's member.
    pub(super) fn rotate(&mut self, now: Instant) -> bool {
        if self.raw.raft.state != StateRole::Leader {
            return false;
        }
        let unix_ns = self.schedule_unix_ns();
        let Some(rotation) = &mut self.rotation else {
            return false;
        };
        if let Some(target) =
            rotation.overdue_transfer(now).filter(|_| self.raw.raft.lead_transferee.is_some())
        {
            // This member keeps the turn and takes writes again (see
            // Rotation::overdue_transfer).
            let last_index = self.raw.raft.raft_log.last_index();
            let progress = self.raw.raft.prs().get(target).map(|pr| {
                format!(
                    "its log matched to {} of {last_index} ({:?}, next {}, paused {})",
                    pr.matched,
                    pr.state,
                    pr.next_idx,
                    pr.is_paused()
                )
            });
            let heard = self.last_heard.get(&target).map(|at| now.duration_since(*at));
            self.raw.raft.abort_leader_transfer();
            rotation.abandon_transfer(self.config.id, now);
            tracing::info!(
                progress = progress.as_deref().unwrap_or("unknown"),
                last_heard_ms = heard.map(|d| d.as_secs_f64() * 1e3),
                "member {target} did not take over within takeover_grace_ms of its boundary: this member keeps the turn"
            );
            // What waited through the transfer (raft-rs refused it, or it went on to the
            // silent target) is proposed here now, not at its next retry.
            for mut message in std::mem::take(&mut self.passed_ahead) {
                message.to = self.config.id;
                let _ = self.raw.step(message);
            }
            let actions = self.pending.leader_changed(now);
            self.act_on_requests(actions);
            return true;
        }
        // A live follower answers every heartbeat; silence for three heartbeats or half an
        // election timeout, whichever is longer, means it is down (a shorter window skips
        // live members whose answers queue behind a busy CPU).
        let window = (self.config.tick * (self.config.heartbeat_ticks as u32 * 3).max(3))
            .max(self.config.tick * self.config.election_ticks as u32 / 2);
        let (heard, transport) = (&self.last_heard, &self.transport);
        let heard_recently = |id: u64| {
            !transport.peer_gone(id)
                && heard.get(&id).is_some_and(|at| now.duration_since(*at) <= window)
        };
        let checked = self.config.planted != Some(crate::PlantedBug::UncheckedHandoff);
        let paused = self.clock_pause();
        let Some(rotation) = &mut self.rotation else {
            return false;
        };
        let raft = &self.raw.raft;
        let view = |target| crate::rotation::TransferView::of(raft, target);
        match rotation.decide(raft.id, view, unix_ns, now, heard_recently, checked, paused) {
            Some(target) => {
                self.raw.transfer_leader(target);
                true
            }
            None => false,
        }
    }

    /// A handing-over leader's MsgTimeoutNow marks a phase of the handoff (turn log).
    pub(super) fn note_timeout_now(&mut self, messages: &[Message]) {
        if self.raw.raft.lead_transferee.is_none() {
            return;
        }
        if messages.iter().any(|m| m.get_msg_type() == MessageType::MsgTimeoutNow) {
            if let Some(rotation) = &mut self.rotation {
                rotation.timeout_now_sent(self.clock.now());
            }
        }
    }
}

fn follower_progress(id: u64, progress: &raft::Progress) -> FollowerProgress {
    FollowerProgress {
        id,
        state: progress.state,
        paused: progress.paused,
        next: progress.next_idx,
        matched: progress.matched,
    }
}
