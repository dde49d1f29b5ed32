//! `matmul_to_linear`: a `matmul` against a 2-D weight becomes a `linear`,
//! and a bias added to a linear becomes its bias operand.
//!
//! Frontends write a projection in whatever form the model had: HF
//! `linear` for `nn.Linear`, but `matmul(x, @w[k, n]) + @b` for GPT-2's
//! `Conv1D`, an ONNX `MatMul` against an initializer (how exporters write
//! `nn.Linear`), or `Gemm` with `transB` (`matmul(x, transpose(@w))`).
//! Everything downstream keys on `linear`: QKV and gate/up fusion
//! (`fuse_gemm`), weight-only quantisation, the CPU target's half-weight
//! GEMMs and the GPU's decode GEMVs. So this pass makes the three forms one:
//!
//! ```text
//! %6 = matmul(%5, @w)        # @w: [k, n]
//! %7 = add(%6, @b)           # @b: [n]
//! ```
//! becomes `%7 = linear(%5, @w.T, @b)`, where `@w.T` is a lazy
//! [`View::Transpose`] of `@w` (its bytes move only when a backend
//! materialises it, and `@w` itself is then never read). A weight read
//! through `transpose(@w) {perm = [1, 0]}` needs no view: the linear reads
//! `@w` as it is.
//!
//! Left as they are: a weight some other op also reads as it is (a view
//! would store it twice), weights that are computed (a `cast` of one),
//! matmuls of two activations (attention's products), and a weight whose
//! view's name (`@w.T`) the store already gives another tensor.
//!
//! The bias fold rounds once where the matmul and the add rounded twice,
//! as a GEMM epilogue does; in f32 the two agree to the last bits.

use optc_ir::ops::{BinaryKind, Linear, Op};
use optc_ir::{Graph, NodeId, NodeKind, TensorType, Value, View};

use super::gemm::weight_key;
use crate::cleanup::op_order;
use crate::{Pass, PassContext, PassError, PassReport};

/// Rewrites matmuls against 2-D weights as linears and folds bias adds.
pub struct MatmulToLinear;

const NAME: &str = "matmul_to_linear";

/// The weight `v` reads through a plain 2-D transpose, if it does.
fn transposed_weight(g: &Graph, v: Value) -> Option<Value> {
    let Some(Op::Transpose(t)) = g.node(v.node).op() else {
        return None;
    };
    let src = *g.operands(v.node).first()?;
    let rank2 = g.value_type(src).is_some_and(|t| t.rank() == 2);
    let swap = matches!(t.perm[..], [1, 0] | [-1, -2] | [1, -2] | [-1, 0]);
    (rank2 && swap && weight_key(g, src).is_some()).then_some(src)
}

/// What the linear for matmul `n` reads as its `[n, k]` weight: the
/// weight under a transpose, or a transpose view of a `[k, n]` weight that
/// only matmuls read as their right operand (`None` otherwise).
fn linear_weight(g: &mut Graph, cx: &mut PassContext, n: NodeId) -> Result<Option<Value>, PassError> {
    let ops = g.operands(n);
    let [x, w] = ops[..] else { return Ok(None) };
    let (Some(xt), Some(wt)) = (g.value_type(x), g.value_type(w)) else {
        return Ok(None);
    };
    if xt.rank() == 0 || wt.rank() != 2 || xt.dtype != wt.dtype || !xt.dtype.is_float() {
        return Ok(None);
    }
    if let Some(src) = transposed_weight(g, w) {
        return Ok(Some(src));
    }
    let Some(key) = weight_key(g, w) else {
        return Ok(None);
    };
    let only_matmuls = g
        .users(w)
        .iter()
        .all(|&(u, slot)| slot == 1 && matches!(g.node(u).op(), Some(Op::MatMul(_))));
    if !only_matmuls || !cx.weights.contains(&key) {
        return Ok(None);
    }
    let name = format!("{key}.T");
    let view = View::Transpose { source: key };
    match cx.weights.view(&name) {
        Some(v) if *v == view => {}
        // The name holds another tensor: leave this matmul as it is.
        Some(_) => return Ok(None),
        None if cx.weights.contains(&name) => return Ok(None),
        None => cx.weights.add_view(&name, view).map_err(|e| PassError::Failed {
            pass: NAME.into(),
            message: e.to_string(),
        })?,
    }
    let dims = wt.shape.dims();
    let ty = TensorType::new(wt.dtype, optc_ir::Shape(vec![dims[1].clone(), dims[0].clone()]));
    // One weight node per view, however many matmuls read it.
    let existing = g
        .weights()
        .iter()
        .copied()
        .find(|&id| matches!(&g.node(id).kind, NodeKind::Weight { key, .. } if *key == name));
    Ok(Some(match existing {
        Some(id) => Value::of(id),
        None => g.add_weight(&name, &name, ty),
    }))
}

/// The add that is the only reader of linear `n` (bias-less) and adds a
/// vector as wide as its rows: the add and the vector.
fn bias_add(g: &Graph, n: NodeId) -> Option<(NodeId, Value)> {
    if g.operands(n).len() != 2 || g.outputs().iter().any(|o| o.value == Value::of(n)) {
        return None;
    }
    let users = g.users(Value::of(n));
    let [(add, _)] = users[..] else { return None };
    if g.node(add).op() != Some(&Op::Binary(BinaryKind::Add)) {
        return None;
    }
    let ops = g.operands(add);
    let [a, b] = ops[..] else { return None };
    let bias = if a == Value::of(n) { b } else { a };
    if bias == Value::of(n) {
        return None;
    }
    let ty = &g.node(n).outputs[0];
    let width = ty.shape.dims().last()?;
    let bt = g.value_type(bias)?;
    let fits = bt.dtype == ty.dtype && bt.shape.dims() == [width.clone()];
    (fits && g.node(add).outputs[0] == *ty).then_some((add, bias))
}

impl Pass for MatmulToLinear {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "rewrite matmuls against 2-D weights as linears (transposed weight views) and fold bias adds into linears"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut rewrites = 0;
        let mut linears = Vec::new();
        for n in op_order(g) {
            match g.node(n).op() {
                Some(Op::Linear(_)) => linears.push(n),
                Some(Op::MatMul(_)) => {
                    let Some(w) = linear_weight(g, cx, n)? else {
                        continue;
                    };
                    let x = g.operands(n)[0];
                    let node = g.node(n);
                    let (outs, loc) = (node.outputs.clone(), node.loc.clone());
                    let lin = g.add_op_at(n, Op::Linear(Linear), &[x, w], outs, loc);
                    g.replace_all_uses(Value::of(n), Value::of(lin));
                    g.remove_node(n);
                    linears.push(lin);
                    rewrites += 1;
                }
                _ => {}
            }
        }
        for n in linears {
            let Some((add, bias)) = bias_add(g, n) else {
                continue;
            };
            let node = g.node(n);
            let (outs, loc) = (node.outputs.clone(), node.loc.clone());
            let ops = g.operands(n);
            // At the add's place: the bias may be computed after the product.
            let lin = g.add_op_at(add, Op::Linear(Linear), &[ops[0], ops[1], bias], outs, loc);
            g.replace_all_uses(Value::of(add), Value::of(lin));
            g.remove_node(add);
            g.remove_node(n);
            rewrites += 1;
        }
        Ok(PassReport {
            rewrites,
            notes: Vec::new(),
        })
    }
}
