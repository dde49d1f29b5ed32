#!/usr/bin/env bash
# The nvrtc target on the GPU machine, in one call: the GPU tests, compile
# times, and `optc bench` side by side with the peer harness on the same
# random Llama-3.2-1B-shaped model. The GPU machine has no cargo:
# `bash scripts/gpu-prepare.sh` builds the binaries into .device/ (ignored
# by git); the device call carries .device and runs, from the repo root,
#   bash scripts/gpu-run.sh tests,compile,bench,profile,peer
#
# Stages (comma-separated): tests, compile, bench, gpt2bench, settings, clocks, warps, sample, mega, ab, ends, endsw1, ttft, gemvbench, skinnybench, ltsearch, l2warmbench, stepbench, samplebench, steptrace, megabench, profile, graphprof, ncu, ncudetail, peer.
# `clocks` runs W1 twice while nvidia-smi samples the SM and memory clocks, power and temperature (20 a second).
# `mega` runs W1 and W2 with the one-token decode megakernel on and off (OPTC_CUDA_MEGA=1, 0, 1, 0), W1
# with its L2 prefetch, bulk-copy and cooperative-launch variants, then W1's GPU time per kernel kind with it on.
# Results go to $OUT. `sample` runs the workloads sampled on the GPU (top-k/top-p, top-p alone, temperature alone).
# `ab` runs the workloads (AB_WORKLOADS, default W1,W2,W3) with switch AB_VAR (default
# OPTC_ASYNC_SCHEDULING; e.g. OPTC_CUDA_PDL, OPTC_CUDA_GRAPH_PAIRS, OPTC_CUDA_PICK_IN_GEMV) at AB_VALUES (default
# 1 0 1 0; e.g. AB_VAR=OPTC_DECODE_WARPS AB_VALUES="4 8 4 8") in one call; `gemvbench` compiles and runs
# kernels/bench/gemv_bench.cu (the decode GEMV geometries) with nvcc.
# PROFILE_WORKLOADS (default "W1 W2 W3") picks the workloads of the profile stage,
# NCU_DETAIL the "WORKLOAD:kernel-regex:launches-to-skip" of the ncudetail stage.
# `settings` alternates whole sets of switches, SETTINGS_ROUNDS (default 2) rounds of one run each:
#   SETTINGS="OPTC_CUDA_L2_WARM_MB=8,OPTC_CUDA_L2_WARM_BLOCKS=16 OPTC_CUDA_L2_WARM_MB=0" SETTINGS_WORKLOADS=W2
# (spaces between sets, commas within one). PEER_DEADLINE (default 280 s) bounds the peer stage;
# BENCH_REPS=1 PEER_DEADLINE=200 bash scripts/gpu-run.sh tests,compile,bench,peer fits one 600 s call.
# REQUIRE_GPU=H200 runs nothing (exit 0) unless the card's name has H200 in it.
set -u
STAGES=${1:-tests,compile,bench,peer}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
# DEV picks the folder of binaries (default .device; gpu-prepare.sh DIR builds another,
# e.g. a branch to compare in the same call).
DEV=${DEV:-$PWD/.device}
BIN=$DEV/optc
MODEL=/tmp/llama1b
export OPTC_CACHE_DIR=/tmp/optc-cache
export PYTHONUNBUFFERED=1
has() { [[ ",$STAGES," == *",$1,"* ]]; }
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader
# REQUIRE_GPU=H200: stop at once (exit 0) on any other card, so a call that
# was lent another kind costs seconds, not the whole run.
if [ -n "${REQUIRE_GPU:-}" ] && ! nvidia-smi --query-gpu=name --format=csv,noheader | grep -q "$REQUIRE_GPU"; then
  echo "not a $REQUIRE_GPU: stopping (REQUIRE_GPU)"
  exit 0
fi
# Test binaries find the fixtures under the path they were built in.
if [ ! -e /work/main ]; then mkdir -p /work && ln -s "$PWD" /work/main; fi
if has tests; then
  echo "== tests"
  "$DEV"/nvrtc_target --test-threads=1 2>&1 | tee "$OUT/tests.log" | grep -E "^test |test result|panicked|rel L2|skipping" | head -40
fi
if has compile || has bench || has settings || has clocks || has warps || has sample || has mega || has ab || has ends || has endsw1 || has ttft || has profile || has graphprof || has ncu || has ncudetail || has peer; then
  if [ ! -e $MODEL/config.json ]; then
    python3 .device/hf_baseline.py --parts save_model --model-dir $MODEL 2>&1 | tail -2
  fi
fi
if has compile; then
  # Cold: optc's cache emptied and the driver's JIT cache off (a fresh
  # machine); then twice with both caches on (the first may still fill the
  # driver's, when optc caches PTX); the last is the warm start.
  echo "== compile (cold, then warm)"
  rm -rf "$OPTC_CACHE_DIR"
  for run in cold warm-1 warm; do
    jit=0; [ $run = cold ] && jit=1
    CUDA_CACHE_DISABLE=$jit /usr/bin/time -f "$run: %e s wall, %M KB peak RSS" "$BIN" compile $MODEL --kv-cache --target nvrtc -o /dev/null 2>&1 | grep -vE "^\s+(kernel|host) " | tail -5
  done
fi
if has bench; then
  echo "== optc bench"
  "$BIN" bench $MODEL --target nvrtc --workloads ${BENCH_WORKLOADS:-W1,W2,W3} --reps ${BENCH_REPS:-2} --max-num-tokens 16384 --json 2>&1 | tee -a "$OUT/optc_bench.jsonl" | grep -E "workload|rror|panic|nvrtc:"
fi
if has gpt2bench; then
  # A random GPT-2-small-shaped bf16 model (scripts/random_gpt2.py), W1 and W2 (GPT2_WORKLOADS) with
  # each binary of GPT2_BINS (default this one; e.g. "$DEV/base/optc $DEV/optc"), alternating, twice.
  echo "== optc bench on a random GPT-2 (124M)"
  [ -e /tmp/gpt2s/config.json ] || python3 scripts/random_gpt2.py /tmp/gpt2s 2>&1 | tail -1
  for round in 1 2; do
    for b in ${GPT2_BINS:-$BIN}; do
      echo "-- $b"
      "$b" bench /tmp/gpt2s --target nvrtc --workloads ${GPT2_WORKLOADS:-W1,W2} --reps 1 --max-num-tokens 16384 2>&1 | tee -a "$OUT/gpt2_bench.log" | grep -E "^W|rror|panic"
    done
  done
fi
if has clocks; then
  echo "== W1 with the clocks sampled (counts of each reading: SM, memory, power, temperature)"
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv,noheader -lms 50 > "$OUT/clocks.csv" &
  SMI=$!
  "$BIN" bench $MODEL --target nvrtc --workloads W1 --reps 2 --max-num-tokens 16384 2>&1 | grep -E "^W|rror"
  kill $SMI
  sort "$OUT/clocks.csv" | uniq -c | sort -rn | head -8
fi
if has warps; then
  # Decode attention with four or eight warps a block (OPTC_DECODE_WARPS), alternating, twice.
  echo "== optc bench ${WARPS_WORKLOADS:-W1,W2}: OPTC_DECODE_WARPS=4, 8, 4, 8"
  for w in 4 8 4 8; do
    echo "-- OPTC_DECODE_WARPS=$w"
    OPTC_DECODE_WARPS=$w "$BIN" bench $MODEL --target nvrtc --workloads ${WARPS_WORKLOADS:-W1,W2} --reps 1 \
      --max-num-tokens 16384 --json 2>&1 | tee -a "$OUT/optc_warps_$w.jsonl" | grep -E "workload|rror|panic"
  done
fi
if has sample; then
  echo "== optc bench, sampled on the GPU (greedy is the bench stage)"
  for flags in "--top-k 50 --top-p 0.9" "--top-p 0.9" ""; do
    echo "-- --temperature 0.8 $flags"
    "$BIN" bench $MODEL --target nvrtc --workloads W1,W2,W3 --reps 1 --max-num-tokens 16384 --json \
      --temperature 0.8 $flags 2>&1 | tee -a "$OUT/optc_sample.jsonl" | grep -E "workload|rror"
  done
fi
if has mega; then
  echo "== optc bench W1, W2 with the decode megakernel on and off (OPTC_CUDA_MEGA)"
  for v in 1 0 1 0; do
    echo "-- OPTC_CUDA_MEGA=$v"
    OPTC_CUDA_MEGA=$v "$BIN" bench $MODEL --target nvrtc --workloads W1,W2 --reps 2 --max-num-tokens 16384 --json \
      2>&1 | tee -a "$OUT/optc_mega_$v.jsonl" | grep -E "workload|rror|panic|megakernel"
  done
  for v in OPTC_MEGA_PREFETCH=16 OPTC_MEGA_TMA=1 OPTC_MEGA_COOPERATIVE=1; do
    echo "-- OPTC_CUDA_MEGA=1 $v"
    env OPTC_CUDA_MEGA=1 $v "$BIN" bench $MODEL --target nvrtc --workloads W1 --reps 2 --max-num-tokens 16384 --json \
      2>&1 | tee -a "$OUT/optc_mega_$v.jsonl" | grep -E "workload|rror|panic|megakernel"
  done
  echo "-- W1 GPU time per kernel kind, megakernel on"
  OPTC_CUDA_MEGA=1 OPTC_CUDA_PROFILE=1 "$BIN" bench $MODEL --target nvrtc --workloads W1 --reps 1 --max-num-tokens 8192 \
    2>&1 | tee "$OUT/profile_mega_W1.log" | head -16
fi
if has ab; then
  AB_VAR=${AB_VAR:-OPTC_ASYNC_SCHEDULING}
  for v in ${AB_VALUES:-1 0 1 0}; do
    echo "== optc bench with $AB_VAR=$v"
    env "$AB_VAR=$v" "$BIN" bench $MODEL --target nvrtc --workloads ${AB_WORKLOADS:-W1,W2,W3} --reps 1 --max-num-tokens 16384 2>&1 | grep -E "^W|rror|nvrtc:"
  done
fi
if has settings; then
  for round in $(seq ${SETTINGS_ROUNDS:-2}); do
    for set in ${SETTINGS:?SETTINGS: sets of VAR=VALUE,VAR=VALUE separated by spaces}; do
      echo "== optc bench with ${set//,/ } (round $round)"
      env ${set//,/ } "$BIN" bench $MODEL --target nvrtc --workloads ${SETTINGS_WORKLOADS:-W2} --reps 1 --max-num-tokens 16384 2>&1 | grep -E "^W|rror"
    done
  done
fi
if has gemvbench; then
  echo "== decode GEMV geometries (kernels/bench/gemv_bench.cu)"
  nvcc -O3 -std=c++17 -arch=sm_90 -I kernels/cuda -o /tmp/gemv_bench kernels/bench/gemv_bench.cu 2>&1 | grep -i error
  /tmp/gemv_bench | tee "$OUT/gemv_bench.txt"
fi
# bench_kernels BENCH SPECS REPS: builds kernels/bench/BENCH.cu against each "NAME=DIR" of SPECS
# (DIR holding cuda/, e.g. `git archive REV kernels | tar -x -C .device/REV` gives .device/REV/kernels)
# and runs the builds alternately, REPS times.
bench_kernels() {
  local bench=$1 specs=$2 reps=$3 spec name rep
  for spec in $specs; do
    name=${spec%%=*}
    nvcc -O3 -std=c++17 -arch=sm_90 ${BENCH_NVCC_FLAGS:-} -I "${spec#*=}/cuda" -o /tmp/${bench}_$name kernels/bench/$bench.cu 2>&1 | grep -i error
  done
  for rep in $(seq $reps); do
    for spec in $specs; do
      name=${spec%%=*}
      echo "-- kernels: $spec (round $rep)"
      /tmp/${bench}_$name | tee -a "$OUT/${bench}_$name.txt"
    done
  done
}
if has ends || has endsw1; then
  # A W1 step's two ends (the seventeenth session measured them; the cluster argmax is now
  # the default): the cluster argmax (OPTC_CUDA_ARGMAX_CLUSTER=16 against the chunked 0; OPTC_CUDA_ARGMAX_THREADS 256 or 512 a
  # block) and the early embedding (the rotary tables launched first, the embedding gathering
  # before its wait: OPTC_CUDA_EARLY_EMBEDDING=1 against 0). W1 at five settings, alternating,
  # twice; W2 and W3 with both on and both off; the step bench's two argmax ends; W1's time
  # per kernel kind with both on.
  for round in $(seq ${ENDS_ROUNDS:-2}); do
    for setting in ${ENDS_SETTINGS:-0/256/0 16/256/0 0/256/1 16/256/1 16/512/1}; do
      set -- ${setting//\// }
      echo "== W1 with OPTC_CUDA_ARGMAX_CLUSTER=$1 OPTC_CUDA_ARGMAX_THREADS=$2 OPTC_CUDA_EARLY_EMBEDDING=$3 (round $round)"
      OPTC_CUDA_ARGMAX_CLUSTER=$1 OPTC_CUDA_ARGMAX_THREADS=$2 OPTC_CUDA_EARLY_EMBEDDING=$3 "$BIN" bench $MODEL --target nvrtc --workloads W1 --reps ${ENDS_REPS:-1} --max-num-tokens 16384 2>&1 | grep -E "^W|rror|nvrtc:" | tee -a "$OUT/ends.log"
    done
  done
fi
if has ends; then
  for setting in "16 1" "0 0"; do
    set -- $setting
    echo "== W2, W3 with OPTC_CUDA_ARGMAX_CLUSTER=$1 OPTC_CUDA_EARLY_EMBEDDING=$2"
    OPTC_CUDA_ARGMAX_CLUSTER=$1 OPTC_CUDA_EARLY_EMBEDDING=$2 "$BIN" bench $MODEL --target nvrtc --workloads W2,W3 --reps 1 --max-num-tokens 16384 2>&1 | grep -E "^W|rror|nvrtc:"
  done
  for ids in 32 8; do
    echo "== W2 with OPTC_CUDA_IDS_IN_EMBEDDING=$ids (the embedding reads the 32 picks itself, or they are copied first), both switches on"
    OPTC_CUDA_IDS_IN_EMBEDDING=$ids OPTC_CUDA_ARGMAX_CLUSTER=16 OPTC_CUDA_EARLY_EMBEDDING=1 "$BIN" bench $MODEL --target nvrtc --workloads W2 --reps 1 --max-num-tokens 16384 2>&1 | grep -E "^W|rror|nvrtc:"
  done
  echo "== step bench: the chunked and the cluster argmax after the LM head"
  STEP_ONLY="8 warps, head as optc before: norm in the ring, argmax kernel: whole step|8 warps, head: norm in the ring, cluster argmax: whole step" \
    bench_kernels step_bench "this=kernels" 1
  echo "== W1 with OPTC_CUDA_PROFILE=1 (graphs off): GPU time per kernel kind, prefill apart"
  OPTC_CUDA_ARGMAX_CLUSTER=16 OPTC_CUDA_EARLY_EMBEDDING=1 OPTC_CUDA_PROFILE=1 "$BIN" bench $MODEL --target nvrtc --workloads W1 --reps 1 --max-num-tokens 16384 2>&1 | tee "$OUT/profile_ends_W1.log" | head -60
fi
if has ttft; then
  # W1's first token alone: a 128-token prefill and one pick, TTFT_REPS times after a warm-up,
  # replayed from its graph (the default), eager, with the other linear paths, then with
  # OPTC_CUDA_PROFILE=1 (eager; GPU time per prefill kernel kind).
  # prefill_alone NAME [VAR=VALUE...]: the runs' TTFTs, sorted, and all of it appended to
  # $OUT/ttft.log under "### NAME" (one file: a device call returns at most 8).
  prefill_alone() {
    local name=$1; shift
    echo "### $name $*" >> "$OUT/ttft.log"
    env "$@" "$BIN" bench $MODEL --target nvrtc --batch 1 --input-len 128 --output-len 1 --reps ${TTFT_REPS:-20} \
      --max-num-tokens 16384 --json 2>&1 | tee -a "$OUT/ttft.log"
  }
  ttfts() { grep -oE '"ttft_ms_p50": [0-9.]+' | awk '{print $2}' | sort -n | tr '\n' ' '; echo; }
  echo "== W1's prefill alone (batch 1, prompt 128, one token), ${TTFT_REPS:-20} runs, TTFT ms sorted"
  echo "-- replayed from its graph (the default)"
  prefill_alone graphs | ttfts
  echo "-- eager (OPTC_CUDA_PREFILL_GRAPHS=0)"
  prefill_alone eager OPTC_CUDA_PREFILL_GRAPHS=0 | ttfts
  echo "-- with OPTC_CUDA_GEMM_TUNE=1 (cuBLASLt's first algorithms timed for each skinny shape)"
  prefill_alone tuned OPTC_CUDA_GEMM_TUNE=1 | ttfts
  for v in 1 all; do
    echo "-- with OPTC_CUDA_SKINNY=$v (optc's skinny GEMM for the prefill's linears instead of cuBLASLt)"
    prefill_alone skinny_$v OPTC_CUDA_SKINNY=$v | ttfts
  done
  echo "-- with OPTC_CUDA_PROFILE=1 (eager)"
  prefill_alone profile OPTC_CUDA_PROFILE=1 | grep -vE "^\{|^W|^batch"
fi
if has skinnybench; then
  # SKINNY_ROWS (default "32 128"): the batched decode linears on cuBLASLt against the skinny GEMM's variants.
  echo "== batched decode linears: cuBLASLt against the skinny GEMM (kernels/bench/skinny_bench.cu)"
  nvcc -O3 -std=c++17 -arch=sm_90 -I kernels/cuda -o /tmp/skinny_bench kernels/bench/skinny_bench.cu -lcublasLt 2>&1 | grep -i error
  /tmp/skinny_bench ${SKINNY_ROWS:-32 128} | tee "$OUT/skinny_bench.txt"
fi
if has ltsearch; then
  # LT_SEARCH_S (default 12) seconds of search a shape, LT_SEARCH_ROWS (default "32 128") rows: every cuBLASLt
  # configuration of the batched decode linears against the heuristic's choice.
  echo "== batched decode linears: cuBLASLt's configurations searched (kernels/bench/lt_search.cu)"
  nvcc -O3 -std=c++17 -arch=sm_90 -I kernels/cuda -o /tmp/lt_search kernels/bench/lt_search.cu -lcublasLt 2>&1 | grep -i error
  /tmp/lt_search ${LT_SEARCH_S:-12} ${LT_SEARCH_ROWS:-32 128} | tee "$OUT/lt_search.txt"
fi
if has l2warmbench; then
  # L2WARM_ROWS (default 32): the batched decode linears after a gap, with the next weights read into L2 during it.
  echo "== batched decode linears with their weights read into L2 ahead (kernels/bench/l2warm_bench.cu)"
  nvcc -O3 -std=c++17 -arch=sm_90 -I kernels/cuda -o /tmp/l2warm_bench kernels/bench/l2warm_bench.cu -lcublasLt 2>&1 | grep -i error
  /tmp/l2warm_bench ${L2WARM_ROWS:-32} | tee "$OUT/l2warm_bench.txt"
fi
if has stepbench; then
  # STEP_KERNELS="NAME=DIR ..." (bench_kernels), STEP_REPS rounds; STEP_ONLY ("name|name") picks the variants.
  echo "== a W1 decode step's kernels, with and without each (kernels/bench/step_bench.cu)"
  bench_kernels step_bench "${STEP_KERNELS:-this=kernels}" ${STEP_REPS:-1}
fi
if has samplebench; then
  # SAMPLE_KERNELS="NAME=DIR ..." (bench_kernels), SAMPLE_REPS rounds; BENCH_NVCC_FLAGS=-DOPTC_SAMPLE_TRACE
  # adds each pick's phase marks (only for kernel folders that have SAMPLE_MARK, i.e. from ad68085 on).
  echo "== the sampling kernels alone (kernels/bench/sample_bench.cu)"
  bench_kernels sample_bench "${SAMPLE_KERNELS:-this=kernels}" ${SAMPLE_REPS:-1}
fi
if has steptrace; then
  # The same step with the kernels logging per block (common.cuh's OPTC_TRACE): a timeline of each
  # kernel's release, end and the gap to the next. STEP_TRACE picks variants by name ("all" for every one).
  echo "== a W1 decode step's timeline (kernels/bench/step_bench.cu built with -DOPTC_TRACE)"
  nvcc -O3 -std=c++17 -arch=sm_90 -I kernels/cuda -DOPTC_TRACE -o /tmp/step_trace kernels/bench/step_bench.cu 2>&1 | grep -i error
  /tmp/step_trace | tee "$OUT/step_trace.txt"
fi
if has megabench; then
  echo "== one persistent kernel for a W1 step against the launch chain (kernels/bench/mega_bench.cu)"
  nvcc -O3 -std=c++17 -arch=sm_90 -I kernels/cuda -o /tmp/mega_bench kernels/bench/mega_bench.cu 2>&1 | grep -i error
  # A barrier bug would hang the persistent kernel: bounded.
  timeout 240 /tmp/mega_bench | tee "$OUT/mega_bench.txt"
fi
if has profile; then
  echo "== optc bench per workload with OPTC_CUDA_PROFILE=1 (GPU time per kernel kind)"
  for w in ${PROFILE_WORKLOADS:-W1 W2 W3}; do
    OPTC_CUDA_PROFILE=1 "$BIN" bench $MODEL --target nvrtc --workloads $w --reps 1 --max-num-tokens 8192 2>&1 | tee "$OUT/profile_$w.log" | head -16
  done
fi
if has graphprof; then
  echo "== CUDA graph replay time against host time (OPTC_CUDA_PROFILE=graph)"
  for w in W1 W2; do
    OPTC_CUDA_PROFILE=graph "$BIN" bench $MODEL --target nvrtc --workloads $w --reps 1 --max-num-tokens 16384 2>&1 | tee "$OUT/graphprof_$w.log" | tail -8
  done
fi
if has ncu; then
  # Kernel times inside the captured decode graphs: ncu times every kernel
  # node on its own (no launch gaps), 520 launches (two decode steps) well
  # after the prefill and warm-up; NCU_RUNS lists "WORKLOAD:launches-to-skip".
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for spec in ${NCU_RUNS:-W1:20000 W2:20000}; do
    IFS=: read -r w skip <<< "$spec"
    echo "== ncu $w (skip $skip launches)"
    "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --launch-skip $skip --launch-count 520 \
      "$BIN" bench $MODEL --target nvrtc --workloads $w --reps 1 --max-num-tokens 16384 > "$OUT/ncu_$w.csv" 2> "$OUT/ncu_$w.err"
    python3 .device/ncu_summary.py "$OUT/ncu_$w.csv" 2 | head -30
  done
fi
if has ncudetail; then
  # One launch of a kernel in full detail, per "WORKLOAD:kernel-regex:skip".
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for spec in ${NCU_DETAIL:-W1:paged_decode:200 W1:gemv_bf16_m1:200}; do
    IFS=: read -r w k skip <<< "$spec"
    echo "== ncu detail $k ($w, skip $skip)"
    "$NCU" --clock-control none --set detailed -k regex:$k --launch-skip $skip --launch-count 1 \
      "$BIN" bench $MODEL --target nvrtc --workloads $w --reps 1 > "$OUT/ncu_detail_${w}_$k.txt" 2>&1
    grep -E "Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Block Limit|Waves Per SM|Grid Size|Issue Slots|Eligible Warps|Theoretical Occ|Dynamic Shared|No Eligible|Bank" "$OUT/ncu_detail_${w}_$k.txt" | head -24
  done
fi
if has peer; then
  echo "== peer (transformers)"
  python3 .device/hf_baseline.py --model-dir $MODEL --parts ceilings,static --deadline-s ${PEER_DEADLINE:-280} 2>&1 | tail -25
  if [ -s "$OUT/optc_bench.jsonl" ] && [ -s "$OUT/results.json" ]; then
    echo "== side by side (this call's optc bench against transformers; scripts/side_by_side.py)"
    python3 scripts/side_by_side.py "$OUT/optc_bench.jsonl" "$OUT/results.json" $MODEL
  fi
fi
