//! The optimizer ops of the `ai.onnx.preview.training` domain (Adagrad,
//! Adam, Momentum): one update step of each optimized tensor, written out as
//! the elementwise formulas the spec gives. They make an exported training
//! step importable and checkable on the interpreter. Each op takes the
//! scalar learning rate `R` and update count `T`, then groups of tensors
//! (all `X`s, then all `G`s, …), and returns the groups of updated tensors.

use optc_ir::ops::{BinaryKind as B, CompareKind as C, UnaryKind as U};

use super::super::import::{Cx, NodeCx, NodeError, Val};
use super::{binary, compare, select, unary, want_float, with_scalar, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[("Adagrad", adagrad), ("Adam", adam), ("Momentum", momentum)];

/// `R`, `T` (as `X`'s dtype) and the `groups` tensor lists after them.
fn operands(cx: &mut Cx, n: &NodeCx, groups: usize) -> Result<(Val, Val, Vec<Vec<Val>>), NodeError> {
    let r = cx.input(n, 0)?;
    let t = cx.input(n, 1)?;
    let rest = cx.inputs_from(n, 2)?;
    if rest.is_empty() || rest.len() % groups != 0 {
        return Err(NodeError::Invalid(format!(
            "{} takes R, T and {groups} equal groups of tensors, got {} tensors after R and T",
            n.node.op_type,
            rest.len()
        )));
    }
    let k = rest.len() / groups;
    let lists: Vec<Vec<Val>> = rest.chunks(k).map(|c| c.to_vec()).collect();
    let dtype = lists[0][0].dtype();
    want_float(n, &lists[0][0])?;
    let r = cx.cast(&r, dtype)?;
    let t = cx.cast(&t, dtype)?;
    Ok((r, t, lists))
}

/// `c·X + G`: the gradient of `½·c·‖X‖²` added.
fn regularized(cx: &mut Cx, x: &Val, g: &Val, c: f64) -> Result<Val, NodeError> {
    let cx_ = with_scalar(cx, B::Mul, x, c)?;
    binary(cx, B::Add, &cx_, g)
}

fn adagrad(cx: &mut Cx, n: &NodeCx) -> R {
    let decay = n.float("decay_factor", 0.0)?;
    let eps = n.float("epsilon", 0.0)?;
    let norm = n.float("norm_coefficient", 0.0)?;
    let (r, t, l) = operands(cx, n, 3)?;
    // r = R / (1 + T·decay)
    let td = with_scalar(cx, B::Mul, &t, decay)?;
    let den = with_scalar(cx, B::Add, &td, 1.0)?;
    let rate = binary(cx, B::Div, &r, &den)?;
    let (mut xs, mut hs) = (Vec::new(), Vec::new());
    for (i, x) in l[0].iter().enumerate() {
        let (g, h) = (&l[1][i], &l[2][i]);
        let gr = regularized(cx, x, g, norm)?;
        let g2 = binary(cx, B::Mul, &gr, &gr)?;
        let h_new = binary(cx, B::Add, h, &g2)?;
        let sq = unary(cx, U::Sqrt, &h_new)?;
        let adaptive = with_scalar(cx, B::Add, &sq, eps)?;
        let step = binary(cx, B::Mul, &rate, &gr)?;
        let step = binary(cx, B::Div, &step, &adaptive)?;
        xs.push(binary(cx, B::Sub, x, &step)?);
        hs.push(h_new);
    }
    xs.extend(hs);
    Ok(xs)
}

fn adam(cx: &mut Cx, n: &NodeCx) -> R {
    let alpha = n.float("alpha", 0.9)?;
    let beta = n.float("beta", 0.999)?;
    let eps = n.float("epsilon", 0.0)?;
    let norm = n.float("norm_coefficient", 0.0)?;
    let post = n.float("norm_coefficient_post", 0.0)?;
    let (r, t, l) = operands(cx, n, 4)?;
    // R·sqrt(1 − β^T)/(1 − α^T) when T > 0, else R (no bias correction).
    let pow = |cx: &mut Cx, base: f64| -> Result<Val, NodeError> {
        let b = cx.scalar(base, t.dtype());
        binary(cx, B::Pow, &b, &t)
    };
    let bt = pow(cx, beta)?;
    let at = pow(cx, alpha)?;
    let one = cx.scalar(1.0, t.dtype());
    let nb = binary(cx, B::Sub, &one, &bt)?;
    let na = binary(cx, B::Sub, &one, &at)?;
    let sq = unary(cx, U::Sqrt, &nb)?;
    let corr = binary(cx, B::Div, &sq, &na)?;
    let corrected = binary(cx, B::Mul, &r, &corr)?;
    let zero = cx.scalar(0.0, t.dtype());
    let started = compare(cx, C::Greater, &t, &zero)?;
    let rate = select(cx, &started, &corrected, &r)?;
    let (mut xs, mut vs, mut hs) = (Vec::new(), Vec::new(), Vec::new());
    for (i, x) in l[0].iter().enumerate() {
        let (g, v, h) = (&l[1][i], &l[2][i], &l[3][i]);
        let gr = regularized(cx, x, g, norm)?;
        let av = with_scalar(cx, B::Mul, v, alpha)?;
        let ag = with_scalar(cx, B::Mul, &gr, 1.0 - alpha)?;
        let v_new = binary(cx, B::Add, &av, &ag)?;
        let bh = with_scalar(cx, B::Mul, h, beta)?;
        let g2 = binary(cx, B::Mul, &gr, &gr)?;
        let bg = with_scalar(cx, B::Mul, &g2, 1.0 - beta)?;
        let h_new = binary(cx, B::Add, &bh, &bg)?;
        let hs_ = unary(cx, U::Sqrt, &h_new)?;
        let hs_ = with_scalar(cx, B::Add, &hs_, eps)?;
        let dir = binary(cx, B::Div, &v_new, &hs_)?;
        let step = binary(cx, B::Mul, &rate, &dir)?;
        let x_new = binary(cx, B::Sub, x, &step)?;
        xs.push(with_scalar(cx, B::Mul, &x_new, 1.0 - post)?);
        vs.push(v_new);
        hs.push(h_new);
    }
    xs.extend(vs);
    xs.extend(hs);
    Ok(xs)
}

fn momentum(cx: &mut Cx, n: &NodeCx) -> R {
    let alpha = n.float("alpha", 0.0)?;
    let beta = n.float("beta", 0.0)?;
    let norm = n.float("norm_coefficient", 0.0)?;
    let nesterov = match n.string("mode", "standard")?.as_str() {
        "standard" => false,
        "nesterov" => true,
        other => {
            return Err(NodeError::Invalid(format!(
                "mode must be standard or nesterov, got {other:?}"
            )))
        }
    };
    let (r, t, l) = operands(cx, n, 3)?;
    // The gradient's coefficient is 1 on the first step (T = 0).
    let zero = cx.scalar(0.0, t.dtype());
    let started = compare(cx, C::Greater, &t, &zero)?;
    let b = cx.scalar(beta, t.dtype());
    let one = cx.scalar(1.0, t.dtype());
    let beta_t = select(cx, &started, &b, &one)?;
    let (mut xs, mut vs) = (Vec::new(), Vec::new());
    for (i, x) in l[0].iter().enumerate() {
        let (g, v) = (&l[1][i], &l[2][i]);
        let gr = regularized(cx, x, g, norm)?;
        let av = with_scalar(cx, B::Mul, v, alpha)?;
        let bg = binary(cx, B::Mul, &beta_t, &gr)?;
        let v_new = binary(cx, B::Add, &av, &bg)?;
        let dir = if nesterov {
            let a = with_scalar(cx, B::Mul, &v_new, alpha)?;
            binary(cx, B::Add, &gr, &a)?
        } else {
            v_new.clone()
        };
        let step = binary(cx, B::Mul, &r, &dir)?;
        xs.push(binary(cx, B::Sub, x, &step)?);
        vs.push(v_new);
    }
    xs.extend(vs);
    Ok(xs)
}
