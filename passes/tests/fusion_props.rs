//! Property tests for the e-graph fusions: random graphs hold each pattern
//! in a random spelling (operand orders) or a near miss (wrong exponent,
//! non-constant eps, a weight that broadcasts, another reduction axis,
//! broadcasting swiglu operands, a wrong GELU constant, a causal-looking
//! mask that is not causal, swapped rope halves). Every pass keeps the
//! interpreter's results (1e-5 in f32; a few ulps in bf16/f16, where the
//! fused op rounds once) and fuses exactly the true patterns.

use std::collections::BTreeMap;

use optc_ir::ops::{BinaryKind, Constant, Op, Reduce, ReduceKind, UnaryKind};
use optc_ir::{parse_type, run, DType, GraphBuilder, Tensor, Value, WeightStore};
use optc_passes::check::max_abs_error;
use optc_passes::{PassContext, PassRegistry};
use proptest::prelude::*;

fn scalar(b: &mut GraphBuilder, v: f64) -> Value {
    b.op1(
        Op::Constant(Constant {
            value: Tensor::from_f64(DType::F32, &[], &[v]),
        }),
        &[],
    )
    .unwrap()
}

fn mul(b: &mut GraphBuilder, x: Value, y: Value, swap: bool) -> Value {
    if swap {
        b.mul(y, x).unwrap()
    } else {
        b.mul(x, y).unwrap()
    }
}

/// GELU's outer product x · 0.5 · p, grouped (x · 0.5) · p or, as torch.onnx
/// writes it, (x · p) · 0.5; `swap` orders each product's operands.
fn gelu_outer(
    b: &mut GraphBuilder,
    x: Value,
    half: Value,
    p: Value,
    torch_grouping: bool,
    swap: [bool; 2],
) -> Value {
    if torch_grouping {
        let xp = mul(b, x, p, swap[0]);
        mul(b, xp, half, swap[1])
    } else {
        let hx = mul(b, x, half, swap[0]);
        mul(b, hx, p, swap[1])
    }
}

fn inputs(g: &optc_ir::Graph) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for &i in g.inputs() {
        let ty = &g.node(i).outputs[0];
        let shape: Vec<usize> = ty
            .shape
            .as_consts()
            .unwrap()
            .iter()
            .map(|&d| d as usize)
            .collect();
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|k| ((k as f32 * 0.731).sin() * 1.5) + 0.1).collect();
        out.insert(
            g.node_name(i).unwrap().to_string(),
            Tensor::from_f32(ty.dtype, &shape, &v),
        );
    }
    out
}

/// Runs one pass; returns (how many `fused` ops result, max abs error).
fn fuse(g: optc_ir::Graph, pass: &str, fused: &str) -> (usize, f64) {
    let (g, err) = fuse_graph(g, pass);
    (g.op_counts().get(fused).copied().unwrap_or(0), err)
}

/// Runs one pass; returns the graph after it and the max abs error.
fn fuse_graph(g: optc_ir::Graph, pass: &str) -> (optc_ir::Graph, f64) {
    let before = g.clone();
    let mut g = g;
    let mut w = WeightStore::new();
    let o = toml::Table::new();
    PassRegistry::builtin()
        .get(pass)
        .unwrap()
        .run(
            &mut g,
            &mut PassContext {
                weights: &mut w,
                options: &o,
            },
        )
        .unwrap();
    optc_ir::verify(&g).unwrap();
    let i = inputs(&before);
    let err = max_abs_error(&run(&before, &i, &w).unwrap(), &run(&g, &i, &w).unwrap());
    (g, err)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn rmsnorm(exp3 in any::<bool>(), eps_input in any::<bool>(), w_bad in any::<bool>(), axis0 in any::<bool>(),
               o1 in any::<bool>(), o2 in any::<bool>(), o3 in any::<bool>()) {
        let mut b = GraphBuilder::new("n");
        let x = b.input("x", parse_type("f32[3, 8]").unwrap());
        let w = b.input("w", parse_type(if w_bad { "f32[1]" } else { "f32[8]" }).unwrap());
        let e = if eps_input { b.input("eps", parse_type("f32[1]").unwrap()) } else { scalar(&mut b, 1e-5) };
        let p = scalar(&mut b, if exp3 { 3.0 } else { 2.0 });
        let sq = b.binary(BinaryKind::Pow, x, p).unwrap();
        let m = b.op1(Op::Reduce(Reduce { kind: ReduceKind::Mean, axes: vec![if axis0 { 0 } else { -1 }], keepdims: true }), &[sq]).unwrap();
        let v = if o1 { b.add(e, m).unwrap() } else { b.add(m, e).unwrap() };
        let r = b.unary(UnaryKind::Rsqrt, v).unwrap();
        let h = mul(&mut b, x, r, o2);
        let y = mul(&mut b, w, h, o3);
        b.output("y", y);
        let (n, err) = fuse(b.finish().unwrap(), "fuse_rmsnorm", "rms_norm");
        let expected = !(exp3 || eps_input || w_bad || axis0);
        prop_assert_eq!(n, expected as usize);
        prop_assert!(err <= 1e-5, "error {}", err);
    }

    #[test]
    fn swiglu(broadcast in any::<bool>(), sigmoid in any::<bool>(), swap in any::<bool>()) {
        let mut b = GraphBuilder::new("s");
        let g = b.input("g", parse_type("f32[2, 8]").unwrap());
        let u = b.input("u", parse_type(if broadcast { "f32[1, 8]" } else { "f32[2, 8]" }).unwrap());
        let a = b.unary(if sigmoid { UnaryKind::Sigmoid } else { UnaryKind::Silu }, g).unwrap();
        let y = mul(&mut b, a, u, swap);
        b.output("y", y);
        let (n, err) = fuse(b.finish().unwrap(), "fuse_swiglu", "swiglu");
        prop_assert_eq!(n, (!broadcast && !sigmoid) as usize);
        prop_assert!(err <= 1e-5, "error {}", err);
    }

    #[test]
    fn rope_rotate_half(swap_halves in any::<bool>(), o1 in any::<bool>(), o2 in any::<bool>(), o3 in any::<bool>()) {
        use optc_ir::ops::{Concat, Slice};
        let mut b = GraphBuilder::new("r");
        let x = b.input("x", parse_type("f32[2, 3, 8]").unwrap());
        let cos = b.input("cos", parse_type("f32[3, 8]").unwrap());
        let sin = b.input("sin", parse_type("f32[3, 8]").unwrap());
        let lo = b.op1(Op::Slice(Slice { axis: -1, start: 0, end: Some(4), step: 1 }), &[x]).unwrap();
        let hi = b.op1(Op::Slice(Slice { axis: -1, start: 4, end: None, step: 1 }), &[x]).unwrap();
        // The near miss: cat(-x1, x2) is not rotate_half.
        let (negated, kept) = if swap_halves { (lo, hi) } else { (hi, lo) };
        let n = b.unary(UnaryKind::Neg, negated).unwrap();
        let rot = b.op1(Op::Concat(Concat { axis: -1 }), &[n, kept]).unwrap();
        let a = mul(&mut b, x, cos, o1);
        let c = mul(&mut b, rot, sin, o2);
        let y = if o3 { b.add(a, c).unwrap() } else { b.add(c, a).unwrap() };
        b.output("y", y);
        let (n, err) = fuse(b.finish().unwrap(), "fuse_rope", "rope");
        prop_assert_eq!(n, (!swap_halves) as usize);
        prop_assert!(err <= 1e-5, "error {}", err);
    }

    #[test]
    fn attention(tensor_scale in any::<bool>(), axis2 in any::<bool>(), mask_kind in 0u8..5, gqa in any::<bool>(),
                 scale_left in any::<bool>(), mask_left in any::<bool>()) {
        use optc_ir::ops::{Expand, Full, Scalar, Softmax, Transpose, Triangular, Unsqueeze, Where};
        let mut b = GraphBuilder::new("a");
        let q = b.input("q", parse_type("f32[1, 4, 5, 8]").unwrap());
        let kv_heads = if gqa { 2 } else { 4 };
        let ty = format!("f32[1, {kv_heads}, 5, 8]");
        let (mut k, mut v) = (b.input("k", parse_type(&ty).unwrap()), b.input("v", parse_type(&ty).unwrap()));
        if gqa {
            let rep = |b: &mut GraphBuilder, x| {
                let u = b.op1(Op::Unsqueeze(Unsqueeze { axes: vec![2] }), &[x]).unwrap();
                let e = b.op1(Op::Expand(Expand { shape: vec![1.into(), 2.into(), 2.into(), 5.into(), 8.into()] }), &[u]).unwrap();
                b.reshape(e, vec![1.into(), 4.into(), 5.into(), 8.into()]).unwrap()
            };
            k = rep(&mut b, k);
            v = rep(&mut b, v);
        }
        let kt = b.op1(Op::Transpose(Transpose { perm: vec![0, 1, 3, 2] }), &[k]).unwrap();
        let scores = b.matmul(q, kt).unwrap();
        let s = if tensor_scale { b.input("s", parse_type("f32[5]").unwrap()) } else { scalar(&mut b, 0.35) };
        let scores = mul(&mut b, scores, s, scale_left);
        // 0: triu(full(-inf), 1); 1: where(tril(full(true)), 0, -inf), both
        // causal. Near misses that must stay explicit masks: 2: the where
        // form one diagonal off (tril k = 1); 3: the where form filling with
        // -1e4 instead of -inf; 4: an input mask.
        let where_mask = |b: &mut GraphBuilder, k: i64, fill: f64| {
            let t = b.op1(Op::Full(Full { shape: vec![5.into(), 5.into()], value: Scalar::Int(1), dtype: DType::Bool }), &[]).unwrap();
            let c = b.op1(Op::Triangular(Triangular { upper: false, k }), &[t]).unwrap();
            let (z, f) = (scalar(b, 0.0), scalar(b, fill));
            b.op1(Op::Where(Where), &[c, z, f]).unwrap()
        };
        let mask = match mask_kind {
            0 => {
                let f = b.op1(Op::Full(Full { shape: vec![5.into(), 5.into()], value: Scalar::Float(f64::NEG_INFINITY), dtype: DType::F32 }), &[]).unwrap();
                b.op1(Op::Triangular(Triangular { upper: true, k: 1 }), &[f]).unwrap()
            }
            1 => where_mask(&mut b, 0, f64::NEG_INFINITY),
            2 => where_mask(&mut b, 1, f64::NEG_INFINITY),
            3 => where_mask(&mut b, 0, -1e4),
            _ => b.input("m", parse_type("f32[5, 5]").unwrap()),
        };
        let scores = if mask_left { b.add(mask, scores).unwrap() } else { b.add(scores, mask).unwrap() };
        let p = b.op1(Op::Softmax(Softmax { axis: if axis2 { -2 } else { -1 }, log: false }), &[scores]).unwrap();
        let y = b.matmul(p, v).unwrap();
        b.output("y", y);
        let g = b.finish().unwrap();
        let (fused, err) = fuse_graph(g, "fuse_attention");
        let attn: Vec<bool> = fused
            .node_ids()
            .filter_map(|id| match fused.node(id).op() {
                Some(Op::Attention(a)) => Some(a.causal),
                _ => None,
            })
            .collect();
        let fuses = !tensor_scale && !axis2;
        prop_assert_eq!(attn.len(), fuses as usize);
        if fuses {
            prop_assert_eq!(attn[0], mask_kind <= 1, "causal flag for mask kind {}", mask_kind);
        }
        prop_assert!(err <= 1e-5, "error {}", err);
    }

    #[test]
    fn layernorm(exp3 in any::<bool>(), rsqrt_form in any::<bool>(), affine in 0u8..3, w_bad in any::<bool>()) {
        let mut b = GraphBuilder::new("l");
        let x = b.input("x", parse_type("f32[3, 8]").unwrap());
        let mean = |b: &mut GraphBuilder, v| b.op1(Op::Reduce(Reduce { kind: ReduceKind::Mean, axes: vec![-1], keepdims: true }), &[v]).unwrap();
        let m = mean(&mut b, x);
        let c = b.binary(BinaryKind::Sub, x, m).unwrap();
        let p = scalar(&mut b, if exp3 { 3.0 } else { 2.0 });
        let sq = b.binary(BinaryKind::Pow, c, p).unwrap();
        let var = mean(&mut b, sq);
        let e = scalar(&mut b, 1e-5);
        let ve = b.add(var, e).unwrap();
        let n = if rsqrt_form {
            let r = b.unary(UnaryKind::Rsqrt, ve).unwrap();
            b.mul(c, r).unwrap()
        } else {
            let s = b.unary(UnaryKind::Sqrt, ve).unwrap();
            b.binary(BinaryKind::Div, c, s).unwrap()
        };
        let w = b.input("w", parse_type(if w_bad { "f32[1]" } else { "f32[8]" }).unwrap());
        let bias = b.input("b", parse_type("f32[8]").unwrap());
        let y = match affine {
            0 => n,
            1 => b.mul(n, w).unwrap(),
            _ => { let t = b.mul(n, w).unwrap(); b.add(t, bias).unwrap() }
        };
        b.output("y", y);
        let (n, err) = fuse(b.finish().unwrap(), "fuse_layernorm", "layer_norm");
        // A bad weight only blocks the forms that use it; the inner
        // normalisation then still fuses on its own.
        prop_assert_eq!(n, (!exp3) as usize);
        prop_assert!(err <= 1e-5, "error {}", err);
    }

    /// x³ as a power or a product either way round (`cube`), each of the
    /// six commutative ops' operands in either order (`swap`'s bits), and
    /// both groupings of the outer product.
    #[test]
    fn gelu_tanh(wrong_c in any::<bool>(), wrong_half in any::<bool>(), cube in 0..3usize, swap in 0..64u32, torch_grouping in any::<bool>()) {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", parse_type("f32[2, 8]").unwrap());
        let flip = |i: u32| swap >> i & 1 == 1;
        let x3 = match cube {
            0 => { let three = scalar(&mut b, 3.0); b.binary(BinaryKind::Pow, x, three).unwrap() }
            1 => { let x2 = b.mul(x, x).unwrap(); b.mul(x2, x).unwrap() }
            _ => { let x2 = b.mul(x, x).unwrap(); b.mul(x, x2).unwrap() }
        };
        let c = scalar(&mut b, if wrong_c { 0.05 } else { 0.044715 });
        let cx3 = mul(&mut b, x3, c, flip(0));
        let inner = if flip(1) { b.add(cx3, x).unwrap() } else { b.add(x, cx3).unwrap() };
        let k = scalar(&mut b, (2.0 / std::f64::consts::PI).sqrt());
        let inner = mul(&mut b, inner, k, flip(2));
        let t = b.unary(UnaryKind::Tanh, inner).unwrap();
        let one = scalar(&mut b, 1.0);
        let t = if flip(3) { b.add(one, t).unwrap() } else { b.add(t, one).unwrap() };
        let half = scalar(&mut b, if wrong_half { 0.25 } else { 0.5 });
        let y = gelu_outer(&mut b, x, half, t, torch_grouping, [flip(4), flip(5)]);
        b.output("y", y);
        let (n, err) = fuse(b.finish().unwrap(), "fuse_gelu", "gelu");
        prop_assert_eq!(n, (!wrong_c && !wrong_half) as usize);
        prop_assert!(err <= 1e-5, "error {}", err);
    }

    #[test]
    fn rmsnorm_half_precision(f16 in any::<bool>(), o1 in any::<bool>(), o2 in any::<bool>(), o3 in any::<bool>()) {
        use optc_ir::ops::Cast;
        let (dt, d) = if f16 { ("f16", DType::F16) } else { ("bf16", DType::BF16) };
        let mut b = GraphBuilder::new("h");
        let x = b.input("x", parse_type(&format!("{dt}[3, 8]")).unwrap());
        let w = b.input("w", parse_type(&format!("{dt}[8]")).unwrap());
        let xf = b.op1(Op::Cast(Cast { to: DType::F32 }), &[x]).unwrap();
        let p = scalar(&mut b, 2.0);
        let sq = b.binary(BinaryKind::Pow, xf, p).unwrap();
        let m = b.op1(Op::Reduce(Reduce { kind: ReduceKind::Mean, axes: vec![-1], keepdims: true }), &[sq]).unwrap();
        let e = scalar(&mut b, 1e-5);
        let v = if o1 { b.add(e, m).unwrap() } else { b.add(m, e).unwrap() };
        let r = b.unary(UnaryKind::Rsqrt, v).unwrap();
        let h = mul(&mut b, xf, r, o2);
        let hc = b.op1(Op::Cast(Cast { to: d }), &[h]).unwrap();
        let y = mul(&mut b, w, hc, o3);
        b.output("y", y);
        let (n, err) = fuse(b.finish().unwrap(), "fuse_rmsnorm", "rms_norm");
        prop_assert_eq!(n, 1);
        // One rounding instead of two: within a couple of half-precision ulps.
        prop_assert!(err <= 0.05, "error {}", err);
    }

    /// Divided by √2 or scaled by 1/√2, operands in either order (`swap`'s
    /// bits), both groupings of the outer product.
    #[test]
    fn gelu_erf(divide in any::<bool>(), wrong in any::<bool>(), swap in 0..16u32, torch_grouping in any::<bool>()) {
        let mut b = GraphBuilder::new("e");
        let x = b.input("x", parse_type("f32[2, 8]").unwrap());
        let flip = |i: u32| swap >> i & 1 == 1;
        let inner = if divide {
            let s = scalar(&mut b, if wrong { 1.5 } else { std::f64::consts::SQRT_2 });
            b.binary(BinaryKind::Div, x, s).unwrap()
        } else {
            let r = scalar(&mut b, if wrong { 0.6 } else { std::f64::consts::FRAC_1_SQRT_2 });
            mul(&mut b, x, r, flip(0))
        };
        let e = b.unary(UnaryKind::Erf, inner).unwrap();
        let one = scalar(&mut b, 1.0);
        let t = if flip(1) { b.add(one, e).unwrap() } else { b.add(e, one).unwrap() };
        let half = scalar(&mut b, 0.5);
        let y = gelu_outer(&mut b, x, half, t, torch_grouping, [flip(2), flip(3)]);
        b.output("y", y);
        let (n, err) = fuse(b.finish().unwrap(), "fuse_gelu", "gelu");
        prop_assert_eq!(n, (!wrong) as usize);
        prop_assert!(err <= 1e-5, "error {}", err);
    }

    #[test]
    fn attention_spellings(form in 0u8..4, half in any::<bool>(), bshd in any::<bool>()) {
        use optc_ir::ops::{Cast, Softmax, Transpose};
        // form 0: scores·s, 1: s·scores, 2: (q·s)·kᵀ, 3: scores / s (GPT-2);
        // half: bf16 model with the softmax in f32 between casts; bshd: k in
        // [B, S, H, D] with the head transpose composed into kᵀ.
        let (dt, d) = if half { ("bf16", DType::BF16) } else { ("f32", DType::F32) };
        let mut b = GraphBuilder::new("a");
        let q = b.input("q", parse_type(&format!("{dt}[1, 4, 5, 8]")).unwrap());
        let k_ty = if bshd { format!("{dt}[1, 5, 4, 8]") } else { format!("{dt}[1, 4, 5, 8]") };
        let k = b.input("k", parse_type(&k_ty).unwrap());
        let v = b.input("v", parse_type(&format!("{dt}[1, 4, 5, 8]")).unwrap());
        let perm = if bshd { vec![0, 2, 3, 1] } else { vec![0, 1, 3, 2] };
        let kt = b.op1(Op::Transpose(Transpose { perm }), &[k]).unwrap();
        let sv = if form == 3 { 8f64.sqrt() } else { 8f64.sqrt().recip() };
        let s = b.op1(Op::Constant(Constant { value: Tensor::from_f64(d, &[], &[sv]) }), &[]).unwrap();
        let scores = match form {
            0 => { let m = b.matmul(q, kt).unwrap(); b.mul(m, s).unwrap() }
            1 => { let m = b.matmul(q, kt).unwrap(); b.mul(s, m).unwrap() }
            2 => { let qs = b.mul(q, s).unwrap(); b.matmul(qs, kt).unwrap() }
            _ => { let m = b.matmul(q, kt).unwrap(); b.binary(BinaryKind::Div, m, s).unwrap() }
        };
        let soft = |b: &mut GraphBuilder, x| b.op1(Op::Softmax(Softmax { axis: -1, log: false }), &[x]).unwrap();
        let p = if half {
            let f = b.op1(Op::Cast(Cast { to: DType::F32 }), &[scores]).unwrap();
            let p = soft(&mut b, f);
            b.op1(Op::Cast(Cast { to: d }), &[p]).unwrap()
        } else {
            soft(&mut b, scores)
        };
        let y = b.matmul(p, v).unwrap();
        b.output("y", y);
        let (n, err) = fuse(b.finish().unwrap(), "fuse_attention", "scaled_dot_product_attention");
        prop_assert_eq!(n, 1);
        prop_assert!(err <= if half { 0.05 } else { 1e-5 }, "error {}", err);
    }

    #[test]
    fn rope_interleaved(swap in any::<bool>(), o1 in any::<bool>(), o2 in any::<bool>(), o3 in any::<bool>()) {
        use optc_ir::ops::{Concat, Rope, Slice, Unsqueeze};
        let mut b = GraphBuilder::new("i");
        let x = b.input("x", parse_type("f32[2, 3, 8]").unwrap());
        let cos = b.input("cos", parse_type("f32[3, 8]").unwrap());
        let sin = b.input("sin", parse_type("f32[3, 8]").unwrap());
        let even = b.op1(Op::Slice(Slice { axis: -1, start: 0, end: None, step: 2 }), &[x]).unwrap();
        let odd = b.op1(Op::Slice(Slice { axis: -1, start: 1, end: None, step: 2 }), &[x]).unwrap();
        // The near miss: stack(-even, odd) is not rotate_every_two.
        let (negated, kept) = if swap { (even, odd) } else { (odd, even) };
        let n = b.unary(UnaryKind::Neg, negated).unwrap();
        let u1 = b.op1(Op::Unsqueeze(Unsqueeze { axes: vec![-1] }), &[n]).unwrap();
        let u2 = b.op1(Op::Unsqueeze(Unsqueeze { axes: vec![-1] }), &[kept]).unwrap();
        let st = b.op1(Op::Concat(Concat { axis: -1 }), &[u1, u2]).unwrap();
        let rot = b.reshape(st, vec![2.into(), 3.into(), 8.into()]).unwrap();
        let a = mul(&mut b, x, cos, o1);
        let c = mul(&mut b, rot, sin, o2);
        let y = if o3 { b.add(a, c).unwrap() } else { b.add(c, a).unwrap() };
        b.output("y", y);
        let (g, err) = fuse_graph(b.finish().unwrap(), "fuse_rope");
        let ropes: Vec<bool> = g
            .node_ids()
            .filter_map(|id| match g.node(id).op() {
                Some(Op::Rope(Rope { interleaved })) => Some(*interleaved),
                _ => None,
            })
            .collect();
        prop_assert_eq!(ropes.len(), (!swap) as usize);
        prop_assert!(ropes.iter().all(|&i| i), "interleaved flag");
        prop_assert!(err <= 1e-5, "error {}", err);
    }
}

#[test]
fn partial_rotary_fuses_into_one_rope() {
    use optc_ir::ops::{Concat, Slice};
    let mut b = GraphBuilder::new("p");
    let x = b.input("x", parse_type("f32[2, 3, 8]").unwrap());
    let cos = b.input("cos", parse_type("f32[3, 4]").unwrap());
    let sin = b.input("sin", parse_type("f32[3, 4]").unwrap());
    let sl = |b: &mut GraphBuilder, v, start, end| {
        b.op1(
            Op::Slice(Slice {
                axis: -1,
                start,
                end,
                step: 1,
            }),
            &[v],
        )
        .unwrap()
    };
    let xr = sl(&mut b, x, 0, Some(4));
    let xp = sl(&mut b, x, 4, None);
    let lo = sl(&mut b, xr, 0, Some(2));
    let hi = sl(&mut b, xr, 2, None);
    let n = b.unary(UnaryKind::Neg, hi).unwrap();
    let rot = b.op1(Op::Concat(Concat { axis: -1 }), &[n, lo]).unwrap();
    let a = b.mul(xr, cos).unwrap();
    let c = b.mul(rot, sin).unwrap();
    let e = b.add(a, c).unwrap();
    let y = b.op1(Op::Concat(Concat { axis: -1 }), &[e, xp]).unwrap();
    b.output("y", y);
    let g = b.finish().unwrap();
    let (n, err) = fuse(g.clone(), "fuse_rope", "rope");
    assert_eq!(n, 1);
    assert!(err <= 1e-6, "error {err}");
    // One rope over the whole x: no concat or slice is left.
    let mut fused = g;
    let mut w = WeightStore::new();
    let o = toml::Table::new();
    PassRegistry::builtin()
        .get("fuse_rope")
        .unwrap()
        .run(
            &mut fused,
            &mut PassContext {
                weights: &mut w,
                options: &o,
            },
        )
        .unwrap();
    let counts = fused.op_counts();
    assert_eq!(
        (counts.get("concat"), counts.get("slice")),
        (None, None),
        "{}",
        optc_ir::print(&fused)
    );
}

#[test]
fn residual_add_fuses_into_the_norm_but_not_when_broadcasting() {
    use optc_ir::ops::RmsNorm;
    for broadcast in [false, true] {
        let mut b = GraphBuilder::new("r");
        let x = b.input("x", parse_type("f32[3, 8]").unwrap());
        let r = b.input(
            "r",
            parse_type(if broadcast { "f32[1, 8]" } else { "f32[3, 8]" }).unwrap(),
        );
        let w = b.input("w", parse_type("f32[8]").unwrap());
        let s = b.add(x, r).unwrap();
        let n = b
            .op1(Op::RmsNorm(RmsNorm { axis: -1, eps: 1e-6 }), &[s, w])
            .unwrap();
        let y = b.mul(n, s).unwrap();
        b.output("y", y);
        let (count, err) = fuse(b.finish().unwrap(), "fuse_add_rmsnorm", "add_rms_norm");
        assert_eq!(count, !broadcast as usize);
        assert_eq!(err, 0.0, "the fused op rounds the sum like the add did");
    }
}

/// GPT-J's `rotate_every_two` form, and a near miss with the strided halves swapped.
#[test]
fn interleaved_rope() {
    use optc_ir::ops::{Concat, Slice, Unsqueeze};
    for swapped in [false, true] {
        let mut b = GraphBuilder::new("i");
        let x = b.input("x", parse_type("f32[2, 3, 8]").unwrap());
        let cos = b.input("cos", parse_type("f32[3, 8]").unwrap());
        let sin = b.input("sin", parse_type("f32[3, 8]").unwrap());
        let strided = |b: &mut GraphBuilder, start| {
            b.op1(
                Op::Slice(Slice {
                    axis: -1,
                    start,
                    end: None,
                    step: 2,
                }),
                &[x],
            )
            .unwrap()
        };
        let (even, odd) = (strided(&mut b, 0), strided(&mut b, 1));
        let (negated, kept) = if swapped { (even, odd) } else { (odd, even) };
        let n = b.unary(UnaryKind::Neg, negated).unwrap();
        let un = |b: &mut GraphBuilder, v| b.op1(Op::Unsqueeze(Unsqueeze { axes: vec![-1] }), &[v]).unwrap();
        let (a, c) = (un(&mut b, n), un(&mut b, kept));
        let st = b.op1(Op::Concat(Concat { axis: -1 }), &[a, c]).unwrap();
        let rot = b.reshape(st, vec![2.into(), 3.into(), 8.into()]).unwrap();
        let p = b.mul(x, cos).unwrap();
        let q = b.mul(rot, sin).unwrap();
        let y = b.add(p, q).unwrap();
        b.output("y", y);
        let (count, err) = fuse(b.finish().unwrap(), "fuse_rope", "rope");
        assert_eq!(count, !swapped as usize, "swapped = {swapped}");
        assert!(err <= 1e-6, "error {err}");
    }
}
