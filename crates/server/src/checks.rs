//! etcd's checks of a KV request before it is served or proposed: the same refusals, in
//! the same order, with the same texts (clients match on them). A request refused here
//! never reaches the log.
//!
//! - Range, DeleteRange: the key must be given.
//! - Put: the key must be given; `ignore_value` with a value, or `ignore_lease` with a
//!   lease, is refused.
//! - Txn: at most [`kv::TXN_OPS_MAX`] compares and operations per branch; every compare
//!   names a key; every operation of *both* branches passes its own check (nested
//!   transactions included), and an operation with nothing in it is refused as etcd does
//!   ("key not found"). Two writes to one key are refused when the transaction applies
//!   (the state machine's duplicate-key check), since which branch runs decides it.

use tonic::Status;
use worknode_kv as kv;

use crate::convert::invalid;
use crate::pb;

const EMPTY_KEY: &str = "etcdserver: key is not provided";

/// A Range as etcd checks it.
pub fn range(request: &pb::RangeRequest) -> Result<(), Status> {
    key_given(&request.key)
}

/// A Put as etcd checks it.
pub fn put(request: &pb::PutRequest) -> Result<(), Status> {
    key_given(&request.key)?;
    if request.ignore_value && !request.value.is_empty() {
        return Err(invalid("etcdserver: value is provided"));
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(invalid("etcdserver: lease is provided"));
    }
    Ok(())
}

/// A DeleteRange as etcd checks it.
pub fn delete_range(request: &pb::DeleteRangeRequest) -> Result<(), Status> {
    key_given(&request.key)
}

/// A Txn as etcd checks it.
pub fn txn(request: &pb::TxnRequest) -> Result<(), Status> {
    let widest = request.compare.len().max(request.success.len()).max(request.failure.len());
    if widest > kv::TXN_OPS_MAX {
        return Err(invalid("etcdserver: too many operations in txn request"));
    }
    for compare in &request.compare {
        key_given(&compare.key)?;
    }
    request.success.iter().chain(&request.failure).try_for_each(operation)
}

fn operation(op: &pb::RequestOp) -> Result<(), Status> {
    use pb::request_op::Request;
    match &op.request {
        Some(Request::RequestRange(range_op)) => range(range_op),
        Some(Request::RequestPut(put_op)) => put(put_op),
        Some(Request::RequestDeleteRange(delete)) => delete_range(delete),
        Some(Request::RequestTxn(nested)) => txn(nested),
        None => Err(invalid("etcdserver: key not found")),
    }
}

fn key_given(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(invalid(EMPTY_KEY));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::pb::request_op::Request;

    fn refused(result: Result<(), Status>) -> String {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        status.message().to_string()
    }

    fn get(key: &str) -> pb::RequestOp {
        let range = pb::RangeRequest { key: key.into(), ..Default::default() };
        pb::RequestOp { request: Some(Request::RequestRange(range)) }
    }

    fn set(key: &str) -> pb::RequestOp {
        let put = pb::PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() };
        pb::RequestOp { request: Some(Request::RequestPut(put)) }
    }

    fn compare(key: &str) -> pb::Compare {
        pb::Compare { key: key.into(), ..Default::default() }
    }

    #[test]
    fn every_request_names_a_key() {
        assert_eq!(refused(range(&pb::RangeRequest::default())), EMPTY_KEY);
        assert_eq!(refused(put(&pb::PutRequest::default())), EMPTY_KEY);
        assert_eq!(refused(delete_range(&pb::DeleteRangeRequest::default())), EMPTY_KEY);
        let whole_keyspace =
            pb::RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
        assert!(range(&whole_keyspace).is_ok(), "etcdctl get --from-key '' sends \\0");
    }

    #[test]
    fn a_put_that_ignores_its_value_or_lease_must_not_give_one() {
        let put_ignoring = |value: &[u8], lease| pb::PutRequest {
            key: b"k".to_vec(),
            value: value.to_vec(),
            lease,
            ignore_value: true,
            ignore_lease: lease != 0,
            ..Default::default()
        };
        assert_eq!(refused(put(&put_ignoring(b"v", 0))), "etcdserver: value is provided");
        assert_eq!(refused(put(&put_ignoring(b"", 7))), "etcdserver: lease is provided");
        assert!(put(&put_ignoring(b"", 0)).is_ok());
    }

    #[test]
    fn a_txn_is_checked_whole_both_branches_and_nested() {
        let ok = pb::TxnRequest {
            compare: vec![compare("a")],
            success: vec![set("a")],
            failure: vec![get("b")],
        };
        assert!(txn(&ok).is_ok());
        // A compare without a key.
        let txn_with = |compare, success, failure| pb::TxnRequest { compare, success, failure };
        assert_eq!(refused(txn(&txn_with(vec![compare("")], vec![], vec![]))), EMPTY_KEY);
        // The branch that would not run is checked too.
        assert_eq!(refused(txn(&txn_with(vec![], vec![set("a")], vec![get("")]))), EMPTY_KEY);
        // Inside a nested transaction.
        let nested = txn_with(vec![], vec![set("")], vec![]);
        let outer = pb::RequestOp { request: Some(Request::RequestTxn(nested)) };
        assert_eq!(refused(txn(&txn_with(vec![], vec![outer], vec![]))), EMPTY_KEY);
        // An operation with nothing in it.
        let empty = pb::RequestOp { request: None };
        assert_eq!(
            refused(txn(&txn_with(vec![], vec![empty], vec![]))),
            "etcdserver: key not found"
        );
    }

    #[test]
    fn a_txn_holds_at_most_128_compares_or_operations_per_branch() {
        let many = |n: usize| (0..n).map(|i| set(&format!("k{i}"))).collect::<Vec<_>>();
        let compares = |n: usize| (0..n).map(|i| compare(&format!("k{i}"))).collect::<Vec<_>>();
        let at_bound =
            pb::TxnRequest { compare: compares(128), success: many(128), failure: many(128) };
        assert!(txn(&at_bound).is_ok());
        let too_many = "etcdserver: too many operations in txn request";
        for over in [
            pb::TxnRequest { compare: compares(129), ..Default::default() },
            pb::TxnRequest { success: many(129), ..Default::default() },
            pb::TxnRequest { failure: many(129), ..Default::default() },
        ] {
            assert_eq!(refused(txn(&over)), too_many);
        }
    }
}
