//! The parts of torch's serialized `ExportedProgram` (schema 8.x, the JSON
//! in `models/<name>.json` of a `.pt2` archive) that the importer reads.
//!
//! Unions are JSON objects with exactly one key (`{"as_tensor": {...}}`),
//! which is serde's externally tagged enum. Members optc never reads keep
//! their payload as raw JSON so that a graph using them still parses and
//! the importer can say which node needs what. Floats may be the strings
//! `"Infinity"`, `"-Infinity"` and `"NaN"` (torch writes JSON without
//! non-finite numbers).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value as Json;

/// The schema major version this importer reads; minor versions only add
/// optional fields.
pub const SCHEMA_MAJOR: i64 = 8;

#[derive(Debug, Deserialize)]
pub struct ExportedProgram {
    pub graph_module: GraphModule,
    #[serde(default)]
    pub opset_version: BTreeMap<String, i64>,
    #[serde(default)]
    pub range_constraints: BTreeMap<String, RangeConstraint>,
    pub schema_version: SchemaVersion,
    #[serde(default)]
    pub torch_version: String,
}

#[derive(Debug, Deserialize, Clone, Copy)]
pub struct SchemaVersion {
    pub major: i64,
    pub minor: i64,
}

#[derive(Debug, Deserialize, Clone, Copy)]
pub struct RangeConstraint {
    pub min_val: Option<i64>,
    pub max_val: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct GraphModule {
    pub graph: Graph,
    pub signature: GraphSignature,
}

#[derive(Debug, Deserialize)]
pub struct Graph {
    pub inputs: Vec<Argument>,
    pub outputs: Vec<Argument>,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub tensor_values: BTreeMap<String, TensorMeta>,
    #[serde(default)]
    pub sym_int_values: BTreeMap<String, SymInt>,
}

#[derive(Debug, Deserialize)]
pub struct Node {
    pub target: String,
    pub inputs: Vec<NamedArgument>,
    pub outputs: Vec<Argument>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct NamedArgument {
    #[serde(default)]
    pub name: String,
    pub arg: Argument,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Argument {
    AsNone(Json),
    AsTensor(TensorArgument),
    AsTensors(Vec<TensorArgument>),
    AsInt(i64),
    AsInts(Vec<i64>),
    AsFloat(#[serde(deserialize_with = "float")] f64),
    AsFloats(#[serde(deserialize_with = "floats")] Vec<f64>),
    AsString(String),
    AsStrings(Vec<String>),
    AsSymInt(SymIntArgument),
    AsSymInts(Vec<SymIntArgument>),
    AsScalarType(i64),
    AsMemoryFormat(i64),
    AsLayout(i64),
    AsDevice(Json),
    AsBool(bool),
    AsBools(Vec<bool>),
    AsSymBool(Json),
    AsSymBools(Json),
    AsGraph(Box<GraphArgument>),
    AsOptionalTensors(Vec<OptionalTensorArgument>),
    AsCustomObj(Json),
    AsOperator(String),
    AsSymFloat(Json),
    AsSymFloats(Json),
    AsOptionalTensor(OptionalTensorArgument),
    AsComplex(Json),
    AsNestedTensors(Json),
    AsIntLists(Json),
    AsStringToArgument(Json),
}

impl Argument {
    /// The union member's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Argument::AsNone(_) => "none",
            Argument::AsTensor(_) => "tensor",
            Argument::AsTensors(_) => "tensor list",
            Argument::AsInt(_) => "int",
            Argument::AsInts(_) => "int list",
            Argument::AsFloat(_) => "float",
            Argument::AsFloats(_) => "float list",
            Argument::AsString(_) => "string",
            Argument::AsStrings(_) => "string list",
            Argument::AsSymInt(_) => "SymInt",
            Argument::AsSymInts(_) => "SymInt list",
            Argument::AsScalarType(_) => "dtype",
            Argument::AsMemoryFormat(_) => "memory format",
            Argument::AsLayout(_) => "layout",
            Argument::AsDevice(_) => "device",
            Argument::AsBool(_) => "bool",
            Argument::AsBools(_) => "bool list",
            Argument::AsSymBool(_) => "SymBool",
            Argument::AsSymBools(_) => "SymBool list",
            Argument::AsGraph(_) => "graph",
            Argument::AsOptionalTensors(_) => "optional tensor list",
            Argument::AsCustomObj(_) => "custom object",
            Argument::AsOperator(_) => "operator",
            Argument::AsSymFloat(_) => "SymFloat",
            Argument::AsSymFloats(_) => "SymFloat list",
            Argument::AsOptionalTensor(_) => "optional tensor",
            Argument::AsComplex(_) => "complex",
            Argument::AsNestedTensors(_) => "nested tensor list",
            Argument::AsIntLists(_) => "int list list",
            Argument::AsStringToArgument(_) => "string-to-argument map",
        }
    }
}

#[derive(Debug, Deserialize, Clone)]
pub struct TensorArgument {
    pub name: String,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "snake_case")]
pub enum SymIntArgument {
    AsName(String),
    AsInt(i64),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "snake_case")]
pub enum OptionalTensorArgument {
    AsTensor(TensorArgument),
    AsNone(Json),
}

#[derive(Debug, Deserialize)]
pub struct GraphArgument {
    pub name: String,
    pub graph: Graph,
}

#[derive(Debug, Deserialize, Clone)]
pub struct TensorMeta {
    pub dtype: i64,
    pub sizes: Vec<SymInt>,
    #[serde(default)]
    pub strides: Vec<SymInt>,
    pub storage_offset: Option<SymInt>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "snake_case")]
pub enum SymInt {
    AsExpr(SymExpr),
    AsInt(i64),
}

#[derive(Debug, Deserialize, Clone)]
pub struct SymExpr {
    pub expr_str: String,
}

#[derive(Debug, Deserialize)]
pub struct GraphSignature {
    pub input_specs: Vec<InputSpec>,
    pub output_specs: Vec<OutputSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputSpec {
    UserInput {
        arg: Argument,
    },
    Parameter {
        arg: TensorArgument,
        parameter_name: String,
    },
    Buffer {
        arg: TensorArgument,
        buffer_name: String,
    },
    TensorConstant {
        arg: TensorArgument,
        tensor_constant_name: String,
    },
    CustomObj(Json),
    Token(Json),
    ConstantInput(Json),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputSpec {
    UserOutput { arg: Argument },
    LossOutput(Json),
    BufferMutation(Json),
    GradientToParameter(Json),
    GradientToUserInput(Json),
    UserInputMutation(Json),
    Token(Json),
    ParameterMutation(Json),
}

impl OutputSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            OutputSpec::UserOutput { .. } => "user_output",
            OutputSpec::LossOutput(_) => "loss_output",
            OutputSpec::BufferMutation(_) => "buffer_mutation",
            OutputSpec::GradientToParameter(_) => "gradient_to_parameter",
            OutputSpec::GradientToUserInput(_) => "gradient_to_user_input",
            OutputSpec::UserInputMutation(_) => "user_input_mutation",
            OutputSpec::Token(_) => "token",
            OutputSpec::ParameterMutation(_) => "parameter_mutation",
        }
    }
}

/// `data/weights/model_weights_config.json` and its constants twin: where
/// each named tensor's bytes are and how to view them.
#[derive(Debug, Deserialize)]
pub struct PayloadConfig {
    pub config: BTreeMap<String, PayloadMeta>,
}

#[derive(Debug, Deserialize)]
pub struct PayloadMeta {
    pub path_name: String,
    #[serde(default)]
    pub use_pickle: bool,
    pub tensor_meta: Option<TensorMeta>,
}

fn non_finite(s: &str) -> Option<f64> {
    match s {
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FloatRepr {
    Num(f64),
    Str(String),
}

impl FloatRepr {
    fn get<E: serde::de::Error>(self) -> Result<f64, E> {
        match self {
            FloatRepr::Num(v) => Ok(v),
            FloatRepr::Str(s) => non_finite(&s).ok_or_else(|| E::custom(format!("not a float: {s:?}"))),
        }
    }
}

fn float<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    FloatRepr::deserialize(d)?.get()
}

fn floats<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Vec::<FloatRepr>::deserialize(d)?
        .into_iter()
        .map(FloatRepr::get)
        .collect()
}
