//! The gated MLP activation `silu(gate) * up` (either operand order), into
//! `swiglu(gate, up)` when gate and up have one type (no broadcasting).

use egg::Id;
use optc_ir::ops::{Op, SwiGlu};

use super::{rule, Rule};
use crate::fusion::egraph::{ty, FusionGraph};

fn build(eg: &mut FusionGraph, v: &[Id]) -> Option<(Op, Vec<Id>)> {
    let (g, u) = (v[0], v[1]);
    (ty(eg, g)? == ty(eg, u)?).then(|| (Op::SwiGlu(SwiGlu), vec![g, u]))
}

pub fn rules() -> Vec<Rule> {
    vec![
        // silu(gate) * up: the Llama MLP.
        rule("swiglu-a", "(mul (silu ?g) ?u)", &["?g", "?u"], build),
        // up * silu(gate): Phi-3's `up_states * act(gate)`.
        rule("swiglu-b", "(mul ?u (silu ?g))", &["?g", "?u"], build),
    ]
}
