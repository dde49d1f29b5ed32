//! Dead-code elimination: removes ops (and weights) whose values no graph
//! output depends on. Inputs stay: they are the graph's signature.

use std::collections::HashSet;

use optc_ir::{Graph, NodeKind};

use crate::{Pass, PassContext, PassError, PassReport};

/// Removes nodes no output depends on.
pub struct Dce;

/// Removes every op and weight no graph output depends on; returns how many.
pub fn remove_dead(g: &mut Graph) -> usize {
    let mut live = HashSet::new();
    let mut stack: Vec<_> = g.outputs().iter().map(|o| o.value.node).collect();
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(g.operands(n).into_iter().map(|v| v.node));
        }
    }
    let dead: Vec<_> = g
        .node_ids()
        .filter(|n| !live.contains(n) && !matches!(g.node(*n).kind, NodeKind::Input { .. }))
        .collect();
    for &n in &dead {
        g.remove_node(n);
    }
    dead.len()
}

impl Pass for Dce {
    fn name(&self) -> &str {
        "dce"
    }

    fn description(&self) -> &str {
        "remove ops and weights that no graph output depends on"
    }

    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<PassReport, PassError> {
        Ok(PassReport::with_rewrites(remove_dead(g)))
    }
}
