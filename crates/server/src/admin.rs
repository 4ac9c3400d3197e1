//! `worknode.Admin`: the state digest, and fault injection for tests.

use std::sync::Arc;

use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status};
use worknode_raft::transport::Blocked;
use worknode_raft::ClientRequest;

use crate::adminpb;
use crate::service::Shared;

/// `worknode.Admin`.
#[derive(Clone, Debug)]
pub struct AdminService {
    /// Shared member state.
    pub shared: Arc<Shared>,
    /// The transport's partition set.
    pub blocked: Blocked,
    /// Whether `Partition` may be used.
    pub allow_fault_injection: bool,
}

#[tonic::async_trait]
impl adminpb::admin_server::Admin for AdminService {
    async fn digest(
        &self,
        _request: Request<adminpb::DigestRequest>,
    ) -> Result<Response<adminpb::DigestResponse>, Status> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .node
            .submit(ClientRequest::Digest { reply })
            .map_err(|e| crate::convert::status(&e))?;
        let (applied_index, digest) =
            answer.await.map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        Ok(Response::new(adminpb::DigestResponse {
            member_id: self.shared.member_id,
            applied_index,
            digest,
            revision: self.shared.node.status().revision,
        }))
    }

    async fn partition(
        &self,
        request: Request<adminpb::PartitionRequest>,
    ) -> Result<Response<adminpb::PartitionResponse>, Status> {
        if !self.allow_fault_injection {
            return Err(Status::new(
                Code::PermissionDenied,
                "fault injection is off (allow_fault_injection = false)",
            ));
        }
        let peers = request.into_inner().peers;
        let mut blocked = self.blocked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        blocked.clear();
        blocked.extend(peers);
        Ok(Response::new(adminpb::PartitionResponse {}))
    }
}
