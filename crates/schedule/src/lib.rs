//! Deterministic, stake-weighted leader schedules for scheduled Raft.
//!
//! Every member of a cluster computes the same leader for every slot of an epoch from
//! committed inputs alone: the [`Stakes`], the epoch number and the cluster seed. Three
//! algorithms are offered:
//!
//! * [`Algorithm::FairRotation`] (the default) — deterministic, no randomness; after every
//!   prefix of `n` turns each member's count is within `1 − 1/(2(k − 1))` turns of its
//!   exact share `n · stake / total`.
//! * [`Algorithm::StakeLottery`] — independent stake-weighted draws (alias method) from
//!   ChaCha20 keyed by the cluster seed, one stream per epoch.
//! * [`Algorithm::SolanaCompatible`] — Solana's (Agave's) schedule, bit for bit.
//!
//! The crate is pure: no clocks, files, sockets or global random number generators.
//! [`SlotClock`] turns a caller-supplied timestamp into epoch, slot and turn.
//!
//! ```
//! use worknode_schedule::{Algorithm, LeaderSchedule, Member, ScheduleParams, Stakes};
//!
//! let stakes = Stakes::new(vec![
//!     Member { id: 1, key: None, stake: 3 },
//!     Member { id: 2, key: None, stake: 1 },
//! ])?;
//! let params = ScheduleParams { slots_per_epoch: 32, ..ScheduleParams::default() };
//! let schedule = LeaderSchedule::compute(&stakes, &params)?;
//! assert_eq!(schedule.params().algorithm, Algorithm::FairRotation);
//! let leaders: Vec<u64> = schedule.upcoming(0).map(|turn| turn.leader).collect();
//! assert_eq!(leaders.iter().filter(|&&id| id == 1).count(), 6);
//! assert_eq!(schedule.leader(5), Some(leaders[1]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod clock;
mod fair;
mod lottery;
mod schedule;
mod solana;
mod stakes;

pub use clock::{ClockError, SlotClock, SlotPosition};
pub use schedule::{
    Algorithm, LeaderSchedule, MemberSummary, ScheduleError, ScheduleParams, Turn,
    UnknownAlgorithm, SLOTS_PER_EPOCH_DEFAULT, SLOTS_PER_EPOCH_MAX, SLOTS_PER_TURN_DEFAULT,
};
pub use solana::SolanaError;
pub use stakes::{Key, Member, Stakes, StakesError, MEMBERS_MAX};
