#!/usr/bin/env bash
# A leader that dies silently, side by side in one run, TRIALS times each, under 4 clients
# writing 256-byte puts to the two other members. Nothing refuses a connection, so only
# silence tells. FAULT is
#   freeze  SIGSTOP of the leader (a hung process, a frozen VM, a host that lost power)
#   cut     the leader's traffic dropped both ways by iptables (a cut network): each member
#           runs under a user of its own, so the owner match drops whatever the leader
#           sends, and a drop on its ports whatever reaches it; its process goes on running
# and the systems are:
#   1. worknode with scheduled leadership (400 ms turns: 100 ms slots × 4): the victim
#      is the next turn's leader, frozen or cut at a random point of its turn
#   2. worknode with rotation off (plain Raft), its leader frozen or cut at a random moment
#   3. etcd 3.4 (Debian etcd-server), likewise
# Every system on etcd's timing: 100 ms heartbeats, a 1 s election timeout. Each trial
# runs the load for 3 s, freezes or cuts the leader 0.8-1.6 s in, wakes or reconnects it
# after the load and waits until every member answers with one term and one log index.
# Reported per system over the trials: the longest wait of any single request, answered
# or failed (not only the gap between completions), p50 and max; client errors and what
# they were; the longest gap between completions.
#
# Usage: bench/silent_leader.sh [TRIALS] [freeze|cut]   (defaults 20 and freeze)
# KEEP_WORK=1 keeps the work directory (logs, reports) after a good run too.
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-20} fault=${2:-freeze}
case $fault in
  freeze) ;;
  cut) command -v iptables >/dev/null || { apt-get update -qq && apt-get install -y -qq iptables >/dev/null; } ;;
  *) echo "fault must be freeze or cut, not '$fault'" >&2; exit 2 ;;
esac
scripts/deps.sh >/dev/null
if [ -n "${WORKNODE_BIN:-}" ]; then worknode=$WORKNODE_BIN; else cargo build --release -q -p worknode-cli; worknode=target/release/worknode; fi
work=$(mktemp -d /tmp/silent-leader.XXXXXX)
chmod 755 "$work"
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true; pids=()
}
# Member i runs as user 61000+i (cut needs an owner to match; freeze runs the same way
# so the two faults differ only in the fault).
# (setpriv execs, so $! is the member's own process.)
as_member() { echo "setpriv --reuid=$((61000 + $1)) --regid=$((61000 + $1)) --clear-groups"; }
member_dir() { mkdir -p "$2"; chown "$((61000 + $1))" "$2"; echo "$2"; }
cut_chains() { # $1 = -N (create) or -X (delete)
  local chain hook
  for chain in WN_CUT_IN:INPUT WN_CUT_OUT:OUTPUT; do
    hook=${chain#*:} chain=${chain%:*}
    if [ "$1" = -N ]; then
      iptables -N "$chain" 2>/dev/null || iptables -F "$chain"
      iptables -C "$hook" -j "$chain" 2>/dev/null || iptables -I "$hook" -j "$chain"
    else
      iptables -D "$hook" -j "$chain" 2>/dev/null || true
      iptables -F "$chain" 2>/dev/null || true
      iptables -X "$chain" 2>/dev/null || true
    fi
  done
}
# Cuts the member serving client address $1 off: whatever its user sends is dropped, and
# whatever arrives for a port its process holds (listening or connected).
cut() {
  local pid=$1 uid=$2 port
  iptables -A WN_CUT_OUT -m owner --uid-owner "$uid" -j DROP
  for port in $(ss -tanpH | grep "pid=$pid," | awk '{print $4}' | sed 's/.*://' | sort -un); do
    iptables -A WN_CUT_IN -p tcp --dport "$port" -j DROP
  done
}
heal() { iptables -F WN_CUT_IN; iptables -F WN_CUT_OUT; }
[ "$fault" = cut ] && cut_chains -N
trap 'status=$?; stop_all; [ "$fault" = cut ] && cut_chains -X; if [ $status = 0 ] && [ -z "${KEEP_WORK:-}" ]; then rm -rf "$work"; else echo "kept $work for a look" >&2; fi' EXIT
endpoints="127.0.0.1:22379,127.0.0.1:22479,127.0.0.1:22579"
export ETCDCTL_API=3

wait_ready() {
  for _ in $(seq 1 100); do
    etcdctl --endpoints="$endpoints" --command-timeout=1s put ready 1 >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "cluster did not become ready (logs in $work)" >&2; exit 1
}
# Every member answers, with one term and one log index: the woken or reconnected member
# has caught up, so the next trial's victim can lead its turn.
wait_settled() {
  for _ in $(seq 1 100); do
    etcdctl --endpoints="$endpoints" --command-timeout=1s endpoint status 2>/dev/null \
      | awk -F', ' '{ n++; terms[$7]; indexes[$8] } END { exit !(n == 3 && length(terms) == 1 && length(indexes) == 1) }' \
      && return 0
    sleep 0.2
  done
  echo "members did not agree on term and index within 20 s (logs in $work)" >&2; exit 1
}
# Every member answers a write within 200 ms, three times running: after a cut heals, a
# peer connection whose segments were dropped waits for TCP's next retransmission (its
# backoff doubles through the cut), and a trial begun before then measures that wait.
wait_writable() {
  local ep streak=0
  for _ in $(seq 1 200); do
    local all=1
    for ep in ${endpoints//,/ }; do
      etcdctl --endpoints="$ep" --command-timeout=200ms put settle 1 >/dev/null 2>&1 || all=0
    done
    if [ $all = 1 ]; then streak=$((streak + 1)); else streak=0; fi
    [ $streak -ge 3 ] && return 0
    sleep 0.1
  done
  echo "members did not all answer writes within 200 ms for 20 s (logs in $work)" >&2; exit 1
}
# The process serving client address $1.
pid_of() { cat "$work/pid-${1##*:}"; }
leader_endpoint() { etcdctl --endpoints="$endpoints" --command-timeout=1s endpoint status | awk -F', ' '$5 == "true" {print $1}'; }
others() { # the endpoints other than $1, comma-separated
  local ep out=""
  for ep in ${endpoints//,/ }; do [ "$ep" = "$1" ] || out+="$ep,"; done
  echo "${out%,}"
}

start_worknode() { # $1 = on|off
  local i
  for i in 1 2 3; do
    cat > "$work/n$i-$1.toml" <<TOML
cluster = "silent-$1"
member_id = $i
data_dir = "$work/w$i-$1"
[schedule]
rotation = "$1"
slot_ms = 100
slots_per_turn = 4
[cores]
pin = "off"
[[member]]
id = 1
name = "n1"
peer = "127.0.0.1:21380"
client = "127.0.0.1:22379"
[[member]]
id = 2
name = "n2"
peer = "127.0.0.1:22380"
client = "127.0.0.1:22479"
[[member]]
id = 3
name = "n3"
peer = "127.0.0.1:23380"
client = "127.0.0.1:22579"
TOML
    member_dir "$i" "$work/w$i-$1" >/dev/null
    $(as_member "$i") "$worknode" serve --config "$work/n$i-$1.toml" > "$work/log-n$i-$1.txt" 2>&1 &
    pids+=($!)
    echo $! > "$work/pid-22$((i + 2))79"
  done
  wait_ready
}
start_etcd() {
  local cluster="" i
  for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:2${i}380,"; done
  for i in 1 2 3; do
    $(as_member "$i") etcd --name "e$i" --data-dir "$(member_dir "$i" "$work/etcd$i")" \
      --listen-client-urls "http://127.0.0.1:22$((i + 2))79" --advertise-client-urls "http://127.0.0.1:22$((i + 2))79" \
      --listen-peer-urls "http://127.0.0.1:2${i}380" --initial-advertise-peer-urls "http://127.0.0.1:2${i}380" \
      --initial-cluster "${cluster%,}" --initial-cluster-state new --initial-cluster-token silent \
      --logger zap --log-level error > "$work/log-etcd$i.txt" 2>&1 &
    pids+=($!)
    echo $! > "$work/pid-22$((i + 2))79"
  done
  wait_ready
}

# One trial: the victim's endpoint and how long to wait before freezing it (seconds).
victim_and_delay() { # $1 = system
  local phase
  phase=$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", r / 32768 * 0.38 }')
  if [ "$1" = worknode-rotation ]; then
    # The member of the turn three ahead (the list starts with the current turn), frozen
    # `phase` into that turn: it leads from its boundary on, 0.8-1.2 s into the load.
    local text next victim
    text=$("$worknode" schedule --cluster "$endpoints" --count 4)
    next=$(sed -n 's/.*next turn in \([0-9]*\) ms.*/\1/p' <<<"$text")
    victim=$(awk '$1 ~ /^[0-9]+$/ {n++; if (n == 4) print $NF}' <<<"$text")
    echo "$victim $(awk -v n="$next" -v p="$phase" 'BEGIN { printf "%.3f", n / 1000 + 0.8 + p }')"
  else
    echo "$(leader_endpoint) $(awk -v p="$phase" 'BEGIN { printf "%.3f", 0.8 + p }')"
  fi
}

run_trials() { # $1 = system
  local k victim delay pid
  for k in $(seq 1 "$trials"); do
    read -r victim delay <<<"$(victim_and_delay "$1")"
    pid=$(pid_of "$victim")
    echo "trial $k: $fault $victim in $delay s" >> "$work/$1-trials.txt"
    # Each request's completion kept (KEEP_WORK=1 to look): which client waited when.
    "$worknode" bench put --endpoints "$(others "$victim")" --clients 4 --connections 4 \
      --duration 3s --json --completions "$work/$1-$k.completions" > "$work/$1-$k.json" &
    local load=$!
    sleep "$delay"
    if [ "$fault" = freeze ]; then kill -STOP "$pid"; else cut "$pid" "$((61000 + (${victim##*:} - 22279) / 100))"; fi
    wait "$load" || true
    if [ "$fault" = freeze ]; then kill -CONT "$pid"; else heal; fi
    wait_ready
    wait_settled
    wait_writable
  done
}

for system in ${SYSTEMS:-worknode-rotation worknode-plain etcd}; do
  echo "== $system: $trials trials"
  case $system in
    worknode-rotation) start_worknode on ;;
    worknode-plain) start_worknode off ;;
    etcd) start_etcd ;;
  esac
  sleep 1
  run_trials "$system"
  stop_all
  rm -rf "$work"/w?-* "$work"/etcd?
done

python3 - "$work" "$trials" "$fault" <<'PY'
import json, sys, datetime, statistics
work, trials, fault = sys.argv[1], int(sys.argv[2]), sys.argv[3]
what = {"freeze": "SIGSTOP of the leader", "cut": "the leader cut off (iptables, both ways)"}[fault]
print(f"\n{datetime.date.today()}, {trials} trials per system: {what} under 4 clients writing to the other two members, 3 members on loopback, 100 ms heartbeats, 1 s election timeout\n")
print("| system | longest single request, p50 over trials | max over trials | longest gap between completions, p50 / max | client errors | ops/s (p50) |")
print("|---|---:|---:|---:|---:|---:|")
rows, error_kinds = {}, {}
import os
for label, name in [("worknode, rotation on (400 ms turns)", "worknode-rotation"), ("worknode, rotation off", "worknode-plain"), ("etcd 3.4", "etcd")]:
    if not os.path.exists(f"{work}/{name}-1.json"):
        continue
    runs = [json.load(open(f"{work}/{name}-{k}.json")) for k in range(1, trials + 1)]
    # The longest wait of any request, answered or failed.
    waits = [max(r["max_ms"], r["failed_max_ms"]) for r in runs]
    gaps = [r["stall_ms_max"] for r in runs]
    errors = sum(r["errors"] for r in runs)
    rows[name] = waits
    kinds = {}
    for r in runs:
        for kind, n in r["error_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + n
    error_kinds[name] = kinds
    print(f"| {label} | {statistics.median(waits):.0f} ms | {max(waits):.0f} ms | {statistics.median(gaps):.0f} / {max(gaps):.0f} ms | {errors} | {statistics.median(r['ops_per_s'] for r in runs):.0f} |")
print()
print("per trial, longest single request (ms):")
for name, waits in rows.items():
    print(f"  {name}: " + " ".join(f"{w:.0f}" for w in waits))
for name, kinds in error_kinds.items():
    for kind, n in sorted(kinds.items()):
        print(f"  {name} client errors: {n} x {kind}")
PY
