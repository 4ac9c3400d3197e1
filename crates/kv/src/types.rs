//! Requests, responses and errors of the key-value API, with etcd's v3 semantics.
//!
//! These are the state machine's own types (serde, encoded into the Raft log); the server
//! maps them to and from etcd's protobuf messages.

use serde::{Deserialize, Serialize};

/// One key's current value and its history counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Revision of the put that created the key (since its last delete).
    pub create_revision: i64,
    /// Revision of the last put.
    pub mod_revision: i64,
    /// Puts since creation, from 1.
    pub version: i64,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Lease id attached to the key, 0 for none.
    pub lease: i64,
}

/// Result order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order (no sorting requested).
    #[default]
    None,
    /// Ascending by the sort target.
    Ascend,
    /// Descending by the sort target.
    Descend,
}

/// What to sort by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// Read keys: one key (`range_end` empty), a range `[key, range_end)`, every key ≥ `key`
/// (`range_end` = `\0`), or everything (`key` = `range_end` = `\0`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// First key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// End of the range, exclusive (see the type's docs for the special forms).
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// Most keys returned; 0 for no limit.
    pub limit: i64,
    /// Read at this revision; 0 for the latest.
    pub revision: i64,
    /// Result order.
    pub sort_order: SortOrder,
    /// Sort key.
    pub sort_target: SortTarget,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Only keys modified at or after this revision (0: no bound).
    pub min_mod_revision: i64,
    /// Only keys modified at or before this revision (0: no bound).
    pub max_mod_revision: i64,
    /// Only keys created at or after this revision (0: no bound).
    pub min_create_revision: i64,
    /// Only keys created at or before this revision (0: no bound).
    pub max_create_revision: i64,
}

/// Keys found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The keys (empty with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// More keys match than the limit returned.
    pub more: bool,
    /// Keys in the range.
    pub count: i64,
}

/// Write one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Lease to attach (0: none).
    pub lease: i64,
    /// Return the previous key-value pair.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// Result of a put.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The previous pair, when asked for and present.
    pub prev_kv: Option<KeyValue>,
}

/// Delete a key or range (same key forms as [`RangeRequest`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// First key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// End of the range.
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// Return the deleted pairs.
    pub prev_kv: bool,
}

/// Result of a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// Keys deleted.
    pub deleted: i64,
    /// The deleted pairs, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a compare relates the key's field to the given value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// Equal.
    Equal,
    /// The key's field is greater.
    Greater,
    /// The key's field is less.
    Less,
    /// Not equal.
    NotEqual,
}

/// Which field a compare reads, and the value it is compared with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The version.
    Version(i64),
    /// The create revision.
    Create(i64),
    /// The mod revision.
    Mod(i64),
    /// The value.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The lease.
    Lease(i64),
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The relation.
    pub result: CompareResult,
    /// The field and value.
    pub target: CompareTarget,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// With a range end, every key of the range must satisfy the compare.
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A write.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// Result of one operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// A read's result.
    Range(RangeResponse),
    /// A write's result.
    Put(PutResponse),
    /// A delete's result.
    DeleteRange(DeleteRangeResponse),
    /// A nested transaction's result.
    Txn(TxnResponse),
}

/// If every compare holds, run `success`, else `failure`; atomically, one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// Guards.
    pub compare: Vec<Compare>,
    /// Operations when every guard holds.
    pub success: Vec<RequestOp>,
    /// Operations otherwise.
    pub failure: Vec<RequestOp>,
}

/// Result of a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether the guards held.
    pub succeeded: bool,
    /// One result per operation of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// Most operations in one transaction (etcd's default `--max-txn-ops`).
pub const TXN_OPS_MAX: usize = 128;

/// Why a request failed; `message` is etcd's text, which clients match on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// The requested revision was compacted away.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted {
        /// The oldest readable revision.
        compact_revision: i64,
    },
    /// The requested revision is in the future.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// An empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value` / `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// Two writes to one key in a transaction.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// Too many operations in a transaction.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A write that adds data while the cluster's NOSPACE alarm is raised.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A grant naming a lease that exists.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant beyond [`crate::LEASE_TTL_MAX`].
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
}

/// What an alarm is about (etcd's `AlarmType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlarmType {
    /// The store reached its quota: writes that add data are refused.
    NoSpace,
    /// A member found its data corrupt.
    Corrupt,
}

/// A raised alarm: which member raised it, and what about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AlarmMember {
    /// The member that raised it.
    pub member_id: u64,
    /// The alarm.
    pub alarm: AlarmType,
}
