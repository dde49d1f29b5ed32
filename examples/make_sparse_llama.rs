//! Writes a Llama-3.2-1B-shaped model folder (config.json + a sparse bf16
//! model.safetensors: 2.5 GB logical, no disk used, all weights zero) for
//! measuring load and compile time without downloading a model.
//!
//! `cargo run --release --example make_sparse_llama -- DIR`

use optc::fixtures::{write_sparse_llama, LlamaShape};

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/llama-3.2-1b-sparse".into());
    let bytes = write_sparse_llama(std::path::Path::new(&dir), &LlamaShape::llama_3_2_1b())?;
    println!("wrote {dir} ({bytes} bytes of bf16 weights, sparse)");
    Ok(())
}
