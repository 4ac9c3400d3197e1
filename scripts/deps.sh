#!/usr/bin/env bash
# Debian packages the test suite needs, installed when missing (root, registries only):
#   protobuf-compiler  — builds the etcd-client crate (a test dependency)
#   etcd-client        — etcdctl, the real client the integration tests drive
#   etcd-server        — etcd, which restores worknode's snapshots in a test, and the
#                        side-by-side benchmarks
#   curl               — the HTTP client the JSON gateway's tests drive
#   rt-tests           — cyclictest and oslat, the references for the jitter probes
set -euo pipefail
missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v curl >/dev/null || missing+=(curl)
{ command -v cyclictest >/dev/null && command -v oslat >/dev/null; } || missing+=(rt-tests)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
