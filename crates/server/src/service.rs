//! The etcd v3 gRPC services: KV, Maintenance (alarms, status, defragment, move-leader)
//! and Cluster (member list), answered through the Raft node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status};
use worknode_kv as kv;
use worknode_raft::{ClientRequest, NodeError, NodeHandle, ReadReply, ReadView, WriteReply};

use crate::config::MemberConfig;
use crate::convert::{self, REQUEST_BYTES_MAX};
use crate::pb;

/// Shared by every service of one member.
#[derive(Debug)]
pub struct Shared {
    /// The Raft node.
    pub node: NodeHandle,
    /// Cluster id for response headers.
    pub cluster_id: u64,
    /// This member's id.
    pub member_id: u64,
    /// Every member.
    pub members: Vec<MemberConfig>,
    /// How long a request may wait.
    pub request_timeout: std::time::Duration,
    /// This process's deduplication session.
    pub session: u64,
    /// Next request sequence number.
    pub sequence: AtomicU64,
    /// etcd's `--quota-backend-bytes`: a write that would take the store past it raises
    /// the NOSPACE alarm and is refused.
    pub quota_bytes: u64,
    /// How often a quiet watch that asked for them hears the current revision.
    pub watch_progress_interval: std::time::Duration,
    /// What the watch streams do.
    pub watch_stats: Arc<crate::watch::WatchStats>,
    /// The election timeout: how often a stream that requires a leader checks there is one.
    pub election_timeout: std::time::Duration,
    /// The shortest lease TTL granted, in seconds (etcd's: 1.5 election timeouts, rounded
    /// up): a shorter one could expire while a leader is being elected.
    pub lease_ttl_min: i64,
    /// The member's data directory (a snapshot's scratch file goes there).
    pub data_dir: std::path::PathBuf,
}

impl Shared {
    pub(crate) fn header(&self, revision: i64, term: u64) -> pb::ResponseHeader {
        header(self.cluster_id, self.member_id, revision, term)
    }

    /// A header at the member's current revision and term, for answers that change nothing.
    fn current_header(&self) -> pb::ResponseHeader {
        let status = self.node.status();
        self.header(status.revision, status.term)
    }

    pub(crate) async fn write(&self, command: kv::Command) -> Result<WriteReply, Status> {
        let id = kv::RequestId {
            session: self.session,
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed),
        };
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + self.request_timeout;
        self.node
            .submit(ClientRequest::Write {
                proposal: kv::Proposal { id, command },
                deadline,
                reply,
            })
            .map_err(|error| convert::status(&error))?;
        match answer.await {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(error)) => Err(convert::status(&error)),
            Err(_) => Err(convert::status(&NodeError::Stopped)),
        }
    }

    /// etcd's quota check before a write that stores `cost` more bytes: past the quota,
    /// this member raises the NOSPACE alarm (once; replicated, so every member then
    /// refuses such writes) and the write is refused. Reads, deletes and compaction go on.
    async fn check_quota(&self, cost: u64) -> Result<(), Status> {
        let status = self.node.status();
        if cost == 0 || status.store_bytes.saturating_add(cost) < self.quota_bytes {
            return Ok(());
        }
        let alarm = kv::AlarmMember { member_id: self.member_id, alarm: kv::AlarmType::NoSpace };
        if !status.alarms.contains(&alarm) {
            tracing::warn!(
                store_bytes = status.store_bytes,
                quota_bytes = self.quota_bytes,
                "the store reached its space quota: raising the NOSPACE alarm; writes that add data are refused until it is disarmed (compact, then `etcdctl alarm disarm`)"
            );
            // The write is refused whether or not the alarm is committed, as in etcd.
            let _ = self.write(kv::Command::RaiseAlarm(alarm)).await;
        }
        Err(convert::kv_status(&kv::KvError::NoSpace))
    }

    /// The store to read from: as of a read index when `linearizable` (etcd's default),
    /// else as this member has applied it.
    pub(crate) async fn view(&self, linearizable: bool) -> Result<ReadView, Status> {
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + self.request_timeout;
        self.node
            .submit(ClientRequest::Read { linearizable, deadline, reply })
            .map_err(|error| convert::status(&error))?;
        match answer.await {
            Ok(Ok(view)) => Ok(view),
            Ok(Err(error)) => Err(convert::status(&error)),
            Err(_) => Err(convert::status(&NodeError::Stopped)),
        }
    }

    /// Whether a stream asked etcd's `hasleader` (clientv3's `WithRequireLeader`): it
    /// must end with "no leader" while its member has none, so the client moves to a
    /// member that has one (Kubernetes' watches ask it).
    pub(crate) fn requires_leader<T>(request: &Request<T>) -> bool {
        request.metadata().get("hasleader").is_some_and(|value| value == "true")
    }

    /// A stream that requires a leader, refused or ended: etcd's status.
    pub(crate) fn no_leader() -> Status {
        convert::status(&NodeError::NoLeader)
    }

    /// A response header at `revision` in the member's current term.
    pub(crate) fn header_at(&self, revision: i64) -> pb::ResponseHeader {
        self.header(revision, self.node.status().term)
    }

    /// A range, answered as `finish` makes it of the whole response (header included).
    /// One key, or a few, costs less than a hand-off to another thread; a range of
    /// unknown size is computed and finished on the blocking pool, so neither the Raft
    /// loop nor this runtime's other connections wait for it.
    pub(crate) async fn range<T: Send + 'static>(
        &self,
        request: pb::RangeRequest,
        finish: fn(pb::RangeResponse) -> T,
    ) -> Result<T, Status> {
        crate::checks::range(&request)?;
        let view = self.view(!request.serializable).await?;
        let request = convert::range_request(request);
        let (cluster_id, member_id) = (self.cluster_id, self.member_id);
        let small = request_is_small(&request);
        let serve = move || {
            let read: ReadReply = view.serve(&request).map_err(|error| convert::status(&error))?;
            let header = header(cluster_id, member_id, read.revision, read.term);
            let response = pb::RangeResponse {
                header: Some(header),
                ..convert::range_response(read.response)
            };
            Ok(finish(response))
        };
        if small {
            serve()
        } else {
            tokio::task::spawn_blocking(serve)
                .await
                .map_err(|_| convert::status(&NodeError::Stopped))?
        }
    }
}

fn header(cluster_id: u64, member_id: u64, revision: i64, term: u64) -> pb::ResponseHeader {
    pb::ResponseHeader { cluster_id, member_id, revision, raft_term: term }
}

fn request_is_small(request: &kv::RangeRequest) -> bool {
    request.range_end.is_empty() || (1..=SMALL_RANGE).contains(&request.limit)
}

/// Ranges with a limit up to this many keys are served on the request's own task.
const SMALL_RANGE: i64 = 64;

fn check_size(bytes: usize) -> Result<(), Status> {
    if bytes > REQUEST_BYTES_MAX {
        return Err(convert::invalid("etcdserver: request is too large"));
    }
    Ok(())
}

/// `etcdserverpb.KV`.
#[derive(Clone, Debug)]
pub struct KvService(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    /// Served through [`crate::kv_routes`], which encodes the answer off this runtime;
    /// this is the same range for callers of the trait.
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        self.0.range(request.into_inner(), |response| response).await.map(Response::new)
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let request = request.into_inner();
        crate::checks::put(&request)?;
        check_size(request.key.len() + request.value.len())?;
        let put = convert::put_request(request);
        self.0.check_quota(put_cost(&put)).await?;
        let written = self.0.write(kv::Command::Put(put)).await?;
        let header = self.0.header(written.applied.revision, written.term);
        match written.applied.outcome {
            kv::Outcome::Put(put) => Ok(Response::new(pb::PutResponse {
                header: Some(header),
                prev_kv: put.prev_kv.map(convert::key_value),
            })),
            kv::Outcome::Error(error) => Err(convert::kv_status(&error)),
            other => Err(Status::internal(format!("put answered with {other:?}"))),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        crate::checks::delete_range(&request)?;
        let written =
            self.0.write(kv::Command::DeleteRange(convert::delete_request(request))).await?;
        let header = self.0.header(written.applied.revision, written.term);
        match written.applied.outcome {
            kv::Outcome::DeleteRange(delete) => Ok(Response::new(pb::DeleteRangeResponse {
                header: Some(header),
                deleted: delete.deleted,
                prev_kvs: delete.prev_kvs.into_iter().map(convert::key_value).collect(),
            })),
            kv::Outcome::Error(error) => Err(convert::kv_status(&error)),
            other => Err(Status::internal(format!("delete answered with {other:?}"))),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let request = request.into_inner();
        crate::checks::txn(&request)?;
        let txn = convert::txn_request(request)?;
        check_size(proposal_size(&txn))?;
        self.0.check_quota(txn_cost(&txn.success).max(txn_cost(&txn.failure))).await?;
        let written = self.0.write(kv::Command::Txn(txn)).await?;
        let header = self.0.header(written.applied.revision, written.term);
        match written.applied.outcome {
            kv::Outcome::Txn(txn) => Ok(Response::new(convert::txn_response(txn, &header))),
            kv::Outcome::Error(error) => Err(convert::kv_status(&error)),
            other => Err(Status::internal(format!("txn answered with {other:?}"))),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let revision = request.into_inner().revision;
        let written = self.0.write(kv::Command::Compact { revision }).await?;
        let header = self.0.header(written.applied.revision, written.term);
        match written.applied.outcome {
            kv::Outcome::Compact => {
                Ok(Response::new(pb::CompactionResponse { header: Some(header) }))
            }
            kv::Outcome::Error(error) => Err(convert::kv_status(&error)),
            other => Err(Status::internal(format!("compact answered with {other:?}"))),
        }
    }
}

fn proposal_size(txn: &kv::TxnRequest) -> usize {
    kv::Proposal {
        id: kv::RequestId { session: 0, sequence: 0 },
        command: kv::Command::Txn(txn.clone()),
    }
    .encode()
    .len()
}

/// What a put adds to the store's size, as [`kv::Store::size_bytes`] counts it.
fn put_cost(put: &kv::PutRequest) -> u64 {
    kv::ENTRY_OVERHEAD_BYTES + (put.key.len() + put.value.len()) as u64
}

/// What a branch of a transaction adds at most (etcd counts the larger branch).
fn txn_cost(ops: &[kv::RequestOp]) -> u64 {
    ops.iter()
        .map(|op| match op {
            kv::RequestOp::Put(put) => put_cost(put),
            kv::RequestOp::Txn(nested) => txn_cost(&nested.success).max(txn_cost(&nested.failure)),
            _ => 0,
        })
        .sum()
}

/// `etcdserverpb.Maintenance`.
#[derive(Clone, Debug)]
pub struct MaintenanceService(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let request = request.into_inner();
        let kind = convert::alarm_type(request.alarm);
        let (alarms, revision, term) = match AlarmAction::try_from(request.action) {
            Ok(AlarmAction::Get) => {
                // This member's view, as in etcd; NONE lists every alarm.
                let status = self.0.node.status();
                let listed: Vec<kv::AlarmMember> = status
                    .alarms
                    .iter()
                    .filter(|raised| kind.is_none_or(|kind| raised.alarm == kind))
                    .copied()
                    .collect();
                (listed, status.revision, status.term)
            }
            Ok(action @ (AlarmAction::Activate | AlarmAction::Deactivate)) => {
                let Some(alarm) = kind else {
                    // etcd raises or clears nothing for NONE and answers with no alarms.
                    return Ok(Response::new(pb::AlarmResponse {
                        header: Some(self.0.current_header()),
                        alarms: Vec::new(),
                    }));
                };
                let member = kv::AlarmMember { member_id: request.member_id, alarm };
                let command = if action == AlarmAction::Activate {
                    kv::Command::RaiseAlarm(member)
                } else {
                    kv::Command::ClearAlarm(member)
                };
                let written = self.0.write(command).await?;
                match written.applied.outcome {
                    kv::Outcome::Alarm(changed) => {
                        if changed.is_some() {
                            tracing::info!(?action, member = member.member_id, alarm = ?alarm, "alarm changed by a client");
                        }
                        (changed.into_iter().collect(), written.applied.revision, written.term)
                    }
                    kv::Outcome::Error(error) => return Err(convert::kv_status(&error)),
                    other => {
                        return Err(Status::internal(format!("alarm answered with {other:?}")))
                    }
                }
            }
            Err(_) => {
                return Err(convert::invalid(&format!(
                    "etcdserver: unknown alarm action {}",
                    request.action
                )))
            }
        };
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.0.header(revision, term)),
            alarms: alarms.into_iter().map(convert::alarm_member).collect(),
        }))
    }

    /// Compaction already frees the space it drops (the store is in memory and its log
    /// and snapshot are rewritten, not reused), so there is nothing left to defragment:
    /// answers at once, so etcd's compact, defrag, disarm routine works unchanged.
    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        Ok(Response::new(pb::DefragmentResponse { header: Some(self.0.current_header()) }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.0.node.status();
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.0.header(status.revision, status.term)),
            version: concat!("3.5.0-worknode-", env!("CARGO_PKG_VERSION")).to_owned(),
            db_size: i64::try_from(status.store_bytes).unwrap_or(i64::MAX),
            leader: status.leader_id,
            raft_index: status.commit_index,
            raft_term: status.term,
            raft_applied_index: status.applied_index,
            errors: self
                .0
                .node
                .rejections()
                .disagreements()
                .into_iter()
                .chain(status.alarms.iter().map(|alarm| convert::alarm_error(*alarm)))
                .collect(),
            db_size_in_use: i64::try_from(status.store_bytes).unwrap_or(i64::MAX),
            is_learner: false,
        }))
    }

    /// etcd's HashKV: the store's history up to a revision, hashed off this runtime.
    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let view = self.0.view(false).await?;
        let current = view.store.revision();
        let hashed = tokio::task::spawn_blocking(move || view.store.hash_kv(revision))
            .await
            .map_err(|_| convert::status(&NodeError::Stopped))?
            .map_err(|error| convert::kv_status(&error))?;
        let (hash, compact_revision) = hashed;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.0.header_at(current)),
            hash,
            compact_revision,
            hash_revision: if revision > 0 { revision } else { current },
        }))
    }

    /// etcd's Hash (of its whole database): here the store's whole history, which is
    /// what this member keeps of the key-value data.
    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let view = self.0.view(false).await?;
        let current = view.store.revision();
        let (hash, _) = tokio::task::spawn_blocking(move || view.store.hash_kv(0))
            .await
            .map_err(|_| convert::status(&NodeError::Stopped))?
            .map_err(|error| convert::kv_status(&error))?;
        Ok(Response::new(pb::HashResponse { header: Some(self.0.header_at(current)), hash }))
    }

    type SnapshotStream = crate::backup::SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Ok(Response::new(self.0.snapshot().await?))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        if !self.0.members.iter().any(|m| m.id == target) {
            return Err(Status::new(Code::FailedPrecondition, "etcdserver: bad leader transferee"));
        }
        let status = self.0.node.status();
        if !status.is_leader {
            return Err(Status::new(Code::FailedPrecondition, "etcdserver: not leader"));
        }
        let (reply, answer) = oneshot::channel();
        self.0
            .node
            .submit(ClientRequest::TransferLeader { target, reply })
            .map_err(|e| convert::status(&e))?;
        answer
            .await
            .map_err(|_| convert::status(&NodeError::Stopped))?
            .map_err(|e| convert::status(&e))?;
        // etcd answers once the transfer completed (or timed out).
        let deadline = Instant::now() + self.0.request_timeout;
        loop {
            let now = self.0.node.status();
            if now.leader_id == target {
                return Ok(Response::new(pb::MoveLeaderResponse {
                    header: Some(self.0.header(now.revision, now.term)),
                }));
            }
            if Instant::now() > deadline {
                return Err(Status::new(
                    Code::Unavailable,
                    "etcdserver: request timed out, leader transfer took too long",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// `etcdserverpb.Cluster`.
#[derive(Clone, Debug)]
pub struct ClusterService(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let status = self.0.node.status();
        let members = self
            .0
            .members
            .iter()
            .map(|m| pb::Member {
                id: m.id,
                name: m.name.clone(),
                peer_ur_ls: vec![format!("http://{}", m.peer)],
                client_ur_ls: vec![format!("http://{}", m.client)],
                is_learner: false,
            })
            .collect();
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.0.header(status.revision, status.term)),
            members,
        }))
    }
}
