//! The builder API that frontends and tests use to make graphs: every op is
//! type-checked as it is added, so an error points at the exact node, and
//! `finish` runs the verifier.

use crate::dim::{Dim, TensorType};
use crate::dtype::DType;
use crate::graph::{Graph, Value};
use crate::ops::{BinaryKind, Cast, Linear, MatMul, Op, Reshape, Softmax, Transpose, UnaryKind};
use crate::verify::{verify, VerifyError};

/// An op that could not be added: which node it would have been and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{node}: {message}")]
pub struct BuildError {
    pub node: String,
    pub message: String,
}

/// Builds a graph op by op.
pub struct GraphBuilder {
    g: Graph,
    next_value: usize,
    loc: Option<String>,
}

impl GraphBuilder {
    pub fn new(name: impl Into<String>) -> GraphBuilder {
        GraphBuilder {
            g: Graph::new(name),
            next_value: 0,
            loc: None,
        }
    }

    /// Sets the location recorded on the nodes added from now on (e.g. the
    /// module path of the layer being built); `None` clears it.
    pub fn set_loc(&mut self, loc: Option<String>) {
        self.loc = loc;
    }

    pub fn input(&mut self, name: impl Into<String>, ty: TensorType) -> Value {
        self.g.add_input(name, ty)
    }

    pub fn weight(&mut self, name: impl Into<String>, key: impl Into<String>, ty: TensorType) -> Value {
        self.g.add_weight(name, key, ty)
    }

    /// The type of a value made by this builder.
    pub fn ty(&self, v: Value) -> &TensorType {
        self.g.value_type(v).expect("values come from this builder")
    }

    /// Adds an op after checking it against its operands' types.
    pub fn op(&mut self, op: Op, operands: &[Value]) -> Result<Vec<Value>, BuildError> {
        let types: Vec<TensorType> = operands.iter().map(|&v| self.ty(v).clone()).collect();
        let outputs = op.infer(&types).map_err(|message| {
            let mut node = format!("%{} = {}", self.next_value, op.name());
            if let Some(l) = &self.loc {
                node.push_str(&format!(" ({l})"));
            }
            BuildError { node, message }
        })?;
        let n = outputs.len();
        let id = self.g.add_op(op, operands, outputs, self.loc.clone());
        self.next_value += n;
        Ok((0..n as u32).map(|index| Value { node: id, index }).collect())
    }

    /// Adds a single-output op.
    pub fn op1(&mut self, op: Op, operands: &[Value]) -> Result<Value, BuildError> {
        Ok(self.op(op, operands)?[0])
    }

    pub fn unary(&mut self, k: UnaryKind, x: Value) -> Result<Value, BuildError> {
        self.op1(Op::Unary(k), &[x])
    }

    pub fn binary(&mut self, k: BinaryKind, a: Value, b: Value) -> Result<Value, BuildError> {
        self.op1(Op::Binary(k), &[a, b])
    }

    pub fn add(&mut self, a: Value, b: Value) -> Result<Value, BuildError> {
        self.binary(BinaryKind::Add, a, b)
    }

    pub fn mul(&mut self, a: Value, b: Value) -> Result<Value, BuildError> {
        self.binary(BinaryKind::Mul, a, b)
    }

    pub fn matmul(&mut self, a: Value, b: Value) -> Result<Value, BuildError> {
        self.op1(Op::MatMul(MatMul), &[a, b])
    }

    pub fn linear(&mut self, x: Value, w: Value, bias: Option<Value>) -> Result<Value, BuildError> {
        let mut args = vec![x, w];
        args.extend(bias);
        self.op1(Op::Linear(Linear), &args)
    }

    pub fn cast(&mut self, x: Value, to: DType) -> Result<Value, BuildError> {
        self.op1(Op::Cast(Cast { to }), &[x])
    }

    pub fn reshape(&mut self, x: Value, shape: Vec<Dim>) -> Result<Value, BuildError> {
        self.op1(Op::Reshape(Reshape { shape }), &[x])
    }

    pub fn transpose(&mut self, x: Value, perm: Vec<i64>) -> Result<Value, BuildError> {
        self.op1(Op::Transpose(Transpose { perm }), &[x])
    }

    pub fn softmax(&mut self, x: Value, axis: i64) -> Result<Value, BuildError> {
        self.op1(Op::Softmax(Softmax { axis, log: false }), &[x])
    }

    /// Declares a graph output with the value's type.
    pub fn output(&mut self, name: impl Into<String>, v: Value) {
        let ty = self.ty(v).clone();
        self.g.add_output(name, v, ty);
    }

    /// The graph, verified.
    pub fn finish(self) -> Result<Graph, VerifyError> {
        verify(&self.g)?;
        Ok(self.g)
    }

    /// The graph without verification (for tests of the verifier itself).
    pub fn finish_unchecked(self) -> Graph {
        self.g
    }
}
