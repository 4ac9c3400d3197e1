//! etcd protobuf messages ↔ the state machine's types, and errors → gRPC statuses with
//! etcd's codes and texts (clients match on both).

use tonic::{Code, Status};
use worknode_kv as kv;
use worknode_raft::NodeError;

use crate::pb;
use crate::pb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::range_request::{SortOrder, SortTarget};

/// Largest request etcd accepts by default (`--max-request-bytes`, 1.5 MiB).
pub const REQUEST_BYTES_MAX: usize = 1_572_864;

/// A request that must be refused before it reaches the log.
pub fn invalid(message: &str) -> Status {
    Status::new(Code::InvalidArgument, message)
}

/// The gRPC status etcd would return for this failure.
pub fn status(error: &NodeError) -> Status {
    match error {
        NodeError::NoLeader | NodeError::Timeout | NodeError::Stopped => {
            Status::new(Code::Unavailable, error.to_string())
        }
        NodeError::TooManyRequests => Status::new(Code::ResourceExhausted, error.to_string()),
        NodeError::Kv(kv_error) => kv_status(kv_error),
    }
}

/// The gRPC status for a state-machine refusal.
pub fn kv_status(error: &kv::KvError) -> Status {
    let code = match error {
        kv::KvError::Compacted { .. } | kv::KvError::FutureRevision => Code::OutOfRange,
        kv::KvError::LeaseNotFound => Code::NotFound,
        kv::KvError::LeaseExists => Code::FailedPrecondition,
        kv::KvError::LeaseTtlTooLarge => Code::OutOfRange,
        kv::KvError::NoSpace => Code::ResourceExhausted,
        kv::KvError::EmptyKey
        | kv::KvError::KeyNotFound
        | kv::KvError::DuplicateKey
        | kv::KvError::TooManyOps => Code::InvalidArgument,
    };
    Status::new(code, error.to_string())
}

/// State-machine alarm → wire alarm.
pub fn alarm_member(alarm: kv::AlarmMember) -> pb::AlarmMember {
    let kind = match alarm.alarm {
        kv::AlarmType::NoSpace => pb::AlarmType::Nospace,
        kv::AlarmType::Corrupt => pb::AlarmType::Corrupt,
    };
    pb::AlarmMember { member_id: alarm.member_id, alarm: kind as i32 }
}

/// Wire alarm type → state-machine alarm type; `None` for NONE (and unknown values),
/// which etcd treats as naming no alarm.
pub fn alarm_type(alarm: i32) -> Option<kv::AlarmType> {
    match pb::AlarmType::try_from(alarm) {
        Ok(pb::AlarmType::Nospace) => Some(kv::AlarmType::NoSpace),
        Ok(pb::AlarmType::Corrupt) => Some(kv::AlarmType::Corrupt),
        _ => None,
    }
}

/// How etcd names a raised alarm in `Status.errors`.
pub fn alarm_error(alarm: kv::AlarmMember) -> String {
    let name = match alarm.alarm {
        kv::AlarmType::NoSpace => "NOSPACE",
        kv::AlarmType::Corrupt => "CORRUPT",
    };
    format!("memberID:{} alarm:{name}", alarm.member_id)
}

/// State-machine event → wire event.
pub fn event(event: kv::Event) -> crate::mvccpb::Event {
    crate::mvccpb::Event {
        r#type: event_type(event.kind),
        kv: Some(key_value(event.kv)),
        prev_kv: event.prev_kv.map(key_value),
    }
}

fn event_type(kind: kv::EventKind) -> i32 {
    let kind = match kind {
        kv::EventKind::Put => crate::mvccpb::event::EventType::Put,
        kv::EventKind::Delete => crate::mvccpb::event::EventType::Delete,
    };
    kind as i32
}

/// A shared event → wire event, copying its previous value only when asked for.
pub fn event_ref(event: &kv::Event, prev_kv: bool) -> crate::mvccpb::Event {
    crate::mvccpb::Event {
        r#type: event_type(event.kind),
        kv: Some(key_value(event.kv.clone())),
        prev_kv: if prev_kv { event.prev_kv.clone().map(key_value) } else { None },
    }
}

/// State-machine pair → wire pair.
pub fn key_value(kv: kv::KeyValue) -> crate::mvccpb::KeyValue {
    crate::mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// Wire pair → state-machine pair (a backup's, read back).
pub fn state_key_value(kv: crate::mvccpb::KeyValue) -> kv::KeyValue {
    kv::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// Wire range → state-machine range.
pub fn range_request(request: pb::RangeRequest) -> kv::RangeRequest {
    kv::RangeRequest {
        sort_order: match request.sort_order() {
            SortOrder::None => kv::SortOrder::None,
            SortOrder::Ascend => kv::SortOrder::Ascend,
            SortOrder::Descend => kv::SortOrder::Descend,
        },
        sort_target: match request.sort_target() {
            SortTarget::Key => kv::SortTarget::Key,
            SortTarget::Version => kv::SortTarget::Version,
            SortTarget::Create => kv::SortTarget::Create,
            SortTarget::Mod => kv::SortTarget::Mod,
            SortTarget::Value => kv::SortTarget::Value,
        },
        key: request.key,
        range_end: request.range_end,
        limit: request.limit,
        revision: request.revision,
        keys_only: request.keys_only,
        count_only: request.count_only,
        min_mod_revision: request.min_mod_revision,
        max_mod_revision: request.max_mod_revision,
        min_create_revision: request.min_create_revision,
        max_create_revision: request.max_create_revision,
    }
}

/// State-machine range result → wire response (header filled by the caller).
pub fn range_response(response: kv::RangeResponse) -> pb::RangeResponse {
    pb::RangeResponse {
        header: None,
        kvs: response.kvs.into_iter().map(key_value).collect(),
        more: response.more,
        count: response.count,
    }
}

/// Wire put → state-machine put.
pub fn put_request(request: pb::PutRequest) -> kv::PutRequest {
    kv::PutRequest {
        key: request.key,
        value: request.value,
        lease: request.lease,
        prev_kv: request.prev_kv,
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
    }
}

/// Wire delete → state-machine delete.
pub fn delete_request(request: pb::DeleteRangeRequest) -> kv::DeleteRangeRequest {
    kv::DeleteRangeRequest {
        key: request.key,
        range_end: request.range_end,
        prev_kv: request.prev_kv,
    }
}

fn compare(compare: pb::Compare) -> Result<kv::Compare, Status> {
    let result = match compare.result() {
        CompareResult::Equal => kv::CompareResult::Equal,
        CompareResult::Greater => kv::CompareResult::Greater,
        CompareResult::Less => kv::CompareResult::Less,
        CompareResult::NotEqual => kv::CompareResult::NotEqual,
    };
    let target = match (compare.target(), compare.target_union) {
        (CompareTarget::Version, Some(TargetUnion::Version(v))) => kv::CompareTarget::Version(v),
        (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => {
            kv::CompareTarget::Create(v)
        }
        (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => kv::CompareTarget::Mod(v),
        (CompareTarget::Value, Some(TargetUnion::Value(v))) => kv::CompareTarget::Value(v),
        (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => kv::CompareTarget::Lease(v),
        // An unset value compares against zero, as in etcd.
        (CompareTarget::Version, None) => kv::CompareTarget::Version(0),
        (CompareTarget::Create, None) => kv::CompareTarget::Create(0),
        (CompareTarget::Mod, None) => kv::CompareTarget::Mod(0),
        (CompareTarget::Value, None) => kv::CompareTarget::Value(Vec::new()),
        (CompareTarget::Lease, None) => kv::CompareTarget::Lease(0),
        _ => return Err(invalid("etcdserver: compare target does not match its value")),
    };
    Ok(kv::Compare { result, target, key: compare.key, range_end: compare.range_end })
}

fn request_op(op: pb::RequestOp) -> Result<kv::RequestOp, Status> {
    use pb::request_op::Request;
    match op.request {
        Some(Request::RequestRange(range)) => Ok(kv::RequestOp::Range(range_request(range))),
        Some(Request::RequestPut(put)) => Ok(kv::RequestOp::Put(put_request(put))),
        Some(Request::RequestDeleteRange(delete)) => {
            Ok(kv::RequestOp::DeleteRange(delete_request(delete)))
        }
        Some(Request::RequestTxn(txn)) => Ok(kv::RequestOp::Txn(txn_request(txn)?)),
        // etcd's answer to an operation with nothing in it (see crate::checks).
        None => Err(invalid("etcdserver: key not found")),
    }
}

/// Wire transaction → state-machine transaction.
pub fn txn_request(request: pb::TxnRequest) -> Result<kv::TxnRequest, Status> {
    Ok(kv::TxnRequest {
        compare: request.compare.into_iter().map(compare).collect::<Result<_, _>>()?,
        success: request.success.into_iter().map(request_op).collect::<Result<_, _>>()?,
        failure: request.failure.into_iter().map(request_op).collect::<Result<_, _>>()?,
    })
}

/// State-machine transaction result → wire response; `header` goes on every level.
pub fn txn_response(response: kv::TxnResponse, header: &pb::ResponseHeader) -> pb::TxnResponse {
    use pb::response_op::Response;
    let responses = response
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                kv::ResponseOp::Range(range) => Response::ResponseRange(pb::RangeResponse {
                    header: Some(*header),
                    ..range_response(range)
                }),
                kv::ResponseOp::Put(put) => Response::ResponsePut(pb::PutResponse {
                    header: Some(*header),
                    prev_kv: put.prev_kv.map(key_value),
                }),
                kv::ResponseOp::DeleteRange(delete) => {
                    Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: Some(*header),
                        deleted: delete.deleted,
                        prev_kvs: delete.prev_kvs.into_iter().map(key_value).collect(),
                    })
                }
                kv::ResponseOp::Txn(txn) => Response::ResponseTxn(txn_response(txn, header)),
            }),
        })
        .collect();
    pb::TxnResponse { header: Some(*header), succeeded: response.succeeded, responses }
}
