#!/usr/bin/env python3
"""Writes the ONNX backend node test cases (model.onnx + test_data_set_N/*.pb)
from the generators the `onnx` wheel ships; the wheel does not ship the data.

    python3 scripts/make_onnx_node_tests.py OUT_DIR

Each case lands in OUT_DIR/<case name>/, the layout the ONNX backend test
runner reads, plus OUT_DIR/<case name>/tolerance.json with the case's rtol and
atol. Needs `pip install onnx`. About 28 MB, about 15 s; not committed.
"""

import json
import os
import shutil
import sys
import warnings

import numpy as np
from onnx import TensorProto, numpy_helper
from onnx.backend.test.case.node import collect_testcases


def tensor_bytes(value, name):
    """Serialised TensorProto of one input or output, or None for values
    that are not plain tensors (sequences, maps, optionals)."""
    if isinstance(value, TensorProto):
        return value.SerializeToString()
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return numpy_helper.from_array(np.asarray(value), name).SerializeToString()
    return None


def write_case(case, root):
    out = os.path.join(root, case.name)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    with open(os.path.join(out, "model.onnx"), "wb") as f:
        f.write(case.model.SerializeToString())
    with open(os.path.join(out, "tolerance.json"), "w") as f:
        json.dump({"rtol": case.rtol, "atol": case.atol}, f)
    graph = case.model.graph
    for n, (inputs, outputs) in enumerate(case.data_sets):
        data = os.path.join(out, f"test_data_set_{n}")
        os.makedirs(data)
        for prefix, values, decls in (("input", inputs, graph.input), ("output", outputs, graph.output)):
            for j, value in enumerate(values):
                name = decls[j].name if j < len(decls) else f"{prefix}_{j}"
                blob = tensor_bytes(value, name)
                if blob is None:
                    # Not a tensor: leave a marker so the runner reports the
                    # case as unsupported instead of guessing.
                    open(os.path.join(data, f"{prefix}_{j}.non_tensor"), "w").close()
                    continue
                with open(os.path.join(data, f"{prefix}_{j}.pb"), "wb") as f:
                    f.write(blob)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    os.makedirs(root, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = [c for c in collect_testcases() if c.kind == "node"]
    for case in cases:
        write_case(case, root)
    print(f"wrote {len(cases)} ONNX node cases to {root}")


if __name__ == "__main__":
    main()
