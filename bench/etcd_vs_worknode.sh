#!/usr/bin/env bash
# etcd (Debian etcd-server, fsync on) and worknode (fsync on), three members each on
# loopback, measured one after the other with the same load generator (`worknode bench`):
# 256-byte puts with 1 client (on the leader's address, then on a follower's), 16 and 64
# clients (spread over the members), linearizable gets with 16 clients, and serializable
# gets with one client (a request that needs neither Raft nor the disk); then watch (64
# watchers on one prefix while 16 clients put under it: events delivered per second and
# put-to-event latency), lease keep-alives and lease grants with 16 clients, and the
# 16-client puts again with 1,000 idle watch streams attached.
# Prints one table with ratios (worknode ÷ etcd for throughput, etcd ÷ worknode for p50).
#
# With --tmpfs both systems keep their data in /dev/shm, where fsync and fdatasync return
# at once: the same runs without the disk, which shows what the software costs and what
# the disk adds (both still write and "sync" every entry; only the device is gone).
#
# With --tls both systems serve clients and peers over TLS with client certificates
# required (one CA from `worknode certs init`; etcd's --client-cert-auth and
# --peer-client-cert-auth, worknode's [tls] and [peer_tls]), and the load generator
# presents a client certificate.
#
# Usage: bench/etcd_vs_worknode.sh [SECONDS per run] [--tmpfs] [--tls]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=10 storage=disk tls=off
for arg in "$@"; do
  case $arg in
    --tmpfs) storage=tmpfs ;;
    --tls) tls=on ;;
    *[!0-9]* | "") echo "bench/etcd_vs_worknode.sh: $arg: expected SECONDS, --tmpfs or --tls" >&2; exit 2 ;;
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

scheme=http client_flags=() etcdctl_flags=()
if [ "$tls" = on ]; then
  "$worknode" certs init --cluster bench --members n1,n2,n3 --out "$work/certs" >/dev/null
  scheme=https
  client_flags=(--cacert "$work/certs/ca.pem" --cert "$work/certs/admin.pem" --key "$work/certs/admin-key.pem")
  etcdctl_flags=(--cacert="$work/certs/ca.pem" --cert="$work/certs/admin.pem" --key="$work/certs/admin-key.pem")
fi
# etcdctl and the load generator take TLS from their flags, so endpoints carry no scheme.
endpoints="127.0.0.1:12379,127.0.0.1:12479,127.0.0.1:12579"
ctl() { ETCDCTL_API=3 etcdctl "${etcdctl_flags[@]}" --endpoints="$endpoints" "$@"; }
bench() { "$worknode" bench "$@" "${client_flags[@]}"; }
run_suite() { # $1 = system name
  local name=$1 leader follower
  # One client's latency depends on whether its member leads (a follower forwards the
  # write and learns the commit a message later): measure both, for both systems.
  leader=$(ctl endpoint status | awk -F', ' '$5 == "true" {print $1}')
  follower=$(ctl endpoint status | awk -F', ' '$5 == "false" {print $1; exit}')
  bench put --endpoints "$leader" --clients 1 --connections 1 --duration "${seconds}s" --json > "$work/$name-put-1-leader.json"
  bench put --endpoints "$follower" --clients 1 --connections 1 --duration "${seconds}s" --json > "$work/$name-put-1-follower.json"
  bench put --endpoints "$endpoints" --clients 16 --connections 16 --duration "${seconds}s" --json > "$work/$name-put-16.json"
  bench put --endpoints "$endpoints" --clients 64 --connections 64 --duration "${seconds}s" --json > "$work/$name-put-64.json"
  bench get --endpoints "$endpoints" --clients 16 --connections 16 --duration "${seconds}s" --json > "$work/$name-get-16.json"
  # No Raft round and no disk: the load generator's and the gRPC stack's share of a request.
  bench get --serializable --endpoints "$leader" --clients 1 --connections 1 --duration "${seconds}s" --json > "$work/$name-get-1-serializable.json"
  bench watch --watchers 64 --endpoints "$endpoints" --clients 16 --connections 16 --duration "${seconds}s" --json > "$work/$name-watch-64.json"
  bench put --idle-watchers 1000 --endpoints "$endpoints" --clients 16 --connections 16 --duration "${seconds}s" --json > "$work/$name-put-16-idle.json"
  bench keep-alive --endpoints "$endpoints" --clients 16 --connections 16 --duration "${seconds}s" --json > "$work/$name-keep-alive-16.json"
  # Last: the leases it grants live on (60 s) after the run.
  bench lease-grant --endpoints "$endpoints" --clients 16 --connections 16 --duration "${seconds}s" --json > "$work/$name-lease-grant-16.json"
}
wait_ready() {
  for _ in $(seq 1 100); do
    if ctl --command-timeout=1s put bench-ready 1 >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "cluster did not become ready" >&2; exit 1
}

echo "== etcd $(etcd --version | head -1 | awk '{print $3}'), 3 members, fsync on, data on $storage, TLS $tls"
cluster=""
for i in 1 2 3; do cluster+="e$i=$scheme://127.0.0.1:1${i}380,"; done
for i in 1 2 3; do
  etcd_tls=()
  if [ "$tls" = on ]; then
    c=$work/certs
    etcd_tls=(--cert-file "$c/n$i.pem" --key-file "$c/n$i-key.pem" --trusted-ca-file "$c/ca.pem" --client-cert-auth
      --peer-cert-file "$c/n$i-peer.pem" --peer-key-file "$c/n$i-peer-key.pem" --peer-trusted-ca-file "$c/ca.pem" --peer-client-cert-auth)
  fi
  etcd --name "e$i" --data-dir "$data/etcd$i" \
    --listen-client-urls "$scheme://127.0.0.1:12$((i + 2))79" --advertise-client-urls "$scheme://127.0.0.1:12$((i + 2))79" \
    --listen-peer-urls "$scheme://127.0.0.1:1${i}380" --initial-advertise-peer-urls "$scheme://127.0.0.1:1${i}380" \
    --initial-cluster "${cluster%,}" --initial-cluster-state new --initial-cluster-token bench \
    "${etcd_tls[@]}" --logger zap --log-level error > "$work/etcd$i.log" 2>&1 &
  pids+=($!)
done
wait_ready
run_suite etcd
for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()

echo "== worknode, 3 members, fsync on (raft-engine sync writes), data on $storage, TLS $tls"
for i in 1 2 3; do
  tables=""
  if [ "$tls" = on ]; then
    c=$work/certs
    tables="[tls]
cert_file = \"$c/n$i.pem\"
key_file = \"$c/n$i-key.pem\"
trusted_ca_file = \"$c/ca.pem\"
client_cert_auth = true
[peer_tls]
cert_file = \"$c/n$i-peer.pem\"
key_file = \"$c/n$i-peer-key.pem\"
trusted_ca_file = \"$c/ca.pem\""
  fi
  cat > "$work/n$i.toml" <<TOML
cluster = "bench"
member_id = $i
data_dir = "$data/worknode$i"
$tables
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

python3 - "$work" "$seconds" "$storage" "$tls" <<'PY'
import json, sys, datetime
work, seconds, storage, tls = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def load(system, case):
    return json.load(open(f"{work}/{system}-{case}.json"))
rows = [("put, 1 client at the leader", "put-1-leader"), ("put, 1 client at a follower", "put-1-follower"), ("put, 16 clients", "put-16"), ("put, 64 clients", "put-64"), ("linearizable get, 16 clients", "get-16"), ("serializable get, 1 client (no Raft, no disk)", "get-1-serializable"), ("watch: events delivered to 64 watchers, 16 writers (latency: put to event)", "watch-64"), ("put, 16 clients, 1,000 idle watchers attached", "put-16-idle"), ("lease keep-alive, 16 clients", "keep-alive-16"), ("lease grant, 16 clients", "lease-grant-16")]
print()
where = "on tmpfs (no disk: fsync returns at once)" if storage == "tmpfs" else "on disk, fsync on"
security = ", TLS for clients and peers (client certificates required)" if tls == "on" else ""
print(f"{datetime.date.today()}, {seconds} s per run, 256-byte values, 3 members on loopback, data {where}{security}, same load generator")
print()
print("| workload | etcd ops/s | worknode ops/s | throughput × | etcd p50 ms | worknode p50 ms | p50 ÷ | etcd p99 ms | worknode p99 ms | errors (etcd / worknode) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for label, case in rows:
    e, w = load("etcd", case), load("worknode", case)
    print(f"| {label} | {e['ops_per_s']:.0f} | {w['ops_per_s']:.0f} | {w['ops_per_s'] / max(e['ops_per_s'], 1e-9):.2f}× "
          f"| {e['p50_ms']:.2f} | {w['p50_ms']:.2f} | {e['p50_ms'] / max(w['p50_ms'], 1e-9):.2f}× "
          f"| {e['p99_ms']:.2f} | {w['p99_ms']:.2f} | {e['errors']} / {w['errors']} |")
print()
print("| with 1,000 idle watchers attached | etcd | worknode |")
print("|---|---:|---:|")
idle = [load(system, "put-16-idle")["ops_per_s"] / max(load(system, "put-16")["ops_per_s"], 1e-9) for system in ("etcd", "worknode")]
print(f"| put throughput, 16 clients, vs none attached | {idle[0]:.2f}× | {idle[1]:.2f}× |")
PY
