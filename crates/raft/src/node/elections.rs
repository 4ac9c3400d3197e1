//! The loop's side of the elections policy ([`crate::engine::elections`]): what it is
//! told of raft-rs, the transport and the schedule, and its actions carried out.

use super::*;
use crate::engine::elections::{Action, Early, Elections, World, TAKEOVER};
use crate::engine::RaftView;

impl<C: Clock, T: Transport, S: LogStore + raft::Storage> Node<C, T, S> {
    fn raft_view(&self) -> RaftView {
        RaftView::of(&self.raw.raft)
    }

    /// Replaces raft-rs's draw of the election timeout (from `thread_rng`, whenever it
    /// resets its timer) with one from the node's seeded draws.
    pub(super) fn draw_election_timeout(&mut self) {
        let view = self.raft_view();
        if let Some(action) = self.elections.redraw(&view) {
            self.act(action);
        }
    }

    /// The schedule's favour for the member whose turn it is (see
    /// [`crate::engine::elections::Elections::favour`]).
    pub(super) fn bias_election(&mut self) {
        let view = self.raft_view();
        if view.role != StateRole::Follower {
            return;
        }
        let unix_ns = self.schedule_unix_ns();
        let favoured = self.rotation.as_mut().and_then(|r| r.favoured(unix_ns, view.leader));
        if let Some(action) = self.elections.favour(&view, favoured) {
            self.act(action);
        }
    }

    /// Watches the leader: failover from a process found gone, takeover from a silent
    /// leader, and the campaigns they begin.
    pub(super) fn watch_leader(&mut self, now: Instant) {
        let view = self.raft_view();
        let (actions, early) =
            self.with_election_world(&view, |elections, world| elections.watch(now, &view, world));
        for action in actions {
            self.act(action);
        }
        if let Some(early) = early {
            self.note_early(&view, early);
        }
    }

    /// Counts and logs a campaign begun early; a takeover's note goes to the turn log if
    /// the campaign wins.
    fn note_early(&mut self, view: &RaftView, early: Early) {
        match early {
            Early::LeaderGone { leader } => {
                self.handle.counters.fast_failovers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    leader,
                    term = view.term,
                    "the leader's process is gone (its host refuses connections): failing over"
                );
            }
            Early::Takeover { leader, silence, turn_began, into_turn } => {
                let whose = if turn_began { "this member's" } else { "the leader's" };
                let note = format!(
                    "took over from member {leader}, silent {} ms, {} ms into {whose} turn",
                    silence.as_millis(),
                    into_turn.as_millis()
                );
                self.begin_takeover(view, leader, note);
            }
            Early::StandIn { leader, candidate, silence } => {
                let note = format!(
                    "took over from member {leader}, silent {} ms, in place of member {candidate}, whose log is behind",
                    silence.as_millis()
                );
                self.begin_takeover(view, leader, note);
            }
        }
    }

    fn begin_takeover(&mut self, view: &RaftView, leader: u64, note: String) {
        self.handle.counters.takeovers.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(leader, term = view.term, "{note}");
        // Recorded in the turn log if the campaign wins.
        self.takeover_note = Some((view.term, leader, note));
    }

    /// When the elections need the loop next (see [`Node::until_due`]), after this turn.
    pub(super) fn plan_election_wakeup(&mut self, now: Instant) {
        let view = self.raft_view();
        self.elections_due =
            self.with_election_world(&view, |elections, world| elections.due(now, &view, world));
    }

    /// Runs `f` on the elections policy with what the loop knows of the world.
    fn with_election_world<R>(
        &mut self,
        view: &RaftView,
        f: impl FnOnce(&mut Elections, &World<'_>) -> R,
    ) -> R {
        let (favoured, successor, leader_heard) = self.schedule_view(view);
        let transport = &self.transport;
        let world = World {
            gone: &|id| transport.peer_gone(id),
            voters: &self.config.voters,
            favoured,
            successor,
            leader_heard,
        };
        f(&mut self.elections, &world)
    }

    /// What the schedule says about the expected leader's succession, and when this
    /// member last heard it — only for a follower under rotation (nothing else uses them).
    fn schedule_view(
        &mut self,
        view: &RaftView,
    ) -> (Option<u64>, Option<crate::rotation::Succession>, Option<Instant>) {
        // This runs twice per loop turn: without a follower's leader to watch, or with no
        // segment that rotates, there is nothing to ask the schedule, nor a clock to read.
        let expected = view.expected_leader();
        let Some(expected) =
            expected.filter(|_| self.rotation.as_ref().is_some_and(|r| r.ever_rotates()))
        else {
            return (None, None, None);
        };
        let unix_ns = self.schedule_unix_ns();
        let leader_beyond = self.clocks.leader_beyond;
        let Some(rotation) = self.rotation.as_mut() else {
            return (None, None, None);
        };
        let favoured = rotation.favoured(unix_ns, view.leader);
        // Clocks this far apart disagree on whose turn it is: no takeover.
        let successor = rotation.successor(unix_ns, expected).filter(|_| !leader_beyond);
        (favoured, successor, self.last_heard.get(&expected).copied())
    }

    /// A vote request marked as a takeover's: raft-rs is told to grant it inside the
    /// leader lease (its transfer context) if this member agrees the leader is silent
    /// and its schedule names the candidate; otherwise it sees an ordinary request,
    /// which it ignores inside the lease.
    pub(super) fn judge_takeover(&mut self, message: &mut Message) {
        let view = self.raft_view();
        let now = self.clock.now();
        let heard = self.last_heard.get(&view.leader).copied();
        let grace = self.config.rotation.as_ref().map_or(Duration::ZERO, |r| r.takeover_grace);
        let unix_ns = self.schedule_unix_ns();
        let grace_ns = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        let rotation = &mut self.rotation;
        // Its own clock, and as far off as the grace allows either way.
        let names = |candidate: u64| {
            let Some(rotation) = rotation.as_mut() else {
                return false;
            };
            [unix_ns, unix_ns.saturating_sub(grace_ns), unix_ns.saturating_add(grace_ns)]
                .into_iter()
                .any(|at| {
                    rotation.successor(at, view.leader).is_some_and(|s| s.member == candidate)
                })
        };
        let grant = self.elections.grants_takeover(now, &view, message.from, heard, names);
        let context = if grant { raft::CAMPAIGN_TRANSFER.to_vec() } else { Vec::new() };
        message.set_context(context.into());
        let behind = !self.raw.raft.raft_log.is_up_to_date(message.index, message.log_term);
        if grant && behind {
            if let Some((action, early)) = self.elections.stand_in(now, &view, message.from, heard)
            {
                self.act(action);
                self.note_early(&view, early);
            }
        }
    }

    /// Whether a transfer's MsgTimeoutNow is too old to act on: sent (by the leader's
    /// clock, as measured) longer than the takeover grace ago. By then the leader has
    /// given the transfer up (Rotation::overdue_transfer) and taken writes since, and a
    /// campaign now would skip the pre-vote, move to a new term it cannot win with the
    /// shorter log and depose the leader through that term. It arrives that late after
    /// this process was stopped (SIGSTOP, a VM paused) or a cut link's TCP retransmits it.
    /// Takes the stamp off the message. Without a measured leader clock it is acted on.
    pub(super) fn stale_timeout_now(&mut self, message: &mut Message) -> bool {
        let stamp = message.take_context();
        let (Ok(stamp), Some(offset)) =
            (<[u8; 8]>::try_from(&stamp[..]), self.clocks.leader_offset)
        else {
            return false;
        };
        let sent = u64::from_be_bytes(stamp);
        let leader_now = self.clock.unix_ns().saturating_add_signed(offset);
        let grace = self.config.rotation.as_ref().map_or(Duration::ZERO, |r| r.takeover_grace);
        let age = Duration::from_nanos(leader_now.saturating_sub(sent));
        let stale = !grace.is_zero() && age > grace;
        if stale {
            tracing::info!(
                "member {}'s handoff to this member is {} ms old (beyond takeover_grace_ms): not taking over",
                message.from,
                age.as_millis()
            );
        }
        stale
    }

    /// A vote request with raft-rs's transfer context from a candidate whose log is behind
    /// this member's loses the context: this member would refuse the vote anyway, and
    /// the context would only make it give up its leader lease and move to the new term
    /// first — disrupting a live leader for nothing. That happens when a transfer's target
    /// wakes after the leader gave the transfer up (a frozen process's stale MsgTimeoutNow,
    /// see Rotation::overdue_transfer) and the leader has taken writes since. A transfer's
    /// target is never behind in a transfer that is still on (the leader sends
    /// MsgTimeoutNow only to a target with its whole log and takes no writes after), so no
    /// real handoff loses the context.
    pub(super) fn judge_transfer(&self, message: &mut Message) {
        if message.get_context() == raft::CAMPAIGN_TRANSFER
            && !self.raw.raft.raft_log.is_up_to_date(message.index, message.log_term)
        {
            message.set_context(Vec::new().into());
        }
    }

    /// Sends raft-rs's messages, marking a takeover's vote requests and stamping a
    /// transfer's MsgTimeoutNow with this leader's wall clock (see
    /// [`Node::stale_timeout_now`]).
    pub(super) fn send(&mut self, mut messages: Vec<Message>) {
        if self.elections.taking_over(self.raw.raft.term) {
            for message in &mut messages {
                if is_vote_request(message) && message.get_context().is_empty() {
                    message.set_context(TAKEOVER.to_vec().into());
                }
            }
        }
        for message in &mut messages {
            if message.get_msg_type() == MessageType::MsgTimeoutNow {
                message.set_context(self.clock.unix_ns().to_be_bytes().to_vec().into());
            }
        }
        self.note_timeout_now(&messages);
        let snapshots = messages.iter().filter(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        self.snapshots_sent.extend(snapshots.map(|m| m.to));
        self.transport.send(messages);
    }

    fn act(&mut self, action: Action) {
        let raft = &mut self.raw.raft;
        match action {
            Action::SetTimeout(ticks) => raft.set_randomized_election_timeout(ticks),
            Action::ExpireLease => {
                raft.election_elapsed = raft.election_elapsed.max(raft.election_timeout());
            }
            Action::Campaign => {
                let _ = self.raw.campaign();
            }
        }
    }
}

/// A pre-vote or vote request.
pub(super) fn is_vote_request(message: &Message) -> bool {
    matches!(message.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote)
}
