//! etcd's MVCC key-value semantics as a pure state machine.
//!
//! A cluster revision increments per write transaction; each key carries its create
//! revision, mod revision and version. Reads may ask for any revision not yet compacted.
//! Commands arrive through the Raft log ([`Proposal`]) and are applied at most once per
//! [`RequestId`]; the whole state snapshots and restores. No I/O, clocks or randomness.

#![forbid(unsafe_code)]

mod backup;
mod decode;
mod events;
mod leases;
mod machine;
mod store;
mod types;

pub use backup::BackupContents;
pub use events::{in_range, Changes, Event, EventKind, EVENT_OVERHEAD_BYTES};
pub use leases::{Lease, Leases, LEASE_TTL_MAX};
pub use machine::{
    Applied, Command, Outcome, Proposal, RequestId, ScheduleChange, ScheduleSettings,
    SnapshotError, StateMachine, DEDUP_WINDOW, SCHEDULE_CHANGES_MAX,
};
pub use store::{Store, ENTRY_OVERHEAD_BYTES};
pub use types::*;
