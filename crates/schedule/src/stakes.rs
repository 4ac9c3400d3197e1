//! The stake table a schedule is computed from.

use std::fmt;

/// A 32-byte public key (a Solana vote account, or any node identity key).
pub type Key = [u8; 32];

/// The most members a stake table may hold: turn indexes are stored as `u32`.
pub const MEMBERS_MAX: usize = u32::MAX as usize;

/// One member of the cluster and its weight in the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    /// Cluster-wide unique id (the Raft node id in a worknode cluster).
    pub id: u64,
    /// Optional identity key; required by [`crate::Algorithm::SolanaCompatible`].
    pub key: Option<Key>,
    /// Weight of this member. Zero is allowed: such a member never leads.
    pub stake: u64,
}

/// Why a list of members is not a usable stake table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StakesError {
    /// No members at all.
    #[error("the stake table is empty: give at least one member with a positive stake")]
    Empty,
    /// Every member has stake zero, so nobody could lead.
    #[error("every member has stake 0: at least one member needs a positive stake")]
    AllZero,
    /// The stakes add up to more than `u64::MAX`.
    #[error("the stakes add up to more than {max}: scale them down", max = u64::MAX)]
    TotalOverflow,
    /// Two members share one id.
    #[error("member id {id} appears twice: ids must be unique")]
    DuplicateId {
        /// The repeated id.
        id: u64,
    },
    /// More members than a turn index can name.
    #[error("{count} members is more than the {max} a schedule supports", max = MEMBERS_MAX)]
    TooManyMembers {
        /// How many members were given.
        count: usize,
    },
}

/// A validated stake table in canonical order (ascending id).
///
/// Canonical order is what makes schedules independent of the order members were
/// listed in: every algorithm reads members in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stakes {
    members: Vec<Member>,
    total: u64,
    positive_count: usize,
}

impl Stakes {
    /// Validates `members` and sorts them by id.
    pub fn new(mut members: Vec<Member>) -> Result<Self, StakesError> {
        if members.is_empty() {
            return Err(StakesError::Empty);
        }
        if members.len() > MEMBERS_MAX {
            return Err(StakesError::TooManyMembers { count: members.len() });
        }
        members.sort_unstable_by_key(|member| member.id);
        if let Some(pair) = members.windows(2).find(|pair| pair[0].id == pair[1].id) {
            return Err(StakesError::DuplicateId { id: pair[0].id });
        }
        let mut total: u64 = 0;
        for member in &members {
            total = total.checked_add(member.stake).ok_or(StakesError::TotalOverflow)?;
        }
        if total == 0 {
            return Err(StakesError::AllZero);
        }
        let positive_count = members.iter().filter(|member| member.stake > 0).count();
        assert!(positive_count >= 1 && positive_count <= members.len());
        Ok(Self { members, total, positive_count })
    }

    /// Members in canonical (ascending id) order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Number of members, including those with stake zero.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a `Stakes` holds at least one member.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Sum of all stakes; never zero.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Number of members whose stake is positive.
    pub fn positive_count(&self) -> usize {
        self.positive_count
    }

    /// Canonical index of the member with this id.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.members.binary_search_by_key(&id, |member| member.id).ok()
    }

    /// The exact share of turns this member is owed, as a fraction of one.
    pub fn share(&self, index: usize) -> f64 {
        self.members[index].stake as f64 / self.total as f64
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.id, self.stake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, stake: u64) -> Member {
        Member { id, key: None, stake }
    }

    #[test]
    fn canonical_order_is_by_id() {
        let stakes = Stakes::new(vec![member(9, 1), member(2, 5), member(4, 0)]).unwrap();
        let ids: Vec<u64> = stakes.members().iter().map(|m| m.id).collect();
        assert_eq!(ids, [2, 4, 9]);
        assert_eq!(stakes.total(), 6);
        assert_eq!(stakes.positive_count(), 2);
        assert_eq!(stakes.index_of(4), Some(1));
        assert_eq!(stakes.index_of(5), None);
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(Stakes::new(vec![]), Err(StakesError::Empty));
        assert_eq!(Stakes::new(vec![member(1, 0), member(2, 0)]), Err(StakesError::AllZero));
        assert_eq!(
            Stakes::new(vec![member(1, u64::MAX), member(2, 1)]),
            Err(StakesError::TotalOverflow)
        );
        assert_eq!(
            Stakes::new(vec![member(7, 1), member(3, 1), member(7, 2)]),
            Err(StakesError::DuplicateId { id: 7 })
        );
    }

    #[test]
    fn a_single_member_holding_everything_is_valid() {
        let stakes = Stakes::new(vec![member(1, u64::MAX)]).unwrap();
        assert_eq!(stakes.total(), u64::MAX);
        assert!((stakes.share(0) - 1.0).abs() < f64::EPSILON);
    }
}
