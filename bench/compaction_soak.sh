#!/usr/bin/env bash
# Memory under steady writes, left alone: a 3-member cluster (fsync on, rotation on, 400 ms
# turns) with auto_compaction_mode = "periodic", 16 clients putting 256-byte values over
# 10,000 keys for SECONDS, every member's resident memory sampled every 10 s. Without
# compaction the history grows with every write (the three members rose ~200 MiB per 10 s
# under this load, 2 GiB in 80 s, until the NOSPACE alarm); with it the memory must level
# off at what the retention holds. Reports, per minute, the three members' resident memory
# (sum), the store size the leader counts and the writes per second, then the growth over
# the second half of the run.
#
# Usage: bench/compaction_soak.sh [SECONDS] [RETENTION]   (defaults 600 and 60s)
# TMPDIR=/dev/shm puts the members' data on tmpfs (the disk then is not what limits the
# write rate; the memory measured is the processes', not the page cache's).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
retention=${2:-60s}
scripts/deps.sh >/dev/null
if [ -n "${WORKNODE_BIN:-}" ]; then worknode=$WORKNODE_BIN; else cargo build --release -q -p worknode-cli; worknode=target/release/worknode; fi
work=$(mktemp -d "${TMPDIR:-/tmp}/compaction-soak.XXXXXX")
pids=()
stop_all() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'status=$?; stop_all; if [ $status = 0 ] && [ -z "${KEEP_WORK:-}" ]; then rm -rf "$work"; else echo "kept $work for a look" >&2; fi' EXIT
# shellcheck source=bench/lib.sh
source bench/lib.sh

settings="auto_compaction_mode = \"periodic\"\nauto_compaction_retention = \"$retention\"\n"
start_cluster "$worknode" soak 26 "$settings" on
members=("${pids[@]}")
"$worknode" bench put --endpoints "$endpoints" --clients 16 --connections 16 --key-space 10000 \
  --value-size 256 --duration "${seconds}s" --json > "$work/bench.json" &
bench=$!
start=$(date +%s)
while kill -0 "$bench" 2>/dev/null; do
  now=$(( $(date +%s) - start ))
  rss=0
  for pid in "${members[@]}"; do
    rss=$(( rss + $(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status") ))
  done
  store=$(ETCDCTL_API=3 etcdctl --endpoints="$endpoints" endpoint status -w json 2>/dev/null \
    | python3 -c 'import json,sys; print(max(s["Status"].get("dbSize", 0) for s in json.load(sys.stdin)))' 2>/dev/null || echo 0)
  echo "$now $rss $store" >> "$work/samples"
  sleep 10
done
wait "$bench"
compactions=$(cat "$work"/soak-n*.log | grep -c "compacted the history" || true)

python3 - "$work" "$seconds" "$retention" "$compactions" <<'PY'
import datetime, json, sys
work, seconds, retention, compactions = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
report = json.load(open(f"{work}/bench.json"))
samples = [tuple(int(x) for x in line.split()) for line in open(f"{work}/samples")]
print(f"\n{datetime.date.today()}, {seconds} s of 16 clients putting 256-byte values over 10,000 keys, "
      f"3 members, rotation on, auto_compaction periodic {retention}: "
      f"{report['ops_per_s']:.0f} writes/s, {compactions} compactions\n")
print("| minute | members' resident memory (sum) MiB | store size (largest member) MiB |")
print("|---:|---:|---:|")
for minute in range(0, seconds // 60 + 1):
    at = [s for s in samples if s[0] // 60 == minute]
    if at:
        last = at[-1]
        print(f"| {minute} | {last[1] / 1024:.0f} | {last[2] / 2**20:.1f} |")
half = [s for s in samples if s[0] >= seconds / 2]
if len(half) >= 2:
    first, last = half[0], half[-1]
    peak = max(s[1] for s in half)
    print(f"\nsecond half: resident memory {first[1] / 1024:.0f} → {last[1] / 1024:.0f} MiB "
          f"(peak {peak / 1024:.0f} MiB), store {first[2] / 2**20:.1f} → {last[2] / 2**20:.1f} MiB")
PY
