#!/usr/bin/env bash
# Builds what scripts/gpu-run.sh needs on the GPU machine (which has no
# cargo) into .device/: the release binary, the GPU test binary, and the
# peer harness. Run here, then carry .device in the device call.
#   bash scripts/gpu-prepare.sh [DIR]        this checkout, into DIR (default .device)
#   bash scripts/gpu-prepare.sh DIR REV      only the optc binary of revision REV (a
#                                            branch or commit, built in a temporary
#                                            worktree), to compare its bench in the
#                                            same call: DEV=DIR bash scripts/gpu-run.sh bench
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=${1:-.device}
REV=${2:-}
if [ -n "$REV" ]; then
  ROOT=$PWD
  WT=$(mktemp -d /tmp/optc-rev-XXXXXX)
  git worktree add --detach "$WT" "$REV" >/dev/null
  # Its own target folder, kept between calls, so this checkout's stays as it is.
  (cd "$WT" && CARGO_TARGET_DIR="$ROOT/target/rev" cargo build --release --bin optc)
  git worktree remove --force "$WT"
  BIN=target/rev/release/optc
  TESTS=
else
  cargo build --release
  cargo test --release --test nvrtc_target --no-run
  BIN=target/release/optc
  TESTS=$(ls -t target/release/deps/nvrtc_target-* | grep -v '\.d$' | head -1)
fi
mkdir -p "$DEV"
cp "$BIN" "$DEV"/optc
strip "$DEV"/optc
if [ -n "$TESTS" ]; then
  cp "$TESTS" "$DEV"/nvrtc_target
  strip "$DEV"/nvrtc_target
fi
cp ../shared/peer/hf_baseline.py scripts/ncu_summary.py "$DEV"/
ls -la "$DEV"
