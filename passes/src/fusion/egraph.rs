//! Pattern fusion with e-graphs (`egg`): the graph becomes an e-graph, rule
//! files add fused forms of the patterns they match (rules as data: a
//! pattern in s-expression form, a condition on operand types and
//! constants, and a builder of the fused op), a bounded run saturates, and
//! extraction with a cost model that prefers fewer ops rebuilds the graph.
//!
//! Ops are e-nodes keyed by their canonical text (`reduce_mean{axes=[-1],
//! keepdims=true}`), so patterns match attributes exactly. Values the
//! e-graph does not model (inputs, weights, results of multi-output ops)
//! are leaves. An analysis keeps each class's type and, for scalar
//! constants, its value, for rule conditions. Runs are bounded in nodes,
//! iterations and time; a run that stops on a bound says so in the pass
//! report instead of silently fusing less.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use egg::{
    define_language, Analysis, CostFunction, DidMerge, EGraph, Extractor, Id, Language, Runner, StopReason,
    Symbol,
};
use optc_ir::ops::Op;
use optc_ir::{Graph, NodeKind, TensorType, Value};

define_language! {
    /// A value as an e-node: `Leaf` is a value from outside the e-graph, by
    /// name (`v<node>.<output>`); `Op` an op, keyed by its canonical text,
    /// over its operand classes.
    pub enum Node {
        Leaf(Symbol),
        Op(Symbol, Vec<Id>),
    }
}

/// The canonical text of an op: its name and attributes without spaces.
pub fn op_key(op: &Op) -> String {
    let attrs = op.attrs();
    if attrs.is_empty() {
        return op.name().to_string();
    }
    let a: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}{{{}}}", op.name(), a.join(",")).replace(' ', "")
}

/// What a class is known to be.
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    pub ty: Option<TensorType>,
    /// The value of a one-element constant.
    pub scalar: Option<f64>,
}

/// Ops by key and leaf types: what turns e-nodes back into typed IR.
#[derive(Default)]
pub struct Types {
    pub ops: HashMap<Symbol, Op>,
    pub leaves: HashMap<Symbol, TensorType>,
}

impl Types {
    /// Registers an op (new fused ops come through here) and returns its key.
    pub fn key(&mut self, op: Op) -> Symbol {
        let k = Symbol::from(op_key(&op));
        self.ops.entry(k).or_insert(op);
        k
    }
}

impl Analysis<Node> for Types {
    type Data = Info;

    fn make(egraph: &mut EGraph<Node, Self>, enode: &Node) -> Info {
        match enode {
            Node::Leaf(s) => Info {
                ty: egraph.analysis.leaves.get(s).cloned(),
                scalar: None,
            },
            Node::Op(k, children) => {
                let op = &egraph.analysis.ops[k];
                let types: Option<Vec<TensorType>> =
                    children.iter().map(|c| egraph[*c].data.ty.clone()).collect();
                let ty =
                    types
                        .and_then(|t| op.infer(&t).ok())
                        .and_then(|mut v| if v.len() == 1 { v.pop() } else { None });
                let scalar = match op {
                    Op::Constant(c) if c.value.numel() == 1 => c.value.to_f64_vec().first().copied(),
                    _ => None,
                };
                Info { ty, scalar }
            }
        }
    }

    fn merge(&mut self, a: &mut Info, b: Info) -> DidMerge {
        let mut changed = false;
        if a.ty.is_none() && b.ty.is_some() {
            a.ty = b.ty;
            changed = true;
        }
        if a.scalar.is_none() && b.scalar.is_some() {
            a.scalar = b.scalar;
            changed = true;
        }
        DidMerge(changed, true)
    }
}

/// The e-graph type the rules work on.
pub type FusionGraph = EGraph<Node, Types>;
/// A rewrite rule over it.
pub type Rule = egg::Rewrite<Node, Types>;

/// Is class `id` a scalar constant equal to `v` (within `tol`)?
pub fn scalar_is(egraph: &FusionGraph, id: Id, v: f64, tol: f64) -> bool {
    egraph[id]
        .data
        .scalar
        .is_some_and(|s| (s - v).abs() <= tol * v.abs().max(1.0))
}

/// The children of the first op node in class `c` that `want` accepts
/// (rule builders use it to check structure that patterns cannot spell, such
/// as slice bounds that depend on the head size).
pub fn find_op(eg: &FusionGraph, c: Id, want: impl Fn(&Op) -> bool) -> Option<&[Id]> {
    eg[c].nodes.iter().find_map(|n| match n {
        Node::Op(k, ch) if eg.analysis.ops.get(k).is_some_and(&want) => Some(ch.as_slice()),
        _ => None,
    })
}

/// The type of class `id`, if known.
pub fn ty(egraph: &FusionGraph, id: Id) -> Option<&TensorType> {
    egraph[id].data.ty.as_ref()
}

/// Adds a fused op over `children` and unions it with the matched class,
/// if the op's type rule gives exactly the matched class's type.
pub fn add_fused(egraph: &mut FusionGraph, matched: Id, op: Op, children: Vec<Id>) -> Vec<Id> {
    let types: Option<Vec<TensorType>> = children.iter().map(|c| egraph[*c].data.ty.clone()).collect();
    let fused_ty = types.and_then(|t| op.infer(&t).ok());
    match (&fused_ty, &egraph[matched].data.ty) {
        (Some(f), Some(m)) if f.len() == 1 && &f[0] == m => {}
        _ => return vec![],
    }
    let key = egraph.analysis.key(op);
    let id = egraph.add(Node::Op(key, children));
    if egraph.union(matched, id) {
        vec![id]
    } else {
        vec![]
    }
}

/// Prefers fewer ops: every op costs 1, leaves cost nothing, so a fused op
/// always beats the chain it stands for.
struct OpCount;

impl CostFunction<Node> for OpCount {
    type Cost = usize;
    fn cost<C: FnMut(Id) -> usize>(&mut self, enode: &Node, mut costs: C) -> usize {
        let own = match enode {
            Node::Leaf(_) => 0,
            Node::Op(..) => 1,
        };
        enode
            .children()
            .iter()
            .fold(own, |acc, &c| acc.saturating_add(costs(c)))
    }
}

/// Bounds of one run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub nodes: usize,
    pub iterations: usize,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            nodes: 1_000_000,
            iterations: 8,
            time: Duration::from_secs(10),
        }
    }
}

/// What a run did.
pub struct Outcome {
    /// How many ops the rules introduced (fused ops now in the graph).
    pub rewrites: usize,
    pub notes: Vec<String>,
}

/// Runs `rules` over the whole graph and rebuilds it from the cheapest form
/// of every class.
pub fn rewrite_graph(g: &mut Graph, rules: &[Rule], limits: Limits) -> Outcome {
    let counts_before = g.op_counts();
    let mut types = Types::default();
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids().collect());
    // First pass: leaves and keys (the analysis needs them before adding).
    let mut single: HashSet<optc_ir::NodeId> = HashSet::new();
    for &n in &order {
        let node = g.node(n);
        match (&node.kind, node.outputs.len()) {
            (NodeKind::Op(op), 1) => {
                types.key(op.clone());
                single.insert(n);
            }
            _ => {
                for (i, t) in node.outputs.iter().enumerate() {
                    types
                        .leaves
                        .insert(Symbol::from(format!("v{}.{i}", n.index())), t.clone());
                }
            }
        }
    }
    let mut egraph = FusionGraph::new(types);
    let mut class_of: HashMap<Value, Id> = HashMap::new();
    let mut leaf_value: HashMap<Symbol, Value> = HashMap::new();
    let mut loc_of: HashMap<Id, Option<String>> = HashMap::new();
    for &n in &order {
        let node = g.node(n);
        match (&node.kind, node.outputs.len()) {
            (NodeKind::Op(op), 1) => {
                let children: Vec<Id> = g.operands(n).iter().map(|v| class_of[v]).collect();
                let key = Symbol::from(op_key(op));
                let id = egraph.add(Node::Op(key, children));
                loc_of.entry(id).or_insert_with(|| node.loc.clone());
                class_of.insert(Value::of(n), id);
            }
            _ => {
                for i in 0..node.outputs.len() as u32 {
                    let v = Value { node: n, index: i };
                    let s = Symbol::from(format!("v{}.{i}", n.index()));
                    let id = egraph.add(Node::Leaf(s));
                    leaf_value.insert(s, v);
                    class_of.insert(v, id);
                }
            }
        }
    }
    let runner = Runner::default()
        .with_egraph(egraph)
        .with_node_limit(limits.nodes)
        .with_iter_limit(limits.iterations)
        .with_time_limit(limits.time)
        .run(rules);
    let mut notes = Vec::new();
    match &runner.stop_reason {
        Some(StopReason::Saturated) | None => {}
        Some(reason) => notes.push(format!(
            "e-graph run stopped early: {reason:?}; some patterns may be left unfused"
        )),
    }
    let egraph = &runner.egraph;
    let extractor = Extractor::new(egraph, OpCount);
    let loc_by_class: HashMap<Id, Option<String>> =
        loc_of.into_iter().map(|(id, l)| (egraph.find(id), l)).collect();

    // Rebuild every class in the original order (so the text keeps its
    // order and fused ops sit where their pattern's root was), then point
    // the values that something outside the e-graph or a graph output
    // reads at their rebuilt form. The old ops and unused rebuilt parts
    // are dead after that and are removed.
    let mut built: HashMap<Id, Value> = HashMap::new();
    let mut needed = Vec::new();
    for &n in &order {
        if !single.contains(&n) {
            continue;
        }
        let v = Value::of(n);
        let new = build(
            g,
            egraph,
            &extractor,
            &leaf_value,
            &loc_by_class,
            class_of[&v],
            &mut built,
        );
        let outside =
            g.users(v).iter().any(|(u, _)| !single.contains(u)) || g.outputs().iter().any(|o| o.value == v);
        if outside {
            needed.push((v, new));
        }
    }
    for (v, new) in needed {
        g.replace_all_uses(v, new);
    }
    crate::cleanup::remove_dead(g);
    let counts_after = g.op_counts();
    let rewrites = counts_after
        .iter()
        .map(|(op, n)| n.saturating_sub(counts_before.get(op).copied().unwrap_or(0)))
        .sum();
    Outcome { rewrites, notes }
}

fn build(
    g: &mut Graph,
    egraph: &FusionGraph,
    extractor: &Extractor<OpCount, Node, Types>,
    leaf_value: &HashMap<Symbol, Value>,
    loc: &HashMap<Id, Option<String>>,
    class: Id,
    built: &mut HashMap<Id, Value>,
) -> Value {
    let class = egraph.find(class);
    if let Some(v) = built.get(&class) {
        return *v;
    }
    let value = match extractor.find_best_node(class).clone() {
        Node::Leaf(s) => leaf_value[&s],
        Node::Op(k, children) => {
            let args: Vec<Value> = children
                .iter()
                .map(|&c| build(g, egraph, extractor, leaf_value, loc, c, built))
                .collect();
            let op = egraph.analysis.ops[&k].clone();
            let ty = egraph[class]
                .data
                .ty
                .clone()
                .expect("every extracted class has a type");
            let l = loc.get(&class).cloned().flatten();
            Value::of(g.add_op(op, &args, vec![ty], l))
        }
    };
    built.insert(class, value);
    value
}
