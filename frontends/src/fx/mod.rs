//! torch.export archives (`.pt2`, what `torch.export.save` writes) into the
//! IR: the AutoDeploy path from an unmodified PyTorch model.
//!
//! - [`archive`]: the zip container and its format markers.
//! - [`schema`]: the serialized `ExportedProgram` (JSON, schema 8.x).
//! - [`sym`]: symbolic sizes (sympy `srepr`) into IR dims.
//! - `import`: the graph walk, argument access and the per-node type check
//!   against torch's recorded tensor metadata.
//! - `ops`: one file per ATen op family, each mapping targets to IR ops.
//! - `weights`: parameters, buffers and constants out of the archive.
//!
//! The graph is the one torch recorded, op for op (no fusion; passes do
//! that). Every node's IR type is checked against the dtype and sizes torch
//! stored for it, so a mapping mistake is an error at import, not a wrong
//! number later. Symbols keep torch's names (`s70`).

pub mod archive;
mod import;
mod ops;
pub mod schema;
pub mod sym;
mod weights;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use optc_ir::{Graph, WeightStore};

pub use ops::supported_targets;

/// What went wrong, with the archive it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct FxError {
    pub path: String,
    pub kind: FxErrorKind,
}

/// One ATen target the importer has no mapping for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    pub target: String,
    pub count: usize,
    pub first_node: String,
}

/// Every unmapped target, for one error that lists them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmappedList(pub Vec<Unmapped>);

impl fmt::Display for UnmappedList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, u) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{} ({}x, first at node {})", u.target, u.count, u.first_node)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FxErrorKind {
    #[error("cannot read the file: {0}")]
    Io(#[source] std::io::Error),
    #[error("not a readable .pt2 archive: {0}")]
    Archive(String),
    #[error("{entry}: {message}")]
    Json { entry: String, message: String },
    #[error(
        "serialized with export schema {found}; optc reads schema {}.x (torch 2.6 and later)",
        schema::SCHEMA_MAJOR
    )]
    SchemaVersion { found: String },
    #[error("{} ATen op(s) optc cannot map: {list}", list.0.len())]
    Unmapped { list: UnmappedList },
    #[error("weight {name}: {message}")]
    Weight { name: String, message: String },
    #[error("node {node} ({target}): {message}")]
    Node {
        node: String,
        target: String,
        message: String,
    },
    #[error("graph signature: {0}")]
    Signature(String),
    #[error("the imported graph is invalid: {0}")]
    Graph(String),
}

/// An imported program: the graph, its weights, and what torch knows about
/// the symbols.
pub struct FxModel {
    pub graph: Graph,
    pub weights: WeightStore,
    /// Each symbol's range from the export's `range_constraints`
    /// (`min`, `max`; `None` is unbounded).
    pub ranges: BTreeMap<String, (Option<i64>, Option<i64>)>,
    pub torch_version: String,
    /// `(major, minor)` of the export schema.
    pub schema_version: (i64, i64),
}

impl FxModel {
    /// Checks symbol values against the export's range constraints (torch
    /// only guarantees the graph for values inside them).
    pub fn check_bindings(&self, bindings: &optc_ir::Bindings) -> Result<(), String> {
        for (sym, &(lo, hi)) in &self.ranges {
            let Some(&v) = bindings.get(sym) else { continue };
            if lo.is_some_and(|lo| v < lo) || hi.is_some_and(|hi| v > hi) {
                let show = |b: Option<i64>| b.map_or("unbounded".to_string(), |b| b.to_string());
                return Err(format!(
                    "symbol {sym} = {v} is outside the range the program was exported for ({}..={})",
                    show(lo),
                    show(hi)
                ));
            }
        }
        Ok(())
    }
}

/// Is `path` a `.pt2` file (by extension)?
pub fn is_pt2(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("pt2"))
}

/// Loads a `.pt2` archive written by `torch.export.save`.
pub fn load(path: impl AsRef<Path>) -> Result<FxModel, FxError> {
    let path = path.as_ref();
    let err = |kind| FxError {
        path: path.display().to_string(),
        kind,
    };
    let file = std::fs::File::open(path).map_err(|e| err(FxErrorKind::Io(e)))?;
    // SAFETY: the map is read-only and dropped before returning; a file
    // changed underneath us can give wrong bytes (an import error), not UB
    // in safe code that only reads slices.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(FxErrorKind::Io(e)))?;
    load_bytes(&map).map_err(err)
}

/// Loads an archive held in memory (the fuzz target's entry point).
pub fn load_bytes(bytes: &[u8]) -> Result<FxModel, FxErrorKind> {
    let ar = archive::Archive::parse(bytes).map_err(FxErrorKind::Archive)?;
    let models = ar.models();
    let name = match models.as_slice() {
        [one] => one.clone(),
        [] => return Err(FxErrorKind::Archive("no program under models/".into())),
        many if many.iter().any(|m| m == "model") => "model".to_string(),
        many => {
            return Err(FxErrorKind::Archive(format!(
                "several programs ({}) and none named \"model\"",
                many.join(", ")
            )))
        }
    };
    let entry = format!("models/{name}.json");
    let text = ar.text(&entry).map_err(FxErrorKind::Archive)?;
    let program = parse_program(text, &entry)?;
    import::import(&ar, &name, &program)
}

/// Parses the program JSON, checking the schema version before the rest
/// (so a newer schema says so instead of failing on a field).
fn parse_program(text: &str, entry: &str) -> Result<schema::ExportedProgram, FxErrorKind> {
    let json = |message: String| FxErrorKind::Json {
        entry: entry.to_string(),
        message,
    };
    let raw: serde_json::Value = serde_json::from_str(text).map_err(|e| json(e.to_string()))?;
    let v = raw
        .get("schema_version")
        .ok_or_else(|| json("no schema_version".into()))?;
    let part = |k: &str| v.get(k).and_then(|m| m.as_i64());
    if part("major") != Some(schema::SCHEMA_MAJOR) {
        let show = |p: Option<i64>| p.map_or("?".to_string(), |m| m.to_string());
        return Err(FxErrorKind::SchemaVersion {
            found: format!("{}.{}", show(part("major")), show(part("minor"))),
        });
    }
    serde_json::from_value(raw).map_err(|e| json(e.to_string()))
}
