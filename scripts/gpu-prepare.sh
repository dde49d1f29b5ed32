#!/usr/bin/env bash
# Builds what scripts/gpu-run.sh needs on the GPU machine (which has no
# cargo) into .device/: the release binary, the GPU test binary, and the
# peer harness. Run here, then carry .device in the device call.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=${1:-.device}
cargo build --release
cargo test --release --test nvrtc_target --no-run
mkdir -p "$DEV"
cp target/release/optc "$DEV"/optc
cp "$(ls -t target/release/deps/nvrtc_target-* | grep -v '\.d$' | head -1)" "$DEV"/nvrtc_target
strip "$DEV"/optc "$DEV"/nvrtc_target
cp ../shared/peer/hf_baseline.py scripts/ncu_summary.py "$DEV"/
ls -la "$DEV"
