//! `insert_past_kv`: turns a model graph over `ids[B, S]` into the
//! decoder-with-past graph that ONNX runtimes and TensorRT's ONNX parser run
//! (the form Hugging Face Optimum exports). Each attention layer `L` takes
//! the cache so far as inputs `past_key_values.L.key` and
//! `past_key_values.L.value` (`[B, Hkv, P, D]`: contiguous, `P` tokens
//! already seen) and returns it with this call's tokens appended as
//! outputs `present.L.key` and `present.L.value` (`[B, Hkv, P + S, D]`), so
//! a caller feeds one call's `present` to the next call as its `past`:
//! - every `arange(0, S)` (the positions of rotary or learned position
//!   embeddings) becomes `arange(P, P + S)`: the new tokens follow the past;
//! - every causal `scaled_dot_product_attention` attends over
//!   `concat(past, new)`; its causal mask is aligned to the bottom right, so
//!   query `i` sees keys up to `P + i`;
//! - a sliding-window mask `triu(full(-inf), 1) + tril(full(-inf), -w)` is
//!   rebuilt over `[S, P + S]` from the positions (key `j` is seen by query
//!   `i` when `0 <= P + i - j < w`); any other mask is an error naming the
//!   node.
//!
//! Every row of a batch has the same past length and no padding. Unlike
//! `insert_kv_cache` (a paged cache and one flat batch, for optc's own
//! runtime), the result needs only standard ONNX ops.

use std::collections::BTreeMap;

use optc_ir::ops::{
    Arange, BinaryKind, CompareKind, Concat, Constant, Op, ScaledDotProductAttention, Unsqueeze,
};
use optc_ir::{DType, Dim, Graph, NodeKind, Shape, Tensor, TensorType, Value};

use crate::kv_cache::{decoder_window, token_input};
use crate::rebuild::Rebuild;
use crate::{Pass, PassContext, PassError, PassReport};

/// Inserts the contiguous past/present KV cache (see the module docs).
pub struct InsertPastKv;

/// The symbol of the past length, bound by the `past_key_values.*` inputs.
pub const PAST: &str = "P";

const NAME: &str = "insert_past_kv";

fn fail(message: String) -> PassError {
    PassError::Failed {
        pass: NAME.into(),
        message,
    }
}

/// Names of layer `layer`'s cache inputs (`past`) or outputs (`present`).
pub fn cache_names(layer: usize, present: bool) -> [String; 2] {
    let base = if present {
        format!("present.{layer}")
    } else {
        format!("past_key_values.{layer}")
    };
    [format!("{base}.key"), format!("{base}.value")]
}

/// The bool mask `[S, P + S]` of a sliding window of `w` tokens after a
/// past of `P`: key `j` is visible to query `i` when `0 <= P + i - j < w`.
fn window_mask(
    r: &mut Rebuild,
    s: &Dim,
    w: i64,
    loc: &Option<String>,
    what: &str,
) -> Result<Value, PassError> {
    let p = Dim::sym(PAST);
    let total = &p + s;
    let range = |start: Dim| {
        Op::Arange(Arange {
            start,
            end: total.clone(),
            step: 1,
            dtype: DType::I64,
        })
    };
    let q = r.op1(range(p.clone()), &[], loc, what)?;
    let k = r.op1(range(Dim::constant(0)), &[], loc, what)?;
    let q = r.op1(Op::Unsqueeze(Unsqueeze { axes: vec![1] }), &[q], loc, what)?;
    let k = r.op1(Op::Unsqueeze(Unsqueeze { axes: vec![0] }), &[k], loc, what)?;
    let dist = r.op1(Op::Binary(BinaryKind::Sub), &[q, k], loc, what)?;
    let scalar = |x: i64| {
        Op::Constant(Constant {
            value: Tensor::from_i64(DType::I64, &[], &[x]),
        })
    };
    let zero = r.op1(scalar(0), &[], loc, what)?;
    let width = r.op1(scalar(w), &[], loc, what)?;
    let past_ok = r.op1(Op::Compare(CompareKind::GreaterEqual), &[dist, zero], loc, what)?;
    let in_window = r.op1(Op::Compare(CompareKind::Less), &[dist, width], loc, what)?;
    r.op1(Op::Binary(BinaryKind::BitAnd), &[past_ok, in_window], loc, what)
}

impl Pass for InsertPastKv {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "make the decoder-with-past graph (ONNX/TensorRT form): contiguous past_key_values inputs, present outputs, positions after the past"
    }

    fn keeps_signature(&self) -> bool {
        false
    }

    fn check_inputs(
        &self,
        before: &Graph,
        inputs: &BTreeMap<String, Tensor>,
        after: &Graph,
    ) -> Option<Result<BTreeMap<String, Tensor>, String>> {
        Some(empty_past_inputs(before, inputs, after))
    }

    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let (ids_node, _, s) = token_input(g).map_err(fail)?;
        if g.symbols().contains(PAST) {
            return Err(fail(format!(
                "the graph already uses the symbol {PAST}, which this pass gives the past length"
            )));
        }
        let s = Dim::sym(s);
        let p = Dim::sym(PAST);
        let mut r = Rebuild::new(g, NAME, "with a past of P tokens", BTreeMap::new());
        let ids_name = g.node_name(ids_node).unwrap_or("ids").to_string();
        let ids = r.new.add_input(ids_name, g.node(ids_node).outputs[0].clone());
        r.map.insert(Value::of(ids_node), ids);
        r.copy_weights(g);
        let order = g
            .topo_order()
            .map_err(|n| fail(format!("the graph has a cycle at {}", g.describe(n))))?;
        let mut presents: Vec<(Value, Value)> = Vec::new();
        let mut windows = 0;
        for id in order {
            let node = g.node(id);
            let (loc, what) = (node.loc.clone(), g.describe(id));
            let NodeKind::Op(op) = &node.kind else { continue };
            let args: Vec<Value> = g.operands(id).iter().map(|v| r.map[v]).collect();
            match op {
                Op::Arange(Arange {
                    start,
                    end,
                    step: 1,
                    dtype,
                }) if start.is(0) && *end == s => {
                    let shifted = Op::Arange(Arange {
                        start: p.clone(),
                        end: &p + &s,
                        step: 1,
                        dtype: *dtype,
                    });
                    let v = r.op1(shifted, &[], &loc, &what)?;
                    r.map.insert(Value::of(id), v);
                }
                Op::Attention(ScaledDotProductAttention { causal, scale }) => {
                    let window = decoder_window(g, id, *causal).map_err(|m| fail(format!("{what}: {m}")))?;
                    let layer = presents.len();
                    let names = cache_names(layer, false);
                    let mut cat = Vec::with_capacity(2);
                    for (arg, name) in [args[1], args[2]].into_iter().zip(names) {
                        let t = r.ty(arg);
                        let d = t.shape.dims();
                        if d.len() != 4 || d[2] != s {
                            return Err(fail(format!(
                                "{what}: attention operand {t} is not [batch, heads, {s}, head_dim]"
                            )));
                        }
                        let past_ty = TensorType::new(
                            t.dtype,
                            Shape(vec![d[0].clone(), d[1].clone(), p.clone(), d[3].clone()]),
                        );
                        let past = r.new.add_input(name, past_ty);
                        cat.push(r.op1(Op::Concat(Concat { axis: 2 }), &[past, arg], &loc, &what)?);
                    }
                    let (k, v) = (cat[0], cat[1]);
                    let out = match window {
                        None => r.op(
                            Op::Attention(ScaledDotProductAttention {
                                causal: true,
                                scale: *scale,
                            }),
                            &[args[0], k, v],
                            loc.clone(),
                            &what,
                        )?,
                        Some(w) => {
                            windows += 1;
                            let mask = window_mask(&mut r, &s, w, &loc, &what)?;
                            r.op(
                                Op::Attention(ScaledDotProductAttention {
                                    causal: false,
                                    scale: *scale,
                                }),
                                &[args[0], k, v, mask],
                                loc.clone(),
                                &what,
                            )?
                        }
                    };
                    r.map.insert(Value::of(id), Value::of(out));
                    presents.push((k, v));
                }
                _ => {
                    let nid = r.op(op.clone(), &args, loc, &what)?;
                    for i in 0..node.outputs.len() as u32 {
                        r.map
                            .insert(Value { node: id, index: i }, Value { node: nid, index: i });
                    }
                }
            }
        }
        if presents.is_empty() {
            return Err(fail(
                "the graph has no scaled_dot_product_attention to cache (run fuse_attention first)".into(),
            ));
        }
        for o in g.outputs() {
            let v = r.map[&o.value];
            let ty = r.ty(v);
            r.new.add_output(o.name.clone(), v, ty);
        }
        for (layer, &(k, v)) in presents.iter().enumerate() {
            for (x, name) in [k, v].into_iter().zip(cache_names(layer, true)) {
                let ty = r.ty(x);
                r.new.add_output(name, x, ty);
            }
        }
        *g = r.new;
        let layers = presents.len();
        let mut report = PassReport::with_rewrites(layers);
        report.notes.push(format!(
            "{layers} attention layers read a contiguous past of {PAST} tokens{}",
            if windows > 0 {
                format!(" ({windows} with a sliding window)")
            } else {
                String::new()
            }
        ));
        Ok(report)
    }
}

/// Inputs of the decoder-with-past graph `after` that compute what `before`
/// computes on `inputs`: the same token ids and empty pasts (`P = 0`).
pub fn empty_past_inputs(
    before: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    after: &Graph,
) -> Result<BTreeMap<String, Tensor>, String> {
    let (id, b, _) = token_input(before)?;
    let name = before.node_name(id).unwrap_or_default();
    let ids = inputs.get(name).ok_or_else(|| format!("no input %{name}"))?;
    let mut bindings = BTreeMap::from([(PAST.to_string(), 0)]);
    if let Some(b) = b.as_sym() {
        bindings.insert(b.to_string(), ids.shape()[0] as i64);
    }
    let mut out = BTreeMap::from([(name.to_string(), ids.clone())]);
    for &i in after.inputs() {
        let n = after.node_name(i).unwrap_or_default();
        if n.starts_with("past_key_values.") {
            let ty = &after.node(i).outputs[0];
            let shape = ty.shape.eval(&bindings).map_err(|e| format!("{n}: {e}"))?;
            out.insert(n.to_string(), Tensor::from_f64(ty.dtype, &shape, &[]));
        }
    }
    Ok(out)
}
