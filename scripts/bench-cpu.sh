#!/usr/bin/env bash
# optc against llama.cpp on SmolLM2-135M-Instruct (Q4_1 GGUF), 2 threads,
# in one run on an otherwise idle machine: a 128-token prompt (TTFT), 128
# decode steps, a 512-token prompt. Prints a table of both and the ratios.
#
#   LLAMA_PY=/path/to/venv/bin/python bash scripts/bench-cpu.sh
#
# LLAMA_PY is a python with llama-cpp-python==0.3.36 and numpy installed
# (see shared/peer/cpu.md); PEER_DIR holds llamacpp_bench.py
# (default ../shared/peer). Without LLAMA_PY only optc runs.
set -euo pipefail
cd "$(dirname "$0")/.."
model=target/models/SmolLM2-135M-Instruct.Q4_1.gguf
bash scripts/get-smollm2.sh >/dev/null
[ -f "$model" ] || { echo "no $model"; exit 1; }
cargo build --release --quiet
out=target/bench
mkdir -p "$out"
optc=target/release/optc
export RAYON_NUM_THREADS=2
for wd in f32 f16 int8; do
  flag=""
  [ "$wd" != f32 ] && flag="--weight-dtype $wd"
  $optc bench "$model" --batch 1 --input-len 128 --output-len 128 --reps 3 --json $flag > "$out/optc_128_$wd.json"
  $optc bench "$model" --batch 1 --input-len 512 --output-len 1 --reps 3 --json $flag > "$out/optc_512_$wd.json"
done
if [ -n "${LLAMA_PY:-}" ]; then
  "$LLAMA_PY" "${PEER_DIR:-../shared/peer}/llamacpp_bench.py" "$model" 3 --json "$out/llamacpp.json" >/dev/null 2>&1
fi
python3 - "$out" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
def runs(path):
    return [json.loads(l) for l in open(path) if l.strip()]
med = statistics.median
rows = {}
for wd in ["f32", "f16", "int8"]:
    a, b = runs(f"{out}/optc_128_{wd}.json"), runs(f"{out}/optc_512_{wd}.json")
    rows[f"optc ({wd} weights)"] = (
        med(r["ttft_ms_p50"] for r in a),
        med(1000.0 / r["tpot_ms_p50"] for r in a),
        med(r["ttft_ms_p50"] for r in b),
    )
ref = None
if os.path.exists(f"{out}/llamacpp.json"):
    s = json.load(open(f"{out}/llamacpp.json"))["summary"]
    ref = (s["ttft_128_ms"]["median"], s["decode128_tps_wall"]["median"], s["ttft_512_ms"]["median"])
    rows["llama.cpp (Q4_1)"] = ref
print(f"{'':22} {'TTFT 128 (ms)':>14} {'decode tok/s':>13} {'TTFT 512 (ms)':>14}")
for k, (t1, d, t5) in rows.items():
    print(f"{k:22} {t1:14.1f} {d:13.1f} {t5:14.1f}")
if ref:
    print("ratios, optc / llama.cpp (TTFT: lower is better; decode: higher is better):")
    for k, (t1, d, t5) in rows.items():
        if k.startswith("optc"):
            print(f"  {k:20} TTFT128 x{t1 / ref[0]:.2f}  decode x{d / ref[1]:.2f}  TTFT512 x{t5 / ref[2]:.2f}")
PY
