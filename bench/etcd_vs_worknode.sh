#!/usr/bin/env bash
# etcd (Debian etcd-server, fsync on) and worknode (fsync on), three members each on
# loopback, measured one after the other with the same load generator (`worknode bench`):
# 256-byte puts with 1 client (on the leader's address, then on a follower's), 16 and 64
# clients (spread over the members), linearizable gets with 16 clients, and serializable
# gets with one client (a request that needs neither Raft nor the disk).
# Prints one table with ratios (worknode ÷ etcd for throughput, etcd ÷ worknode for p50).
#
# With --tmpfs both systems keep their data in /dev/shm, where fsync and fdatasync return
# at once: the same runs without the disk, which shows what the software costs and what
# the disk adds (both still write and "sync" every entry; only the device is gone).
#
# Usage: bench/etcd_vs_worknode.sh [SECONDS per run] [--tmpfs]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=10 storage=disk
for arg in "$@"; do
  case $arg in
    --tmpfs) storage=tmpfs ;;
    *[!0-9]* | "") echo "bench/etcd_vs_worknode.sh: $arg: expected SECONDS or --tmpfs" >&2; exit 2 ;;
    *) seconds=$arg ;;
  esac
done
if ! command -v etcd >/dev/null; then
  apt-get update -qq && apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
if [ -n "${WORKNODE_BIN:-}" ]; then
  worknode=$WORKNODE_BIN
else
  cargo build --release -q -p worknode-cli
  worknode=target/release/worknode
fi
work=$(mktemp -d /tmp/etcd-vs-worknode.XXXXXX)
if [ "$storage" = tmpfs ]; then data=$(mktemp -d /dev/shm/etcd-vs-worknode.XXXXXX); else data=$work; fi
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work" "$data"; }
trap cleanup EXIT

endpoints="127.0.0.1:12379,127.0.0.1:12479,127.0.0.1:12579"
run_suite() { # $1 = system name
  local name=$1 leader follower
  # One client's latency depends on whether its member leads (a follower forwards the
  # write and learns the commit a message later): measure both, for both systems.
  leader=$(ETCDCTL_API=3 etcdctl --endpoints="$endpoints" endpoint status | awk -F', ' '$5 == "true" {print $1}')
  follower=$(ETCDCTL_API=3 etcdctl --endpoints="$endpoints" endpoint status | awk -F', ' '$5 == "false" {print $1; exit}')
  "$worknode" bench put --endpoints "$leader" --clients 1 --connections 1 --duration "${seconds}s" --json > "$work/$name-put-1-leader.json"
  "$worknode" bench put --endpoints "$follower" --clients 1 --connections 1 --duration "${seconds}s" --json > "$work/$name-put-1-follower.json"
  "$worknode" bench put --endpoints "$endpoints" --clients 16 --connections 16 --duration "${seconds}s" --json > "$work/$name-put-16.json"
  "$worknode" bench put --endpoints "$endpoints" --clients 64 --connections 64 --duration "${seconds}s" --json > "$work/$name-put-64.json"
  "$worknode" bench get --endpoints "$endpoints" --clients 16 --connections 16 --duration "${seconds}s" --json > "$work/$name-get-16.json"
  # No Raft round and no disk: the load generator's and the gRPC stack's share of a request.
  "$worknode" bench get --serializable --endpoints "$leader" --clients 1 --connections 1 --duration "${seconds}s" --json > "$work/$name-get-1-serializable.json"
}
wait_ready() {
  for _ in $(seq 1 100); do
    if ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --command-timeout=1s put bench-ready 1 >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "cluster did not become ready" >&2; exit 1
}

echo "== etcd $(etcd --version | head -1 | awk '{print $3}'), 3 members, fsync on, data on $storage"
cluster=""
for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:1${i}380,"; done
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$data/etcd$i" \
    --listen-client-urls "http://127.0.0.1:12$((i + 2))79" --advertise-client-urls "http://127.0.0.1:12$((i + 2))79" \
    --listen-peer-urls "http://127.0.0.1:1${i}380" --initial-advertise-peer-urls "http://127.0.0.1:1${i}380" \
    --initial-cluster "${cluster%,}" --initial-cluster-state new --initial-cluster-token bench \
    --logger zap --log-level error > "$work/etcd$i.log" 2>&1 &
  pids+=($!)
done
wait_ready
run_suite etcd
for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()

echo "== worknode, 3 members, fsync on (raft-engine sync writes), data on $storage"
for i in 1 2 3; do
  cat > "$work/n$i.toml" <<TOML
cluster = "bench"
member_id = $i
data_dir = "$data/worknode$i"
[cores]
pin = "off"   # three members share this host's CPUs, as the etcd members did
[[member]]
id = 1
name = "n1"
peer = "127.0.0.1:11380"
client = "127.0.0.1:12379"
[[member]]
id = 2
name = "n2"
peer = "127.0.0.1:12380"
client = "127.0.0.1:12479"
[[member]]
id = 3
name = "n3"
peer = "127.0.0.1:13380"
client = "127.0.0.1:12579"
TOML
  "$worknode" serve --config "$work/n$i.toml" > "$work/worknode$i.log" 2>&1 &
  pids+=($!)
done
wait_ready
run_suite worknode

python3 - "$work" "$seconds" "$storage" <<'PY'
import json, sys, datetime
work, seconds, storage = sys.argv[1], sys.argv[2], sys.argv[3]
def load(system, case):
    return json.load(open(f"{work}/{system}-{case}.json"))
rows = [("put, 1 client at the leader", "put-1-leader"), ("put, 1 client at a follower", "put-1-follower"), ("put, 16 clients", "put-16"), ("put, 64 clients", "put-64"), ("linearizable get, 16 clients", "get-16"), ("serializable get, 1 client (no Raft, no disk)", "get-1-serializable")]
print()
where = "on tmpfs (no disk: fsync returns at once)" if storage == "tmpfs" else "on disk, fsync on"
print(f"{datetime.date.today()}, {seconds} s per run, 256-byte values, 3 members on loopback, data {where}, same load generator")
print()
print("| workload | etcd ops/s | worknode ops/s | throughput × | etcd p50 ms | worknode p50 ms | p50 ÷ | etcd p99 ms | worknode p99 ms | errors (etcd / worknode) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for label, case in rows:
    e, w = load("etcd", case), load("worknode", case)
    print(f"| {label} | {e['ops_per_s']:.0f} | {w['ops_per_s']:.0f} | {w['ops_per_s'] / max(e['ops_per_s'], 1e-9):.2f}× "
          f"| {e['p50_ms']:.2f} | {w['p50_ms']:.2f} | {e['p50_ms'] / max(w['p50_ms'], 1e-9):.2f}× "
          f"| {e['p99_ms']:.2f} | {w['p99_ms']:.2f} | {e['errors']} / {w['errors']} |")
PY
