#!/usr/bin/env bash
# Large reads against writes, side by side in one run: for each binary, a fresh 3-member
# cluster (fsync on, pinning off, rotation off) on loopback is filled with 60,000 keys of
# 900 bytes (54 MB; `worknode bench fill`), then 4 clients put for SECONDS alone, then the
# same 4 clients put while 8 more read every key at once (`worknode bench range`, unlimited
# linearizable ranges, one each in flight). Prints the put p99 and maximum of both phases
# and how much the ranges moved them. Target: the ranges move the put p99 by at most 10 ms.
#
# The load always comes from this tree's build (target/release/worknode, or
# $WORKNODE_BENCH), so an older server binary can be compared.
#
# Usage: bench/range_stall.sh BINARY [BINARY_B] [SECONDS]   (default 10 s per phase)
# e.g.   bench/range_stall.sh /tmp/wn-before target/release/worknode
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then echo "usage: bench/range_stall.sh BINARY [BINARY_B] [SECONDS]" >&2; exit 2; fi
binaries=("$1"); seconds=10
if [ $# -ge 2 ]; then
  if [ -x "$2" ]; then binaries+=("$2"); seconds=${3:-10}; else seconds=$2; fi
fi
bench=${WORKNODE_BENCH:-target/release/worknode}
# The range clients decode 54 MB per answer. On a host with few CPUs, that decoding (a
# client's work, on other machines in a deployment) would take the CPUs from the servers
# and the writers alike; RANGE_NICE (default 0) lowers the range clients' priority to
# separate what the servers do with large reads from what their clients cost.
range_nice=${RANGE_NICE:-0}
for bin in "${binaries[@]}" "$bench"; do [ -x "$bin" ] || { echo "$bin: not an executable" >&2; exit 2; }; done
scripts/deps.sh >/dev/null
work=$(mktemp -d /tmp/range-stall.XXXXXX)
pids=()
stop_all() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT
source bench/lib.sh
export ETCDCTL_API=3

field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

echo "$(date +%F), ${seconds} s per phase, range clients at nice $range_nice"
printf '%-28s %12s %12s %12s %12s %14s\n' binary "alone p99" "alone max" "ranges p99" "ranges max" "ranges done"
run=0
for bin in "${binaries[@]}"; do
  run=$((run + 1))
  start_cluster "$bin" "range-r$run" 15
  "$bench" bench fill --endpoints "$endpoints" --clients 16 --connections 3 --key-space 60000 \
    --value-size 900 --duration 120s --json > "$work/fill-$run.json"
  "$bench" bench put --endpoints "$endpoints" --clients 4 --connections 3 --key-space 60000 \
    --value-size 900 --duration "${seconds}s" --json > "$work/alone-$run.json"
  nice -n "$range_nice" "$bench" bench range --endpoints "$endpoints" --clients 8 --connections 3 \
    --duration "${seconds}s" --json > "$work/ranges-$run.json" &
  ranges=$!
  "$bench" bench put --endpoints "$endpoints" --clients 4 --connections 3 --key-space 60000 \
    --value-size 900 --duration "${seconds}s" --json > "$work/with-$run.json"
  wait "$ranges"
  printf '%-28s %9.2f ms %9.2f ms %9.2f ms %9.2f ms %14s\n' "$(basename "$bin")" \
    "$(field "$work/alone-$run.json" p99_ms)" "$(field "$work/alone-$run.json" max_ms)" \
    "$(field "$work/with-$run.json" p99_ms)" "$(field "$work/with-$run.json" max_ms)" \
    "$(field "$work/ranges-$run.json" ops)"
  stop_all
done
