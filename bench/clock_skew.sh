#!/usr/bin/env bash
# One member's wall clock off, side by side in one run: three worknode clusters with
# scheduled leadership (400 ms turns, etcd's timing), one with clocks in agreement, one
# with member 2's wall clock 150 ms ahead, one with it 2 s ahead (libfaketime preloaded;
# the monotonic clock untouched, as NTP trouble leaves it). Every member runs under
# libfaketime in all three — offset 0 but member 2's — because its interception of every
# clock read costs CPU, which is not what is measured. The load (4 clients, 256-byte
# puts, all three endpoints) alternates between the clusters in SEGMENTS short runs each,
# in rotating order, so this VM's drift falls on all alike. Reports per cluster the
# throughput against the agreeing one, the longest single request, the longest gap
# between completions, client errors, and what the members saw: the clock offsets the
# leader measured, handoffs, and turns kept because a clock was beyond clock_skew_max_ms
# (default 500 ms).
#
# Usage: bench/clock_skew.sh [SECONDS per cluster] [SEGMENTS]   (defaults 30 and 10)
# KEEP_WORK=1 keeps the work directory (logs, reports) after a good run too; TMPDIR=/dev/shm
# puts the members' data on tmpfs, taking this VM's disk stalls out of the latencies.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
segments=${2:-10}
segment_s=$(awk "BEGIN { s = $seconds / $segments; print (s < 1 ? 1 : s) }")
scripts/deps.sh >/dev/null
libfaketime=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
[ -e "$libfaketime" ] || apt-get install -y faketime >/dev/null
if [ -n "${WORKNODE_BIN:-}" ]; then worknode=$WORKNODE_BIN; else cargo build --release -q -p worknode-cli; worknode=target/release/worknode; fi
work=$(mktemp -d "${TMPDIR:-/tmp}/clock-skew.XXXXXX")
pids=()
stop_all() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'status=$?; stop_all; if [ $status = 0 ] && [ -z "${KEEP_WORK:-}" ]; then rm -rf "$work"; else echo "kept $work for a look" >&2; fi' EXIT
export ETCDCTL_API=3

endpoints_of() { echo "127.0.0.1:2${1}379,127.0.0.1:2${1}479,127.0.0.1:2${1}579"; }

start_cluster() { # $1 = name, $2 = port digit, $3 = member 2's clock offset for libfaketime
  local i endpoints
  endpoints=$(endpoints_of "$2")
  for i in 1 2 3; do
    {
      printf 'cluster = "skew-%s"\nmember_id = %s\ndata_dir = "%s"\n' "$1" "$i" "$work/$1-d$i"
      printf '[schedule]\nrotation = "on"\nslot_ms = 100\nslots_per_turn = 4\n[cores]\npin = "off"\n'
      for m in 1 2 3; do
        printf '[[member]]\nid = %s\nname = "n%s"\npeer = "127.0.0.1:2%s%s80"\nclient = "127.0.0.1:2%s%s79"\nmetrics = "127.0.0.1:2%s%s81"\n' \
          "$m" "$m" "$2" "$((m + 2))" "$2" "$((m + 2))" "$2" "$((m + 2))"
      done
    } > "$work/$1-n$i.toml"
    # Every member runs under libfaketime, preloaded into the member itself (the faketime
    # wrapper would leave it orphaned when the wrapper is killed): its interception of
    # every clock read costs CPU, and a member alone under it would be slower than the
    # others — a cost of the measurement, which falls on the run whose skewed member
    # happens to lead most. Only member 2's offset differs between the clusters.
    local offset="+0"
    [ "$i" = 2 ] && offset=$3
    LD_PRELOAD=$libfaketime FAKETIME="$offset" FAKETIME_DONT_FAKE_MONOTONIC=1 \
      "$worknode" serve --config "$work/$1-n$i.toml" > "$work/$1-n$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 100); do
    etcdctl --endpoints="$endpoints" --command-timeout=1s put ready 1 >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "cluster $1 did not become ready (logs in $work)" >&2; exit 1
}

names=(agree ahead150ms ahead2s)
start_cluster agree 1 "+0"
start_cluster ahead150ms 2 "+0.150"
start_cluster ahead2s 3 "+2"
sleep 3
for k in $(seq 1 "$segments"); do
  case $((k % 3)) in 0) order="0 1 2" ;; 1) order="1 2 0" ;; 2) order="2 0 1" ;; esac
  for index in $order; do
    name=${names[$index]}
    "$worknode" bench put --endpoints "$(endpoints_of $((index + 1)))" --clients 4 --connections 4 \
      --duration "${segment_s}s" --json --completions "$work/$name-$k.completions" > "$work/$name-$k.json"
  done
done
for index in 0 1 2; do
  name=${names[$index]}
  "$worknode" schedule --cluster "$(endpoints_of $((index + 1)))" --count 1 > "$work/$name-schedule.txt" || true
  "$worknode" status --endpoints "$(endpoints_of $((index + 1)))" --json --handoffs 1024 > "$work/$name-status.json" 2>/dev/null || true
  grep -h "clock" "$work/$name"-n?.log | head -3 > "$work/$name-warnings.txt" || true
done
stop_all

python3 - "$work" "$segments" "$seconds" <<'PY'
import json, sys, datetime, re
work, segments, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names = [("clocks in agreement", "agree"), ("member 2 +150 ms", "ahead150ms"), ("member 2 +2 s", "ahead2s")]
runs = {n: [json.load(open(f"{work}/{n}-{k}.json")) for k in range(1, segments + 1)] for _, n in names}
def ops(n): return sum(r["ops"] for r in runs[n]) / sum(r["duration_s"] for r in runs[n])
base = ops("agree")
print(f"\n{datetime.date.today()}, {seconds} s per cluster in {segments} alternating segments, 4 clients, 256-byte puts, 3 members, rotation on (400 ms turns)\n")
print("| cluster | ops/s | throughput vs agreement | longest single request ms | longest gap ms | client errors | clocks the answering member measured | handoffs | turns kept for clock skew |")
print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
for label, n in names:
    # The longest wait of any request, answered or failed.
    longest = max(max(r["max_ms"], r.get("failed_max_ms", 0)) for r in runs[n])
    gap = max(r["stall_ms_max"] for r in runs[n])
    errors = sum(r["errors"] for r in runs[n])
    text = open(f"{work}/{n}-schedule.txt").read()
    clocks = re.search(r"clocks against (.*)", text)
    turns = []
    try:
        status = json.load(open(f"{work}/{n}-status.json"))
        turns = status.get("recent_turns", [])
    except Exception:
        pass
    handoffs = sum(1 for t in turns if (t.get("handoff_ms") or 0) > 0)
    skew_kept = sum(1 for t in turns if "clock" in (t.get("skipped") or ""))
    print(f"| {label} | {ops(n):.0f} | {ops(n) / base:.3f}× | {longest:.1f} | {gap:.1f} | {errors} | {clocks.group(1) if clocks else 'none'} | {handoffs} | {skew_kept} |")
print()
for _, n in names:
    warnings = open(f"{work}/{n}-warnings.txt").read().strip()
    if warnings:
        print(f"{n}: {warnings.splitlines()[0][:300]}")
PY
