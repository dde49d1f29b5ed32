#!/usr/bin/env python3
"""Checks ONNX files optc exported against onnx and onnxruntime.

    python3 scripts/check_onnx_export.py DIR

DIR holds one folder per case, in the ONNX backend test layout optc's tests
write: model.onnx and test_data_set_N/{input,output}_K.pb (one set per call:
a decoder-with-past network has a set for each call of a generation), the
outputs being the reference interpreter's. For each case:
onnx.checker.check_model (full check, with shape inference), then an
onnxruntime session run on every set's inputs, compared with the
interpreter's outputs. A case without data sets (a network in a dtype
onnxruntime's CPU kernels lack, such as bf16) gets the checker only.
Exit status 1 if any case fails.
Needs `pip install onnx onnxruntime`.
"""

import glob
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def load_set(folder, prefix):
    files = sorted(glob.glob(os.path.join(folder, f"{prefix}_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3]))
    out = []
    for f in files:
        t = onnx.TensorProto()
        with open(f, "rb") as fh:
            t.ParseFromString(fh.read())
        out.append(numpy_helper.to_array(t))
    return out


def check(case):
    path = os.path.join(case, "model.onnx")
    onnx.checker.check_model(path, full_check=True)
    sets = sorted(glob.glob(os.path.join(case, "test_data_set_*")), key=lambda p: int(p.rsplit("_", 1)[1]))
    if not sets:
        return None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    for data in sets:
        inputs = load_set(data, "input")
        want = load_set(data, "output")
        feed = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
        got = sess.run(None, feed)
        if len(got) != len(want):
            raise AssertionError(f"{os.path.basename(data)}: {len(got)} outputs, want {len(want)}")
        for k, (g, w) in enumerate(zip(got, want)):
            where = f"{os.path.basename(data)} output {k}"
            if g.shape != w.shape or g.dtype != w.dtype:
                raise AssertionError(f"{where}: got {g.dtype}{g.shape}, want {w.dtype}{w.shape}")
            if np.issubdtype(w.dtype, np.floating):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=where)
                worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - w))) if w.size else 0.0)
            else:
                np.testing.assert_array_equal(g, w, err_msg=where)
    return worst


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    cases = sorted(d for d in glob.glob(os.path.join(sys.argv[1], "*")) if os.path.isdir(d))
    failed = 0
    for case in cases:
        try:
            worst = check(case)
            if worst is None:
                print(f"ok      {os.path.basename(case)} (onnx.checker only: no test data)")
            else:
                print(f"ok      {os.path.basename(case)} (max abs diff {worst:.2e})")
        except Exception as e:  # report every case, then fail
            failed += 1
            print(f"FAILED  {os.path.basename(case)}: {e}")
    print(f"{len(cases) - failed} of {len(cases)} exported models pass onnx.checker and match under onnxruntime {ort.__version__}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
