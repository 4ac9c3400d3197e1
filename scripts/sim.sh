#!/usr/bin/env bash
# The whole-cluster simulator over many seeds (`worknode sim`, crates/sim).
#
#   scripts/sim.sh --ci          what the test suite runs: 500 seeds of 3 members and 100
#                                of 5 with every fault, fault-free and rotation-off runs,
#                                every planted bug caught within 200 seeds, the regression
#                                seeds, and one seed replayed to the same trace digest
#   scripts/sim.sh --seeds N     N fresh seeds of 3 and of 5 members (a nightly run); the
#                                first seed is printed, so any failure replays
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p worknode-cli
sim() { target/release/worknode sim "$@"; }

case "${1:-}" in
--ci)
    started=$(date +%s)
    echo "== 500 seeds, 3 members, all faults"
    sim --seeds 1..=500 --members 3 --duration 30s --faults all | tail -n 1
    echo "== 100 seeds, 5 members, all faults"
    sim --seeds 1..=100 --members 5 --duration 30s --faults all | tail -n 1
    echo "== 50 seeds without faults (turns on schedule)"
    sim --seeds 1..=50 --duration 30s --faults none | tail -n 1
    echo "== 50 seeds with rotation off"
    sim --seeds 1..=50 --duration 30s --faults all --rotation off | tail -n 1
    for bug in ack-before-sync skip-dedup read-without-read-index forget-hard-state unchecked-handoff no-takeover; do
        echo "== planted bug $bug: caught within 200 seeds"
        sim --seeds 1..=200 --duration 30s --faults all --inject-bug "$bug" --expect-caught | tail -n 1
    done
    echo "== regression seeds"
    sim --regressions crates/sim/regressions.txt | tail -n 1
    echo "== a seed replays to the same trace"
    first=$(sim --seed 7 --duration 30s --json)
    again=$(sim --seed 7 --duration 30s --json)
    digest() { sed -n 's/.*"trace_digest":"\([0-9a-f]*\)".*/\1/p'; }
    if [ "$(digest <<<"$first")" != "$(digest <<<"$again")" ] || [ -z "$(digest <<<"$first")" ]; then
        echo "seed 7 gave two different traces: $(digest <<<"$first") and $(digest <<<"$again")" >&2
        exit 1
    fi
    echo "seed 7: trace $(digest <<<"$first") both times"
    echo "== simulator done in $(($(date +%s) - started)) s"
    ;;
--seeds)
    count=${2:?"usage: scripts/sim.sh --seeds N"}
    first=$((($(date +%s) % 100000) * 10000))
    echo "seeds $first..$((first + count)) (replay any with: worknode sim --seed S ...)"
    sim --seeds "$first..$((first + count))" --members 3 --duration 60s --faults all | grep -v ': ok ·' || true
    sim --seeds "$first..$((first + count))" --members 5 --duration 60s --faults all | grep -v ': ok ·' || true
    ;;
*)
    echo "usage: scripts/sim.sh --ci | --seeds N" >&2
    exit 2
    ;;
esac
