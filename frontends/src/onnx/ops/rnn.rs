//! Recurrent layers: `RNN`, `GRU` and `LSTM`, unrolled over the static
//! sequence length into per-gate matmuls, elementwise gate arithmetic and
//! concats (one direction after the other for `bidirectional`).

use optc_ir::ops::{BinaryKind as B, CompareKind as C, UnaryKind as U};
use optc_ir::{DType, Dim, Tensor};

use super::super::import::{unsupported, Cx, NodeCx, NodeError, Val};
use super::shape::{slice_axis, transpose_to};
use super::{binary, compare, select, static_dim, unary, want_float, with_scalar, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[
    ("RNN", |cx, n| recurrent(cx, n, Kind::Rnn)),
    ("GRU", |cx, n| recurrent(cx, n, Kind::Gru)),
    ("LSTM", |cx, n| recurrent(cx, n, Kind::Lstm)),
];

/// Which recurrence; fixes the gate count, order and default activations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rnn,
    Gru,
    Lstm,
}

impl Kind {
    /// Gates stacked in W/R: RNN `[i]`, GRU `[z, r, h]`, LSTM `[i, o, f, c]`.
    fn gates(self) -> i64 {
        match self {
            Kind::Rnn => 1,
            Kind::Gru => 3,
            Kind::Lstm => 4,
        }
    }

    /// The spec's default activation list for one direction.
    fn default_acts(self) -> &'static [&'static str] {
        match self {
            Kind::Rnn => &["Tanh"],
            Kind::Gru => &["Sigmoid", "Tanh"],
            Kind::Lstm => &["Sigmoid", "Tanh", "Tanh"],
        }
    }
}

/// One activation function with its alpha/beta resolved.
#[derive(Clone, Copy, Debug)]
enum Act {
    Relu,
    Tanh,
    Sigmoid,
    Affine(f64, f64),
    LeakyRelu(f64),
    ThresholdedRelu(f64),
    ScaledTanh(f64, f64),
    HardSigmoid(f64, f64),
    Elu(f64),
    Softsign,
    Softplus,
}

/// Resolves activation names; `activation_alpha`/`beta` are consumed in
/// order by the functions that take them, the ONNX op defaults otherwise.
fn parse_acts(names: &[String], alphas: &[f32], betas: &[f32]) -> Result<Vec<Act>, NodeError> {
    let (mut ai, mut bi) = (alphas.iter(), betas.iter());
    let next = |it: &mut std::slice::Iter<f32>, def: Option<f64>, name: &str, what: &str| {
        it.next()
            .map(|&v| v as f64)
            .or(def)
            .ok_or_else(|| NodeError::Invalid(format!("activation {name} needs an activation_{what} value")))
    };
    let mut out = Vec::new();
    for name in names {
        let act = match name.to_ascii_lowercase().as_str() {
            "relu" => Act::Relu,
            "tanh" => Act::Tanh,
            "sigmoid" => Act::Sigmoid,
            "affine" => {
                let a = next(&mut ai, None, name, "alpha")?;
                Act::Affine(a, next(&mut bi, None, name, "beta")?)
            }
            "leakyrelu" => Act::LeakyRelu(next(&mut ai, Some(0.01), name, "alpha")?),
            "thresholdedrelu" => Act::ThresholdedRelu(next(&mut ai, Some(1.0), name, "alpha")?),
            "scaledtanh" => {
                let a = next(&mut ai, None, name, "alpha")?;
                Act::ScaledTanh(a, next(&mut bi, None, name, "beta")?)
            }
            "hardsigmoid" => {
                let a = next(&mut ai, Some(0.2), name, "alpha")?;
                Act::HardSigmoid(a, next(&mut bi, Some(0.5), name, "beta")?)
            }
            "elu" => Act::Elu(next(&mut ai, Some(1.0), name, "alpha")?),
            "softsign" => Act::Softsign,
            "softplus" => Act::Softplus,
            _ => return unsupported(format!("activation {name:?} is not supported")),
        };
        out.push(act);
    }
    Ok(out)
}

/// Applies an activation (after the optional `clip` of its input).
fn activate(cx: &mut Cx, act: Act, x: &Val, clip: Option<f64>) -> Result<Val, NodeError> {
    let x = match clip {
        Some(c) => {
            let y = with_scalar(cx, B::Minimum, x, c)?;
            with_scalar(cx, B::Maximum, &y, -c)?
        }
        None => x.clone(),
    };
    let zero = cx.scalar(0.0, x.dtype());
    match act {
        Act::Relu => unary(cx, U::Relu, &x),
        Act::Tanh => unary(cx, U::Tanh, &x),
        Act::Sigmoid => unary(cx, U::Sigmoid, &x),
        Act::Affine(a, b) => {
            let y = with_scalar(cx, B::Mul, &x, a)?;
            with_scalar(cx, B::Add, &y, b)
        }
        Act::LeakyRelu(a) => {
            let neg = with_scalar(cx, B::Mul, &x, a)?;
            let c = compare(cx, C::GreaterEqual, &x, &zero)?;
            select(cx, &c, &x, &neg)
        }
        Act::ThresholdedRelu(a) => {
            let th = cx.scalar(a, x.dtype());
            let c = compare(cx, C::Greater, &x, &th)?;
            select(cx, &c, &x, &zero)
        }
        Act::ScaledTanh(a, b) => {
            let y = with_scalar(cx, B::Mul, &x, b)?;
            let y = unary(cx, U::Tanh, &y)?;
            with_scalar(cx, B::Mul, &y, a)
        }
        Act::HardSigmoid(a, b) => {
            let y = with_scalar(cx, B::Mul, &x, a)?;
            let y = with_scalar(cx, B::Add, &y, b)?;
            let y = with_scalar(cx, B::Minimum, &y, 1.0)?;
            with_scalar(cx, B::Maximum, &y, 0.0)
        }
        Act::Elu(a) => {
            let e = unary(cx, U::Exp, &x)?;
            let e = with_scalar(cx, B::Sub, &e, 1.0)?;
            let e = with_scalar(cx, B::Mul, &e, a)?;
            let c = compare(cx, C::GreaterEqual, &x, &zero)?;
            select(cx, &c, &x, &e)
        }
        Act::Softsign => {
            let d = unary(cx, U::Abs, &x)?;
            let d = with_scalar(cx, B::Add, &d, 1.0)?;
            binary(cx, B::Div, &x, &d)
        }
        Act::Softplus => {
            let e = unary(cx, U::Exp, &x)?;
            let e = with_scalar(cx, B::Add, &e, 1.0)?;
            unary(cx, U::Log, &e)
        }
    }
}

/// `v[d, lo..hi]` of a `[dirs, n]` tensor as a 1-D `[hi-lo]` vector.
fn row_part(cx: &mut Cx, v: &Val, d: i64, lo: i64, hi: i64) -> Result<Val, NodeError> {
    let y = slice_axis(cx, v, 0, d, d + 1, 1)?;
    let y = slice_axis(cx, &y, 1, lo, hi, 1)?;
    cx.reshape(&y, vec![Dim::constant(hi - lo)])
}

/// Gate `g` of direction `d` of a `[dirs, gates·H, K]` weight, transposed
/// to `[K, H]` for `x @ w`.
fn gate_weight(cx: &mut Cx, w: &Val, d: i64, g: i64, h: i64) -> Result<Val, NodeError> {
    let y = slice_axis(cx, w, 0, d, d + 1, 1)?;
    let y = slice_axis(cx, &y, 1, g * h, (g + 1) * h, 1)?;
    let k = w.dims()[2].clone();
    let y = cx.reshape(&y, vec![Dim::constant(h), k])?;
    transpose_to(cx, &y, vec![1, 0])
}

/// `[dirs, batch, H]` state of direction `d` as `[batch, H]`.
fn state_of(cx: &mut Cx, s: &Val, d: i64) -> Result<Val, NodeError> {
    let y = slice_axis(cx, s, 0, d, d + 1, 1)?;
    let dims = y.dims()[1..].to_vec();
    cx.reshape(&y, dims)
}

/// Per-direction weights, sliced once before unrolling.
struct DirWeights {
    /// Per gate: `W_g^T [I, H]`, `R_g^T [H, H]`, `Wb_g [H]`, `Rb_g [H]`.
    w: Vec<Val>,
    r: Vec<Val>,
    wb: Vec<Option<Val>>,
    rb: Vec<Option<Val>>,
    /// LSTM peepholes `[p_i, p_o, p_f]`.
    p: Option<[Val; 3]>,
}

/// `x @ w + h @ r + wb + rb` for one gate (bias terms when given).
fn gate_sum(
    cx: &mut Cx,
    x: &Val,
    w: &Val,
    h: &Val,
    r: &Val,
    biases: &[&Option<Val>],
) -> Result<Val, NodeError> {
    let a = cx.op(optc_ir::Op::MatMul(optc_ir::ops::MatMul), &[x.clone(), w.clone()])?;
    let b = cx.op(optc_ir::Op::MatMul(optc_ir::ops::MatMul), &[h.clone(), r.clone()])?;
    let mut s = binary(cx, B::Add, &a, &b)?;
    for v in biases.iter().copied().flatten() {
        s = binary(cx, B::Add, &s, v)?;
    }
    Ok(s)
}

fn recurrent(cx: &mut Cx, n: &NodeCx, kind: Kind) -> R {
    let direction = n.string("direction", "forward")?;
    let nd: i64 = match direction.as_str() {
        "forward" | "reverse" => 1,
        "bidirectional" => 2,
        d => return Err(format!("direction {d:?} is not defined").into()),
    };
    let layout = n.int("layout", 0)?;
    if !(0..=1).contains(&layout) {
        return Err(format!("layout {layout} is not defined").into());
    }
    let clip = n.opt_float("clip")?;
    if clip.is_some_and(|c| c.is_nan() || c < 0.0) {
        return Err("clip must be non-negative".into());
    }
    let lbr = kind == Kind::Gru && n.int("linear_before_reset", 0)? != 0;
    let input_forget = kind == Kind::Lstm && n.int("input_forget", 0)? != 0;
    let alphas = n.opt_floats("activation_alpha")?.unwrap_or_default();
    let betas = n.opt_floats("activation_beta")?.unwrap_or_default();
    let per_dir = kind.default_acts().len();
    let names: Vec<String> = match n.opt_strings("activations")? {
        Some(v) => v,
        None => (0..nd)
            .flat_map(|_| kind.default_acts().iter().map(|s| s.to_string()))
            .collect(),
    };
    if names.len() != per_dir * nd as usize {
        return Err(format!(
            "activations {names:?}: expected {} names ({per_dir} per direction)",
            per_dir * nd as usize
        )
        .into());
    }
    let acts = parse_acts(&names, &alphas, &betas)?;

    let x = cx.input(n, 0)?;
    let (w, r) = (cx.input(n, 1)?, cx.input(n, 2)?);
    want_float(n, &x)?;
    if x.rank() != 3 || w.rank() != 3 || r.rank() != 3 {
        return Err(format!("X {}, W {} and R {} must be 3-D", x.ty, w.ty, r.ty).into());
    }
    let g = kind.gates();
    let h = match n.opt_int("hidden_size")? {
        Some(h) => h,
        None => static_dim(&r.dims()[2], "hidden size")?,
    };
    if !(1..=1 << 31).contains(&h) || !r.dims()[2].is(h) || !r.dims()[1].is(g * h) || !w.dims()[1].is(g * h) {
        return Err(format!("hidden_size {h} does not fit W {} and R {}", w.ty, r.ty).into());
    }
    if !w.dims()[0].is(nd) || !r.dims()[0].is(nd) {
        return Err(format!("W {} / R {} need {nd} direction(s)", w.ty, r.ty).into());
    }
    // Time-major from here on: [seq, batch, input].
    let x = if layout == 1 {
        transpose_to(cx, &x, vec![1, 0, 2])?
    } else {
        x
    };
    let seq = static_dim(&x.dims()[0], "sequence length")?;
    // Unrolled step by step: refuse sequences that would explode the graph.
    super::checked_product(&[seq], super::UNROLL_LIMIT, "RNN sequence length")?;
    let batch = x.dims()[1].clone();
    let input = x.dims()[2].clone();
    if !w.dims()[2].is(static_dim(&input, "input size")?) {
        return Err(format!("W {} does not fit X's input size {input}", w.ty).into());
    }
    let bias = cx.opt_input(n, 3)?;
    if let Some(b) = &bias {
        if b.rank() != 2 || !b.dims()[0].is(nd) || !b.dims()[1].is(2 * g * h) {
            return Err(format!("B {} must be [{nd}, {}]", b.ty, 2 * g * h).into());
        }
    }
    // sequence_lens (static): rows past their length keep their state and
    // output zeros; the reverse pass starts at each row's own last step.
    let lens = match cx.opt_input(n, 4)? {
        None => None,
        Some(_) => {
            let l = cx.static_ints(n, 4)?.unwrap_or_default();
            if !batch.is(l.len() as i64) {
                return Err(
                    format!("sequence_lens {l:?} must have one entry per batch row ({batch})").into(),
                );
            }
            if l.iter().any(|&v| v < 1 || v > seq) {
                return unsupported(format!(
                    "{} sequence_lens {l:?} outside 1..={seq} is not supported",
                    n.node.op_type
                ));
            }
            l.iter().any(|&v| v != seq).then_some(l)
        }
    };
    let state_dims = vec![Dim::constant(nd), batch.clone(), Dim::constant(h)];
    let init = |cx: &mut Cx, i: usize| -> Result<Option<Val>, NodeError> {
        let Some(v) = cx.opt_input(n, i)? else {
            return Ok(None);
        };
        let v = if layout == 1 {
            transpose_to(cx, &v, vec![1, 0, 2])?
        } else {
            v
        };
        if v.dims() != state_dims.as_slice() {
            return Err(format!("initial state {} must be {state_dims:?}", v.ty).into());
        }
        Ok(Some(v))
    };
    let h0 = init(cx, 5)?;
    let c0 = if kind == Kind::Lstm { init(cx, 6)? } else { None };
    let peep = if kind == Kind::Lstm {
        cx.opt_input(n, 7)?
    } else {
        None
    };
    if let Some(p) = &peep {
        if p.rank() != 2 || !p.dims()[0].is(nd) || !p.dims()[1].is(3 * h) {
            return Err(format!("P {} must be [{nd}, {}]", p.ty, 3 * h).into());
        }
    }

    let dt = x.dtype();
    let zeros = {
        let z = cx.scalar(0.0, dt);
        super::shape::expand_to(cx, &z, vec![batch.clone(), Dim::constant(h)])?
    };
    // X per time step as [batch, input].
    let mut xs = Vec::new();
    for t in 0..seq {
        let xt = slice_axis(cx, &x, 0, t, t + 1, 1)?;
        xs.push(cx.reshape(&xt, vec![batch.clone(), input.clone()])?);
    }
    let mut ys = Vec::new();
    let mut hs = Vec::new();
    let mut cs = Vec::new();
    for d in 0..nd {
        let mut dw = DirWeights {
            w: Vec::new(),
            r: Vec::new(),
            wb: Vec::new(),
            rb: Vec::new(),
            p: None,
        };
        for gi in 0..g {
            dw.w.push(gate_weight(cx, &w, d, gi, h)?);
            dw.r.push(gate_weight(cx, &r, d, gi, h)?);
            match &bias {
                Some(b) => {
                    dw.wb.push(Some(row_part(cx, b, d, gi * h, (gi + 1) * h)?));
                    dw.rb
                        .push(Some(row_part(cx, b, d, (g + gi) * h, (g + gi + 1) * h)?));
                }
                None => {
                    dw.wb.push(None);
                    dw.rb.push(None);
                }
            }
        }
        if let Some(p) = &peep {
            dw.p = Some([
                row_part(cx, p, d, 0, h)?,
                row_part(cx, p, d, h, 2 * h)?,
                row_part(cx, p, d, 2 * h, 3 * h)?,
            ]);
        }
        let a = &acts[d as usize * per_dir..(d as usize + 1) * per_dir];
        let mut ht = match &h0 {
            Some(s) => state_of(cx, s, d)?,
            None => zeros.clone(),
        };
        let mut ct = match &c0 {
            Some(s) => state_of(cx, s, d)?,
            None => zeros.clone(),
        };
        let reverse = direction == "reverse" || d == 1;
        // The time each batch row reads at a step (and, the map being its
        // own inverse, the step each row's output at a time comes from).
        let time_of = |step: i64| -> Vec<i64> {
            match (&lens, reverse) {
                (Some(l), true) => l
                    .iter()
                    .map(|&v| if step < v { v - 1 - step } else { step })
                    .collect(),
                (None, true) => vec![seq - 1 - step],
                _ => vec![step],
            }
        };
        let mut outs = Vec::new();
        for step in 0..seq {
            let xt = pick_rows(cx, &xs, &time_of(step))?;
            let (h_prev, c_prev) = (ht.clone(), ct.clone());
            match kind {
                Kind::Rnn => {
                    let s = gate_sum(cx, &xt, &dw.w[0], &ht, &dw.r[0], &[&dw.wb[0], &dw.rb[0]])?;
                    ht = activate(cx, a[0], &s, clip)?;
                }
                Kind::Gru => {
                    let s = gate_sum(cx, &xt, &dw.w[0], &ht, &dw.r[0], &[&dw.wb[0], &dw.rb[0]])?;
                    let z = activate(cx, a[0], &s, clip)?;
                    let s = gate_sum(cx, &xt, &dw.w[1], &ht, &dw.r[1], &[&dw.wb[1], &dw.rb[1]])?;
                    let rg = activate(cx, a[0], &s, clip)?;
                    let mm = |cx: &mut Cx, p: &Val, q: &Val| {
                        cx.op(optc_ir::Op::MatMul(optc_ir::ops::MatMul), &[p.clone(), q.clone()])
                    };
                    let mut s = mm(cx, &xt, &dw.w[2])?;
                    if let Some(b) = &dw.wb[2] {
                        s = binary(cx, B::Add, &s, b)?;
                    }
                    let rec = if lbr {
                        let mut q = mm(cx, &ht, &dw.r[2])?;
                        if let Some(b) = &dw.rb[2] {
                            q = binary(cx, B::Add, &q, b)?;
                        }
                        binary(cx, B::Mul, &rg, &q)?
                    } else {
                        let rh = binary(cx, B::Mul, &rg, &ht)?;
                        let mut q = mm(cx, &rh, &dw.r[2])?;
                        if let Some(b) = &dw.rb[2] {
                            q = binary(cx, B::Add, &q, b)?;
                        }
                        q
                    };
                    let s = binary(cx, B::Add, &s, &rec)?;
                    let hh = activate(cx, a[1], &s, clip)?;
                    // H = (1 - z) * hh + z * H = hh + z * (H - hh)
                    let diff = binary(cx, B::Sub, &ht, &hh)?;
                    let zd = binary(cx, B::Mul, &z, &diff)?;
                    ht = binary(cx, B::Add, &hh, &zd)?;
                }
                Kind::Lstm => {
                    // Gate order in W/R/B: i, o, f, c; peepholes: i, o, f.
                    let mut pre = Vec::new();
                    for gi in 0..4 {
                        let gi = gi as usize;
                        pre.push(gate_sum(
                            cx,
                            &xt,
                            &dw.w[gi],
                            &ht,
                            &dw.r[gi],
                            &[&dw.wb[gi], &dw.rb[gi]],
                        )?);
                    }
                    let peep_add = |cx: &mut Cx, s: &Val, k: usize, c: &Val| -> Result<Val, NodeError> {
                        match &dw.p {
                            Some(p) => {
                                let pc = binary(cx, B::Mul, &p[k], c)?;
                                binary(cx, B::Add, s, &pc)
                            }
                            None => Ok(s.clone()),
                        }
                    };
                    let si = peep_add(cx, &pre[0], 0, &ct)?;
                    let it = activate(cx, a[0], &si, clip)?;
                    let ft = if input_forget {
                        let one = cx.scalar(1.0, dt);
                        binary(cx, B::Sub, &one, &it)?
                    } else {
                        let sf = peep_add(cx, &pre[2], 2, &ct)?;
                        activate(cx, a[0], &sf, clip)?
                    };
                    let cc = activate(cx, a[1], &pre[3], clip)?;
                    let fc = binary(cx, B::Mul, &ft, &ct)?;
                    let ic = binary(cx, B::Mul, &it, &cc)?;
                    ct = binary(cx, B::Add, &fc, &ic)?;
                    let so = peep_add(cx, &pre[1], 1, &ct)?;
                    let ot = activate(cx, a[0], &so, clip)?;
                    let hc = activate(cx, a[2], &ct, None)?;
                    ht = binary(cx, B::Mul, &ot, &hc)?;
                }
            }
            match &lens {
                Some(l) => {
                    let lv = cx.konst(Tensor::from_i64(DType::I64, &[l.len(), 1], l));
                    let at = cx.scalar(step as f64, DType::I64);
                    let active = compare(cx, C::Greater, &lv, &at)?;
                    ht = select(cx, &active, &ht, &h_prev)?;
                    ct = select(cx, &active, &ct, &c_prev)?;
                    outs.push(select(cx, &active, &ht, &zeros)?);
                }
                None => outs.push(ht.clone()),
            }
        }
        // Y for this direction: [seq, 1, batch, H].
        let one_step = vec![
            Dim::constant(1),
            Dim::constant(1),
            batch.clone(),
            Dim::constant(h),
        ];
        let mut steps = Vec::new();
        for t in 0..seq {
            let o = pick_rows(cx, &outs, &time_of(t))?;
            steps.push(cx.reshape(&o, one_step.clone())?);
        }
        ys.push(concat(cx, &steps, 0)?);
        let last = vec![Dim::constant(1), batch.clone(), Dim::constant(h)];
        hs.push(cx.reshape(&ht, last.clone())?);
        cs.push(cx.reshape(&ct, last)?);
    }
    let mut y = concat(cx, &ys, 1)?;
    let mut yh = concat(cx, &hs, 0)?;
    let mut yc = concat(cx, &cs, 0)?;
    if layout == 1 {
        y = transpose_to(cx, &y, vec![2, 0, 1, 3])?;
        yh = transpose_to(cx, &yh, vec![1, 0, 2])?;
        yc = transpose_to(cx, &yc, vec![1, 0, 2])?;
    }
    let mut out = vec![y, yh];
    if kind == Kind::Lstm {
        out.push(yc);
    }
    Ok(out)
}

/// Row `b` of `src[idx[b]]` for every batch row; one index means every
/// row comes from the same step.
fn pick_rows(cx: &mut Cx, src: &[Val], idx: &[i64]) -> Result<Val, NodeError> {
    let get = |i: i64| {
        src.get(i as usize)
            .ok_or_else(|| NodeError::Invalid(format!("time {i} out of range")))
    };
    let Some(&first) = idx.first() else {
        return Err("no batch rows to pick".into());
    };
    if idx.iter().all(|&i| i == first) {
        return get(first).cloned();
    }
    let mut rows = Vec::new();
    for (b, &i) in idx.iter().enumerate() {
        let v = get(i)?.clone();
        rows.push(slice_axis(cx, &v, 0, b as i64, b as i64 + 1, 1)?);
    }
    concat(cx, &rows, 0)
}

/// Concatenates along an axis (a single part as is).
fn concat(cx: &mut Cx, parts: &[Val], axis: i64) -> Result<Val, NodeError> {
    match parts {
        [] => Err("nothing to concatenate (empty sequence)".into()),
        [one] => Ok(one.clone()),
        _ => cx.op(optc_ir::Op::Concat(optc_ir::ops::Concat { axis }), parts),
    }
}
