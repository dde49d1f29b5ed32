//! Common-subexpression elimination: two ops of the same kind, attributes,
//! operands and result types compute the same values (every op is pure), so
//! the later one's uses move to the earlier one.

use std::collections::HashMap;

use optc_ir::{Graph, NodeId, Value};

use super::op_order;
use crate::{Pass, PassContext, PassError, PassReport};

/// Merges identical ops.
pub struct Cse;

impl Pass for Cse {
    fn name(&self) -> &str {
        "cse"
    }

    fn description(&self) -> &str {
        "merge ops that compute the same thing from the same operands"
    }

    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<PassReport, PassError> {
        // Bucket by a cheap key; confirm with full equality (attributes
        // include constant tensors, which the key does not spell out).
        let mut buckets: HashMap<(String, Vec<Value>, String), Vec<NodeId>> = HashMap::new();
        let mut merged = 0;
        for n in op_order(g) {
            let node = g.node(n);
            let op = node.op().expect("op_order yields ops");
            let key = (
                op.name().to_string(),
                g.operands(n),
                node.outputs
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(";"),
            );
            let same = buckets.get(&key).and_then(|cands| {
                cands
                    .iter()
                    .copied()
                    .find(|&c| g.node(c).op() == Some(op) && g.node(c).outputs == node.outputs)
            });
            match same {
                Some(c) => {
                    for i in 0..node.outputs.len() as u32 {
                        g.replace_all_uses(Value { node: n, index: i }, Value { node: c, index: i });
                    }
                    g.remove_node(n);
                    merged += 1;
                }
                None => buckets.entry(key).or_default().push(n),
            }
        }
        Ok(PassReport::with_rewrites(merged))
    }
}
