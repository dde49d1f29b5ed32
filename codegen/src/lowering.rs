//! What every target's lowering and run loop share: dense value numbers in
//! schedule order, node descriptions for errors, weights checked against
//! their declared types, the checks of a run's inputs, and the shapes and
//! symbol bindings a run derives from its inputs and state.

use std::collections::{BTreeMap, HashMap};

use optc_ir::ops::Op;
use optc_ir::{bind_symbols_from_shapes, Bindings, Graph, NodeId, Tensor, TensorType, Value, WeightStore};

use crate::CodegenError;

/// The graph's values numbered densely, in topological order.
pub(crate) struct Numbered {
    pub order: Vec<NodeId>,
    pub vid: HashMap<Value, usize>,
    pub types: Vec<TensorType>,
}

pub(crate) fn number_values(g: &Graph) -> Result<Numbered, CodegenError> {
    let order = g.topo_order().map_err(|n| CodegenError::Node {
        node: g.describe(n),
        message: "the graph has a cycle".into(),
    })?;
    let mut vid = HashMap::new();
    let mut types = Vec::new();
    for &id in &order {
        for (i, t) in g.node(id).outputs.iter().enumerate() {
            vid.insert(
                Value {
                    node: id,
                    index: i as u32,
                },
                types.len(),
            );
            types.push(t.clone());
        }
    }
    Ok(Numbered { order, vid, types })
}

/// `%name = op (loc)`, how errors name an op node.
pub(crate) fn describe_op(g: &Graph, names: &HashMap<Value, String>, id: NodeId, op: &Op) -> String {
    names
        .get(&Value::of(id))
        .map(|n| {
            let loc = g
                .node(id)
                .loc
                .as_ref()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            format!("{n} = {}{loc}", op.name())
        })
        .unwrap_or_else(|| g.describe(id))
}

/// The weight `key` from the store, which must hold the declared type.
pub(crate) fn weights_get(
    store: &WeightStore,
    name: &str,
    key: &str,
    ty: &TensorType,
) -> Result<Tensor, CodegenError> {
    let t = store.get(key).map_err(|e| CodegenError::Weight {
        name: name.into(),
        message: e.to_string(),
    })?;
    let want = ty
        .shape
        .as_consts()
        .map(|v| v.into_iter().map(|d| d as usize).collect::<Vec<_>>());
    if t.dtype() != ty.dtype || want.as_deref() != Some(t.shape()) {
        return Err(CodegenError::Weight {
            name: name.into(),
            message: format!("declared {ty} but the store holds {}{:?}", t.dtype(), t.shape()),
        });
    }
    Ok(t)
}

/// Every declared input is given with its dtype and rank, and nothing
/// else is; returns the given shapes by name.
pub(crate) fn input_shapes(
    declared: &[(String, usize)],
    types: &[TensorType],
    inputs: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Vec<usize>>, CodegenError> {
    let mut shapes = BTreeMap::new();
    for (name, v) in declared {
        let t = inputs.get(name).ok_or_else(|| CodegenError::Input {
            name: name.clone(),
            message: "missing".into(),
        })?;
        let ty = &types[*v];
        if t.dtype() != ty.dtype || t.rank() != ty.rank() {
            return Err(CodegenError::Input {
                name: name.clone(),
                message: format!("expected {ty}, got {}{:?}", t.dtype(), t.shape()),
            });
        }
        shapes.insert(name.clone(), t.shape().to_vec());
    }
    if let Some(extra) = inputs.keys().find(|k| !declared.iter().any(|(n, _)| n == *k)) {
        return Err(CodegenError::Input {
            name: extra.clone(),
            message: "the graph has no such input (or it is state the program owns)".into(),
        });
    }
    Ok(shapes)
}

/// The shape of state `name` as allocated: its symbolic leading dim (the
/// cache blocks) follows from `size`, measured in the units `units_of`
/// gives for a number of elements (elements on the CPU, bytes on a GPU).
pub(crate) fn state_shape(
    name: &str,
    ty: &TensorType,
    size: usize,
    units_of: impl Fn(usize) -> usize,
) -> Result<Vec<usize>, CodegenError> {
    let rest: Option<Vec<usize>> = ty.shape.dims()[1..]
        .iter()
        .map(|d| d.as_const().map(|c| c as usize))
        .collect();
    let rest = rest.ok_or_else(|| CodegenError::Input {
        name: name.into(),
        message: format!("state {ty} may only have a symbolic leading dim"),
    })?;
    let inner = units_of(rest.iter().product());
    let mut shape = vec![size.checked_div(inner).unwrap_or(0)];
    shape.extend(rest);
    Ok(shape)
}

/// The symbols the shapes bind, every value's dims under them, and a check
/// that each input has the dims its type then says.
pub(crate) fn run_dims(
    g: &Graph,
    types: &[TensorType],
    shapes: &BTreeMap<String, Vec<usize>>,
    declared: &[(String, usize)],
) -> Result<(Bindings, Vec<Vec<usize>>), CodegenError> {
    let bindings = bind_symbols_from_shapes(g, shapes).map_err(|e| CodegenError::Input {
        name: "(symbols)".into(),
        message: e.to_string(),
    })?;
    let dims: Vec<Vec<usize>> = types
        .iter()
        .map(|t| t.shape.eval(&bindings))
        .collect::<Result<_, _>>()
        .map_err(|message| CodegenError::Node {
            node: g.name.clone(),
            message,
        })?;
    for (name, v) in declared {
        let given = shapes.get(name).map_or(&[][..], Vec::as_slice);
        if given != dims[*v].as_slice() {
            return Err(CodegenError::Input {
                name: name.clone(),
                message: format!("expected {} = {:?}, got {given:?}", types[*v], dims[*v]),
            });
        }
    }
    Ok((bindings, dims))
}
