//! The reference interpreter: runs any verified graph on concrete inputs.
//!
//! It is the oracle for every pass and backend, so it favours clarity over
//! speed: each op's `eval` computes in f64 and rounds once to its output
//! dtype, and after every node the interpreter checks that the values have
//! exactly the dtype and shape the graph declares for them.

use std::collections::{BTreeMap, HashMap};

use crate::dim::Bindings;
use crate::graph::{describe_with, Graph, NodeKind, Value};
use crate::ops::EvalCx;
use crate::tensor::Tensor;
use crate::verify::{verify, VerifyError};
use crate::weights::{WeightError, WeightStore};

/// Why a run failed; every variant names the input, weight or node.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("invalid graph: {0}")]
    Verify(#[from] VerifyError),
    #[error("missing input %{0}")]
    MissingInput(String),
    #[error("the graph has no input %{name} (inputs: {known})")]
    UnknownInput { name: String, known: String },
    #[error("input %{name}: expected {declared}, got {dtype}{shape:?}")]
    InputType {
        name: String,
        declared: String,
        dtype: crate::DType,
        shape: Vec<usize>,
    },
    #[error("symbol {symbol}: {message}")]
    Binding { symbol: String, message: String },
    #[error("weight @{name} (key \"{key}\"): {source}")]
    Weight {
        name: String,
        key: String,
        #[source]
        source: Box<WeightError>,
    },
    #[error("weight @{name} (key \"{key}\") is declared {declared} but the store holds {dtype}{shape:?}")]
    WeightType {
        name: String,
        key: String,
        declared: String,
        dtype: crate::DType,
        shape: Vec<usize>,
    },
    #[error("{node}: {message}")]
    Op { node: String, message: String },
    #[error(
        "{node}: output {index} is declared {declared} = {expected:?} but evaluates to {dtype}{actual:?}"
    )]
    Shape {
        node: String,
        index: usize,
        declared: String,
        expected: Vec<usize>,
        dtype: crate::DType,
        actual: Vec<usize>,
    },
}

/// Binds every symbol from the concrete input shapes: first the dims that
/// are a bare symbol, then dims `a*X + b` solved for `X`.
pub fn bind_symbols(g: &Graph, inputs: &BTreeMap<String, Tensor>) -> Result<Bindings, EvalError> {
    let shapes: BTreeMap<String, Vec<usize>> = inputs
        .iter()
        .map(|(k, t)| (k.clone(), t.shape().to_vec()))
        .collect();
    bind_symbols_from_shapes(g, &shapes)
}

/// [`bind_symbols`] from the concrete shapes alone (for executors that
/// keep inputs in their own buffers).
pub fn bind_symbols_from_shapes(
    g: &Graph,
    inputs: &BTreeMap<String, Vec<usize>>,
) -> Result<Bindings, EvalError> {
    let mut b = Bindings::new();
    for solve in [false, true] {
        for &i in g.inputs() {
            let name = g.node_name(i).unwrap_or_default();
            let Some(t) = inputs.get(name) else { continue };
            let ty = &g.node(i).outputs[0];
            for (d, &n) in ty.shape.dims().iter().zip(t) {
                let Some((s, a, off)) = d.as_linear() else {
                    continue;
                };
                if (a, off) != (1, 0) && !solve {
                    continue;
                }
                let n = n as i64;
                let num = n - off;
                if num % a != 0 || num / a < 0 {
                    return Err(EvalError::Binding {
                        symbol: s.into(),
                        message: format!("dim {d} of %{name} is {n}, which gives no whole value"),
                    });
                }
                let v = num / a;
                match b.get(s) {
                    Some(&old) if old != v => {
                        return Err(EvalError::Binding {
                            symbol: s.into(),
                            message: format!(
                                "is {old} from an earlier input but %{name} needs {v} (dim {d} is {n})"
                            ),
                        })
                    }
                    Some(_) => {}
                    None => {
                        b.insert(s.to_string(), v);
                    }
                }
            }
        }
    }
    Ok(b)
}

/// Runs `g` on named inputs with weights from `weights`; returns the outputs
/// in declaration order.
pub fn run(
    g: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    weights: &WeightStore,
) -> Result<Vec<Tensor>, EvalError> {
    let _span = tracing::debug_span!("interpret", graph = %g.name).entered();
    verify(g)?;
    let names = g.value_names();
    let known: Vec<&str> = g.inputs().iter().filter_map(|&i| g.node_name(i)).collect();
    if let Some(extra) = inputs.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(EvalError::UnknownInput {
            name: extra.clone(),
            known: known.join(", "),
        });
    }
    for &i in g.inputs() {
        let name = g.node_name(i).unwrap_or_default();
        let t = inputs
            .get(name)
            .ok_or_else(|| EvalError::MissingInput(name.into()))?;
        let ty = &g.node(i).outputs[0];
        if t.dtype() != ty.dtype || t.rank() != ty.rank() {
            return Err(EvalError::InputType {
                name: name.into(),
                declared: ty.to_string(),
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
            });
        }
    }
    let bindings = bind_symbols(g, inputs)?;
    for &i in g.inputs() {
        let name = g.node_name(i).unwrap_or_default();
        let t = &inputs[name];
        let ty = &g.node(i).outputs[0];
        if ty.shape.eval(&bindings).ok().as_deref() != Some(t.shape()) {
            return Err(EvalError::InputType {
                name: name.into(),
                declared: ty.to_string(),
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
            });
        }
    }
    let cx = EvalCx { bindings: &bindings };
    let order = g.topo_order().map_err(|n| VerifyError::Cycle {
        node: describe_with(g, &names, n),
    })?;

    // How many more reads each value has, so buffers are dropped early.
    let mut remaining: HashMap<Value, usize> = HashMap::new();
    for &id in &order {
        for v in g.operands(id) {
            *remaining.entry(v).or_insert(0) += 1;
        }
    }
    for o in g.outputs() {
        *remaining.entry(o.value).or_insert(0) += 1;
    }

    let mut values: HashMap<Value, Tensor> = HashMap::new();
    for id in order {
        let node = g.node(id);
        let describe = || describe_with(g, &names, id);
        let produced: Vec<Tensor> = match &node.kind {
            NodeKind::Input { name } => vec![inputs[name].clone()],
            NodeKind::Weight { name, key } => {
                let t = weights.get(key).map_err(|source| EvalError::Weight {
                    name: name.clone(),
                    key: key.clone(),
                    source: Box::new(source),
                })?;
                let ty = &node.outputs[0];
                let want = ty.shape.eval(&bindings).unwrap_or_default();
                if t.dtype() != ty.dtype || t.shape() != want.as_slice() {
                    return Err(EvalError::WeightType {
                        name: name.clone(),
                        key: key.clone(),
                        declared: ty.to_string(),
                        dtype: t.dtype(),
                        shape: t.shape().to_vec(),
                    });
                }
                vec![t]
            }
            NodeKind::Op(op) => {
                // Refuse outputs too large to allocate before computing them.
                for ty in &node.outputs {
                    let shape = ty.shape.eval(&bindings).map_err(|message| EvalError::Op {
                        node: describe(),
                        message,
                    })?;
                    crate::ops::check_size(&shape).map_err(|message| EvalError::Op {
                        node: describe(),
                        message,
                    })?;
                }
                let operands = g.operands(id);
                let args: Vec<&Tensor> = operands.iter().map(|v| &values[v]).collect();
                tracing::trace!(node = %describe(), "eval");
                let out = op.eval(&args, &cx).map_err(|message| EvalError::Op {
                    node: describe(),
                    message,
                })?;
                for v in operands {
                    let r = remaining.get_mut(&v).expect("counted above");
                    *r -= 1;
                    if *r == 0 {
                        values.remove(&v);
                    }
                }
                out
            }
        };
        if produced.len() != node.outputs.len() {
            return Err(EvalError::Op {
                node: describe(),
                message: format!(
                    "produced {} values for {} declared outputs",
                    produced.len(),
                    node.outputs.len()
                ),
            });
        }
        for (index, (t, ty)) in produced.into_iter().zip(&node.outputs).enumerate() {
            let expected = ty.shape.eval(&bindings).map_err(|message| EvalError::Op {
                node: describe(),
                message,
            })?;
            if t.dtype() != ty.dtype || t.shape() != expected.as_slice() {
                return Err(EvalError::Shape {
                    node: describe(),
                    index,
                    declared: ty.to_string(),
                    expected,
                    dtype: t.dtype(),
                    actual: t.shape().to_vec(),
                });
            }
            let v = Value {
                node: id,
                index: index as u32,
            };
            if remaining.get(&v).copied().unwrap_or(0) > 0 {
                values.insert(v, t);
            }
        }
    }
    Ok(g.outputs().iter().map(|o| values[&o.value].clone()).collect())
}
