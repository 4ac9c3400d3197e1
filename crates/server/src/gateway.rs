//! etcd's JSON gateway on the client port: `POST /v3/kv/range` and the rest, as etcd's
//! grpc-gateway serves them, for clients that speak HTTP and JSON (`curl`).
//!
//! A request body is the gRPC request in proto3's JSON mapping (bytes in base64, 64-bit
//! integers as strings or numbers, either field-name style); the answer is the gRPC
//! response in the same mapping with the proto's field names and default values left
//! out, as etcd prints it. Errors carry etcd's message and gRPC code in grpc-gateway's
//! body and HTTP status. Streams (`/v3/watch`, `/v3/lease/keepalive`) take one or more
//! requests in the body and answer one `{"result": …}` object per line until the client
//! goes away.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_stream::StreamExt as _;
use tonic::{Code, Request, Status};

use crate::lease::LeaseService;

use crate::pb::cluster_server::Cluster as _;
use crate::pb::kv_server::Kv as _;
use crate::pb::lease_server::Lease as _;
use crate::pb::maintenance_server::Maintenance as _;
use crate::service::{ClusterService, KvService, MaintenanceService, Shared};

/// The gateway's routes, to merge with the gRPC services' and the HTTP endpoints.
pub fn json_routes(shared: Arc<Shared>, watch: crate::watch::WatchService) -> axum::Router {
    macro_rules! unary {
        ($router:expr, $service:ident, $method:ident, [$($path:literal),+]) => {{
            let mut router = $router;
            $(
                let service = $service(Arc::clone(&shared));
                router = router.route(
                    $path,
                    post(move |body: Bytes| {
                        let service = service.clone();
                        answer(body, move |request| async move {
                            service.$method(Request::new(request)).await
                        })
                    }),
                );
            )+
            router
        }};
    }
    let router = axum::Router::new();
    let router = unary!(router, KvService, range, ["/v3/kv/range"]);
    let router = unary!(router, KvService, put, ["/v3/kv/put"]);
    let router = unary!(router, KvService, delete_range, ["/v3/kv/deleterange"]);
    let router = unary!(router, KvService, txn, ["/v3/kv/txn"]);
    let router = unary!(router, KvService, compact, ["/v3/kv/compaction"]);
    let router = unary!(router, LeaseService, lease_grant, ["/v3/lease/grant"]);
    let router =
        unary!(router, LeaseService, lease_revoke, ["/v3/lease/revoke", "/v3/kv/lease/revoke"]);
    let router = unary!(
        router,
        LeaseService,
        lease_time_to_live,
        ["/v3/lease/timetolive", "/v3/kv/lease/timetolive"]
    );
    let router =
        unary!(router, LeaseService, lease_leases, ["/v3/lease/leases", "/v3/kv/lease/leases"]);
    let router = unary!(router, ClusterService, member_list, ["/v3/cluster/member/list"]);
    let router = unary!(router, MaintenanceService, alarm, ["/v3/maintenance/alarm"]);
    let router = unary!(router, MaintenanceService, status, ["/v3/maintenance/status"]);
    let router = unary!(router, MaintenanceService, defragment, ["/v3/maintenance/defragment"]);
    let router = unary!(router, MaintenanceService, hash, ["/v3/maintenance/hash"]);
    let router =
        unary!(router, MaintenanceService, move_leader, ["/v3/maintenance/transfer-leadership"]);
    let lease = LeaseService(Arc::clone(&shared));
    let router = router.route(
        "/v3/lease/keepalive",
        post(move |body: Bytes| {
            let lease = lease.clone();
            streamed(body, move |requests| async move { lease.keep_alive_stream(requests, false) })
        }),
    );
    router.route(
        "/v3/watch",
        post(move |body: Bytes| {
            let watch = watch.clone();
            streamed(body, move |requests| async move { watch.open(requests, false) })
        }),
    )
}

/// The requests in a body: one JSON object, or several one after another.
fn requests<T: DeserializeOwned + Default>(body: &[u8]) -> Result<Vec<T>, Status> {
    let mut requests = Vec::new();
    for request in serde_json::Deserializer::from_slice(body).into_iter::<T>() {
        let request = request.map_err(|error| {
            Status::invalid_argument(format!(
                "the request body is not a {}: {error}",
                std::any::type_name::<T>().rsplit("::").next().unwrap_or("request")
            ))
        })?;
        requests.push(request);
    }
    if requests.is_empty() {
        requests.push(T::default());
    }
    Ok(requests)
}

/// Answers a unary call: the response as JSON, or the error as grpc-gateway gives it.
async fn answer<Req, Resp, Call, Answered>(body: Bytes, call: Call) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    Call: FnOnce(Req) -> Answered,
    Answered: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let request = match requests::<Req>(&body) {
        Ok(mut requests) if requests.len() == 1 => requests.remove(0),
        Ok(_) => {
            return error(&Status::invalid_argument("the request body holds more than one request"))
        }
        Err(status) => return error(&status),
    };
    match call(request).await {
        Ok(response) => match serde_json::to_vec(response.get_ref()) {
            Ok(json) => json_response(StatusCode::OK, json),
            Err(failed) => error(&Status::internal(format!("encoding the answer: {failed}"))),
        },
        Err(status) => error(&status),
    }
}

/// Answers a stream: every request of the body goes in, and every answer comes out as a
/// line `{"result": …}` (or `{"error": …}` before the stream ends).
async fn streamed<Req, Resp, Open, Opened, Answers>(body: Bytes, open: Open) -> Response
where
    Req: DeserializeOwned + Default + Send + 'static,
    Resp: Serialize + Send + 'static,
    Open: FnOnce(tokio_stream::Iter<std::vec::IntoIter<Result<Req, Status>>>) -> Opened,
    Opened: Future<Output = Result<Answers, Status>>,
    Answers: tokio_stream::Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    let requests = match requests::<Req>(&body) {
        Ok(requests) => requests,
        Err(status) => return error(&status),
    };
    let answers =
        match open(tokio_stream::iter(requests.into_iter().map(Ok).collect::<Vec<_>>())).await {
            Ok(answers) => answers,
            Err(status) => return error(&status),
        };
    let lines = answers.map(|answer| {
        let line = match answer {
            Ok(result) => serde_json::json!({ "result": result }),
            Err(status) => serde_json::json!({ "error": error_body(&status) }),
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(bytes))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| error(&Status::internal("building the answer")))
}

fn json_response(status: StatusCode, json: Vec<u8>) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json))
        .unwrap_or_default()
}

/// grpc-gateway's error object: the message twice (`error` for older clients) and the
/// gRPC code.
fn error_body(status: &Status) -> serde_json::Value {
    serde_json::json!({
        "error": status.message(),
        "code": status.code() as i32,
        "message": status.message(),
    })
}

/// The gateway's answer to a failed call.
pub(crate) fn error(status: &Status) -> Response {
    let json = serde_json::to_vec(&error_body(status)).unwrap_or_default();
    json_response(http_status(status.code()), json)
}

/// grpc-gateway's HTTP status for each gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn messages_read_and_print_as_etcds_gateway_does() {
        let request: pb::RangeRequest =
            serde_json::from_str(r#"{"key": "Zm9v", "range_end": "Zm9w", "limit": "10"}"#).unwrap();
        assert_eq!(
            (request.key, request.range_end, request.limit),
            (b"foo".to_vec(), b"fop".to_vec(), 10)
        );
        let camel: pb::RangeRequest =
            serde_json::from_str(r#"{"rangeEnd": "AA==", "limit": 3}"#).unwrap();
        assert_eq!((camel.range_end, camel.limit), (vec![0], 3));
        let response = pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 7,
                raft_term: 3,
            }),
            kvs: vec![crate::mvccpb::KeyValue {
                key: b"foo".to_vec(),
                value: b"bar".to_vec(),
                create_revision: 7,
                mod_revision: 7,
                version: 1,
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"7","raft_term":"3"},"kvs":[{"key":"Zm9v","create_revision":"7","mod_revision":"7","version":"1","value":"YmFy"}],"count":"1"}"#
        );
    }

    #[test]
    fn bodies_hold_one_request_or_several_and_bad_ones_say_what_they_are_not() {
        assert_eq!(requests::<pb::RangeRequest>(b"").unwrap(), [pb::RangeRequest::default()]);
        let two = requests::<pb::WatchRequest>(
            br#"{"create_request": {"key": "YQ=="}} {"progress_request": {}}"#,
        )
        .unwrap();
        assert_eq!(two.len(), 2);
        let bad = requests::<pb::PutRequest>(br#"{"key": 5}"#).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(
            bad.message().starts_with("the request body is not a PutRequest"),
            "{}",
            bad.message()
        );
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::BAD_REQUEST);
    }
}
