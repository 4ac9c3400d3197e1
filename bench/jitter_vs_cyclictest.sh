#!/usr/bin/env bash
# Agreement of worknode's jitter probes with the reference tools (Debian rt-tests), back
# to back on the same CPU with the same settings:
#   timer probe vs cyclictest -m -p 90 -t 1 -a CPU -i 200 -D SECONDS -q -N
#     (targets: our avg within 20% of cyclictest's, our min within 2 µs; -N only makes
#     cyclictest print nanoseconds: its whole microseconds truncate a 4.9 µs average to 4,
#     a 20% error at the averages a quiet VM reaches)
#   spin probe vs oslat --cpu-list CPU --duration SECONDS
#     (target: max within the same order of magnitude; loop floor vs a bare clock read)
# Needs root (SCHED_FIFO, mlock, /dev/cpu_dma_latency). Installs rt-tests if missing.
#
# Usage: bench/jitter_vs_cyclictest.sh [CPU] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cpu=${1:-1}
seconds=${2:-10}
if ! command -v cyclictest >/dev/null || ! command -v oslat >/dev/null; then
  apt-get update -qq && apt-get install -y -qq rt-tests >/dev/null
fi
# WORKNODE_BIN lets a test pass the binary it built; otherwise build the release one.
if [ -n "${WORKNODE_BIN:-}" ]; then
  worknode=$WORKNODE_BIN
else
  cargo build --release -q -p worknode-cli
  worknode=target/release/worknode
fi
echo "host: $(nproc) CPUs, kernel $(uname -r); CPU $cpu, $seconds s per tool"

echo "== cyclictest -m -p 90 -t 1 -a $cpu -i 200 -D $seconds -q -N"
ct=$(cyclictest -m -p 90 -t 1 -a "$cpu" -i 200 -D "$seconds" -q -N | grep '^T:')
echo "$ct"
if ! [[ $ct =~ Min:\ *([0-9]+).*Avg:\ *([0-9]+) ]]; then
  echo "jitter_vs_cyclictest: cannot read Min/Avg from cyclictest's output: ${ct:-nothing}" >&2
  exit 2
fi
ct_min=$(awk -v ns="${BASH_REMATCH[1]}" 'BEGIN {print ns / 1000}')
ct_avg=$(awk -v ns="${BASH_REMATCH[2]}" 'BEGIN {print ns / 1000}')

echo "== worknode cores jitter --probe timer --cpus $cpu --interval-us 200 --priority 90 --mlock --duration ${seconds}s"
ours=$("$worknode" cores jitter --probe timer --cpus "$cpu" --interval-us 200 --priority 90 --mlock --duration "${seconds}s" --json)
wn_min=$(python3 -c 'import json,sys; r=json.load(sys.stdin)["runs"][0]["results"][0]; print(r["min_ns"]/1000)' <<<"$ours")
wn_avg=$(python3 -c 'import json,sys; r=json.load(sys.stdin)["runs"][0]["results"][0]; print(r["avg_ns"]/1000)' <<<"$ours")

echo "== oslat --cpu-list $cpu --duration $seconds"
os=$(oslat --cpu-list "$cpu" --duration "$seconds" 2>&1)
os_max=$(grep -E '^ *Maximum:' <<<"$os" | sed -E 's/[^0-9]*([0-9]+).*/\1/')
echo "oslat maximum: $os_max µs"

echo "== worknode cores jitter --probe spin --cpus $cpu --duration ${seconds}s"
spin=$("$worknode" cores jitter --probe spin --cpus "$cpu" --duration "${seconds}s" --json)

python3 - "$ct_min" "$ct_avg" "$wn_min" "$wn_avg" "$os_max" "$spin" <<'PY'
import json, sys
ct_min, ct_avg, wn_min, wn_avg, os_max = map(float, sys.argv[1:6])
run = json.loads(sys.argv[6])["runs"][0]
spin = run["results"][0]
wn_max = spin["max_ns"] / 1000
floor, bare = spin["loop_floor_ns"], run["bare_clock_floor_ns"]
rows = [
    ("timer min (µs)", f"{ct_min:.2f}", f"{wn_min:.2f}", f"{abs(wn_min - ct_min):.2f} µs apart", abs(wn_min - ct_min) <= 2),
    ("timer avg (µs)", f"{ct_avg:.2f}", f"{wn_avg:.2f}", f"{(wn_avg / ct_avg - 1) * 100:+.1f}%", abs(wn_avg / ct_avg - 1) <= 0.20),
    ("spin max (µs), vs oslat", f"{os_max:.0f}", f"{wn_max:.0f}", f"{wn_max / max(os_max, 1):.2f}×", 0.1 <= wn_max / max(os_max, 1) <= 10),
    ("spin loop floor (ns), vs bare clock read", f"{bare}", f"{floor}", f"{floor / bare:.2f}×", floor <= 1.5 * bare),
]
print()
print(f"| {'measure':<40} | {'reference':>9} | {'worknode':>9} | {'difference':>16} | target |")
print(f"|{'-'*42}|{'-'*11}|{'-'*11}|{'-'*18}|--------|")
for name, ref, ours, diff, ok in rows:
    print(f"| {name:<40} | {ref:>9} | {ours:>9} | {diff:>16} | {'met' if ok else 'MISSED':>6} |")
sys.exit(0 if all(r[4] for r in rows) else 1)
PY
