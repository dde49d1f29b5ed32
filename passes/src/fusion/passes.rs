//! The e-graph fusion passes: each runs its rule family over the graph.

use std::time::Duration;

use optc_ir::Graph;

use super::egraph::{rewrite_graph, Limits, Rule};
use super::rules;
use crate::{Pass, PassContext, PassError, PassReport};

/// Bounds from the pass options (`max_nodes`, `max_iterations`, `max_millis`).
fn limits(pass: &str, cx: &PassContext) -> Result<Limits, PassError> {
    let d = Limits::default();
    Ok(Limits {
        nodes: cx.int_option(pass, "max_nodes", d.nodes as i64)?.max(1) as usize,
        iterations: cx.int_option(pass, "max_iterations", d.iterations as i64)?.max(1) as usize,
        time: Duration::from_millis(
            cx.int_option(pass, "max_millis", d.time.as_millis() as i64)?
                .max(1) as u64,
        ),
    })
}

fn run_rules(pass: &str, rules: Vec<Rule>, g: &mut Graph, cx: &PassContext) -> Result<PassReport, PassError> {
    let out = rewrite_graph(g, &rules, limits(pass, cx)?);
    Ok(PassReport {
        rewrites: out.rewrites,
        notes: out.notes,
    })
}

macro_rules! egg_pass {
    ($ty:ident, $name:literal, $doc:literal, $rules:expr) => {
        egg_pass!($ty, $name, $doc, $rules, needs = []);
    };
    // `needs`: ops one of which every pattern has; a graph with none of
    // them is left alone without building the e-graph.
    ($ty:ident, $name:literal, $doc:literal, $rules:expr, needs = [$($op:literal),*]) => {
        #[doc = $doc]
        pub struct $ty;

        impl Pass for $ty {
            fn name(&self) -> &str {
                $name
            }

            fn description(&self) -> &str {
                $doc
            }

            fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
                let needs: &[&str] = &[$($op),*];
                if !needs.is_empty() {
                    let counts = g.op_counts();
                    if !needs.iter().any(|op| counts.contains_key(*op)) {
                        return Ok(PassReport::default());
                    }
                }
                run_rules($name, $rules, g, cx)
            }
        }
    };
}

egg_pass!(
    FuseRmsNorm,
    "fuse_rmsnorm",
    "fuse x * rsqrt(mean(x^2) + eps) * w (with or without f32 casts) into rms_norm",
    rules::rmsnorm::rules()
);
egg_pass!(
    FuseAttention,
    "fuse_attention",
    "fuse softmax(q k^T * scale + mask) v (with repeat_kv for GQA) into scaled_dot_product_attention",
    rules::attention::rules()
);
egg_pass!(
    FuseLayerNorm,
    "fuse_layernorm",
    "fuse a written-out layer norm ((x - mean) / sqrt(var + eps) * w + b) into layer_norm",
    rules::layernorm::rules()
);
egg_pass!(
    FuseRope,
    "fuse_rope",
    "fuse x * cos + rotate_half(x) * sin into rope",
    rules::rope::rules()
);
egg_pass!(
    FuseSwiglu,
    "fuse_swiglu",
    "fuse silu(gate) * up into swiglu",
    rules::swiglu::rules()
);
egg_pass!(
    FuseGelu,
    "fuse_gelu",
    "fuse the written-out tanh and erf GELU formulas into gelu",
    rules::gelu::rules(),
    needs = ["tanh", "erf"]
);
