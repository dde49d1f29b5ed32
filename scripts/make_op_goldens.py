#!/usr/bin/env python3
"""Independent numpy reference for the optc IR ops.

Writes ir/tests/data/op_goldens.json: small graphs in the optc text form,
their inputs, and the outputs computed here in numpy (float64, rounded once
per op to the op's output dtype). The math is written from the op
definitions (the doc comments in ir/src/ops/*.rs), not from the Rust eval
code, so the file is an independent check of the reference interpreter.

Deterministic: every case draws from its own RNG seeded by a hash of its
name, so adding or reordering cases does not change the others.

Usage: python3 scripts/make_op_goldens.py [OUT.json]
"""

import json
import math
import os
import re
import sys
import zlib

import ml_dtypes
import numpy as np

NP = {
    "f32": np.float32,
    "f16": np.float16,
    "i32": np.int32,
    "i64": np.int64,
    "u64": np.uint64,
    "bool": np.bool_,
    # The small floats, from ml_dtypes (which the onnx package depends on).
    "f8e4m3": ml_dtypes.float8_e4m3fn,
    "f8e5m2": ml_dtypes.float8_e5m2,
    "f8e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "f8e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "f4e2m1": ml_dtypes.float4_e2m1fn,
}
SMALL_FLOAT = ("f8e4m3", "f8e5m2", "f8e4m3fnuz", "f8e5m2fnuz", "f4e2m1")
FLOAT = ("f32", "f16") + SMALL_FLOAT
INT_BITS = {"i32": 32, "i64": 64}

# Default tolerances per float output dtype. Both sides compute in f64 and
# round once, so f32 results normally agree to the last bit; the slack only
# covers libm differences and double rounding.
TOL = {"f32": (1e-6, 1e-5), "f16": (1e-3, 2e-3), **{d: (0.0, 0.0) for d in SMALL_FLOAT}}

CASES = []
NAMES = set()
OPS_USED = set()


def paged_ref(q, k, v, kc, vc, pos, starts, ctx, tables, slots, scale=None, window=None):
    """paged_attention from its definition: write every new token's k/v to
    its slot, then attend causally (within `window`) through the block table."""
    nb, bs = kc.shape[:2]
    fk = kc.reshape(nb * bs, *kc.shape[2:]).copy()
    fv = vc.reshape(nb * bs, *vc.shape[2:]).copy()
    for t, sl in enumerate(slots):
        if sl >= 0:
            fk[sl], fv[sl] = k[t], v[t]
    t_n, hq, d = q.shape
    group = hq // k.shape[1]
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    out = np.zeros((t_n, hq, v.shape[2]))
    for t in range(t_n):
        seq = int(np.searchsorted(starts, t, side="right")) - 1
        p = int(pos[t])
        assert p < ctx[seq]
        first = max(0, p - window + 1) if window else 0
        js = [int(tables[seq][j // bs]) * bs + j % bs for j in range(first, p + 1)]
        for h in range(hq):
            kk, vv = fk[js, h // group], fv[js, h // group]
            sc = kk @ q[t, h] * scale
            w = np.exp(sc - sc.max())
            out[t, h] = (w / w.sum()) @ vv
    return out, fk.reshape(kc.shape), fv.reshape(vc.shape)


# ----------------------------------------------------------------------------
# Value formatting


class Sym(str):
    """A symbolic dim expression written verbatim in an attribute."""


class DTy(str):
    """A dtype attribute."""


class Raw(str):
    """Attribute text written verbatim (pre-formatted numbers)."""


def fmt_f64(x):
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    s = repr(x)
    if not any(c in s for c in ".eE"):
        s += ".0"
    return s


def shortest(x, dtype):
    """The shortest decimal that reads back (via f64) to the same `dtype` value."""
    t = NP[dtype]
    x = t(x)
    s = str(x)
    # Readers may go f64 -> dtype directly or through f32 (as the Rust
    # Tensor::from_f64 does); the text must give x either way.
    if t(float(s)) != x or t(np.float32(float(s))) != x:
        s = repr(float(x))
    return s


def fmt_at(x, dtype):
    """A float of `dtype` as attribute text."""
    x = NP[dtype](x)
    if np.isnan(x):
        return "nan"
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    s = shortest(x, dtype)
    if not any(c in s for c in ".eE"):
        s += ".0"
    return s


def fmt_attr(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (Sym, DTy, Raw)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return fmt_f64(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_attr(e) for e in v) + "]"
    raise TypeError(f"attribute {v!r}")


def enc_data(arr, dtype):
    flat = np.asarray(arr).reshape(-1)
    if dtype in FLOAT:
        out = []
        for x in flat:
            x = NP[dtype](x)
            if np.isnan(x):
                out.append("nan")
            elif np.isinf(x):
                out.append("inf" if x > 0 else "-inf")
            else:
                out.append(float(shortest(x, dtype)))
        return out
    if dtype == "bool":
        return [int(bool(x)) for x in flat]
    if dtype == "u64":
        # JSON readers take i64: u64 values at or above 2^63 are written as
        # their two's-complement i64 (the same 64 bits).
        return [int(x) - 2**64 if int(x) >= 2**63 else int(x) for x in flat]
    return [int(x) for x in flat]


# ----------------------------------------------------------------------------
# Rounding to IR dtypes


def wrap(x, bits):
    m = 1 << bits
    x = int(x) % m
    return x - m if x >= m // 2 else x


def rnd(a, dtype):
    """Rounds exact results to `dtype` (floats: nearest even; ints: wrap)."""
    if dtype in FLOAT:
        with np.errstate(all="ignore"):
            return np.asarray(a, dtype=np.float64).astype(NP[dtype])
    if dtype == "bool":
        return np.asarray(a).astype(bool)
    a = np.asarray(a, dtype=object)
    if dtype == "u64":
        return np.array([int(v) % 2**64 for v in a.reshape(-1)], dtype=np.uint64).reshape(a.shape)
    vals = [wrap(v, INT_BITS[dtype]) for v in a.reshape(-1)]
    return np.array(vals, dtype=NP[dtype]).reshape(a.shape)


def F(v):
    """Exact float64 view of a value's elements."""
    return v.arr.astype(np.float64)


def I(v):
    """Exact Python-int view of an integer value's elements."""
    return v.arr.astype(object)


# ----------------------------------------------------------------------------
# Graph builder


class Val:
    def __init__(self, ref, dtype, dims, arr):
        self.ref, self.dtype, self.dims, self.arr = ref, dtype, dims, arr

    def ty(self):
        return f"{self.dtype}[{', '.join(str(d) for d in self.dims)}]"


SYM_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class G:
    def __init__(self, name, atol=None, rtol=None):
        assert name not in NAMES, f"duplicate case name {name}"
        assert re.fullmatch(r"[a-z0-9_]+", name), name
        NAMES.add(name)
        self.name = name
        self.rng = np.random.default_rng(zlib.crc32(name.encode()))
        self.atol, self.rtol = atol, rtol
        self.inputs = []
        self.lines = []
        self.n = 0
        self.bind = {}

    # random data helpers
    def randn(self, *shape, scale=1.0):
        return self.rng.standard_normal(shape) * scale

    def unif(self, lo, hi, *shape):
        return self.rng.uniform(lo, hi, shape)

    def ints(self, lo, hi, *shape):
        return self.rng.integers(lo, hi, size=shape, endpoint=True)

    def _eval_dim(self, d):
        if isinstance(d, (int, np.integer)):
            return int(d)
        return int(eval(d, {"__builtins__": {}}, dict(self.bind)))

    def _check_dims(self, dims, shape, what):
        assert len(dims) == len(shape), (self.name, what, dims, shape)
        for d, n in zip(dims, shape):
            assert self._eval_dim(d) == n, (self.name, what, dims, shape, self.bind)

    def inp(self, name, dtype, data, dims=None):
        arr = rnd(data, dtype)
        dims = list(arr.shape) if dims is None else dims
        for d, n in zip(dims, arr.shape):
            if isinstance(d, str):
                syms = set(SYM_RE.findall(d)) - set(self.bind)
                if d.isidentifier():
                    self.bind[d] = n
                elif len(syms) == 1:
                    (s,) = syms
                    f = lambda x: eval(d, {"__builtins__": {}}, dict(self.bind, **{s: x}))
                    a, b = f(1) - f(0), f(0)
                    assert (n - b) % a == 0
                    self.bind[s] = (n - b) // a
        self._check_dims(dims, arr.shape, f"input {name}")
        v = Val(f"%{name}", dtype, dims, arr)
        self.inputs.append(v)
        return v

    def op(self, opname, args, attrs=None, out=None, dtype=None, dims=None):
        """Adds one op. `out` is the exact result (or a list for several
        outputs), `dtype` the output dtype(s) (default: the first operand's),
        `dims` the declared dims when they are symbolic."""
        OPS_USED.add(opname)
        multi = isinstance(out, list)
        outs = out if multi else [out]
        if dtype is None:
            dtype = args[0].dtype
        dtypes = dtype if isinstance(dtype, list) else [dtype] * len(outs)
        dimss = dims if (dims is not None and multi) else [dims] * len(outs)
        vals = []
        for o, dt, ds in zip(outs, dtypes, dimss):
            arr = rnd(o, dt)
            ds = list(arr.shape) if ds is None else ds
            self._check_dims(ds, arr.shape, opname)
            vals.append(Val(f"%{self.n}", dt, ds, arr))
            self.n += 1
        line = f"  {', '.join(f'{v.ref}: {v.ty()}' for v in vals)} = {opname}({', '.join(a.ref for a in args)})"
        if attrs:
            line += " {" + ", ".join(f"{k} = {fmt_attr(v)}" for k, v in attrs.items()) + "}"
        self.lines.append(line)
        return vals if multi else vals[0]

    def const(self, dtype, values, shape=None):
        arr = rnd(values, dtype)
        if shape is not None:
            arr = arr.reshape(shape)
        if dtype in FLOAT:
            vals = Raw("[" + ", ".join(fmt_at(x, dtype) for x in arr.reshape(-1)) + "]")
        else:
            vals = [int(x) for x in arr.reshape(-1)]
        return self.op(
            "constant",
            [],
            {"dtype": DTy(dtype), "shape": list(arr.shape), "value": vals},
            out=arr,
            dtype=dtype,
        )

    def done(self, *outs, names=None):
        if names is None:
            names = ["y"] if len(outs) == 1 else [f"y{i}" for i in range(len(outs))]
        ins = ", ".join(f"{v.ref}: {v.ty()}" for v in self.inputs)
        res = ", ".join(f"%{n}: {v.ty()}" for n, v in zip(names, outs))
        text = f"graph {self.name}({ins}) -> ({res}) {{\n"
        text += "".join(line + "\n" for line in self.lines)
        text += f"  return {', '.join(v.ref for v in outs)}\n}}\n"
        fdts = [v.dtype for v in outs if v.dtype in FLOAT]
        atol, rtol = TOL["f16"] if "f16" in fdts else TOL["f32"]
        case = {
            "name": self.name,
            "ir": text,
            "inputs": {
                v.ref[1:]: {"dtype": v.dtype, "shape": list(v.arr.shape), "data": enc_data(v.arr, v.dtype)}
                for v in self.inputs
            },
            "outputs": [
                {"dtype": v.dtype, "shape": list(v.arr.shape), "data": enc_data(v.arr, v.dtype)} for v in outs
            ],
            "atol": self.atol if self.atol is not None else atol,
            "rtol": self.rtol if self.rtol is not None else rtol,
        }
        CASES.append(case)


# ----------------------------------------------------------------------------
# Reference math, from the op definitions

erf_v = np.vectorize(math.erf, otypes=[np.float64])

UNARY = {
    "neg": lambda x: -x,
    "abs": np.abs,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "reciprocal": lambda x: 1.0 / x,
    "tanh": np.tanh,
    "erf": erf_v,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "relu": lambda x: np.where(np.isnan(x) | (x > 0), x, 0.0),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "sin": np.sin,
    "cos": np.cos,
}


def gelu_ref(x, approx):
    if approx == "tanh":
        c = math.sqrt(2.0 / math.pi)
        return 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + erf_v(x / math.sqrt(2.0)))


def nan_min(a, b):
    return np.where(np.isnan(a) | np.isnan(b), np.nan, np.where(a < b, a, b))


def nan_max(a, b):
    return np.where(np.isnan(a) | np.isnan(b), np.nan, np.where(a > b, a, b))


BINARY_F = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: np.power(a, b),
    "minimum": nan_min,
    "maximum": nan_max,
}


def idiv(a, b):
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


BINARY_I = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": np.frompyfunc(idiv, 2, 1),
    "pow": np.frompyfunc(lambda a, b: a**b, 2, 1),
    "minimum": np.frompyfunc(min, 2, 1),
    "maximum": np.frompyfunc(max, 2, 1),
}

COMPARE = {
    "equal": lambda a, b: a == b,
    "not_equal": lambda a, b: a != b,
    "less": lambda a, b: a < b,
    "less_equal": lambda a, b: a <= b,
    "greater": lambda a, b: a > b,
    "greater_equal": lambda a, b: a >= b,
}


def reduce_ref(kind, x, axes, keepdims, is_int=False):
    ax = tuple(range(x.ndim)) if not axes else tuple(a % x.ndim for a in axes)
    if is_int:
        if kind == "reduce_sum":
            r = np.sum(x, axis=ax, keepdims=keepdims, initial=0)
        elif kind == "reduce_max":
            r = np.max(x, axis=ax, keepdims=keepdims, initial=-(2**63))
        else:
            r = np.min(x, axis=ax, keepdims=keepdims, initial=2**63 - 1)
        return np.asarray(r, dtype=object)
    with np.errstate(all="ignore"):
        if kind == "reduce_sum":
            return np.sum(x, axis=ax, keepdims=keepdims)
        if kind == "reduce_mean":
            n = int(np.prod([x.shape[a] for a in ax]))
            return np.sum(x, axis=ax, keepdims=keepdims) / float(n) if n else np.sum(x, axis=ax, keepdims=keepdims) * np.nan
        if kind == "reduce_max":
            return np.max(x, axis=ax, keepdims=keepdims, initial=-np.inf)
        return np.min(x, axis=ax, keepdims=keepdims, initial=np.inf)


def argmax_ref(x, axis, keepdims):
    axis %= x.ndim
    xm = np.moveaxis(x, axis, -1)
    out = np.zeros(xm.shape[:-1], dtype=np.int64)
    for idx in np.ndindex(*xm.shape[:-1]):
        row = xm[idx]
        best = 0
        for k in range(1, len(row)):
            b, c = row[best], row[k]
            if math.isnan(b):
                break
            if math.isnan(c) or c > b:
                best = k
        out[idx] = best
    if keepdims:
        out = np.expand_dims(out, axis)
    return out


def softmax_ref(x, axis, log=False):
    with np.errstate(all="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
        e = np.exp(x - m)
        s = np.sum(e, axis=axis, keepdims=True)
        return (x - m) - np.log(s) if log else e / s


def linear_ref(x, w, b=None):
    y = np.einsum("...k,nk->...n", x, w)
    return y + b if b is not None else y


def slice_ref(x, axis, start, end, step):
    sl = [slice(None)] * x.ndim
    sl[axis] = slice(start, end, step)
    return x[tuple(sl)]


def take_ref(x, idx, axis):
    axis %= x.ndim
    n = x.shape[axis]
    idx = np.where(idx < 0, idx + n, idx)
    assert ((idx >= 0) & (idx < n)).all()
    return np.take(x, idx, axis=axis)


def gather_elements_ref(x, idx, axis):
    """torch.gather: each index replaces its own coordinate on `axis`."""
    axis %= x.ndim
    n = x.shape[axis]
    idx = np.asarray(idx)
    out = np.empty(idx.shape, dtype=x.dtype)
    for pos in np.ndindex(*idx.shape):
        i = int(idx[pos])
        j = i + n if i < 0 else i
        assert 0 <= j < n
        src = list(pos)
        src[axis] = j
        out[pos] = x[tuple(src)]
    return out


def scatter_elements_ref(x, idx, upd, axis, reduction):
    """Updates in row-major order; `none` lets the last duplicate win."""
    axis %= x.ndim
    n = x.shape[axis]
    out = x.copy()
    idx = np.asarray(idx)
    for pos in np.ndindex(*idx.shape):
        i = int(idx[pos])
        dst = list(pos)
        dst[axis] = i + n if i < 0 else i
        dst = tuple(dst)
        a, b = out[dst], upd[pos]
        if reduction == "none":
            out[dst] = b
        elif reduction == "add":
            out[dst] = a + b
        elif reduction == "mul":
            out[dst] = a * b
        elif reduction == "max":
            out[dst] = max(a, b)
        else:
            out[dst] = min(a, b)
    return out


def topk_ref(x, axis, k, largest):
    """Per lane: order by value (NaN largest), ties by lower index first."""
    axis %= x.ndim
    xm = np.moveaxis(x, axis, -1)
    vals = np.empty(xm.shape[:-1] + (k,), dtype=x.dtype)
    inds = np.zeros(xm.shape[:-1] + (k,), dtype=np.int64)
    for lane in np.ndindex(*xm.shape[:-1]):
        row = list(xm[lane])

        def key(j):
            v = row[j]
            nan = isinstance(v, float) and math.isnan(v)
            big = (1, 0) if nan else (0, v)
            return ((-big[0], -big[1]) if largest else big, j)

        order = sorted(range(len(row)), key=key)[:k]
        for t, j in enumerate(order):
            vals[lane + (t,)] = row[j]
            inds[lane + (t,)] = j
    return np.moveaxis(vals, -1, axis), np.moveaxis(inds, -1, axis)


def tri_ref(x, k, upper):
    r, c = x.shape[-2], x.shape[-1]
    d = np.arange(c)[None, :] - np.arange(r)[:, None]
    keep = d >= k if upper else d <= k
    return np.where(keep, x, 0)


def layer_norm_ref(x, axis, eps, scale=None, bias=None):
    ax = tuple(range(axis % x.ndim, x.ndim))
    mean = x.mean(axis=ax, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=ax, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


def rms_norm_ref(x, axis, eps, w=None):
    ax = tuple(range(axis % x.ndim, x.ndim))
    y = x / np.sqrt((x * x).mean(axis=ax, keepdims=True) + eps)
    return y * w if w is not None else y


def rope_ref(x, cos, sin, interleaved):
    r = cos.shape[-1]
    lead = x.shape[:-1]
    c = np.broadcast_to(cos, lead + (r,))
    s = np.broadcast_to(sin, lead + (r,))
    xr = x[..., :r]
    if interleaved:
        rot = np.empty_like(xr)
        rot[..., 0::2] = -xr[..., 1::2]
        rot[..., 1::2] = xr[..., 0::2]
    else:
        h = r // 2
        rot = np.concatenate([-xr[..., h:], xr[..., :h]], axis=-1)
    out = x.copy()
    out[..., :r] = xr * c + rot * s
    return out


def sdpa_ref(q, k, v, mask=None, causal=False, scale=None):
    hq, sq, d = q.shape[-3:]
    hkv, sk = k.shape[-3], k.shape[-2]
    group = hq // hkv
    kk = np.repeat(k, group, axis=-3)  # query head h reads kv head h // group
    vv = np.repeat(v, group, axis=-3)
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    s = np.matmul(q, np.swapaxes(kk, -1, -2)) * scale
    if causal:
        i = np.arange(sq)[:, None]
        j = np.arange(sk)[None, :]
        s = np.where(j <= i + (sk - sq), s, -np.inf)
    if mask is not None:
        m = np.where(mask, 0.0, -np.inf) if mask.dtype == bool else mask
        s = s + m
    mx = np.max(s, axis=-1, keepdims=True)
    dead = np.isneginf(mx)
    with np.errstate(all="ignore"):
        p = np.where(dead, 0.0, np.exp(s - np.where(dead, 0.0, mx)))
        den = np.sum(p, axis=-1, keepdims=True)
        p = np.where(dead, 0.0, p / np.where(dead, 1.0, den))
    return np.matmul(p, vv)


# ----------------------------------------------------------------------------
# Cases


# Unary kinds added for ONNX, with the input range each is defined on.
UNARY_MORE = {
    "tan": (np.tan, -1.4, 1.4),
    "asin": (np.arcsin, -0.99, 0.99),
    "acos": (np.arccos, -0.99, 0.99),
    "atan": (np.arctan, -5.0, 5.0),
    "sinh": (np.sinh, -3.0, 3.0),
    "cosh": (np.cosh, -3.0, 3.0),
    "asinh": (np.arcsinh, -5.0, 5.0),
    "acosh": (np.arccosh, 1.0, 5.0),
    "atanh": (np.arctanh, -0.99, 0.99),
    "floor": (np.floor, -5.0, 5.0),
    "ceil": (np.ceil, -5.0, 5.0),
    "round": (np.round, -5.0, 5.0),
    "sign": (np.sign, -2.0, 2.0),
}


def py_mod(a, b):
    """Remainder with the divisor's sign (Python's %)."""
    return a % b


def c_fmod(a, b):
    """Remainder with the dividend's sign."""
    r = abs(a) % abs(b)
    return -r if a < 0 else r


def more_elementwise_cases():
    for name, (f, lo, hi) in UNARY_MORE.items():
        g = G(f"{name}_f32")
        x = g.unif(lo, hi, 3, 4)
        if name in ("floor", "ceil", "round"):
            x = np.concatenate([x.reshape(-1)[:8], [0.5, -0.5, 1.5, -2.5]]).reshape(3, 4)
        xv = g.inp("x", "f32", x)
        g.done(g.op(name, [xv], out=f(F(xv))))
    for name in ("sign", "floor", "round"):
        g = G(f"{name}_i64")
        xv = g.inp("x", "i64", [[-5, 0, 7], [-(2**40), 2**40 + 3, -1]])
        ref = {"sign": np.frompyfunc(lambda a: (a > 0) - (a < 0), 1, 1), "floor": lambda x: x, "round": lambda x: x}
        g.done(g.op(name, [xv], out=ref[name](I(xv))))
    g = G("sign_special_values")
    xv = g.inp("x", "f32", [0.0, -0.0, np.inf, -np.inf, np.nan, 3.0])
    g.done(g.op("sign", [xv], out=np.sign(F(xv))))
    # mod / fmod on floats and integers, every sign combination.
    a = [7.5, -7.5, 7.5, -7.5, 0.0, 3.0]
    b = [2.0, 2.0, -2.0, -2.0, 3.0, 1.5]
    for name, f in (("mod", np.mod), ("fmod", np.fmod)):
        g = G(f"{name}_f32_signs")
        av, bv = g.inp("a", "f32", a), g.inp("b", "f32", b)
        g.done(g.op(name, [av, bv], out=f(F(av), F(bv))))
        g = G(f"{name}_i32_signs_broadcast")
        av, bv = g.inp("a", "i32", [[7, -7, 9], [-9, 0, 5]]), g.inp("b", "i32", [3, -4, 5])
        ref = np.frompyfunc(py_mod if name == "mod" else c_fmod, 2, 1)
        g.done(g.op(name, [av, bv], out=ref(I(av), I(bv))))
    # bitwise ops on integers and bool
    for name, f in (("bitwise_and", lambda a, b: a & b), ("bitwise_or", lambda a, b: a | b), ("bitwise_xor", lambda a, b: a ^ b)):
        g = G(f"{name}_i32")
        av, bv = g.inp("a", "i32", [[5, -1, 2**30], [0, -8, 12]]), g.inp("b", "i32", [3, 255, -3])
        g.done(g.op(name, [av, bv], out=np.frompyfunc(f, 2, 1)(I(av), I(bv))))
        g = G(f"{name}_bool")
        av, bv = g.inp("a", "bool", [True, True, False, False]), g.inp("b", "bool", [True, False, True, False])
        g.done(g.op(name, [av, bv], out=f(av.arr, bv.arr)))
    g = G("shift_left_i32_wraps_and_oversized")
    av, bv = g.inp("a", "i32", [1, 3, -1, 2**30, 5]), g.inp("b", "i32", [4, 0, 1, 2, 32])
    ref = [1 << 4, 3, -2, (2**30) << 2, 0]
    g.done(g.op("shift_left", [av, bv], out=np.array(ref, dtype=object)))
    g = G("shift_right_i32_arithmetic")
    av, bv = g.inp("a", "i32", [256, -256, -1, 7, -8]), g.inp("b", "i32", [4, 4, 31, 40, -1])
    ref = [16, -16, -1, 0, -1]
    g.done(g.op("shift_right", [av, bv], out=np.array(ref, dtype=object)))
    # reduce_prod
    g = G("reduce_prod_axes_keepdims")
    xv = g.inp("x", "f32", g.unif(0.5, 1.5, 2, 3, 4))
    g.done(g.op("reduce_prod", [xv], {"axes": [0, -1], "keepdims": True}, out=np.prod(F(xv), axis=(0, 2), keepdims=True)))
    g = G("reduce_prod_i64_empty_axis_is_one")
    xv = g.inp("x", "i64", np.zeros((0, 3), dtype=np.int64))
    g.done(g.op("reduce_prod", [xv], {"axes": [0], "keepdims": False}, out=np.ones(3, dtype=object)))
    g = G("reduce_prod_i64_all")
    xv = g.inp("x", "i64", [[3, -2], [5, 7]])
    g.done(g.op("reduce_prod", [xv], {"axes": [], "keepdims": False}, out=np.array(-210, dtype=object)))


def window_out(d, k, s, dil, lo, hi, ceil=False):
    span = dil * (k - 1) + 1
    room = d + lo + hi - span
    n = (room + s - 1) // s + 1 if ceil else room // s + 1
    if ceil and (n - 1) * s >= d + lo:
        n -= 1
    return n


def conv_ref(x, w, b, strides, dils, pads, group):
    """Direct N-d cross-correlation from the definition."""
    k = w.ndim - 2
    n, c = x.shape[:2]
    m = w.shape[0]
    cg, mg = c // group, m // group
    outs = [window_out(x.shape[2 + i], w.shape[2 + i], strides[i], dils[i], pads[i], pads[k + i]) for i in range(k)]
    y = np.zeros((n, m, *outs))
    for o in np.ndindex(*outs):
        for kk in np.ndindex(*w.shape[2:]):
            pos = [o[i] * strides[i] + kk[i] * dils[i] - pads[i] for i in range(k)]
            if any(p < 0 or p >= x.shape[2 + i] for i, p in enumerate(pos)):
                continue
            for f in range(m):
                g = f // mg
                xs = x[(slice(None), slice(g * cg, (g + 1) * cg)) + tuple(pos)]
                y[(slice(None), f) + o] += xs @ w[(f, slice(None)) + kk]
    if b is not None:
        y += b.reshape((1, m) + (1,) * k)
    return y


def pool_ref(x, kind, kernel, strides, pads, ceil=False, include_pad=False, p=2.0):
    k = len(kernel)
    outs = [window_out(x.shape[2 + i], kernel[i], strides[i], 1, pads[i], pads[k + i], ceil) for i in range(k)]
    y = np.zeros(x.shape[:2] + tuple(outs))
    for o in np.ndindex(*outs):
        vals, padded = [], 0
        for kk in np.ndindex(*kernel):
            pos = [o[i] * strides[i] + kk[i] - pads[i] for i in range(k)]
            inside = all(0 <= q < x.shape[2 + i] for i, q in enumerate(pos))
            if inside:
                vals.append(x[(slice(None), slice(None)) + tuple(pos)])
            if all(-pads[i] <= q < x.shape[2 + i] + pads[k + i] for i, q in enumerate(pos)):
                padded += 1
        v = np.stack(vals, axis=-1)
        if kind == "max_pool":
            r = v.max(axis=-1)
        elif kind == "avg_pool":
            r = v.sum(axis=-1) / (padded if include_pad else v.shape[-1])
        else:
            r = (np.abs(v) ** p).sum(axis=-1) ** (1.0 / p)
        y[(slice(None), slice(None)) + o] = r
    return y


def conv_cases():
    g = G("conv_2d_pads_strides_bias")
    xv = g.inp("x", "f32", g.randn(2, 3, 5, 6))
    wv = g.inp("w", "f32", g.randn(4, 3, 3, 2))
    bv = g.inp("b", "f32", g.randn(4))
    attrs = {"kernel": [3, 2], "strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 1, 2], "group": 1}
    g.done(g.op("conv", [xv, wv, bv], attrs, out=conv_ref(F(xv), F(wv), F(bv), [2, 1], [1, 2], [1, 0, 1, 2], 1)))
    g = G("conv_1d_grouped")
    xv = g.inp("x", "f32", g.randn(1, 4, 7))
    wv = g.inp("w", "f32", g.randn(6, 2, 3))
    attrs = {"kernel": [3], "strides": [1], "dilations": [1], "pads": [0, 0], "group": 2}
    g.done(g.op("conv", [xv, wv], attrs, out=conv_ref(F(xv), F(wv), None, [1], [1], [0, 0], 2)))
    g = G("max_pool_2d_pads_ceil")
    xv = g.inp("x", "f32", g.randn(1, 2, 5, 5))
    attrs = {"kernel": [2, 2], "strides": [2, 2], "dilations": [1, 1], "pads": [1, 0, 0, 0], "ceil_mode": True}
    g.done(g.op("max_pool", [xv], attrs, out=pool_ref(F(xv), "max_pool", [2, 2], [2, 2], [1, 0, 0, 0], ceil=True)))
    for incl in (False, True):
        g = G(f"avg_pool_1d_count_include_pad_{str(incl).lower()}")
        xv = g.inp("x", "f32", g.randn(2, 3, 6))
        attrs = {"kernel": [3], "strides": [2], "dilations": [1], "pads": [1, 1], "count_include_pad": incl, "ceil_mode": False}
        ref = pool_ref(F(xv), "avg_pool", [3], [2], [1, 1], include_pad=incl)
        g.done(g.op("avg_pool", [xv], attrs, out=ref))
    g = G("lp_pool_2d_p3")
    xv = g.inp("x", "f32", g.randn(1, 1, 4, 4))
    attrs = {"kernel": [2, 2], "strides": [1, 1], "dilations": [1, 1], "pads": [0, 0, 0, 0], "p": 3.0, "ceil_mode": False}
    g.done(g.op("lp_pool", [xv], attrs, out=pool_ref(F(xv), "lp_pool", [2, 2], [1, 1], [0, 0, 0, 0], p=3.0)))


def elementwise_cases():
    # Unary ops on random data, and on special values.
    pos_only = {"log", "sqrt", "rsqrt"}
    for name, f in UNARY.items():
        g = G(f"{name}_f32")
        x = g.unif(0.1, 4.0, 3, 4) if name in pos_only else g.randn(3, 4, scale=2.0)
        xv = g.inp("x", "f32", x)
        g.done(g.op(name, [xv], out=f(F(xv))))
    special = [0.0, 1.0, -1.0, 0.5, -2.5, 30.0, -30.0, 100.0, -100.0, np.inf, -np.inf, np.nan]
    for name, f in UNARY.items():
        g = G(f"{name}_special_values")
        xv = g.inp("x", "f32", np.array(special).reshape(3, 4))
        with np.errstate(all="ignore"):
            g.done(g.op(name, [xv], out=f(F(xv))))
    # Integer-defined unary ops.
    for name in ["neg", "abs", "relu"]:
        g = G(f"{name}_i64")
        xv = g.inp("x", "i64", [[-5, 0, 7], [-(2**40), 2**40 + 3, -1]])
        xi = I(xv)
        ref = {"neg": lambda x: -x, "abs": np.abs, "relu": np.frompyfunc(lambda a: max(a, 0), 1, 1)}[name](xi)
        g.done(g.op(name, [xv], out=ref))

    # gelu
    for approx in ["none", "tanh"]:
        g = G(f"gelu_{approx}")
        xv = g.inp("x", "f32", np.concatenate([g.randn(10, scale=2.5), [-6.0, 6.0]]).reshape(3, 4))
        g.done(g.op("gelu", [xv], {"approximate": approx}, out=gelu_ref(F(xv), approx)))
    g = G("gelu_default_attr_is_none")
    xv = g.inp("x", "f32", g.randn(2, 5, scale=2.0))
    g.done(g.op("gelu", [xv], out=gelu_ref(F(xv), "none")))
    g = G("gelu_tanh_f16")
    xv = g.inp("x", "f16", g.randn(2, 6, scale=2.0))
    g.done(g.op("gelu", [xv], {"approximate": "tanh"}, out=gelu_ref(F(xv), "tanh")))

    # Binary float ops with broadcasting.
    for name, f in BINARY_F.items():
        g = G(f"{name}_f32_broadcast")
        if name == "pow":
            a = g.unif(0.2, 3.0, 2, 1, 4)
        else:
            a = g.randn(2, 1, 4)
        b = g.randn(3, 1) if name != "div" else g.unif(0.5, 2.0, 3, 1) * g.rng.choice([-1, 1], (3, 1))
        av, bv = g.inp("a", "f32", a), g.inp("b", "f32", b)
        g.done(g.op(name, [av, bv], out=f(F(av), F(bv))))
    g = G("add_broadcast_size1")
    av, bv = g.inp("a", "f32", g.randn(2, 1)), g.inp("b", "f32", g.randn(3))
    g.done(g.op("add", [av, bv], out=F(av) + F(bv)))
    g = G("mul_broadcast_both_sides_size1")
    av, bv = g.inp("a", "f32", g.randn(1, 3, 1)), g.inp("b", "f32", g.randn(2, 1, 4))
    g.done(g.op("mul", [av, bv], out=F(av) * F(bv)))
    g = G("sub_broadcast_scalar_rank0")
    av, bv = g.inp("a", "f32", g.randn(2, 3)), g.inp("b", "f32", np.array(1.25))
    g.done(g.op("sub", [av, bv], out=F(av) - F(bv)))
    g = G("add_broadcast_zero_size")
    av, bv = g.inp("a", "f32", np.zeros((0, 3))), g.inp("b", "f32", g.randn(1, 3))
    g.done(g.op("add", [av, bv], out=F(av) + F(bv)))
    g = G("mul_broadcast_zero_size_rank3")
    av, bv = g.inp("a", "f32", np.zeros((2, 1, 0))), g.inp("b", "f32", g.randn(3, 1))
    g.done(g.op("mul", [av, bv], out=F(av) * F(bv)))
    g = G("div_by_zero_and_signs")
    av = g.inp("a", "f32", [1.0, -1.0, 0.0, 3.0, -6.0, np.inf])
    bv = g.inp("b", "f32", [0.0, 0.0, 0.0, -2.0, 4.0, 2.0])
    with np.errstate(all="ignore"):
        g.done(g.op("div", [av, bv], out=F(av) / F(bv)))
    g = G("pow_special_values")
    av = g.inp("a", "f32", [-2.0, -2.0, 0.0, 0.0, np.nan, 4.0, 1.0, 2.0])
    bv = g.inp("b", "f32", [3.0, 0.5, -1.0, 0.0, 0.0, -0.5, np.nan, 10.0])
    with np.errstate(all="ignore"):
        g.done(g.op("pow", [av, bv], out=np.power(F(av), F(bv))))
    for name in ["minimum", "maximum"]:
        g = G(f"{name}_nan_wins")
        av = g.inp("a", "f32", [1.0, np.nan, 3.0, -np.inf, 2.0, np.nan])
        bv = g.inp("b", "f32", [2.0, 0.0, np.nan, 5.0, 2.0, np.nan])
        g.done(g.op(name, [av, bv], out=BINARY_F[name](F(av), F(bv))))

    # Integer arithmetic (i64 exact, truncating division).
    for name, f in BINARY_I.items():
        g = G(f"{name}_i64")
        if name == "pow":
            av = g.inp("a", "i64", [[-3, 2, 0, 5], [7, -1, 10, 2]])
            bv = g.inp("b", "i64", [[3, 0, 4, 1], [2, 5, 6, 40]])
        elif name == "div":
            av = g.inp("a", "i64", [[7, -7, 7, -7, 0, 9], [1, -1, 100, -100, 6, -6]])
            bv = g.inp("b", "i64", [[2, 2, -2, -2, 3, 9], [3, 3, -7, 7, -4, 4]])
        else:
            av = g.inp("a", "i64", g.ints(-50, 50, 2, 1, 3))
            bv = g.inp("b", "i64", g.ints(-50, 50, 4, 1))
        g.done(g.op(name, [av, bv], out=f(I(av), I(bv))))
    g = G("add_i64_wraparound")
    av = g.inp("a", "i64", [2**63 - 1, -(2**63), 5])
    bv = g.inp("b", "i64", [1, -1, -(2**62)])
    g.done(g.op("add", [av, bv], out=I(av) + I(bv)))
    g = G("mul_i64_large_exact")
    av = g.inp("a", "i64", [2**31 + 1, -(2**40) - 7, 3])
    bv = g.inp("b", "i64", [2**31 - 1, 2**20 + 3, -(2**61)])
    g.done(g.op("mul", [av, bv], out=I(av) * I(bv)))
    g = G("add_i32_wraparound")
    av = g.inp("a", "i32", [2**31 - 1, -(2**31), 10, -7])
    bv = g.inp("b", "i32", [1, -1, 20, 3])
    g.done(g.op("add", [av, bv], out=I(av) + I(bv)))
    g = G("div_i32_truncates")
    av = g.inp("a", "i32", [[-9, 9], [-1, 8]])
    bv = g.inp("b", "i32", [4, -3])
    g.done(g.op("div", [av, bv], out=BINARY_I["div"](I(av), I(bv))))

    # f16 elementwise.
    g = G("add_f16_broadcast")
    av, bv = g.inp("a", "f16", g.randn(2, 3, scale=3.0)), g.inp("b", "f16", g.randn(3, scale=3.0))
    g.done(g.op("add", [av, bv], out=F(av) + F(bv)))
    g = G("mul_f16_overflow_to_inf")
    av, bv = g.inp("a", "f16", [300.0, -300.0, 2.0, 0.001]), g.inp("b", "f16", [300.0, 300.0, 3.0, 0.001])
    g.done(g.op("mul", [av, bv], out=F(av) * F(bv)))
    g = G("div_f16")
    av, bv = g.inp("a", "f16", g.randn(2, 4)), g.inp("b", "f16", g.unif(0.5, 3.0, 2, 4))
    g.done(g.op("div", [av, bv], out=F(av) / F(bv)))
    for name in ["exp", "silu", "sigmoid", "rsqrt"]:
        g = G(f"{name}_f16")
        x = g.unif(0.1, 4.0, 2, 5) if name == "rsqrt" else g.randn(2, 5, scale=2.0)
        xv = g.inp("x", "f16", x)
        g.done(g.op(name, [xv], out=UNARY[name](F(xv))))

    g = G("exp_f16_single_rounding", atol=0.0, rtol=0.0)
    # exp of these f16 values lies just off an f16 rounding midpoint (closer
    # than f32 precision): rounding the f64 result once to f16 differs from
    # rounding it to f32 first and then to f16.
    xv = g.inp("x", "f16", [0.0226898193359375, 0.007297515869140625, 1.0, -2.0])
    g.done(g.op("exp", [xv], out=np.exp(F(xv))))

    # Comparisons.
    for name, f in COMPARE.items():
        g = G(f"{name}_f32_broadcast_nan")
        av = g.inp("a", "f32", [[1.0, 2.0, np.nan, np.inf], [-1.0, 2.0, 3.0, 0.0]])
        bv = g.inp("b", "f32", [2.0, 2.0, np.nan, np.inf])
        g.done(g.op(name, [av, bv], out=f(F(av), F(bv)), dtype="bool"))
        g = G(f"{name}_i64")
        av = g.inp("a", "i64", [[-3, 0, 5], [2**62, -1, 4]])
        bv = g.inp("b", "i64", [[0], [4]])
        g.done(g.op(name, [av, bv], out=f(I(av), I(bv)).astype(bool), dtype="bool"))

    # where.
    g = G("where_broadcast_all_three")
    cv = g.inp("c", "bool", [[True], [False]])
    av = g.inp("a", "f32", g.randn(2, 3))
    bv = g.inp("b", "f32", g.randn(3))
    g.done(g.op("where", [cv, av, bv], out=np.where(cv.arr, F(av), F(bv)), dtype="f32"))
    g = G("where_cond_broadcast_scalar_else")
    cv = g.inp("c", "bool", [True, False, False, True])
    av = g.inp("a", "i64", [[1, 2, 3, 4], [5, 6, 7, 8]])
    bv = g.inp("b", "i64", np.array(-1))
    g.done(g.op("where", [cv, av, bv], out=np.where(cv.arr, I(av), I(bv)), dtype="i64"))
    g = G("where_f16_nan_passthrough")
    cv = g.inp("c", "bool", [True, False, True])
    av = g.inp("a", "f16", [np.nan, 1.0, -np.inf])
    bv = g.inp("b", "f16", [0.5, np.nan, 2.0])
    g.done(g.op("where", [cv, av, bv], out=np.where(cv.arr, F(av), F(bv)), dtype="f16"))

    # cast.
    def f2i(x, bits):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        out = []
        for e in x.reshape(-1):
            if math.isnan(e):
                out.append(0)
            elif math.isinf(e):
                out.append(hi if e > 0 else lo)
            else:
                out.append(min(max(int(math.trunc(e)), lo), hi))
        return np.array(out, dtype=object).reshape(x.shape)

    g = G("cast_f32_to_i32_truncates_saturates", atol=0.0, rtol=0.0)
    xv = g.inp("x", "f32", [1.5, -2.7, 0.9, -0.9, 2.5, -3.5, 1e10, -1e10, np.nan, np.inf, -np.inf, 123456.75])
    g.done(g.op("cast", [xv], {"to": DTy("i32")}, out=f2i(F(xv), 32), dtype="i32"))
    g = G("cast_f32_to_i64_saturates")
    xv = g.inp("x", "f32", [[1e19, -1e19, -7.99], [4.0e12, np.nan, 0.5]])
    g.done(g.op("cast", [xv], {"to": DTy("i64")}, out=f2i(F(xv), 64), dtype="i64"))
    g = G("cast_f32_to_f16", atol=0.0, rtol=0.0)
    xv = g.inp("x", "f32", [1.0 / 3.0, 65504.0, 65519.0, 65520.0, 1e5, -1e5, 1e-8, 3e-5, 6.1e-5, np.nan, -np.inf, -2.0009765625])
    g.done(g.op("cast", [xv], {"to": DTy("f16")}, out=F(xv), dtype="f16"))
    g = G("cast_f16_to_f32", atol=0.0, rtol=0.0)
    xv = g.inp("x", "f16", [0.1, -65504.0, 6e-8, np.inf, np.nan, 3.140625])
    g.done(g.op("cast", [xv], {"to": DTy("f32")}, out=F(xv), dtype="f32"))
    g = G("cast_i64_to_f32", atol=0.0, rtol=0.0)
    xv = g.inp("x", "i64", [[0, -3, 16777217, 16777219], [2**40 + 1, -(2**31), 2**53 + 1, -(2**63)]])
    # Exact integers rounded once to f32 (Python's int -> float -> f32 would
    # round twice; use exact rational rounding via numpy's direct cast).
    g.done(g.op("cast", [xv], {"to": DTy("f32")}, out=xv.arr.astype(np.float32), dtype="f32"))
    g = G("cast_i64_to_f32_single_rounding", atol=0.0, rtol=0.0)
    # 2^62 + 2^38 + 1 is just above the midpoint between two f32 values:
    # correctly rounded it is 2^62 + 2^39; rounding through f64 first
    # lands exactly on the midpoint and ties to 2^62.
    xv = g.inp("x", "i64", [2**62 + 2**38 + 1, -(2**62 + 2**38 + 1)])
    g.done(g.op("cast", [xv], {"to": DTy("f32")}, out=xv.arr.astype(np.float32), dtype="f32"))
    g = G("cast_f32_to_bool")
    xv = g.inp("x", "f32", [0.0, 1.5, -2.0, np.nan, -np.inf, 1e-40, 0.0, 1e-30])
    g.done(g.op("cast", [xv], {"to": DTy("bool")}, out=F(xv) != 0, dtype="bool"))
    g = G("cast_bool_to_f32")
    xv = g.inp("x", "bool", [[True, False], [False, True]])
    g.done(g.op("cast", [xv], {"to": DTy("f32")}, out=xv.arr.astype(np.float64), dtype="f32"))
    g = G("cast_i64_to_i32_wraps")
    xv = g.inp("x", "i64", [2**32 + 5, 2**31, -(2**31) - 1, -7, 123])
    g.done(g.op("cast", [xv], {"to": DTy("i32")}, out=I(xv), dtype="i32"))
    g = G("cast_i32_to_i64")
    xv = g.inp("x", "i32", [-(2**31), 2**31 - 1, 0, -5])
    g.done(g.op("cast", [xv], {"to": DTy("i64")}, out=I(xv), dtype="i64"))
    g = G("cast_i64_to_bool")
    xv = g.inp("x", "i64", [0, 1, -1, 2**40])
    g.done(g.op("cast", [xv], {"to": DTy("bool")}, out=I(xv) != 0, dtype="bool"))

    # Small floats: round to nearest even, saturating at the largest finite
    # value (infinities too), the ONNX `saturate = 1` rule; ml_dtypes does the
    # rounding of the clipped values.
    for d in SMALL_FLOAT:
        t = NP[d]
        top = float(ml_dtypes.finfo(t).max)
        g = G(f"cast_f32_to_{d}_rounds_and_saturates", atol=0.0, rtol=0.0)
        vals = list(g.unif(-top, top, 8)) + list(g.randn(8)) + [0.0, 1e-9, -1e-9, 1e6, -1e6, np.inf, -np.inf, top * 1.01]
        if d != "f4e2m1":
            vals.append(np.nan)
        xv = g.inp("x", "f32", vals)
        g.done(g.op("cast", [xv], {"to": DTy(d)}, out=np.clip(F(xv), -top, top), dtype=d))
        g = G(f"cast_{d}_to_f32", atol=0.0, rtol=0.0)
        xv = g.inp("x", d, np.clip(g.randn(12) * top / 4, -top, top))
        g.done(g.op("cast", [xv], {"to": DTy("f32")}, out=F(xv), dtype="f32"))
    g = G("cast_f32_to_f8e5m2_ties_to_even", atol=0.0, rtol=0.0)
    # 1.125 lies halfway between 1.0 and 1.25 (mantissa 00 | 01): to 1.0;
    # 1.375 halfway between 1.25 and 1.5: to 1.5.
    xv = g.inp("x", "f32", [1.125, 1.375, -1.125, 3.0e-5])
    g.done(g.op("cast", [xv], {"to": DTy("f8e5m2")}, out=F(xv), dtype="f8e5m2"))

    # bitcast: the same bits read as another dtype of the same width.
    g = G("bitcast_f32_to_i32", atol=0.0, rtol=0.0)
    xv = g.inp("x", "f32", [[1.0, -2.5, 0.0], [np.inf, 1e-40, -0.0]])
    g.done(g.op("bitcast", [xv], {"to": DTy("i32")}, out=xv.arr.view(np.int32), dtype="i32"))
    g = G("bitcast_i32_to_f32", atol=0.0, rtol=0.0)
    xv = g.inp("x", "i32", [1065353216, -1082130432, 1, 2139095040])
    g.done(g.op("bitcast", [xv], {"to": DTy("f32")}, out=xv.arr.view(np.float32), dtype="f32"))
    g = G("bitcast_i64_to_u64", atol=0.0, rtol=0.0)
    xv = g.inp("x", "i64", [-1, 5, -(2**63)])
    g.done(g.op("bitcast", [xv], {"to": DTy("u64")}, out=xv.arr.view(np.uint64), dtype="u64"))

    # u64 arithmetic is unsigned over the whole range.
    g = G("u64_arithmetic_and_compare")
    big = [2**64 - 1, 2**63, 7, 2**63 + 5]
    av = g.inp("a", "u64", big)
    bv = g.inp("b", "u64", [2, 3, 2**63, 1])
    a_, b_ = [int(x) for x in av.arr], [int(x) for x in bv.arr]
    obj = lambda v: np.array(v, dtype=object)
    s_ = g.op("add", [av, bv], out=obj([(x + y) % 2**64 for x, y in zip(a_, b_)]))
    q_ = g.op("div", [s_, bv], out=obj([((x + y) % 2**64) // y for x, y in zip(a_, b_)]))
    m_ = g.op("maximum", [q_, av], out=obj([max(((x + y) % 2**64) // y, x) for x, y in zip(a_, b_)]))
    g.done(m_, g.op("less", [av, bv], out=np.array([x < y for x, y in zip(a_, b_)]), dtype="bool"))


def reduce_cases():
    specs = [
        ("last_keepdims", [-1], True),
        ("last_nokeep", [-1], False),
        ("first", [0], False),
        ("multi_axes_keepdims", [0, 2], True),
        ("multi_neg_axes", [-3, -1], False),
        ("all_axes_empty_list", [], False),
        ("all_axes_empty_list_keepdims", [], True),
        ("middle_neg", [-2], True),
    ]
    for kind in ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min"]:
        for tag, axes, keep in specs:
            g = G(f"{kind}_{tag}")
            xv = g.inp("x", "f32", g.randn(2, 3, 4))
            y = g.op(kind, [xv], {"axes": axes, "keepdims": keep}, out=reduce_ref(kind, F(xv), axes, keep))
            g.done(y)
        g = G(f"{kind}_empty_axis")
        xv = g.inp("x", "f32", np.zeros((0, 3)))
        g.done(g.op(kind, [xv], {"axes": [0], "keepdims": False}, out=reduce_ref(kind, F(xv), [0], False)))
    for kind in ["reduce_max", "reduce_min", "reduce_sum"]:
        g = G(f"{kind}_nan_propagates")
        xv = g.inp("x", "f32", [[1.0, np.nan, 3.0], [-1.0, 5.0, np.inf]])
        with np.errstate(all="ignore"):
            g.done(g.op(kind, [xv], {"axes": [1], "keepdims": False}, out=reduce_ref(kind, F(xv), [1], False)))
    for kind in ["reduce_sum", "reduce_max", "reduce_min"]:
        g = G(f"{kind}_i64")
        xv = g.inp("x", "i64", [[[3, -9, 2**40], [7, 0, -1]], [[-(2**41), 5, 6], [1, 1, 1]]])
        g.done(g.op(kind, [xv], {"axes": [0, -1], "keepdims": False}, out=reduce_ref(kind, I(xv), [0, -1], False, True)))
        g = G(f"{kind}_i64_all_axes_keepdims")
        xv = g.inp("x", "i64", g.ints(-100, 100, 2, 3))
        g.done(g.op(kind, [xv], {"axes": [], "keepdims": True}, out=reduce_ref(kind, I(xv), [], True, True)))
    for kind in ["reduce_max", "reduce_min", "reduce_sum"]:
        g = G(f"{kind}_i64_empty_axis")
        xv = g.inp("x", "i64", np.zeros((2, 0), dtype=np.int64))
        g.done(g.op(kind, [xv], {"axes": [1], "keepdims": True}, out=reduce_ref(kind, I(xv), [1], True, True)))
    g = G("reduce_mean_f16")
    xv = g.inp("x", "f16", g.randn(3, 8, scale=4.0))
    g.done(g.op("reduce_mean", [xv], {"axes": [-1], "keepdims": True}, out=reduce_ref("reduce_mean", F(xv), [-1], True)))
    g = G("reduce_sum_f16_accumulates_wide")
    # 2100 ones sum to 2100 (representable in f16) when accumulated wide;
    # an f16 accumulator would stall at 2048.
    xv = g.inp("x", "f16", np.ones((1, 2100)))
    g.done(g.op("reduce_sum", [xv], {"axes": [1], "keepdims": False}, out=reduce_ref("reduce_sum", F(xv), [1], False)))

    # cumsum: running sums along one axis (numpy's cumsum is the definition)
    g = G("cumsum_last_axis")
    xv = g.inp("x", "f32", g.randn(2, 3, 5))
    g.done(g.op("cumsum", [xv], {"axis": -1}, out=np.cumsum(F(xv), axis=-1)))
    g = G("cumsum_axis0_f16")
    xv = g.inp("x", "f16", g.randn(4, 3))
    g.done(g.op("cumsum", [xv], {"axis": 0}, out=np.cumsum(F(xv), axis=0)))
    g = G("cumsum_i64_middle_axis")
    xv = g.inp("x", "i64", g.ints(-100, 100, 2, 4, 3))
    g.done(g.op("cumsum", [xv], {"axis": 1}, out=np.cumsum(I(xv), axis=1)))
    g = G("cumsum_empty_axis")
    xv = g.inp("x", "f32", np.zeros((2, 0)))
    g.done(g.op("cumsum", [xv], {"axis": 1}, out=np.zeros((2, 0))))

    # argmax
    g = G("argmax_last_axis")
    xv = g.inp("x", "f32", g.randn(3, 5))
    g.done(g.op("argmax", [xv], {"axis": -1, "keepdims": False}, out=argmax_ref(F(xv), -1, False), dtype="i64"))
    g = G("argmax_axis0_keepdims")
    xv = g.inp("x", "f32", g.randn(4, 2, 3))
    g.done(g.op("argmax", [xv], {"axis": 0, "keepdims": True}, out=argmax_ref(F(xv), 0, True), dtype="i64"))
    g = G("argmax_middle_neg_axis")
    xv = g.inp("x", "f32", g.randn(2, 4, 3))
    g.done(g.op("argmax", [xv], {"axis": -2}, out=argmax_ref(F(xv), -2, False), dtype="i64"))
    g = G("argmax_ties_first_and_nan_largest")
    xv = g.inp("x", "f32", [[1.0, 3.0, 3.0, 2.0], [1.0, np.nan, 5.0, np.nan], [-np.inf, -np.inf, -np.inf, -np.inf], [2.0, np.inf, np.inf, 0.0]])
    g.done(g.op("argmax", [xv], {"axis": 1, "keepdims": False}, out=argmax_ref(F(xv), 1, False), dtype="i64"))
    g = G("argmax_i64")
    xv = g.inp("x", "i64", [[5, -2, 9, 9], [-(2**60), -(2**61), 0, 0]])
    g.done(g.op("argmax", [xv], {"axis": -1, "keepdims": False}, out=argmax_ref(F(xv), -1, False), dtype="i64"))


def softmax_cases():
    for log in [False, True]:
        op = "log_softmax" if log else "softmax"
        g = G(f"{op}_last_axis")
        xv = g.inp("x", "f32", g.randn(2, 3, 5, scale=2.0))
        g.done(g.op(op, [xv], {"axis": -1}, out=softmax_ref(F(xv), -1, log)))
        g = G(f"{op}_axis1_of_3d")
        xv = g.inp("x", "f32", g.randn(2, 4, 3))
        g.done(g.op(op, [xv], {"axis": 1}, out=softmax_ref(F(xv), 1, log)))
        g = G(f"{op}_large_inputs_stable")
        xv = g.inp("x", "f32", [[1000.0, 999.0, 998.0, 1000.0], [-1000.0, -1001.0, -999.0, -1000.5], [1000.0, -1000.0, 0.0, 500.0]])
        g.done(g.op(op, [xv], {"axis": -1}, out=softmax_ref(F(xv), -1, log)))
        g = G(f"{op}_with_neg_inf")
        xv = g.inp("x", "f32", [[0.5, -np.inf, 1.5, -np.inf], [-np.inf, 2.0, -np.inf, -np.inf]])
        g.done(g.op(op, [xv], {"axis": -1}, out=softmax_ref(F(xv), -1, log)))
        g = G(f"{op}_f16")
        xv = g.inp("x", "f16", g.randn(3, 6, scale=3.0))
        g.done(g.op(op, [xv], {"axis": -1}, out=softmax_ref(F(xv), -1, log)))


def linalg_cases():
    def mm(name, sa, sb, dtype="f32"):
        g = G(name)
        if dtype == "i64":
            av, bv = g.inp("a", dtype, g.ints(-9, 9, *sa)), g.inp("b", dtype, g.ints(-9, 9, *sb))
            g.done(g.op("matmul", [av, bv], out=np.matmul(I(av), I(bv)) if (len(sa) > 1 or len(sb) > 1) else np.array(np.dot(I(av), I(bv)), dtype=object)))
        else:
            av, bv = g.inp("a", dtype, g.randn(*sa)), g.inp("b", dtype, g.randn(*sb))
            g.done(g.op("matmul", [av, bv], out=np.matmul(F(av), F(bv))))

    mm("matmul_2d", (3, 4), (4, 5))
    mm("matmul_batched_broadcast", (2, 1, 3, 4), (3, 4, 5))
    mm("matmul_batched_same", (2, 3, 4), (2, 4, 2))
    mm("matmul_batch_size1_broadcast", (1, 2, 3), (4, 3, 2))
    mm("matmul_1d_by_2d", (4,), (4, 5))
    mm("matmul_2d_by_1d", (3, 4), (4,))
    mm("matmul_1d_by_1d", (4,), (4,))
    mm("matmul_1d_by_3d", (4,), (2, 4, 5))
    mm("matmul_3d_by_1d", (2, 3, 4), (4,))
    mm("matmul_inner_zero", (2, 0), (0, 3))
    mm("matmul_i64_batched", (2, 2, 3), (3, 2), "i64")
    mm("matmul_i64_1d_by_1d", (5,), (5,), "i64")
    mm("matmul_f16", (3, 8), (8, 2), "f16")
    g = G("matmul_zero_times_inf_is_nan")
    av = g.inp("a", "f32", [[0.0, 1.0], [2.0, 0.0]])
    bv = g.inp("b", "f32", [[np.inf, 1.0], [2.0, 3.0]])
    with np.errstate(all="ignore"):
        g.done(g.op("matmul", [av, bv], out=np.matmul(F(av), F(bv))))

    g = G("linear_with_bias")
    xv, wv, bv = g.inp("x", "f32", g.randn(2, 3, 4)), g.inp("w", "f32", g.randn(5, 4)), g.inp("b", "f32", g.randn(5))
    g.done(g.op("linear", [xv, wv, bv], out=linear_ref(F(xv), F(wv), F(bv))))
    g = G("linear_no_bias")
    xv, wv = g.inp("x", "f32", g.randn(3, 6)), g.inp("w", "f32", g.randn(2, 6))
    g.done(g.op("linear", [xv, wv], out=linear_ref(F(xv), F(wv))))
    g = G("linear_1d_input")
    xv, wv, bv = g.inp("x", "f32", g.randn(4)), g.inp("w", "f32", g.randn(3, 4)), g.inp("b", "f32", g.randn(3))
    g.done(g.op("linear", [xv, wv, bv], out=linear_ref(F(xv), F(wv), F(bv))))
    g = G("linear_f16_with_bias")
    xv, wv, bv = g.inp("x", "f16", g.randn(2, 8)), g.inp("w", "f16", g.randn(3, 8)), g.inp("b", "f16", g.randn(3))
    g.done(g.op("linear", [xv, wv, bv], out=linear_ref(F(xv), F(wv), F(bv))))


def shape_cases():
    g = G("reshape_3d_to_2d")
    xv = g.inp("x", "f32", g.randn(2, 3, 4))
    g.done(g.op("reshape", [xv], {"shape": [4, 6]}, out=F(xv).reshape(4, 6)))
    g = G("reshape_to_scalar")
    xv = g.inp("x", "i64", [[42]])
    g.done(g.op("reshape", [xv], {"shape": []}, out=I(xv).reshape(())))
    g = G("reshape_zero_size")
    xv = g.inp("x", "f32", np.zeros((0, 4)))
    g.done(g.op("reshape", [xv], {"shape": [2, 0, 3]}, out=F(xv).reshape(2, 0, 3)))

    for tag, perm in [("swap_last_two", [0, 2, 1]), ("rotate", [1, 2, 0]), ("neg_perm", [-1, 0, 1])]:
        g = G(f"transpose_{tag}")
        xv = g.inp("x", "f32", g.randn(2, 3, 4))
        g.done(g.op("transpose", [xv], {"perm": perm}, out=np.transpose(F(xv), perm)))
    g = G("transpose_4d_bool")
    xv = g.inp("x", "bool", g.rng.integers(0, 2, (2, 1, 3, 2)))
    g.done(g.op("transpose", [xv], {"perm": [3, 0, 2, 1]}, out=np.transpose(xv.arr, [3, 0, 2, 1])))

    for tag, axes in [("front_and_middle", [0, 2]), ("neg_last", [-1]), ("first_and_last", [0, -1])]:
        g = G(f"unsqueeze_{tag}")
        xv = g.inp("x", "f32", g.randn(3, 4))
        g.done(g.op("unsqueeze", [xv], {"axes": axes}, out=np.expand_dims(F(xv), tuple(axes))))
    g = G("unsqueeze_scalar")
    xv = g.inp("x", "f32", np.array(2.5))
    g.done(g.op("unsqueeze", [xv], {"axes": [0]}, out=F(xv).reshape(1)))
    for tag, shape, axes in [("middle", (3, 1, 4), [1]), ("neg", (3, 4, 1), [-1]), ("multi", (1, 3, 1, 2), [0, -2]), ("to_scalar", (1, 1), [0, 1])]:
        g = G(f"squeeze_{tag}")
        xv = g.inp("x", "f32", g.randn(*shape))
        g.done(g.op("squeeze", [xv], {"axes": axes}, out=np.squeeze(F(xv), tuple(axes))))

    g = G("expand_add_leading_and_size1")
    xv = g.inp("x", "f32", g.randn(3, 1))
    g.done(g.op("expand", [xv], {"shape": [2, 3, 4]}, out=np.broadcast_to(F(xv), (2, 3, 4))))
    g = G("expand_same_shape_i64")
    xv = g.inp("x", "i64", [[1, 2], [3, 4]])
    g.done(g.op("expand", [xv], {"shape": [2, 2]}, out=I(xv)))
    g = G("expand_to_zero")
    xv = g.inp("x", "f32", g.randn(1, 3))
    g.done(g.op("expand", [xv], {"shape": [0, 3]}, out=np.broadcast_to(F(xv), (0, 3))))

    for upper in [True, False]:
        op = "triu" if upper else "tril"
        for k in [0, 1, -1, 2]:
            g = G(f"{op}_k{k}".replace("-", "neg"))
            xv = g.inp("x", "f32", g.randn(2, 3, 4))
            g.done(g.op(op, [xv], {"k": k}, out=tri_ref(F(xv), k, upper)))
        g = G(f"{op}_default_k_tall")
        xv = g.inp("x", "f32", g.randn(5, 3))
        g.done(g.op(op, [xv], out=tri_ref(F(xv), 0, upper)))
        g = G(f"{op}_i64")
        xv = g.inp("x", "i64", g.ints(-9, 9, 3, 3))
        g.done(g.op(op, [xv], {"k": 0}, out=tri_ref(I(xv), 0, upper)))
    g = G("triu_of_neg_inf_mask")
    xv = g.inp("x", "f32", np.full((4, 4), -np.inf))
    g.done(g.op("triu", [xv], {"k": 1}, out=tri_ref(F(xv), 1, True)))


def indexing_cases():
    specs = [
        ("pos_start_end", 0, 1, 3, 1, (5, 3)),
        ("neg_start", 0, -2, None, 1, (5, 3)),
        ("neg_start_neg_end", 1, -4, -1, 1, (2, 6)),
        ("step2", 1, 0, None, 2, (2, 7)),
        ("step2_offset_end", -1, 1, 6, 2, (2, 7)),
        ("neg_step_full_reverse", 0, -1, None, -1, (5, 2)),
        ("neg_step2_bounds", 1, 5, 0, -2, (2, 7)),
        ("neg_step_neg_bounds", 1, -2, -6, -1, (2, 7)),
        ("clamp_end_past_extent", 0, 2, 100, 1, (4, 2)),
        ("clamp_start_before_zero", 0, -100, 2, 1, (4, 2)),
        ("empty_start_after_end", 0, 3, 1, 1, (4, 2)),
        ("start_past_extent", 0, 10, None, 1, (4, 2)),
        ("neg_step_start_past_extent", 0, 10, None, -3, (7, 1)),
        ("middle_axis", 1, 1, 3, 1, (2, 4, 3)),
    ]
    for tag, axis, start, end, step, shape in specs:
        g = G(f"slice_{tag}")
        xv = g.inp("x", "f32", g.randn(*shape))
        attrs = {"axis": axis, "start": start}
        if end is not None:
            attrs["end"] = end
        attrs["step"] = step
        g.done(g.op("slice", [xv], attrs, out=slice_ref(F(xv), axis, start, end, step)))
    g = G("slice_default_start_and_step")
    xv = g.inp("x", "i64", [[1, 2, 3], [4, 5, 6]])
    g.done(g.op("slice", [xv], {"axis": 1, "end": 2}, out=slice_ref(I(xv), 1, 0, 2, 1)))

    g = G("concat_axis1_three")
    a, b, c = g.inp("a", "f32", g.randn(2, 1, 3)), g.inp("b", "f32", g.randn(2, 2, 3)), g.inp("c", "f32", g.randn(2, 3, 3))
    g.done(g.op("concat", [a, b, c], {"axis": 1}, out=np.concatenate([F(a), F(b), F(c)], axis=1)))
    g = G("concat_neg_axis_with_empty")
    a, b = g.inp("a", "f32", g.randn(2, 3)), g.inp("b", "f32", np.zeros((2, 0)))
    g.done(g.op("concat", [a, b, a], {"axis": -1}, out=np.concatenate([F(a), F(b), F(a)], axis=-1)))
    g = G("concat_i64_axis0")
    a, b = g.inp("a", "i64", [[1, 2]]), g.inp("b", "i64", [[3, 4], [5, 6]])
    g.done(g.op("concat", [a, b], {"axis": 0}, out=np.concatenate([I(a), I(b)], axis=0)))
    g = G("concat_single_operand")
    a = g.inp("a", "f32", g.randn(3))
    g.done(g.op("concat", [a], {"axis": 0}, out=F(a)))

    g = G("split_last_axis")
    xv = g.inp("x", "f32", g.randn(2, 3))
    y = g.op("split", [xv], {"axis": -1, "sizes": [2, 1]}, out=[F(xv)[:, :2], F(xv)[:, 2:]])
    g.done(*y)
    g = G("split_axis0_three_with_zero")
    xv = g.inp("x", "f32", g.randn(4, 2))
    x = F(xv)
    y = g.op("split", [xv], {"axis": 0, "sizes": [1, 0, 3]}, out=[x[:1], x[1:1], x[1:]])
    g.done(*y)
    g = G("split_i64_middle")
    xv = g.inp("x", "i64", g.ints(-9, 9, 2, 5, 2))
    x = I(xv)
    g.done(*g.op("split", [xv], {"axis": 1, "sizes": [3, 2]}, out=[x[:, :3], x[:, 3:]]))

    g = G("gather_axis0_negative_indices")
    dv, iv = g.inp("data", "f32", g.randn(4, 3)), g.inp("idx", "i64", [[0, -1], [-4, 2]])
    g.done(g.op("gather", [dv, iv], {"axis": 0}, out=take_ref(F(dv), iv.arr, 0)))
    g = G("gather_axis1_i32_indices")
    dv, iv = g.inp("data", "f32", g.randn(2, 5, 2)), g.inp("idx", "i32", [4, -2, 0, 0])
    g.done(g.op("gather", [dv, iv], {"axis": 1}, out=take_ref(F(dv), iv.arr, 1)))
    g = G("gather_scalar_index_neg_axis")
    dv, iv = g.inp("data", "f32", g.randn(3, 4)), g.inp("idx", "i64", np.array(-1))
    g.done(g.op("gather", [dv, iv], {"axis": -1}, out=take_ref(F(dv), iv.arr, -1)))
    g = G("gather_i64_data")
    dv, iv = g.inp("data", "i64", [10, 20, 30, 40, 50]), g.inp("idx", "i64", [[4, 0, -5]])
    g.done(g.op("gather", [dv, iv], {"axis": 0}, out=take_ref(I(dv), iv.arr, 0)))

    g = G("index_select_axis1_repeats")
    dv, iv = g.inp("data", "f32", g.randn(2, 4, 3)), g.inp("idx", "i64", [2, 0, 0, 3, 1])
    g.done(g.op("index_select", [dv, iv], {"axis": 1}, out=take_ref(F(dv), iv.arr, 1)))
    g = G("index_select_neg_axis_i32")
    dv, iv = g.inp("data", "f32", g.randn(3, 4)), g.inp("idx", "i32", [3, 1])
    g.done(g.op("index_select", [dv, iv], {"axis": -1}, out=take_ref(F(dv), iv.arr, -1)))
    g = G("index_select_empty_indices")
    dv, iv = g.inp("data", "f32", g.randn(3, 2)), g.inp("idx", "i64", np.zeros(0, dtype=np.int64))
    g.done(g.op("index_select", [dv, iv], {"axis": 0}, out=take_ref(F(dv), iv.arr, 0)))

    g = G("embedding_i64_ids")
    wv, iv = g.inp("w", "f32", g.randn(5, 3)), g.inp("ids", "i64", [[0, 4], [2, 2]])
    g.done(g.op("embedding", [wv, iv], out=F(wv)[iv.arr]))
    g = G("embedding_i32_ids_1d")
    wv, iv = g.inp("w", "f32", g.randn(6, 4)), g.inp("ids", "i32", [5, 1, 0])
    g.done(g.op("embedding", [wv, iv], out=F(wv)[iv.arr]))
    g = G("embedding_f16_scalar_id")
    wv, iv = g.inp("w", "f16", g.randn(4, 3)), g.inp("ids", "i64", np.array(3))
    g.done(g.op("embedding", [wv, iv], out=F(wv)[iv.arr]))


def scatter_gather_cases():
    g = G("gather_elements_axis1_negative")
    dv, iv = g.inp("data", "f32", g.randn(3, 4)), g.inp("idx", "i64", [[0, -1], [3, 2], [-4, 1]])
    g.done(g.op("gather_elements", [dv, iv], {"axis": 1}, out=gather_elements_ref(F(dv), iv.arr, 1)))
    g = G("gather_elements_axis0_smaller_i32")
    dv, iv = g.inp("data", "i64", g.ints(-9, 9, 4, 3)), g.inp("idx", "i32", [[3, 0], [1, 1]])
    g.done(g.op("gather_elements", [dv, iv], {"axis": 0}, out=gather_elements_ref(I(dv), iv.arr, 0)))
    g = G("gather_elements_3d_neg_axis")
    dv = g.inp("data", "f16", g.randn(2, 3, 4))
    iv = g.inp("idx", "i64", g.ints(-3, 2, 2, 5, 3))
    g.done(g.op("gather_elements", [dv, iv], {"axis": -2}, out=gather_elements_ref(F(dv), iv.arr, -2)))

    g = G("scatter_elements_none_duplicates")
    dv, iv = g.inp("data", "f32", g.randn(3, 3)), g.inp("idx", "i64", [[1, 1], [0, -1], [2, 2]])
    uv = g.inp("upd", "f32", g.randn(3, 2))
    attrs = {"axis": 1, "reduction": "none"}
    out = scatter_elements_ref(F(dv), iv.arr, F(uv), 1, "none")
    g.done(g.op("scatter_elements", [dv, iv, uv], attrs, out=out))
    for red in ["add", "mul", "max", "min"]:
        g = G(f"scatter_elements_{red}_axis0")
        dv, iv = g.inp("data", "f32", g.randn(4, 2)), g.inp("idx", "i32", [[0, 3], [0, -4], [2, 3]])
        uv = g.inp("upd", "f32", g.randn(3, 2))
        out = scatter_elements_ref(F(dv), iv.arr, F(uv), 0, red)
        g.done(g.op("scatter_elements", [dv, iv, uv], {"axis": 0, "reduction": red}, out=out))
    g = G("scatter_elements_i64_add_wraps")
    dv = g.inp("data", "i64", [2**62, 5, -7])
    iv, uv = g.inp("idx", "i64", [0, 0, 2]), g.inp("upd", "i64", [2**62, 2**62, 3])
    out = scatter_elements_ref(I(dv), iv.arr, I(uv), 0, "add")
    g.done(g.op("scatter_elements", [dv, iv, uv], {"axis": 0, "reduction": "add"}, out=out))

    g = G("topk_largest_ties_nan")
    xv = g.inp("x", "f32", [[1.0, 3.0, 3.0, np.nan, -1.0], [2.0, 2.0, 2.0, 0.0, 5.0]])
    v, i = topk_ref(F(xv), -1, 3, True)
    attrs = {"axis": -1, "k": 3, "largest": True, "sorted": True}
    g.done(*g.op("topk", [xv], attrs, out=[v, i], dtype=["f32", "i64"]))
    g = G("topk_smallest_axis0_i32")
    xv = g.inp("x", "i32", g.ints(-3, 3, 5, 3))
    v, i = topk_ref(I(xv), 0, 2, False)
    attrs = {"axis": 0, "k": 2, "largest": False, "sorted": True}
    g.done(*g.op("topk", [xv], attrs, out=[v, i], dtype=["i32", "i64"]))
    g = G("topk_k0_middle_axis")
    xv = g.inp("x", "f32", g.randn(2, 3, 2))
    v, i = topk_ref(F(xv), 1, 0, True)
    attrs = {"axis": 1, "k": 0, "largest": True, "sorted": True}
    g.done(*g.op("topk", [xv], attrs, out=[v, i], dtype=["f32", "i64"]))

    g = G("cumprod_last_axis")
    xv = g.inp("x", "f32", g.unif(0.5, 1.5, 2, 5))
    g.done(g.op("cumprod", [xv], {"axis": -1}, out=np.cumprod(F(xv), axis=-1)))
    g = G("cumprod_i64_axis0_zero")
    xv = g.inp("x", "i64", [[2, -3], [0, 4], [5, 6]])
    g.done(g.op("cumprod", [xv], {"axis": 0}, out=np.cumprod(I(xv), axis=0)))


def creation_cases():
    def ar(name, start, end, step, dtype):
        g = G(name)
        vals = list(range(start, end, step))
        attrs = {"start": start, "end": end, "step": step, "dtype": DTy(dtype)}
        out = np.array(vals, dtype=np.float64) if dtype in FLOAT else np.array(vals, dtype=object)
        g.done(g.op("arange", [], attrs, out=out, dtype=dtype))

    ar("arange_i64_basic", 0, 5, 1, "i64")
    ar("arange_i64_step3", 2, 11, 3, "i64")
    ar("arange_i64_neg_step", 5, -3, -2, "i64")
    ar("arange_i32_empty", 4, 4, 1, "i32")
    ar("arange_i64_empty_wrong_direction", 0, 5, -1, "i64")
    ar("arange_f32", -3, 4, 2, "f32")
    g = G("arange_default_step")
    g.done(g.op("arange", [], {"start": 3, "end": 6, "dtype": DTy("i64")}, out=np.arange(3, 6).astype(object), dtype="i64"))

    g = G("full_f32")
    g.done(g.op("full", [], {"shape": [2, 3], "value": 1.5, "dtype": DTy("f32")}, out=np.full((2, 3), 1.5), dtype="f32"))
    g = G("full_neg_inf")
    g.done(g.op("full", [], {"shape": [3], "value": -np.inf, "dtype": DTy("f32")}, out=np.full(3, -np.inf), dtype="f32"))
    g = G("full_i64_int_value")
    g.done(g.op("full", [], {"shape": [2, 2], "value": -(2**40) - 3, "dtype": DTy("i64")}, out=np.full((2, 2), -(2**40) - 3, dtype=object), dtype="i64"))
    g = G("full_f32_int_value")
    g.done(g.op("full", [], {"shape": [2], "value": 7, "dtype": DTy("f32")}, out=np.full(2, 7.0), dtype="f32"))
    g = G("full_scalar_f16_rounds")
    g.done(g.op("full", [], {"shape": [], "value": 0.1, "dtype": DTy("f16")}, out=np.array(0.1), dtype="f16"))
    g = G("full_bool")
    g.done(g.op("full", [], {"shape": [2, 1], "value": 1, "dtype": DTy("bool")}, out=np.ones((2, 1), bool), dtype="bool"))
    g = G("full_zero_size")
    g.done(g.op("full", [], {"shape": [0, 2], "value": 2.0, "dtype": DTy("f32")}, out=np.zeros((0, 2)), dtype="f32"))

    g = G("constant_f32_2d")
    g.done(g.const("f32", g.randn(2, 3)))
    g = G("constant_i64_negatives")
    g.done(g.const("i64", [[-3, 0], [2**40, -(2**50)]]))
    g = G("constant_scalar_f32")
    g.done(g.const("f32", np.array(0.1)))
    g = G("constant_special_values")
    g.done(g.const("f32", [np.nan, np.inf, -np.inf, 1e-5, -2.5, 3e38]))
    g = G("constant_bool")
    g.done(g.const("bool", [True, False, True]))
    g = G("constant_f16")
    g.done(g.const("f16", [0.1, -65504.0, 1e-4]))
    g = G("constant_used_by_add")
    xv = g.inp("x", "f32", g.randn(2, 3))
    c = g.const("f32", [[1.0, -2.0, 0.5]])
    g.done(g.op("add", [xv, c], out=F(xv) + F(c)))


def nn_cases():
    g = G("add_rms_norm_f32")
    xv, rv, wv = g.inp("x", "f32", g.randn(2, 3, 8)), g.inp("r", "f32", g.randn(2, 3, 8)), g.inp("w", "f32", g.randn(8))
    s = rnd(F(xv) + F(rv), "f32")
    g.done(*g.op("add_rms_norm", [xv, rv, wv], {"eps": 1e-6}, out=[s, rms_norm_ref(s.astype(np.float64), -1, 1e-6, F(wv))]))
    g = G("swiglu_f32")
    gv, uv = g.inp("gate", "f32", g.randn(2, 3, 8, scale=3.0)), g.inp("up", "f32", g.randn(2, 3, 8))
    gf = F(gv)
    g.done(g.op("swiglu", [gv, uv], out=gf / (1.0 + np.exp(-gf)) * F(uv)))
    g = G("layer_norm_scale_bias")
    xv, sv, bv = g.inp("x", "f32", g.randn(2, 3, 8, scale=3.0) + 1.0), g.inp("scale", "f32", g.randn(8)), g.inp("bias", "f32", g.randn(8))
    g.done(g.op("layer_norm", [xv, sv, bv], {"axis": -1, "eps": 1e-5}, out=layer_norm_ref(F(xv), -1, 1e-5, F(sv), F(bv))))
    g = G("layer_norm_no_affine")
    xv = g.inp("x", "f32", g.randn(3, 6))
    g.done(g.op("layer_norm", [xv], {"eps": 1e-6}, out=layer_norm_ref(F(xv), -1, 1e-6)))
    g = G("layer_norm_scale_only")
    xv, sv = g.inp("x", "f32", g.randn(2, 5)), g.inp("scale", "f32", g.randn(5))
    g.done(g.op("layer_norm", [xv, sv], {"axis": 1, "eps": 1e-5}, out=layer_norm_ref(F(xv), 1, 1e-5, F(sv))))
    g = G("layer_norm_two_trailing_axes")
    xv, sv, bv = g.inp("x", "f32", g.randn(2, 3, 4)), g.inp("scale", "f32", g.randn(3, 4)), g.inp("bias", "f32", g.randn(3, 4))
    g.done(g.op("layer_norm", [xv, sv, bv], {"axis": 1, "eps": 1e-5}, out=layer_norm_ref(F(xv), 1, 1e-5, F(sv), F(bv))))
    g = G("layer_norm_constant_row_big_eps")
    xv = g.inp("x", "f32", [[2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    g.done(g.op("layer_norm", [xv], {"axis": -1, "eps": 0.5}, out=layer_norm_ref(F(xv), -1, 0.5)))
    g = G("layer_norm_f16")
    xv, sv, bv = g.inp("x", "f16", g.randn(2, 16)), g.inp("scale", "f16", g.randn(16)), g.inp("bias", "f16", g.randn(16))
    g.done(g.op("layer_norm", [xv, sv, bv], {"axis": -1, "eps": 1e-5}, out=layer_norm_ref(F(xv), -1, 1e-5, F(sv), F(bv))))

    g = G("rms_norm_weight")
    xv, wv = g.inp("x", "f32", g.randn(2, 3, 8)), g.inp("w", "f32", g.randn(8))
    g.done(g.op("rms_norm", [xv, wv], {"axis": -1, "eps": 1e-6}, out=rms_norm_ref(F(xv), -1, 1e-6, F(wv))))
    g = G("rms_norm_no_weight_default_axis")
    xv = g.inp("x", "f32", g.randn(4, 5))
    g.done(g.op("rms_norm", [xv], {"eps": 1e-5}, out=rms_norm_ref(F(xv), -1, 1e-5)))
    g = G("rms_norm_two_trailing_axes")
    xv, wv = g.inp("x", "f32", g.randn(2, 3, 4)), g.inp("w", "f32", g.randn(3, 4))
    g.done(g.op("rms_norm", [xv, wv], {"axis": -2, "eps": 1e-5}, out=rms_norm_ref(F(xv), -2, 1e-5, F(wv))))
    g = G("rms_norm_zeros_big_eps")
    xv = g.inp("x", "f32", [[0.0, 0.0, 0.0], [3.0, -4.0, 0.0]])
    g.done(g.op("rms_norm", [xv], {"axis": -1, "eps": 1.0}, out=rms_norm_ref(F(xv), -1, 1.0)))
    g = G("rms_norm_f16")
    xv, wv = g.inp("x", "f16", g.randn(3, 16, scale=4.0)), g.inp("w", "f16", g.randn(16))
    g.done(g.op("rms_norm", [xv, wv], {"axis": -1, "eps": 1e-5}, out=rms_norm_ref(F(xv), -1, 1e-5, F(wv))))

    def tables(g, s, r, lead=()):
        inv = 1.0 / (10000.0 ** (np.arange(0, r, 2) / r))
        ang = np.arange(s)[:, None] * inv[None, :] + g.unif(0, 0.1, s, r // 2)
        ang = np.concatenate([ang, ang], axis=-1)  # duplicated HF layout
        return np.cos(ang).reshape(lead + (s, r)), np.sin(ang).reshape(lead + (s, r))

    for inter in [False, True]:
        tag = "interleaved" if inter else "rotate_half"
        g = G(f"rope_{tag}")
        c, s = tables(g, 3, 8, (1, 1))
        xv, cv, sv = g.inp("x", "f32", g.randn(2, 2, 3, 8)), g.inp("cos", "f32", c), g.inp("sin", "f32", s)
        g.done(g.op("rope", [xv, cv, sv], {"interleaved": inter}, out=rope_ref(F(xv), F(cv), F(sv), inter)))
        g = G(f"rope_{tag}_partial_rotary")
        c, s = tables(g, 3, 4)
        xv, cv, sv = g.inp("x", "f32", g.randn(1, 2, 3, 8)), g.inp("cos", "f32", c), g.inp("sin", "f32", s)
        g.done(g.op("rope", [xv, cv, sv], {"interleaved": inter}, out=rope_ref(F(xv), F(cv), F(sv), inter)))
    g = G("rope_default_attr_random_tables")
    # Arbitrary (non-duplicated) tables so every channel's cos/sin matters.
    xv, cv, sv = g.inp("x", "f32", g.randn(2, 4, 6)), g.inp("cos", "f32", g.randn(4, 6)), g.inp("sin", "f32", g.randn(4, 6))
    g.done(g.op("rope", [xv, cv, sv], out=rope_ref(F(xv), F(cv), F(sv), False)))
    g = G("rope_interleaved_partial_random_tables")
    xv, cv, sv = g.inp("x", "f32", g.randn(2, 3, 10)), g.inp("cos", "f32", g.randn(2, 1, 6)), g.inp("sin", "f32", g.randn(2, 1, 6))
    g.done(g.op("rope", [xv, cv, sv], {"interleaved": True}, out=rope_ref(F(xv), F(cv), F(sv), True)))
    g = G("rope_f16")
    c, s = tables(g, 4, 8)
    xv, cv, sv = g.inp("x", "f16", g.randn(2, 4, 8)), g.inp("cos", "f16", c), g.inp("sin", "f16", s)
    g.done(g.op("rope", [xv, cv, sv], {"interleaved": False}, out=rope_ref(F(xv), F(cv), F(sv), False)))


def attention_cases():
    def att(name, qs, ks, vs, causal=None, scale=None, mask=None, dtype="f32"):
        g = G(name)
        qv, kv, vv = g.inp("q", dtype, g.randn(*qs)), g.inp("k", dtype, g.randn(*ks)), g.inp("v", dtype, g.randn(*vs))
        args = [qv, kv, vv]
        mref = None
        if mask is not None:
            mdt, mdata = mask(g)
            mv = g.inp("mask", mdt, mdata)
            args.append(mv)
            mref = mv.arr if mdt == "bool" else F(mv)
        attrs = {}
        if causal is not None:
            attrs["causal"] = causal
        if scale is not None:
            attrs["scale"] = scale
        out = sdpa_ref(F(qv), F(kv), F(vv), mref, bool(causal), scale)
        g.done(g.op("scaled_dot_product_attention", args, attrs or None, out=out))

    att("sdpa_basic_noncausal", (1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4), causal=False)
    att("sdpa_default_attrs_rank3", (2, 3, 4), (2, 5, 4), (2, 5, 3))
    att("sdpa_causal_square", (2, 2, 4, 4), (2, 2, 4, 4), (2, 2, 4, 4), causal=True)
    att("sdpa_causal_decode_step", (1, 2, 1, 4), (1, 2, 6, 4), (1, 2, 6, 4), causal=True)
    att("sdpa_causal_sq_gt_sk_zero_rows", (1, 1, 4, 4), (1, 1, 2, 4), (1, 1, 2, 4), causal=True)
    att("sdpa_gqa_causal", (1, 4, 3, 8), (1, 2, 5, 8), (1, 2, 5, 8), causal=True)
    att("sdpa_gqa_noncausal_dv_differs", (2, 4, 3, 4), (2, 2, 5, 4), (2, 2, 5, 6), causal=False)

    def additive(g):
        m = g.randn(1, 1, 3, 5)
        m[0, 0, 1, 2] = -np.inf
        return "f32", m

    att("sdpa_gqa_causal_additive_mask_scale", (1, 4, 3, 8), (1, 2, 5, 8), (1, 2, 5, 8), causal=True, scale=0.3, mask=additive)
    att("sdpa_gqa_causal_additive_mask", (1, 4, 3, 8), (1, 2, 5, 8), (1, 2, 5, 8), causal=True, mask=additive)
    att("sdpa_gqa_explicit_scale", (1, 4, 3, 8), (1, 2, 5, 8), (1, 2, 5, 8), causal=True, scale=0.125)

    def per_head(g):
        return "f32", g.randn(4, 3, 5)

    att("sdpa_gqa_mask_per_head", (2, 4, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4), causal=False, mask=per_head)

    # paged_attention: sequence 0 has 3 cached tokens and 2 new ones, sequence
    # 1 one decode token after 4 cached; blocks of 2 slots, out of order; the
    # cached tokens' k/v are whatever the cache holds.
    def paged(name, attrs, scale=None, window=None):
        g = G(name)
        qv = g.inp("q", "f32", g.randn(3, 4, 4))
        kv = g.inp("k", "f32", g.randn(3, 2, 4))
        vv = g.inp("v", "f32", g.randn(3, 2, 3))
        kcv = g.inp("k_cache", "f32", g.randn(6, 2, 2, 4))
        vcv = g.inp("v_cache", "f32", g.randn(6, 2, 2, 3))
        meta = {
            "positions": np.array([3, 4, 4]),
            "seq_starts": np.array([0, 2, 3]),
            "context_lens": np.array([5, 5]),
            "block_tables": np.array([[4, 0, 2], [1, 5, 3]]),
            "slot_mapping": np.array([1, 4, 6]),
        }
        mv = [g.inp(n, "i64", a) for n, a in meta.items()]
        out = paged_ref(F(qv), F(kv), F(vv), F(kcv), F(vcv), *meta.values(), scale=scale, window=window)
        res = g.op("paged_attention", [qv, kv, vv, kcv, vcv, *mv], attrs or None, out=list(out), dtype=["f32"] * 3)
        g.done(*res)

    paged("paged_attention_prefill_and_decode", {})
    paged("paged_attention_window_scale", {"scale": 0.4, "window": 2}, scale=0.4, window=2)

    def boolean(g):
        m = g.rng.random((1, 3, 5)) < 0.6
        m[:, 0, :] = False  # query 0 sees nothing: zeros
        m[:, 1, 4] = True
        return "bool", m

    att("sdpa_bool_mask_fully_masked_row", (2, 2, 3, 4), (2, 1, 5, 4), (2, 1, 5, 4), causal=False, mask=boolean)
    att("sdpa_bool_mask_causal", (1, 2, 3, 4), (1, 1, 5, 4), (1, 1, 5, 4), causal=True, mask=boolean)

    def all_neg_inf_row(g):
        m = np.zeros((3, 3))
        m[2, :] = -np.inf
        return "f32", m

    att("sdpa_additive_mask_neg_inf_row_gives_zeros", (1, 1, 3, 4), (1, 1, 3, 4), (1, 1, 3, 4), causal=False, mask=all_neg_inf_row)
    att("sdpa_f16_gqa_causal", (1, 4, 3, 8), (1, 2, 5, 8), (1, 2, 5, 8), causal=True, dtype="f16")
    att("sdpa_rank5_leading_dims", (2, 1, 2, 3, 4), (2, 1, 2, 3, 4), (2, 1, 2, 3, 4), causal=True, scale=0.5)


def symbolic_cases():
    g = G("sym_add_broadcast")
    xv = g.inp("x", "f32", g.randn(2, 3), dims=["B", "S"])
    yv = g.inp("y", "f32", g.randn(3), dims=["S"])
    g.done(g.op("add", [xv, yv], out=F(xv) + F(yv), dims=["B", "S"]))

    g = G("sym_reduce_mean_and_sum")
    xv = g.inp("x", "f32", g.randn(2, 3, 4), dims=["B", "S", 4])
    a = g.op("reduce_mean", [xv], {"axes": [1], "keepdims": False}, out=reduce_ref("reduce_mean", F(xv), [1], False), dims=["B", 4])
    b = g.op("reduce_sum", [xv], {"axes": [-1], "keepdims": True}, out=reduce_ref("reduce_sum", F(xv), [-1], True), dims=["B", "S", 1])
    g.done(a, b)

    g = G("sym_arange_cast_add")
    xv = g.inp("x", "f32", g.randn(5), dims=["S"])
    r = g.op("arange", [], {"start": 0, "end": Sym("S"), "step": 1, "dtype": DTy("i64")}, out=np.arange(5).astype(object), dtype="i64", dims=["S"])
    c = g.op("cast", [r], {"to": DTy("f32")}, out=np.arange(5.0), dtype="f32", dims=["S"])
    g.done(g.op("add", [xv, c], out=F(xv) + F(c), dims=["S"]), r, names=["y", "positions"])

    g = G("sym_causal_mask_softmax")
    xv = g.inp("x", "f32", g.randn(4, 4), dims=["S", "S"])
    full = g.op("full", [], {"shape": [Sym("S"), Sym("S")], "value": -np.inf, "dtype": DTy("f32")}, out=np.full((4, 4), -np.inf), dtype="f32", dims=["S", "S"])
    m = g.op("triu", [full], {"k": 1}, out=tri_ref(F(full), 1, True), dims=["S", "S"])
    s = g.op("add", [xv, m], out=F(xv) + F(m), dims=["S", "S"])
    g.done(g.op("softmax", [s], {"axis": -1}, out=softmax_ref(F(s), -1), dims=["S", "S"]))

    g = G("sym_reshape")
    xv = g.inp("x", "f32", g.randn(2, 6), dims=["B", 6])
    a = g.op("reshape", [xv], {"shape": [Sym("B"), 2, 3]}, out=F(xv).reshape(2, 2, 3), dims=["B", 2, 3])
    b = g.op("reshape", [xv], {"shape": [Sym("6*B")]}, out=F(xv).reshape(12), dims=["6*B"])
    g.done(a, b)

    g = G("sym_slices")
    xv = g.inp("x", "f32", g.randn(5, 3), dims=["S", 3])
    x = F(xv)
    a = g.op("slice", [xv], {"axis": 0, "start": 1, "step": 1}, out=x[1:], dims=["S-1", 3])
    b = g.op("slice", [xv], {"axis": 0, "start": -2, "step": 1}, out=x[-2:], dims=[2, 3])
    c = g.op("slice", [xv], {"axis": 0, "start": 1, "end": -1, "step": 1}, out=x[1:-1], dims=["S-2", 3])
    d = g.op("slice", [xv], {"axis": 0, "start": 0, "end": 2, "step": 1}, out=x[0:2], dims=[2, 3])
    e = g.op("slice", [xv], {"axis": 1, "start": 2, "end": 0, "step": -1}, out=x[:, 2:0:-1], dims=["S", 2])
    g.done(a, b, c, d, e)

    g = G("sym_expand")
    xv = g.inp("x", "f32", g.randn(1, 4))
    yv = g.inp("y", "f32", g.randn(3, 4), dims=["B", 4])
    e = g.op("expand", [xv], {"shape": [Sym("B"), 4]}, out=np.broadcast_to(F(xv), (3, 4)), dims=["B", 4])
    g.done(g.op("mul", [e, yv], out=F(e) * F(yv), dims=["B", 4]), e)

    g = G("sym_split_bound_from_expression")
    xv = g.inp("x", "f32", g.randn(5, 3), dims=["S+2", 3])
    x = F(xv)
    g.done(*g.op("split", [xv], {"axis": 0, "sizes": [Sym("S"), 2]}, out=[x[:3], x[3:]], dims=[["S", 3], [2, 3]]))

    g = G("sym_concat")
    av = g.inp("a", "f32", g.randn(2, 2), dims=["S", 2])
    bv = g.inp("b", "f32", g.randn(3, 2), dims=["T", 2])
    g.done(g.op("concat", [av, bv], {"axis": 0}, out=np.concatenate([F(av), F(bv)]), dims=["S+T", 2]))

    g = G("sym_matmul_linear")
    xv = g.inp("x", "f32", g.randn(2, 3, 4), dims=["B", "S", 4])
    wv = g.inp("w", "f32", g.randn(4, 5))
    lw = g.inp("lw", "f32", g.randn(2, 5))
    m = g.op("matmul", [xv, wv], out=np.matmul(F(xv), F(wv)), dims=["B", "S", 5])
    g.done(g.op("linear", [m, lw], out=linear_ref(F(m), F(lw)), dims=["B", "S", 2]))

    g = G("sym_rope")
    c = g.randn(3, 8)
    xv = g.inp("x", "f32", g.randn(2, 3, 8), dims=["B", "S", 8])
    cv = g.inp("cos", "f32", np.cos(c), dims=["S", 8])
    sv = g.inp("sin", "f32", np.sin(c), dims=["S", 8])
    g.done(g.op("rope", [xv, cv, sv], {"interleaved": False}, out=rope_ref(F(xv), F(cv), F(sv), False), dims=["B", "S", 8]))

    g = G("sym_sdpa_causal_gqa")
    qv = g.inp("q", "f32", g.randn(1, 4, 3, 4), dims=[1, 4, "S", 4])
    kv = g.inp("k", "f32", g.randn(1, 2, 5, 4), dims=[1, 2, "T", 4])
    vv = g.inp("v", "f32", g.randn(1, 2, 5, 4), dims=[1, 2, "T", 4])
    g.done(g.op("scaled_dot_product_attention", [qv, kv, vv], {"causal": True}, out=sdpa_ref(F(qv), F(kv), F(vv), None, True), dims=[1, 4, "S", 4]))

    g = G("sym_embedding_rms_norm")
    wv = g.inp("w", "f32", g.randn(7, 4))
    iv = g.inp("ids", "i64", [[1, 6, 0], [3, 3, 2]], dims=["B", "S"])
    nw = g.inp("nw", "f32", g.randn(4))
    e = g.op("embedding", [wv, iv], out=F(wv)[iv.arr], dims=["B", "S", 4])
    g.done(g.op("rms_norm", [e, nw], {"axis": -1, "eps": 1e-5}, out=rms_norm_ref(F(e), -1, 1e-5, F(nw)), dims=["B", "S", 4]))


def composite_cases():
    # A SwiGLU MLP block: several ops, each rounded to f32 in turn.
    g = G("composite_swiglu_mlp")
    xv = g.inp("x", "f32", g.randn(2, 3, 8))
    wg, wu, wd = g.inp("wg", "f32", g.randn(6, 8) * 0.3), g.inp("wu", "f32", g.randn(6, 8) * 0.3), g.inp("wd", "f32", g.randn(8, 6) * 0.3)
    a = g.op("linear", [xv, wg], out=linear_ref(F(xv), F(wg)))
    u = g.op("linear", [xv, wu], out=linear_ref(F(xv), F(wu)))
    s = g.op("silu", [a], out=UNARY["silu"](F(a)))
    m = g.op("mul", [s, u], out=F(s) * F(u))
    g.done(g.op("linear", [m, wd], out=linear_ref(F(m), F(wd))))

    # Decomposed RMSNorm as frontends emit it, with f32 rounding per step.
    g = G("composite_rms_norm_decomposed")
    xv = g.inp("x", "f32", g.randn(2, 8))
    two = g.const("f32", np.array(2.0))
    p = g.op("pow", [xv, two], out=np.power(F(xv), F(two)))
    mn = g.op("reduce_mean", [p], {"axes": [-1], "keepdims": True}, out=reduce_ref("reduce_mean", F(p), [-1], True))
    eps = g.const("f32", np.array(1e-5))
    ad = g.op("add", [mn, eps], out=F(mn) + F(eps))
    r = g.op("rsqrt", [ad], out=1.0 / np.sqrt(F(ad)))
    g.done(g.op("mul", [xv, r], out=F(xv) * F(r)))

    # Comparison feeding where, and argmax over a where result.
    g = G("composite_compare_where_argmax")
    xv = g.inp("x", "f32", g.randn(3, 5))
    z = g.const("f32", np.array(0.0))
    c = g.op("greater", [xv, z], out=F(xv) > F(z), dtype="bool")
    w = g.op("where", [c, xv, z], out=np.where(c.arr, F(xv), F(z)), dtype="f32")
    g.done(w, g.op("argmax", [w], {"axis": -1, "keepdims": True}, out=argmax_ref(F(w), -1, True), dtype="i64"))


ALL_OPS = (
    list(UNARY)
    + list(UNARY_MORE)
    + ["mod", "fmod", "bitwise_and", "bitwise_or", "bitwise_xor", "shift_left", "shift_right", "reduce_prod"]
    + ["conv", "max_pool", "avg_pool", "lp_pool"]
    + ["gelu"]
    + list(BINARY_F)
    + list(COMPARE)
    + ["where", "cast", "bitcast", "reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "argmax", "cumsum", "softmax"]
    + ["log_softmax"]
    + ["matmul", "linear", "reshape", "transpose", "unsqueeze", "squeeze", "expand", "slice", "concat", "split"]
    + ["gather", "index_select", "triu", "tril", "arange", "full", "constant", "embedding", "layer_norm"]
    + ["rms_norm", "rope", "scaled_dot_product_attention", "swiglu", "add_rms_norm", "paged_attention"]
    + ["gather_elements", "scatter_elements", "topk", "cumprod"]
)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "ir", "tests", "data", "op_goldens.json")
    with np.errstate(all="ignore"):
        elementwise_cases()
        more_elementwise_cases()
        conv_cases()
        reduce_cases()
        softmax_cases()
        linalg_cases()
        shape_cases()
        indexing_cases()
        scatter_gather_cases()
        creation_cases()
        nn_cases()
        attention_cases()
        symbolic_cases()
        composite_cases()
    missing = set(ALL_OPS) - OPS_USED
    assert not missing, f"ops without a case: {sorted(missing)}"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    body = ",\n".join(json.dumps(c, separators=(",", ":"), allow_nan=False) for c in CASES)
    text = '{"cases": [\n' + body + "\n]}\n"
    with open(out, "w") as f:
        f.write(text)
    print(f"wrote {len(CASES)} cases ({len(text) // 1024} KiB) to {out}")


if __name__ == "__main__":
    main()
