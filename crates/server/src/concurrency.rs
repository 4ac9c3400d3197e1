//! `v3lockpb.Lock` and `v3electionpb.Election`: etcd's mutex and election recipes run on
//! the server for clients that call these services instead of running them themselves
//! (the `etcd-client` crate's `lock` and `campaign`, among others).
//!
//! The recipes are etcd's `clientv3/concurrency`, on the client's lease: a contender's key
//! is the name, a slash and its lease id in hex, put only if absent; the contender whose
//! key was created first holds the lock or leads; the others wait, each for the deletion
//! of the newest key created before its own (no herd when the holder goes). A key dies
//! with its lease, so a holder that dies loses the lock when its lease expires.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use worknode_kv as kv;

use crate::convert;
use crate::service::Shared;
use crate::v3electionpb as election;
use crate::v3lockpb as lock;

/// The end of the range of every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `name/`: the prefix of a lock's or an election's keys.
fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// A contender's key: the prefix and its lease in hex (etcd's form).
fn contender_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix_of(name);
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// The first-created (`first`) or last-created key under `prefix`, created at or before
/// `max_create` (0: any).
fn by_creation(prefix: &[u8], first: bool, max_create: i64) -> kv::RangeRequest {
    kv::RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: if first { kv::SortOrder::Ascend } else { kv::SortOrder::Descend },
        sort_target: kv::SortTarget::Create,
        max_create_revision: max_create,
        ..kv::RangeRequest::default()
    }
}

fn create_revision_is(key: &[u8], revision: i64) -> kv::Compare {
    kv::Compare {
        result: kv::CompareResult::Equal,
        target: kv::CompareTarget::Create(revision),
        key: key.to_vec(),
        range_end: Vec::new(),
    }
}

fn range_of(response: &kv::ResponseOp) -> Option<&kv::RangeResponse> {
    match response {
        kv::ResponseOp::Range(range) => Some(range),
        _ => None,
    }
}

impl Shared {
    /// A transaction through the log: its answer and the revision after it.
    async fn txn(&self, txn: kv::TxnRequest) -> Result<(kv::TxnResponse, i64), Status> {
        let written = self.write(kv::Command::Txn(txn)).await?;
        match written.applied.outcome {
            kv::Outcome::Txn(response) => Ok((response, written.applied.revision)),
            kv::Outcome::Error(error) => Err(convert::kv_status(&error)),
            other => Err(Status::internal(format!("a transaction answered with {other:?}"))),
        }
    }

    /// A linearizable read: its keys and the revision it saw.
    async fn read(&self, request: &kv::RangeRequest) -> Result<(Vec<kv::KeyValue>, i64), Status> {
        let view = self.view(true).await?;
        let response = view.store.range(request).map_err(|error| convert::kv_status(&error))?;
        Ok((response.kvs, view.store.revision()))
    }

    /// Waits until no key under `prefix` created at or before `max_create` is left
    /// (etcd's `waitDeletes`): each time for the newest such key to be deleted or
    /// replaced. The revision of the read that found none.
    async fn wait_deletes(&self, prefix: &[u8], max_create: i64) -> Result<i64, Status> {
        let mut heads = self.node.changes().heads();
        loop {
            let (kvs, revision) = self.read(&by_creation(prefix, false, max_create)).await?;
            let Some(newest) = kvs.into_iter().next() else {
                return Ok(revision);
            };
            self.wait_gone(&newest, &mut heads).await?;
        }
    }

    /// Waits until `kv`'s key is deleted (or created anew: a different key then).
    async fn wait_gone(
        &self,
        kv: &kv::KeyValue,
        heads: &mut tokio::sync::watch::Receiver<i64>,
    ) -> Result<(), Status> {
        let one = kv::RangeRequest { key: kv.key.clone(), ..kv::RangeRequest::default() };
        loop {
            heads.borrow_and_update();
            let view = self.view(false).await?;
            let now = view.store.range(&one).map_err(|error| convert::kv_status(&error))?;
            if now.kvs.first().is_none_or(|current| current.create_revision != kv.create_revision) {
                return Ok(());
            }
            heads.changed().await.map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        }
    }
}

/// `v3lockpb.Lock`.
#[derive(Clone, Debug)]
pub struct LockService(pub Arc<Shared>);

#[tonic::async_trait]
impl lock::lock_server::Lock for LockService {
    /// etcd's mutex: holds until every key created before this one is gone.
    async fn lock(
        &self,
        request: Request<lock::LockRequest>,
    ) -> Result<Response<lock::LockResponse>, Status> {
        let request = request.into_inner();
        if request.lease == 0 {
            return Err(convert::kv_status(&kv::KvError::LeaseNotFound));
        }
        let key = contender_key(&request.name, request.lease);
        let prefix = prefix_of(&request.name);
        let owner = kv::RequestOp::Range(by_creation(&prefix, true, 0));
        let put = kv::PutRequest { key: key.clone(), lease: request.lease, ..Default::default() };
        let txn = kv::TxnRequest {
            compare: vec![create_revision_is(&key, 0)],
            success: vec![kv::RequestOp::Put(put), owner.clone()],
            failure: vec![
                kv::RequestOp::Range(kv::RangeRequest { key: key.clone(), ..Default::default() }),
                owner,
            ],
        };
        let (response, revision) = self.0.txn(txn).await?;
        let mine = if response.succeeded {
            revision
        } else {
            let existing = response.responses.first().and_then(range_of);
            existing.and_then(|r| r.kvs.first()).map_or(revision, |kv| kv.create_revision)
        };
        let holder = response.responses.get(1).and_then(range_of).and_then(|r| r.kvs.first());
        let mut seen = revision;
        if holder.is_some_and(|holder| holder.create_revision != mine) {
            seen = self.0.wait_deletes(&prefix, mine - 1).await?;
            // The lease may have expired while this contender waited.
            let one = kv::RangeRequest { key: key.clone(), ..Default::default() };
            if self.0.read(&one).await?.0.is_empty() {
                return Err(Status::new(Code::FailedPrecondition, "mutex: session is expired"));
            }
        }
        Ok(Response::new(lock::LockResponse { header: Some(self.0.header_at(seen)), key }))
    }

    async fn unlock(
        &self,
        request: Request<lock::UnlockRequest>,
    ) -> Result<Response<lock::UnlockResponse>, Status> {
        let key = request.into_inner().key;
        let delete = kv::DeleteRangeRequest { key, ..Default::default() };
        let written = self.0.write(kv::Command::DeleteRange(delete)).await?;
        Ok(Response::new(lock::UnlockResponse {
            header: Some(self.0.header_at(written.applied.revision)),
        }))
    }
}

/// `v3electionpb.Election`.
#[derive(Clone, Debug)]
pub struct ElectionService(pub Arc<Shared>);

fn missing_leader() -> Status {
    Status::invalid_argument("\"leader\" field must be provided")
}

impl ElectionService {
    /// The current leader's key-value, if any, and the revision it was read at.
    async fn leader_of(&self, name: &[u8]) -> Result<(Option<kv::KeyValue>, i64), Status> {
        let (kvs, revision) = self.0.read(&by_creation(&prefix_of(name), true, 0)).await?;
        Ok((kvs.into_iter().next(), revision))
    }

    /// Puts `value` on the leader's key while it still leads.
    async fn proclaim_value(
        &self,
        leader: &election::LeaderKey,
        value: Vec<u8>,
    ) -> Result<i64, Status> {
        let put = kv::PutRequest {
            key: leader.key.clone(),
            value,
            ignore_lease: true,
            ..Default::default()
        };
        let txn = kv::TxnRequest {
            compare: vec![create_revision_is(&leader.key, leader.rev)],
            success: vec![kv::RequestOp::Put(put)],
            failure: Vec::new(),
        };
        let (response, revision) = self.0.txn(txn).await?;
        if !response.succeeded {
            return Err(Status::new(Code::FailedPrecondition, "election: not leader"));
        }
        Ok(revision)
    }
}

type ObserveStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<election::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl election::election_server::Election for ElectionService {
    /// etcd's election: leads once every key created before this one is gone.
    async fn campaign(
        &self,
        request: Request<election::CampaignRequest>,
    ) -> Result<Response<election::CampaignResponse>, Status> {
        let request = request.into_inner();
        if request.lease == 0 {
            return Err(convert::kv_status(&kv::KvError::LeaseNotFound));
        }
        let key = contender_key(&request.name, request.lease);
        let put = kv::PutRequest {
            key: key.clone(),
            value: request.value.clone(),
            lease: request.lease,
            ..Default::default()
        };
        let txn = kv::TxnRequest {
            compare: vec![create_revision_is(&key, 0)],
            success: vec![kv::RequestOp::Put(put)],
            failure: vec![kv::RequestOp::Range(kv::RangeRequest {
                key: key.clone(),
                ..Default::default()
            })],
        };
        let (response, revision) = self.0.txn(txn).await?;
        let mut leader = election::LeaderKey {
            name: request.name.clone(),
            key: key.clone(),
            rev: revision,
            lease: request.lease,
        };
        if !response.succeeded {
            if let Some(existing) =
                response.responses.first().and_then(range_of).and_then(|r| r.kvs.first())
            {
                leader.rev = existing.create_revision;
                if existing.value != request.value {
                    self.proclaim_value(&leader, request.value).await?;
                }
            }
        }
        let seen = self.0.wait_deletes(&prefix_of(&request.name), leader.rev - 1).await?;
        Ok(Response::new(election::CampaignResponse {
            header: Some(self.0.header_at(seen)),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<election::ProclaimRequest>,
    ) -> Result<Response<election::ProclaimResponse>, Status> {
        let request = request.into_inner();
        let leader = request.leader.ok_or_else(missing_leader)?;
        let revision = self.proclaim_value(&leader, request.value).await?;
        Ok(Response::new(election::ProclaimResponse { header: Some(self.0.header_at(revision)) }))
    }

    async fn leader(
        &self,
        request: Request<election::LeaderRequest>,
    ) -> Result<Response<election::LeaderResponse>, Status> {
        let (leader, revision) = self.leader_of(&request.into_inner().name).await?;
        let kv = leader.ok_or_else(|| Status::new(Code::Unknown, "election: no leader"))?;
        Ok(Response::new(election::LeaderResponse {
            header: Some(self.0.header_at(revision)),
            kv: Some(convert::key_value(kv)),
        }))
    }

    type ObserveStream = ObserveStream;

    /// The leader now, then each new leader or proclaimed value.
    async fn observe(
        &self,
        request: Request<election::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let name = request.into_inner().name;
        let (out, responses) = mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move {
            let mut heads = service.0.node.changes().heads();
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                heads.borrow_and_update();
                let answer = match service.leader_of(&name).await {
                    Ok((Some(kv), revision)) => {
                        let now = Some((kv.key.clone(), kv.mod_revision));
                        if now == last {
                            None
                        } else {
                            last = now;
                            Some(Ok(election::LeaderResponse {
                                header: Some(service.0.header_at(revision)),
                                kv: Some(convert::key_value(kv)),
                            }))
                        }
                    }
                    Ok((None, _)) => None,
                    Err(status) => Some(Err(status)),
                };
                if let Some(answer) = answer {
                    let failed = answer.is_err();
                    if out.send(answer).await.is_err() || failed {
                        return;
                    }
                }
                tokio::select! {
                    () = out.closed() => return,
                    changed = heads.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(responses)) as ObserveStream))
    }

    async fn resign(
        &self,
        request: Request<election::ResignRequest>,
    ) -> Result<Response<election::ResignResponse>, Status> {
        let leader = request.into_inner().leader.ok_or_else(missing_leader)?;
        let txn = kv::TxnRequest {
            compare: vec![create_revision_is(&leader.key, leader.rev)],
            success: vec![kv::RequestOp::DeleteRange(kv::DeleteRangeRequest {
                key: leader.key.clone(),
                ..Default::default()
            })],
            failure: Vec::new(),
        };
        let (_, revision) = self.0.txn(txn).await?;
        Ok(Response::new(election::ResignResponse { header: Some(self.0.header_at(revision)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes_are_etcds() {
        assert_eq!(contender_key(b"jobs", 0x694d), b"jobs/694d".to_vec());
        assert_eq!(prefix_end(b"jobs/"), b"jobs0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }
}
