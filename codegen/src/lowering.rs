//! What every target's lowering and run loop share: dense value numbers in
//! schedule order, node descriptions for errors, weights checked against
//! their declared types, the checks of a run's inputs, and the shapes and
//! symbol bindings a run derives from its inputs and state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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

/// A run's symbol bindings and every value's dims under them.
pub(crate) struct RunDims {
    pub bindings: Bindings,
    pub dims: Vec<Vec<usize>>,
}

/// How many input-shape sets a [`DimsCache`] keeps.
const DIMS_CACHE_ENTRIES: usize = 16;

/// [`run_dims`] remembered per set of input shapes, most recent first. A
/// serving loop repeats a handful of shapes (decode batch sizes, block
/// tables padded to powers of two), and evaluating every value's symbolic
/// dims anew is most of a decode step's host work: 105 µs for the 557
/// values of the Llama-3.2-1B step graph on the 2-vCPU development VM.
#[derive(Default)]
pub(crate) struct DimsCache {
    entries: Vec<(InputShapes, Arc<RunDims>)>,
}

/// The shapes of a run's inputs and state, by name.
type InputShapes = BTreeMap<String, Vec<usize>>;

impl DimsCache {
    /// The dims for `shapes`: remembered, or from [`run_dims`] (whose
    /// errors come back every time: failures are not kept).
    pub(crate) fn get(
        &mut self,
        g: &Graph,
        types: &[TensorType],
        shapes: BTreeMap<String, Vec<usize>>,
        declared: &[(String, usize)],
    ) -> Result<Arc<RunDims>, CodegenError> {
        if let Some(i) = self.entries.iter().position(|(k, _)| *k == shapes) {
            let e = self.entries.remove(i);
            let r = e.1.clone();
            self.entries.insert(0, e);
            return Ok(r);
        }
        let (bindings, dims) = run_dims(g, types, &shapes, declared)?;
        let r = Arc::new(RunDims { bindings, dims });
        self.entries.insert(0, (shapes, r.clone()));
        self.entries.truncate(DIMS_CACHE_ENTRIES);
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> (Graph, Numbered, Vec<(String, usize)>) {
        let g = optc_ir::parse(
            "graph g(%x: f32[B, 4]) -> (%y: f32[B, 8]) {
  %0: f32[B, 8] = concat(%x, %x) {axis = 1}
  return %0
}",
        )
        .unwrap();
        let n = number_values(&g).unwrap();
        let x = g.inputs()[0];
        let declared = vec![("x".to_string(), n.vid[&Value::of(x)])];
        (g, n, declared)
    }

    fn shapes(b: usize) -> BTreeMap<String, Vec<usize>> {
        BTreeMap::from([("x".to_string(), vec![b, 4])])
    }

    /// A repeated shape set gets the remembered dims; a new one, and a bad
    /// one (an error every time, never kept), are evaluated; the oldest
    /// sets fall out past the limit.
    #[test]
    fn dims_are_remembered_per_shape_set() {
        let (g, n, declared) = graph();
        let mut c = DimsCache::default();
        let a = c.get(&g, &n.types, shapes(3), &declared).unwrap();
        assert_eq!(a.bindings["B"], 3);
        assert!(a.dims.contains(&vec![3, 8]));
        let again = c.get(&g, &n.types, shapes(3), &declared).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        let other = c.get(&g, &n.types, shapes(5), &declared).unwrap();
        assert_eq!(other.bindings["B"], 5);
        let bad = BTreeMap::from([("x".to_string(), vec![3, 5])]);
        for _ in 0..2 {
            let e = c.get(&g, &n.types, bad.clone(), &declared).err().unwrap();
            assert!(e.to_string().contains("x"), "{e}");
        }
        for b in 10..10 + DIMS_CACHE_ENTRIES {
            c.get(&g, &n.types, shapes(b), &declared).unwrap();
        }
        assert_eq!(c.entries.len(), DIMS_CACHE_ENTRIES);
        let fresh = c.get(&g, &n.types, shapes(3), &declared).unwrap();
        assert!(!Arc::ptr_eq(&a, &fresh));
        assert_eq!(fresh.dims, a.dims);
    }
}
