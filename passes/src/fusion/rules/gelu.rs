//! GELU written out, into `gelu`:
//!
//! - tanh form (GPT-2's `gelu_new`, `NewGELUActivation`):
//!   `(x * 0.5) * (1 + tanh(√(2/π) * (x + 0.044715 * x³)))`, x³ as a
//!   power or as `x · x · x` (how ONNX exporters write it);
//! - erf form: `(x * 0.5) * (1 + erf(x * 1/√2))` or `... erf(x / √2) ...`;
//! - either grouped as `(x · p) · 0.5` too (torch.onnx's spelling), and
//!   every commutative op's operands in either order.
//!
//! Conditions: every constant is the scalar the formula has (relative
//! tolerance 1e-6, as Python floats are written out to a few digits).

use egg::Id;
use optc_ir::ops::{Gelu, GeluApprox, Op};

use super::{rule, Builder, Rule};
use crate::fusion::egraph::{scalar_is, FusionGraph};

const TOL: f64 = 1e-6;

/// `gelu(x)` of the given form, when `ok`.
fn gelu(ok: bool, approximate: GeluApprox, x: Id) -> Option<(Op, Vec<Id>)> {
    ok.then(|| (Op::Gelu(Gelu { approximate }), vec![x]))
}

/// Variables: x, ½, the 0.044715 coefficient, √(2/π), 1, and the exponent
/// 3 where x³ is a power (a product of x's has none to check).
fn tanh_form(eg: &mut FusionGraph, v: &[Id]) -> Option<(Op, Vec<Id>)> {
    let (x, half, c, k, one) = (v[0], v[1], v[2], v[3], v[4]);
    let ok = scalar_is(eg, half, 0.5, TOL)
        && v.get(5).is_none_or(|&three| scalar_is(eg, three, 3.0, TOL))
        && scalar_is(eg, c, 0.044715, TOL)
        && scalar_is(eg, k, (2.0 / std::f64::consts::PI).sqrt(), TOL)
        && scalar_is(eg, one, 1.0, TOL);
    gelu(ok, GeluApprox::Tanh, x)
}

/// Variables: x, ½, the scale of x inside erf, 1; the scale is 1/√2
/// (`x * r`) or √2 (`x / s`).
fn erf_form(eg: &mut FusionGraph, v: &[Id], scale: f64) -> Option<(Op, Vec<Id>)> {
    let (x, half, r, one) = (v[0], v[1], v[2], v[3]);
    let ok = scalar_is(eg, half, 0.5, TOL) && scalar_is(eg, r, scale, TOL) && scalar_is(eg, one, 1.0, TOL);
    gelu(ok, GeluApprox::None, x)
}

fn erf_mul_form(eg: &mut FusionGraph, v: &[Id]) -> Option<(Op, Vec<Id>)> {
    erf_form(eg, v, std::f64::consts::FRAC_1_SQRT_2)
}

fn erf_div_form(eg: &mut FusionGraph, v: &[Id]) -> Option<(Op, Vec<Id>)> {
    erf_form(eg, v, std::f64::consts::SQRT_2)
}

/// `(op a b)` and `(op b a)`.
fn orders(op: &str, a: &str, b: &str) -> [String; 2] {
    [format!("({op} {a} {b})"), format!("({op} {b} {a})")]
}

/// `x · 0.5 · p` for the bracket `p` (`1 + tanh(…)` or `1 + erf(…)`),
/// grouped either way (`(x · 0.5) · p` as HF writes it, `(x · p) · 0.5` as
/// torch.onnx does), each product's operands in either order.
fn halves(p: &str) -> Vec<String> {
    let mut out = Vec::new();
    for hx in orders("mul", "?x", "?half") {
        out.extend(orders("mul", &hx, p));
    }
    for xp in orders("mul", "?x", p) {
        out.extend(orders("mul", &xp, "?half"));
    }
    out
}

/// Every rule of one form: `pat` for each spelling, named `name-N`.
fn spelled(out: &mut Vec<Rule>, name: &str, pats: Vec<String>, vars: &[&str], build: Builder) {
    for (n, pat) in pats.iter().enumerate() {
        out.push(rule(&format!("{name}-{n}"), pat, vars, build));
    }
}

pub fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    // The tanh form: x³ as a power (`torch.pow`, HF's `NewGELUActivation`)
    // or a product either way round (ONNX exporters, optc's own among
    // them), every operand order of its commutative ops.
    let cubes = ["(pow ?x ?three)", "(mul (mul ?x ?x) ?x)", "(mul ?x (mul ?x ?x))"];
    for (ci, cube) in cubes.into_iter().enumerate() {
        let mut pats = Vec::new();
        for cx3 in orders("mul", cube, "?c") {
            for sum in orders("add", "?x", &cx3) {
                for scaled in orders("mul", &sum, "?k") {
                    for p in orders("add", &format!("(tanh {scaled})"), "?one") {
                        pats.extend(halves(&p));
                    }
                }
            }
        }
        let vars: &[&str] = if ci == 0 {
            &["?x", "?half", "?c", "?k", "?one", "?three"]
        } else {
            &["?x", "?half", "?c", "?k", "?one"]
        };
        spelled(&mut out, &format!("gelu-tanh-{ci}"), pats, vars, tanh_form);
    }
    // The erf form, x scaled by 1/√2 (either order) or divided by √2.
    let scaled_x: [(&str, Vec<String>, Builder); 2] = [
        ("gelu-erf-mul", orders("mul", "?x", "?r").into(), erf_mul_form),
        ("gelu-erf-div", vec!["(div ?x ?r)".into()], erf_div_form),
    ];
    for (name, forms, build) in scaled_x {
        let mut pats = Vec::new();
        for scaled in forms {
            for p in orders("add", &format!("(erf {scaled})"), "?one") {
                pats.extend(halves(&p));
            }
        }
        spelled(&mut out, name, pats, &["?x", "?half", "?r", "?one"], build);
    }
    out
}
