//! Time to load a Llama-3.2-1B-shaped checkpoint (config + mapped bf16
//! safetensors, sparse) and build its graph: measured, never asserted. Run
//! with `cargo bench --bench hf_load`; numbers go to docs/perf.md.

use optc::fixtures::{write_sparse_llama, LlamaShape};
use optc::frontends::hf;

fn main() {
    divan::main();
}

#[divan::bench(sample_count = 20)]
fn load_llama_3_2_1b(bencher: divan::Bencher) {
    let dir = std::env::temp_dir().join(format!("optc-bench-1b-{}", std::process::id()));
    write_sparse_llama(&dir, &LlamaShape::llama_3_2_1b()).expect("writes the checkpoint");
    bencher.bench(|| hf::load(&dir).expect("loads"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Times the default pipeline on the graph of a sparse checkpoint of `shape`.
fn bench_pipeline(bencher: divan::Bencher, tag: &str, shape: LlamaShape) {
    let dir = std::env::temp_dir().join(format!("optc-bench-{tag}-{}", std::process::id()));
    write_sparse_llama(&dir, &shape).expect("writes the checkpoint");
    let m = hf::load(&dir).expect("loads");
    let mut weights = m.weights;
    bencher
        .with_inputs(|| m.graph.clone())
        .bench_local_refs(|g| optc::Compiler::new().compile(g, &mut weights).expect("compiles"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The default pipeline on the Llama-3.2-1B-shaped graph (weights not read).
#[divan::bench(sample_count = 10)]
fn default_pipeline_llama_3_2_1b(bencher: divan::Bencher) {
    bench_pipeline(bencher, "1b-pipe", LlamaShape::llama_3_2_1b());
}

/// The default pipeline on an 80-layer graph (Llama-3.2-1B widths, 80
/// layers: the graph size of a 70B model).
#[divan::bench(sample_count = 5)]
fn default_pipeline_80_layers(bencher: divan::Bencher) {
    let shape = LlamaShape {
        layers: 80,
        ..LlamaShape::llama_3_2_1b()
    };
    bench_pipeline(bencher, "80l", shape);
}
