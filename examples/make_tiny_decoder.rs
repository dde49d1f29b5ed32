//! Writes the tiny random decoder as a runnable bundle:
//! `DIR/tiny_decoder.ir` (text IR), `DIR/weights.safetensors` and
//! `DIR/ids.safetensors` (a batch of 2 prompts of 12 tokens).
//!
//! `cargo run --release --example make_tiny_decoder -- DIR`

use anyhow::{Context, Result};
use optc::fixtures::{random_ids, tiny_decoder, SplitMix64, TinyDecoderConfig};
use optc::ir::{self, weights::write_safetensors};

fn main() -> Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "target/tiny".into());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir}"))?;
    let cfg = TinyDecoderConfig::default();
    let (g, store) = tiny_decoder(&cfg)?;
    std::fs::write(format!("{dir}/tiny_decoder.ir"), ir::print(&g))?;
    let weights: Vec<(String, ir::Tensor)> = store
        .names()
        .map(|n| Ok((n.to_string(), store.get(n)?)))
        .collect::<Result<_>>()?;
    write_safetensors(format!("{dir}/weights.safetensors"), &weights)?;
    let ids = random_ids(&[2, 12], cfg.vocab, &mut SplitMix64(7));
    write_safetensors(format!("{dir}/ids.safetensors"), &[("ids".into(), ids)])?;
    println!("wrote {dir}/tiny_decoder.ir, {dir}/weights.safetensors, {dir}/ids.safetensors");
    Ok(())
}
