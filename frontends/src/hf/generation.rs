//! `generation_config.json`: end-of-sequence ids and sampling defaults.

use std::path::Path;

use serde_json::Value;

use super::{HfError, ModelConfig};

/// Generation defaults of a model; absent fields fall back to the config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationConfig {
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
    pub do_sample: bool,
    pub temperature: Option<f64>,
    pub top_k: Option<u64>,
    pub top_p: Option<f64>,
    pub max_new_tokens: Option<u64>,
    pub repetition_penalty: Option<f64>,
}

fn ids(v: Option<&Value>) -> Vec<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

impl GenerationConfig {
    /// Reads the file if present; otherwise takes bos/eos from the config.
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<GenerationConfig, HfError> {
        let path = dir.join("generation_config.json");
        let mut g = GenerationConfig {
            bos_token_id: config.bos_token_id,
            eos_token_ids: config.eos_token_ids.clone(),
            ..Default::default()
        };
        if !path.exists() {
            return Ok(g);
        }
        let text = std::fs::read_to_string(&path).map_err(|source| HfError::Io {
            path: path.clone(),
            source,
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| HfError::Json {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if let Some(b) = ids(v.get("bos_token_id")).first() {
            g.bos_token_id = Some(*b);
        }
        let eos = ids(v.get("eos_token_id"));
        if !eos.is_empty() {
            g.eos_token_ids = eos;
        }
        g.pad_token_id = ids(v.get("pad_token_id")).first().copied();
        g.do_sample = v.get("do_sample").and_then(Value::as_bool).unwrap_or(false);
        g.temperature = v.get("temperature").and_then(Value::as_f64);
        g.top_k = v.get("top_k").and_then(Value::as_u64);
        g.top_p = v.get("top_p").and_then(Value::as_f64);
        g.max_new_tokens = v.get("max_new_tokens").and_then(Value::as_u64);
        g.repetition_penalty = v.get("repetition_penalty").and_then(Value::as_f64);
        Ok(g)
    }
}
