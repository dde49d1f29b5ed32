//! Frontends and passes are independent: the default pipeline fuses the
//! torch.export archives of the Hugging Face fixtures exactly as it fuses
//! the same checkpoints loaded from safetensors (same counts of attention,
//! norm, rope, activation and GEMM ops), and the fused graphs still match
//! torch.

use std::collections::BTreeMap;
use std::path::Path;

use optc::frontends::{fx, hf};
use optc::ir::{run, DType, Graph, WeightStore};
use optc::Compiler;

const FUSED: [&str; 10] = [
    "scaled_dot_product_attention",
    "rms_norm",
    "add_rms_norm",
    "layer_norm",
    "rope",
    "swiglu",
    "gelu",
    "linear",
    "matmul",
    "softmax",
];

fn counts(g: &Graph) -> BTreeMap<&'static str, usize> {
    let all = g.op_counts();
    FUSED
        .iter()
        .map(|&op| (op, all.get(op).copied().unwrap_or(0)))
        .collect()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compile(g: &mut Graph, w: &mut WeightStore) {
    Compiler::new().compile(g, w).unwrap_or_else(|e| panic!("{e}"));
}

fn same_fusion(name: &str) {
    let mut h = hf::load(root().join("tests/fixtures/hf").join(name)).unwrap();
    compile(&mut h.graph, &mut h.weights);
    let mut f = fx::load(root().join(format!("tests/fixtures/fx/{name}.pt2"))).unwrap();
    compile(&mut f.graph, &mut f.weights);
    assert_eq!(
        counts(&f.graph),
        counts(&h.graph),
        "{name}: fused op counts (fx vs safetensors)"
    );
    // The fused graph still computes torch's logits.
    let mut reference = WeightStore::new();
    reference
        .open_safetensors(root().join(format!("tests/fixtures/fx/{name}.reference.safetensors")))
        .unwrap();
    let x = reference.get("input_13").unwrap();
    let want = reference.get("output_13").unwrap();
    let got = run(
        &f.graph,
        &BTreeMap::from([("input_ids".to_string(), x)]),
        &f.weights,
    )
    .unwrap();
    let err = got[0].cast(DType::F32).max_abs_diff(&want);
    assert!(err <= 1e-4, "{name}: fused graph is off by {err}");
}

#[test]
fn llama_fuses_like_safetensors() {
    same_fusion("llama");
}

#[test]
fn qwen2_fuses_like_safetensors() {
    same_fusion("qwen2");
}

#[test]
fn gpt2_fuses_like_safetensors() {
    same_fusion("gpt2");
}
