#!/usr/bin/env bash
# Two worknode builds, side by side in one run: for each round and each binary in turn,
# a fresh 3-member cluster (fsync on, pinning off, rotation off) on loopback, one client
# on the leader's address, then 16 clients spread over the members (`worknode bench put`,
# 256-byte values). Alternating fresh clusters (in both orders) lets the machine's drift
# fall on both.
# Prints each run and the ratios of the sums (B ÷ A throughput, A ÷ B p50).
#
# Usage: bench/ab_binaries.sh BINARY_A BINARY_B [ROUNDS] [SECONDS]   (defaults 3 and 5)
# AB_DIR=/dev/shm puts the members' data on tmpfs: fdatasync costs nothing there, so the
# comparison is of the CPU path alone, without the disk's noise (a shared virtual disk's
# sync latency can swing 4x between rounds).
# e.g.   git stash; cargo build --release; cp target/release/worknode /tmp/wn-a; git stash pop
#        cargo build --release; bench/ab_binaries.sh /tmp/wn-a target/release/worknode
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then echo "usage: bench/ab_binaries.sh BINARY_A BINARY_B [ROUNDS] [SECONDS]" >&2; exit 2; fi
a=$1 b=$2 rounds=${3:-3} seconds=${4:-5}
for bin in "$a" "$b"; do [ -x "$bin" ] || { echo "$bin: not an executable" >&2; exit 2; }; done
scripts/deps.sh >/dev/null
work=$(mktemp -d "${AB_DIR:-/tmp}/ab-binaries.XXXXXX")
pids=()
stop_all() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT
source bench/lib.sh
export ETCDCTL_API=3

for round in $(seq 1 "$rounds"); do
  # Odd rounds run A first, even rounds B first: whichever ran second won by 2-5% in
  # runs of one order, on tmpfs too.
  order="a b"; [ $((round % 2)) = 0 ] && order="b a"
  for side in $order; do
    if [ $side = a ]; then bin=$a; else bin=$b; fi
    start_cluster "$bin" "ab-$side$round" 14
    leader=$(etcdctl --endpoints="$endpoints" endpoint status | awk -F', ' '$5 == "true" {print $1}')
    "$bin" bench put --endpoints "$leader" --clients 1 --connections 1 --duration "${seconds}s" --json > "$work/$side$round-1.json"
    "$bin" bench put --endpoints "$endpoints" --clients 16 --connections 16 --duration "${seconds}s" --json > "$work/$side$round-16.json"
    stop_all
  done
done

python3 - "$work" "$rounds" "$a" "$b" <<'PY'
import json, sys
work, rounds, a, b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
load = lambda name: json.load(open(f"{work}/{name}.json"))
print(f"A = {a}\nB = {b}\n")
print("| round | A 1 client ops/s (p50 ms) | B 1 client ops/s (p50 ms) | A 16 clients ops/s (p50 ms) | B 16 clients ops/s (p50 ms) |")
print("|---:|---:|---:|---:|---:|")
sums = {}
for r in range(1, rounds + 1):
    cells = []
    for case in ["1", "16"]:
        for side in "ab":
            rep = load(f"{side}{r}-{case}")
            sums.setdefault((side, case), []).append(rep)
            cells.append(f"{rep['ops_per_s']:.0f} ({rep['p50_ms']:.3f})")
    print(f"| {r} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
print()
for case, label in [("1", "1 client at the leader"), ("16", "16 clients")]:
    ops = {side: sum(x["ops_per_s"] for x in sums[(side, case)]) for side in "ab"}
    p50 = {side: sum(x["p50_ms"] for x in sums[(side, case)]) for side in "ab"}
    print(f"{label}: throughput B/A {ops['b'] / ops['a']:.3f}x, p50 A/B {p50['a'] / p50['b']:.3f}x")
PY
