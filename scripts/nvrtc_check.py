"""Compiles optc's CUDA kernels with NVRTC on a machine without a GPU.

NVRTC needs no GPU, so a kernel edit can be syntax- and resource-checked
here before a device call. Needs libnvrtc and the CUDA headers, e.g. from
the `nvidia-cuda-nvrtc` and `nvidia-cuda-runtime` wheels unpacked into one
folder:

    python3 scripts/nvrtc_check.py /path/to/nvidia/cu13 [--verbose]

Use the GPU machine's NVRTC version (13.0: `nvidia-cuda-nvrtc==13.0.*`,
with the headers of any 13.x runtime wheel): later versions accept code
13.0 rejects, such as a generic lambda in device code.

It compiles the same translation unit the nvrtc target builds (common
helpers, every kernel file, attention and GEMV instances) for sm_90 to a
cubin, and prints NVRTC's log (with --verbose,
ptxas's registers and spills).
"""
import ctypes
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent / "kernels" / "cuda"
cuda = pathlib.Path(sys.argv[1])
verbose = "--verbose" in sys.argv
files = ["common.cuh", "elementwise.cu", "norm.cu", "layout.cu", "attention.cu", "sample.cu", "gemv.cu"]
src = "".join((root / f).read_text() + "\n" for f in files)
src += "OPTC_PAGED_ATTENTION(bf16, bf16, 64, 64)\nOPTC_PAGED_ATTENTION(float, f32, 128, 64)\n"
src += "OPTC_PAGED_ATTENTION(bf16, bf16, 128, 64)\nOPTC_PAGED_ATTENTION(f16, f16, 96, 64)\n"
# The linears' kernels, which the host instantiates per float type.
for t, n in [("float", "f32"), ("bf16", "bf16"), ("f16", "f16")]:
    src += f"OPTC_GEMV_ROWS({t}, {n}, 1)\nOPTC_GEMV_ROWS({t}, {n}, 4)\n"
src += "OPTC_SKINNY_ALL(bf16, bf16)\nOPTC_SKINNY_ALL(f16, f16)\n"
src += "OPTC_GEMV_RING(bf16, bf16)\nOPTC_GEMV_RING(f16, f16)\n"
# The token-pick kernels, per float type of a picked output.
src += "".join(f"OPTC_ARGMAX({t}, {n})\nOPTC_SAMPLE({t}, {n})\n" for t, n in [("float", "f32"), ("bf16", "bf16"), ("f16", "f16")])
mma = (root / "common.cuh").read_text() + (root / "attention_mma.cu").read_text()
mma += "OPTC_PAGED_PREFILL_MMA(bf16, bf16, 64)\nOPTC_PAGED_PREFILL_MMA(bf16, bf16, 128)\nOPTC_PAGED_PREFILL_MMA(f16, f16, 96)\n"

lib = ctypes.CDLL(str(next((cuda / "lib").glob("libnvrtc.so*"))))


def build(name, text):
    prog = ctypes.c_void_p()
    r = lib.nvrtcCreateProgram(ctypes.byref(prog), text.encode(), name.encode(), 0, None, None)
    assert r == 0, r
    opts = [b"-arch=sm_90", b"-std=c++17", f"-I{cuda / 'include'}".encode()]
    if verbose:
        opts.append(b"-Xptxas=-v")
    arr = (ctypes.c_char_p * len(opts))(*opts)
    r = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    text = log.value.decode(errors="replace").strip()
    print(f"{name}: {'ok' if r == 0 else f'FAILED ({r})'}")
    if text:
        print(text)
    return r == 0


ok = build("optc.cu", src)
ok &= build("optc_mma.cu", mma)
sys.exit(0 if ok else 1)
