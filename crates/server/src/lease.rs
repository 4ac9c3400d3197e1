//! `etcdserverpb.Lease`: grant, revoke, keep-alive, time-to-live and the list, through
//! the Raft log (see `worknode_raft::engine::leases` for when a lease expires).
//!
//! A keep-alive is a write: every member starts the lease's TTL again when it applies
//! one, so whichever member leads next knows what each lease has left. It costs a log
//! entry where etcd's costs a message to the leader; clients keep a lease alive every
//! third of its TTL, so that is a few entries a second for thousands of leases.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};
use worknode_kv as kv;
use worknode_raft::{ClientRequest, LeaseReport, NodeError};

use crate::convert;
use crate::pb;
use crate::service::Shared;

/// Keep-alive answers queued for a client before its stream waits for it to read.
const KEEP_ALIVE_OUTBOUND_MAX: usize = 16;

/// `etcdserverpb.Lease`.
#[derive(Clone, Debug)]
pub struct LeaseService(pub Arc<Shared>);

impl Shared {
    /// The leases as this member knows them, with what each has left.
    pub(crate) async fn lease_report(&self) -> Result<LeaseReport, Status> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.node
            .submit(ClientRequest::Leases { reply })
            .map_err(|error| convert::status(&error))?;
        answer.await.map_err(|_| convert::status(&NodeError::Stopped))
    }

    /// A keep-alive of lease `id`: its TTL, 0 when there is no such lease (etcd's answer).
    async fn keep_alive(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        let written = self.write(kv::Command::LeaseRefresh { id }).await?;
        let header = Some(self.header_at(written.applied.revision));
        match written.applied.outcome {
            kv::Outcome::LeaseRefreshed { ttl } => {
                Ok(pb::LeaseKeepAliveResponse { header, id, ttl })
            }
            kv::Outcome::Error(kv::KvError::LeaseNotFound) => {
                Ok(pb::LeaseKeepAliveResponse { header, id, ttl: 0 })
            }
            kv::Outcome::Error(error) => Err(convert::kv_status(&error)),
            other => Err(Status::internal(format!("keep-alive answered with {other:?}"))),
        }
    }
}

impl LeaseService {
    /// Answers `requests`' keep-alives one at a time, in order; a failure ends the stream
    /// as etcd ends it (the client opens another and carries on). For gRPC and the JSON
    /// gateway.
    pub(crate) fn keep_alive_stream<S>(
        &self,
        mut requests: S,
        require_leader: bool,
    ) -> Result<ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>, Status>
    where
        S: tokio_stream::Stream<Item = Result<pb::LeaseKeepAliveRequest, Status>>
            + Send
            + Unpin
            + 'static,
    {
        if require_leader && self.0.node.status().leader_id == 0 {
            return Err(Shared::no_leader());
        }
        let (out, responses) = mpsc::channel(KEEP_ALIVE_OUTBOUND_MAX);
        let shared = Arc::clone(&self.0);
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                let answer = if require_leader && shared.node.status().leader_id == 0 {
                    Err(Shared::no_leader())
                } else {
                    shared.keep_alive(request.id).await
                };
                let failed = answer.is_err();
                if out.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(ReceiverStream::new(responses))
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        // etcd raises a TTL below its minimum (1.5 election timeouts): a shorter lease
        // could expire while a leader is being elected.
        let ttl = request.ttl.max(self.0.lease_ttl_min);
        let written = self.0.write(kv::Command::LeaseGrant { id: request.id, ttl }).await?;
        match written.applied.outcome {
            kv::Outcome::LeaseGranted { id, ttl } => Ok(Response::new(pb::LeaseGrantResponse {
                header: Some(self.0.header_at(written.applied.revision)),
                id,
                ttl,
                error: String::new(),
            })),
            kv::Outcome::Error(error) => Err(convert::kv_status(&error)),
            other => Err(Status::internal(format!("lease grant answered with {other:?}"))),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let written = self.0.write(kv::Command::LeaseRevoke { id }).await?;
        match written.applied.outcome {
            kv::Outcome::LeaseRevoked { .. } => Ok(Response::new(pb::LeaseRevokeResponse {
                header: Some(self.0.header_at(written.applied.revision)),
            })),
            kv::Outcome::Error(error) => Err(convert::kv_status(&error)),
            other => Err(Status::internal(format!("lease revoke answered with {other:?}"))),
        }
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let require_leader = Shared::requires_leader(&request);
        let answers = self.keep_alive_stream(request.into_inner(), require_leader)?;
        Ok(Response::new(answers))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        let report = self.0.lease_report().await?;
        let header = Some(self.0.header_at(report.revision));
        let (Some(lease), Some(left)) =
            (report.leases.get(request.id), report.remaining_seconds(request.id))
        else {
            // etcd answers an unknown lease with TTL -1, not an error.
            return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header,
                id: request.id,
                ttl: -1,
                ..pb::LeaseTimeToLiveResponse::default()
            }));
        };
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header,
            id: request.id,
            ttl: left,
            granted_ttl: lease.ttl,
            keys: if request.keys { lease.keys().cloned().collect() } else { Vec::new() },
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let report = self.0.lease_report().await?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.0.header_at(report.revision)),
            leases: report.leases.iter().map(|(id, _)| pb::LeaseStatus { id }).collect(),
        }))
    }
}
