//! Elections: timeouts drawn from the node's seed, the schedule's favour for the member
//! whose turn it is, fast failover from a leader whose process is gone, and takeover from
//! a leader that fell silent (the schedule as failure detector).
//!
//! Takeover. Every member knows who leads each turn. When the leader (or, between two
//! leaders, the candidate a follower voted for) has been silent for
//! the silence threshold (a few heartbeats), the member that succeeds it on the schedule —
//! the current turn's member if the handoff into its turn never came (it waits out the
//! grace past the boundary first), else the next turn's, taking the rest of the leader's
//! turn early — campaigns at once instead of after the election timeout. Its vote
//! requests carry [`TAKEOVER`]; a voter grants one inside its leader lease only if it,
//! too, has not heard the leader for the threshold and its schedule names the candidate
//! (within the grace, for clock skew), which is what keeps a live leader in office:
//! whoever hears it refuses. Raft's safety is raft-rs's as always (one vote per term, the
//! most up-to-date log wins); only when a campaign starts changes.

use std::time::{Duration, Instant};

use raft::StateRole;

use super::RaftView;
use crate::draws::Draws;
use crate::rotation::Succession;

/// The context of a takeover's vote requests (see the module above). raft-rs never sees
/// it: the receiving loop replaces it with raft-rs's transfer context when it grants the
/// takeover, and removes it when it does not.
pub const TAKEOVER: &[u8] = b"ScheduledTakeover";

/// How often a campaigning successor asks again while its pre-votes go unanswered.
pub const ASK_AGAIN: Duration = Duration::from_millis(5);

/// What the loop does for elections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set raft-rs's randomized election timeout to this many ticks.
    SetTimeout(usize),
    /// Give up the leader lease now (raft-rs's election clock past the timeout), so this
    /// member grants a successor's vote.
    ExpireLease,
    /// Campaign (pre-vote first, as raft-rs is configured).
    Campaign,
}

/// Why a member campaigns before its election timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Early {
    /// The leader's host refuses connections: its process is gone.
    LeaderGone {
        /// The leader.
        leader: u64,
    },
    /// A takeover candidate this member grants cannot win: its log is behind this
    /// member's (it heard the leader's last appends later), so this member takes over in
    /// its place.
    StandIn {
        /// The silent leader.
        leader: u64,
        /// The successor whose log is behind.
        candidate: u64,
        /// How long the leader had been silent.
        silence: Duration,
    },
    /// The leader has been silent for the threshold and this member succeeds it.
    Takeover {
        /// The silent leader (or the candidate this member voted for).
        leader: u64,
        /// How long it had been silent.
        silence: Duration,
        /// Whether this member's turn had begun (else it takes the rest of the leader's).
        turn_began: bool,
        /// How long the current turn had run.
        into_turn: Duration,
    },
}

/// Timing the policy works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// A Raft tick.
    pub tick: Duration,
    /// Silence from the leader after which its successor takes over (zero: takeovers off).
    pub silence: Duration,
    /// How long past a turn boundary the incoming member waits for the handoff before it
    /// takes over; also the clock skew a voter allows when it checks the candidate.
    pub grace: Duration,
}

/// What the loop knows of the other members and the schedule. `successor` and
/// `leader_heard` are about the follower's expected leader ([`RaftView::expected_leader`]).
#[allow(missing_debug_implementations, reason = "holds the transport's view as a closure")]
pub struct World<'a> {
    /// Whether a member's process is gone (its host refuses our connections).
    pub gone: &'a dyn Fn(u64) -> bool,
    /// Voters, this member included.
    pub voters: &'a [u64],
    /// The member the schedule favours now (`None`: rotation off).
    pub favoured: Option<u64>,
    /// The leader's successor on the schedule (`None`: rotation off).
    pub successor: Option<Succession>,
    /// When this member last heard from its leader (`None`: not since it started, or
    /// rotation off: nothing is tracked).
    pub leader_heard: Option<Instant>,
}

/// A campaign begun early, until it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Campaign {
    /// The term it began in.
    term: u64,
    /// Ask again at this time (while a pre-candidate).
    again_at: Instant,
    /// Asking again ends here (an election timeout after it began).
    until: Instant,
    /// A takeover (its vote requests carry [`TAKEOVER`]), not a failover.
    takeover: bool,
}

/// The elections policy's state.
#[derive(Clone, Debug)]
pub struct Elections {
    settings: Settings,
    draws: Draws,
    /// The term, role and timeout set here last: raft-rs draws its own (from
    /// `thread_rng`) on every change of term or role.
    timer: Option<(u64, StateRole, usize)>,
    /// Whether the timeout in force is the schedule's favour.
    biased: bool,
    /// The (term, leader) whose process this follower found gone, once per term.
    gone_leader: Option<(u64, u64)>,
    /// The (term, leader) this member took over from, once per term.
    silent_leader: Option<(u64, u64)>,
    campaign: Option<Campaign>,
    /// When a failover's successor campaigns (a moment after the refusal, so the other
    /// followers see it too).
    failover_at: Option<Instant>,
}

impl Elections {
    /// The policy with the node's seeded draws.
    pub fn new(settings: Settings, seed: u64) -> Self {
        Self {
            settings,
            draws: Draws::new(seed),
            timer: None,
            biased: false,
            gone_leader: None,
            silent_leader: None,
            campaign: None,
            failover_at: None,
        }
    }

    /// Replaces raft-rs's draw of the election timeout, made whenever it resets its
    /// timer, with one from the node's seeded draws. A reset shows as a new term or
    /// role, or as a timeout other than the one set here last.
    pub fn redraw(&mut self, raft: &RaftView) -> Option<Action> {
        if self.timer == Some((raft.term, raft.role, raft.timeout_ticks)) {
            return None;
        }
        // A favoured timeout set before this change no longer holds.
        self.biased = false;
        let timeout = self.draws.election_timeout(raft.election_ticks);
        Some(self.set_timeout(raft, timeout))
    }

    fn set_timeout(&mut self, raft: &RaftView, ticks: usize) -> Action {
        self.timer = Some((raft.term, raft.role, ticks));
        Action::SetTimeout(ticks)
    }

    /// Elections favour the scheduled member: its election timeout is E + 2 ticks, while
    /// the others draw theirs from [E, 2E) as usual, so after a crash it usually campaigns
    /// first and the cluster stays on schedule. Not exactly E: the other follower, whose
    /// last heartbeat may have arrived a tick later, would still be in its leader lease
    /// and refuse the pre-vote, costing a whole second round. (No raft-rs priorities: they
    /// interact badly with pre-vote, DESIGN.md §4.)
    pub fn favour(&mut self, raft: &RaftView, favoured: Option<u64>) -> Option<Action> {
        if raft.role != StateRole::Follower || self.failing_over(raft) {
            return None;
        }
        if favoured == Some(raft.id) {
            self.biased = true;
            let election = raft.election_ticks;
            // raft-rs accepts [E, 2E); with E < 3 ticks the bias is E itself.
            let favoured = if election >= 3 { election + 2 } else { election };
            (raft.timeout_ticks != favoured).then(|| self.set_timeout(raft, favoured))
        } else if self.biased {
            // No longer favoured: draw at random again, or two members could both sit at
            // E + 2 and split the vote.
            self.biased = false;
            let timeout = self.draws.election_timeout(raft.election_ticks);
            Some(self.set_timeout(raft, timeout))
        } else {
            None
        }
    }

    /// Whether this follower is failing over from a leader whose process is gone.
    pub fn failing_over(&self, raft: &RaftView) -> bool {
        self.gone_leader == Some((raft.term, raft.leader))
    }

    /// Whether this member's vote requests in `term` are a takeover's.
    pub fn taking_over(&self, term: u64) -> bool {
        self.campaign.is_some_and(|c| c.takeover && (c.term..=c.term + 1).contains(&term))
    }

    /// When [`Elections::watch`] must run again, if nothing arrives before: a campaign
    /// due, or — on the leader's successor — the moment the leader's silence reaches the
    /// threshold and the grace past the boundary has run.
    pub fn due(&self, now: Instant, raft: &RaftView, world: &World<'_>) -> Option<Instant> {
        let asking = self.campaign.map(|c| c.again_at);
        let takeover = world
            .successor
            .filter(|s| {
                let expected = raft.expected_leader();
                expected.is_some()
                    && s.member == raft.id
                    && !self.settings.silence.is_zero()
                    && self.silent_leader != expected.map(|leader| (raft.term, leader))
            })
            .and_then(|succession| {
                let silence_ends = world.leader_heard? + self.settings.silence;
                let grace_left = if succession.turn_began {
                    self.settings.grace.saturating_sub(succession.into_turn)
                } else {
                    Duration::ZERO
                };
                Some(silence_ends.max(now + grace_left))
            });
        [self.failover_at, asking, takeover].into_iter().flatten().min()
    }

    /// Someone else campaigns: a failover campaign not yet begun would split the vote.
    pub fn other_candidate(&mut self) {
        self.failover_at = None;
    }

    /// Watches the leader on every loop turn: campaigns due, a leader found gone, a
    /// leader silent for the threshold. The actions, and why a campaign begins early.
    pub fn watch(
        &mut self,
        now: Instant,
        raft: &RaftView,
        world: &World<'_>,
    ) -> (Vec<Action>, Option<Early>) {
        let mut actions = Vec::new();
        self.campaign_again(now, raft, &mut actions);
        if raft.role != StateRole::Follower {
            return (actions, None);
        }
        if self.failing_over(raft) {
            // What the leader sent before it died may still arrive, and renews raft-rs's
            // lease: given up again, while the leader stays gone, or this member would
            // ignore the successor's vote requests for a whole election timeout.
            if raft.in_lease && (world.gone)(raft.leader) {
                actions.push(Action::ExpireLease);
            }
            return (actions, None);
        }
        if raft.follows() && (world.gone)(raft.leader) {
            let early = self.leader_gone(now, raft, world, &mut actions);
            return (actions, Some(early));
        }
        let early = self.take_over(now, raft, world);
        if early.is_some() {
            actions.push(Action::Campaign);
        }
        (actions, early)
    }

    /// A campaign begun early goes on: asked again every [`ASK_AGAIN`] while this member
    /// stays a pre-candidate (a voter that has not yet seen what this member saw ignores
    /// the pre-vote without a word, and raft-rs would ask again only at its election
    /// timeout); a pre-vote changes no term, so asking again disturbs nobody.
    fn campaign_again(&mut self, now: Instant, raft: &RaftView, actions: &mut Vec<Action>) {
        if self.failover_at.is_some_and(|at| now >= at) {
            self.failover_at = None;
            if self.failing_over(raft) && raft.role == StateRole::Follower {
                actions.push(Action::Campaign);
                self.campaign = Some(Campaign {
                    term: raft.term,
                    again_at: now + ASK_AGAIN,
                    until: now + self.settings.tick * raft.election_ticks as u32,
                    takeover: false,
                });
            }
            return;
        }
        let Some(campaign) = &mut self.campaign else {
            return;
        };
        let asking = raft.role == StateRole::PreCandidate && now < campaign.until;
        if raft.term > campaign.term + 1 || !asking && raft.role != StateRole::Candidate {
            // Won, lost to another leader, or given up: the election timeout goes on.
            self.campaign = None;
        } else if asking && now >= campaign.again_at {
            campaign.again_at = now + ASK_AGAIN;
            actions.push(Action::Campaign);
        }
    }

    /// Fast failover. A follower whose leader's process is gone (its host refused our
    /// connection: the process crashed or was killed) need not wait out the election
    /// timeout, which exists to tell a dead leader from a slow one: this one is known
    /// dead. It gives up the leader lease at once (so it grants the successor's vote) and
    /// the successor — the member elections favour, else the lowest-id live voter —
    /// campaigns a moment later; the others spread their timeouts over [E + 2, 2E) in case
    /// it fails.
    fn leader_gone(
        &mut self,
        now: Instant,
        raft: &RaftView,
        world: &World<'_>,
        actions: &mut Vec<Action>,
    ) -> Early {
        self.gone_leader = Some((raft.term, raft.leader));
        actions.push(Action::ExpireLease);
        let election = raft.election_ticks;
        if election >= 2 {
            // The successor goes first; should it fail, the others' timeouts stay spread
            // over [E + 2, 2E) so that they do not all campaign on the same tick.
            let spread = election.saturating_sub(3).max(1) as u64;
            let draw = self.draws.below(spread) as usize;
            let timeout = (election + 2 + draw).min(2 * election - 1).max(election);
            actions.push(self.set_timeout(raft, timeout));
        }
        if successor(raft, world) == raft.id {
            // Usually long enough for the other followers' connections to see the same
            // refusal; if not, it asks again every ASK_AGAIN for an election timeout.
            self.failover_at = Some(now + ASK_AGAIN.min(self.settings.tick));
        }
        Early::LeaderGone { leader: raft.leader }
    }

    /// Takeover from a silent leader (see the module above): whether this member begins
    /// one now.
    fn take_over(&mut self, now: Instant, raft: &RaftView, world: &World<'_>) -> Option<Early> {
        let leader = raft.expected_leader()?;
        let succession = world.successor?;
        let silence = now.saturating_duration_since(world.leader_heard?);
        let settings = self.settings;
        if settings.silence.is_zero()
            || silence < settings.silence
            || succession.member != raft.id
            || (succession.turn_began && succession.into_turn < settings.grace)
            || self.silent_leader == Some((raft.term, leader))
        {
            return None;
        }
        self.silent_leader = Some((raft.term, leader));
        self.campaign = Some(Campaign {
            term: raft.term,
            again_at: now + ASK_AGAIN,
            until: now + settings.tick * raft.election_ticks as u32,
            takeover: true,
        });
        Some(Early::Takeover {
            leader,
            silence,
            turn_began: succession.turn_began,
            into_turn: succession.into_turn,
        })
    }

    /// A takeover's vote request this member grants, from a `candidate` whose log is
    /// behind this member's: raft-rs refuses it the vote here, and the followers that
    /// would vote for it know no more than this one, so it cannot win and the cluster
    /// would wait for an election timeout. This member — as sure the leader is silent,
    /// with the longer log — campaigns as a takeover at once instead (once per term and
    /// leader); the named successor, a pre-candidate outside any lease, grants it by
    /// raft-rs's rules.
    pub fn stand_in(
        &mut self,
        now: Instant,
        raft: &RaftView,
        candidate: u64,
        leader_heard: Option<Instant>,
    ) -> Option<(Action, Early)> {
        let leader = raft.leader;
        if !raft.follows() || self.silent_leader == Some((raft.term, leader)) {
            return None;
        }
        self.silent_leader = Some((raft.term, leader));
        self.campaign = Some(Campaign {
            term: raft.term,
            again_at: now + ASK_AGAIN,
            until: now + self.settings.tick * raft.election_ticks as u32,
            takeover: true,
        });
        let silence = leader_heard.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        Some((Action::Campaign, Early::StandIn { leader, candidate, silence }))
    }

    /// Whether this member grants a takeover's vote request from `candidate` inside its
    /// leader lease: it has not heard its leader for the threshold either, and its
    /// schedule names `candidate` as the successor (`names(candidate)`, which allows for
    /// the grace's clock skew). A leader never grants one (it is not silent to itself).
    pub fn grants_takeover(
        &self,
        now: Instant,
        raft: &RaftView,
        candidate: u64,
        leader_heard: Option<Instant>,
        names: impl FnOnce(u64) -> bool,
    ) -> bool {
        let silent = leader_heard
            .is_some_and(|at| now.saturating_duration_since(at) >= self.settings.silence);
        !self.settings.silence.is_zero()
            && raft.follows()
            && raft.leader != candidate
            && silent
            && names(candidate)
    }
}

/// Who campaigns when the leader is known dead: the member elections favour if it is
/// alive as far as this member knows, else the lowest-id other live voter.
fn successor(raft: &RaftView, world: &World<'_>) -> u64 {
    let alive = |id: u64| id != raft.leader && (id == raft.id || !(world.gone)(id));
    match world.favoured {
        Some(member) if alive(member) && world.voters.contains(&member) => member,
        _ => world.voters.iter().copied().filter(|&id| alive(id)).min().unwrap_or(raft.id),
    }
}

#[cfg(test)]
mod tests;
