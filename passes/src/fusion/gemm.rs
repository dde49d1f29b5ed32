//! `fuse_gemm`: horizontal fusion of `linear` ops that read the same input
//! (Q/K/V projections, gate/up projections) into one `linear` over the
//! concatenated weights, followed by a `split` of its result.
//!
//! The concatenated weight is a lazy view in the weight store (no bytes are
//! copied until a backend materialises it), named after its parts:
//! `model.layers.0.self_attn.q_proj+k_proj+v_proj.weight`.
//!
//! Fused: two or more `linear`s with the same input value whose weights (and
//! biases, if every one has a bias) are graph weights present in the store.
//! Not fused: a mix of biased and unbiased linears, weights that are
//! computed (e.g. a `cast` of a stored weight), weights missing from the store.

use std::collections::BTreeMap;

use optc_ir::ops::{Linear, Op, Split};
use optc_ir::{Dim, Graph, NodeId, NodeKind, Shape, TensorType, Value, View};

use crate::cleanup::op_order;
use crate::{Pass, PassContext, PassError, PassReport};

/// Fuses linears that share an input.
pub struct FuseGemm;

/// The store key of a graph weight operand, if it is one.
pub(super) fn weight_key(g: &Graph, v: Value) -> Option<String> {
    match &g.node(v.node).kind {
        NodeKind::Weight { key, .. } => Some(key.clone()),
        _ => None,
    }
}

/// `a.q_proj.weight`, `a.k_proj.weight` → `a.q_proj+k_proj.weight`.
fn fused_name(keys: &[String]) -> String {
    let first = &keys[0];
    let prefix_len = keys.iter().fold(first.len(), |n, k| {
        first
            .bytes()
            .zip(k.bytes())
            .take(n)
            .take_while(|(a, b)| a == b)
            .count()
    });
    let prefix_len = first[..prefix_len].rfind('.').map_or(0, |i| i + 1);
    let suffix_len = keys.iter().fold(first.len() - prefix_len, |n, k| {
        first
            .bytes()
            .rev()
            .zip(k.bytes().rev())
            .take(n)
            .take_while(|(a, b)| a == b)
            .count()
    });
    let suffix_start = first.len() - suffix_len;
    let suffix_start = first[suffix_start..]
        .find('.')
        .map_or(first.len(), |i| suffix_start + i);
    let middles: Vec<&str> = keys
        .iter()
        .map(|k| &k[prefix_len.min(k.len())..k.len().saturating_sub(first.len() - suffix_start)])
        .collect();
    format!(
        "{}{}{}",
        &first[..prefix_len],
        middles.join("+"),
        &first[suffix_start..]
    )
}

/// A linear that can join a group: its node, weight key, bias key, out features.
struct Member {
    node: NodeId,
    weight: String,
    bias: Option<String>,
    out: Dim,
}

impl Pass for FuseGemm {
    fn name(&self) -> &str {
        "fuse_gemm"
    }

    fn description(&self) -> &str {
        "fuse linears that read the same input into one GEMM over concatenated weights, then split"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut groups: BTreeMap<(Value, bool), Vec<Member>> = BTreeMap::new();
        let mut notes = Vec::new();
        for n in op_order(g) {
            if g.node(n).op() != Some(&Op::Linear(Linear)) {
                continue;
            }
            let ops = g.operands(n);
            let (Some(weight), bias) = (weight_key(g, ops[1]), ops.get(2).map(|&b| weight_key(g, b))) else {
                continue;
            };
            let bias = match bias {
                None => None,
                Some(Some(b)) => Some(b),
                Some(None) => continue,
            };
            let out = g.node(n).outputs[0]
                .shape
                .dims()
                .last()
                .cloned()
                .unwrap_or(Dim::constant(0));
            groups.entry((ops[0], bias.is_some())).or_default().push(Member {
                node: n,
                weight,
                bias,
                out,
            });
        }
        // Fuse in graph order, so the new weights are declared in layer order.
        let position: std::collections::HashMap<NodeId, usize> =
            op_order(g).into_iter().enumerate().map(|(i, n)| (n, i)).collect();
        let mut groups: Vec<((Value, bool), Vec<Member>)> = groups.into_iter().collect();
        groups.sort_by_key(|(_, m)| position[&m[0].node]);
        let mut fused = 0;
        for ((x, _), members) in groups {
            if members.len() < 2 {
                continue;
            }
            let weights: Vec<String> = members.iter().map(|m| m.weight.clone()).collect();
            let missing: Vec<&String> = weights.iter().filter(|k| !cx.weights.contains(k)).collect();
            if !missing.is_empty() {
                notes.push(format!("not fused: weight '{}' is not in the store", missing[0]));
                continue;
            }
            let name = fused_name(&weights);
            let view = |sources: Vec<String>| View::Concat { sources, axis: 0 };
            if !cx.weights.contains(&name) {
                cx.weights
                    .add_view(&name, view(weights.clone()))
                    .map_err(|e| PassError::Failed {
                        pass: self.name().into(),
                        message: e.to_string(),
                    })?;
            }
            let first = &members[0];
            let w_ty = g
                .value_type(g.operands(first.node)[1])
                .cloned()
                .expect("operand exists");
            let total = members.iter().fold(Dim::constant(0), |a, m| &a + &m.out);
            let k = w_ty.shape.dims()[1].clone();
            let w = g.add_weight(
                &name,
                &name,
                TensorType::new(w_ty.dtype, Shape(vec![total.clone(), k])),
            );
            let mut args = vec![x, w];
            if first.bias.is_some() {
                let biases: Vec<String> = members.iter().filter_map(|m| m.bias.clone()).collect();
                let bname = fused_name(&biases);
                if !cx.weights.contains(&bname) {
                    cx.weights
                        .add_view(&bname, view(biases))
                        .map_err(|e| PassError::Failed {
                            pass: self.name().into(),
                            message: e.to_string(),
                        })?;
                }
                let b = g.add_weight(
                    &bname,
                    &bname,
                    TensorType::new(w_ty.dtype, Shape(vec![total.clone()])),
                );
                args.push(b);
            }
            let loc = g.node(first.node).loc.clone();
            let out_ty = g.node(first.node).outputs[0].clone();
            let mut dims = out_ty.shape.dims().to_vec();
            *dims.last_mut().expect("linear output has rank >= 1") = total;
            let lin = g.add_op(
                Op::Linear(Linear),
                &args,
                vec![TensorType::new(out_ty.dtype, Shape(dims))],
                loc.clone(),
            );
            let sizes: Vec<Dim> = members.iter().map(|m| m.out.clone()).collect();
            let split_types: Vec<TensorType> = members
                .iter()
                .map(|m| g.node(m.node).outputs[0].clone())
                .collect();
            let split = g.add_op(
                Op::Split(Split { axis: -1, sizes }),
                &[Value::of(lin)],
                split_types,
                loc,
            );
            for (i, m) in members.iter().enumerate() {
                g.replace_all_uses(
                    Value::of(m.node),
                    Value {
                        node: split,
                        index: i as u32,
                    },
                );
                g.remove_node(m.node);
            }
            fused += 1;
        }
        Ok(PassReport {
            rewrites: fused,
            notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::fused_name;

    #[test]
    fn names_say_what_was_fused() {
        let k = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            fused_name(&k(&[
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.k_proj.weight",
                "model.layers.0.self_attn.v_proj.weight"
            ])),
            "model.layers.0.self_attn.q_proj+k_proj+v_proj.weight"
        );
        assert_eq!(
            fused_name(&k(&[
                "model.layers.3.mlp.gate_proj.bias",
                "model.layers.3.mlp.up_proj.bias"
            ])),
            "model.layers.3.mlp.gate_proj+up_proj.bias"
        );
        assert_eq!(fused_name(&k(&["a", "b"])), "a+b");
    }
}
