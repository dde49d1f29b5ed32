//! The graph walk: signature to IR inputs and weights, each node through
//! its op family's lowering, higher-order wrappers inlined, and every
//! node's IR type checked against the metadata torch recorded for it.

use std::collections::{BTreeMap, HashMap};

use optc_ir::ops::{Constant, Op};
use optc_ir::{DType, Dim, GraphBuilder, Shape, Tensor, TensorType, Value, WeightStore};

use super::archive::Archive;
use super::schema::{
    Argument, ExportedProgram, Graph, InputSpec, Node, OptionalTensorArgument, OutputSpec, SymInt,
    SymIntArgument, TensorMeta,
};
use super::sym::parse_dim;
use super::weights::Payloads;
use super::{ops, FxErrorKind, FxModel, Unmapped, UnmappedList};

/// torch's `ScalarType` codes (schema 8) as IR dtypes.
pub fn dtype_of(code: i64) -> Result<DType, String> {
    Ok(match code {
        2 => DType::I8,
        4 => DType::I32,
        5 => DType::I64,
        6 => DType::F16,
        7 => DType::F32,
        12 => DType::Bool,
        13 => DType::BF16,
        29 => DType::F8E4M3,
        1 => DType::U8,
        3 => DType::I16,
        8 => DType::F64,
        28 => DType::U16,
        9..=11 => return Err("complex tensors are not supported".into()),
        other => return Err(format!("dtype code {other} is not supported")),
    })
}

/// A Python number argument.
#[derive(Clone, Copy, Debug)]
pub enum Num {
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Num {
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
            Num::Bool(b) => b as i64 as f64,
        }
    }
}

/// The target without the `torch.ops.` prefix (`aten.linear.default`).
pub fn short_target(t: &str) -> &str {
    t.strip_prefix("torch.ops.").unwrap_or(t)
}

/// A node's name: its first output's (torch names nodes by their values).
pub fn node_name(n: &Node) -> String {
    for o in &n.outputs {
        match o {
            Argument::AsTensor(t) => return t.name.clone(),
            Argument::AsTensors(ts) if !ts.is_empty() => return ts[0].name.clone(),
            Argument::AsSymInt(SymIntArgument::AsName(s)) => return s.clone(),
            _ => {}
        }
    }
    format!("<{}>", short_target(&n.target))
}

/// The importer's state: the builder, values by torch name, and the
/// metadata of every graph seen (nested ones included).
pub struct Cx<'g> {
    pub b: GraphBuilder,
    values: HashMap<String, Value>,
    meta: HashMap<String, &'g TensorMeta>,
    syms: HashMap<String, &'g SymInt>,
}

fn missing(name: &str) -> String {
    format!("argument '{name}' is missing")
}

fn wrong(name: &str, want: &str, a: &Argument) -> String {
    format!("argument '{name}' should be {want} but is a {}", a.kind())
}

impl<'g> Cx<'g> {
    fn register(&mut self, g: &'g Graph) {
        for (k, v) in &g.tensor_values {
            self.meta.insert(k.clone(), v);
        }
        for (k, v) in &g.sym_int_values {
            self.syms.insert(k.clone(), v);
        }
    }

    /// The argument named `name`, if given.
    pub fn arg<'n>(&self, n: &'n Node, name: &str) -> Option<&'n Argument> {
        n.inputs.iter().find(|a| a.name == name).map(|a| &a.arg)
    }

    fn given<'n>(&self, n: &'n Node, name: &str) -> Option<&'n Argument> {
        self.arg(n, name).filter(|a| !matches!(a, Argument::AsNone(_)))
    }

    pub fn value(&self, name: &str) -> Result<Value, String> {
        self.values
            .get(name)
            .copied()
            .ok_or_else(|| format!("tensor {name} is used before it is defined"))
    }

    pub fn tensor(&self, n: &Node, name: &str) -> Result<Value, String> {
        match self.given(n, name) {
            Some(Argument::AsTensor(t)) => self.value(&t.name),
            Some(Argument::AsOptionalTensor(OptionalTensorArgument::AsTensor(t))) => self.value(&t.name),
            Some(a) => Err(wrong(name, "a tensor", a)),
            None => Err(missing(name)),
        }
    }

    pub fn opt_tensor(&self, n: &Node, name: &str) -> Result<Option<Value>, String> {
        match self.given(n, name) {
            None | Some(Argument::AsOptionalTensor(OptionalTensorArgument::AsNone(_))) => Ok(None),
            Some(_) => self.tensor(n, name).map(Some),
        }
    }

    pub fn tensors(&self, n: &Node, name: &str) -> Result<Vec<Value>, String> {
        match self.given(n, name) {
            Some(Argument::AsTensors(ts)) => ts.iter().map(|t| self.value(&t.name)).collect(),
            Some(a) => Err(wrong(name, "a tensor list", a)),
            None => Err(missing(name)),
        }
    }

    pub fn opt_tensors(&self, n: &Node, name: &str) -> Result<Vec<Option<Value>>, String> {
        match self.given(n, name) {
            Some(Argument::AsTensors(ts)) => ts.iter().map(|t| self.value(&t.name).map(Some)).collect(),
            Some(Argument::AsOptionalTensors(ts)) => ts
                .iter()
                .map(|t| match t {
                    OptionalTensorArgument::AsTensor(t) => self.value(&t.name).map(Some),
                    OptionalTensorArgument::AsNone(_) => Ok(None),
                })
                .collect(),
            Some(a) => Err(wrong(name, "a list of optional tensors", a)),
            None => Err(missing(name)),
        }
    }

    pub fn opt_int(&self, n: &Node, name: &str) -> Result<Option<i64>, String> {
        match self.given(n, name) {
            None => Ok(None),
            Some(Argument::AsInt(i)) => Ok(Some(*i)),
            Some(Argument::AsSymInt(s)) => {
                let d = self.sym(s)?;
                d.as_const().map(Some).ok_or_else(|| {
                    format!("argument '{name}' is the symbolic {d}; optc needs a constant here")
                })
            }
            Some(a) => Err(wrong(name, "an int", a)),
        }
    }

    pub fn int(&self, n: &Node, name: &str, default: Option<i64>) -> Result<i64, String> {
        self.opt_int(n, name)?.or(default).ok_or_else(|| missing(name))
    }

    pub fn ints(&self, n: &Node, name: &str, default: Option<&[i64]>) -> Result<Vec<i64>, String> {
        match self.given(n, name) {
            None => default.map(<[i64]>::to_vec).ok_or_else(|| missing(name)),
            Some(Argument::AsInts(v)) => Ok(v.clone()),
            Some(Argument::AsInt(i)) => Ok(vec![*i]),
            Some(Argument::AsSymInts(_)) => {
                let dims = self.dims(n, name)?;
                dims.iter()
                    .map(|d| {
                        d.as_const().ok_or_else(|| {
                            format!("argument '{name}' holds the symbolic {d}; optc needs constants")
                        })
                    })
                    .collect()
            }
            Some(a) => Err(wrong(name, "an int list", a)),
        }
    }

    pub fn opt_float(&self, n: &Node, name: &str) -> Result<Option<f64>, String> {
        match self.given(n, name) {
            None => Ok(None),
            Some(Argument::AsFloat(f)) => Ok(Some(*f)),
            Some(Argument::AsInt(i)) => Ok(Some(*i as f64)),
            Some(a) => Err(wrong(name, "a float", a)),
        }
    }

    pub fn float(&self, n: &Node, name: &str, default: Option<f64>) -> Result<f64, String> {
        self.opt_float(n, name)?.or(default).ok_or_else(|| missing(name))
    }

    pub fn bool(&self, n: &Node, name: &str, default: Option<bool>) -> Result<bool, String> {
        match self.given(n, name) {
            None => default.ok_or_else(|| missing(name)),
            Some(Argument::AsBool(b)) => Ok(*b),
            Some(a) => Err(wrong(name, "a bool", a)),
        }
    }

    pub fn string(&self, n: &Node, name: &str, default: Option<&str>) -> Result<String, String> {
        match self.given(n, name) {
            None => default.map(str::to_string).ok_or_else(|| missing(name)),
            Some(Argument::AsString(s)) => Ok(s.clone()),
            Some(a) => Err(wrong(name, "a string", a)),
        }
    }

    pub fn opt_dtype(&self, n: &Node, name: &str) -> Result<Option<DType>, String> {
        match self.given(n, name) {
            None => Ok(None),
            Some(Argument::AsScalarType(c)) => dtype_of(*c).map(Some),
            Some(a) => Err(wrong(name, "a dtype", a)),
        }
    }

    /// A Python number argument (`other` of `add.Tensor` given as 2.0).
    pub fn number(&self, n: &Node, name: &str) -> Result<Option<Num>, String> {
        Ok(match self.given(n, name) {
            Some(Argument::AsInt(i)) => Some(Num::Int(*i)),
            Some(Argument::AsFloat(f)) => Some(Num::Float(*f)),
            Some(Argument::AsBool(b)) => Some(Num::Bool(*b)),
            Some(Argument::AsSymInt(s)) => {
                let d = self.sym(s)?;
                Some(Num::Int(d.as_const().ok_or_else(|| {
                    format!("argument '{name}' is the symbolic {d}; symbolic scalars are not supported")
                })?))
            }
            _ => None,
        })
    }

    /// A SymInt argument as a dim.
    pub fn sym(&self, s: &SymIntArgument) -> Result<Dim, String> {
        match s {
            SymIntArgument::AsInt(i) => Ok(Dim::constant(*i)),
            SymIntArgument::AsName(name) => {
                let v = self
                    .syms
                    .get(name)
                    .ok_or_else(|| format!("symbolic int {name} has no recorded value"))?;
                sym_value(v).map_err(|e| format!("symbolic int {name}: {e}"))
            }
        }
    }

    pub fn dim(&self, n: &Node, name: &str, default: Option<Dim>) -> Result<Dim, String> {
        match self.given(n, name) {
            None => default.ok_or_else(|| missing(name)),
            Some(Argument::AsInt(i)) => Ok(Dim::constant(*i)),
            Some(Argument::AsSymInt(s)) => self.sym(s),
            Some(a) => Err(wrong(name, "an int", a)),
        }
    }

    /// A size list (`view`, `expand`, `full`), ints or SymInts.
    pub fn dims(&self, n: &Node, name: &str) -> Result<Vec<Dim>, String> {
        match self.given(n, name) {
            Some(Argument::AsInts(v)) => Ok(v.iter().map(|&i| Dim::constant(i)).collect()),
            Some(Argument::AsSymInts(v)) => v.iter().map(|s| self.sym(s)).collect(),
            Some(Argument::AsInt(i)) => Ok(vec![Dim::constant(*i)]),
            Some(a) => Err(wrong(name, "a size list", a)),
            None => Err(missing(name)),
        }
    }

    pub fn ty(&self, v: Value) -> TensorType {
        self.b.ty(v).clone()
    }

    pub fn op(&mut self, op: Op, args: &[Value]) -> Result<Value, String> {
        self.b.op1(op, args).map_err(|e| e.message)
    }

    pub fn ops(&mut self, op: Op, args: &[Value]) -> Result<Vec<Value>, String> {
        self.b.op(op, args).map_err(|e| e.message)
    }

    /// `v` as `dtype` (no node when it already is).
    pub fn cast(&mut self, v: Value, dtype: DType) -> Result<Value, String> {
        if self.b.ty(v).dtype == dtype {
            return Ok(v);
        }
        self.b.cast(v, dtype).map_err(|e| e.message)
    }

    /// A 0-d constant.
    pub fn constant(&mut self, x: Num, dtype: DType) -> Result<Value, String> {
        let value = match x {
            Num::Float(f) if !dtype.is_float() => {
                return Err(format!("the float {f} cannot be a {dtype} constant"));
            }
            Num::Float(f) => Tensor::from_f64(dtype, &[], &[f]),
            Num::Int(i) if dtype.is_float() => Tensor::from_f64(dtype, &[], &[i as f64]),
            Num::Int(i) => Tensor::from_i64(dtype, &[], &[i]),
            Num::Bool(b) if dtype == DType::Bool => Tensor::from_bool(&[], &[b]),
            Num::Bool(b) => Tensor::from_i64(dtype, &[], &[b as i64]),
        };
        self.op(Op::Constant(Constant { value }), &[])
    }

    /// Operand `name` as `dtype`: a tensor (cast if needed) or a number (a
    /// constant); with the promoted dtype, this is torch's type promotion
    /// spelled as explicit casts.
    pub fn operand(&mut self, n: &Node, name: &str, dtype: DType) -> Result<Value, String> {
        if let Some(x) = self.number(n, name)? {
            return self.constant(x, dtype);
        }
        let v = self.tensor(n, name)?;
        self.cast(v, dtype)
    }
}

/// A recorded SymInt value as a dim.
fn sym_value(v: &SymInt) -> Result<Dim, String> {
    match v {
        SymInt::AsInt(i) => Ok(Dim::constant(*i)),
        SymInt::AsExpr(e) => parse_dim(&e.expr_str),
    }
}

/// A negative constant among the recorded sizes (a corrupt archive).
fn negative_size(m: &TensorMeta) -> Option<i64> {
    m.sizes.iter().find_map(|s| match s {
        SymInt::AsInt(i) if *i < 0 => Some(*i),
        _ => None,
    })
}

/// The IR type of recorded tensor metadata.
pub fn meta_type(m: &TensorMeta) -> Result<TensorType, String> {
    let dtype = dtype_of(m.dtype)?;
    if let Some(i) = negative_size(m) {
        return Err(format!("negative size {i} in the recorded sizes"));
    }
    let dims: Vec<Dim> = m.sizes.iter().map(sym_value).collect::<Result<_, _>>()?;
    Ok(TensorType::new(dtype, Shape(dims)))
}

/// The tensor names a node defines, in order.
pub fn output_slots(n: &Node) -> Vec<String> {
    let mut out = Vec::new();
    for o in &n.outputs {
        match o {
            Argument::AsTensor(t) => out.push(t.name.clone()),
            Argument::AsTensors(ts) => out.extend(ts.iter().map(|t| t.name.clone())),
            Argument::AsOptionalTensors(ts) => {
                for t in ts {
                    if let OptionalTensorArgument::AsTensor(t) = t {
                        out.push(t.name.clone());
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The last module on a node's `nn_module_stack` (`model.layers.0.mlp`).
fn module_path(n: &Node) -> Option<&str> {
    let stack = n.metadata.get("nn_module_stack")?;
    let last = stack.rsplit(';').next()?;
    let path = last.split(',').nth(1)?;
    (!path.is_empty()).then_some(path)
}

/// Higher-order ops whose body is inlined: wrappers that change autograd
/// or autocast state only, which inference without autocast ignores.
const INLINED: [&str; 2] = [
    "higher_order.wrap_with_set_grad_enabled",
    "higher_order.wrap_with_autocast",
];

/// Every target of `g` (and nested graphs) with no lowering.
fn unmapped(g: &Graph, acc: &mut BTreeMap<String, Unmapped>) {
    for n in &g.nodes {
        let t = short_target(&n.target);
        if !INLINED.contains(&t) && ops::lookup(t).is_none() {
            acc.entry(t.to_string())
                .and_modify(|u| u.count += 1)
                .or_insert_with(|| Unmapped {
                    target: t.to_string(),
                    count: 1,
                    first_node: node_name(n),
                });
        }
        for a in &n.inputs {
            if let Argument::AsGraph(sub) = &a.arg {
                unmapped(&sub.graph, acc);
            }
        }
    }
}

impl<'g> Cx<'g> {
    fn bind(&mut self, n: &Node, values: Vec<Value>) -> Result<(), String> {
        let slots = output_slots(n);
        if slots.len() != values.len() {
            return Err(format!(
                "optc produced {} outputs but torch recorded {}",
                values.len(),
                slots.len()
            ));
        }
        for (name, v) in slots.into_iter().zip(values) {
            if let Some(m) = self.meta.get(&name) {
                check_type(&name, m, self.b.ty(v))?;
            }
            self.values.insert(name, v);
        }
        Ok(())
    }

    fn lower_graph(&mut self, g: &'g Graph) -> Result<(), FxErrorKind> {
        self.register(g);
        for n in &g.nodes {
            let target = short_target(&n.target);
            let name = node_name(n);
            let loc = match module_path(n) {
                Some(p) => format!("{p}:{name}"),
                None => name.clone(),
            };
            self.b.set_loc(Some(loc));
            let node_err = |message: String| FxErrorKind::Node {
                node: name.clone(),
                target: target.to_string(),
                message,
            };
            if INLINED.contains(&target) {
                self.inline(n, target).map_err(node_err)?;
                continue;
            }
            let f = ops::lookup(target).ok_or_else(|| node_err("no lowering".into()))?;
            let values = f(self, n).map_err(node_err)?;
            self.bind(n, values).map_err(node_err)?;
        }
        self.b.set_loc(None);
        Ok(())
    }

    /// Inlines a wrapper's body: `hop(flags..., graph, *operands)`.
    fn inline(&mut self, n: &'g Node, target: &str) -> Result<(), String> {
        let gi = n
            .inputs
            .iter()
            .position(|a| matches!(a.arg, Argument::AsGraph(_)))
            .ok_or("no subgraph argument")?;
        let Argument::AsGraph(sub) = &n.inputs[gi].arg else {
            unreachable!("position found a graph")
        };
        if target.ends_with("wrap_with_autocast") {
            // (device_type, dtype, enabled, cache_enabled, graph, ...)
            if let Some(Argument::AsBool(true)) = n.inputs.get(2).map(|a| &a.arg) {
                return Err("autocast regions are not supported (export without torch.autocast)".into());
            }
        }
        let operands = &n.inputs[gi + 1..];
        if operands.len() != sub.graph.inputs.len() {
            return Err(format!(
                "{} operands for a body with {} inputs",
                operands.len(),
                sub.graph.inputs.len()
            ));
        }
        for (o, i) in operands.iter().zip(&sub.graph.inputs) {
            match (&o.arg, i) {
                (Argument::AsTensor(outer), Argument::AsTensor(inner)) => {
                    let v = self.value(&outer.name)?;
                    self.values.insert(inner.name.clone(), v);
                }
                (a, _) => return Err(format!("body operand of kind {} is not supported", a.kind())),
            }
        }
        self.lower_graph(&sub.graph)
            .map_err(|e| format!("in body {}: {e}", sub.name))?;
        let mut outs = Vec::new();
        for o in &sub.graph.outputs {
            match o {
                Argument::AsTensor(t) => outs.push(self.value(&t.name)?),
                a => return Err(format!("body output of kind {} is not supported", a.kind())),
            }
        }
        self.bind(n, outs)
    }
}

fn check_type(name: &str, m: &TensorMeta, got: &TensorType) -> Result<(), String> {
    let want_dtype = dtype_of(m.dtype)?;
    if want_dtype != got.dtype {
        return Err(format!(
            "{name}: optc computes {got} but torch recorded dtype {want_dtype}"
        ));
    }
    if let Some(i) = negative_size(m) {
        return Err(format!("{name}: torch recorded a negative size {i}"));
    }
    // Sizes optc cannot express (Min, FloorDiv) are not compared.
    if let Ok(want) = meta_type(m) {
        if want.shape != got.shape {
            return Err(format!("{name}: optc computes {got} but torch recorded {want}"));
        }
    }
    Ok(())
}

pub fn import(ar: &Archive, model: &str, p: &ExportedProgram) -> Result<FxModel, FxErrorKind> {
    let g = &p.graph_module.graph;
    let mut missing_ops = BTreeMap::new();
    unmapped(g, &mut missing_ops);
    if !missing_ops.is_empty() {
        return Err(FxErrorKind::Unmapped {
            list: UnmappedList(missing_ops.into_values().collect()),
        });
    }
    let payloads = Payloads::new(ar, model).map_err(FxErrorKind::Archive)?;
    let mut cx = Cx {
        b: GraphBuilder::new(ar.root.clone()),
        values: HashMap::new(),
        meta: HashMap::new(),
        syms: HashMap::new(),
    };
    cx.register(g);
    let sig = &p.graph_module.signature;
    if sig.input_specs.len() != g.inputs.len() {
        return Err(FxErrorKind::Signature(format!(
            "{} input specs for {} graph inputs",
            sig.input_specs.len(),
            g.inputs.len()
        )));
    }
    let mut weights = WeightStore::new();
    for spec in &sig.input_specs {
        let (arg, fqn) = match spec {
            InputSpec::UserInput { arg } => {
                let Argument::AsTensor(t) = arg else {
                    return Err(FxErrorKind::Signature(format!(
                        "user input of kind {} (only tensor inputs are supported)",
                        arg.kind()
                    )));
                };
                let m = cx
                    .meta
                    .get(&t.name)
                    .ok_or_else(|| FxErrorKind::Signature(format!("no metadata for input {}", t.name)))?;
                let ty =
                    meta_type(m).map_err(|e| FxErrorKind::Signature(format!("input {}: {e}", t.name)))?;
                let v = cx.b.input(t.name.clone(), ty);
                cx.values.insert(t.name.clone(), v);
                continue;
            }
            InputSpec::Parameter { arg, parameter_name } => (arg, parameter_name),
            InputSpec::Buffer { arg, buffer_name } => (arg, buffer_name),
            InputSpec::TensorConstant {
                arg,
                tensor_constant_name,
            } => (arg, tensor_constant_name),
            InputSpec::CustomObj(_) | InputSpec::Token(_) | InputSpec::ConstantInput(_) => {
                return Err(FxErrorKind::Signature(
                    "custom-object, token and constant inputs are not supported".into(),
                ));
            }
        };
        let werr = |message: String| FxErrorKind::Weight {
            name: fqn.clone(),
            message,
        };
        let t = payloads.tensor(fqn).map_err(werr)?;
        let m = cx
            .meta
            .get(&arg.name)
            .ok_or_else(|| werr("no metadata for its placeholder".into()))?;
        let ty = meta_type(m).map_err(werr)?;
        let stored = TensorType::new(
            t.dtype(),
            Shape::of(&t.shape().iter().map(|&d| d as i64).collect::<Vec<_>>()),
        );
        if stored != ty {
            return Err(werr(format!(
                "the archive stores {stored} but the graph declares {ty}"
            )));
        }
        if !weights.contains(fqn) {
            weights.insert(fqn.clone(), t).map_err(|e| werr(e.to_string()))?;
        }
        let v = cx.b.weight(fqn.clone(), fqn.clone(), ty);
        cx.values.insert(arg.name.clone(), v);
    }
    cx.lower_graph(g)?;
    let user_outputs: Vec<&Argument> = sig
        .output_specs
        .iter()
        .map(|s| match s {
            OutputSpec::UserOutput { arg } => Ok(arg),
            other => Err(FxErrorKind::Signature(format!(
                "output of kind {}: optc imports functional graphs only (no in-place buffer or input updates)",
                other.kind()
            ))),
        })
        .collect::<Result<_, _>>()?;
    let single = user_outputs.len() == 1;
    for (i, arg) in user_outputs.into_iter().enumerate() {
        let Argument::AsTensor(t) = arg else {
            return Err(FxErrorKind::Signature(format!(
                "output {i} is a {} (only tensor outputs are supported)",
                arg.kind()
            )));
        };
        let v = cx.value(&t.name).map_err(FxErrorKind::Signature)?;
        cx.b.output(
            if single {
                "output".to_string()
            } else {
                format!("output_{i}")
            },
            v,
        );
    }
    let graph = cx.b.finish().map_err(|e| FxErrorKind::Graph(e.to_string()))?;
    Ok(FxModel {
        graph,
        weights,
        ranges: p
            .range_constraints
            .iter()
            .map(|(k, r)| (k.clone(), (r.min_val, r.max_val)))
            .collect(),
        torch_version: p.torch_version.clone(),
        schema_version: (p.schema_version.major, p.schema_version.minor),
    })
}
