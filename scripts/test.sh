#!/usr/bin/env bash
# The whole test suite: installs the Debian packages it drives (scripts/deps.sh), runs
# every test, then the jitter-agreement test against rt-tests (ignored by default because
# it needs root and the real tools).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo test --workspace
echo "== jitter agreement with rt-tests"
cargo build --release -q -p worknode-cli
WORKNODE_BIN="$PWD/target/release/worknode" cargo test -p worknode-cli --test jitter_agreement -- --ignored --nocapture
