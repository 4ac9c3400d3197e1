#!/usr/bin/env bash
# Leader schedule generation, side by side in one run: the straightforward baseline
# (Agave's sort + rand 0.8 WeightedIndex + ChaCha20Rng, one draw per turn) against
# fair, lottery and solana, for 10 / 1,000 / 65,536 members and one 432,000-slot epoch,
# plus leader(slot) lookups. Prints criterion's lines, then a table of ratios.
#
# Usage: bench/schedule.sh [criterion filter]
set -euo pipefail
cd "$(dirname "$0")/.."
echo "host: $(nproc) CPUs, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cargo bench -p worknode-schedule --bench schedule -- "$@" 2>&1 | grep -vE '^(Benchmarking|Found|  [0-9]+ \()'
