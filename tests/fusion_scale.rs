//! The default pipeline on full-size graphs: Llama-3.2-1B (16 layers) and
//! the same widths with 80 layers (the op count of a 70B model). Every layer
//! fuses as in the fixtures and no e-graph run stops on a bound (a bound hit
//! would fuse less, and say so in the notes). The checkpoints are sparse
//! files whose weights are never read; timings are benchmarks
//! (`cargo bench --bench hf_load`), not asserted here.

use optc::fixtures::{write_sparse_llama, LlamaShape};
use optc::frontends::hf;

fn fully_fused(tag: &str, shape: LlamaShape) {
    let dir = std::env::temp_dir().join(format!("optc-fusion-scale-{tag}-{}", std::process::id()));
    write_sparse_llama(&dir, &shape).unwrap();
    let loaded = hf::load(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let mut m = loaded.unwrap();
    let report = optc::Compiler::new()
        .compile(&mut m.graph, &mut m.weights)
        .unwrap();
    let notes: Vec<String> = report
        .runs
        .iter()
        .flat_map(|r| r.notes.iter().map(move |n| format!("{}: {n}", r.name)))
        .collect();
    assert!(notes.is_empty(), "{tag}: {notes:?}");
    let counts = m.graph.op_counts();
    let count = |op: &str| counts.get(op).copied().unwrap_or(0);
    let l = shape.layers;
    assert_eq!(count("scaled_dot_product_attention"), l, "{tag}");
    assert_eq!(count("rms_norm") + count("add_rms_norm"), 2 * l + 1, "{tag}");
    assert_eq!(count("swiglu"), l, "{tag}");
    assert_eq!(count("rope"), 2 * l, "{tag}");
    // QKV + o + gate/up + down per layer, and the LM head.
    assert_eq!(count("linear"), 4 * l + 1, "{tag}");
    for gone in ["rsqrt", "silu", "softmax", "pow", "reduce_mean"] {
        assert_eq!(count(gone), 0, "{tag}: {gone} left");
    }
}

#[test]
fn llama_3_2_1b_fuses_every_layer_within_the_bounds() {
    fully_fused("1b", LlamaShape::llama_3_2_1b());
}

#[test]
fn eighty_layers_fuse_every_layer_within_the_bounds() {
    fully_fused(
        "80l",
        LlamaShape {
            layers: 80,
            ..LlamaShape::llama_3_2_1b()
        },
    );
}
