"""Sums an `ncu --csv --metrics gpu__time_duration.sum` log per kernel.

Usage: python3 scripts/ncu_summary.py LOG STEPS
Prints, per kernel name (shortened), the launches and GPU microseconds per
step (the greedy argmax launches, argmax_part_*, one per step, or STEPS when there are none), largest first.
"""
import csv
import sys
from collections import defaultdict


def main():
    path, steps = sys.argv[1], float(sys.argv[2])
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = r.get("Metric Unit", "ns")
        v = float(r["Metric Value"].replace(",", ""))
        us = v / 1000.0 if unit in ("ns", "nsecond") else v * 1000.0 if unit in ("ms", "msecond") else v
        rows.append((r["Kernel Name"], us))
    by = defaultdict(lambda: [0, 0.0])
    for name, us in rows:
        key = name.split("(")[0][:60]
        by[key][0] += 1
        by[key][1] += us
    total = sum(v[1] for v in by.values())
    # One greedy argmax (one kernel; its last block a row combines) ends
    # every decode step.
    argmax = sum(v[0] for k, v in by.items() if "argmax_part" in k)
    steps = float(argmax) if argmax else steps
    print(f"{len(rows)} kernels, {total / steps:.1f} us of GPU time per step ({steps:g} steps)")
    for k, (n, us) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        print(f"  {k:<60} {n / steps:6.1f}/step {us / steps:8.1f} us/step {100 * us / total:5.1f}%  {us / n:7.2f} us each")


if __name__ == "__main__":
    main()
