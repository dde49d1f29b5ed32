//! Interpreter results for the ops on hand-computed values: broadcasting
//! (size-1 and 0-size dims), negative axes, batched matmul, softmax on large
//! inputs, GQA attention, rope, norms, and the run-time errors. The numpy
//! goldens in `goldens.rs` cover every op against an independent reference.

use std::collections::BTreeMap;

use optc_ir::{parse, run, DType, EvalError, Tensor, WeightStore};

fn f32t(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(DType::F32, shape, v)
}

fn i64t(shape: &[usize], v: &[i64]) -> Tensor {
    Tensor::from_i64(DType::I64, shape, v)
}

/// Parses `text`, runs it on the named inputs and returns the outputs.
fn eval(text: &str, inputs: &[(&str, Tensor)]) -> Result<Vec<Tensor>, EvalError> {
    let g = parse(text).unwrap_or_else(|e| panic!("test graph does not parse: {e}\n{text}"));
    let inputs: BTreeMap<String, Tensor> = inputs.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    run(&g, &inputs, &WeightStore::new())
}

fn eval1(text: &str, inputs: &[(&str, Tensor)]) -> Tensor {
    eval(text, inputs).unwrap_or_else(|e| panic!("{e}")).remove(0)
}

fn assert_close(t: &Tensor, shape: &[usize], want: &[f64], tol: f64) {
    assert_eq!(t.shape(), shape, "shape");
    let got = t.to_f64_vec();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= tol || (g.is_nan() && w.is_nan()) || g == w;
        assert!(ok, "element {i}: got {g}, want {w} (all: {got:?})");
    }
}

#[test]
fn add_broadcasts_size_one_dims() {
    let y = eval1(
        "graph g(%a: f32[2, 1], %b: f32[3]) -> (%y: f32[2, 3]) {\n  %0: f32[2, 3] = add(%a, %b)\n  return %0\n}",
        &[("a", f32t(&[2, 1], &[1.0, 2.0])), ("b", f32t(&[3], &[10.0, 20.0, 30.0]))],
    );
    assert_close(&y, &[2, 3], &[11.0, 21.0, 31.0, 12.0, 22.0, 32.0], 0.0);
}

#[test]
fn broadcasting_with_zero_size_dims() {
    let y = eval1(
        "graph g(%a: f32[0, 3], %b: f32[1, 3]) -> (%y: f32[0, 3]) {\n  %0: f32[0, 3] = mul(%a, %b)\n  return %0\n}",
        &[("a", f32t(&[0, 3], &[])), ("b", f32t(&[1, 3], &[1.0, 2.0, 3.0]))],
    );
    assert_eq!(y.shape(), &[0, 3]);
    // Summing over an empty axis gives the identity.
    let s = eval1(
        "graph g(%a: f32[0, 3]) -> (%y: f32[3]) {\n  %0: f32[3] = reduce_sum(%a) {axes = [0]}\n  return %0\n}",
        &[("a", f32t(&[0, 3], &[]))],
    );
    assert_close(&s, &[3], &[0.0, 0.0, 0.0], 0.0);
}

#[test]
fn symbolic_broadcast_binds_from_inputs() {
    let y = eval1(
        "graph g(%a: f32[B, S], %b: f32[S]) -> (%y: f32[B, S]) {\n  %0: f32[B, S] = sub(%a, %b)\n  return %0\n}",
        &[("a", f32t(&[2, 2], &[5.0, 6.0, 7.0, 8.0])), ("b", f32t(&[2], &[1.0, 2.0]))],
    );
    assert_close(&y, &[2, 2], &[4.0, 4.0, 6.0, 6.0], 0.0);
}

#[test]
fn negative_axes_in_reductions_softmax_and_concat() {
    let x = f32t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let s = eval1(
        "graph g(%x: f32[2, 3]) -> (%y: f32[2, 1]) {\n  %0: f32[2, 1] = reduce_sum(%x) {axes = [-1], keepdims = true}\n  return %0\n}",
        &[("x", x.clone())],
    );
    assert_close(&s, &[2, 1], &[6.0, 15.0], 0.0);
    let m = eval1(
        "graph g(%x: f32[2, 3]) -> (%y: f32[3]) {\n  %0: f32[3] = reduce_max(%x) {axes = [-2]}\n  return %0\n}",
        &[("x", x.clone())],
    );
    assert_close(&m, &[3], &[4.0, 5.0, 6.0], 0.0);
    let c = eval1(
        "graph g(%x: f32[2, 3]) -> (%y: f32[2, 6]) {\n  %0: f32[2, 6] = concat(%x, %x) {axis = -1}\n  return %0\n}",
        &[("x", x.clone())],
    );
    assert_close(
        &c,
        &[2, 6],
        &[1., 2., 3., 1., 2., 3., 4., 5., 6., 4., 5., 6.],
        0.0,
    );
    let a = eval1(
        "graph g(%x: f32[2, 3]) -> (%y: i64[2]) {\n  %0: i64[2] = argmax(%x) {axis = -1}\n  return %0\n}",
        &[("x", f32t(&[2, 3], &[1.0, 9.0, 9.0, -1.0, -5.0, -0.5]))],
    );
    assert_eq!(a.to_i64_vec(), vec![1, 2], "ties pick the first index");
}

#[test]
fn batched_matmul_broadcasts_batch_dims() {
    // a: [2, 1, 2, 2], b: [3, 2, 1] → [2, 3, 2, 1]
    let a: Vec<f32> = (1..=8).map(|v| v as f32).collect();
    let b: Vec<f32> = vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    let y = eval1(
        "graph g(%a: f32[2, 1, 2, 2], %b: f32[3, 2, 1]) -> (%y: f32[2, 3, 2, 1]) {\n  %0: f32[2, 3, 2, 1] = matmul(%a, %b)\n  return %0\n}",
        &[("a", f32t(&[2, 1, 2, 2], &a)), ("b", f32t(&[3, 2, 1], &b))],
    );
    // Batch 0 of a is [[1,2],[3,4]]; b's three matrices pick column 0, column 1, and the row sum.
    let want = [1., 3., 2., 4., 3., 7., 5., 7., 6., 8., 11., 15.];
    assert_close(&y, &[2, 3, 2, 1], &want, 0.0);
    // 1-D operands: vector · matrix and matrix · vector.
    let v = eval1(
        "graph g(%v: f32[2], %m: f32[2, 3]) -> (%y: f32[3]) {\n  %0: f32[3] = matmul(%v, %m)\n  return %0\n}",
        &[
            ("v", f32t(&[2], &[1.0, 2.0])),
            ("m", f32t(&[2, 3], &[1., 2., 3., 4., 5., 6.])),
        ],
    );
    assert_close(&v, &[3], &[9.0, 12.0, 15.0], 0.0);
}

#[test]
fn linear_is_x_times_w_transposed_plus_bias() {
    let y = eval1(
        "graph g(%x: f32[1, 2], %w: f32[3, 2], %b: f32[3]) -> (%y: f32[1, 3]) {\n  %0: f32[1, 3] = linear(%x, %w, %b)\n  return %0\n}",
        &[
            ("x", f32t(&[1, 2], &[1.0, 2.0])),
            ("w", f32t(&[3, 2], &[1., 0., 0., 1., 1., 1.])),
            ("b", f32t(&[3], &[0.5, 0.5, 0.5])),
        ],
    );
    assert_close(&y, &[1, 3], &[1.5, 2.5, 3.5], 0.0);
}

#[test]
fn softmax_is_stable_on_large_inputs() {
    let text = "graph g(%x: f32[2, 3]) -> (%y: f32[2, 3], %l: f32[2, 3]) {\n  %0: f32[2, 3] = softmax(%x) {axis = -1}\n  %1: f32[2, 3] = log_softmax(%x) {axis = 1}\n  return %0, %1\n}";
    let out = eval(
        text,
        &[(
            "x",
            f32t(&[2, 3], &[1000.0, 1001.0, 1002.0, -1000.0, -1000.0, -1000.0]),
        )],
    )
    .unwrap();
    let e = [(-2f64).exp(), (-1f64).exp(), 1.0];
    let z: f64 = e.iter().sum();
    let want = [e[0] / z, e[1] / z, e[2] / z, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0];
    assert_close(&out[0], &[2, 3], &want, 1e-7);
    let logw: Vec<f64> = want.iter().map(|p| p.ln()).collect();
    assert_close(&out[1], &[2, 3], &logw, 1e-6);
}

/// GQA attention with hand-checkable values: one key per kv head means the
/// output is that kv head's value, so the head mapping is visible directly.
#[test]
fn gqa_attention_maps_query_heads_to_kv_groups() {
    let text = "graph g(%q: f32[1, 4, 1, 2], %k: f32[1, 2, 1, 2], %v: f32[1, 2, 1, 2]) -> (%y: f32[1, 4, 1, 2]) {\n  %0: f32[1, 4, 1, 2] = scaled_dot_product_attention(%q, %k, %v) {causal = false}\n  return %0\n}";
    let q = f32t(&[1, 4, 1, 2], &[0.3, -1.0, 2.0, 0.5, 1.0, 1.0, -2.0, 0.0]);
    let k = f32t(&[1, 2, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
    let v = f32t(&[1, 2, 1, 2], &[10.0, 11.0, 20.0, 21.0]);
    let y = eval1(text, &[("q", q), ("k", k), ("v", v)]);
    assert_close(&y, &[1, 4, 1, 2], &[10., 11., 10., 11., 20., 21., 20., 21.], 1e-9);
}

#[test]
fn attention_scores_scale_and_causal_mask() {
    // Two keys: query 0 (causal) sees only key 0; query 1 weighs both by
    // softmax(q·k·scale).
    let text = "graph g(%q: f32[1, 1, 2, 1], %k: f32[1, 1, 2, 1], %v: f32[1, 1, 2, 1]) -> (%y: f32[1, 1, 2, 1]) {\n  %0: f32[1, 1, 2, 1] = scaled_dot_product_attention(%q, %k, %v) {causal = true, scale = 0.5}\n  return %0\n}";
    let y = eval1(
        text,
        &[
            ("q", f32t(&[1, 1, 2, 1], &[1.0, 2.0])),
            ("k", f32t(&[1, 1, 2, 1], &[1.0, 3.0])),
            ("v", f32t(&[1, 1, 2, 1], &[5.0, 7.0])),
        ],
    );
    // Query 1: scores 2*1*0.5 = 1 and 2*3*0.5 = 3.
    let (a, b) = (1f64.exp(), 3f64.exp());
    let q1 = (5.0 * a + 7.0 * b) / (a + b);
    assert_close(&y, &[1, 1, 2, 1], &[5.0, q1], 1e-6);
}

#[test]
fn causal_attention_is_bottom_right_aligned_and_masks_add() {
    // One query over three keys (a decode step): causal sees every key.
    let text = "graph g(%q: f32[1, 1, 1, 1], %k: f32[1, 1, 3, 1], %v: f32[1, 1, 3, 1], %m: f32[1, 3]) -> (%y: f32[1, 1, 1, 1], %z: f32[1, 1, 1, 1]) {\n  %0: f32[1, 1, 1, 1] = scaled_dot_product_attention(%q, %k, %v) {causal = true}\n  %1: f32[1, 1, 1, 1] = scaled_dot_product_attention(%q, %k, %v, %m) {causal = true}\n  return %0, %1\n}";
    let out = eval(
        text,
        &[
            ("q", f32t(&[1, 1, 1, 1], &[0.0])),
            ("k", f32t(&[1, 1, 3, 1], &[1.0, 2.0, 3.0])),
            ("v", f32t(&[1, 1, 3, 1], &[3.0, 6.0, 9.0])),
            ("m", f32t(&[1, 3], &[f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY])),
        ],
    )
    .unwrap();
    assert_close(&out[0], &[1, 1, 1, 1], &[6.0], 1e-9); // q = 0: uniform weights
    assert_close(&out[1], &[1, 1, 1, 1], &[6.0], 1e-9); // the mask leaves key 1 only
}

#[test]
fn fully_masked_query_rows_give_zeros() {
    // Three queries, one key, causal: query 0 and 1 see nothing.
    let text = "graph g(%q: f32[1, 3, 1], %k: f32[1, 1, 1], %v: f32[1, 1, 1]) -> (%y: f32[1, 3, 1]) {\n  %0: f32[1, 3, 1] = scaled_dot_product_attention(%q, %k, %v) {causal = true}\n  return %0\n}";
    let y = eval1(
        text,
        &[
            ("q", f32t(&[1, 3, 1], &[1.0, 1.0, 1.0])),
            ("k", f32t(&[1, 1, 1], &[1.0])),
            ("v", f32t(&[1, 1, 1], &[4.0])),
        ],
    );
    assert_close(&y, &[1, 3, 1], &[0.0, 0.0, 4.0], 0.0);
}

#[test]
fn rope_rotate_half_interleaved_and_partial() {
    let x = f32t(&[1, 4], &[1.0, 2.0, 3.0, 4.0]);
    let c = f32t(&[1, 4], &[0.5, 0.5, 0.5, 0.5]);
    let s = f32t(&[1, 4], &[2.0, 2.0, 2.0, 2.0]);
    let text = |inter: bool| {
        format!("graph g(%x: f32[1, 4], %c: f32[1, 4], %s: f32[1, 4]) -> (%y: f32[1, 4]) {{\n  %0: f32[1, 4] = rope(%x, %c, %s) {{interleaved = {inter}}}\n  return %0\n}}")
    };
    let inputs = [("x", x.clone()), ("c", c), ("s", s)];
    // rotate_half([1,2,3,4]) = [-3,-4,1,2]
    let y = eval1(&text(false), &inputs);
    assert_close(&y, &[1, 4], &[0.5 - 6.0, 1.0 - 8.0, 1.5 + 2.0, 2.0 + 4.0], 1e-9);
    // pairwise: [-2, 1, -4, 3]
    let y = eval1(&text(true), &inputs);
    assert_close(&y, &[1, 4], &[0.5 - 4.0, 1.0 + 2.0, 1.5 - 8.0, 2.0 + 6.0], 1e-9);
    // Partial rotary: cos/sin cover the first 2 channels, the rest pass through.
    let y = eval1(
        "graph g(%x: f32[1, 4], %c: f32[2], %s: f32[2]) -> (%y: f32[1, 4]) {\n  %0: f32[1, 4] = rope(%x, %c, %s)\n  return %0\n}",
        &[("x", x), ("c", f32t(&[2], &[1.0, 1.0])), ("s", f32t(&[2], &[1.0, 1.0]))],
    );
    assert_close(&y, &[1, 4], &[1.0 - 2.0, 2.0 + 1.0, 3.0, 4.0], 1e-9);
}

#[test]
fn rms_norm_and_layer_norm() {
    let x = f32t(&[1, 2], &[3.0, 4.0]);
    let y = eval1(
        "graph g(%x: f32[1, 2], %w: f32[2]) -> (%y: f32[1, 2]) {\n  %0: f32[1, 2] = rms_norm(%x, %w) {eps = 0.0}\n  return %0\n}",
        &[("x", x.clone()), ("w", f32t(&[2], &[1.0, 2.0]))],
    );
    let r = 12.5f64.sqrt();
    assert_close(&y, &[1, 2], &[3.0 / r, 8.0 / r], 1e-6);
    let y = eval1(
        "graph g(%x: f32[1, 2], %w: f32[2], %b: f32[2]) -> (%y: f32[1, 2]) {\n  %0: f32[1, 2] = layer_norm(%x, %w, %b) {eps = 0.0}\n  return %0\n}",
        &[("x", x), ("w", f32t(&[2], &[1.0, 2.0])), ("b", f32t(&[2], &[0.0, 1.0]))],
    );
    assert_close(&y, &[1, 2], &[-1.0, 3.0], 1e-6);
}

#[test]
fn slicing_gathering_and_splitting() {
    let x = f32t(&[5], &[0., 1., 2., 3., 4.]);
    let one = |attrs: &str, ty: &str| {
        let text = format!(
            "graph g(%x: f32[5]) -> (%y: {ty}) {{\n  %0: {ty} = slice(%x) {{{attrs}}}\n  return %0\n}}"
        );
        eval1(&text, &[("x", x.clone())]).to_f64_vec()
    };
    assert_eq!(one("axis = 0, start = 1, end = -1", "f32[3]"), vec![1., 2., 3.]);
    assert_eq!(one("axis = -1, start = -2", "f32[2]"), vec![3., 4.]);
    assert_eq!(one("axis = 0, start = 0, step = 2", "f32[3]"), vec![0., 2., 4.]);
    assert_eq!(one("axis = 0, start = -1, step = -2", "f32[3]"), vec![4., 2., 0.]);
    assert_eq!(one("axis = 0, start = 3, end = 100", "f32[2]"), vec![3., 4.]);
    let g = eval1(
        "graph g(%x: f32[5], %i: i64[2, 2]) -> (%y: f32[2, 2]) {\n  %0: f32[2, 2] = gather(%x, %i) {axis = 0}\n  return %0\n}",
        &[("x", x.clone()), ("i", i64t(&[2, 2], &[0, -1, 2, -5]))],
    );
    assert_eq!(g.to_f64_vec(), vec![0., 4., 2., 0.]);
    let out = eval(
        "graph g(%x: f32[5]) -> (%a: f32[2], %b: f32[3]) {\n  %0: f32[2], %1: f32[3] = split(%x) {axis = 0, sizes = [2, 3]}\n  return %0, %1\n}",
        &[("x", x)],
    )
    .unwrap();
    assert_eq!(out[0].to_f64_vec(), vec![0., 1.]);
    assert_eq!(out[1].to_f64_vec(), vec![2., 3., 4.]);
}

#[test]
fn integer_arithmetic_is_exact_and_division_truncates() {
    let text = "graph g(%a: i64[3], %b: i64[3]) -> (%q: i64[3], %p: i64[3]) {\n  %0: i64[3] = div(%a, %b)\n  %1: i64[3] = mul(%a, %b)\n  return %0, %1\n}";
    let big = (1i64 << 60) + 1;
    let out = eval(
        text,
        &[("a", i64t(&[3], &[7, -7, big])), ("b", i64t(&[3], &[2, 2, 1]))],
    )
    .unwrap();
    assert_eq!(out[0].to_i64_vec(), vec![3, -3, big]);
    assert_eq!(out[1].to_i64_vec(), vec![14, -14, big]);
    let err = eval(
        text,
        &[("a", i64t(&[3], &[1, 1, 1])), ("b", i64t(&[3], &[1, 0, 1]))],
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "%0 = div: integer division by zero");
}

#[test]
fn creation_ops_use_bound_symbols() {
    let text = "graph g(%x: f32[S]) -> (%a: i64[S], %m: f32[S, S]) {\n  %0: i64[S] = arange() {start = 0, end = S, dtype = i64}\n  %1: f32[S, S] = full() {shape = [S, S], value = 1.0, dtype = f32}\n  %2: f32[S, S] = tril(%1) {k = 0}\n  return %0, %2\n}";
    let out = eval(text, &[("x", f32t(&[3], &[0.0; 3]))]).unwrap();
    assert_eq!(out[0].to_i64_vec(), vec![0, 1, 2]);
    assert_eq!(out[1].to_f64_vec(), vec![1., 0., 0., 1., 1., 0., 1., 1., 1.]);
}

#[test]
fn declared_shapes_are_checked_at_run_time() {
    // x[0:5] of a symbolic S is declared 5, which only holds when S >= 5.
    let text = "graph g(%x: f32[S]) -> (%y: f32[5]) {\n  %0: f32[5] = slice(%x) {axis = 0, start = 0, end = 5} loc(\"head\")\n  return %0\n}";
    let ok = eval(text, &[("x", f32t(&[6], &[0.0; 6]))]).unwrap();
    assert_eq!(ok[0].shape(), &[5]);
    let err = eval(text, &[("x", f32t(&[3], &[0.0; 3]))]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "%0 = slice (head): output 0 is declared f32[5] = [5] but evaluates to f32[3]"
    );
}

#[test]
fn input_errors_name_the_input_and_symbol() {
    let text = "graph g(%a: f32[B, S], %b: f32[S]) -> (%y: f32[B, S]) {\n  %0: f32[B, S] = add(%a, %b)\n  return %0\n}";
    let a = f32t(&[1, 2], &[0.0; 2]);
    let err = eval(text, &[("a", a.clone()), ("b", f32t(&[3], &[0.0; 3]))]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "symbol S: is 2 from an earlier input but %b needs 3 (dim S is 3)"
    );
    let err = eval(text, &[("a", a.clone())]).unwrap_err();
    assert_eq!(err.to_string(), "missing input %b");
    let err = eval(text, &[("a", a.clone()), ("b", i64t(&[2], &[0, 0]))]).unwrap_err();
    assert_eq!(err.to_string(), "input %b: expected f32[S], got i64[2]");
    let err = eval(text, &[("a", a.clone()), ("b", f32t(&[2], &[0.0; 2])), ("c", a)]).unwrap_err();
    assert_eq!(err.to_string(), "the graph has no input %c (inputs: a, b)");
}

#[test]
fn embedding_rejects_out_of_range_ids() {
    let text = "graph g(%w: f32[3, 2], %i: i64[2]) -> (%y: f32[2, 2]) {\n  %0: f32[2, 2] = embedding(%w, %i)\n  return %0\n}";
    let w = f32t(&[3, 2], &[0., 1., 2., 3., 4., 5.]);
    let y = eval1(text, &[("w", w.clone()), ("i", i64t(&[2], &[2, 0]))]);
    assert_eq!(y.to_f64_vec(), vec![4., 5., 0., 1.]);
    let err = eval(text, &[("w", w), ("i", i64t(&[2], &[-1, 0]))]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "%0 = embedding: embedding: index -1 is out of range for extent 3"
    );
}

#[test]
fn casts_round_and_saturate() {
    let text = "graph g(%x: f32[4]) -> (%i: i32[4], %h: bf16[4], %f: f8e4m3[4]) {\n  %0: i32[4] = cast(%x) {to = i32}\n  %1: bf16[4] = cast(%x) {to = bf16}\n  %2: f8e4m3[4] = cast(%x) {to = f8e4m3}\n  return %0, %1, %2\n}";
    let out = eval(
        text,
        &[("x", f32t(&[4], &[2.7, -2.7, 1e20, 1.0 + 2f32.powi(-8)]))],
    )
    .unwrap();
    assert_eq!(out[0].to_i64_vec(), vec![2, -2, i32::MAX as i64, 1]);
    assert_eq!(out[1].to_f32_vec(), vec![2.703125, -2.703125, 9.972771e19, 1.0]);
    assert_eq!(out[2].to_f32_vec(), vec![2.75, -2.75, 448.0, 1.0]);
}

#[test]
fn huge_outputs_are_refused_before_allocation() {
    let text = "graph g(%a: f32[N, 1], %b: f32[M]) -> (%y: f32[N, M]) {\n  %0: f32[N, M] = add(%a, %b)\n  return %0\n}";
    // Tiny inputs, but the broadcast output would hold 2^40 elements.
    let g = parse(text).unwrap();
    let inputs: BTreeMap<String, Tensor> = [
        ("a".to_string(), f32t(&[1 << 20, 1], &vec![0.0; 1 << 20])),
        ("b".to_string(), f32t(&[1 << 20], &vec![0.0; 1 << 20])),
    ]
    .into();
    let err = run(&g, &inputs, &WeightStore::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "%0 = add: a tensor of shape [1048576, 1048576] is too large for the reference interpreter"
    );
}

#[test]
fn empty_integer_max_and_min_give_the_type_bounds() {
    let text = "graph g(%x: i32[0]) -> (%a: i32[], %b: i32[]) {\n  %0: i32[] = reduce_max(%x) {axes = []}\n  %1: i32[] = reduce_min(%x) {axes = [0]}\n  return %0, %1\n}";
    let out = eval(text, &[("x", Tensor::from_i64(DType::I32, &[0], &[]))]).unwrap();
    assert_eq!(out[0].to_i64_vec(), vec![i32::MIN as i64]);
    assert_eq!(out[1].to_i64_vec(), vec![i32::MAX as i64]);
}

#[test]
fn split_sizes_are_not_a_shape() {
    // Three large pieces: their product is beyond the tensor-size limit, their sum is not.
    let text = "graph g(%x: f32[S]) -> (%a: f32[S-2], %b: f32[1], %c: f32[1]) {\n  %0: f32[S-2], %1: f32[1], %2: f32[1] = split(%x) {axis = 0, sizes = [S-2, 1, 1]}\n  return %0, %1, %2\n}";
    let out = eval(text, &[("x", f32t(&[4], &[1., 2., 3., 4.]))]).unwrap();
    assert_eq!(out[0].to_f64_vec(), vec![1., 2.]);
    let big = "graph g(%x: f32[4096, 2]) -> (%a: f32[2048, 2]) {\n  %0: f32[2048, 2], %1: f32[1024, 2], %2: f32[1024, 2] = split(%x) {axis = 0, sizes = [2048, 1024, 1024]}\n  return %0\n}";
    let out = eval(big, &[("x", f32t(&[4096, 2], &vec![0.5; 8192]))]).unwrap();
    assert_eq!(out[0].shape(), &[2048, 2]);
}

#[test]
fn argmax_on_large_integers_is_exact() {
    let big = 1i64 << 60;
    let text = "graph g(%x: i64[2]) -> (%y: i64[]) {\n  %0: i64[] = argmax(%x) {axis = 0}\n  return %0\n}";
    let y = eval1(text, &[("x", i64t(&[2], &[big, big + 1]))]);
    assert_eq!(y.to_i64_vec(), vec![1]);
}

#[test]
fn input_extent_mismatch_names_the_input() {
    let text = "graph g(%x: f32[2, S]) -> (%y: f32[2, S]) {\n  return %x\n}";
    let err = eval(text, &[("x", f32t(&[3, 1], &[0.0; 3]))]).unwrap_err();
    assert_eq!(err.to_string(), "input %x: expected f32[2, S], got f32[3, 1]");
}
