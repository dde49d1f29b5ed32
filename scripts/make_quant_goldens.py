#!/usr/bin/env python3
"""Independent reference for optc's GGUF dequantisation: random blocks of each
ggml type, dequantised by the `gguf` Python package (llama.cpp's own
reference implementation in numpy). Writes frontends/tests/data/quant_goldens.json.

Usage: pip install gguf numpy; python3 scripts/make_quant_goldens.py
"""

import json

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

# type -> (ggml code, values per block, bytes per block, offsets of f16 scale fields)
TYPES = {
    "Q8_0": (T.Q8_0, 32, 34, [0]),
    "Q4_0": (T.Q4_0, 32, 18, [0]),
    "Q4_1": (T.Q4_1, 32, 20, [0, 2]),
    "Q4_K": (T.Q4_K, 256, 144, [0, 2]),
    "Q6_K": (T.Q6_K, 256, 210, [208]),
    "F16": (T.F16, 1, 2, []),
    "BF16": (T.BF16, 1, 2, []),
}


def main():
    rng = np.random.default_rng(7)
    cases = []
    for name, (ty, per, size, scales) in TYPES.items():
        blocks = 3 if per > 1 else 64
        raw = bytearray(rng.integers(0, 256, size=blocks * size, dtype=np.uint8).tobytes())
        for b in range(blocks):
            for off in scales:
                # A finite, moderate scale: random bytes could be NaN or inf.
                s = np.float16(rng.uniform(0.01, 0.5) * rng.choice([-1, 1]))
                raw[b * size + off : b * size + off + 2] = s.tobytes()
        if name == "F16":
            raw = np.float16(rng.normal(size=blocks)).tobytes()
        if name == "BF16":
            f = np.float32(rng.normal(size=blocks))
            raw = (f.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        data = np.frombuffer(bytes(raw), dtype=np.uint8)
        values = dequantize(data, ty).astype(np.float32).reshape(-1)
        cases.append({"type": name, "code": int(ty), "n": int(values.size), "bytes": bytes(raw).hex(), "values": [float(v) for v in values]})
    with open("frontends/tests/data/quant_goldens.json", "w") as f:
        json.dump({"cases": cases}, f)
    print("wrote", len(cases), "cases")


if __name__ == "__main__":
    main()
