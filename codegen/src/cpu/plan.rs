//! Lowering: the schedule, views, the buffer plan, and the run loop.

use std::collections::{BTreeMap, HashMap};

use optc_ir::{verify, Bindings, Graph, NodeKind, Op, Tensor, TensorType, Value, WeightStore};

use super::buffers::{kind_of, Buf, Weight};
use super::exec::{self, Ctx};
use crate::CodegenError;

/// Where a value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loc {
    /// A buffer of the plan, shared over time by values whose lives do not
    /// overlap.
    Slot(usize),
    Weight(usize),
    /// State the program owns across runs (a KV cache).
    State(usize),
}

/// One op of the schedule.
pub(crate) struct Step {
    pub node: String,
    pub op: Op,
    pub args: Vec<usize>,
    pub outs: Vec<usize>,
    /// The result is a view of operand 0 (no work at run time).
    pub view: bool,
    /// The host kernel; `None` runs the op's reference semantics.
    pub kernel: Option<exec::Kernel>,
}

/// What lowering decided, for `optc compile --target cpu` and logs.
#[derive(Clone, Debug, Default)]
pub struct PlanSummary {
    /// Ops per host kernel.
    pub kernels: BTreeMap<String, usize>,
    /// Ops that run their reference semantics, by op name.
    pub reference: BTreeMap<String, usize>,
    pub views: usize,
    /// Buffers the memory plan uses for all op results.
    pub buffers: usize,
    /// Values that would need a buffer each without reuse.
    pub values: usize,
    pub weight_bytes: usize,
}

/// A graph lowered to host kernels, with its weights and state loaded.
pub struct CpuProgram {
    graph_name: String,
    pub(crate) types: Vec<TensorType>,
    pub(crate) locs: Vec<Loc>,
    pub(crate) steps: Vec<Step>,
    /// Graph inputs that are not state: (name, value).
    inputs: Vec<(String, usize)>,
    /// Outputs that are not state: (name, value).
    outputs: Vec<(String, usize)>,
    state_names: Vec<String>,
    pub(crate) weights: Vec<Weight>,
    pub(crate) slots: Vec<Buf>,
    pub(crate) state: Vec<Buf>,
    state_types: Vec<TensorType>,
    graph: Graph,
    summary: PlanSummary,
    /// Every value's dims per input-shape set seen lately.
    dims_cache: crate::lowering::DimsCache,
}

/// Whether operand `slot` of `op` is read by a kernel that takes weights in
/// their stored form (half precision, int8 blocks): `linear`'s weights and
/// `embedding`'s table.
fn reads_as_matrix(op: &Op, slot: u32) -> bool {
    matches!((op, slot), (Op::Linear(_), 1) | (Op::Embedding(_), 0))
}

/// Is `id` a `cast` to f32 of an f16/bf16 weight, read only as the weights
/// of `linear`s or the table of `embedding`s?
fn is_half_weight_cast(g: &Graph, id: optc_ir::NodeId) -> bool {
    let Some(Op::Cast(c)) = g.node(id).op() else {
        return false;
    };
    let src = g.operands(id)[0];
    let is_half_weight = matches!(g.node(src.node).kind, NodeKind::Weight { .. })
        && matches!(
            g.node(src.node).outputs[0].dtype,
            optc_ir::DType::F16 | optc_ir::DType::BF16
        );
    let users = g.users(Value::of(id));
    c.to == optc_ir::DType::F32
        && is_half_weight
        && !users.is_empty()
        && !g.outputs().iter().any(|o| o.value == Value::of(id))
        && users.iter().all(|&(u, slot)| {
            matches!(
                (g.node(u).op(), slot),
                (Some(op), slot) if reads_as_matrix(op, slot)
            )
        })
}

/// The int8 dequantisation `quantize_int8` writes, ending at `reshape` node
/// `id`: `reshape(mul(cast(@q: i8), @scales))` read only as `linear`
/// weights. Returns the weight nodes `(q, scales)` and the chain's ops.
fn q8_chain(
    g: &Graph,
    id: optc_ir::NodeId,
) -> Option<(optc_ir::NodeId, optc_ir::NodeId, [optc_ir::NodeId; 3])> {
    let only_user = |v: Value, user: optc_ir::NodeId| {
        g.users(v).iter().all(|&(u, _)| u == user) && !g.outputs().iter().any(|o| o.value == v)
    };
    let Some(Op::Reshape(_)) = g.node(id).op() else {
        return None;
    };
    let users = g.users(Value::of(id));
    if users.is_empty()
        || !users
            .iter()
            .all(|&(u, slot)| slot == 1 && matches!(g.node(u).op(), Some(Op::Linear(_))))
    {
        return None;
    }
    let mul = g.operands(id)[0];
    if g.node(mul.node).op() != Some(&Op::Binary(optc_ir::ops::BinaryKind::Mul)) || !only_user(mul, id) {
        return None;
    }
    let [cast, scales] = <[Value; 2]>::try_from(g.operands(mul.node)).ok()?;
    let Some(Op::Cast(c)) = g.node(cast.node).op() else {
        return None;
    };
    let q = g.operands(cast.node)[0];
    let weight = |v: Value, dtype: optc_ir::DType| {
        matches!(g.node(v.node).kind, NodeKind::Weight { .. })
            && g.node(v.node).outputs[0].dtype == dtype
            && g.node(v.node).outputs[0].rank() == 3
    };
    let ok = c.to == optc_ir::DType::F32
        && only_user(cast, mul.node)
        && weight(q, optc_ir::DType::I8)
        && weight(scales, optc_ir::DType::F32)
        && only_user(q, cast.node)
        && only_user(scales, mul.node);
    ok.then_some((q.node, scales.node, [cast.node, mul.node, id]))
}

/// Ops whose results are views of their first operand.
fn is_view(op: &Op) -> bool {
    matches!(op, Op::Reshape(_) | Op::Unsqueeze(_) | Op::Squeeze(_))
}

impl CpuProgram {
    /// Lowers `g`, loading its weights from `store`. State buffers are
    /// allocated on [`CpuProgram::init_state`].
    pub fn new(g: &Graph, store: &WeightStore) -> Result<CpuProgram, CodegenError> {
        verify(g)?;
        let names = g.value_names();
        let crate::lowering::Numbered { order, vid, types } = crate::lowering::number_values(g)?;
        let out_names: HashMap<&str, &TensorType> =
            g.outputs().iter().map(|o| (o.name.as_str(), &o.ty)).collect();
        let mut locs: Vec<Option<Loc>> = vec![None; types.len()];
        let mut inputs = Vec::new();
        let mut state_names = Vec::new();
        let mut state_types = Vec::new();
        let mut weights = Vec::new();
        // `cast(w)` of a half-precision weight that only linears and
        // embeddings read is a view: those kernels read half weights.
        let weight_views: std::collections::HashSet<optc_ir::NodeId> = order
            .iter()
            .copied()
            .filter(|&id| is_half_weight_cast(g, id))
            .collect();
        // int8 weights behind their dequantisation chain: the chain is a
        // view of one packed weight.
        let mut q8_ops: std::collections::HashSet<optc_ir::NodeId> = std::collections::HashSet::new();
        let mut q8_pair: HashMap<optc_ir::NodeId, (optc_ir::NodeId, optc_ir::NodeId)> = HashMap::new();
        for &id in &order {
            if let Some((q, sc, ops)) = q8_chain(g, id) {
                q8_ops.extend(ops);
                q8_pair.insert(q, (q, sc));
                q8_pair.insert(sc, (q, sc));
            }
        }
        let mut q8_loaded: HashMap<optc_ir::NodeId, usize> = HashMap::new();
        // Which weights some op reads as a plain buffer (not as a matrix or table).
        let mut need_buf: HashMap<usize, bool> = HashMap::new();
        for &id in &order {
            if weight_views.contains(&id) || q8_ops.contains(&id) {
                continue;
            }
            if let NodeKind::Op(op) = &g.node(id).kind {
                for (slot, v) in g.operands(id).iter().enumerate() {
                    let direct = reads_as_matrix(op, slot as u32);
                    let e = need_buf.entry(vid[v]).or_insert(false);
                    *e |= !direct;
                }
            }
        }
        for o in g.outputs() {
            need_buf.insert(vid[&o.value], true);
        }
        let mut next_slot = 0usize;
        let mut steps = Vec::new();
        let mut summary = PlanSummary::default();
        for &id in &order {
            let node = g.node(id);
            let v0 = vid[&Value::of(id)];
            match &node.kind {
                NodeKind::Input { name } => {
                    if out_names.get(name.as_str()) == Some(&&node.outputs[0]) {
                        locs[v0] = Some(Loc::State(state_names.len()));
                        state_names.push(name.clone());
                        state_types.push(node.outputs[0].clone());
                    } else {
                        locs[v0] = Some(Loc::Slot(next_slot));
                        next_slot += 1;
                        inputs.push((name.clone(), v0));
                    }
                }
                NodeKind::Weight { name, .. } if q8_pair.contains_key(&id) => {
                    let (q, sc) = q8_pair[&id];
                    let idx = match q8_loaded.get(&q) {
                        Some(&i) => i,
                        None => {
                            let load = |n: optc_ir::NodeId| match &g.node(n).kind {
                                NodeKind::Weight { name, key } => {
                                    crate::lowering::weights_get(store, name, key, &g.node(n).outputs[0])
                                }
                                _ => unreachable!("q8_chain checks for weights"),
                            };
                            let w = Weight::q8(&load(q)?, &load(sc)?).map_err(|message| {
                                CodegenError::Weight {
                                    name: name.clone(),
                                    message,
                                }
                            })?;
                            summary.weight_bytes += w.bytes();
                            weights.push(w);
                            q8_loaded.insert(q, weights.len() - 1);
                            weights.len() - 1
                        }
                    };
                    locs[v0] = Some(Loc::Weight(idx));
                }
                NodeKind::Weight { name, key } => {
                    let t = crate::lowering::weights_get(store, name, key, &node.outputs[0])?;
                    let w = Weight::new(&t, need_buf.get(&v0).copied().unwrap_or(false));
                    summary.weight_bytes += w.bytes();
                    locs[v0] = Some(Loc::Weight(weights.len()));
                    weights.push(w);
                }
                NodeKind::Op(op) => {
                    let args: Vec<usize> = g.operands(id).iter().map(|v| vid[v]).collect();
                    let outs: Vec<usize> = (0..node.outputs.len())
                        .map(|i| {
                            vid[&Value {
                                node: id,
                                index: i as u32,
                            }]
                        })
                        .collect();
                    let describe = crate::lowering::describe_op(g, &names, id, op);
                    let mut view = is_view(op) || weight_views.contains(&id) || q8_ops.contains(&id);
                    if let Op::PagedAttention(_) = op {
                        // The caches are updated in place: outputs 1 and 2 are the state inputs 3 and 4.
                        for (o, a) in [(1, 3), (2, 4)] {
                            match locs[args[a]] {
                                Some(Loc::State(s)) => locs[outs[o]] = Some(Loc::State(s)),
                                _ => {
                                    return Err(CodegenError::Node {
                                        node: describe,
                                        message:
                                            "the KV caches must be graph inputs that are also outputs (state)"
                                                .into(),
                                    })
                                }
                            }
                        }
                        view = false;
                    }
                    let arg_types: Vec<&TensorType> = args.iter().map(|&a| &types[a]).collect();
                    let kernel = if view {
                        None
                    } else {
                        exec::kernel_for(op, &arg_types)
                    };
                    if view {
                        locs[outs[0]] = locs[args[0]];
                        summary.views += 1;
                    } else {
                        match exec::kernel_name(op, &arg_types) {
                            Some(k) => *summary.kernels.entry(k.to_string()).or_insert(0) += 1,
                            None => *summary.reference.entry(op.name().to_string()).or_insert(0) += 1,
                        }
                    }
                    steps.push(Step {
                        node: describe,
                        op: op.clone(),
                        args,
                        outs,
                        view,
                        kernel,
                    });
                }
            }
        }
        // Buffer plan: a value's buffer is free after the last step reading
        // it (through any view); graph outputs are never freed.
        let root = |locs: &[Option<Loc>], v: usize| locs[v];
        let mut last_use: HashMap<usize, usize> = HashMap::new(); // temp slot id (value) -> step
        let mut owner: Vec<Option<usize>> = vec![None; types.len()]; // value -> value owning the buffer
        for s in &steps {
            for (i, &o) in s.outs.iter().enumerate() {
                owner[o] = if s.view && i == 0 {
                    owner[s.args[0]].or(Some(s.args[0]))
                } else {
                    Some(o)
                };
            }
        }
        for (v, o) in owner.iter_mut().enumerate() {
            o.get_or_insert(v);
        }
        for (si, s) in steps.iter().enumerate() {
            for &a in &s.args {
                let o = owner[a].unwrap_or(a);
                last_use.insert(o, si);
            }
        }
        for o in g.outputs() {
            let v = vid[&o.value];
            last_use.insert(owner[v].unwrap_or(v), usize::MAX);
        }
        let mut free: Vec<usize> = Vec::new();
        let mut planned = 0;
        for (si, s) in steps.iter().enumerate() {
            for (i, &o) in s.outs.iter().enumerate() {
                if locs[o].is_some() || (s.view && i == 0) {
                    continue;
                }
                planned += 1;
                let slot = free.pop().unwrap_or_else(|| {
                    next_slot += 1;
                    next_slot - 1
                });
                locs[o] = Some(Loc::Slot(slot));
            }
            if s.view {
                locs[s.outs[0]] = root(&locs, s.args[0]);
            }
            let mut dying: Vec<usize> = s
                .args
                .iter()
                .map(|&a| owner[a].unwrap_or(a))
                .filter(|o| last_use.get(o) == Some(&si))
                .collect();
            // Results nobody reads die at once.
            dying.extend(
                s.outs
                    .iter()
                    .copied()
                    .filter(|o| owner[*o] == Some(*o) && !last_use.contains_key(o)),
            );
            dying.sort_unstable();
            dying.dedup();
            for o in dying {
                if let Some(Loc::Slot(sl)) = locs[o] {
                    if !inputs.iter().any(|&(_, v)| v == o) {
                        free.push(sl);
                    }
                }
            }
        }
        summary.buffers = next_slot - inputs.len();
        summary.values = planned;
        let locs: Vec<Loc> = locs
            .into_iter()
            .enumerate()
            .map(|(v, l)| l.ok_or_else(|| format!("value {v} has no location")))
            .collect::<Result<_, _>>()
            .map_err(|message| CodegenError::Node {
                node: g.name.clone(),
                message,
            })?;
        let outputs = g
            .outputs()
            .iter()
            .filter(|o| !state_names.contains(&o.name))
            .map(|o| (o.name.clone(), vid[&o.value]))
            .collect();
        Ok(CpuProgram {
            graph_name: g.name.clone(),
            types,
            locs,
            steps,
            inputs,
            outputs,
            state: vec![Buf::default(); state_names.len()],
            state_names,
            weights,
            slots: vec![Buf::default(); next_slot],
            state_types,
            graph: g.clone(),
            summary,
            dims_cache: Default::default(),
        })
    }

    pub fn summary(&self) -> &PlanSummary {
        &self.summary
    }

    /// Names of the state inputs (KV caches), in declaration order.
    pub fn state_names(&self) -> &[String] {
        &self.state_names
    }

    /// Allocates zeroed state for the symbols in `bindings` (e.g. `NB`,
    /// the number of cache blocks); returns the bytes allocated.
    pub fn init_state(&mut self, bindings: &Bindings) -> Result<usize, CodegenError> {
        let mut bytes = 0;
        for (i, ty) in self.state_types.iter().enumerate() {
            let shape = ty.shape.eval(bindings).map_err(|message| CodegenError::Input {
                name: self.state_names[i].clone(),
                message,
            })?;
            let too_large = || CodegenError::Input {
                name: self.state_names[i].clone(),
                message: format!("a state of shape {shape:?} is too large to allocate"),
            };
            let n = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(too_large)?;
            // Zeroed, not resized: a fresh cache holds no old tokens.
            self.state[i] = Buf::try_zeroed(kind_of(ty.dtype), n).ok_or_else(too_large)?;
            bytes += self.state[i].bytes();
        }
        Ok(bytes)
    }

    /// A state buffer as a tensor (for tests and debugging).
    pub fn state_tensor(&self, name: &str, bindings: &Bindings) -> Option<Tensor> {
        let i = self.state_names.iter().position(|n| n == name)?;
        let ty = &self.state_types[i];
        let shape = ty.shape.eval(bindings).ok()?;
        Some(self.state[i].to_tensor(ty.dtype, &shape))
    }

    /// Runs the plan on the non-state inputs; returns the non-state
    /// outputs by name. State persists and is updated in place.
    pub fn run(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, CodegenError> {
        let _span = tracing::debug_span!("cpu_run", graph = %self.graph_name).entered();
        let mut shapes = crate::lowering::input_shapes(&self.inputs, &self.types, inputs)?;
        for (i, name) in self.state_names.iter().enumerate() {
            let n = match &self.state[i] {
                Buf::F(v) => v.len(),
                Buf::I(v) => v.len(),
                Buf::B(v) => v.len(),
            };
            shapes.insert(
                name.clone(),
                crate::lowering::state_shape(name, &self.state_types[i], n, |e| e)?,
            );
        }
        let rd = self
            .dims_cache
            .get(&self.graph, &self.types, shapes, &self.inputs)?;
        let (bindings, dims) = (&rd.bindings, &rd.dims);
        for (name, v) in &self.inputs {
            if let Loc::Slot(s) = self.locs[*v] {
                self.slots[s] = Buf::from_tensor(&inputs[name]);
            }
        }
        let mut cx = Ctx {
            types: &self.types,
            dims,
            locs: &self.locs,
            weights: &self.weights,
            slots: &mut self.slots,
            state: &mut self.state,
            bindings,
        };
        for s in &self.steps {
            if s.view {
                continue;
            }
            exec::run_step(&mut cx, s).map_err(|message| CodegenError::Node {
                node: s.node.clone(),
                message,
            })?;
        }
        let mut out = BTreeMap::new();
        for (name, v) in &self.outputs {
            let t = cx.tensor(*v);
            out.insert(name.clone(), t);
        }
        Ok(out)
    }
}
