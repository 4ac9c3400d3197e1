//! Compiles the etcd-compatible .proto files with protox (pure Rust): no system protoc;
//! and serde for etcd's messages, for the JSON gateway.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/kv.proto",
        "proto/rpc.proto",
        "proto/worknode.proto",
        "proto/health.proto",
        "proto/v3lock.proto",
        "proto/v3election.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let encoded = prost::Message::encode_to_vec(&descriptors);
    tonic_prost_build::configure().compile_fds(descriptors)?;
    // etcd's JSON gateway: proto3's JSON mapping (int64 as strings, bytes as base64,
    // defaults left out) with the proto's own field names, as grpc-gateway prints them.
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[".etcdserverpb", ".mvccpb"])?;
    Ok(())
}
