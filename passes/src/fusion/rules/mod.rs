//! Fusion rules as data: one file per fusion family. A rule is a name, a
//! pattern over op keys, the pattern variables its builder reads, and a
//! builder that checks conditions (constant values, types) and returns the
//! fused op with its operands, or nothing.

pub mod attention;
pub mod gelu;
pub mod layernorm;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

use egg::{Applier, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var};
use optc_ir::ops::Op;

use super::egraph::{add_fused, FusionGraph, Node, Rule, Types};

/// Builds the fused op from the matched variables' classes, or declines.
pub type Builder = fn(&mut FusionGraph, &[Id]) -> Option<(Op, Vec<Id>)>;

struct Fuse {
    vars: Vec<Var>,
    build: Builder,
}

impl Applier<Node, Types> for Fuse {
    fn apply_one(
        &self,
        egraph: &mut FusionGraph,
        matched: Id,
        subst: &Subst,
        _: Option<&PatternAst<Node>>,
        _: Symbol,
    ) -> Vec<Id> {
        let ids: Vec<Id> = self.vars.iter().map(|v| subst[*v]).collect();
        match (self.build)(egraph, &ids) {
            Some((op, children)) => add_fused(egraph, matched, op, children),
            None => vec![],
        }
    }
}

/// A rule from a pattern in s-expression form (op keys as in
/// [`super::egraph::op_key`]), the variables the builder reads, in order,
/// and the builder.
pub fn rule(name: &str, pattern: &str, vars: &[&str], build: Builder) -> Rule {
    let searcher: Pattern<Node> = pattern
        .parse()
        .unwrap_or_else(|e| panic!("rule {name}: bad pattern {pattern}: {e}"));
    let vars = vars
        .iter()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("rule {name}: bad variable {v}: {e}"))
        })
        .collect();
    Rewrite::new(name, searcher, Fuse { vars, build }).unwrap_or_else(|e| panic!("rule {name}: {e}"))
}
