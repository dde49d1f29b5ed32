//! The importer: walks an ONNX graph in dependency order and builds the IR
//! graph node by node, keeping for each ONNX value what is known about it
//! at import time (a constant tensor, or a vector of symbolic dims from
//! `Shape`), so the shape arithmetic exported models do (`Shape → Gather →
//! Concat → Reshape`) folds into IR attributes.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::rc::Rc;

use optc_ir::ops::{Arange, Concat, Constant, EvalCx, Reshape};
use optc_ir::{Bindings, DType, Dim, GraphBuilder, Op, Shape, Tensor, TensorType, Value, WeightStore};

use super::proto::{
    attr_type, type_proto, AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto,
};
use super::tensor::{dtype_of, to_tensor};
use super::{ops, OnnxErrorKind};

/// The domain of the optimizer ops (Adagrad, Adam, Momentum), which the
/// importer maps alongside the default domain.
pub const TRAINING_DOMAIN: &str = "ai.onnx.preview.training";

/// Constants larger than this many elements are not folded at import time
/// (they stay ops for the passes to fold, so imports stay fast).
const FOLD_LIMIT: usize = 1 << 16;

/// What went wrong with one node. `Unsupported` is a gap in optc (op,
/// attribute, dtype); `Invalid` is a model the spec does not allow or that
/// does not type-check; `NeedsStatic` names a value that must be known at
/// import time (a shape, axes) but is a graph input.
#[derive(Debug, Clone)]
pub enum NodeError {
    Unsupported(String),
    Invalid(String),
    NeedsStatic(String),
}

impl From<String> for NodeError {
    fn from(s: String) -> NodeError {
        NodeError::Invalid(s)
    }
}

impl From<&str> for NodeError {
    fn from(s: &str) -> NodeError {
        NodeError::Invalid(s.to_string())
    }
}

/// Shorthand for an [`NodeError::Unsupported`] result.
pub fn unsupported<T>(msg: impl Into<String>) -> Result<T, NodeError> {
    Err(NodeError::Unsupported(msg.into()))
}

/// What the importer knows about a value's contents before run time.
#[derive(Clone, Debug)]
pub enum Known {
    Tensor(Rc<Tensor>),
    /// A rank-1 i64 tensor whose entries are (possibly symbolic) dims.
    Dims(Vec<Dim>),
}

/// One ONNX value during import.
#[derive(Clone, Debug)]
pub struct Val {
    /// The IR value, once something needs it at run time.
    value: Rc<RefCell<Option<Value>>>,
    pub ty: TensorType,
    pub known: Option<Known>,
    /// The weight key, for initializers (materialised as graph weights).
    weight: Option<String>,
}

impl Val {
    fn of(value: Value, ty: TensorType) -> Val {
        Val {
            value: Rc::new(RefCell::new(Some(value))),
            ty,
            known: None,
            weight: None,
        }
    }

    /// The known tensor, if any (dims vectors with only constants count).
    pub fn tensor(&self) -> Option<Rc<Tensor>> {
        match &self.known {
            Some(Known::Tensor(t)) => Some(t.clone()),
            Some(Known::Dims(d)) => {
                let v: Option<Vec<i64>> = d.iter().map(Dim::as_const).collect();
                let shape: Vec<usize> = if self.ty.rank() == 0 {
                    vec![]
                } else {
                    vec![d.len()]
                };
                v.map(|v| Rc::new(Tensor::from_i64(DType::I64, &shape, &v)))
            }
            None => None,
        }
    }

    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }

    pub fn rank(&self) -> usize {
        self.ty.rank()
    }

    pub fn dims(&self) -> &[Dim] {
        self.ty.shape.dims()
    }
}

/// A node as a handler sees it: inputs, attributes (each read one is
/// marked, so unread attributes can be reported), the opset.
pub struct NodeCx<'a> {
    pub node: &'a NodeProto,
    pub opset: i64,
    read: RefCell<BTreeSet<String>>,
}

impl<'a> NodeCx<'a> {
    fn new(node: &'a NodeProto, opset: i64) -> NodeCx<'a> {
        NodeCx {
            node,
            opset,
            read: RefCell::new(BTreeSet::new()),
        }
    }

    /// Number of inputs given, counting empty (omitted) optional ones.
    pub fn n_inputs(&self) -> usize {
        self.node.input.len()
    }

    fn attr(&self, name: &str) -> Option<&'a AttributeProto> {
        self.read.borrow_mut().insert(name.to_string());
        self.node.attribute.iter().find(|a| a.name == name)
    }

    /// Whether the attribute is present (and marks it read).
    pub fn has(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    fn typed(&self, name: &str, want: i32) -> Result<Option<&'a AttributeProto>, NodeError> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.r#type == want || a.r#type == 0 => Ok(Some(a)),
            Some(a) => Err(NodeError::Invalid(format!(
                "attribute '{name}' has type code {} but the spec wants {want}",
                a.r#type
            ))),
        }
    }

    pub fn opt_int(&self, name: &str) -> Result<Option<i64>, NodeError> {
        Ok(self.typed(name, attr_type::INT)?.map(|a| a.i))
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64, NodeError> {
        Ok(self.opt_int(name)?.unwrap_or(default))
    }

    pub fn req_int(&self, name: &str) -> Result<i64, NodeError> {
        self.opt_int(name)?
            .ok_or_else(|| NodeError::Invalid(format!("required attribute '{name}' is missing")))
    }

    pub fn opt_float(&self, name: &str) -> Result<Option<f64>, NodeError> {
        Ok(self.typed(name, attr_type::FLOAT)?.map(|a| a.f as f64))
    }

    pub fn float(&self, name: &str, default: f64) -> Result<f64, NodeError> {
        Ok(self.opt_float(name)?.unwrap_or(default))
    }

    pub fn opt_ints(&self, name: &str) -> Result<Option<Vec<i64>>, NodeError> {
        Ok(self.typed(name, attr_type::INTS)?.map(|a| a.ints.clone()))
    }

    pub fn opt_floats(&self, name: &str) -> Result<Option<Vec<f32>>, NodeError> {
        Ok(self.typed(name, attr_type::FLOATS)?.map(|a| a.floats.clone()))
    }

    pub fn opt_string(&self, name: &str) -> Result<Option<String>, NodeError> {
        Ok(self
            .typed(name, attr_type::STRING)?
            .map(|a| String::from_utf8_lossy(&a.s).into_owned()))
    }

    pub fn opt_strings(&self, name: &str) -> Result<Option<Vec<String>>, NodeError> {
        Ok(self.typed(name, attr_type::STRINGS)?.map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        }))
    }

    pub fn string(&self, name: &str, default: &str) -> Result<String, NodeError> {
        Ok(self.opt_string(name)?.unwrap_or_else(|| default.to_string()))
    }

    pub fn opt_tensor(&self, name: &str) -> Result<Option<&'a TensorProto>, NodeError> {
        Ok(self.typed(name, attr_type::TENSOR)?.and_then(|a| a.t.as_ref()))
    }

    /// Attributes present on the node that no handler read.
    fn unread(&self) -> Vec<String> {
        let read = self.read.borrow();
        self.node
            .attribute
            .iter()
            .filter(|a| !read.contains(&a.name))
            .map(|a| a.name.clone())
            .collect()
    }

    /// A short description for messages: op, name, opset.
    pub fn describe(&self) -> String {
        describe_node(self.node, self.opset)
    }
}

fn describe_node(n: &NodeProto, opset: i64) -> String {
    let name = if n.name.is_empty() {
        n.output
            .first()
            .map(|o| format!("(output '{o}')"))
            .unwrap_or_default()
    } else {
        format!("'{}'", n.name)
    };
    format!("{} node {name} (opset {opset})", n.op_type)
}

/// The import state: the builder, the weights, and every ONNX value seen.
pub struct Cx {
    pub b: GraphBuilder,
    pub weights: WeightStore,
    vals: HashMap<String, Val>,
    /// Initializers not yet made into weights: name → tensor.
    pending: HashMap<String, Rc<Tensor>>,
    next_const: usize,
    symbols: BTreeSet<String>,
}

impl Cx {
    /// The value for an ONNX name.
    fn lookup(&self, name: &str) -> Result<Val, NodeError> {
        self.vals
            .get(name)
            .cloned()
            .ok_or_else(|| NodeError::Invalid(format!("uses '{name}', which nothing defines")))
    }

    /// Input `i`, which must be given.
    pub fn input(&self, n: &NodeCx, i: usize) -> Result<Val, NodeError> {
        self.opt_input(n, i)?.ok_or_else(|| {
            NodeError::Invalid(format!("input {i} is required but {} were given", n.n_inputs()))
        })
    }

    /// Input `i`, or `None` when omitted (absent or empty name).
    pub fn opt_input(&self, n: &NodeCx, i: usize) -> Result<Option<Val>, NodeError> {
        match n.node.input.get(i) {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => self.lookup(s).map(Some),
        }
    }

    /// Every given input from `from` on (variadic ops).
    pub fn inputs_from(&self, n: &NodeCx, from: usize) -> Result<Vec<Val>, NodeError> {
        (from..n.n_inputs())
            .filter_map(|i| self.opt_input(n, i).transpose())
            .collect()
    }

    /// The IR value of `v`, making a weight or constant node the first time
    /// a known value is needed at run time.
    pub fn value(&mut self, v: &Val) -> Result<Value, NodeError> {
        if let Some(x) = *v.value.borrow() {
            return Ok(x);
        }
        let made = if let Some(key) = &v.weight {
            let t = self
                .pending
                .remove(key)
                .ok_or_else(|| NodeError::Invalid(format!("initializer '{key}' lost")))?;
            self.weights
                .insert(key.clone(), (*t).clone())
                .map_err(|e| NodeError::Invalid(e.to_string()))?;
            self.b.weight(key.clone(), key.clone(), v.ty.clone())
        } else {
            match &v.known {
                Some(Known::Dims(d)) if v.tensor().is_none() => {
                    let d = d.clone();
                    let t = self.dims_tensor(&d)?;
                    if v.ty.rank() == 0 {
                        self.b
                            .op1(Op::Reshape(Reshape { shape: vec![] }), &[t])
                            .map_err(|e| NodeError::Invalid(e.to_string()))?
                    } else {
                        t
                    }
                }
                _ => {
                    let t = v.tensor().ok_or("value has neither an IR node nor contents")?;
                    self.b
                        .op1(Op::Constant(Constant { value: (*t).clone() }), &[])
                        .map_err(|e| NodeError::Invalid(e.to_string()))?
                }
            }
        };
        *v.value.borrow_mut() = Some(made);
        Ok(made)
    }

    /// A run-time i64 tensor holding symbolic dims: each dim `d` becomes
    /// `arange(d, d+1)`, then one concat.
    fn dims_tensor(&mut self, dims: &[Dim]) -> Result<Value, NodeError> {
        let mut parts = Vec::new();
        for d in dims {
            let one = Op::Arange(Arange {
                start: d.clone(),
                end: d + &Dim::constant(1),
                step: 1,
                dtype: DType::I64,
            });
            parts.push(
                self.b
                    .op1(one, &[])
                    .map_err(|e| NodeError::Invalid(e.to_string()))?,
            );
        }
        if parts.len() == 1 {
            return Ok(parts[0]);
        }
        if parts.is_empty() {
            let t = Tensor::from_i64(DType::I64, &[0], &[]);
            return self
                .b
                .op1(Op::Constant(Constant { value: t }), &[])
                .map_err(|e| NodeError::Invalid(e.to_string()));
        }
        self.b
            .op1(Op::Concat(Concat { axis: 0 }), &parts)
            .map_err(|e| NodeError::Invalid(e.to_string()))
    }

    /// A known constant as a value (no IR node until one is needed).
    pub fn konst(&mut self, t: Tensor) -> Val {
        let ty = TensorType::new(
            t.dtype(),
            Shape::of(&t.shape().iter().map(|&d| d as i64).collect::<Vec<_>>()),
        );
        self.next_const += 1;
        Val {
            value: Rc::new(RefCell::new(None)),
            ty,
            known: Some(Known::Tensor(Rc::new(t))),
            weight: None,
        }
    }

    /// A scalar constant of a dtype.
    pub fn scalar(&mut self, x: f64, dtype: DType) -> Val {
        self.konst(Tensor::from_f64(dtype, &[], &[x]))
    }

    /// A known dims vector (from `Shape` and the arithmetic on it).
    pub fn dims_val(&mut self, dims: Vec<Dim>) -> Val {
        let ty = TensorType::new(DType::I64, Shape::of(&[dims.len() as i64]));
        Val {
            value: Rc::new(RefCell::new(None)),
            ty,
            known: Some(Known::Dims(dims)),
            weight: None,
        }
    }

    /// Applies an IR op. When every operand is known and small, the op is
    /// evaluated now and the result is a known constant.
    pub fn ops(&mut self, op: Op, args: &[Val]) -> Result<Vec<Val>, NodeError> {
        if let Some(v) = self.dims_arith(&op, args) {
            return Ok(vec![v]);
        }
        let known: Option<Vec<Rc<Tensor>>> = args.iter().map(Val::tensor).collect();
        if let Some(ts) = known {
            let small = ts.iter().all(|t| t.numel() <= FOLD_LIMIT);
            if small {
                let types: Vec<TensorType> = args.iter().map(|a| a.ty.clone()).collect();
                let out_types = op.infer(&types).map_err(NodeError::Invalid)?;
                if out_types.iter().all(|t| {
                    t.shape
                        .as_consts()
                        .and_then(|s| s.iter().try_fold(1i64, |a, &d| a.checked_mul(d)))
                        .is_some_and(|n| (0..=FOLD_LIMIT as i64).contains(&n))
                }) {
                    let refs: Vec<&Tensor> = ts.iter().map(|t| t.as_ref()).collect();
                    let bindings = Bindings::new();
                    let outs = op
                        .eval(&refs, &EvalCx { bindings: &bindings })
                        .map_err(NodeError::Invalid)?;
                    return Ok(outs.into_iter().map(|t| self.konst(t)).collect());
                }
            }
        }
        let values: Vec<Value> = args.iter().map(|a| self.value(a)).collect::<Result<_, _>>()?;
        let outs = self
            .b
            .op(op, &values)
            .map_err(|e| NodeError::Invalid(e.message))?;
        Ok(outs
            .into_iter()
            .map(|v| {
                let ty = self.b.ty(v).clone();
                Val::of(v, ty)
            })
            .collect())
    }

    /// Shape arithmetic on symbolic dims vectors (`Add`/`Sub`/`Mul` with
    /// dims or integer constants, casts between index types): the result
    /// stays a known dims vector so later reshapes and ranges stay symbolic.
    fn dims_arith(&mut self, op: &Op, args: &[Val]) -> Option<Val> {
        use optc_ir::ops::BinaryKind;
        if !args.iter().any(|a| matches!(a.known, Some(Known::Dims(_)))) {
            return None;
        }
        let as_dims = |v: &Val| -> Option<Vec<Dim>> {
            match &v.known {
                Some(Known::Dims(d)) => Some(d.clone()),
                Some(Known::Tensor(t)) if t.dtype().is_int() && t.rank() <= 1 => {
                    Some(t.to_i64_vec().into_iter().map(Dim::constant).collect())
                }
                _ => None,
            }
        };
        let out_ty = op
            .infer(&args.iter().map(|a| a.ty.clone()).collect::<Vec<_>>())
            .ok()?
            .remove(0);
        let dims = match op {
            Op::Cast(c) if matches!(c.to, DType::I64 | DType::I32) => as_dims(&args[0])?,
            Op::Binary(k @ (BinaryKind::Add | BinaryKind::Sub | BinaryKind::Mul)) => {
                let (a, b) = (as_dims(&args[0])?, as_dims(&args[1])?);
                let n = a.len().max(b.len());
                if (a.len() != n && a.len() != 1) || (b.len() != n && b.len() != 1) {
                    return None;
                }
                (0..n)
                    .map(|i| {
                        let (x, y) = (&a[i.min(a.len() - 1)], &b[i.min(b.len() - 1)]);
                        match k {
                            BinaryKind::Add => Some(x + y),
                            BinaryKind::Sub => Some(x - y),
                            _ => x.checked_mul(y),
                        }
                    })
                    .collect::<Option<Vec<Dim>>>()?
            }
            _ => return None,
        };
        if out_ty.dtype != DType::I64 {
            return None;
        }
        let mut v = self.dims_val(dims);
        v.ty = out_ty;
        Some(v)
    }

    /// Single-output [`Cx::ops`].
    pub fn op(&mut self, op: Op, args: &[Val]) -> Result<Val, NodeError> {
        Ok(self.ops(op, args)?.remove(0))
    }

    /// Input `i` as integers known at import time (shapes, axes, pads).
    pub fn static_ints(&self, n: &NodeCx, i: usize) -> Result<Option<Vec<i64>>, NodeError> {
        let Some(v) = self.opt_input(n, i)? else {
            return Ok(None);
        };
        match v.tensor() {
            Some(t) if t.dtype().is_int() => Ok(Some(t.to_i64_vec())),
            Some(t) => Err(NodeError::Invalid(format!(
                "input {i} ('{}') must hold integers, not {}",
                n.node.input[i],
                t.dtype()
            ))),
            None => Err(NodeError::NeedsStatic(n.node.input[i].clone())),
        }
    }

    /// Input `i` as dims known at import time (constants or symbols).
    pub fn static_dims(&self, n: &NodeCx, i: usize) -> Result<Option<Vec<Dim>>, NodeError> {
        let Some(v) = self.opt_input(n, i)? else {
            return Ok(None);
        };
        match &v.known {
            Some(Known::Dims(d)) => Ok(Some(d.clone())),
            _ => Ok(self
                .static_ints(n, i)?
                .map(|v| v.into_iter().map(Dim::constant).collect())),
        }
    }

    /// Input `i` as a float scalar known at import time.
    pub fn static_f64s(&self, n: &NodeCx, i: usize) -> Result<Option<Vec<f64>>, NodeError> {
        let Some(v) = self.opt_input(n, i)? else {
            return Ok(None);
        };
        v.tensor()
            .map(|t| Some(t.to_f64_vec()))
            .ok_or_else(|| NodeError::NeedsStatic(n.node.input[i].clone()))
    }

    /// Reshapes to dims (helper many handlers share).
    pub fn reshape(&mut self, x: &Val, shape: Vec<Dim>) -> Result<Val, NodeError> {
        if x.dims() == shape.as_slice() {
            return Ok(x.clone());
        }
        if let Some(Known::Dims(d)) = &x.known {
            // [n] ⇄ [] / [1]: still a dims vector.
            if shape.len() <= 1 && d.len() == 1 && shape.iter().all(|s| s.is(1)) {
                let mut v = self.dims_val(d.clone());
                v.ty = TensorType::new(DType::I64, Shape::from(shape));
                return Ok(v);
            }
        }
        self.op(Op::Reshape(Reshape { shape }), std::slice::from_ref(x))
    }

    /// Casts when the dtype differs.
    pub fn cast(&mut self, x: &Val, to: DType) -> Result<Val, NodeError> {
        if x.dtype() == to {
            return Ok(x.clone());
        }
        self.op(Op::Cast(optc_ir::ops::Cast { to }), std::slice::from_ref(x))
    }

    /// Records a symbol the graph inputs bind.
    fn symbol(&mut self, name: &str) -> Dim {
        self.symbols.insert(name.to_string());
        Dim::sym(name)
    }
}

/// ONNX symbolic dim names as IR symbols (IR identifiers are
/// `[A-Za-z_][A-Za-z0-9_.]*`; anything else is spelt out).
fn symbol_name(param: &str) -> String {
    let mut s: String = param
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        s.insert(0, 'd');
    }
    if s.parse::<DType>().is_ok() || matches!(s.as_str(), "true" | "false" | "nan" | "inf" | "loc") {
        s.insert(0, '_');
    }
    s
}

fn value_type(cx: &mut Cx, v: &ValueInfoProto, unknown_dims: &mut usize) -> Result<TensorType, String> {
    let Some(tp) = &v.r#type else {
        return Err(format!("'{}' has no type", v.name));
    };
    let Some(type_proto::Value::TensorType(t)) = &tp.value else {
        return Err(format!(
            "'{}' is a sequence, map, optional or sparse value; those are not supported (only dense tensors)",
            v.name
        ));
    };
    let dtype = dtype_of(t.elem_type).map_err(|e| format!("'{}': {e}", v.name))?;
    let Some(shape) = &t.shape else {
        return Err(format!(
            "'{}' has no shape (unknown rank is not supported)",
            v.name
        ));
    };
    let mut dims = Vec::new();
    for d in &shape.dim {
        dims.push(match &d.value {
            Some(super::proto::dimension::Value::DimValue(x)) if *x >= 0 => Dim::constant(*x),
            Some(super::proto::dimension::Value::DimValue(x)) => {
                return Err(format!("'{}' has negative dim {x}", v.name))
            }
            Some(super::proto::dimension::Value::DimParam(p)) if !p.is_empty() => cx.symbol(&symbol_name(p)),
            _ => {
                *unknown_dims += 1;
                cx.symbol(&format!("{}_{}", symbol_name(&v.name), *unknown_dims))
            }
        });
    }
    Ok(TensorType::new(dtype, Shape::from(dims)))
}

/// Orders nodes so every input is defined first; a cycle (or a use of an
/// undefined value) is reported with the nodes involved.
fn dependency_order<'a>(g: &'a GraphProto, defined: &BTreeSet<&'a str>) -> Result<Vec<usize>, OnnxErrorKind> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o, i).is_some() || defined.contains(o.as_str()) {
                return Err(OnnxErrorKind::Graph(format!("value '{o}' is defined twice")));
            }
        }
    }
    let mut indegree = vec![0usize; g.node.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); g.node.len()];
    for (i, n) in g.node.iter().enumerate() {
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            if let Some(&p) = producer.get(inp.as_str()) {
                indegree[i] += 1;
                users[p].push(i);
            } else if !defined.contains(inp.as_str()) {
                return Err(OnnxErrorKind::Graph(format!(
                    "{} uses '{inp}', which no node, graph input or initializer defines",
                    describe_node(n, 0).replace(" (opset 0)", "")
                )));
            }
        }
    }
    // Kahn's algorithm; ties keep file order.
    let mut ready: std::collections::BTreeSet<usize> =
        (0..g.node.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(g.node.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() < g.node.len() {
        let stuck: Vec<String> = (0..g.node.len())
            .filter(|&i| indegree[i] > 0)
            .take(5)
            .map(|i| describe_node(&g.node[i], 0).replace(" (opset 0)", ""))
            .collect();
        return Err(OnnxErrorKind::Graph(format!(
            "the graph has a cycle through {}",
            stuck.join(", ")
        )));
    }
    Ok(order)
}

/// Options the caller sets for one import.
#[derive(Default)]
pub struct ImportOptions {
    /// Graph inputs to fix to a value: they become constants (their shapes
    /// and contents are then known at import time).
    pub fixed_inputs: BTreeMap<String, Tensor>,
}

/// The result of [`import_graph`].
pub struct Imported {
    pub graph: optc_ir::Graph,
    pub weights: WeightStore,
}

/// Builds the IR graph of an ONNX main graph.
pub fn import_graph(
    g: &GraphProto,
    opset: i64,
    base: Option<&Path>,
    opts: &ImportOptions,
) -> Result<Imported, OnnxErrorKind> {
    let name = if g.name.is_empty() {
        "onnx".to_string()
    } else {
        g.name.clone()
    };
    let mut cx = Cx {
        b: GraphBuilder::new(name),
        weights: WeightStore::new(),
        vals: HashMap::new(),
        pending: HashMap::new(),
        next_const: 0,
        symbols: BTreeSet::new(),
    };
    let mut defined: BTreeSet<&str> = BTreeSet::new();
    for t in &g.initializer {
        if t.name.is_empty() {
            return Err(OnnxErrorKind::Graph("an initializer has no name".into()));
        }
        let tensor = to_tensor(t, base).map_err(|e| OnnxErrorKind::Tensor {
            name: t.name.clone(),
            message: e,
        })?;
        let ty = TensorType::new(
            tensor.dtype(),
            Shape::of(&tensor.shape().iter().map(|&d| d as i64).collect::<Vec<_>>()),
        );
        let tensor = Rc::new(tensor);
        let known = (tensor.numel() <= FOLD_LIMIT).then(|| Known::Tensor(tensor.clone()));
        cx.pending.insert(t.name.clone(), tensor);
        cx.vals.insert(
            t.name.clone(),
            Val {
                value: Rc::new(RefCell::new(None)),
                ty,
                known,
                weight: Some(t.name.clone()),
            },
        );
        defined.insert(&t.name);
    }
    if !g.sparse_initializer.is_empty() {
        return Err(OnnxErrorKind::Unsupported(
            "sparse initializers are not supported".into(),
        ));
    }
    let mut unknown = 0usize;
    for inp in &g.input {
        if cx.vals.contains_key(&inp.name) {
            // An input with an initializer is a default value (IR < 4 style):
            // the initializer wins, as onnxruntime does.
            continue;
        }
        if let Some(t) = opts.fixed_inputs.get(&inp.name) {
            let v = cx.konst(t.clone());
            cx.vals.insert(inp.name.clone(), v);
        } else {
            let ty = value_type(&mut cx, inp, &mut unknown).map_err(OnnxErrorKind::Type)?;
            let v = cx.b.input(inp.name.clone(), ty.clone());
            cx.vals.insert(inp.name.clone(), Val::of(v, ty));
        }
        defined.insert(&inp.name);
    }
    let order = dependency_order(g, &defined)?;
    for i in order {
        let node = &g.node[i];
        if !node.domain.is_empty() && node.domain != "ai.onnx" && node.domain != TRAINING_DOMAIN {
            return Err(OnnxErrorKind::Node {
                node: describe_node(node, opset),
                message: format!(
                    "domain '{}' is not supported (only the default ONNX domain)",
                    node.domain
                ),
                unsupported: true,
            });
        }
        let ncx = NodeCx::new(node, opset);
        let fail = |e: NodeError| match e {
            NodeError::NeedsStatic(input) => OnnxErrorKind::NeedsStatic {
                node: ncx.describe(),
                input,
            },
            NodeError::Unsupported(m) => OnnxErrorKind::Node {
                node: ncx.describe(),
                message: m,
                unsupported: true,
            },
            NodeError::Invalid(m) => OnnxErrorKind::Node {
                node: ncx.describe(),
                message: m,
                unsupported: false,
            },
        };
        cx.b.set_loc(Some(if node.name.is_empty() {
            node.op_type.clone()
        } else {
            node.name.clone()
        }));
        let outs = ops::lower(&mut cx, &ncx).map_err(fail)?;
        let unread = ncx.unread();
        if !unread.is_empty() {
            return Err(fail(NodeError::Unsupported(format!(
                "attribute '{}' is not supported",
                unread.join("', '")
            ))));
        }
        for (k, name) in node.output.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            let v = outs.get(k).cloned().ok_or_else(|| {
                fail(NodeError::Unsupported(format!(
                    "output {k} ('{name}') is not supported (optc computes {} outputs)",
                    outs.len()
                )))
            })?;
            cx.vals.insert(name.clone(), v);
        }
    }
    cx.b.set_loc(None);
    for out in &g.output {
        let v = cx
            .vals
            .get(&out.name)
            .cloned()
            .ok_or_else(|| OnnxErrorKind::Graph(format!("graph output '{}' is not defined", out.name)))?;
        if let Some(tp) = &out.r#type {
            if let Some(type_proto::Value::TensorType(t)) = &tp.value {
                if let Some(shape) = &t.shape {
                    // Declared constant extents must match what the graph computes.
                    let declared: Vec<Option<i64>> = shape
                        .dim
                        .iter()
                        .map(|d| match d.value {
                            Some(super::proto::dimension::Value::DimValue(x)) => Some(x),
                            _ => None,
                        })
                        .collect();
                    let got = v.dims();
                    let clash = declared.len() != got.len()
                        || declared
                            .iter()
                            .zip(got)
                            .any(|(d, g)| matches!((d, g.as_const()), (Some(a), Some(b)) if *a != b));
                    if clash {
                        return Err(OnnxErrorKind::Type(format!(
                            "output '{}' is declared with shape {declared:?} but computes {}",
                            out.name, v.ty
                        )));
                    }
                }
                if t.elem_type != 0 {
                    let want = dtype_of(t.elem_type)
                        .map_err(|e| OnnxErrorKind::Type(format!("output '{}': {e}", out.name)))?;
                    if want != v.dtype() {
                        return Err(OnnxErrorKind::Type(format!(
                            "output '{}' is declared {want} but computes {}",
                            out.name,
                            v.dtype()
                        )));
                    }
                }
            }
        }
        let value = cx
            .value(&v)
            .map_err(|e| OnnxErrorKind::Graph(format!("output '{}': {e:?}", out.name)))?;
        cx.b.output(out.name.clone(), value);
    }
    let graph =
        cx.b.finish()
            .map_err(|e| OnnxErrorKind::Graph(format!("the imported graph does not verify: {e}")))?;
    Ok(Imported {
        graph,
        weights: cx.weights,
    })
}
