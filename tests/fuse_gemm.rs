//! `fuse_gemm` on the model fixtures: one QKV and one gate/up GEMM per layer
//! where the architecture has separate projections, nothing where the
//! checkpoint is already fused (Phi-3) or uses Conv1D (GPT-2), and logits
//! unchanged (the fused GEMM computes the same dot products).

use std::collections::BTreeMap;
use std::path::Path;

use optc::frontends::hf;
use optc::ir::{run, DType, Tensor};
use optc::Compiler;

fn check(name: &str, fused_per_layer: usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name);
    let mut m = hf::load(dir).unwrap();
    let before = m.graph.clone();
    let linears_before = before.op_counts().get("linear").copied().unwrap_or(0);
    let report = Compiler::new().compile(&mut m.graph, &mut m.weights).unwrap();
    let fuse = report.runs.iter().find(|r| r.name == "fuse_gemm").unwrap();
    let layers = m.config.num_layers;
    assert_eq!(fuse.rewrites, fused_per_layer * layers, "{name}");
    let counts = m.graph.op_counts();
    assert!(
        counts.get("split").copied().unwrap_or(0) >= fused_per_layer * layers,
        "{name}"
    );
    if fused_per_layer == 2 {
        // q, k, v → 1 and gate, up → 1: three fewer linears per layer.
        assert_eq!(counts["linear"], linears_before - 3 * layers, "{name}");
    }
    let ids: Vec<i64> = (0..7).map(|i| (i * 37 % 300) as i64).collect();
    let inputs = BTreeMap::from([("ids".to_string(), Tensor::from_i64(DType::I64, &[1, 7], &ids))]);
    let a = run(&before, &inputs, &m.weights).unwrap();
    let b = run(&m.graph, &inputs, &m.weights).unwrap();
    // The default pipeline also fuses norms, which in bf16 round once where
    // the chain rounded at every op: a few bf16 ulps at logit magnitude.
    let tol = if name.ends_with("bf16") { 0.5 } else { 1e-5 };
    let err = a[0].max_abs_diff(&b[0]);
    assert!(err <= tol, "{name}: logits moved by {err}");
}

#[test]
fn llama_family_gets_qkv_and_gate_up_gemms() {
    check("llama", 2);
    check("mistral", 2);
    check("qwen2", 2);
    check("llama_bf16", 2);
}

#[test]
fn already_fused_or_conv1d_checkpoints_are_left_alone() {
    check("phi3", 0);
    check("gpt2", 0);
}
