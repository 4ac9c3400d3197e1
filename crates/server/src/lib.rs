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

/// etcd's `v3lockpb` (generated).
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    missing_debug_implementations,
    clippy::all,
    reason = "generated protobuf code"
)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's `v3electionpb` (generated).
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    missing_debug_implementations,
    clippy::all,
    reason = "generated protobuf code"
)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// The generated code of other packages names etcd's messages by package.
pub use pb as etcdserverpb;

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
pub mod concurrency;
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
