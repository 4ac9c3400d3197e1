#!/usr/bin/env bash
# Planned handoffs, side by side in one run, under a steady write load (4 clients,
# 256-byte puts, `worknode bench`):
#   1. worknode with scheduled leadership (400 ms turns: 100 ms slots × 4)
#   2. worknode with rotation off
#   3. etcd 3.4 (Debian etcd-server) with `etcdctl move-leader` every 3 s
# Runs 1 and 2 are two clusters started together; the load alternates between them in
# SEGMENTS (default 10) pieces per side, in on-off-off-on order, so the machine's drift
# (this VM's throughput moves by 15% between minutes) falls on both alike, and each
# segment turns the endpoint list so every member takes the second client on its address
# equally often (a client on the leader's own address skips the forwarding hop). The idle
# cluster keeps running: the rotating one still hands over every turn while idle, which
# costs the rotation-off side a little, not the rotation side.
# and, separately, kill -9 of the leader under the same load (worknode with rotation, etcd).
# Reports client-visible errors, throughput, the longest time any single request waited
# (a stall between completions hides one slow request while other clients complete), the
# longest stall between completions over the
# whole run and the longest one that overlaps a handoff, ±5 ms: worknode's transfers run
# from handoff_lead (10 ms) before each turn boundary for the duration its turn log
# records; etcd's from the start to the end of each move-leader call; the kill runs are
# charged the stall over the kill. For scale, the rotation-off run is charged the same
# windows on the same 400 ms grid (p50 handoff length) where nothing happens: what the
# machine does to a window of that length anyway. Also worknode's handoff durations. The load client fails over like etcd's:
# a request a dead member's address refused goes to the next endpoint (a "failover", not
# an error); a request in flight at a member that dies is an error (its outcome is unknown).
#
# Every request's completion is kept (`worknode bench --completions`), which gives two
# measures that do not depend on comparing two clusters: how much throughput dips around
# the turn boundaries (rotation on against off, same phase of the turn), and the longest
# gap between completions in each handoff's window (p50, p99, max).
#
# Usage: bench/rotation.sh [SECONDS per run] [SEGMENTS]   (defaults 30 and 10)
# KEEP_WORK=1 keeps the work directory (logs, reports, completions) after a good run too.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
segments=${2:-10}
segment_s=$(awk "BEGIN { s = $seconds / $segments; print (s < 1 ? 1 : s) }")
scripts/deps.sh >/dev/null
if [ -n "${WORKNODE_BIN:-}" ]; then worknode=$WORKNODE_BIN; else cargo build --release -q -p worknode-cli; worknode=target/release/worknode; fi
work=$(mktemp -d /tmp/rotation-bench.XXXXXX)
pids=()
stop_all() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
# A failed run keeps its logs and data for a look.
trap 'status=$?; stop_all; if [ $status = 0 ] && [ -z "${KEEP_WORK:-}" ]; then rm -rf "$work"; else echo "kept $work for a look" >&2; fi' EXIT
endpoints="127.0.0.1:22379,127.0.0.1:22479,127.0.0.1:22579"
# The rotation-off cluster while both worknode clusters run.
plain_endpoints="127.0.0.1:22389,127.0.0.1:22489,127.0.0.1:22589"
export ETCDCTL_API=3

wait_ready() { # $1 = endpoints (default: $endpoints)
  for _ in $(seq 1 100); do
    etcdctl --endpoints="${1:-$endpoints}" --command-timeout=1s put ready 1 >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "cluster did not become ready" >&2; exit 1
}
leader_endpoint() { etcdctl --endpoints="$endpoints" endpoint status | awk -F', ' '$5 == "true" {print $1}'; }
leader_pid() { # $1 = system; the process serving the leader's client port
  local port=${1##*:}
  for pid in "${pids[@]}"; do
    if grep -q "$port" "/proc/$pid/cmdline" 2>/dev/null || grep -q "$port" "$work/cmd-$pid" 2>/dev/null; then echo "$pid"; return; fi
  done
}

start_worknode() { # $1 = on|off, $2 = data suffix, $3 = port digit (8, or 9 for a second cluster)
  local p=${3:-8} c=$((${3:-8} - 1))
  for i in 1 2 3; do
    cat > "$work/n$i-$2.toml" <<TOML
cluster = "rotation-$2"
member_id = $i
data_dir = "$work/w$i-$2"
[schedule]
rotation = "$1"
slot_ms = 100
slots_per_turn = 4
[cores]
pin = "off"
[[member]]
id = 1
name = "n1"
peer = "127.0.0.1:213${p}0"
client = "127.0.0.1:223${c}9"
[[member]]
id = 2
name = "n2"
peer = "127.0.0.1:223${p}0"
client = "127.0.0.1:224${c}9"
[[member]]
id = 3
name = "n3"
peer = "127.0.0.1:233${p}0"
client = "127.0.0.1:225${c}9"
TOML
    "$worknode" serve --config "$work/n$i-$2.toml" > "$work/w$i-$2.log" 2>&1 &
    pids+=($!)
    echo "127.0.0.1:22$((i + 2))${c}9" > "$work/cmd-$!"
  done
  if [ "$p" = 8 ]; then wait_ready; else wait_ready "$plain_endpoints"; fi
}
start_etcd() { # $1 = data suffix
  local cluster="" i
  for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:2${i}380,"; done
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$work/etcd$i-$1" \
      --listen-client-urls "http://127.0.0.1:22$((i + 2))79" --advertise-client-urls "http://127.0.0.1:22$((i + 2))79" \
      --listen-peer-urls "http://127.0.0.1:2${i}380" --initial-advertise-peer-urls "http://127.0.0.1:2${i}380" \
      --initial-cluster "${cluster%,}" --initial-cluster-state new --initial-cluster-token "rot-$1" \
      --logger zap --log-level error > "$work/etcd$i-$1.log" 2>&1 &
    pids+=($!)
    echo "127.0.0.1:22$((i + 2))79" > "$work/cmd-$!"
  done
  wait_ready
}
load() { # $1 = output name, $2 = duration (default: the run), $3 = endpoints (default: $endpoints)
  "$worknode" bench put --endpoints "${3:-$endpoints}" --clients 4 --connections 4 --duration "${2:-$seconds}s" --json --completions "$work/$1.done" > "$work/$1.json"
}
handoffs() { # turn logs of every member → handoff durations
  for ep in ${endpoints//,/ }; do "$worknode" status --endpoints "$ep" --json --handoffs 1024 2>/dev/null || true; done > "$work/$1-status.json"
}

echo "== worknode, rotation on (400 ms turns) and off, alternating $segments × ${segment_s} s each"
start_worknode on rot 8; start_worknode off plain 9
for k in $(seq 1 "$segments"); do
  if [ $((k % 2)) = 1 ]; then order="rotation plain"; else order="plain rotation"; fi
  for side in $order; do
    if [ $side = rotation ]; then eps=$endpoints; else eps=$plain_endpoints; fi
    # 4 clients on 3 members: one member serves two. Which one turns with the segment,
    # so the rotation-off leader is not favoured (or slighted) for the whole run.
    IFS=, read -r a b c <<< "$eps"
    case $((k % 3)) in 1) eps="$b,$c,$a" ;; 2) eps="$c,$a,$b" ;; esac
    echo "$(date +%s%6N)" >> "$work/worknode-$side-segments.txt"
    load "worknode-$side-$k" "$segment_s" "$eps"
    echo "$(date +%s%6N)" >> "$work/worknode-$side-segments.txt"
  done
done
handoffs worknode-rotation; stop_all
echo "== etcd, move-leader every 3 s"
start_etcd move
( end=$((SECONDS + seconds)); while [ $SECONDS -lt $end ]; do
    sleep 3
    leader=$(leader_endpoint) || continue
    ids=$(etcdctl --endpoints="$endpoints" endpoint status -w json | python3 -c 'import json,sys; print(" ".join(format(s["Status"]["header"]["member_id"], "x") for s in json.load(sys.stdin) if s["Status"]["leader"] != s["Status"]["header"]["member_id"]))')
    target=${ids%% *}
    began=$(date +%s%6N)
    [ -n "$target" ] && etcdctl --endpoints="$leader" move-leader "$target" >/dev/null 2>&1 || true
    echo "$began $(date +%s%6N)" >> "$work/etcd-move-handoffs.txt"
  done ) &
mover=$!
load etcd-move; wait $mover || true; stop_all

kill_leader() { # $1 = system
  if [ "$1" = worknode ]; then
    # Mid-turn, so leadership does not move between asking who leads and the kill.
    local next
    next=$("$worknode" schedule --cluster "$endpoints" --count 1 | sed -n 's/.*next turn in \([0-9]*\) ms.*/\1/p')
    if [ -n "$next" ] && [ "$next" -lt 250 ]; then sleep "$(awk "BEGIN { print ($next + 100) / 1000 }")"; fi
  fi
  local victim
  victim=$(leader_pid "$(leader_endpoint)")
  date +%s%6N > "$work/$1-kill-handoffs.txt"
  kill -9 "$victim"
}

echo "== kill -9 of the leader under load: worknode (rotation on), etcd"
for system in worknode etcd; do
  if [ $system = worknode ]; then start_worknode on kill; else start_etcd kill; fi
  ( sleep $((seconds / 3)); kill_leader $system ) &
  killer=$!
  load "$system-kill"; wait "$killer" || true; stop_all
done

python3 - "$work" "$seconds" "$segments" <<'PY'
import json, os, sys, datetime
work, seconds, segments = sys.argv[1], sys.argv[2], sys.argv[3]
def load(name):
    if os.path.exists(f"{work}/{name}.json"):
        return json.load(open(f"{work}/{name}.json"))
    # Alternating segments: summed, the worst segment's p99, every segment's stalls.
    parts = [json.load(open(f"{work}/{name}-{k}.json")) for k in range(1, 1 + int(segments))]
    ops, duration = sum(p["ops"] for p in parts), sum(p["duration_s"] for p in parts)
    return {"ops_per_s": ops / duration, "p99_ms": max(p["p99_ms"] for p in parts),
            "stall_ms_max": max(p["stall_ms_max"] for p in parts),
            "max_ms": max(p["max_ms"] for p in parts),
            "stalls": [s for p in parts for s in p["stalls"]],
            **{key: sum(p[key] for p in parts) for key in ["errors", "failovers", "stalls_unlisted"]},
            "segments": [p["ops_per_s"] for p in parts]}
# The rotating cluster hands over while idle too: keep the handoffs under load.
stamps = [int(line) for line in open(f"{work}/worknode-rotation-segments.txt")]
loaded = list(zip(stamps[0::2], stamps[1::2]))
under_load = lambda us: any(lo <= us <= hi for lo, hi in loaded)
turns = {}
for line in open(f"{work}/worknode-rotation-status.json").read().split("\n}\n"):
    line = line.strip()
    if not line:
        continue
    try:
        status = json.loads(line + ("}" if not line.endswith("}") else ""))
    except json.JSONDecodeError:
        continue
    for t in status.get("recent_turns", []):
        if t["handoff_ms"] > 0 and under_load(t["boundary_unix_us"]):
            turns[t["first_slot"]] = t
handoffs = [t["handoff_ms"] for t in turns.values()]
MARGIN_US, LEAD_US, TURN_US = 5_000, 10_000, 400_000
def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]
# Per run: the moments (UNIX µs windows) a stall is charged to.
transfer = lambda boundary, ms: (boundary - LEAD_US - MARGIN_US, boundary - LEAD_US + int(ms * 1e3) + MARGIN_US)
windows = {"worknode-rotation": [transfer(t["boundary_unix_us"], t["handoff_ms"]) for t in turns.values()]}
plain = load("worknode-plain")
if plain["stalls"] and handoffs:
    first = min(s["end_unix_us"] for s in plain["stalls"]) // TURN_US
    last = max(s["end_unix_us"] for s in plain["stalls"]) // TURN_US + 1
    windows["worknode-plain"] = [transfer(k * TURN_US, pct(handoffs, 0.5)) for k in range(first, last + 1)]
for name in ["etcd-move", "worknode-kill", "etcd-kill"]:
    path = f"{work}/{name}-handoffs.txt"
    spans = [tuple(int(x) for x in line.split()) for line in open(path)] if os.path.exists(path) else []
    windows[name] = [(s[0] - MARGIN_US, s[-1] + MARGIN_US) for s in spans]
def across(name, report):
    spans = windows.get(name)
    if spans is None:
        return "-"
    if report["stalls_unlisted"]:
        print(f"warning: {name}: {report['stalls_unlisted']} stalls beyond the listed ones were not charged", file=sys.stderr)
    hit = [s["ms"] for s in report["stalls"] for (lo, hi) in spans
           if s["end_unix_us"] - s["ms"] * 1e3 <= hi and s["end_unix_us"] >= lo]
    return f"{max(hit):.1f}" if hit else "< 2"
base = load("worknode-plain")["ops_per_s"]
print()
print(f"{datetime.date.today()}, {seconds} s per run, 4 clients, 256-byte puts, 3 members on loopback")
print()
print("| run | ops/s | throughput vs rotation off | client errors | failovers | longest stall ms | longest stall at handoffs (rotation off: same windows) / the kill, ms | longest single request ms | p99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for label, name in [("worknode, rotation on (400 ms turns)", "worknode-rotation"), ("worknode, rotation off", "worknode-plain"), ("etcd, move-leader every 3 s", "etcd-move"), ("worknode, kill -9 of the leader", "worknode-kill"), ("etcd, kill -9 of the leader", "etcd-kill")]:
    r = load(name)
    print(f"| {label} | {r['ops_per_s']:.0f} | {r['ops_per_s'] / base:.3f}× | {r['errors']} | {r['failovers']} | {r['stall_ms_max']:.1f} | {across(name, r)} | {r['max_ms']:.1f} | {r['p99_ms']:.2f} |")
on, off = load("worknode-rotation")["segments"], load("worknode-plain")["segments"]
pairs = [a / b for a, b in zip(on, off)]
mean = sum(pairs) / len(pairs)
se = (sum((r - mean) ** 2 for r in pairs) / max(1, len(pairs) - 1) / len(pairs)) ** 0.5
print()
print("throughput rotation on / off per segment pair: " + " ".join(f"{r:.3f}" for r in pairs)
      + f"; mean {mean:.3f} ± {se:.3f} (standard error)")

# Every completion, per loaded segment: where in the turn rotation costs throughput, and
# what each handoff cost the clients, against the same moments of the rotation-off run.
def completions(name):
    return [sorted(int(line.split()[0]) for line in open(f"{work}/{name}-{k}.done"))
            for k in range(1, 1 + int(segments))]
grid = next(iter(turns.values()))["boundary_unix_us"] if turns else 0
NEAR_BEFORE, NEAR_AFTER = LEAD_US + MARGIN_US, 10_000
def near_share(runs):
    # Share of completions within [boundary - 15 ms, boundary + 10 ms] over the share of
    # time those windows take: 1.0 means no dip at the boundaries.
    near = total = 0
    for xs in runs:
        for us in xs:
            phase = (us - grid + NEAR_BEFORE) % TURN_US
            near += phase < NEAR_BEFORE + NEAR_AFTER
            total += 1
    return near / total / ((NEAR_BEFORE + NEAR_AFTER) / TURN_US) if total else float("nan")
def window_stalls(runs, spans):
    # The longest gap between completions touching each window, in loaded time only.
    import bisect
    found = []
    for lo, hi in spans:
        for xs in runs:
            if not xs or lo < xs[0] or hi > xs[-1]:
                continue
            i, j = bisect.bisect_left(xs, lo), bisect.bisect_right(xs, hi)
            around = xs[max(0, i - 1):j + 1]
            found.append(max(b - a for a, b in zip(around, around[1:])) / 1e3)
    return sorted(found)
runs_on, runs_off = completions("worknode-rotation"), completions("worknode-plain")
share_on, share_off = near_share(runs_on), near_share(runs_off)
window_cost = (share_off - share_on) * (NEAR_BEFORE + NEAR_AFTER) / TURN_US
verdict = (f"the handoffs themselves cost {100 * window_cost:.2f}% of the throughput" if window_cost > 0
           else f"no measurable cost from the handoffs themselves ({100 * window_cost:+.2f}%)")
print(f"throughput in the 25 ms around each turn boundary, relative to the whole turn: rotation on {share_on:.3f}, "
      f"off {share_off:.3f}: {verdict}")
if turns:
    median = pct(handoffs, 0.5)
    loaded_off = [x for xs in runs_off for x in xs[:1] + xs[-1:]]
    first, last = (min(loaded_off) - grid) // TURN_US, (max(loaded_off) - grid) // TURN_US + 1
    same = [transfer(grid + k * TURN_US, median) for k in range(first, last + 1)]
    for label, found in [("rotation on, each handoff", window_stalls(runs_on, windows["worknode-rotation"])),
                         ("rotation off, same windows", window_stalls(runs_off, same))]:
        if found:
            print(f"longest gap between completions, {label}: p50 {pct(found, 0.5):.2f} ms, "
                  f"p99 {pct(found, 0.99):.2f} ms, max {found[-1]:.2f} ms ({len(found)} windows)")
print()
print(f"worknode handoffs recorded: {len(handoffs)}, p50 {pct(handoffs, 0.5):.2f} ms, p99 {pct(handoffs, 0.99):.2f} ms")
if turns:
    slow = max(turns.values(), key=lambda t: t["handoff_ms"])
    print(f"slowest handoff {slow['handoff_ms']:.2f} ms: TimeoutNow sent after {slow['timeout_now_ms']:.2f} ms, "
          f"leader stepped down after {slow['stepped_down_ms']:.2f} ms, new leader seen at the end")
PY
