//! Graph-building helpers that spell each piece of a Hugging Face model the
//! way the transformers code computes it (op for op, casts included), so
//! the result is the graph a trace would give.

use optc_ir::ops::{
    Arange, BinaryKind, Concat, Constant, Embedding, Expand, Full, Op, Reduce, ReduceKind, Scalar, Slice,
    Softmax, Triangular, UnaryKind, Unsqueeze,
};
use optc_ir::{BuildError, DType, Dim, GraphBuilder, Shape, Tensor, TensorType, Value};

use super::checkpoint::Checkpoint;
use super::HfError;

/// The builder plus what every helper needs to know.
pub struct Tracer<'a> {
    pub b: GraphBuilder,
    pub ck: &'a Checkpoint,
    /// The dtype the model computes in (activations, and weights after load).
    pub dtype: DType,
    pub arch: &'static str,
}

/// `B` and `S`: the batch and sequence symbols of the input ids.
pub fn batch() -> Dim {
    Dim::sym("B")
}

pub fn seq() -> Dim {
    Dim::sym("S")
}

impl<'a> Tracer<'a> {
    pub fn new(name: &str, ck: &'a Checkpoint, dtype: DType, arch: &'static str) -> Tracer<'a> {
        Tracer {
            b: GraphBuilder::new(name),
            ck,
            dtype,
            arch,
        }
    }

    /// Declares `logits` the graph's output and returns the verified graph.
    pub fn finish(mut self, logits: Value) -> Result<optc_ir::Graph, HfError> {
        let arch = self.arch;
        self.b.output("logits", logits);
        self.b.finish().map_err(|e| HfError::Build {
            arch,
            source: BuildError {
                node: "graph".into(),
                message: e.to_string(),
            },
        })
    }

    /// Wraps a builder error with the architecture.
    pub fn err(&self, source: BuildError) -> HfError {
        HfError::Build {
            arch: self.arch,
            source,
        }
    }

    pub fn loc(&mut self, loc: impl Into<String>) {
        self.b.set_loc(Some(loc.into()));
    }

    /// Declares checkpoint tensor `key` (checked against `shape`) and casts
    /// it to the model dtype if stored otherwise (transformers casts at load).
    pub fn weight(&mut self, key: &str, shape: &[usize]) -> Result<Value, HfError> {
        let stored = self.ck.expect(key, shape)?;
        let dims: Vec<Dim> = shape.iter().map(|&d| Dim::from(d)).collect();
        let w = self.b.weight(key, key, TensorType::new(stored, Shape(dims)));
        if stored == self.dtype {
            Ok(w)
        } else {
            self.b.cast(w, self.dtype).map_err(|e| self.err(e))
        }
    }

    pub fn op(&mut self, op: Op, args: &[Value]) -> Result<Value, HfError> {
        self.b.op1(op, args).map_err(|e| HfError::Build {
            arch: self.arch,
            source: e,
        })
    }

    pub fn ops(&mut self, op: Op, args: &[Value]) -> Result<Vec<Value>, HfError> {
        self.b.op(op, args).map_err(|e| HfError::Build {
            arch: self.arch,
            source: e,
        })
    }

    pub fn unary(&mut self, k: UnaryKind, x: Value) -> Result<Value, HfError> {
        self.op(Op::Unary(k), &[x])
    }

    pub fn binary(&mut self, k: BinaryKind, a: Value, b: Value) -> Result<Value, HfError> {
        self.op(Op::Binary(k), &[a, b])
    }

    pub fn add(&mut self, a: Value, b: Value) -> Result<Value, HfError> {
        self.binary(BinaryKind::Add, a, b)
    }

    pub fn mul(&mut self, a: Value, b: Value) -> Result<Value, HfError> {
        self.binary(BinaryKind::Mul, a, b)
    }

    /// `x.to(dtype)`: a cast, or nothing when `x` already has that dtype (a
    /// no-op `.to()` leaves no trace).
    pub fn to(&mut self, x: Value, dtype: DType) -> Result<Value, HfError> {
        if self.b.ty(x).dtype == dtype {
            return Ok(x);
        }
        self.b.cast(x, dtype).map_err(|e| self.err(e))
    }

    /// A scalar constant (a Python float in the model code).
    pub fn scalar(&mut self, v: f64, dtype: DType) -> Result<Value, HfError> {
        let value = Tensor::from_f64(dtype, &[], &[v]);
        self.op(Op::Constant(Constant { value }), &[])
    }

    pub fn linear(&mut self, x: Value, w: Value, bias: Option<Value>) -> Result<Value, HfError> {
        self.b.linear(x, w, bias).map_err(|e| self.err(e))
    }

    pub fn reshape(&mut self, x: Value, shape: Vec<Dim>) -> Result<Value, HfError> {
        self.b.reshape(x, shape).map_err(|e| self.err(e))
    }

    pub fn transpose(&mut self, x: Value, perm: Vec<i64>) -> Result<Value, HfError> {
        self.b.transpose(x, perm).map_err(|e| self.err(e))
    }

    pub fn matmul(&mut self, a: Value, b: Value) -> Result<Value, HfError> {
        self.b.matmul(a, b).map_err(|e| self.err(e))
    }

    pub fn embedding(&mut self, table: Value, ids: Value) -> Result<Value, HfError> {
        self.op(Op::Embedding(Embedding), &[table, ids])
    }

    /// `x[..., start:end]` on the last axis.
    pub fn slice_last(&mut self, x: Value, start: i64, end: Option<i64>) -> Result<Value, HfError> {
        self.op(
            Op::Slice(Slice {
                axis: -1,
                start,
                end,
                step: 1,
            }),
            &[x],
        )
    }

    pub fn concat(&mut self, parts: &[Value], axis: i64) -> Result<Value, HfError> {
        self.op(Op::Concat(Concat { axis }), parts)
    }

    pub fn unsqueeze(&mut self, x: Value, axes: Vec<i64>) -> Result<Value, HfError> {
        self.op(Op::Unsqueeze(Unsqueeze { axes }), &[x])
    }

    /// `LlamaRMSNorm.forward`: upcast to f32, `x * rsqrt(mean(x²) + eps)`,
    /// back to the input dtype, times the weight.
    pub fn rms_norm(&mut self, x: Value, w: Value, eps: f64) -> Result<Value, HfError> {
        let input_dtype = self.b.ty(x).dtype;
        let h = self.to(x, DType::F32)?;
        let two = self.scalar(2.0, DType::F32)?;
        let sq = self.binary(BinaryKind::Pow, h, two)?;
        let var = self.op(
            Op::Reduce(Reduce {
                kind: ReduceKind::Mean,
                axes: vec![-1],
                keepdims: true,
            }),
            &[sq],
        )?;
        let e = self.scalar(eps, DType::F32)?;
        let var = self.add(var, e)?;
        let inv = self.unary(UnaryKind::Rsqrt, var)?;
        let h = self.mul(h, inv)?;
        let h = self.to(h, input_dtype)?;
        self.mul(w, h)
    }

    /// `[B, S, n*d]` → `[B, n, S, d]` (`view(...).transpose(1, 2)`).
    pub fn split_heads(&mut self, x: Value, n: usize, d: usize) -> Result<Value, HfError> {
        let r = self.reshape(x, vec![batch(), seq(), n.into(), d.into()])?;
        self.transpose(r, vec![0, 2, 1, 3])
    }

    /// `[B, n, S, d]` → `[B, S, n*d]` (`transpose(1, 2).reshape(B, S, -1)`).
    pub fn merge_heads(&mut self, x: Value, n: usize, d: usize) -> Result<Value, HfError> {
        let t = self.transpose(x, vec![0, 2, 1, 3])?;
        self.reshape(t, vec![batch(), seq(), (n * d).into()])
    }

    /// transformers' `repeat_kv`: `[B, kv, S, d]` → `[B, kv*rep, S, d]`
    /// through `[:, :, None].expand(...).reshape(...)`.
    pub fn repeat_kv(&mut self, x: Value, kv: usize, rep: usize, d: usize) -> Result<Value, HfError> {
        if rep == 1 {
            return Ok(x);
        }
        let u = self.unsqueeze(x, vec![2])?;
        let e = self.op(
            Op::Expand(Expand {
                shape: vec![batch(), kv.into(), rep.into(), seq(), d.into()],
            }),
            &[u],
        )?;
        self.reshape(e, vec![batch(), (kv * rep).into(), seq(), d.into()])
    }

    /// The additive causal mask `[S, S]` in the model dtype: `-inf` above the
    /// diagonal, and, with a sliding window `w`, also where `i - j >= w`.
    pub fn causal_mask(&mut self, window: Option<usize>) -> Result<Value, HfError> {
        let s = seq();
        let full = self.op(
            Op::Full(Full {
                shape: vec![s.clone(), s],
                value: Scalar::Float(f64::NEG_INFINITY),
                dtype: self.dtype,
            }),
            &[],
        )?;
        let upper = self.op(Op::Triangular(Triangular { upper: true, k: 1 }), &[full])?;
        match window {
            None => Ok(upper),
            Some(w) => {
                let lower = self.op(
                    Op::Triangular(Triangular {
                        upper: false,
                        k: -(w as i64),
                    }),
                    &[full],
                )?;
                self.add(upper, lower)
            }
        }
    }

    /// `eager_attention_forward`: `softmax(q·kᵀ·scale + mask)` (in f32 when
    /// `softmax_f32`, as the Llama family does), back to the query dtype,
    /// times v. q, k, v are `[B, heads, S, d]` with k and
    /// v already repeated to the query heads.
    pub fn eager_attention(
        &mut self,
        q: Value,
        k: Value,
        v: Value,
        mask: Value,
        scale: ScaleStyle,
        softmax_f32: bool,
    ) -> Result<Value, HfError> {
        let kt = self.transpose(k, vec![0, 1, 3, 2])?;
        let scores = self.matmul(q, kt)?;
        let scores = match scale {
            ScaleStyle::Mul(s) => {
                let c = self.scalar(s, self.dtype)?;
                self.mul(scores, c)?
            }
            ScaleStyle::Div(s) => {
                let c = self.scalar(s, self.dtype)?;
                self.binary(BinaryKind::Div, scores, c)?
            }
        };
        let scores = self.add(scores, mask)?;
        let scores = if softmax_f32 {
            self.to(scores, DType::F32)?
        } else {
            scores
        };
        let probs = self.op(Op::Softmax(Softmax { axis: -1, log: false }), &[scores])?;
        let probs = self.to(probs, self.dtype)?;
        self.matmul(probs, v)
    }

    /// Positions `0..S` as f32, `[S]`.
    pub fn positions(&mut self) -> Result<Value, HfError> {
        let p = self.op(
            Op::Arange(Arange {
                start: Dim::constant(0),
                end: seq(),
                step: 1,
                dtype: DType::I64,
            }),
            &[],
        )?;
        Ok(p)
    }
}

/// How the model code applies the attention scale.
#[derive(Clone, Copy, Debug)]
pub enum ScaleStyle {
    /// `scores * scaling` (Llama family: `scaling = head_dim ** -0.5`).
    Mul(f64),
    /// `scores / sqrt(head_dim)` (GPT-2).
    Div(f64),
}
