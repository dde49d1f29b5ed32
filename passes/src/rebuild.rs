//! A graph rebuilt op by op into a new one, as the cache passes do when
//! they change its inputs: each op re-added with its output types inferred
//! from the new operands, so a shape the change breaks is an error naming
//! the node rather than a graph the verifier rejects later.

use std::collections::{BTreeMap, HashMap};

use optc_ir::ops::Op;
use optc_ir::{Dim, Graph, NodeId, NodeKind, TensorType, Value};

use crate::PassError;

/// The graph being built, and where each old value went.
pub(crate) struct Rebuild {
    pub(crate) new: Graph,
    /// Old value to new value.
    pub(crate) map: HashMap<Value, Value>,
    /// Symbols replaced in the ops' attributes as they are re-added.
    pub(crate) subst: BTreeMap<String, Dim>,
    /// The pass whose errors these are.
    pass: &'static str,
    /// Said after a shape error: how the new graph differs from the old.
    change: &'static str,
}

impl Rebuild {
    /// An empty graph named as `from`, for `pass`; `change` is told with
    /// every shape error.
    pub(crate) fn new(
        from: &Graph,
        pass: &'static str,
        change: &'static str,
        subst: BTreeMap<String, Dim>,
    ) -> Rebuild {
        Rebuild {
            new: Graph::new(from.name.clone()),
            map: HashMap::new(),
            subst,
            pass,
            change,
        }
    }

    /// The pass's error.
    pub(crate) fn fail(&self, message: String) -> PassError {
        PassError::Failed {
            pass: self.pass.into(),
            message,
        }
    }

    /// Declares `g`'s weights in the new graph.
    pub(crate) fn copy_weights(&mut self, g: &Graph) {
        for &w in g.weights() {
            if let NodeKind::Weight { name, key } = &g.node(w).kind {
                let nw = self
                    .new
                    .add_weight(name.clone(), key.clone(), g.node(w).outputs[0].clone());
                self.map.insert(Value::of(w), nw);
            }
        }
    }

    /// Adds an op, inferring its output types from its operands.
    pub(crate) fn op(
        &mut self,
        op: Op,
        args: &[Value],
        loc: Option<String>,
        what: &str,
    ) -> Result<NodeId, PassError> {
        let types: Vec<TensorType> = args.iter().map(|&a| self.ty(a)).collect();
        let outs = op
            .infer(&types)
            .map_err(|m| self.fail(format!("{what}: {m} ({})", self.change)))?;
        Ok(self.new.add_op(op, args, outs, loc))
    }

    /// [`Rebuild::op`] for an op of one output.
    pub(crate) fn op1(
        &mut self,
        op: Op,
        args: &[Value],
        loc: &Option<String>,
        what: &str,
    ) -> Result<Value, PassError> {
        Ok(Value::of(self.op(op, args, loc.clone(), what)?))
    }

    /// The type of a value of the new graph.
    pub(crate) fn ty(&self, v: Value) -> TensorType {
        self.new
            .value_type(v)
            .cloned()
            .expect("values are built before their users")
    }
}
