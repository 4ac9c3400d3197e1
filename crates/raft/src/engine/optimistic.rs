//! Replicating at once after a handoff. A new leader's first append (its empty entry)
//! probes each follower, and raft-rs sends nothing more to it until it answers: the
//! writes held for this member's turn would wait a second round trip and log sync on
//! every follower. Right after a handoff the followers' logs end where the leader's does,
//! so followers still probing from the empty entry are treated as replicating at once and
//! the held writes follow without waiting. The progress state decides only what is sent
//! when, never what commits (that rests on the followers' answers); a follower that turns
//! out to lack entries rejects, and goes back to probing from its rejection (in
//! replicating state raft-rs would restart from its match, still 0: the whole log, or a
//! snapshot).

use raft::ProgressState;

/// A follower's progress as the leader tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The follower.
    pub id: u64,
    /// raft-rs's replication state.
    pub state: ProgressState,
    /// Sending is paused (a probe awaits its answer).
    pub paused: bool,
    /// The next index to send.
    pub next: u64,
    /// The highest index known replicated.
    pub matched: u64,
}

/// A follower's answer to an append, as the leader received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendAnswer {
    /// The follower.
    pub from: u64,
    /// It rejected the append.
    pub reject: bool,
    /// The index its rejection points at (raft-rs's hint: probe from after it).
    pub index: u64,
}

/// What to do to a follower's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Replicate from `next` on, unpaused, with the in-flight window emptied.
    Replicate {
        /// The follower.
        id: u64,
        /// The next index to send.
        next: u64,
    },
    /// Probe from `next` on, unpaused, with the in-flight window emptied.
    Probe {
        /// The follower.
        id: u64,
        /// The next index to send.
        next: u64,
    },
}

/// The followers replicated to at once whose first answer has not come.
#[derive(Debug, Default)]
pub struct Optimistic {
    waiting: Vec<u64>,
}

impl Optimistic {
    /// Whether any follower's first answer is awaited (the loop looks at answers only
    /// then).
    pub fn awaiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Leader `me`, whose log ends at `last` (its empty entry), takes over: every
    /// follower probing from that entry, its probe unanswered, replicates at once.
    pub fn took_over(
        &mut self,
        me: u64,
        last: u64,
        followers: impl IntoIterator<Item = FollowerProgress>,
    ) -> Vec<Action> {
        self.waiting.clear();
        let mut actions = Vec::new();
        for follower in followers {
            if follower.id != me
                && follower.state == ProgressState::Probe
                && follower.paused
                && follower.next == last
            {
                self.waiting.push(follower.id);
                actions.push(Action::Replicate { id: follower.id, next: last + 1 });
            }
        }
        actions
    }

    /// A leader's answer from a follower in its own term, with that follower's progress:
    /// the first answer of a follower replicated to at once ends the wait; if it rejects
    /// while nothing of it is matched, the follower probes again from its rejection.
    pub fn answered(
        &mut self,
        answer: AppendAnswer,
        progress: Option<FollowerProgress>,
    ) -> Option<Action> {
        let at = self.waiting.iter().position(|&id| id == answer.from)?;
        self.waiting.swap_remove(at);
        let progress = progress?;
        (answer.reject && progress.state == ProgressState::Replicate && progress.matched == 0)
            .then_some(Action::Probe { id: answer.from, next: answer.index + 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(id: u64, state: ProgressState, paused: bool, next: u64) -> FollowerProgress {
        FollowerProgress { id, state, paused, next, matched: 0 }
    }

    #[test]
    fn followers_probing_from_the_empty_entry_replicate_at_once() {
        let mut optimistic = Optimistic::default();
        let actions = optimistic.took_over(
            1,
            50,
            [
                follower(1, ProgressState::Replicate, false, 51),
                follower(2, ProgressState::Probe, true, 50),
                follower(3, ProgressState::Probe, true, 40),
                follower(4, ProgressState::Probe, false, 50),
                follower(5, ProgressState::Snapshot, true, 50),
            ],
        );
        assert_eq!(actions, [Action::Replicate { id: 2, next: 51 }]);
        assert!(optimistic.awaiting());
    }

    #[test]
    fn a_first_rejection_probes_again_from_its_hint_and_acceptance_ends_the_wait() {
        let mut optimistic = Optimistic::default();
        let probing = |id| follower(id, ProgressState::Probe, true, 50);
        optimistic.took_over(1, 50, [probing(2), probing(3)]);
        let replicating = |id| FollowerProgress { state: ProgressState::Replicate, ..probing(id) };
        let rejected = AppendAnswer { from: 2, reject: true, index: 30 };
        assert_eq!(
            optimistic.answered(rejected, Some(replicating(2))),
            Some(Action::Probe { id: 2, next: 31 })
        );
        assert_eq!(optimistic.answered(rejected, Some(replicating(2))), None, "first answer only");
        let accepted = AppendAnswer { from: 3, reject: false, index: 51 };
        assert_eq!(optimistic.answered(accepted, Some(replicating(3))), None);
        assert!(!optimistic.awaiting());
        // A rejection after raft-rs matched something is raft-rs's own to handle.
        optimistic.took_over(1, 60, [follower(2, ProgressState::Probe, true, 60)]);
        let matched = FollowerProgress { matched: 10, ..replicating(2) };
        assert_eq!(optimistic.answered(rejected, Some(matched)), None);
    }
}
