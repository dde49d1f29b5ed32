//! The default pipeline on every fixture architecture: one norm op per
//! norm, one rope per rotated q and k, one attention per layer (GQA
//! through the kv heads, causal where the mask is), one swiglu (or gelu) per MLP, one QKV and one gate/up GEMM per
//! layer where the checkpoint has separate projections, every projection a
//! linear (GPT-2's Conv1D matmuls too), no leftover
//! rsqrt/silu/tanh chains, and logits unchanged (1e-5, f32 fixtures).

use std::collections::BTreeMap;
use std::path::Path;

use optc::frontends::hf;
use optc::ir::ops::Op;
use optc::ir::{run, DType, Graph, Tensor, WeightStore};
use optc::Compiler;

fn compiled(name: &str) -> (Graph, Graph, WeightStore, usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name);
    let mut m = hf::load(dir).unwrap();
    let before = m.graph.clone();
    Compiler::new().compile(&mut m.graph, &mut m.weights).unwrap();
    (before, m.graph, m.weights, m.config.num_layers)
}

fn count(g: &Graph, op: &str) -> usize {
    g.op_counts().get(op).copied().unwrap_or(0)
}

fn same_logits(before: &Graph, after: &Graph, w: &WeightStore, tol: f64) {
    let ids: Vec<i64> = (0..9).map(|i| (i * 53 % 300) as i64).collect();
    let inputs = BTreeMap::from([("ids".to_string(), Tensor::from_i64(DType::I64, &[1, 9], &ids))]);
    let a = run(before, &inputs, w).unwrap();
    let b = run(after, &inputs, w).unwrap();
    let err = a[0].max_abs_diff(&b[0]);
    assert!(err <= tol, "logits moved by {err}");
}

#[test]
fn llama_family() {
    for name in ["llama", "mistral", "qwen2", "phi3"] {
        let (before, g, w, l) = compiled(name);
        // The first norm reads the embeddings; every other one a residual add.
        assert_eq!(count(&g, "rms_norm"), 1, "{name}");
        assert_eq!(count(&g, "add_rms_norm"), 2 * l, "{name}");
        assert_eq!(count(&g, "swiglu"), l, "{name}");
        assert_eq!(count(&g, "rope"), 2 * l, "{name}");
        assert_eq!(count(&g, "scaled_dot_product_attention"), l, "{name}");
        for gone in ["rsqrt", "silu", "pow", "reduce_mean", "neg", "softmax", "expand"] {
            assert_eq!(count(&g, gone), 0, "{name}: {gone} left");
        }
        // QKV + o + gate/up + down per layer, and the LM head.
        assert_eq!(count(&g, "linear"), 4 * l + 1, "{name}");
        // Causal masks become `causal = true`; Mistral's sliding window
        // stays an additive mask operand.
        for n in g.node_ids() {
            if let Some(Op::Attention(a)) = g.node(n).op() {
                let sliding = name == "mistral";
                assert_eq!(a.causal, !sliding, "{name}");
                assert_eq!(g.operands(n).len(), if sliding { 4 } else { 3 }, "{name}");
            }
        }
        same_logits(&before, &g, &w, 1e-5);
    }
}

#[test]
fn gpt2() {
    let (before, g, w, l) = compiled("gpt2");
    assert_eq!(count(&g, "gelu"), l);
    assert_eq!(count(&g, "layer_norm"), 2 * l + 1);
    assert_eq!(count(&g, "scaled_dot_product_attention"), l);
    for gone in ["tanh", "pow", "softmax"] {
        assert_eq!(count(&g, gone), 0, "{gone} left");
    }
    // The Conv1D matmuls and their bias adds are linears
    // (`matmul_to_linear`): c_attn, c_proj, c_fc, mlp.c_proj and the LM head.
    assert_eq!(count(&g, "linear"), 4 * l + 1);
    assert_eq!(count(&g, "matmul"), 0);
    same_logits(&before, &g, &w, 1e-5);
}

#[test]
fn half_precision_fuses_through_the_casts() {
    let (_, g, _, l) = compiled("llama_bf16");
    assert_eq!(count(&g, "rms_norm") + count(&g, "add_rms_norm"), 2 * l + 1);
    assert_eq!(count(&g, "rsqrt"), 0);
    // Attention through the softmax's f32 casts.
    assert_eq!(count(&g, "scaled_dot_product_attention"), l);
    assert_eq!(count(&g, "softmax"), 0);
    let (_, g, _, l) = compiled("qwen2_f16");
    assert_eq!(count(&g, "rms_norm") + count(&g, "add_rms_norm"), 2 * l + 1);
    assert_eq!(count(&g, "swiglu"), l);
    assert_eq!(count(&g, "scaled_dot_product_attention"), l);
    assert_eq!(count(&g, "softmax"), 0);
}

#[test]
fn hitting_an_e_graph_bound_is_reported() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama");
    let mut m = hf::load(dir).unwrap();
    let pipeline = optc::passes::Pipeline::from_toml(
        "bounded.toml",
        "[[pass]]\nname = \"fuse_rmsnorm\"\noptions = { max_nodes = 10 }\n",
    )
    .unwrap();
    let mut c = Compiler::new();
    c.set_pipeline(pipeline);
    let report = c.compile(&mut m.graph, &mut m.weights).unwrap();
    let notes = &report.runs[0].notes;
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("e-graph run stopped early: NodeLimit(")),
        "{notes:?}"
    );
    assert!(report.table().contains("note: e-graph run stopped early"));
}
