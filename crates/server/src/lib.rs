//! worknode's server: the etcd v3 gRPC API over the replicated node, wired to worknodes.

/// etcd's `etcdserverpb` messages and services (generated).
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    missing_debug_implementations,
    clippy::all,
    reason = "generated protobuf code"
)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's `mvccpb` messages (generated).
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    missing_debug_implementations,
    clippy::all,
    reason = "generated protobuf code"
)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// worknode's own admin API (generated).
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    missing_debug_implementations,
    clippy::all,
    reason = "generated protobuf code"
)]
pub mod adminpb {
    tonic::include_proto!("worknode");
}

pub mod admin;
pub mod authority;
pub mod checks;
pub mod compactor;
pub mod config;
pub mod convert;
pub mod health;
pub mod kv_routes;
pub mod lease;
pub mod local_cluster;
pub mod metrics;
pub mod serve;
pub mod service;
pub mod tls_listener;
pub mod watch;
