//! The verifier: run after a graph is built or parsed and after every pass.
//! It checks structure (acyclic, operands well formed, outputs defined),
//! types (every op's declared output types are what its type rule gives),
//! names (unique inputs, weights, outputs) and symbols (every symbol is bound
//! by a graph input). Each error names the node it is about.

use std::collections::{BTreeSet, HashSet};

use crate::dim::TensorType;
use crate::graph::{describe_with, Graph, NodeKind};

/// What is wrong with a graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("graph has a cycle through {node}")]
    Cycle { node: String },
    #[error("{node}: operand {slot} is missing")]
    MissingOperand { node: String, slot: u32 },
    #[error("{node}: operand slot {slot} is filled twice")]
    DuplicateOperand { node: String, slot: u32 },
    #[error("{node}: reads output {index} of {producer}, which defines {count}")]
    NoSuchOutput {
        node: String,
        producer: String,
        index: u32,
        count: usize,
    },
    #[error("{node} must not have operands")]
    OperandsOnSource { node: String },
    #[error("{node}: {message}")]
    Op { node: String, message: String },
    #[error("{node} declares {declared} but its operands give {inferred}")]
    TypeMismatch {
        node: String,
        declared: String,
        inferred: String,
    },
    #[error("output %{name} is not defined by any node")]
    UndefinedOutput { name: String },
    #[error("output %{name} is declared {declared} but its value is {actual}")]
    OutputType {
        name: String,
        declared: TensorType,
        actual: TensorType,
    },
    #[error("graph has no outputs")]
    NoOutputs,
    #[error("symbol {symbol} used by {node} is not bound by any graph input (inputs bind: {bound})")]
    UnboundSymbol {
        symbol: String,
        node: String,
        bound: String,
    },
    #[error("{node} has type {ty}, whose dim {dim} is negative")]
    NegativeDim {
        node: String,
        ty: TensorType,
        dim: String,
    },
    #[error("symbol name {symbol:?} (in {node}) cannot be written in the text form")]
    BadSymbolName { symbol: String, node: String },
    #[error("weight @{name} has shape {ty}, but weight shapes must be constant")]
    SymbolicWeight { name: String, ty: TensorType },
    #[error("{what} name {name} is used twice")]
    DuplicateName { what: &'static str, name: String },
}

fn list(types: &[TensorType]) -> String {
    types.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
}

/// Checks every invariant of the IR; returns the first violation found, in
/// a deterministic order (structure first, then nodes in topological order).
pub fn verify(g: &Graph) -> Result<(), VerifyError> {
    let names = g.value_names();
    let describe = |id| describe_with(g, &names, id);

    let order = g
        .topo_order()
        .map_err(|n| VerifyError::Cycle { node: describe(n) })?;

    let mut seen = HashSet::new();
    for &i in g.inputs() {
        let name = g.node_name(i).unwrap_or_default().to_string();
        if !seen.insert(name.clone()) {
            return Err(VerifyError::DuplicateName {
                what: "input",
                name: format!("%{name}"),
            });
        }
    }
    let mut seen = HashSet::new();
    for &w in g.weights() {
        let name = g.node_name(w).unwrap_or_default().to_string();
        if !seen.insert(name.clone()) {
            return Err(VerifyError::DuplicateName {
                what: "weight",
                name: format!("@{name}"),
            });
        }
        let ty = &g.node(w).outputs[0];
        if ty.shape.as_consts().is_none() {
            return Err(VerifyError::SymbolicWeight { name, ty: ty.clone() });
        }
    }
    let mut seen = HashSet::new();
    for o in g.outputs() {
        if !seen.insert(o.name.clone()) {
            return Err(VerifyError::DuplicateName {
                what: "output",
                name: format!("%{}", o.name),
            });
        }
    }
    if g.outputs().is_empty() {
        return Err(VerifyError::NoOutputs);
    }

    let bound = g.symbols();
    let bound_text = if bound.is_empty() {
        "none".to_string()
    } else {
        bound.iter().cloned().collect::<Vec<_>>().join(", ")
    };
    let check_symbols = |syms: BTreeSet<String>, node: &dyn Fn() -> String| -> Result<(), VerifyError> {
        if let Some(symbol) = syms.iter().find(|s| !crate::parser::is_valid_symbol(s)) {
            return Err(VerifyError::BadSymbolName {
                symbol: symbol.clone(),
                node: node(),
            });
        }
        match syms.into_iter().find(|s| !bound.contains(s)) {
            Some(symbol) => Err(VerifyError::UnboundSymbol {
                symbol,
                node: node(),
                bound: bound_text.clone(),
            }),
            None => Ok(()),
        }
    };
    let symbols_of = |t: &TensorType| -> BTreeSet<String> {
        t.shape
            .dims()
            .iter()
            .flat_map(|d| d.symbols().map(String::from))
            .collect()
    };
    let check_dims = |t: &TensorType, node: &dyn Fn() -> String| -> Result<(), VerifyError> {
        match t
            .shape
            .dims()
            .iter()
            .find(|d| d.as_const().is_some_and(|c| c < 0))
        {
            Some(d) => Err(VerifyError::NegativeDim {
                node: node(),
                ty: t.clone(),
                dim: d.to_string(),
            }),
            None => Ok(()),
        }
    };
    for &i in g.inputs().iter().chain(g.weights()) {
        let ty = &g.node(i).outputs[0];
        check_dims(ty, &|| describe(i))?;
        check_symbols(symbols_of(ty), &|| describe(i))?;
    }

    for id in order {
        let node = g.node(id);
        let edges = g.operand_edges(id);
        let op = match &node.kind {
            NodeKind::Op(op) => op,
            NodeKind::Input { .. } | NodeKind::Weight { .. } => {
                if !edges.is_empty() {
                    return Err(VerifyError::OperandsOnSource { node: describe(id) });
                }
                continue;
            }
        };
        let mut operand_types = Vec::with_capacity(edges.len());
        for (k, (slot, v)) in edges.iter().enumerate() {
            let k = k as u32;
            if *slot < k {
                return Err(VerifyError::DuplicateOperand {
                    node: describe(id),
                    slot: *slot,
                });
            }
            if *slot > k {
                return Err(VerifyError::MissingOperand {
                    node: describe(id),
                    slot: k,
                });
            }
            let count = g.node(v.node).outputs.len();
            match g.value_type(*v) {
                Some(t) => operand_types.push(t.clone()),
                None => {
                    return Err(VerifyError::NoSuchOutput {
                        node: describe(id),
                        producer: describe(v.node),
                        index: v.index,
                        count,
                    })
                }
            }
        }
        let mut syms: BTreeSet<String> = op.symbols().into_iter().collect();
        for t in &node.outputs {
            check_dims(t, &|| describe(id))?;
            syms.extend(symbols_of(t));
        }
        check_symbols(syms, &|| describe(id))?;
        let inferred = op.infer(&operand_types).map_err(|message| VerifyError::Op {
            node: describe(id),
            message,
        })?;
        if inferred != node.outputs {
            return Err(VerifyError::TypeMismatch {
                node: describe(id),
                declared: list(&node.outputs),
                inferred: list(&inferred),
            });
        }
    }

    for o in g.outputs() {
        let actual = g
            .value_type(o.value)
            .ok_or_else(|| VerifyError::UndefinedOutput { name: o.name.clone() })?;
        if *actual != o.ty {
            return Err(VerifyError::OutputType {
                name: o.name.clone(),
                declared: o.ty.clone(),
                actual: actual.clone(),
            });
        }
        let syms =
            o.ty.shape
                .dims()
                .iter()
                .flat_map(|d| d.symbols().map(String::from))
                .collect();
        check_symbols(syms, &|| format!("output %{}", o.name))?;
    }
    Ok(())
}
