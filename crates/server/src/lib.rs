//! worknode's server: the etcd v3 gRPC API over the replicated node, wired to worknodes.

/// A module of generated protobuf code, with the lints that do not apply to it off.
macro_rules! generated {
    ($(#[$doc:meta])* $name:ident, $package:literal, serde: $serde:literal) => {
        generated!($(#[$doc])* $name, $package, { include!(concat!(env!("OUT_DIR"), "/", $serde)); });
    };
    ($(#[$doc:meta])* $name:ident, $package:literal) => {
        generated!($(#[$doc])* $name, $package, {});
    };
    ($(#[$doc:meta])* $name:ident, $package:literal, { $($extra:tt)* }) => {
        $(#[$doc])*
        #[allow(
            missing_docs,
            unreachable_pub,
            unused_qualifications,
            missing_debug_implementations,
            clippy::all,
            reason = "generated protobuf code"
        )]
        pub mod $name {
            tonic::include_proto!($package);
            $($extra)*
        }
    };
}

generated!(
    /// etcd's `etcdserverpb` messages and services (generated).
    pb,
    "etcdserverpb",
    serde: "etcdserverpb.serde.rs"
);
generated!(
    /// etcd's `mvccpb` messages (generated).
    mvccpb,
    "mvccpb",
    serde: "mvccpb.serde.rs"
);
generated!(
    /// etcd's `v3lockpb` (generated).
    v3lockpb,
    "v3lockpb"
);
generated!(
    /// etcd's `v3electionpb` (generated).
    v3electionpb,
    "v3electionpb"
);
generated!(
    /// gRPC's `grpc.health.v1` messages and service (generated).
    healthpb,
    "grpc.health.v1"
);
generated!(
    /// worknode's own admin API (generated).
    adminpb,
    "worknode"
);

/// The generated code of other packages names etcd's messages by package.
pub use pb as etcdserverpb;

pub mod admin;
pub mod authority;
pub mod backup;
pub mod checks;
pub mod compactor;
pub mod concurrency;
pub mod config;
pub mod convert;
pub mod gateway;
pub mod h2_authority;
pub mod health;
pub mod kv_routes;
pub mod lease;
pub mod local_cluster;
pub mod metrics;
pub mod serve;
pub mod service;
pub mod tls_listener;
pub mod watch;
mod watch_hub;
pub mod write_coalescing;
