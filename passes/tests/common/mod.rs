//! Helpers shared by the text-IR pass tests: one pass run on parsed text,
//! checked by the verifier before and after, and random tensors that need
//! no RNG crate.

use optc_ir::{parse, print, verify, DType, Graph, Tensor, WeightStore};
use optc_passes::{PassContext, PassRegistry};

/// Runs the built-in pass `name` with default options on `text`; the graph
/// before, after and the number of rewrites. Both graphs pass the verifier.
pub fn run_pass(name: &str, text: &str, store: &mut WeightStore) -> (Graph, Graph, usize) {
    let before = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    verify(&before).unwrap();
    let mut g = before.clone();
    let p = PassRegistry::builtin()
        .get(name)
        .unwrap_or_else(|e| panic!("{e}"));
    let r = p
        .run(
            &mut g,
            &mut PassContext {
                weights: store,
                options: &toml::Table::new(),
            },
        )
        .unwrap();
    verify(&g).unwrap_or_else(|e| panic!("the pass broke the graph: {e}\n{}", print(&g)));
    (before, g, r.rewrites)
}

/// Uniform values in [-1, 1) from a xorshift seeded by `seed`.
pub fn random(dtype: DType, shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_f32(dtype, shape, &v)
}
