//! `insert_kv_cache`: turns a model graph over `ids[B, S]` into the step
//! graph a serving engine runs: one flat batch of `T` tokens from any number
//! of sequences (prefill chunks and decode tokens together), metadata that
//! says where each token sits, and a paged K/V cache per attention layer.
//!
//! The graph is re-expressed with `B = 1` and `S = T` (every token is one
//! row of the flattened batch), and then:
//! - `ids` becomes `ids[T]`;
//! - every `arange(0, S)` (the position ids of rotary and learned position
//!   embeddings) becomes the `positions[T]` input;
//! - every `scaled_dot_product_attention` that is causal, or whose mask is the
//!   sliding-window form `triu(full(-inf), 1) + tril(full(-inf), -w)`,
//!   becomes `paged_attention` over the layer's `k_cache.L`/`v_cache.L`
//!   (`[NB, block_size, Hkv, D]`), with transposes to and from its
//!   `[T, heads, D]` layout; any other mask is an error naming the node;
//! - the LM head reads only the rows `logits_indices[N]` names (a gather
//!   before the last `linear`), so `logits` is `[N, vocab]`;
//! - the updated caches are extra outputs (`k_cache.L`, `v_cache.L`), which
//!   executors alias to the cache inputs.
//!
//! Option: `block_size` (tokens per cache block, default 16).

use std::collections::BTreeMap;

use optc_ir::ops::{
    Arange, Cast, IndexSelect, Op, PagedAttention, Reshape, ScaledDotProductAttention, Transpose, Unsqueeze,
};
use optc_ir::{DType, Dim, Graph, NodeId, NodeKind, Shape, Tensor, TensorType, Value};

use crate::rebuild::Rebuild;
use crate::{Pass, PassContext, PassError, PassReport};

/// Inserts the paged KV cache (see the module docs).
pub struct InsertKvCache;

/// Names of the metadata inputs, in the order the step graph declares them.
pub const METADATA: [&str; 6] = [
    "positions",
    "seq_starts",
    "context_lens",
    "block_tables",
    "slot_mapping",
    "logits_indices",
];

const NAME: &str = "insert_kv_cache";

fn fail(message: String) -> PassError {
    PassError::Failed {
        pass: NAME.into(),
        message,
    }
}

/// The window of a sliding-window mask `triu(m, 1) + tril(m, -w)` with `m`
/// a `full(-inf)` (either order of the add), or `None`.
fn sliding_window(g: &Graph, mask: Value) -> Option<i64> {
    let mut v = mask;
    // Look through broadcasting unsqueezes.
    while let Some(Op::Unsqueeze(_)) = g.node(v.node).op() {
        v = g.operands(v.node)[0];
    }
    let Some(Op::Binary(optc_ir::ops::BinaryKind::Add)) = g.node(v.node).op() else {
        return None;
    };
    let parts = g.operands(v.node);
    let tri = |x: Value| match g.node(x.node).op() {
        Some(Op::Triangular(t)) => {
            let src = g.operands(x.node)[0];
            match g.node(src.node).op() {
                Some(Op::Full(f)) if matches!(f.value, optc_ir::ops::Scalar::Float(x) if x == f64::NEG_INFINITY) => {
                    Some((t.upper, t.k))
                }
                _ => None,
            }
        }
        _ => None,
    };
    match (tri(parts[0])?, tri(parts[1])?) {
        ((true, 1), (false, k)) | ((false, k), (true, 1)) if k < 0 => Some(-k),
        _ => None,
    }
}

/// The window of a decoder's attention node `id` (`None`: plainly causal),
/// or why a cache cannot be put under it: it is not causal, or its mask is
/// not a sliding window (both `insert_kv_cache` and `insert_past_kv`
/// extend only these two over cached tokens).
pub(crate) fn decoder_window(g: &Graph, id: NodeId, causal: bool) -> Result<Option<i64>, String> {
    match (g.operands(id).get(3), causal) {
        (None, true) => Ok(None),
        (Some(&mask), false) => sliding_window(g, mask).map(Some).ok_or_else(|| {
            "its mask is neither causal nor a sliding window, so it cannot be extended over a cache".into()
        }),
        (Some(_), true) => Err("causal attention with a mask as well cannot be extended over a cache".into()),
        (None, false) => Err("attention is not causal; a decoder's KV cache needs causal attention".into()),
    }
}

/// The LM head: the `linear` that makes output 0, through casts.
fn lm_head(g: &Graph) -> Option<NodeId> {
    let mut v = g.outputs().first()?.value;
    loop {
        match g.node(v.node).op()? {
            Op::Cast(_) => v = g.operands(v.node)[0],
            Op::Linear(_) | Op::MatMul(_) => return Some(v.node),
            _ => return None,
        }
    }
}

impl Rebuild {
    /// `[1, H, T, D]` (attention layout) to `[T, H, D]`.
    fn token_major(&mut self, x: Value, loc: &Option<String>, what: &str) -> Result<Value, PassError> {
        let t = self.ty(x);
        if t.rank() != 4 || !t.shape.dims()[0].is(1) {
            return Err(fail(format!(
                "{what}: attention operand {t} is not [batch, heads, seq, head_dim] with batch 1"
            )));
        }
        let d = t.shape.dims();
        let tr = self.op1(
            Op::Transpose(Transpose {
                perm: vec![0, 2, 1, 3],
            }),
            &[x],
            loc,
            what,
        )?;
        let shape = vec![d[2].clone(), d[1].clone(), d[3].clone()];
        self.op1(Op::Reshape(Reshape { shape }), &[tr], loc, what)
    }
}

impl Pass for InsertKvCache {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "make the step graph: a flat batch of tokens with metadata, paged_attention over per-layer K/V caches, logits only for wanted rows"
    }

    fn keeps_signature(&self) -> bool {
        false
    }

    fn check_inputs(
        &self,
        before: &Graph,
        inputs: &BTreeMap<String, Tensor>,
        after: &Graph,
    ) -> Option<Result<BTreeMap<String, Tensor>, String>> {
        Some(step_inputs_for_batch(before, inputs, after))
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let block_size = cx.int_option(NAME, "block_size", 16)?;
        if !(1..=4096).contains(&block_size) {
            return Err(PassError::Option {
                pass: NAME.into(),
                message: format!("block_size must be in 1..=4096, got {block_size}"),
            });
        }
        let (ids_node, b, s) = token_input(g).map_err(fail)?;
        // Every token becomes a row of one flat batch: the batch dim is 1.
        let mut subst = BTreeMap::from([(s.clone(), Dim::sym("T"))]);
        match (b.as_sym(), b.as_const()) {
            (Some(sym), _) => {
                subst.insert(sym.to_string(), Dim::constant(1));
            }
            (None, Some(1)) => {}
            _ => {
                return Err(fail(format!(
                    "the token ids have a fixed batch of {b}; the step graph needs a batch of 1 or a symbolic one"
                )))
            }
        }
        let head = lm_head(g).ok_or_else(|| {
            fail("output 0 is not made by a linear (the LM head), so logits cannot be gathered".into())
        })?;
        let mut r = Rebuild::new(g, NAME, "after setting batch to 1 and sequence to T", subst);
        let i64t = |dims: Vec<Dim>| TensorType::new(DType::I64, Shape(dims));
        let (t, q, m, n) = (Dim::sym("T"), Dim::sym("Q"), Dim::sym("M"), Dim::sym("N"));
        let ids_dtype = g.node(ids_node).outputs[0].dtype;
        let ids = r
            .new
            .add_input("ids", TensorType::new(ids_dtype, Shape(vec![t.clone()])));
        let meta: Vec<Value> = [
            vec![t.clone()],
            vec![&q + &Dim::constant(1)],
            vec![q.clone()],
            vec![q.clone(), m.clone()],
            vec![t.clone()],
            vec![n.clone()],
        ]
        .into_iter()
        .zip(METADATA)
        .map(|(dims, name)| r.new.add_input(name, i64t(dims)))
        .collect();
        let [positions, seq_starts, context_lens, block_tables, slot_mapping, logits_indices] =
            meta.try_into().expect("six metadata inputs");
        r.copy_weights(g);
        let order = g
            .topo_order()
            .map_err(|n| fail(format!("the graph has a cycle at {}", g.describe(n))))?;
        let mut caches: Vec<(Value, Value)> = Vec::new();
        let mut windows = 0;
        for id in order {
            let node = g.node(id);
            let loc = node.loc.clone();
            let what = g.describe(id);
            let op = match &node.kind {
                NodeKind::Input { .. } => {
                    let u = r.op1(Op::Unsqueeze(Unsqueeze { axes: vec![0] }), &[ids], &None, "ids")?;
                    r.map.insert(Value::of(id), u);
                    continue;
                }
                NodeKind::Weight { .. } => continue,
                NodeKind::Op(op) => op.substitute_dims(&r.subst),
            };
            let args: Vec<Value> = g.operands(id).iter().map(|v| r.map[v]).collect();
            match &op {
                Op::Arange(Arange {
                    start,
                    end,
                    step: 1,
                    dtype,
                }) if start.is(0) && *end == t => {
                    let p = if *dtype == DType::I64 {
                        positions
                    } else {
                        r.op1(Op::Cast(Cast { to: *dtype }), &[positions], &loc, &what)?
                    };
                    r.map.insert(Value::of(id), p);
                }
                Op::Attention(ScaledDotProductAttention { causal, scale }) => {
                    let window = decoder_window(g, id, *causal).map_err(|m| fail(format!("{what}: {m}")))?;
                    windows += usize::from(window.is_some());
                    let layer = caches.len();
                    let [qt, kt, vt] = [args[0], args[1], args[2]].map(|a| r.token_major(a, &loc, &what));
                    let (qt, kt, vt) = (qt?, kt?, vt?);
                    let (kty, vty) = (r.ty(kt), r.ty(vt));
                    let cache_ty = |x: &TensorType| {
                        let d = x.shape.dims();
                        TensorType::new(
                            x.dtype,
                            Shape(vec![
                                Dim::sym("NB"),
                                Dim::constant(block_size),
                                d[1].clone(),
                                d[2].clone(),
                            ]),
                        )
                    };
                    let kc = r.new.add_input(format!("k_cache.{layer}"), cache_ty(&kty));
                    let vc = r.new.add_input(format!("v_cache.{layer}"), cache_ty(&vty));
                    let pa = r.op(
                        Op::PagedAttention(PagedAttention {
                            scale: *scale,
                            window,
                        }),
                        &[
                            qt,
                            kt,
                            vt,
                            kc,
                            vc,
                            positions,
                            seq_starts,
                            context_lens,
                            block_tables,
                            slot_mapping,
                        ],
                        loc.clone(),
                        &what,
                    )?;
                    caches.push((Value { node: pa, index: 1 }, Value { node: pa, index: 2 }));
                    let out = Value::of(pa);
                    let od = r.ty(out).shape.dims().to_vec();
                    let shape = vec![Dim::constant(1), od[0].clone(), od[1].clone(), od[2].clone()];
                    let back = r.op1(Op::Reshape(Reshape { shape }), &[out], &loc, &what)?;
                    let back = r.op1(
                        Op::Transpose(Transpose {
                            perm: vec![0, 2, 1, 3],
                        }),
                        &[back],
                        &loc,
                        &what,
                    )?;
                    r.map.insert(Value::of(id), back);
                }
                _ => {
                    let mut args = args;
                    if id == head {
                        // Only the rows that sample need the LM head.
                        let rows = r.op1(
                            Op::IndexSelect(IndexSelect { axis: -2 }),
                            &[args[0], logits_indices],
                            &loc,
                            &what,
                        )?;
                        args[0] = rows;
                    }
                    let nid = r.op(op, &args, loc, &what)?;
                    for i in 0..node.outputs.len() as u32 {
                        r.map
                            .insert(Value { node: id, index: i }, Value { node: nid, index: i });
                    }
                }
            }
        }
        if caches.is_empty() {
            return Err(fail("the graph has no attention to cache".into()));
        }
        for (i, o) in g.outputs().iter().enumerate() {
            let v = r.map[&o.value];
            if i == 0 {
                // [1, N, V] -> [N, V].
                let ty = r.ty(v);
                let d = ty.shape.dims();
                if d.len() != 3 || !d[0].is(1) {
                    return Err(fail(format!("logits {ty} are not [batch, seq, vocab]")));
                }
                let flat = r.op1(
                    Op::Reshape(Reshape {
                        shape: d[1..].to_vec(),
                    }),
                    &[v],
                    &None,
                    "logits",
                )?;
                let ty = r.ty(flat);
                r.new.add_output(o.name.clone(), flat, ty);
            } else {
                let ty = r.ty(v);
                r.new.add_output(o.name.clone(), v, ty);
            }
        }
        for (layer, (k, v)) in caches.iter().enumerate() {
            let (kt, vt) = (r.ty(*k), r.ty(*v));
            r.new.add_output(format!("k_cache.{layer}"), *k, kt);
            r.new.add_output(format!("v_cache.{layer}"), *v, vt);
        }
        let layers = caches.len();
        let new = r.new;
        *g = new;
        let mut report = PassReport::with_rewrites(layers);
        report.notes.push(format!(
            "{layers} attention layers on a paged cache of {block_size}-token blocks{}",
            if windows > 0 {
                format!(" ({windows} with a sliding window)")
            } else {
                String::new()
            }
        ));
        Ok(report)
    }
}

/// The one graph input, `ids[B, S]` (integer): its batch dim (a symbol, or
/// a constant as torch.export writes for a batch of one) and the symbol
/// `S`; the error says what the graph has instead.
pub(crate) fn token_input(g: &Graph) -> Result<(NodeId, Dim, String), String> {
    let [id] = g.inputs() else {
        let names: Vec<&str> = g.inputs().iter().filter_map(|&i| g.node_name(i)).collect();
        return Err(format!(
            "expected one input (token ids [batch, seq]), found {}: {}",
            names.len(),
            names.join(", ")
        ));
    };
    let ty = &g.node(*id).outputs[0];
    let dims = ty.shape.dims();
    match (ty.dtype.is_int(), dims) {
        (true, [b, s])
            if (b.as_sym().is_some() || b.as_const().is_some()) && s.as_sym().is_some() && b != s =>
        {
            Ok((*id, b.clone(), s.as_sym().unwrap_or_default().to_string()))
        }
        _ => Err(format!(
            "input %{} is {ty}; expected integer token ids [batch, seq], the sequence a symbol",
            g.node_name(*id).unwrap_or_default()
        )),
    }
}

/// Step-graph inputs that compute what the model graph computes on `ids`:
/// each batch row is one sequence prefilled in one step, blocks assigned in
/// order, and every row's logits wanted; caches start at zero.
pub fn step_inputs_for_batch(
    before: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    after: &Graph,
) -> Result<BTreeMap<String, Tensor>, String> {
    let (id, _, _) = token_input(before)?;
    let name = before.node_name(id).unwrap_or_default();
    let ids = inputs.get(name).ok_or_else(|| format!("no input %{name}"))?;
    let [b, s] = [ids.shape()[0], ids.shape()[1]];
    let block_size = after
        .inputs()
        .iter()
        .find(|&&i| after.node_name(i) == Some("k_cache.0"))
        .and_then(|&i| after.node(i).outputs[0].shape.dims()[1].as_const())
        .ok_or("the step graph has no k_cache.0 input")? as usize;
    let per_seq = s.div_ceil(block_size).max(1);
    let mut step = StepInputs::default();
    for row in 0..b {
        let blocks: Vec<i64> = (row * per_seq..(row + 1) * per_seq).map(|x| x as i64).collect();
        step.push_seq(&blocks, block_size, 0, s, true);
    }
    step.ids = ids.to_i64_vec();
    step.logits_indices = (0..(b * s) as i64).collect();
    step.tensors(after, b * per_seq, ids.dtype())
}

/// The metadata of one step, built sequence by sequence: what executors and
/// tests feed the step graph.
#[derive(Clone, Debug, Default)]
pub struct StepInputs {
    pub ids: Vec<i64>,
    pub positions: Vec<i64>,
    pub seq_starts: Vec<i64>,
    pub context_lens: Vec<i64>,
    /// One row per sequence (padded with 0 to the longest).
    pub block_tables: Vec<Vec<i64>>,
    pub slot_mapping: Vec<i64>,
    pub logits_indices: Vec<i64>,
}

impl StepInputs {
    /// Adds a sequence whose tokens `start..start + len` run in this step
    /// (ids are pushed separately); `sample` asks for the last row's logits.
    pub fn push_seq(&mut self, blocks: &[i64], block_size: usize, start: usize, len: usize, sample: bool) {
        let slots: Vec<i64> = (start..start + len)
            .map(|p| {
                blocks
                    .get(p / block_size)
                    .map_or(-1, |&b| b * block_size as i64 + (p % block_size) as i64)
            })
            .collect();
        self.push_with_slots(blocks, start, &slots, sample);
    }

    /// [`StepInputs::push_seq`] with the cache slots given (one per token,
    /// `start..start + slots.len()`), as a block manager hands them out.
    pub fn push_with_slots(&mut self, blocks: &[i64], start: usize, slots: &[i64], sample: bool) {
        if self.seq_starts.is_empty() {
            self.seq_starts.push(0);
        }
        let (first, len) = (self.positions.len(), slots.len());
        self.positions.extend((start..start + len).map(|p| p as i64));
        self.slot_mapping.extend_from_slice(slots);
        self.seq_starts.push(self.positions.len() as i64);
        self.context_lens.push((start + len) as i64);
        self.block_tables.push(blocks.to_vec());
        if sample && len > 0 {
            self.logits_indices.push((first + len - 1) as i64);
        }
    }

    /// The input tensors of `g`, with zeroed caches of `num_blocks` blocks.
    pub fn tensors(
        &self,
        g: &Graph,
        num_blocks: usize,
        ids_dtype: DType,
    ) -> Result<BTreeMap<String, Tensor>, String> {
        let mut out = self.metadata(ids_dtype);
        for &i in g.inputs() {
            let name = g.node_name(i).unwrap_or_default();
            if name.starts_with("k_cache.") || name.starts_with("v_cache.") {
                let ty = &g.node(i).outputs[0];
                let mut shape = vec![num_blocks];
                for d in &ty.shape.dims()[1..] {
                    let c = d
                        .as_const()
                        .ok_or_else(|| format!("cache {name} has a symbolic dim {d}"))?;
                    shape.push(c as usize);
                }
                let n: usize = shape.iter().product();
                out.insert(
                    name.to_string(),
                    Tensor::from_f64(ty.dtype, &shape, &vec![0.0; n]),
                );
            }
        }
        Ok(out)
    }

    /// The token ids and metadata inputs (everything but the caches).
    pub fn metadata(&self, ids_dtype: DType) -> BTreeMap<String, Tensor> {
        self.metadata_with_width(ids_dtype, 1)
    }

    /// The longest block table (at least 1): the narrowest `block_tables`.
    pub fn block_table_width(&self) -> usize {
        self.block_tables.iter().map(Vec::len).max().unwrap_or(0).max(1)
    }

    /// Like [`StepInputs::metadata`], with the block tables zero-padded to
    /// `width` columns when that is wider than the longest (a GPU keeps one
    /// decode shape, one CUDA graph, across many steps that way).
    pub fn metadata_with_width(&self, ids_dtype: DType, width: usize) -> BTreeMap<String, Tensor> {
        let width = width.max(self.block_table_width());
        let mut table = Vec::with_capacity(self.block_tables.len() * width);
        for row in &self.block_tables {
            table.extend(row.iter().copied());
            table.extend(std::iter::repeat_n(0, width - row.len()));
        }
        let i64v = |v: &[i64]| Tensor::from_i64(DType::I64, &[v.len()], v);
        BTreeMap::from([
            (
                "ids".to_string(),
                Tensor::from_i64(ids_dtype, &[self.ids.len()], &self.ids),
            ),
            ("positions".to_string(), i64v(&self.positions)),
            ("seq_starts".to_string(), i64v(&self.seq_starts)),
            ("context_lens".to_string(), i64v(&self.context_lens)),
            (
                "block_tables".to_string(),
                Tensor::from_i64(DType::I64, &[self.block_tables.len(), width], &table),
            ),
            ("slot_mapping".to_string(), i64v(&self.slot_mapping)),
            ("logits_indices".to_string(), i64v(&self.logits_indices)),
        ])
    }
}
