"""The issue's side-by-side table from one device call's results.

Usage: python3 scripts/side_by_side.py OPTC_JSONL PEER_JSON [MODEL_DIR]

OPTC_JSONL is `optc bench --json` output (one object a run, as
`scripts/gpu-run.sh bench` appends to $OUT/optc_bench.jsonl); PEER_JSON is
`hf_baseline.py`'s results.json from the same call (its `ceilings` and its
`static` runs: transformers with torch.compile). Prints, per workload, optc's
runs against transformers' as ratios, W1's decode step against the weight
floor measured in that call (weights / D2D copy bandwidth), and each of the
issue's targets met or missed. Only numbers from the same call mean anything.
The weight bytes come from PEER_JSON's `model` (written when the harness made
the model); a call that found the model already saved has none, and then the
bytes are counted from MODEL_DIR's safetensors headers.
"""
import json
import sys

# The targets.
W1_FLOOR_RATIO = 1.25
THROUGHPUT_RATIO = 2.5


def optc_runs(path):
    runs = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            runs.setdefault(r["workload"], []).append(r)
    return runs


def safetensors_bytes(model_dir):
    """The tensor bytes of model_dir's model*.safetensors files (from their headers)."""
    import glob
    import os
    import struct

    total = 0
    for path in glob.glob(os.path.join(model_dir, "model*.safetensors")):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        total += sum(t["data_offsets"][1] - t["data_offsets"][0] for k, t in header.items() if k != "__metadata__")
    return total or None


def harness_decode_ms(r):
    """The harness's (total - TTFT) / (N - 1), from optc's output tok/s."""
    n = r["output_len"]
    total_ms = r["batch"] * n / r["output_tok_s"] * 1e3
    return (total_ms - r["ttft_ms_p50"]) / (n - 1)


def span(values, fmt):
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    runs = optc_runs(sys.argv[1])
    with open(sys.argv[2]) as f:
        peer = json.load(f)
    static = peer.get("runs", {}).get("static", {})
    ceilings = peer.get("ceilings", {})
    weight_bytes = peer.get("model", {}).get("weight_bytes_bf16")
    if not weight_bytes and len(sys.argv) == 4:
        weight_bytes = safetensors_bytes(sys.argv[3])
    copy_tbps = ceilings.get("copy_TBps_rw")
    floor_ms = weight_bytes / (copy_tbps * 1e12) * 1e3 if weight_bytes and copy_tbps else None

    print("| workload | optc tok/s | transformers tok/s | ratio | TTFT optc p50 (p99) / transformers |")
    print("|---|---|---|---|---|")
    verdicts = []
    for w in sorted(set(runs) | set(static)):
        ours = runs.get(w, [])
        # A workload the harness skipped, or one cut off after its warm-up,
        # has a record without throughput.
        theirs = static.get(w) if "out_tok_per_s" in static.get(w, {}) else None
        toks = [r["output_tok_s"] for r in ours]
        ttfts = [r["ttft_ms_p50"] for r in ours]
        # The harness's TTFT ends when the whole batch has its first token:
        # optc's nearest figure is the last requests' (p99).
        last_ttfts = [r["ttft_ms_p99"] for r in ours]
        mine = ", ".join(f"{t:,.1f}" for t in toks) or "—"
        if theirs and toks:
            ratio = span([t / theirs["out_tok_per_s"] for t in toks], "{:.2f}×")
            peer_tok = f"{theirs['out_tok_per_s']:,.1f}"
            peer_ttft = f"{theirs['ttft_ms']:.1f} ms"
        else:
            ratio, peer_tok, peer_ttft = "—", "—", "—"
        ttft = f"{span(ttfts, '{:.1f}')} ({span(last_ttfts, '{:.1f}')}) ms" if ttfts else "—"
        print(f"| {w} | {mine} | {peer_tok} | {ratio} | {ttft} / {peer_ttft} |")
        if not (theirs and toks):
            continue
        worst = min(toks) / theirs["out_tok_per_s"]
        if w in ("W2", "W3"):
            ok = worst >= THROUGHPUT_RATIO
            verdicts.append(f"{w} ≥ {THROUGHPUT_RATIO}× transformers: {'met' if ok else 'missed'} ({worst:.2f}× at worst)")
        if w == "W3":
            ok = max(last_ttfts) < theirs["ttft_ms"]
            verdicts.append(
                f"W3 TTFT below transformers': {'met' if ok else 'missed'} "
                f"(p99 {max(last_ttfts):.1f} against {theirs['ttft_ms']:.1f} ms)"
            )
    if floor_ms and runs.get("W1"):
        steps = [harness_decode_ms(r) for r in runs["W1"]]
        worst = max(steps) / floor_ms
        print()
        print(
            f"W1 decode {span(steps, '{:.4f}')} ms a step ((total − TTFT)/(N − 1)) against a floor of "
            f"{floor_ms:.3f} ms ({weight_bytes / 1e9:.3f} GB at {copy_tbps:.3f} TB/s): {span([s / floor_ms for s in steps], '{:.3f}×')}"
        )
        ok = worst <= W1_FLOOR_RATIO
        verdicts.append(f"W1 within {W1_FLOOR_RATIO}× the floor: {'met' if ok else 'missed'} ({worst:.3f}× at worst)")
    print()
    for v in verdicts:
        print(f"- {v}")


if __name__ == "__main__":
    main()
