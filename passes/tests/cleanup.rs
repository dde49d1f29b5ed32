//! The cleanup passes on text IR: what each removes or rewrites, what it
//! must leave alone, and that results are unchanged on the interpreter.

use std::collections::BTreeMap;

use optc_ir::{parse, print, run, verify, DType, Graph, Tensor, WeightStore};
use optc_passes::{PassContext, PassRegistry};

fn apply(pass: &str, text: &str, options: toml::Table) -> (Graph, Graph, usize) {
    let before = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    verify(&before).unwrap();
    let mut g = before.clone();
    let mut weights = WeightStore::new();
    let p = PassRegistry::builtin().get(pass).unwrap();
    let r = p
        .run(
            &mut g,
            &mut PassContext {
                weights: &mut weights,
                options: &options,
            },
        )
        .unwrap();
    verify(&g).unwrap_or_else(|e| panic!("{pass} broke the graph: {e}\n{}", print(&g)));
    (before, g, r.rewrites)
}

fn same_results(a: &Graph, b: &Graph, inputs: &[(&str, Tensor)]) {
    let inputs: BTreeMap<String, Tensor> = inputs.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    let mut w = WeightStore::new();
    w.insert("w", Tensor::from_f32(DType::F32, &[4], &[1.0; 4]))
        .unwrap();
    assert_eq!(run(a, &inputs, &w).unwrap(), run(b, &inputs, &w).unwrap());
}

fn x234() -> Tensor {
    let v: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 6.0).collect();
    Tensor::from_f32(DType::F32, &[2, 3, 4], &v)
}

/// The op lines of a printed graph, without the header and return.
fn body(g: &Graph) -> Vec<String> {
    print(g)
        .lines()
        .filter(|l| l.trim_start().starts_with('%'))
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn dce_removes_unused_ops_and_weights() {
    let text = "graph g(%x: f32[2, 3, 4]) -> (%y: f32[2, 3, 4]) {\n  weight @unused: f32[4] = \"w\"\n  %0: f32[2, 3, 4] = exp(%x)\n  %1: f32[2, 3, 4] = neg(%x)\n  %2: f32[2, 3, 4] = add(%1, @unused)\n  return %0\n}";
    let (before, g, n) = apply("dce", text, toml::Table::new());
    assert_eq!(n, 3);
    assert_eq!(body(&g), vec!["%0: f32[2, 3, 4] = exp(%x)"]);
    assert!(g.weights().is_empty());
    same_results(&before, &g, &[("x", x234())]);
}

#[test]
fn cse_merges_identical_ops_only() {
    let text = "graph g(%x: f32[2, 3, 4]) -> (%y: f32[2, 3, 4]) {\n  %0: f32[] = constant() {dtype = f32, shape = [], value = [2.0]}\n  %1: f32[] = constant() {dtype = f32, shape = [], value = [2.0]}\n  %2: f32[] = constant() {dtype = f32, shape = [], value = [3.0]}\n  %3: f32[2, 3, 4] = mul(%x, %0)\n  %4: f32[2, 3, 4] = mul(%x, %1)\n  %5: f32[2, 3, 4] = mul(%x, %2)\n  %6: f32[2, 3, 4] = add(%3, %4)\n  %7: f32[2, 3, 4] = add(%6, %5)\n  return %7\n}";
    let (before, g, n) = apply("cse", text, toml::Table::new());
    assert_eq!(n, 2, "the second 2.0 and the second mul merge; 3.0 stays");
    assert_eq!(g.op_counts()["constant"], 2);
    assert_eq!(g.op_counts()["mul"], 2);
    same_results(&before, &g, &[("x", x234())]);
}

#[test]
fn cse_compares_whole_constants() {
    // Two constants that agree on their first 20 values but not the last.
    let a: Vec<String> = (0..21).map(|i| format!("{i}.0")).collect();
    let mut b = a.clone();
    b[20] = "99.0".into();
    let text = format!(
        "graph g(%x: f32[21]) -> (%y: f32[21]) {{\n  %0: f32[21] = constant() {{dtype = f32, shape = [21], value = [{}]}}\n  %1: f32[21] = constant() {{dtype = f32, shape = [21], value = [{}]}}\n  %2: f32[21] = add(%x, %0)\n  %3: f32[21] = add(%2, %1)\n  return %3\n}}",
        a.join(", "),
        b.join(", ")
    );
    let (_, g, n) = apply("cse", &text, toml::Table::new());
    assert_eq!(n, 0);
    assert_eq!(g.op_counts()["constant"], 2);
}

#[test]
fn constant_fold_folds_chains_within_the_size_limit() {
    let text = "graph g(%x: f32[4]) -> (%y: f32[4]) {\n  %0: i64[4] = arange() {start = 0, end = 4, dtype = i64}\n  %1: f32[4] = cast(%0) {to = f32}\n  %2: f32[4] = exp(%1)\n  %3: f32[4] = add(%x, %2)\n  return %3\n}";
    let (before, g, n) = apply("constant_fold", text, toml::Table::new());
    assert_eq!(n, 3);
    assert_eq!(g.op_counts().get("exp"), None);
    same_results(
        &before,
        &g,
        &[("x", Tensor::from_f32(DType::F32, &[4], &[1.0; 4]))],
    );
    let mut small = toml::Table::new();
    small.insert("max_elements".into(), toml::Value::Integer(2));
    let (_, g, n) = apply("constant_fold", text, small);
    assert_eq!((n, g.op_counts()["exp"]), (0, 1));
}

#[test]
fn constant_fold_leaves_symbolic_and_failing_ops() {
    let text = "graph g(%x: f32[S]) -> (%y: f32[S], %z: f32[1]) {\n  %0: i64[S] = arange() {start = 0, end = S, dtype = i64}\n  %1: f32[S] = cast(%0) {to = f32}\n  %2: f32[3] = constant() {dtype = f32, shape = [3], value = [1.0, 2.0, 3.0]}\n  %3: i64[1] = constant() {dtype = i64, shape = [1], value = [7]}\n  %4: f32[1] = gather(%2, %3) {axis = 0}\n  return %1, %4\n}";
    let (_, g, n) = apply("constant_fold", text, toml::Table::new());
    assert_eq!(
        n, 0,
        "arange over S is symbolic; gather index 7 is out of range and left for run time"
    );
    assert_eq!(g.op_counts()["gather"], 1);
}

#[test]
fn canonicalize_applies_exact_identities() {
    let text = "graph g(%x: f32[2, 3, 4]) -> (%y: f32[2, 3, 4]) {\n  %0: f32[2, 3, 4] = cast(%x) {to = f32}\n  %1: f32[4, 3, 2] = transpose(%0) {perm = [2, 1, 0]}\n  %2: f32[2, 3, 4] = transpose(%1) {perm = [2, 1, 0]}\n  %3: f32[6, 4] = reshape(%2) {shape = [6, 4]}\n  %4: f32[2, 3, 4] = reshape(%3) {shape = [2, 3, 4]}\n  %5: f32[] = constant() {dtype = f32, shape = [], value = [1.0]}\n  %6: f32[2, 3, 4] = mul(%5, %4)\n  %7: f32[2, 3, 4] = div(%6, %5)\n  %8: f32[2, 3, 4] = neg(%7)\n  %9: f32[2, 3, 4] = neg(%8)\n  %10: f32[2, 3, 4] = slice(%9) {axis = 1, start = 0}\n  %11: f32[2, 3, 4] = concat(%10) {axis = 0}\n  return %11\n}";
    let (before, mut g, _) = apply("canonicalize", text, toml::Table::new());
    let mut w = WeightStore::new();
    let o = toml::Table::new();
    let dce = PassRegistry::builtin().get("dce").unwrap();
    dce.run(
        &mut g,
        &mut PassContext {
            weights: &mut w,
            options: &o,
        },
    )
    .unwrap();
    assert!(body(&g).is_empty(), "everything folds away:\n{}", print(&g));
    assert_eq!(g.outputs()[0].value, optc_ir::Value::of(g.inputs()[0]));
    same_results(&before, &g, &[("x", x234())]);
}

#[test]
fn canonicalize_leaves_near_misses() {
    // A reversing slice keeps its length; x + 0 flips -0.0; x * 2 is not x.
    let text = "graph g(%x: f32[2, 3, 4]) -> (%y: f32[2, 3, 4]) {\n  %0: f32[2, 3, 4] = slice(%x) {axis = 2, start = -1, step = -1}\n  %1: f32[] = constant() {dtype = f32, shape = [], value = [0.0]}\n  %2: f32[2, 3, 4] = add(%0, %1)\n  %3: f32[] = constant() {dtype = f32, shape = [], value = [2.0]}\n  %4: f32[2, 3, 4] = mul(%2, %3)\n  %5: f32[2, 4, 3] = transpose(%4) {perm = [0, 2, 1]}\n  %6: f32[2, 4, 3] = cast(%5) {to = f32}\n  %7: f32[2, 3, 4] = transpose(%6) {perm = [0, -1, 1]}\n  return %7\n}";
    let (before, g, _) = apply("canonicalize", text, toml::Table::new());
    let counts = g.op_counts();
    assert_eq!((counts["slice"], counts["add"], counts["mul"]), (1, 1, 1));
    assert_eq!(counts.get("cast"), None);
    assert_eq!(
        counts["transpose"], 1,
        "the transposes compose into the identity..."
    );
    same_results(&before, &g, &[("x", x234())]);
}

fn store_with(names: &[(&str, &[usize])]) -> WeightStore {
    let mut w = WeightStore::new();
    for (n, shape) in names {
        let count: usize = shape.iter().product();
        let v: Vec<f32> = (0..count).map(|i| (i as f32 * 0.1).sin()).collect();
        w.insert(*n, Tensor::from_f32(DType::F32, shape, &v)).unwrap();
    }
    w
}

#[test]
fn fuse_gemm_fuses_linears_sharing_an_input_and_not_near_misses() {
    let text = "graph g(%x: f32[S, 4], %y: f32[S, 4]) -> (%a: f32[S, 3], %b: f32[S, 2], %c: f32[S, 5], %d: f32[S, 3], %e: f32[S, 3]) {\n  weight @wa: f32[3, 4] = \"l.a.weight\"\n  weight @wb: f32[2, 4] = \"l.b.weight\"\n  weight @bb: f32[2] = \"l.b.bias\"\n  weight @wc: f32[5, 4] = \"l.c.weight\"\n  weight @h: bf16[3, 4] = \"l.h.weight\"\n  %0: f32[S, 3] = linear(%x, @wa)\n  %1: f32[S, 2] = linear(%x, @wb, @bb)\n  %2: f32[S, 5] = linear(%x, @wc)\n  %3: f32[S, 3] = linear(%y, @wa)\n  %4: f32[3, 4] = cast(@h) {to = f32}\n  %5: f32[S, 3] = linear(%x, %4)\n  return %0, %1, %2, %3, %5\n}";
    let before = parse(text).unwrap();
    let mut g = before.clone();
    let mut w = store_with(&[
        ("l.a.weight", &[3, 4]),
        ("l.b.weight", &[2, 4]),
        ("l.b.bias", &[2]),
        ("l.c.weight", &[5, 4]),
    ]);
    w.insert("l.h.weight", Tensor::from_f32(DType::BF16, &[3, 4], &[0.5; 12]))
        .unwrap();
    let o = toml::Table::new();
    let pass = PassRegistry::builtin().get("fuse_gemm").unwrap();
    let r = pass
        .run(
            &mut g,
            &mut PassContext {
                weights: &mut w,
                options: &o,
            },
        )
        .unwrap();
    verify(&g).unwrap();
    // Only %0 and %2 fuse: %1 has a bias, %3 reads another input, %5's weight is computed.
    assert_eq!(r.rewrites, 1);
    assert!(w.contains("l.a+c.weight"), "{:?}", w.names().collect::<Vec<_>>());
    assert_eq!(w.info("l.a+c.weight").unwrap(), (DType::F32, vec![8, 4]));
    assert_eq!(g.op_counts()["linear"], 4);
    assert_eq!(g.op_counts()["split"], 1);
    let inputs: BTreeMap<String, Tensor> = [
        (
            "x".to_string(),
            Tensor::from_f32(DType::F32, &[2, 4], &[1., 2., 3., 4., -1., 0.5, 0., 2.]),
        ),
        ("y".to_string(), Tensor::from_f32(DType::F32, &[2, 4], &[0.1; 8])),
    ]
    .into();
    assert_eq!(run(&before, &inputs, &w).unwrap(), run(&g, &inputs, &w).unwrap());
}

/// Hugging Face's rotary angles: `inv[r, 1] @ positions[1, T]`,
/// transposed and concatenated with itself. After the pass: one broadcast
/// multiply of the (transposed) positions by a folded constant row, and
/// the same values bit for bit (positions and frequencies are positive,
/// so no product is -0).
#[test]
fn outer_products_become_broadcast_multiplies() {
    let text = "graph g(%p: f32[5]) -> (%c: f32[5, 6], %s: f32[5, 6]) {
  %0: f32[3, 1] = constant() {dtype = f32, shape = [3, 1], value = [1.0, 0.25, 0.0625]}
  %1: f32[1, 5] = unsqueeze(%p) {axes = [0]}
  %2: f32[3, 5] = matmul(%0, %1)
  %3: f32[5, 3] = transpose(%2) {perm = [1, 0]}
  %4: f32[5, 6] = concat(%3, %3) {axis = -1}
  %5: f32[5, 6] = cos(%4)
  %6: f32[5, 6] = sin(%4)
  return %5, %6
}";
    let (before, g, n) = apply("simplify_outer_products", text, toml::Table::new());
    assert_eq!(n, 3, "{}", print(&g));
    let ops = g.op_counts();
    for gone in ["matmul", "concat"] {
        assert!(!ops.contains_key(gone), "{gone} left: {}", print(&g));
    }
    // The only transpose left moves the positions' unit axis (a view).
    assert_eq!(ops.get("transpose"), Some(&1), "{}", print(&g));
    assert!(
        body(&g)
            .iter()
            .any(|l| l.starts_with("%") && l.contains("f32[1, 6] = constant()")),
        "{}",
        print(&g)
    );
    let p = Tensor::from_f32(DType::F32, &[5], &[0.0, 1.0, 2.0, 7.0, 131.0]);
    same_results(&before, &g, &[("p", p)]);
}

/// What the pass leaves alone: a matmul that contracts more than one
/// element, a transpose of a product read twice, one whose non-constant
/// side would really move, and a concat of two different products.
#[test]
fn outer_product_rewrites_stay_where_they_would_not_pay() {
    let text = "graph g(%a: f32[3, 2], %b: f32[2, 4], %x: f32[3, 4], %y: f32[1, 4]) -> (%m: f32[3, 4], %t: f32[4, 3], %u: f32[3, 4], %v: f32[4, 3], %w: f32[1, 8]) {
  %0: f32[3, 4] = matmul(%a, %b)
  %1: f32[3, 4] = constant() {dtype = f32, shape = [3, 4], value = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]}
  %2: f32[3, 4] = mul(%x, %1)
  %3: f32[4, 3] = transpose(%2) {perm = [1, 0]}
  %4: f32[3, 4] = exp(%x)
  %5: f32[3, 4] = mul(%4, %1)
  %6: f32[4, 3] = transpose(%5) {perm = [1, 0]}
  %7: f32[1, 4] = neg(%y)
  %8: f32[1, 8] = concat(%y, %7) {axis = -1}
  return %0, %3, %2, %6, %8
}";
    let (_, g, n) = apply("simplify_outer_products", text, toml::Table::new());
    assert_eq!(n, 0, "{}", print(&g));
}

/// torch.export's spelling of the same angles: a batched matmul of an
/// expanded frequency column by the positions row. The matmul becomes a
/// multiply (the transpose's other side is an expand, not a constant, so
/// it stays).
#[test]
fn batched_outer_products_become_multiplies() {
    let text = "graph g(%p: f32[2, 1, 5]) -> (%y: f32[2, 5, 3]) {
  %0: f32[1, 3, 1] = constant() {dtype = f32, shape = [1, 3, 1], value = [1.0, 0.5, 0.25]}
  %1: f32[2, 3, 1] = expand(%0) {shape = [2, 3, 1]}
  %2: f32[2, 3, 5] = matmul(%1, %p)
  %3: f32[2, 5, 3] = transpose(%2) {perm = [0, 2, 1]}
  return %3
}";
    let (before, g, n) = apply("simplify_outer_products", text, toml::Table::new());
    assert_eq!(n, 1, "{}", print(&g));
    assert!(!g.op_counts().contains_key("matmul"), "{}", print(&g));
    let v: Vec<f32> = (0..10).map(|i| i as f32 * 1.5).collect();
    same_results(
        &before,
        &g,
        &[("p", Tensor::from_f32(DType::F32, &[2, 1, 5], &v))],
    );
}
