//! The ONNX backend node tests as a conformance score: for each case
//! folder (`model.onnx` + `test_data_set_N/{input,output}_K.pb`), import
//! the model, run the reference interpreter on every data set and compare
//! with the expected outputs the ONNX reference computed.
//!
//! A case is *passed* when every output of every data set matches (same
//! dtype and shape; floats within `atol + rtol·|expected|`, NaN matching
//! NaN; integers and bools exactly), *failed* when the numbers differ or a
//! supported op reports an error, and *unsupported* when the import stops at
//! something optc does not implement (op, attribute, dtype, non-tensor
//! value). Panics are caught and count as failures, so one bad case cannot
//! hide the rest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use optc_ir::Tensor;
use prost::Message;

use super::import::ImportOptions;
use super::proto::{ModelProto, TensorProto};
use super::tensor::to_tensor;
use super::{default_opset, OnnxErrorKind};

/// The result of one case.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Unsupported(String),
}

/// One case: its folder name, the op types its graph uses, the outcome.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub ops: Vec<String>,
    pub outcome: Outcome,
}

/// Tolerances the ONNX backend tests use by default.
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-7;

fn read_tensor(path: &Path) -> Result<Tensor, Outcome> {
    let bytes = std::fs::read(path).map_err(|e| Outcome::Failed(format!("{}: {e}", path.display())))?;
    let t = TensorProto::decode(bytes.as_slice())
        .map_err(|e| Outcome::Failed(format!("{}: not a TensorProto: {e}", path.display())))?;
    to_tensor(&t, None).map_err(|e| {
        if e.contains("not supported") {
            Outcome::Unsupported(format!("test data: {e}"))
        } else {
            Outcome::Failed(format!("{}: {e}", path.display()))
        }
    })
}

/// `prefix_K.pb` files of a data set in K order; a `.non_tensor` marker
/// (written for sequence/map/optional values) makes the case unsupported.
fn read_values(dir: &Path, prefix: &str) -> Result<Vec<Tensor>, Outcome> {
    let mut out = Vec::new();
    for k in 0.. {
        let pb = dir.join(format!("{prefix}_{k}.pb"));
        if dir.join(format!("{prefix}_{k}.non_tensor")).exists() {
            return Err(Outcome::Unsupported(
                "sequence, map or optional values are not supported".into(),
            ));
        }
        if !pb.exists() {
            break;
        }
        out.push(read_tensor(&pb)?);
    }
    Ok(out)
}

/// Compares one output the way the ONNX backend tests do.
pub fn compare(got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Result<(), String> {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        return Err(format!(
            "got {}{:?}, want {}{:?}",
            got.dtype(),
            got.shape(),
            want.dtype(),
            want.shape()
        ));
    }
    if !want.dtype().is_float() {
        let (g, w) = (got.to_i64_vec(), want.to_i64_vec());
        if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
            return Err(format!("element {i}: got {}, want {}", g[i], w[i]));
        }
        return Ok(());
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    for i in 0..g.len() {
        let ok = if w[i].is_nan() {
            g[i].is_nan()
        } else if w[i].is_infinite() {
            g[i] == w[i]
        } else {
            (g[i] - w[i]).abs() <= atol + rtol * w[i].abs()
        };
        if !ok {
            return Err(format!("element {i}: got {}, want {}", g[i], w[i]));
        }
    }
    Ok(())
}

fn tolerance(dir: &Path) -> (f64, f64) {
    let Ok(text) = std::fs::read_to_string(dir.join("tolerance.json")) else {
        return (RTOL, ATOL);
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return (RTOL, ATOL);
    };
    (
        v["rtol"].as_f64().unwrap_or(RTOL),
        v["atol"].as_f64().unwrap_or(ATOL),
    )
}

fn op_types(m: &ModelProto) -> Vec<String> {
    let mut ops: Vec<String> = m
        .graph
        .iter()
        .flat_map(|g| g.node.iter().map(|n| n.op_type.clone()))
        .collect();
    ops.sort();
    ops.dedup();
    ops
}

/// Imports (fixing graph inputs the importer needs as constants) and runs
/// one data set.
fn run_data_set(bytes: &[u8], m: &ModelProto, set: &Path, tol: (f64, f64)) -> Outcome {
    let inputs = match read_values(set, "input") {
        Ok(v) => v,
        Err(o) => return o,
    };
    let expected = match read_values(set, "output") {
        Ok(v) => v,
        Err(o) => return o,
    };
    let Some(g) = &m.graph else {
        return Outcome::Failed("no graph".into());
    };
    let initialized: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let names: Vec<&str> = g
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !initialized.contains(n))
        .collect();
    // Inputs may be omitted at the end when optional.
    let given: BTreeMap<String, Tensor> = names
        .iter()
        .zip(inputs)
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    let mut opts = ImportOptions::default();
    let mut fixed_ints = false;
    let model = loop {
        match super::load_bytes(bytes, None, &opts) {
            Ok(model) => break model,
            Err(e) => match e.kind {
                OnnxErrorKind::NeedsStatic { ref input, .. }
                    if given.contains_key(input) && !opts.fixed_inputs.contains_key(input) =>
                {
                    opts.fixed_inputs.insert(input.clone(), given[input].clone());
                }
                // A value computed from inputs must be static: fix the
                // integer inputs (shapes, sizes) it may come from, once.
                OnnxErrorKind::NeedsStatic { .. } if !fixed_ints => {
                    fixed_ints = true;
                    for (name, t) in &given {
                        if t.dtype().is_int() {
                            opts.fixed_inputs.insert(name.clone(), t.clone());
                        }
                    }
                }
                ref k if k.is_unsupported() => return Outcome::Unsupported(k.to_string()),
                k => return Outcome::Failed(format!("import: {k}")),
            },
        }
    };
    let feed: BTreeMap<String, Tensor> = given
        .into_iter()
        .filter(|(n, _)| !opts.fixed_inputs.contains_key(n))
        .collect();
    let got = match optc_ir::run(&model.graph, &feed, &model.weights) {
        Ok(v) => v,
        Err(e) => return Outcome::Failed(format!("run: {e}")),
    };
    if got.len() != expected.len() {
        return Outcome::Failed(format!("{} outputs, want {}", got.len(), expected.len()));
    }
    for (k, (g, w)) in got.iter().zip(&expected).enumerate() {
        if let Err(e) = compare(g, w, tol.0, tol.1) {
            return Outcome::Failed(format!("output {k}: {e}"));
        }
    }
    Outcome::Passed
}

/// Runs one case folder.
pub fn run_case(dir: &Path) -> CaseResult {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (ops, outcome) = match std::fs::read(dir.join("model.onnx")) {
        Err(e) => (Vec::new(), Outcome::Failed(format!("model.onnx: {e}"))),
        Ok(bytes) => match ModelProto::decode(bytes.as_slice()) {
            Err(e) => (Vec::new(), Outcome::Failed(format!("model.onnx: {e}"))),
            Ok(m) => {
                let ops = op_types(&m);
                let outcome = match default_opset(&m) {
                    Err(k) if k.is_unsupported() => Outcome::Unsupported(k.to_string()),
                    Err(k) => Outcome::Failed(k.to_string()),
                    Ok(_) => run_sets(dir, &bytes, &m),
                };
                (ops, outcome)
            }
        },
    };
    CaseResult { name, ops, outcome }
}

fn run_sets(dir: &Path, bytes: &[u8], m: &ModelProto) -> Outcome {
    let tol = tolerance(dir);
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_"))
                })
                .collect()
        })
        .unwrap_or_default();
    sets.sort();
    if sets.is_empty() {
        return Outcome::Failed("no test_data_set_* folder".into());
    }
    for set in &sets {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_data_set(bytes, m, set, tol)));
        let o = match r {
            Ok(o) => o,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Outcome::Failed(format!("panicked: {msg}"))
            }
        };
        if o != Outcome::Passed {
            return o;
        }
    }
    Outcome::Passed
}

/// Every case under `root` (each sub-folder with a `model.onnx`).
pub fn run_dir(root: &Path) -> std::io::Result<Report> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    Ok(Report {
        cases: dirs.iter().map(|d| run_case(d)).collect(),
    })
}

/// All case results, with the summary and the per-op table.
pub struct Report {
    pub cases: Vec<CaseResult>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.outcome == Outcome::Passed).count()
    }

    pub fn failed(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
            .count()
    }

    pub fn unsupported(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Unsupported(_)))
            .count()
    }

    /// `passed P of N (X.X%), failed F, unsupported U`.
    pub fn summary(&self) -> String {
        let n = self.cases.len().max(1);
        format!(
            "passed {} of {} ({:.1}%), failed {}, unsupported {}",
            self.passed(),
            self.cases.len(),
            100.0 * self.passed() as f64 / n as f64,
            self.failed(),
            self.unsupported()
        )
    }

    /// Per op (a case counts under the op its graph uses; cases of ONNX
    /// function bodies, `*_expanded`, count together): passed / failed /
    /// unsupported, as a Markdown table.
    pub fn table(&self) -> String {
        let mut per: BTreeMap<String, [usize; 3]> = BTreeMap::new();
        for c in &self.cases {
            let key = if c.ops.len() == 1 {
                c.ops[0].clone()
            } else if c.name.contains("_expanded") {
                "(expanded functions)".to_string()
            } else {
                format!(
                    "{} (+{} more)",
                    c.ops.first().cloned().unwrap_or_default(),
                    c.ops.len().saturating_sub(1)
                )
            };
            let e = per.entry(key).or_default();
            match c.outcome {
                Outcome::Passed => e[0] += 1,
                Outcome::Failed(_) => e[1] += 1,
                Outcome::Unsupported(_) => e[2] += 1,
            }
        }
        let mut s = String::from("| op | passed | failed | unsupported |\n|---|---|---|---|\n");
        for (op, [p, f, u]) in per {
            s.push_str(&format!("| {op} | {p} | {f} | {u} |\n"));
        }
        s
    }

    /// One line per case that did not pass: name, outcome, reason.
    pub fn details(&self) -> String {
        let mut s = String::new();
        for c in &self.cases {
            match &c.outcome {
                Outcome::Passed => {}
                Outcome::Failed(m) => s.push_str(&format!("FAILED {}: {m}\n", c.name)),
                Outcome::Unsupported(m) => s.push_str(&format!("UNSUPPORTED {}: {m}\n", c.name)),
            }
        }
        s
    }
}
