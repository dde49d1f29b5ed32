//! A user-defined pass, registered with the compiler and run in a pipeline
//! next to the built-in ones, with `--check-passes`-style checking on.
//!
//! The pass decomposes `silu(x)` into `x * sigmoid(x)` (say, for a backend
//! without a silu kernel). `cargo run --example custom_pass`

use std::sync::Arc;

use optc::fixtures::{tiny_decoder, TinyDecoderConfig};
use optc::ir::ops::{BinaryKind, Op, UnaryKind};
use optc::ir::{Graph, Value};
use optc::passes::check::CheckConfig;
use optc::passes::{Pass, PassContext, PassError, PassReport, PassSpec, Pipeline};
use optc::Compiler;

/// Rewrites every `silu(x)` as `mul(x, sigmoid(x))`.
struct DecomposeSilu;

impl Pass for DecomposeSilu {
    fn name(&self) -> &str {
        "decompose_silu"
    }

    fn description(&self) -> &str {
        "rewrite silu(x) as x * sigmoid(x)"
    }

    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let silus: Vec<_> = g
            .node_ids()
            .filter(|&n| g.node(n).op() == Some(&Op::Unary(UnaryKind::Silu)))
            .collect();
        for &n in &silus {
            let x = g.operands(n)[0];
            let ty = g.node(n).outputs.clone();
            let loc = g.node(n).loc.clone();
            let sig = g.add_op(Op::Unary(UnaryKind::Sigmoid), &[x], ty.clone(), loc.clone());
            let mul = g.add_op(Op::Binary(BinaryKind::Mul), &[x, Value::of(sig)], ty, loc);
            g.replace_all_uses(Value::of(n), Value::of(mul));
            g.remove_node(n);
        }
        Ok(PassReport::with_rewrites(silus.len()))
    }
}

fn main() -> anyhow::Result<()> {
    let (mut graph, mut weights) = tiny_decoder(&TinyDecoderConfig::default())?;
    let mut compiler = Compiler::new();
    compiler.register(Arc::new(DecomposeSilu));
    // The default pipeline, then ours, then dead-code elimination again.
    let mut pipeline = Pipeline::default_pipeline();
    pipeline.passes.push(PassSpec::new("decompose_silu"));
    pipeline.passes.push(PassSpec::new("dce"));
    compiler.set_pipeline(pipeline);
    compiler.check_passes(CheckConfig::default());
    let report = compiler.compile(&mut graph, &mut weights)?;
    print!("{}", report.table());
    println!(
        "silu ops left: {}",
        graph.op_counts().get("silu").copied().unwrap_or(0)
    );
    Ok(())
}
