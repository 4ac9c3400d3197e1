//! What etcd serves beside gRPC on its client port: `grpc.health.v1.Health`, and over
//! HTTP/1.1 `GET /health`, `/version` and `/metrics` — what load balancers, Kubernetes
//! probes and `etcdctl check datascale` ask.
//!
//! A member is healthy as etcd judges it: no alarm raised, a leader known, and a
//! linearizable read answered within the request timeout (so a member cut off from the
//! majority, which still knows its last leader, is not).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::metrics::MetricsSource;
use crate::service::Shared;

pub use crate::healthpb;

/// How often a `Health.Watch` stream looks again.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The version `/version` reports (etcd's fields; the API level worknode speaks).
const VERSION_JSON: &str = r#"{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}"#;

/// Why a member is not healthy, in etcd's words, or `None`.
async fn unhealthy(shared: &Shared) -> Option<String> {
    let status = shared.node.status();
    if let Some(alarm) = status.alarms.first() {
        let name = convert::alarm_error(*alarm);
        return Some(format!("ALARM {}", name.rsplit(':').next().unwrap_or(&name)));
    }
    if status.leader_id == 0 {
        return Some("RAFT NO LEADER".to_owned());
    }
    match shared.view(true).await {
        Ok(_) => None,
        Err(_) => Some("QGET ERROR".to_owned()),
    }
}

/// `GET /health`: etcd's JSON, 200 when healthy, 503 when not.
async fn http_health(shared: Arc<Shared>) -> (StatusCode, String) {
    match unhealthy(&shared).await {
        None => (StatusCode::OK, r#"{"health":"true","reason":""}"#.to_owned()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(r#"{{"health":"false","reason":"{reason}"}}"#),
        ),
    }
}

/// What a path no route claims gets: a gRPC call the "unimplemented" status naming the
/// method, an HTTP request 404 (as etcd's HTTP mux answers).
pub async fn fallback(
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let grpc = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    let message = format!(
        "worknode does not serve {} (auth, users and roles, and membership changes are not implemented)",
        uri.path()
    );
    if uri.path().starts_with("/v3/") {
        // A JSON gateway path of a method worknode does not serve: the gateway's answer.
        return crate::gateway::error(&Status::unimplemented(message));
    }
    if grpc {
        let (parts, ()) = Status::unimplemented(message).into_http::<()>().into_parts();
        axum::response::Response::from_parts(parts, axum::body::Body::empty())
    } else {
        (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
    }
}

/// The HTTP endpoints, as an axum router to merge with the gRPC services'.
pub fn http_routes(shared: Arc<Shared>, metrics: Option<MetricsSource>) -> axum::Router {
    let router = axum::Router::new()
        .route("/health", get(move || http_health(Arc::clone(&shared))))
        .route("/version", get(|| async { VERSION_JSON }));
    match metrics {
        Some(source) => router.route(
            "/metrics",
            get(move || {
                let source = source.clone();
                async move { crate::metrics::render(&source) }
            }),
        ),
        None => router,
    }
}

/// `grpc.health.v1.Health`.
#[derive(Clone, Debug)]
pub struct HealthService(pub Arc<Shared>);

impl HealthService {
    async fn status(&self) -> healthpb::health_check_response::ServingStatus {
        use healthpb::health_check_response::ServingStatus;
        match unhealthy(&self.0).await {
            None => ServingStatus::Serving,
            Some(_) => ServingStatus::NotServing,
        }
    }
}

#[tonic::async_trait]
impl healthpb::health_server::Health for HealthService {
    async fn check(
        &self,
        _request: Request<healthpb::HealthCheckRequest>,
    ) -> Result<Response<healthpb::HealthCheckResponse>, Status> {
        Ok(Response::new(healthpb::HealthCheckResponse { status: self.status().await as i32 }))
    }

    type WatchStream = ReceiverStream<Result<healthpb::HealthCheckResponse, Status>>;

    /// The status now, then each change (looked at every half second).
    async fn watch(
        &self,
        _request: Request<healthpb::HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (out, responses) = mpsc::channel(1);
        let service = self.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let status = service.status().await;
                if last != Some(status) {
                    last = Some(status);
                    let response = healthpb::HealthCheckResponse { status: status as i32 };
                    if out.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    () = out.closed() => return,
                    () = tokio::time::sleep(WATCH_INTERVAL) => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(responses)))
    }
}
