#!/usr/bin/env bash
# The whole test suite: installs the Debian packages it drives (scripts/deps.sh), runs
# every test, then the simulator's seeds (scripts/sim.sh --ci). The probes' agreement
# with rt-tests is timing on a shared VM, decided by the host as much as by the code: it
# is a benchmark (bench/jitter_vs_cyclictest.sh), not a check here.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo test --workspace
# The whole-cluster simulator, optimized (a debug build runs it ten times slower).
scripts/sim.sh --ci
