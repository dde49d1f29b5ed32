//! The graph: SSA values on a petgraph `StableDiGraph`.
//!
//! Nodes are graph inputs, weights, or ops; every node defines one or more
//! values (`Value` = node + output index) with a declared type. An edge from
//! producer to consumer carries which output it reads and which operand slot
//! it fills, so the operand list of an op is its incoming edges in slot order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::fmt;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use petgraph::Direction;

use crate::dim::TensorType;
use crate::ops::Op;

/// Identifies a node; stable across removals of other nodes.
pub type NodeId = NodeIndex<u32>;

/// One SSA value: output `index` of `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    pub node: NodeId,
    pub index: u32,
}

impl Value {
    /// The first (often only) output of a node.
    pub fn of(node: NodeId) -> Value {
        Value { node, index: 0 }
    }
}

/// What a node is.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// A graph input, bound by the caller for each run.
    Input { name: String },
    /// A named weight, looked up by `key` in the weight store.
    Weight { name: String, key: String },
    /// An operation on the values of its incoming edges.
    Op(Op),
}

/// A node and the declared types of the values it defines.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub outputs: Vec<TensorType>,
    /// Where the node came from (e.g. the module path in the source model),
    /// carried through passes into error messages.
    pub loc: Option<String>,
}

impl Node {
    /// The op, if the node is one.
    pub fn op(&self) -> Option<&Op> {
        match &self.kind {
            NodeKind::Op(op) => Some(op),
            _ => None,
        }
    }
}

/// Which output of the producer an edge carries into which operand slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    pub output: u32,
    pub slot: u32,
}

/// A named result of the graph with its declared type.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphOutput {
    pub name: String,
    pub value: Value,
    pub ty: TensorType,
}

/// A whole function: named inputs, weights, ops and named outputs.
#[derive(Clone, Debug)]
pub struct Graph {
    pub name: String,
    g: StableDiGraph<Node, Edge>,
    /// When each node was added (see [`Graph::topo_order`]).
    seq: HashMap<NodeId, u64>,
    next_seq: u64,
    inputs: Vec<NodeId>,
    weights: Vec<NodeId>,
    outputs: Vec<GraphOutput>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            g: StableDiGraph::default(),
            seq: HashMap::new(),
            next_seq: 0,
            inputs: Vec::new(),
            weights: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Adds a node, recording when.
    fn push(&mut self, node: Node) -> NodeId {
        let id = self.g.add_node(node);
        self.seq.insert(id, self.next_seq);
        self.next_seq += 1;
        id
    }

    /// Adds a graph input.
    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> Value {
        let id = self.push(Node {
            kind: NodeKind::Input { name: name.into() },
            outputs: vec![ty],
            loc: None,
        });
        self.inputs.push(id);
        Value::of(id)
    }

    /// Adds a weight reference (no data is touched).
    pub fn add_weight(&mut self, name: impl Into<String>, key: impl Into<String>, ty: TensorType) -> Value {
        let id = self.push(Node {
            kind: NodeKind::Weight {
                name: name.into(),
                key: key.into(),
            },
            outputs: vec![ty],
            loc: None,
        });
        self.weights.push(id);
        Value::of(id)
    }

    /// Adds an op node with declared output types, without checking them
    /// (the builder checks; the verifier checks everything afterwards).
    pub fn add_op(
        &mut self,
        op: Op,
        operands: &[Value],
        outputs: Vec<TensorType>,
        loc: Option<String>,
    ) -> NodeId {
        let id = self.push(Node {
            kind: NodeKind::Op(op),
            outputs,
            loc,
        });
        for (slot, v) in operands.iter().enumerate() {
            self.g.add_edge(
                v.node,
                id,
                Edge {
                    output: v.index,
                    slot: slot as u32,
                },
            );
        }
        id
    }

    /// Adds an op node that orders as if it had been added with `at`: a
    /// rewrite that replaces `at` keeps its place in the topological order
    /// (and so in the kernel order of the targets), where a plain
    /// [`Graph::add_op`] would go after every node added before it.
    pub fn add_op_at(
        &mut self,
        at: NodeId,
        op: Op,
        operands: &[Value],
        outputs: Vec<TensorType>,
        loc: Option<String>,
    ) -> NodeId {
        let id = self.add_op(op, operands, outputs, loc);
        if let Some(&s) = self.seq.get(&at) {
            self.seq.insert(id, s);
        }
        id
    }

    /// Declares a graph output.
    pub fn add_output(&mut self, name: impl Into<String>, value: Value, ty: TensorType) {
        self.outputs.push(GraphOutput {
            name: name.into(),
            value,
            ty,
        });
    }

    /// Replaces output `i` with another value of the same type.
    pub fn set_output_value(&mut self, i: usize, value: Value) {
        self.outputs[i].value = value;
    }

    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    pub fn weights(&self) -> &[NodeId] {
        &self.weights
    }

    pub fn outputs(&self) -> &[GraphOutput] {
        &self.outputs
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id)
    }

    /// The node; panics on an id from another graph (a compiler bug, not
    /// user input).
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id]
    }

    /// Every node id, in index order (petgraph may reuse the index of a
    /// removed node).
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices()
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    /// The name of an input or weight node.
    pub fn node_name(&self, id: NodeId) -> Option<&str> {
        match &self.g[id].kind {
            NodeKind::Input { name } | NodeKind::Weight { name, .. } => Some(name),
            NodeKind::Op(_) => None,
        }
    }

    /// The declared type of a value, if the value exists.
    pub fn value_type(&self, v: Value) -> Option<&TensorType> {
        self.g.node_weight(v.node)?.outputs.get(v.index as usize)
    }

    /// Incoming edges of a node as (slot, value), sorted by slot.
    pub fn operand_edges(&self, id: NodeId) -> Vec<(u32, Value)> {
        let mut v: Vec<(u32, Value)> = self
            .g
            .edges_directed(id, Direction::Incoming)
            .map(|e| {
                (
                    e.weight().slot,
                    Value {
                        node: e.source(),
                        index: e.weight().output,
                    },
                )
            })
            .collect();
        v.sort_by_key(|(s, _)| *s);
        v
    }

    /// The operands of a node in slot order.
    pub fn operands(&self, id: NodeId) -> Vec<Value> {
        self.operand_edges(id).into_iter().map(|(_, v)| v).collect()
    }

    /// The (consumer, slot) pairs reading a value.
    pub fn users(&self, v: Value) -> Vec<(NodeId, u32)> {
        let mut u: Vec<(NodeId, u32)> = self
            .g
            .edges_directed(v.node, Direction::Outgoing)
            .filter(|e| e.weight().output == v.index)
            .map(|e| (e.target(), e.weight().slot))
            .collect();
        u.sort();
        u
    }

    /// Points every use of `old` (operands and graph outputs) at `new`.
    pub fn replace_all_uses(&mut self, old: Value, new: Value) {
        let uses: Vec<_> = self
            .g
            .edges_directed(old.node, Direction::Outgoing)
            .filter(|e| e.weight().output == old.index)
            .map(|e| (e.id(), e.target(), e.weight().slot))
            .collect();
        for (eid, target, slot) in uses {
            self.g.remove_edge(eid);
            self.g.add_edge(
                new.node,
                target,
                Edge {
                    output: new.index,
                    slot,
                },
            );
        }
        for o in &mut self.outputs {
            if o.value == old {
                o.value = new;
            }
        }
    }

    /// Points operand `slot` of `node` at `value`.
    pub fn set_operand(&mut self, node: NodeId, slot: u32, value: Value) {
        let old: Vec<_> = self
            .g
            .edges_directed(node, Direction::Incoming)
            .filter(|e| e.weight().slot == slot)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.g.remove_edge(e);
        }
        self.add_edge(value, node, slot);
    }

    /// Removes a node and its edges (its users are left with a missing
    /// operand, which the verifier reports).
    pub fn remove_node(&mut self, id: NodeId) {
        self.g.remove_node(id);
        self.seq.remove(&id);
        self.inputs.retain(|&n| n != id);
        self.weights.retain(|&n| n != id);
    }

    /// Adds a raw edge (used by the parser and by tests that build broken
    /// graphs on purpose).
    pub fn add_edge(&mut self, from: Value, to: NodeId, slot: u32) {
        self.g.add_edge(
            from.node,
            to,
            Edge {
                output: from.index,
                slot,
            },
        );
    }

    /// A deterministic topological order: inputs and weights first, in
    /// declaration order, then ops, where among ready ops the one added
    /// first (by insertion, not by id: petgraph reuses the ids of removed
    /// nodes) comes first. So a graph built in order prints in that order,
    /// and the order does not depend on where weights were declared. On a
    /// cycle, returns a node on it.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, NodeId> {
        let mut indeg: HashMap<NodeId, usize> = self.g.node_indices().map(|n| (n, 0)).collect();
        for e in (&self.g).edge_references() {
            *indeg.get_mut(&e.target()).expect("edge target exists") += 1;
        }
        type Ready = BinaryHeap<Reverse<(u64, NodeId)>>;
        let key = |n: NodeId| Reverse((self.seq.get(&n).copied().unwrap_or(u64::MAX), n));
        let mut order = Vec::with_capacity(self.g.node_count());
        let mut ready: Ready = BinaryHeap::new();
        let release = |n: NodeId, indeg: &mut HashMap<NodeId, usize>, ready: &mut Ready| {
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = indeg.get_mut(&e.target()).expect("edge target exists");
                *d -= 1;
                if *d == 0 {
                    ready.push(key(e.target()));
                }
            }
        };
        let sources: Vec<NodeId> = self.inputs.iter().chain(&self.weights).copied().collect();
        let source_set: HashSet<NodeId> = sources.iter().copied().collect();
        ready.extend(
            indeg
                .iter()
                .filter(|(n, &d)| d == 0 && !source_set.contains(n))
                .map(|(&n, _)| key(n)),
        );
        for &n in &sources {
            if indeg[&n] == 0 {
                order.push(n);
                release(n, &mut indeg, &mut ready);
            }
        }
        while let Some(Reverse((_, n))) = ready.pop() {
            order.push(n);
            release(n, &mut indeg, &mut ready);
        }
        if order.len() < self.g.node_count() {
            // Every unsorted node has an unsorted producer; walking back along
            // those (lowest id first) must revisit a node, which is on a cycle.
            let mut n = self
                .g
                .node_indices()
                .filter(|n| indeg[n] > 0)
                .min()
                .expect("some node is left");
            let mut seen = std::collections::HashSet::new();
            while seen.insert(n) {
                n = self
                    .g
                    .edges_directed(n, Direction::Incoming)
                    .map(|e| e.source())
                    .filter(|s| indeg[s] > 0)
                    .min()
                    .expect("an unsorted node has an unsorted producer");
            }
            return Err(n);
        }
        Ok(order)
    }

    /// Canonical names of every value: inputs and weights by name (`%ids`,
    /// `@embed`), op results numbered `%0, %1, ...` in topological order
    /// (insertion order if the graph has a cycle).
    pub fn value_names(&self) -> HashMap<Value, String> {
        let order = self
            .topo_order()
            .unwrap_or_else(|_| self.g.node_indices().collect());
        let mut names = HashMap::new();
        let mut next = 0;
        for id in order {
            let node = &self.g[id];
            match &node.kind {
                NodeKind::Input { name } => {
                    names.insert(Value::of(id), format!("%{}", crate::printer::ident(name)));
                }
                NodeKind::Weight { name, .. } => {
                    names.insert(Value::of(id), format!("@{}", crate::printer::ident(name)));
                }
                NodeKind::Op(_) => {
                    for i in 0..node.outputs.len() {
                        names.insert(
                            Value {
                                node: id,
                                index: i as u32,
                            },
                            format!("%{next}"),
                        );
                        next += 1;
                    }
                }
            }
        }
        names
    }

    /// A short description of a node for error messages, e.g.
    /// `%7 = rms_norm (model.layers.0.input_layernorm)`.
    pub fn describe(&self, id: NodeId) -> String {
        describe_with(self, &self.value_names(), id)
    }

    /// Symbols that input shapes bind: those written in an input dim alone
    /// or as `a*X + b` (solvable from the dim's value at run time).
    pub fn symbols(&self) -> BTreeSet<String> {
        self.inputs
            .iter()
            .flat_map(|&i| self.g[i].outputs[0].shape.dims().iter())
            .filter_map(|d| d.as_linear().map(|(s, _, _)| s.to_string()))
            .collect()
    }

    /// How many nodes of each op there are.
    pub fn op_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for n in self.g.node_weights() {
            if let NodeKind::Op(op) = &n.kind {
                *m.entry(op.name()).or_insert(0) += 1;
            }
        }
        m
    }

    /// The canonical structure used for equality: per node in topological
    /// order, what it is and which canonical values it reads.
    fn canonical(&self) -> Vec<CanonicalNode> {
        let names = self.value_names();
        let order = self
            .topo_order()
            .unwrap_or_else(|_| self.g.node_indices().collect());
        order
            .into_iter()
            .map(|id| {
                let n = &self.g[id];
                let ops = self
                    .operand_edges(id)
                    .into_iter()
                    .map(|(s, v)| format!("{s}:{}", names.get(&v).cloned().unwrap_or_default()))
                    .collect();
                (n.kind.clone(), n.outputs.clone(), n.loc.clone(), ops)
            })
            .collect()
    }
}

/// A node as equality sees it: kind, declared types, location, and the
/// canonical names of its operands (with their slots).
type CanonicalNode = (NodeKind, Vec<TensorType>, Option<String>, Vec<String>);

/// `describe` with precomputed names (the verifier describes many nodes).
pub(crate) fn describe_with(g: &Graph, names: &HashMap<Value, String>, id: NodeId) -> String {
    let node = g.node(id);
    let mut s = match &node.kind {
        NodeKind::Input { name } => format!("input %{name}"),
        NodeKind::Weight { name, .. } => format!("weight @{name}"),
        NodeKind::Op(op) => {
            let outs: Vec<String> = (0..node.outputs.len().max(1))
                .map(|i| {
                    names
                        .get(&Value {
                            node: id,
                            index: i as u32,
                        })
                        .cloned()
                        .unwrap_or_else(|| "%?".into())
                })
                .collect();
            format!("{} = {}", outs.join(", "), op.name())
        }
    };
    if let Some(loc) = &node.loc {
        s.push_str(&format!(" ({loc})"));
    }
    s
}

impl PartialEq for Graph {
    /// Structural equality up to node ids: same signature, same weights, and
    /// the same ops reading the same values in canonical order.
    fn eq(&self, o: &Graph) -> bool {
        let sig = |g: &Graph| {
            let ins: Vec<_> = g
                .inputs
                .iter()
                .map(|&i| (g.g[i].kind.clone(), g.g[i].outputs.clone()))
                .collect();
            let ws: Vec<_> = g
                .weights
                .iter()
                .map(|&i| (g.g[i].kind.clone(), g.g[i].outputs.clone()))
                .collect();
            let names = g.value_names();
            let outs: Vec<_> = g
                .outputs
                .iter()
                .map(|out| (out.name.clone(), out.ty.clone(), names.get(&out.value).cloned()))
                .collect();
            (ins, ws, outs)
        };
        self.name == o.name && sig(self) == sig(o) && self.canonical() == o.canonical()
    }
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::printer::print(self))
    }
}
