//! IR → ONNX (default domain, opset [`EXPORT_OPSET`]). Every IR op with an
//! ONNX form is written as standard ONNX nodes (fused IR ops as the chains
//! they stand for, so any ONNX runtime or TensorRT's parser reads them);
//! weights become initializers, or external data in one side file.
//! Symbolic dims in attributes (reshape targets, split sizes, ranges) are
//! rebuilt at run time from the graph inputs' shapes, so exported models
//! keep their dynamic axes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use optc_ir::ops::{BinaryKind as B, CompareKind as C, GeluApprox, Op, ReduceKind, Scalar, UnaryKind as U};
use optc_ir::{DType, Dim, Graph, NodeKind, Tensor, Value, WeightStore};
use prost::Message;

use super::proto::{
    attr_type, dimension, type_proto, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    DATA_LOCATION_EXTERNAL,
};
use super::tensor::{code_of, from_tensor};

/// The opset exported models declare.
pub const EXPORT_OPSET: i64 = 21;

/// Why a graph cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{node}: {message}")]
    Op { node: String, message: String },
    #[error("weight '{0}': {1}")]
    Weight(String, String),
    #[error("the graph has a cycle")]
    Cycle,
    #[error("cannot write {0}: {1}")]
    Io(String, std::io::Error),
}

/// Where weights go.
#[derive(Clone, Debug, Default)]
pub enum WeightPlacement {
    /// Inside the model file (limited to 2 GiB by protobuf).
    #[default]
    Inline,
    /// In one external data file next to the model, named here.
    External(String),
}

struct Ex<'g> {
    g: &'g Graph,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    names: HashMap<Value, String>,
    next: usize,
    /// Symbol → (input name, axis) that binds it.
    sym_src: BTreeMap<String, (String, usize)>,
    dim_cache: HashMap<Dim, String>,
}

fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i: v,
        ..Default::default()
    }
}
fn attr_ints(name: &str, v: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: v,
        ..Default::default()
    }
}
fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::STRING,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}
fn attr_t(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::TENSOR,
        t: Some(t),
        ..Default::default()
    }
}

fn window_attrs(w: &optc_ir::ops::Window) -> Vec<AttributeProto> {
    vec![
        attr_ints("kernel_shape", w.kernel.clone()),
        attr_ints("strides", w.strides.clone()),
        attr_ints("dilations", w.dilations.clone()),
        attr_ints("pads", w.pads.clone()),
    ]
}

fn value_info(name: &str, ty: &optc_ir::TensorType) -> ValueInfoProto {
    let dim = ty
        .shape
        .dims()
        .iter()
        .map(|d| Dimension {
            value: Some(match d.as_const() {
                Some(c) => dimension::Value::DimValue(c),
                None => dimension::Value::DimParam(d.to_string()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: code_of(ty.dtype),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

impl Ex<'_> {
    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    /// Emits a node; returns its single output name.
    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.node_to(op, inputs, attrs, vec![out.clone()]);
        out
    }

    fn node_to(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>, outputs: Vec<String>) {
        let name = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs,
            name,
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
    }

    fn constant(&mut self, t: &Tensor) -> String {
        let out = self.fresh("const");
        self.node_to(
            "Constant",
            &[],
            vec![attr_t("value", from_tensor(&out, t))],
            vec![out.clone()],
        );
        out
    }

    fn i64s(&mut self, v: &[i64]) -> String {
        self.constant(&Tensor::from_i64(DType::I64, &[v.len()], v))
    }

    fn scalar(&mut self, x: f64, dtype: DType) -> String {
        self.constant(&Tensor::from_f64(dtype, &[], &[x]))
    }

    /// A `[1]` i64 tensor holding `d` at run time.
    fn dim_tensor(&mut self, d: &Dim) -> Result<String, String> {
        if let Some(c) = d.as_const() {
            return Ok(self.i64s(&[c]));
        }
        if let Some(n) = self.dim_cache.get(d) {
            return Ok(n.clone());
        }
        let mut sum: Option<String> = None;
        let terms: Vec<(Vec<String>, i64)> = d.terms().map(|(m, c)| (m.to_vec(), c)).collect();
        for (mono, coef) in terms {
            let mut prod: Option<String> = None;
            for s in &mono {
                let (input, axis) = self
                    .sym_src
                    .get(s)
                    .cloned()
                    .ok_or_else(|| format!("symbol {s} is not a dim of any graph input"))?;
                let a = axis as i64;
                let t = self.node("Shape", &[&input], vec![attr_i("start", a), attr_i("end", a + 1)]);
                prod = Some(match prod {
                    Some(p) => self.node("Mul", &[&p, &t], vec![]),
                    None => t,
                });
            }
            let term = match prod {
                None => self.i64s(&[coef]),
                Some(p) if coef == 1 => p,
                Some(p) => {
                    let c = self.i64s(&[coef]);
                    self.node("Mul", &[&p, &c], vec![])
                }
            };
            sum = Some(match sum {
                Some(s) => self.node("Add", &[&s, &term], vec![]),
                None => term,
            });
        }
        let out = sum.unwrap_or_else(|| self.i64s(&[0]));
        self.dim_cache.insert(d.clone(), out.clone());
        Ok(out)
    }

    /// A 1-D i64 shape tensor of dims.
    fn shape_tensor(&mut self, dims: &[Dim]) -> Result<String, String> {
        if let Some(c) = dims.iter().map(Dim::as_const).collect::<Option<Vec<i64>>>() {
            return Ok(self.i64s(&c));
        }
        let parts: Vec<String> = dims
            .iter()
            .map(|d| self.dim_tensor(d))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        Ok(self.node("Concat", &refs, vec![attr_i("axis", 0)]))
    }

    /// A scalar i64 (rank 0) holding `d`.
    fn dim_scalar(&mut self, d: &Dim) -> Result<String, String> {
        if let Some(c) = d.as_const() {
            return Ok(self.constant(&Tensor::from_i64(DType::I64, &[], &[c])));
        }
        let t = self.dim_tensor(d)?;
        let empty = self.i64s(&[]);
        Ok(self.node("Reshape", &[&t, &empty], vec![]))
    }

    fn reshape(&mut self, x: &str, dims: &[Dim]) -> Result<String, String> {
        let s = self.shape_tensor(dims)?;
        // A real 0 extent must not read as "copy the input dim".
        let attrs = if dims.iter().any(|d| d.is(0)) {
            vec![attr_i("allowzero", 1)]
        } else {
            vec![]
        };
        Ok(self.node("Reshape", &[x, &s], attrs))
    }

    /// Lowers one IR op; returns its output names.
    fn op(&mut self, op: &Op, a: &[String], id: optc_ir::NodeId) -> Result<Vec<String>, String> {
        let n = self.g.node(id);
        let in_ty = |i: usize| {
            self.g
                .value_type(self.g.operands(id)[i])
                .cloned()
                .ok_or("operand type")
        };
        let out_ty = n.outputs[0].clone();
        let dt = out_ty.dtype;
        let x = a.first().map(String::as_str).unwrap_or("");
        let one = |this: &mut Self, op: &str, attrs| vec![this.node(op, &[x], attrs)];
        Ok(match op {
            Op::Unary(k) => match k {
                U::Rsqrt => {
                    let s = self.node("Sqrt", &[x], vec![]);
                    vec![self.node("Reciprocal", &[&s], vec![])]
                }
                U::Silu => {
                    let s = self.node("Sigmoid", &[x], vec![]);
                    vec![self.node("Mul", &[x, &s], vec![])]
                }
                _ => {
                    let name = match k {
                        U::Neg => "Neg",
                        U::Abs => "Abs",
                        U::Exp => "Exp",
                        U::Log => "Log",
                        U::Sqrt => "Sqrt",
                        U::Reciprocal => "Reciprocal",
                        U::Tanh => "Tanh",
                        U::Erf => "Erf",
                        U::Sigmoid => "Sigmoid",
                        U::Relu => "Relu",
                        U::Sin => "Sin",
                        U::Cos => "Cos",
                        U::Tan => "Tan",
                        U::Asin => "Asin",
                        U::Acos => "Acos",
                        U::Atan => "Atan",
                        U::Sinh => "Sinh",
                        U::Cosh => "Cosh",
                        U::Asinh => "Asinh",
                        U::Acosh => "Acosh",
                        U::Atanh => "Atanh",
                        U::Floor => "Floor",
                        U::Ceil => "Ceil",
                        U::Round => "Round",
                        U::Sign => "Sign",
                        U::Rsqrt | U::Silu => unreachable!("handled above"),
                    };
                    one(self, name, vec![])
                }
            },
            Op::Gelu(g) => {
                // Gelu is opset 20; written as its formula for older readers.
                let half = self.scalar(0.5, dt);
                let onec = self.scalar(1.0, dt);
                let inner = match g.approximate {
                    GeluApprox::None => {
                        let r = self.scalar(std::f64::consts::FRAC_1_SQRT_2, dt);
                        let s = self.node("Mul", &[x, &r], vec![]);
                        self.node("Erf", &[&s], vec![])
                    }
                    GeluApprox::Tanh => {
                        let c = self.scalar((2.0 / std::f64::consts::PI).sqrt(), dt);
                        let k = self.scalar(0.044715, dt);
                        let x2 = self.node("Mul", &[x, x], vec![]);
                        let x3 = self.node("Mul", &[&x2, x], vec![]);
                        let kx3 = self.node("Mul", &[&k, &x3], vec![]);
                        let s = self.node("Add", &[x, &kx3], vec![]);
                        let cs = self.node("Mul", &[&c, &s], vec![]);
                        self.node("Tanh", &[&cs], vec![])
                    }
                };
                let p = self.node("Add", &[&onec, &inner], vec![]);
                let hx = self.node("Mul", &[&half, x], vec![]);
                vec![self.node("Mul", &[&hx, &p], vec![])]
            }
            Op::Binary(k) => {
                let bool_ = in_ty(0)?.dtype == DType::Bool;
                let (name, attrs) = match k {
                    B::Add => ("Add", vec![]),
                    B::Sub => ("Sub", vec![]),
                    B::Mul => ("Mul", vec![]),
                    B::Div => ("Div", vec![]),
                    B::Pow => ("Pow", vec![]),
                    B::Minimum => ("Min", vec![]),
                    B::Maximum => ("Max", vec![]),
                    B::Mod => ("Mod", vec![attr_i("fmod", 0)]),
                    B::Fmod => ("Mod", vec![attr_i("fmod", 1)]),
                    B::BitAnd if bool_ => ("And", vec![]),
                    B::BitOr if bool_ => ("Or", vec![]),
                    B::BitXor if bool_ => ("Xor", vec![]),
                    B::BitAnd => ("BitwiseAnd", vec![]),
                    B::BitOr => ("BitwiseOr", vec![]),
                    B::BitXor => ("BitwiseXor", vec![]),
                    B::Shl | B::Shr if !matches!(dt, DType::U8 | DType::U16 | DType::U32) => {
                        return Err(format!(
                            "ONNX BitShift is defined on unsigned types only, not {dt}"
                        ))
                    }
                    B::Shl => ("BitShift", vec![attr_s("direction", "LEFT")]),
                    B::Shr => ("BitShift", vec![attr_s("direction", "RIGHT")]),
                };
                vec![self.node(name, &[&a[0], &a[1]], attrs)]
            }
            Op::Compare(k) => {
                let name = match k {
                    C::Equal | C::NotEqual => "Equal",
                    C::Less => "Less",
                    C::LessEqual => "LessOrEqual",
                    C::Greater => "Greater",
                    C::GreaterEqual => "GreaterOrEqual",
                };
                let y = self.node(name, &[&a[0], &a[1]], vec![]);
                vec![if *k == C::NotEqual {
                    self.node("Not", &[&y], vec![])
                } else {
                    y
                }]
            }
            Op::Where(_) => vec![self.node("Where", &[&a[0], &a[1], &a[2]], vec![])],
            Op::Cast(c) => one(self, "Cast", vec![attr_i("to", code_of(c.to) as i64)]),
            Op::BitCast(_) => {
                return Err(format!(
                    "bitcast needs ONNX BitCast (opset 26); exported models declare opset {EXPORT_OPSET}"
                ))
            }
            Op::Reduce(r) => {
                let name = match r.kind {
                    ReduceKind::Sum => "ReduceSum",
                    ReduceKind::Mean => "ReduceMean",
                    ReduceKind::Max => "ReduceMax",
                    ReduceKind::Min => "ReduceMin",
                    ReduceKind::Prod => "ReduceProd",
                };
                let attrs = vec![attr_i("keepdims", i64::from(r.keepdims))];
                if r.axes.is_empty() {
                    vec![self.node(name, &[x], attrs)]
                } else {
                    let ax = self.i64s(&r.axes);
                    vec![self.node(name, &[x, &ax], attrs)]
                }
            }
            Op::ArgMax(m) => one(
                self,
                "ArgMax",
                vec![attr_i("axis", m.axis), attr_i("keepdims", i64::from(m.keepdims))],
            ),
            Op::CumSum(c) => {
                let ax = self.constant(&Tensor::from_i64(DType::I64, &[], &[c.axis]));
                vec![self.node("CumSum", &[x, &ax], vec![])]
            }
            Op::CumProd(_) => {
                return Err(format!(
                    "cumprod has no ONNX form at opset {EXPORT_OPSET} (CumProd is opset 26)"
                ))
            }
            Op::TopK(t) => {
                let k = self.i64s(&[t.k]);
                let attrs = vec![
                    attr_i("axis", t.axis),
                    attr_i("largest", i64::from(t.largest)),
                    attr_i("sorted", i64::from(t.sorted)),
                ];
                let outs = vec![self.fresh("topk"), self.fresh("topk")];
                self.node_to("TopK", &[x, &k], attrs, outs.clone());
                outs
            }
            Op::Softmax(s) => one(
                self,
                if s.log { "LogSoftmax" } else { "Softmax" },
                vec![attr_i("axis", s.axis)],
            ),
            Op::MatMul(_) => vec![self.node("MatMul", &[&a[0], &a[1]], vec![])],
            Op::Linear(_) => {
                let wt = self.node("Transpose", &[&a[1]], vec![attr_ints("perm", vec![1, 0])]);
                let y = self.node("MatMul", &[x, &wt], vec![]);
                vec![match a.get(2) {
                    Some(b) => self.node("Add", &[&y, b], vec![]),
                    None => y,
                }]
            }
            Op::Reshape(_) | Op::Unsqueeze(_) | Op::Squeeze(_) => vec![self.reshape(x, out_ty.shape.dims())?],
            Op::Transpose(t) => one(self, "Transpose", vec![attr_ints("perm", t.perm.clone())]),
            Op::Expand(_) => {
                let s = self.shape_tensor(out_ty.shape.dims())?;
                vec![self.node("Expand", &[x, &s], vec![])]
            }
            Op::Slice(s) => {
                let st = self.i64s(&[s.start]);
                let en = self.i64s(&[s.end.unwrap_or(if s.step > 0 { i64::MAX } else { i64::MIN })]);
                let ax = self.i64s(&[s.axis]);
                let sp = self.i64s(&[s.step]);
                vec![self.node("Slice", &[x, &st, &en, &ax, &sp], vec![])]
            }
            Op::Concat(c) => {
                let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                vec![self.node("Concat", &refs, vec![attr_i("axis", c.axis)])]
            }
            Op::Split(s) => {
                let sizes = self.shape_tensor(&s.sizes)?;
                let outs: Vec<String> = (0..s.sizes.len()).map(|_| self.fresh("split")).collect();
                self.node_to("Split", &[x, &sizes], vec![attr_i("axis", s.axis)], outs.clone());
                outs
            }
            Op::Gather(g) => vec![self.node("Gather", &[&a[0], &a[1]], vec![attr_i("axis", g.axis)])],
            Op::IndexSelect(g) => vec![self.node("Gather", &[&a[0], &a[1]], vec![attr_i("axis", g.axis)])],
            Op::GatherElements(g) => {
                vec![self.node("GatherElements", &[&a[0], &a[1]], vec![attr_i("axis", g.axis)])]
            }
            Op::ScatterElements(g) => vec![self.node(
                "ScatterElements",
                &[&a[0], &a[1], &a[2]],
                vec![attr_i("axis", g.axis), attr_s("reduction", g.reduction.name())],
            )],
            Op::Embedding(_) => vec![self.node("Gather", &[&a[0], &a[1]], vec![attr_i("axis", 0)])],
            Op::Triangular(t) => {
                let k = self.constant(&Tensor::from_i64(DType::I64, &[], &[t.k]));
                vec![self.node("Trilu", &[x, &k], vec![attr_i("upper", i64::from(t.upper))])]
            }
            Op::Arange(r) => {
                let s = self.dim_scalar(&r.start)?;
                let e = self.dim_scalar(&r.end)?;
                let st = self.constant(&Tensor::from_i64(DType::I64, &[], &[r.step]));
                let y = self.node("Range", &[&s, &e, &st], vec![]);
                vec![if r.dtype == DType::I64 {
                    y
                } else {
                    self.node("Cast", &[&y], vec![attr_i("to", code_of(r.dtype) as i64)])
                }]
            }
            Op::Full(f) => {
                let v = match f.value {
                    Scalar::Int(i) => Tensor::from_i64(f.dtype, &[1], &[i]),
                    Scalar::Float(x) => Tensor::from_f64(f.dtype, &[1], &[x]),
                };
                let s = self.shape_tensor(&f.shape)?;
                vec![self.node(
                    "ConstantOfShape",
                    &[&s],
                    vec![attr_t("value", from_tensor("value", &v))],
                )]
            }
            Op::Constant(c) => vec![self.constant(&c.value)],
            Op::LayerNorm(l) => vec![self.norm(x, a, &in_ty(0)?, l.axis, l.eps, false)?],
            Op::RmsNorm(r) => vec![self.norm(x, a, &in_ty(0)?, r.axis, r.eps, true)?],
            Op::AddRmsNorm(r) => {
                let s = self.node("Add", &[&a[0], &a[1]], vec![]);
                let mut rest = vec![s.clone()];
                rest.extend(a.get(2).cloned());
                let y = self.norm(&s, &rest, &in_ty(0)?, r.axis, r.eps, true)?;
                vec![s, y]
            }
            Op::SwiGlu(_) => {
                let s = self.node("Sigmoid", &[&a[0]], vec![]);
                let g = self.node("Mul", &[&a[0], &s], vec![]);
                vec![self.node("Mul", &[&g, &a[1]], vec![])]
            }
            Op::Rope(r) => vec![self.rope(a, &in_ty(0)?, &in_ty(1)?, r.interleaved)?],
            Op::Attention(s) => vec![self.attention(a, id, s.causal, s.scale)?],
            Op::Conv(c) => {
                let mut attrs = window_attrs(&c.window);
                attrs.push(attr_i("group", c.group));
                let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                vec![self.node("Conv", &refs, attrs)]
            }
            Op::Pool(p) => {
                let mut attrs = window_attrs(&p.window);
                attrs.push(attr_i("ceil_mode", i64::from(p.ceil_mode)));
                let name = match p.kind {
                    optc_ir::ops::PoolKind::Max => "MaxPool",
                    optc_ir::ops::PoolKind::Avg { count_include_pad } => {
                        attrs.push(attr_i("count_include_pad", i64::from(count_include_pad)));
                        "AveragePool"
                    }
                    optc_ir::ops::PoolKind::Lp { p } => {
                        if p.fract() != 0.0 {
                            return Err(format!("ONNX LpPool takes an integer p, not {p}"));
                        }
                        attrs.push(attr_i("p", p as i64));
                        "LpPool"
                    }
                };
                vec![self.node(name, &[x], attrs)]
            }
            Op::PagedAttention(_) => {
                return Err(
                    "paged_attention has no ONNX form (export the model graph, before insert_kv_cache)"
                        .into(),
                )
            }
        })
    }

    /// RMSNorm / LayerNorm as their ONNX function bodies (opset 21 has
    /// neither RMSNormalization nor a LayerNormalization without scale).
    fn norm(
        &mut self,
        x: &str,
        a: &[String],
        ty: &optc_ir::TensorType,
        axis: i64,
        eps: f64,
        rms: bool,
    ) -> Result<String, String> {
        let r = ty.rank() as i64;
        let first = if axis < 0 { axis + r } else { axis };
        let axes = self.i64s(&(first..r).collect::<Vec<_>>());
        let keep = vec![attr_i("keepdims", 1)];
        let e = self.scalar(eps, ty.dtype);
        let centered = if rms {
            x.to_string()
        } else {
            let m = self.node("ReduceMean", &[x, &axes], keep.clone());
            self.node("Sub", &[x, &m], vec![])
        };
        let sq = self.node("Mul", &[&centered, &centered], vec![]);
        let ms = self.node("ReduceMean", &[&sq, &axes], keep);
        let v = self.node("Add", &[&ms, &e], vec![]);
        let sd = self.node("Sqrt", &[&v], vec![]);
        let mut y = self.node("Div", &[&centered, &sd], vec![]);
        if let Some(w) = a.get(1) {
            y = self.node("Mul", &[&y, w], vec![]);
        }
        if let Some(b) = a.get(2) {
            y = self.node("Add", &[&y, b], vec![]);
        }
        Ok(y)
    }

    /// `x·cos + rotate(x)·sin` on the first R channels (R = cos's last dim).
    fn rope(
        &mut self,
        a: &[String],
        x_ty: &optc_ir::TensorType,
        cos_ty: &optc_ir::TensorType,
        interleaved: bool,
    ) -> Result<String, String> {
        let (x, cos, sin) = (&a[0], &a[1], &a[2]);
        let d = x_ty
            .shape
            .dims()
            .last()
            .and_then(Dim::as_const)
            .ok_or("rope needs a constant head size")?;
        let rot = cos_ty
            .shape
            .dims()
            .last()
            .and_then(Dim::as_const)
            .ok_or("rope needs a constant rotary size")?;
        let last = x_ty.rank() as i64 - 1;
        let (xr, pass) = if rot < d {
            let sizes = self.i64s(&[rot, d - rot]);
            let (p1, p2) = (self.fresh("rot"), self.fresh("pass"));
            self.node_to(
                "Split",
                &[x, &sizes],
                vec![attr_i("axis", last)],
                vec![p1.clone(), p2.clone()],
            );
            (p1, Some(p2))
        } else {
            (x.clone(), None)
        };
        let rotated = if interleaved {
            // (x0, x1) → (-x1, x0) on pairs: view [.., R/2, 2], swap, negate.
            let mut dims: Vec<Dim> = x_ty.shape.dims().to_vec();
            let n = dims.len();
            dims[n - 1] = Dim::constant(rot / 2);
            dims.push(Dim::constant(2));
            let pairs = self.reshape(&xr, &dims)?;
            let ones = self.i64s(&[1, 1]);
            let (e, o) = (self.fresh("even"), self.fresh("odd"));
            self.node_to(
                "Split",
                &[&pairs, &ones],
                vec![attr_i("axis", n as i64)],
                vec![e.clone(), o.clone()],
            );
            let no = self.node("Neg", &[&o], vec![]);
            let sw = self.node("Concat", &[&no, &e], vec![attr_i("axis", n as i64)]);
            let mut back: Vec<Dim> = x_ty.shape.dims().to_vec();
            back[n - 1] = Dim::constant(rot);
            self.reshape(&sw, &back)?
        } else {
            let halves = self.i64s(&[rot / 2, rot / 2]);
            let (h1, h2) = (self.fresh("h1"), self.fresh("h2"));
            self.node_to(
                "Split",
                &[&xr, &halves],
                vec![attr_i("axis", last)],
                vec![h1.clone(), h2.clone()],
            );
            let n2 = self.node("Neg", &[&h2], vec![]);
            self.node("Concat", &[&n2, &h1], vec![attr_i("axis", last)])
        };
        let xc = self.node("Mul", &[&xr, cos], vec![]);
        let rs = self.node("Mul", &[&rotated, sin], vec![]);
        let y = self.node("Add", &[&xc, &rs], vec![]);
        Ok(match pass {
            Some(p) => self.node("Concat", &[&y, &p], vec![attr_i("axis", last)]),
            None => y,
        })
    }

    /// scaled_dot_product_attention as MatMul/Softmax with GQA head repeat
    /// and a bottom-right causal mask.
    fn attention(
        &mut self,
        a: &[String],
        id: optc_ir::NodeId,
        causal: bool,
        scale: Option<f64>,
    ) -> Result<String, String> {
        let ops = self.g.operands(id);
        let ty = |i: usize| self.g.value_type(ops[i]).cloned().ok_or("operand type");
        let (qt, kt) = (ty(0)?, ty(1)?);
        let r = qt.rank();
        let dt = qt.dtype;
        let qd = qt.shape.dims().to_vec();
        let kd = kt.shape.dims().to_vec();
        let d = qd[r - 1]
            .as_const()
            .ok_or("attention needs a constant head size")?;
        let (hq, hkv) = (qd[r - 3].clone(), kd[r - 3].clone());
        let mut k = a[1].clone();
        let mut v = a[2].clone();
        if hq != hkv {
            let g = hq
                .div_exact(&hkv)
                .ok_or("query heads are not a multiple of KV heads")?;
            for (t, tt) in [(&mut k, ty(1)?), (&mut v, ty(2)?)] {
                let dims = tt.shape.dims().to_vec();
                let mut five = dims[..r - 2].to_vec();
                five.push(Dim::constant(1));
                five.extend(dims[r - 2..].iter().cloned());
                let y = self.reshape(t, &five)?;
                let mut big = five.clone();
                big[r - 2] = g.clone();
                let s = self.shape_tensor(&big)?;
                let y = self.node("Expand", &[&y, &s], vec![]);
                let mut back = dims.clone();
                back[r - 3] = hq.clone();
                *t = self.reshape(&y, &back)?;
            }
        }
        let mut perm: Vec<i64> = (0..r as i64).collect();
        perm.swap(r - 2, r - 1);
        let ktr = self.node("Transpose", &[&k], vec![attr_ints("perm", perm)]);
        let s = self.node("MatMul", &[&a[0], &ktr], vec![]);
        let sc = self.scalar(scale.unwrap_or(1.0 / (d as f64).sqrt()), dt);
        let mut s = self.node("Mul", &[&s, &sc], vec![]);
        if causal {
            // -inf where j > i + (Sk - Sq).
            let (sq, sk) = (qd[r - 2].clone(), kd[r - 2].clone());
            let offset = &sk - &sq;
            let m = if offset.as_const().is_some() {
                // A constant diagonal: Trilu keeps j - i >= k.
                let shape = self.shape_tensor(&[sq.clone(), sk.clone()])?;
                let fill = self.node(
                    "ConstantOfShape",
                    &[&shape],
                    vec![attr_t(
                        "value",
                        from_tensor("value", &Tensor::from_f64(dt, &[1], &[f64::NEG_INFINITY])),
                    )],
                );
                let kk = self.dim_scalar(&(&offset + &Dim::constant(1)))?;
                self.node("Trilu", &[&fill, &kk], vec![attr_i("upper", 1)])
            } else {
                // A diagonal that moves with the inputs' shapes (queries
                // after a cache): positions compared, since importers (optc's
                // among them) want Trilu's k known when a model is read.
                let zero = self.constant(&Tensor::from_i64(DType::I64, &[], &[0]));
                let one = self.constant(&Tensor::from_i64(DType::I64, &[], &[1]));
                let (nq, nk) = (self.dim_scalar(&sq)?, self.dim_scalar(&sk)?);
                let qi = self.node("Range", &[&zero, &nq, &one], vec![]);
                let kj = self.node("Range", &[&zero, &nk, &one], vec![]);
                let off = self.dim_scalar(&offset)?;
                let last = self.node("Add", &[&qi, &off], vec![]);
                let (ax1, ax0) = (self.i64s(&[1]), self.i64s(&[0]));
                let last = self.node("Unsqueeze", &[&last, &ax1], vec![]);
                let kj = self.node("Unsqueeze", &[&kj, &ax0], vec![]);
                let seen = self.node("LessOrEqual", &[&kj, &last], vec![]);
                let z = self.scalar(0.0, dt);
                let ni = self.scalar(f64::NEG_INFINITY, dt);
                self.node("Where", &[&seen, &z, &ni], vec![])
            };
            s = self.node("Add", &[&s, &m], vec![]);
        }
        if let Some(m) = a.get(3) {
            let mt = ty(3)?;
            let m = if mt.dtype == DType::Bool {
                let z = self.scalar(0.0, dt);
                let ni = self.scalar(f64::NEG_INFINITY, dt);
                self.node("Where", &[m, &z, &ni], vec![])
            } else {
                m.clone()
            };
            s = self.node("Add", &[&s, &m], vec![]);
        }
        let p = self.node("Softmax", &[&s], vec![attr_i("axis", -1)]);
        Ok(self.node("MatMul", &[&p, &v], vec![]))
    }
}

/// Builds the ONNX model of a graph. Weights are read from `weights` and
/// stored as the placement says (`External` writes the side file's bytes
/// into the returned buffer list: see [`write`]).
pub fn export(
    g: &Graph,
    weights: &WeightStore,
    placement: &WeightPlacement,
) -> Result<(ModelProto, Vec<u8>), ExportError> {
    let mut external = Vec::new();
    let model = export_to(g, weights, placement, &mut external, "the side file")?;
    Ok((model, external))
}

/// [`export`] with the external weights streamed to `side` (named `what`
/// in errors), so a model's weights are never held twice in memory.
fn export_to(
    g: &Graph,
    weights: &WeightStore,
    placement: &WeightPlacement,
    side: &mut dyn std::io::Write,
    what: &str,
) -> Result<ModelProto, ExportError> {
    let mut offset = 0usize;
    let mut ex = Ex {
        g,
        nodes: Vec::new(),
        inits: Vec::new(),
        names: HashMap::new(),
        next: 0,
        sym_src: BTreeMap::new(),
        dim_cache: HashMap::new(),
    };
    let mut inputs = Vec::new();
    for &i in g.inputs() {
        let name = g.node_name(i).unwrap_or("input").to_string();
        let ty = &g.node(i).outputs[0];
        for (axis, d) in ty.shape.dims().iter().enumerate() {
            if let Some(s) = d.as_sym() {
                ex.sym_src.entry(s.to_string()).or_insert((name.clone(), axis));
            }
        }
        inputs.push(value_info(&name, ty));
        ex.names.insert(Value::of(i), name);
    }
    let mut seen = std::collections::BTreeSet::new();
    for &w in g.weights() {
        let NodeKind::Weight { key, .. } = &g.node(w).kind else {
            continue;
        };
        ex.names.insert(Value::of(w), key.clone());
        if !seen.insert(key.clone()) {
            continue;
        }
        let t = weights
            .get(key)
            .map_err(|e| ExportError::Weight(key.clone(), e.to_string()))?;
        let mut tp = from_tensor(key, &t);
        if let WeightPlacement::External(file) = placement {
            side.write_all(&tp.raw_data)
                .map_err(|e| ExportError::Io(what.to_string(), e))?;
            let length = tp.raw_data.len();
            tp.raw_data = Vec::new();
            tp.data_location = DATA_LOCATION_EXTERNAL;
            tp.external_data = [
                ("location", file.clone()),
                ("offset", offset.to_string()),
                ("length", length.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| StringStringEntryProto {
                key: k.into(),
                value: v,
            })
            .collect();
            offset += length;
        }
        ex.inits.push(tp);
    }
    let order = g.topo_order().map_err(|_| ExportError::Cycle)?;
    for id in order {
        let node = g.node(id);
        let Some(op) = node.op() else { continue };
        let args: Vec<String> = g
            .operands(id)
            .iter()
            .map(|v| ex.names.get(v).cloned().unwrap_or_default())
            .collect();
        let outs = ex.op(op, &args, id).map_err(|message| ExportError::Op {
            node: g.describe(id),
            message,
        })?;
        for (k, o) in outs.into_iter().enumerate() {
            ex.names.insert(
                Value {
                    node: id,
                    index: k as u32,
                },
                o,
            );
        }
    }
    let mut outputs = Vec::new();
    for o in g.outputs() {
        let src = ex.names.get(&o.value).cloned().unwrap_or_default();
        // Outputs get their own names (an input or weight may be returned).
        ex.node_to("Identity", &[&src], vec![], vec![o.name.clone()]);
        outputs.push(value_info(&o.name, &o.ty));
    }
    let graph = GraphProto {
        node: ex.nodes,
        name: g.name.clone(),
        initializer: ex.inits,
        input: inputs,
        output: outputs,
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: EXPORT_OPSET,
        }],
        producer_name: "optc".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..Default::default()
    };
    Ok(model)
}

/// Writes `path` (and, for external weights, `<path>.data` next to it).
pub fn write(path: &Path, g: &Graph, weights: &WeightStore, external: bool) -> Result<(), ExportError> {
    let placement = if external {
        let file = format!(
            "{}.data",
            path.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model.onnx".into())
        );
        WeightPlacement::External(file)
    } else {
        WeightPlacement::Inline
    };
    let io = |p: &Path, e| ExportError::Io(p.display().to_string(), e);
    match &placement {
        WeightPlacement::External(file) => {
            // Streamed to a temporary name, renamed once the model is
            // written: a failed export leaves no side file that an older
            // model next to it would read.
            let side = path.with_file_name(file);
            let partial = path.with_file_name(format!("{file}.partial"));
            let result = (|| {
                let f = std::fs::File::create(&partial).map_err(|e| io(&partial, e))?;
                let mut out = std::io::BufWriter::with_capacity(1 << 22, f);
                let model = export_to(g, weights, &placement, &mut out, &partial.display().to_string())?;
                std::io::Write::flush(&mut out).map_err(|e| io(&partial, e))?;
                std::fs::write(path, model.encode_to_vec()).map_err(|e| io(path, e))?;
                std::fs::rename(&partial, &side).map_err(|e| io(&side, e))
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            result
        }
        WeightPlacement::Inline => {
            let (model, _) = export(g, weights, &placement)?;
            std::fs::write(path, model.encode_to_vec()).map_err(|e| io(path, e))
        }
    }
}
