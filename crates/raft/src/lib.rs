//! The replicated log: a driver around tikv's raft-rs, with the log in tikv's
//! raft-engine, a TCP peer transport, and the `worknode-kv` state machine.
//!
//! We do not write our own Raft: raft-rs decides; this crate owns everything around it —
//! the loop and its queues, the storage adapter, snapshots, the wire format and the
//! connections. The driver is generic over its [`Clock`], [`Transport`] and
//! [`LogStore`], so a whole cluster can run in one process.

pub mod changes;
pub mod clock_offset;
pub mod datadir;
pub mod doorbell;
pub mod draws;
pub mod engine;
mod fetch;
pub mod frame;
pub mod log_tail;
pub mod member;
pub mod node;
pub mod planted;
mod raft_log;
pub mod rotation;
pub mod snapshot_file;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod validate;

pub use node::{
    ClientRequest, Clock, LeaseReport, Node, NodeConfig, NodeCounters, NodeError, NodeHandle,
    NodeStatus, ReadReply, ReadView, StartError, SystemClock, Transport, WriteReply,
};
pub use planted::PlantedBug;
pub use storage::{EngineStorage, LogStats, LogStore, SnapshotSlot, StoreError};
