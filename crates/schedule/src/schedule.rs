//! One epoch's leader schedule: who leads each turn, stored as one small index per turn.

use std::fmt;
use std::str::FromStr;

use crate::solana::SolanaError;
use crate::stakes::{Member, Stakes};
use crate::{fair, lottery, solana};

/// Slots in a Solana mainnet epoch, the default epoch length.
pub const SLOTS_PER_EPOCH_DEFAULT: u64 = 432_000;
/// Consecutive slots one leader holds by default (Solana's `NUM_CONSECUTIVE_LEADER_SLOTS`).
pub const SLOTS_PER_TURN_DEFAULT: u64 = 4;
/// Longest epoch supported: slot offsets inside an epoch are 32-bit.
pub const SLOTS_PER_EPOCH_MAX: u64 = u32::MAX as u64 - 2;

/// How leaders are chosen for the turns of an epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Deterministic stake-proportional rotation; every prefix of turns is within
    /// `1 − 1/(2(k − 1))` turns of each member's exact share. No randomness.
    #[default]
    FairRotation,
    /// Independent stake-weighted draws from ChaCha20 keyed by (cluster seed, epoch).
    StakeLottery,
    /// Solana's (Agave's) schedule, bit for bit; needs a key per member.
    SolanaCompatible,
}

impl Algorithm {
    /// Every algorithm, in the order the CLI lists them.
    pub const ALL: [Algorithm; 3] =
        [Algorithm::FairRotation, Algorithm::StakeLottery, Algorithm::SolanaCompatible];

    /// The short name used on the command line and in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::FairRotation => "fair",
            Algorithm::StakeLottery => "lottery",
            Algorithm::SolanaCompatible => "solana",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An algorithm name that is not one of `fair`, `lottery`, `solana`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown algorithm {0:?}: expected one of fair, lottery, solana")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|algorithm| algorithm.name() == text)
            .ok_or_else(|| UnknownAlgorithm(text.to_owned()))
    }
}

/// Everything besides the stakes that determines a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleParams {
    /// How leaders are chosen.
    pub algorithm: Algorithm,
    /// The epoch number; the epoch's first slot is `epoch · slots_per_epoch`.
    pub epoch: u64,
    /// Cluster-wide seed (used by `StakeLottery`; Solana's rule ignores it by design).
    pub cluster_seed: [u8; 32],
    /// Slots in the epoch.
    pub slots_per_epoch: u64,
    /// Consecutive slots one leader holds.
    pub slots_per_turn: u64,
}

impl Default for ScheduleParams {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::default(),
            epoch: 0,
            cluster_seed: [0; 32],
            slots_per_epoch: SLOTS_PER_EPOCH_DEFAULT,
            slots_per_turn: SLOTS_PER_TURN_DEFAULT,
        }
    }
}

/// Why a schedule cannot be computed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// `slots_per_epoch` is zero or too large.
    #[error("slots per epoch is {0}: it must be between 1 and {SLOTS_PER_EPOCH_MAX}")]
    SlotsPerEpoch(u64),
    /// `slots_per_turn` is zero or longer than the epoch.
    #[error("slots per turn is {slots_per_turn}: it must be between 1 and the epoch's {slots_per_epoch} slots")]
    SlotsPerTurn {
        /// The rejected value.
        slots_per_turn: u64,
        /// The epoch length it was checked against.
        slots_per_epoch: u64,
    },
    /// The epoch's first slot does not fit in a u64.
    #[error("epoch {epoch} with {slots_per_epoch} slots per epoch starts beyond slot {max}", max = u64::MAX)]
    EpochTooLarge {
        /// The rejected epoch.
        epoch: u64,
        /// The epoch length.
        slots_per_epoch: u64,
    },
    /// The stake table does not suit Solana's rule.
    #[error(transparent)]
    Solana(#[from] SolanaError),
}

/// An unsigned integer type a turn's leader index is stored in.
pub(crate) trait TurnIndex: Copy {
    fn from_index(index: u32) -> Self;
    fn index(self) -> u32;
}

macro_rules! turn_index {
    ($($int:ty),*) => {$(
        impl TurnIndex for $int {
            #[inline]
            fn from_index(index: u32) -> Self {
                debug_assert!(index <= <$int>::MAX as u32);
                index as $int
            }
            #[inline]
            fn index(self) -> u32 {
                u32::from(self)
            }
        }
    )*};
}
turn_index!(u8, u16, u32);

/// Leader index per turn, in the narrowest integer that can name every member.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TurnTable {
    Narrow(Vec<u8>),
    Medium(Vec<u16>),
    Wide(Vec<u32>),
}

impl TurnTable {
    fn compute(
        stakes: &Stakes,
        params: &ScheduleParams,
        turns: u32,
    ) -> Result<Self, ScheduleError> {
        fn fill<I: TurnIndex>(
            stakes: &Stakes,
            params: &ScheduleParams,
            turns: u32,
        ) -> Result<Vec<I>, ScheduleError> {
            let mut out = Vec::new();
            match params.algorithm {
                Algorithm::FairRotation => fair::fill(stakes, turns, &mut out),
                Algorithm::StakeLottery => {
                    lottery::fill(stakes, params.epoch, params.cluster_seed, turns, &mut out)
                }
                Algorithm::SolanaCompatible => solana::fill(stakes, params.epoch, turns, &mut out)?,
            }
            Ok(out)
        }
        Ok(if stakes.len() <= usize::from(u8::MAX) + 1 {
            TurnTable::Narrow(fill(stakes, params, turns)?)
        } else if stakes.len() <= usize::from(u16::MAX) + 1 {
            TurnTable::Medium(fill(stakes, params, turns)?)
        } else {
            TurnTable::Wide(fill(stakes, params, turns)?)
        })
    }

    #[inline]
    fn get(&self, turn: usize) -> u32 {
        match self {
            TurnTable::Narrow(turns) => turns[turn].index(),
            TurnTable::Medium(turns) => turns[turn].index(),
            TurnTable::Wide(turns) => turns[turn].index(),
        }
    }

    fn len(&self) -> usize {
        match self {
            TurnTable::Narrow(turns) => turns.len(),
            TurnTable::Medium(turns) => turns.len(),
            TurnTable::Wide(turns) => turns.len(),
        }
    }

    fn bytes_per_turn(&self) -> usize {
        match self {
            TurnTable::Narrow(_) => 1,
            TurnTable::Medium(_) => 2,
            TurnTable::Wide(_) => 4,
        }
    }
}

/// One turn: a run of consecutive slots led by one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Turn {
    /// Turn number within the epoch, from 0.
    pub index: u32,
    /// First slot of the turn (absolute slot number).
    pub first_slot: u64,
    /// Last slot of the turn, inclusive (absolute slot number).
    pub last_slot: u64,
    /// Canonical index of the leading member in [`LeaderSchedule::members`].
    pub leader_index: u32,
    /// Id of the leading member.
    pub leader: u64,
}

/// The leader of every slot of one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderSchedule {
    params: ScheduleParams,
    members: Vec<Member>,
    stake_total: u64,
    first_slot: u64,
    /// `⌈2^64 / slots_per_turn⌉`: turn = (offset · magic) >> 64 exactly for 32-bit offsets.
    turn_magic: u128,
    turns: TurnTable,
}

impl LeaderSchedule {
    /// Computes the schedule of `params.epoch` from `stakes`.
    pub fn compute(stakes: &Stakes, params: &ScheduleParams) -> Result<Self, ScheduleError> {
        if params.slots_per_epoch == 0 || params.slots_per_epoch > SLOTS_PER_EPOCH_MAX {
            return Err(ScheduleError::SlotsPerEpoch(params.slots_per_epoch));
        }
        if params.slots_per_turn == 0 || params.slots_per_turn > params.slots_per_epoch {
            return Err(ScheduleError::SlotsPerTurn {
                slots_per_turn: params.slots_per_turn,
                slots_per_epoch: params.slots_per_epoch,
            });
        }
        let first_slot = params.epoch.checked_mul(params.slots_per_epoch).ok_or(
            ScheduleError::EpochTooLarge {
                epoch: params.epoch,
                slots_per_epoch: params.slots_per_epoch,
            },
        )?;
        // The last turn may be shorter when the epoch is not a whole number of turns,
        // exactly as Agave draws at every slot i with i % repeat == 0.
        let turn_count = params.slots_per_epoch.div_ceil(params.slots_per_turn) as u32;
        let turns = TurnTable::compute(stakes, params, turn_count)?;
        assert_eq!(turns.len(), turn_count as usize);
        let turn_magic = (1u128 << 64).div_ceil(u128::from(params.slots_per_turn));
        Ok(Self {
            params: *params,
            members: stakes.members().to_vec(),
            stake_total: stakes.total(),
            first_slot,
            turn_magic,
            turns,
        })
    }

    /// The parameters this schedule was computed with.
    pub fn params(&self) -> &ScheduleParams {
        &self.params
    }

    /// Members in canonical order; turn leader indexes point into this slice.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The epoch this schedule covers.
    pub fn epoch(&self) -> u64 {
        self.params.epoch
    }

    /// Slots in the epoch.
    pub fn slots_per_epoch(&self) -> u64 {
        self.params.slots_per_epoch
    }

    /// Consecutive slots one leader holds.
    pub fn slots_per_turn(&self) -> u64 {
        self.params.slots_per_turn
    }

    /// First slot of the epoch (absolute).
    pub fn first_slot(&self) -> u64 {
        self.first_slot
    }

    /// Last slot of the epoch, inclusive (absolute).
    pub fn last_slot(&self) -> u64 {
        self.first_slot + self.params.slots_per_epoch - 1
    }

    /// Number of turns in the epoch.
    pub fn turn_count(&self) -> u32 {
        self.turns.len() as u32
    }

    /// Bytes used per turn by the leader table (1, 2 or 4).
    pub fn bytes_per_turn(&self) -> usize {
        self.turns.bytes_per_turn()
    }

    /// The turn holding this absolute slot, if the slot is in this epoch.
    #[inline]
    pub fn turn_of(&self, slot: u64) -> Option<u32> {
        let offset = slot.checked_sub(self.first_slot)?;
        if offset >= self.params.slots_per_epoch {
            return None;
        }
        // offset < 2^32 and slots_per_turn < 2^32, so the multiply-shift is exact.
        Some(((u128::from(offset) * self.turn_magic) >> 64) as u32)
    }

    /// Canonical index of the member leading this absolute slot. O(1).
    #[inline]
    pub fn leader_index(&self, slot: u64) -> Option<u32> {
        self.turn_of(slot).map(|turn| self.turns.get(turn as usize))
    }

    /// Id of the member leading this absolute slot. O(1).
    #[inline]
    pub fn leader(&self, slot: u64) -> Option<u64> {
        self.leader_index(slot).map(|index| self.members[index as usize].id)
    }

    /// The turn with this number.
    pub fn turn(&self, index: u32) -> Option<Turn> {
        if index as usize >= self.turns.len() {
            return None;
        }
        let first_slot = self.first_slot + u64::from(index) * self.params.slots_per_turn;
        let last_slot = (first_slot + self.params.slots_per_turn - 1).min(self.last_slot());
        let leader_index = self.turns.get(index as usize);
        Some(Turn {
            index,
            first_slot,
            last_slot,
            leader_index,
            leader: self.members[leader_index as usize].id,
        })
    }

    /// Turns from the one holding `slot` to the end of the epoch. A slot before the epoch
    /// starts at its first turn; a slot after it yields nothing.
    pub fn upcoming(&self, slot: u64) -> impl Iterator<Item = Turn> + '_ {
        let start = if slot < self.first_slot {
            0
        } else {
            self.turn_of(slot).unwrap_or(self.turn_count())
        };
        (start..self.turn_count()).filter_map(move |index| self.turn(index))
    }

    /// Per-member statistics of the epoch, in canonical member order. O(turns + members).
    pub fn summary(&self) -> Vec<MemberSummary> {
        let turn_count = self.turns.len() as u64;
        let shares: Vec<f64> = self
            .members
            .iter()
            .map(|member| member.stake as f64 / self.stake_total as f64)
            .collect();
        let mut tallies = vec![Tally::default(); self.members.len()];
        for turn in 0..self.turns.len() {
            let leader = self.turns.get(turn) as usize;
            tallies[leader].record(turn as u64 + 1, shares[leader]);
        }
        self.members
            .iter()
            .zip(tallies)
            .zip(shares)
            .map(|((member, tally), stake_share)| MemberSummary {
                id: member.id,
                stake: member.stake,
                stake_share,
                turns: tally.turns,
                turn_share: tally.turns as f64 / turn_count as f64,
                longest_gap_turns: tally.longest_gap.max(turn_count - tally.last_turn),
                deviation_max_turns: tally
                    .deviation_max
                    .max((turn_count as f64 * stake_share - tally.turns as f64).abs()),
            })
            .collect()
    }
}

/// One member's statistics over an epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemberSummary {
    /// Member id.
    pub id: u64,
    /// Member stake.
    pub stake: u64,
    /// Stake as a fraction of the total.
    pub stake_share: f64,
    /// Turns led in the epoch.
    pub turns: u64,
    /// Turns led as a fraction of all turns.
    pub turn_share: f64,
    /// Longest run of consecutive turns led by others (from the epoch start to the first
    /// turn, between turns, and from the last turn to the epoch end).
    pub longest_gap_turns: u64,
    /// Largest distance, over every prefix of the epoch's turns, between the turns led
    /// and the exact share `n · stake / total`.
    pub deviation_max_turns: f64,
}

/// Running statistics of one member over the turns of an epoch.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    turns: u64,
    /// Turn number (from 1) of the latest turn led; 0 before the first.
    last_turn: u64,
    longest_gap: u64,
    deviation_max: f64,
}

impl Tally {
    /// Records a turn led at turn number `turn` (from 1). Between its own turns a member's
    /// deviation only drifts linearly, so its extremes sit just before and just after them.
    fn record(&mut self, turn: u64, share: f64) {
        debug_assert!(turn > self.last_turn);
        self.longest_gap = self.longest_gap.max(turn - self.last_turn - 1);
        let lag_before = (turn - 1) as f64 * share - self.turns as f64;
        self.turns += 1;
        let lead_after = self.turns as f64 - turn as f64 * share;
        self.deviation_max = self.deviation_max.max(lag_before.abs()).max(lead_after.abs());
        self.last_turn = turn;
    }
}
