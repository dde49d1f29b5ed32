//! `sink_rope_transposes` on text IR: the step graph's transpose → rope →
//! transpose becomes one rope with permuted cos/sin, with the same results
//! on the interpreter; near misses stay as they are.

mod common;

use std::collections::BTreeMap;

use common::run_pass;
use optc_ir::{print, run, DType, Graph, Tensor, WeightStore};

fn apply(text: &str) -> (Graph, Graph, usize) {
    run_pass("sink_rope_transposes", text, &mut WeightStore::new())
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    common::random(DType::F32, shape, seed)
}

fn results(g: &Graph, inputs: &BTreeMap<String, Tensor>) -> Vec<Tensor> {
    run(g, inputs, &WeightStore::new()).unwrap()
}

fn count(g: &Graph, op: &str) -> usize {
    g.op_counts().get(op).copied().unwrap_or(0)
}

/// Tokens-first `[1, T, H, D]` to heads-first and back, as insert_kv_cache
/// leaves it, with cos/sin `[1, 1, T, R]` (partial rotary: R < D) or `[T, R]`.
fn step_like(cos: &str, inner: &str, outer: &str, tail: &str) -> String {
    format!(
        "graph g(%x: f32[1, 5, 3, 8], %c: f32[{cos}], %s: f32[{cos}]) -> (%y: f32[1, 5, 3, 8]{tail}) {{
  %0: f32[{inner}] = transpose(%x) {{perm = [0, 2, 1, 3]}}
  %1: f32[{inner}] = rope(%0, %c, %s) {{interleaved = false}}
  %2: f32[1, 5, 3, 8] = transpose(%1) {{perm = {outer}}}
  return %2{}
}}",
        if tail.is_empty() { "" } else { ", %1" }
    )
}

#[test]
fn the_step_graph_pattern_becomes_one_rope() {
    for (cos, shape) in [("1, 1, 5, 6", vec![1, 1, 5, 6]), ("5, 8", vec![5, 8])] {
        let text = step_like(cos, "1, 3, 5, 8", "[0, 2, 1, 3]", "");
        let (before, g, n) = apply(&text);
        assert_eq!(n, 1, "{cos}");
        assert_eq!(count(&g, "rope"), 1);
        // Only the two small cos/sin permutes remain.
        assert_eq!(count(&g, "transpose"), 2, "{}", print(&g));
        let inputs = BTreeMap::from([
            ("x".to_string(), random(&[1, 5, 3, 8], 1)),
            ("c".to_string(), random(&shape, 2)),
            ("s".to_string(), random(&shape, 3)),
        ]);
        assert_eq!(results(&before, &inputs), results(&g, &inputs), "{cos}");
    }
}

#[test]
fn near_misses_stay() {
    // The outer transpose is not the inverse.
    let text = "graph g(%x: f32[2, 5, 3, 8], %c: f32[5, 8], %s: f32[5, 8]) -> (%y: f32[3, 2, 5, 8]) {
  %0: f32[2, 3, 5, 8] = transpose(%x) {perm = [0, 2, 1, 3]}
  %1: f32[2, 3, 5, 8] = rope(%0, %c, %s) {interleaved = false}
  %2: f32[3, 2, 5, 8] = transpose(%1) {perm = [1, 0, 2, 3]}
  return %2
}";
    assert_eq!(apply(text).2, 0);
    // The rope result has another reader (a graph output).
    let text = step_like("5, 8", "1, 3, 5, 8", "[0, 2, 1, 3]", ", %z: f32[1, 3, 5, 8]");
    assert_eq!(apply(&text).2, 0);
    // The inner transpose moves the rotated (last) axis.
    let text = "graph g(%x: f32[1, 5, 8, 8], %c: f32[8], %s: f32[8]) -> (%y: f32[1, 5, 8, 8]) {
  %0: f32[1, 5, 8, 8] = transpose(%x) {perm = [0, 1, 3, 2]}
  %1: f32[1, 5, 8, 8] = rope(%0, %c, %s) {interleaved = false}
  %2: f32[1, 5, 8, 8] = transpose(%1) {perm = [0, 1, 3, 2]}
  return %2
}";
    assert_eq!(apply(text).2, 0);
}
