//! GELU written out, into `gelu`:
//!
//! - tanh form (GPT-2's `gelu_new`, `NewGELUActivation`):
//!   `(x * 0.5) * (1 + tanh(√(2/π) * (x + 0.044715 * x³)))`;
//! - erf form: `(x * 0.5) * (1 + erf(x * 1/√2))` or `... erf(x / √2) ...`.
//!
//! Conditions: every constant is the scalar the formula has (relative
//! tolerance 1e-6, as Python floats are written out to a few digits).

use egg::Id;
use optc_ir::ops::{Gelu, GeluApprox, Op};

use super::{rule, Rule};
use crate::fusion::egraph::{scalar_is, FusionGraph};

const TOL: f64 = 1e-6;

fn tanh_form(eg: &mut FusionGraph, v: &[Id]) -> Option<(Op, Vec<Id>)> {
    let (x, half, three, c, k, one) = (v[0], v[1], v[2], v[3], v[4], v[5]);
    let ok = scalar_is(eg, half, 0.5, TOL)
        && scalar_is(eg, three, 3.0, TOL)
        && scalar_is(eg, c, 0.044715, TOL)
        && scalar_is(eg, k, (2.0 / std::f64::consts::PI).sqrt(), TOL)
        && scalar_is(eg, one, 1.0, TOL);
    ok.then(|| {
        (
            Op::Gelu(Gelu {
                approximate: GeluApprox::Tanh,
            }),
            vec![x],
        )
    })
}

fn erf_mul_form(eg: &mut FusionGraph, v: &[Id]) -> Option<(Op, Vec<Id>)> {
    let (x, half, r, one) = (v[0], v[1], v[2], v[3]);
    let ok = scalar_is(eg, half, 0.5, TOL)
        && scalar_is(eg, r, std::f64::consts::FRAC_1_SQRT_2, TOL)
        && scalar_is(eg, one, 1.0, TOL);
    ok.then(|| {
        (
            Op::Gelu(Gelu {
                approximate: GeluApprox::None,
            }),
            vec![x],
        )
    })
}

fn erf_div_form(eg: &mut FusionGraph, v: &[Id]) -> Option<(Op, Vec<Id>)> {
    let (x, half, s, one) = (v[0], v[1], v[2], v[3]);
    let ok = scalar_is(eg, half, 0.5, TOL)
        && scalar_is(eg, s, std::f64::consts::SQRT_2, TOL)
        && scalar_is(eg, one, 1.0, TOL);
    ok.then(|| {
        (
            Op::Gelu(Gelu {
                approximate: GeluApprox::None,
            }),
            vec![x],
        )
    })
}

pub fn rules() -> Vec<Rule> {
    vec![
        rule(
            "gelu-tanh",
            "(mul (mul ?x ?half) (add (tanh (mul (add ?x (mul (pow ?x ?three) ?c)) ?k)) ?one))",
            &["?x", "?half", "?three", "?c", "?k", "?one"],
            tanh_form,
        ),
        rule(
            "gelu-erf-mul",
            "(mul (mul ?x ?half) (add (erf (mul ?x ?r)) ?one))",
            &["?x", "?half", "?r", "?one"],
            erf_mul_form,
        ),
        rule(
            "gelu-erf-div",
            "(mul (mul ?x ?half) (add (erf (div ?x ?s)) ?one))",
            &["?x", "?half", "?s", "?one"],
            erf_div_form,
        ),
    ]
}
