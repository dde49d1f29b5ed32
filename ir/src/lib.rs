//! `optc-ir`: the typed graph IR every part of optc is built on and checked
//! against.
//!
//! - [`DType`], [`Dim`], [`Shape`], [`TensorType`]: element types and
//!   symbolic shapes;
//! - [`Op`]: the op set, one family per module under [`ops`], each op with
//!   its attributes, type rule and reference semantics;
//! - [`Graph`] and [`GraphBuilder`]: SSA values on a petgraph DAG;
//! - [`print`] / [`parse`]: the canonical text form;
//! - [`verify`]: the invariants every pass must keep;
//! - [`WeightStore`]: named weights from mapped safetensors files, with lazy
//!   views;
//! - [`interp::run`]: the reference interpreter, the oracle for passes and
//!   backends.

pub mod builder;
pub mod dim;
pub mod dtype;
pub mod graph;
pub mod interp;
mod lexer;
pub mod ops;
pub mod parser;
pub mod printer;
pub mod tensor;
pub mod verify;
pub mod weights;

pub use builder::{BuildError, GraphBuilder};
pub use dim::{broadcast_shapes, Bindings, Dim, Shape, TensorType};
pub use dtype::DType;
pub use graph::{Graph, GraphOutput, Node, NodeId, NodeKind, Value};
pub use interp::{bind_symbols, bind_symbols_from_shapes, run, EvalError};
pub use ops::Op;
pub use parser::{parse, parse_type, ParseError};
pub use printer::print;
pub use tensor::Tensor;
pub use verify::{verify, VerifyError};
pub use weights::{LazyTensor, View, WeightError, WeightStore};
