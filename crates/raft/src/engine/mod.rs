//! The driver's policies without I/O. Each concern is a module with its own state; it is
//! given what the loop observed — raft-rs's state as a [`RaftView`], the transport's and
//! the schedule's view of the members, the time — and returns what to do as actions,
//! which the loop ([`crate::node`]) carries out on raft-rs, the transport and the disk.
//! Time and randomness come in as arguments, so each decision is a function of its inputs
//! and its tests assert the actions.

pub mod ahead;
pub mod elections;
pub mod leases;
pub mod optimistic;
pub mod requests;
pub mod snapshots;

use raft::StateRole;

/// A hasher without a per-process key: maps iterate in the same order in every run with
/// the same inputs, so a simulated run replays from its seed.
pub(crate) type FixedHasher =
    std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// What a policy needs of raft-rs's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftView {
    /// This member.
    pub id: u64,
    /// The current term.
    pub term: u64,
    /// The role in it.
    pub role: StateRole,
    /// The leader this member knows (`raft::INVALID_ID`: none).
    pub leader: u64,
    /// Whom this member voted for in this term (`raft::INVALID_ID`: nobody).
    pub vote: u64,
    /// raft-rs's election timeout E, in ticks.
    pub election_ticks: usize,
    /// The randomized election timeout in force, in ticks.
    pub timeout_ticks: usize,
    /// raft-rs's leader lease holds: it heard its leader within the election timeout,
    /// and ignores vote requests.
    pub in_lease: bool,
}

impl RaftView {
    /// The view of `raft`.
    pub fn of<S: raft::Storage>(raft: &raft::Raft<S>) -> Self {
        Self {
            id: raft.id,
            term: raft.term,
            role: raft.state,
            leader: raft.leader_id,
            vote: raft.vote,
            election_ticks: raft.election_timeout(),
            timeout_ticks: raft.randomized_election_timeout(),
            in_lease: raft.leader_id != raft::INVALID_ID
                && raft.election_elapsed < raft.election_timeout(),
        }
    }

    /// Whether this member follows a leader it knows.
    pub fn follows(&self) -> bool {
        self.role == StateRole::Follower && self.leader != raft::INVALID_ID
    }

    /// The member this follower expects to hear from: its leader, or — between a leader
    /// and the next, as in a handoff — the candidate it voted for in this term.
    pub fn expected_leader(&self) -> Option<u64> {
        if self.role != StateRole::Follower {
            return None;
        }
        [self.leader, self.vote].into_iter().find(|&id| id != raft::INVALID_ID && id != self.id)
    }
}
