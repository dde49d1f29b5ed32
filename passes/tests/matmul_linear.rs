//! `matmul_to_linear` on text IR: matmuls against 2-D weights (as they
//! are, or through a transpose) become linears, bias adds fold into them,
//! and the interpreter gives the same results before and after; near misses
//! stay as they are.

mod common;

use std::collections::BTreeMap;

use common::{random, run_pass};
use optc_ir::{print, run, DType, Graph, WeightStore};

/// Runs the pass on `text` with random weights of the given shapes; the
/// graph before, after, the rewrites and the store.
fn apply(text: &str, weights: &[(&str, DType, &[usize])]) -> (Graph, Graph, usize, WeightStore) {
    let mut store = WeightStore::new();
    for (i, (name, dtype, shape)) in weights.iter().enumerate() {
        store.insert(*name, random(*dtype, shape, 7 + i as u64)).unwrap();
    }
    let (before, g, rewrites) = run_pass("matmul_to_linear", text, &mut store);
    (before, g, rewrites, store)
}

fn count(g: &Graph, op: &str) -> usize {
    g.op_counts().get(op).copied().unwrap_or(0)
}

/// The largest difference between the graphs' results on random `x`.
fn max_diff(before: &Graph, after: &Graph, store: &WeightStore, x: (DType, &[usize])) -> f64 {
    let inputs = BTreeMap::from([("x".to_string(), random(x.0, x.1, 3))]);
    let a = run(before, &inputs, store).unwrap();
    let b = run(after, &inputs, store).unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(a, b)| a.max_abs_diff(b))
        .fold(0.0, f64::max)
}

#[test]
fn a_conv1d_projection_becomes_a_linear_with_its_bias() {
    for (dtype, tol) in [(DType::F32, 1e-6), (DType::BF16, 2e-2)] {
        let text = format!(
            "graph g(%x: {dtype}[2, 3, 4]) -> (%y: {dtype}[2, 3, 6]) {{
  weight @w: {dtype}[4, 6] = \"h.0.c_attn.weight\"
  weight @b: {dtype}[6] = \"h.0.c_attn.bias\"
  %0: {dtype}[2, 3, 6] = matmul(%x, @w)
  %1: {dtype}[2, 3, 6] = add(@b, %0)
  return %1
}}"
        );
        let shapes: [(&str, DType, &[usize]); 2] = [
            ("h.0.c_attn.weight", dtype, &[4, 6]),
            ("h.0.c_attn.bias", dtype, &[6]),
        ];
        let (before, g, n, store) = apply(&text, &shapes);
        assert_eq!(n, 2, "{}", print(&g));
        assert_eq!(
            (count(&g, "linear"), count(&g, "matmul"), count(&g, "add")),
            (1, 0, 0)
        );
        let lin = g.node_ids().find(|&id| g.node(id).op().is_some()).unwrap();
        let ops = g.operands(lin);
        assert_eq!(ops.len(), 3);
        assert_eq!(g.node_name(ops[1].node), Some("h.0.c_attn.weight.T"));
        // The view is the weight transposed, materialised on demand.
        let w = store.get("h.0.c_attn.weight").unwrap().to_f32_vec();
        let wt = store.get("h.0.c_attn.weight.T").unwrap();
        assert_eq!(wt.shape(), &[6, 4]);
        assert_eq!(wt.to_f32_vec()[4 + 1], w[6 + 1], "row 1 col 1");
        assert_eq!(
            wt.to_f32_vec()[2 * 4 + 3],
            w[3 * 6 + 2],
            "[2, 3] of the view is [3, 2]"
        );
        let d = max_diff(&before, &g, &store, (dtype, &[2, 3, 4]));
        assert!(d <= tol, "{dtype}: results moved by {d}");
    }
}

/// `Gemm` with `transB` (and `x @ w.T`): the linear reads the weight as it
/// is, and two matmuls of one `[k, n]` weight share one view.
#[test]
fn transposed_and_shared_weights_need_no_copy_or_one() {
    let text = "graph g(%x: f32[5, 4]) -> (%y: f32[5, 6], %z: f32[5, 3], %u: f32[5, 3]) {
  weight @w: f32[6, 4] = \"w\"
  weight @v: f32[4, 3] = \"v\"
  %0: f32[4, 6] = transpose(@w) {perm = [1, 0]}
  %1: f32[5, 6] = matmul(%x, %0)
  %2: f32[5, 3] = matmul(%x, @v)
  %3: f32[5, 4] = relu(%x)
  %4: f32[5, 3] = matmul(%3, @v)
  return %1, %2, %4
}";
    let (before, g, n, store) = apply(text, &[("w", DType::F32, &[6, 4]), ("v", DType::F32, &[4, 3])]);
    assert_eq!(n, 3, "{}", print(&g));
    assert_eq!((count(&g, "linear"), count(&g, "matmul")), (3, 0));
    assert!(!store.contains("w.T"), "the transposed weight is read as it is");
    let views = g
        .weights()
        .iter()
        .filter(|&&id| g.node_name(id) == Some("v.T"))
        .count();
    assert_eq!(views, 1, "{}", print(&g));
    assert_eq!(max_diff(&before, &g, &store, (DType::F32, &[5, 4])), 0.0);
}

#[test]
fn near_misses_stay_as_they_are() {
    // A weight also read as a table (a transposed copy would store it
    // twice), a product of two activations, a bias that is a matrix, and a
    // linear read by more than its add.
    let text = "graph g(%x: f32[5, 4], %ids: i64[5]) -> (%y: f32[5, 6], %e: f32[5, 6], %p: f32[5, 5], %q: f32[5, 3], %r: f32[5, 3], %s: f32[5, 3]) {
  weight @w: f32[4, 6] = \"w\"
  weight @m: f32[3, 4] = \"m\"
  weight @bm: f32[5, 3] = \"bm\"
  weight @b: f32[3] = \"b\"
  %0: f32[5, 6] = matmul(%x, @w)
  %1: f32[5, 6] = embedding(@w, %ids)
  %2: f32[4, 5] = transpose(%x) {perm = [1, 0]}
  %3: f32[5, 5] = matmul(%x, %2)
  %4: f32[5, 3] = linear(%x, @m)
  %5: f32[5, 3] = add(%4, @bm)
  %6: f32[5, 3] = linear(%x, @m)
  %7: f32[5, 3] = add(%6, @b)
  return %0, %1, %3, %5, %7, %6
}";
    let (_, g, n, store) = apply(
        text,
        &[
            ("w", DType::F32, &[4, 6]),
            ("m", DType::F32, &[3, 4]),
            ("bm", DType::F32, &[5, 3]),
            ("b", DType::F32, &[3]),
        ],
    );
    assert_eq!(n, 0, "{}", print(&g));
    assert_eq!((count(&g, "matmul"), count(&g, "add")), (2, 2));
    assert!(!store.contains("w.T"));
    // A checkpoint tensor already named as the view would be is not taken
    // for it.
    let text = "graph g(%x: f32[5, 4]) -> (%y: f32[5, 6]) {
  weight @w: f32[4, 6] = \"w\"
  %0: f32[5, 6] = matmul(%x, @w)
  return %0
}";
    let (_, g, n, _) = apply(text, &[("w", DType::F32, &[4, 6]), ("w.T", DType::F32, &[6, 4])]);
    assert_eq!((n, count(&g, "matmul")), (0, 1), "{}", print(&g));
}
