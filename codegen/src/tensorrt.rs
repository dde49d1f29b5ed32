//! The tensorrt target: what TensorRT builds an engine from. optc does not
//! link TensorRT (it is not installable on every machine optc builds on);
//! it writes a folder that TensorRT's own tools turn into an engine:
//! - `model.onnx` + `model.onnx.data`: the decoder-with-past graph
//!   (`Pipeline::decoder_with_past`) as standard ONNX, weights in the side
//!   file (ONNX's protobuf stops at 2 GiB);
//! - `build_engine.sh`: `trtexec` with the optimisation profile (the
//!   smallest, typical and largest shape of every input) and
//!   `--stronglyTyped`, so the engine computes in the checkpoint's dtypes;
//! - `network.json`: the inputs and outputs with their symbolic shapes, the
//!   profile and the cache layout: what a runner needs to feed the engine.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use optc_ir::{Bindings, Graph, TensorType, WeightStore};

/// Why the network could not be written; names the input or file.
#[derive(Debug, thiserror::Error)]
pub enum TensorRtError {
    /// A network input the profile cannot describe.
    #[error("input %{name}: {message}")]
    Input { name: String, message: String },
    /// Profile limits that give no valid shape range.
    #[error("{0}")]
    Profile(String),
    /// An op with no ONNX form (named by the exporter).
    #[error(transparent)]
    Export(#[from] optc_frontends::onnx::export::ExportError),
    /// The folder or one of its files could not be written.
    #[error("cannot write {0}: {1}")]
    Io(String, std::io::Error),
}

/// The shapes the engine accepts: TensorRT specialises its kernels for a
/// range of every dynamic dim, fixed when the engine is built.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineProfile {
    /// Sequences per call.
    pub max_batch: i64,
    /// Most new tokens per call (the longest prompt prefilled at once).
    pub max_input_len: i64,
    /// Longest sequence (past plus new tokens) a call may reach.
    pub max_seq_len: i64,
}

/// One tensor of the network, as `network.json` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkTensor {
    /// The ONNX tensor name a runner binds.
    pub name: String,
    /// Its dtype and shape, symbolic dims by name.
    pub ty: TensorType,
}

/// What [`write`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Token ids, then each layer's past key and value.
    pub inputs: Vec<NetworkTensor>,
    /// Logits, then each layer's present key and value.
    pub outputs: Vec<NetworkTensor>,
    /// Attention layers (pairs of past/present cache tensors).
    pub layers: usize,
    /// The profile's shapes of every input: smallest, typical, largest.
    pub shapes: BTreeMap<String, [Vec<i64>; 3]>,
    /// The most sequences a call takes: the profile's, or the network's
    /// own where its batch is fixed (torch.export's batch of one).
    pub max_batch: i64,
}

/// The token ids' batch dim: a symbol the profile ranges over, or fixed.
enum Batch {
    Sym(String),
    Fixed(i64),
}

/// The values of the batch (`B`), new-token (`S`) and past (`P`) symbols
/// at the profile's three points. The typical point is a decode step of a
/// full batch halfway through the longest sequence: the call an engine
/// makes most. TensorRT sizes its activations for the largest point, so
/// the new tokens there are the longest prompt, not the longest sequence.
fn profile_bindings(
    g: &Graph,
    batch: &Batch,
    seq: &str,
    past: &str,
    p: &EngineProfile,
) -> Result<[Bindings; 3], TensorRtError> {
    if p.max_batch < 1 || p.max_seq_len < 2 || !(1..=p.max_seq_len).contains(&p.max_input_len) {
        return Err(TensorRtError::Profile(format!(
            "the profile needs a batch of at least 1, a sequence of at least 2 tokens and a prompt of 1 to that many, \
             got {}, {} and {}",
            p.max_batch, p.max_seq_len, p.max_input_len
        )));
    }
    let mut known = vec![seq, past];
    if let Batch::Sym(b) = batch {
        known.push(b);
    }
    if let Some(other) = g.symbols().into_iter().find(|s| !known.contains(&s.as_str())) {
        return Err(TensorRtError::Profile(format!(
            "the network's inputs use the symbol {other}, which the profile cannot bound (only {})",
            known.join(", ")
        )));
    }
    let at = |b: i64, s: i64, p: i64| {
        let mut x = Bindings::from([(seq.into(), s), (past.into(), p)]);
        if let Batch::Sym(name) = batch {
            x.insert(name.clone(), b);
        }
        x
    };
    Ok([
        at(1, 1, 0),
        at(p.max_batch, 1, p.max_seq_len / 2),
        at(p.max_batch, p.max_input_len, p.max_seq_len - 1),
    ])
}

fn dims_text(d: &[i64]) -> String {
    d.iter().map(i64::to_string).collect::<Vec<_>>().join("x")
}

/// The `trtexec` line that builds the engine.
fn build_script(net: &Network) -> String {
    let mut s = format!(
        r#"#!/bin/sh
# Builds a TensorRT engine from the network optc {} wrote next to this
# script. Needs TensorRT's trtexec on PATH. Usage:
#   sh DIR/build_engine.sh [ENGINE [more trtexec options]]
# ENGINE defaults to DIR/model.plan; paths stay relative to where you run it.
set -e
dir=$(dirname "$0")
engine=${{1:-"$dir/model.plan"}}
[ $# -gt 0 ] && shift
exec trtexec --onnx="$dir/model.onnx" --saveEngine="$engine" --stronglyTyped \
"#,
        env!("CARGO_PKG_VERSION")
    );
    for (k, flag) in ["--minShapes", "--optShapes", "--maxShapes"].iter().enumerate() {
        let shapes: Vec<String> = net
            .shapes
            .iter()
            .map(|(name, pts)| format!("{name}:{}", dims_text(&pts[k])))
            .collect();
        let _ = writeln!(s, "  '{flag}={}' \\", shapes.join(","));
    }
    s.push_str("  \"$@\"\n");
    s
}

fn json_tensor(t: &NetworkTensor) -> serde_json::Value {
    // A constant dim as a number, a symbolic one as its expression.
    let dims: Vec<serde_json::Value> =
        t.ty.shape
            .dims()
            .iter()
            .map(|d| d.as_const().map_or_else(|| d.to_string().into(), Into::into))
            .collect();
    serde_json::json!({"name": t.name, "dtype": t.ty.dtype.name(), "shape": dims})
}

/// `network.json`: the contract between the folder and whatever runs the
/// engine.
fn manifest(net: &Network, batch: &Batch, seq: &str, past: &str, p: &EngineProfile) -> String {
    let batch = match batch {
        Batch::Sym(b) => serde_json::Value::from(b.as_str()),
        Batch::Fixed(c) => serde_json::Value::from(*c),
    };
    let point = |k: usize| -> BTreeMap<&str, &Vec<i64>> {
        net.shapes.iter().map(|(n, pts)| (n.as_str(), &pts[k])).collect()
    };
    let doc = serde_json::json!({
        "producer": format!("optc {}", env!("CARGO_PKG_VERSION")),
        "model": "model.onnx",
        "symbols": {"batch": batch, "new_tokens": seq, "past": past},
        "cache": {
            "layers": net.layers,
            "past": "past_key_values.L.key / .value: [batch, kv_heads, past, head_dim]",
            "present": "present.L.key / .value: [batch, kv_heads, past + new_tokens, head_dim], the next call's past",
        },
        "max_batch_size": net.max_batch,
        "max_input_len": p.max_input_len,
        "max_seq_len": p.max_seq_len,
        "inputs": net.inputs.iter().map(json_tensor).collect::<Vec<_>>(),
        "outputs": net.outputs.iter().map(json_tensor).collect::<Vec<_>>(),
        "profile": {"min": point(0), "opt": point(1), "max": point(2)},
    });
    let mut text = serde_json::to_string_pretty(&doc).expect("a JSON value prints");
    text.push('\n');
    text
}

/// Writes the folder (see the module docs) for a decoder-with-past graph:
/// its first input holds token ids `[batch, new_tokens]` and `past` names
/// the past-length symbol of its `past_key_values.*` inputs.
pub fn write(
    dir: &Path,
    g: &Graph,
    weights: &WeightStore,
    past: &str,
    profile: &EngineProfile,
) -> Result<Network, TensorRtError> {
    let inputs: Vec<NetworkTensor> = g
        .inputs()
        .iter()
        .map(|&i| NetworkTensor {
            name: g.node_name(i).unwrap_or_default().to_string(),
            ty: g.node(i).outputs[0].clone(),
        })
        .collect();
    let ids = inputs
        .first()
        .ok_or_else(|| TensorRtError::Profile("the network has no inputs".into()))?;
    let (batch, seq) = match ids.ty.shape.dims() {
        [b, s] if s.as_sym().is_some() => {
            let batch = match (b.as_sym(), b.as_const()) {
                (Some(name), _) => Batch::Sym(name.to_string()),
                (None, Some(c)) => Batch::Fixed(c),
                _ => {
                    return Err(TensorRtError::Input {
                        name: ids.name.clone(),
                        message: format!("{}: the batch dim is neither a symbol nor a number", ids.ty),
                    })
                }
            };
            (batch, s.as_sym().unwrap_or_default().to_string())
        }
        _ => {
            return Err(TensorRtError::Input {
                name: ids.name.clone(),
                message: format!(
                    "{} is not token ids [batch, new_tokens], the new tokens a symbol",
                    ids.ty
                ),
            })
        }
    };
    let points = profile_bindings(g, &batch, &seq, past, profile)?;
    let mut shapes = BTreeMap::new();
    for t in &inputs {
        let at = points
            .iter()
            .map(|b| {
                t.ty.shape
                    .eval(b)
                    .map(|d| d.into_iter().map(|x| x as i64).collect())
            })
            .collect::<Result<Vec<Vec<i64>>, String>>()
            .map_err(|message| TensorRtError::Input {
                name: t.name.clone(),
                message,
            })?;
        shapes.insert(t.name.clone(), at.try_into().expect("three points"));
    }
    let outputs = g
        .outputs()
        .iter()
        .map(|o| NetworkTensor {
            name: o.name.clone(),
            ty: o.ty.clone(),
        })
        .collect();
    let layers = inputs
        .iter()
        .filter(|t| t.name.starts_with("past_key_values."))
        .count()
        / 2;
    let max_batch = match batch {
        Batch::Sym(_) => profile.max_batch,
        Batch::Fixed(c) => c,
    };
    let net = Network {
        inputs,
        outputs,
        layers,
        shapes,
        max_batch,
    };
    let io = |p: &Path, e| TensorRtError::Io(p.display().to_string(), e);
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    optc_frontends::onnx::export::write(&dir.join("model.onnx"), g, weights, true)?;
    let script = dir.join("build_engine.sh");
    std::fs::write(&script, build_script(&net)).map_err(|e| io(&script, e))?;
    let json = dir.join("network.json");
    std::fs::write(&json, manifest(&net, &batch, &seq, past, profile)).map_err(|e| io(&json, e))?;
    Ok(net)
}
