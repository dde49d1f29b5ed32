//! ONNX models (`.onnx`): protobuf reading, import into the IR, export
//! from it, and the conformance runner over the ONNX backend node tests.
//!
//! - [`load`] / [`load_bytes`]: a `ModelProto` to an IR graph plus weights.
//! - [`export`]: an IR graph to a `ModelProto` (see [`export::export`]).
//! - [`conformance`]: runs ONNX backend node test folders against the
//!   reference interpreter.

pub mod conformance;
pub mod export;
pub mod import;
pub mod ops;
pub mod proto;
pub mod tensor;

use std::path::{Path, PathBuf};

use optc_ir::{Graph, WeightStore};
use prost::Message;

pub use import::ImportOptions;
use proto::ModelProto;

/// Opsets of the default domain this importer maps (older nodes keep the
/// semantics of their own opset where the handler knows it).
pub const MIN_OPSET: i64 = 7;
pub const MAX_OPSET: i64 = 28;

/// An error reading or importing one ONNX file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct OnnxError {
    pub path: PathBuf,
    pub kind: OnnxErrorKind,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum OnnxErrorKind {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a valid ONNX protobuf: {0}")]
    Decode(String),
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Graph(String),
    #[error("{0}")]
    Type(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("initializer '{name}': {message}")]
    Tensor { name: String, message: String },
    /// One node failed; `unsupported` marks gaps in optc rather than
    /// invalid models.
    #[error("{node}: {message}")]
    Node {
        node: String,
        message: String,
        unsupported: bool,
    },
    #[error("{node}: input '{input}' must be known when the model is imported (a constant or computed from constants and shapes), but it is a graph input")]
    NeedsStatic { node: String, input: String },
}

impl OnnxErrorKind {
    /// Whether this is a gap in optc (op, attribute, dtype, feature) rather
    /// than a malformed or invalid model.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            OnnxErrorKind::Unsupported(_)
                | OnnxErrorKind::Node {
                    unsupported: true,
                    ..
                }
        ) || matches!(self, OnnxErrorKind::Type(m) if m.contains("not supported"))
            || matches!(self, OnnxErrorKind::Tensor { message, .. } if message.contains("not supported"))
            || matches!(self, OnnxErrorKind::Model(m) if m.contains("not supported"))
    }
}

/// An imported model.
pub struct OnnxModel {
    pub graph: Graph,
    pub weights: WeightStore,
    /// The default-domain opset the model declares.
    pub opset: i64,
    pub ir_version: i64,
    pub producer: String,
}

/// Whether a path looks like an ONNX file (by extension).
pub fn is_onnx(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "onnx")
}

/// Reads and imports a `.onnx` file; external data is looked up next to it.
pub fn load(path: impl AsRef<Path>) -> Result<OnnxModel, OnnxError> {
    load_with(path, &ImportOptions::default())
}

/// [`load`] with options (fixed inputs).
pub fn load_with(path: impl AsRef<Path>, opts: &ImportOptions) -> Result<OnnxModel, OnnxError> {
    let path = path.as_ref();
    let err = |kind| OnnxError {
        path: path.to_path_buf(),
        kind,
    };
    let bytes = std::fs::read(path).map_err(|e| err(OnnxErrorKind::Io(e)))?;
    let base = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    import_bytes(&bytes, base, opts).map_err(err)
}

/// Imports a model from bytes (no external data unless `base` is given).
pub fn load_bytes(bytes: &[u8], base: Option<&Path>, opts: &ImportOptions) -> Result<OnnxModel, OnnxError> {
    import_bytes(bytes, base, opts).map_err(|kind| OnnxError {
        path: PathBuf::from("<bytes>"),
        kind,
    })
}

/// Decodes a `ModelProto`.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, OnnxErrorKind> {
    ModelProto::decode(bytes).map_err(|e| OnnxErrorKind::Decode(e.to_string()))
}

/// The default-domain opset a model declares.
pub fn default_opset(m: &ModelProto) -> Result<i64, OnnxErrorKind> {
    let mut opset = None;
    for o in &m.opset_import {
        match o.domain.as_str() {
            "" | "ai.onnx" => opset = Some(o.version),
            _ => {}
        }
    }
    // A model of optimizer ops only imports the training domain; its graph
    // has no default-domain node, so the newest opset is as good as any.
    let training_only = m.opset_import.iter().any(|o| o.domain == import::TRAINING_DOMAIN);
    let opset = opset.or(training_only.then_some(MAX_OPSET)).ok_or_else(|| {
        let domains: Vec<&str> = m.opset_import.iter().map(|o| o.domain.as_str()).collect();
        OnnxErrorKind::Model(format!(
            "the model imports no opset of the default ONNX domain (only {domains:?}); other domains are not supported"
        ))
    })?;
    if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
        return Err(OnnxErrorKind::Model(format!(
            "opset {opset} is not supported (optc maps opsets {MIN_OPSET} to {MAX_OPSET})"
        )));
    }
    Ok(opset)
}

fn import_bytes(bytes: &[u8], base: Option<&Path>, opts: &ImportOptions) -> Result<OnnxModel, OnnxErrorKind> {
    let m = decode(bytes)?;
    let opset = default_opset(&m)?;
    let g = m
        .graph
        .as_ref()
        .ok_or_else(|| OnnxErrorKind::Model("the model has no graph".into()))?;
    let imported = import::import_graph(g, opset, base, opts)?;
    Ok(OnnxModel {
        graph: imported.graph,
        weights: imported.weights,
        opset,
        ir_version: m.ir_version,
        producer: m.producer_name.clone(),
    })
}
