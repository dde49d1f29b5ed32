//! Pipelines: an ordered list of passes, each with `enabled` and options,
//! from the built-in default or a TOML file:
//!
//! ```toml
//! [[pass]]
//! name = "constant_fold"
//! options = { max_elements = 1024 }
//!
//! [[pass]]
//! name = "cse"
//! enabled = false
//! ```

use crate::PassError;

/// One entry of a pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct PassSpec {
    pub name: String,
    pub enabled: bool,
    pub options: toml::Table,
}

impl PassSpec {
    pub fn new(name: &str) -> PassSpec {
        PassSpec {
            name: name.into(),
            enabled: true,
            options: toml::Table::new(),
        }
    }
}

/// An ordered list of passes.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    pub passes: Vec<PassSpec>,
}

impl Pipeline {
    /// The standard pipeline (the pattern fusions join it as they land).
    pub fn default_pipeline() -> Pipeline {
        Pipeline {
            passes: [
                "canonicalize",
                "constant_fold",
                "cse",
                "dce",
                "fuse_rmsnorm",
                "fuse_layernorm",
                "fuse_rope",
                "fuse_swiglu",
                "fuse_gelu",
                "fuse_attention",
                "fuse_add_rmsnorm",
                "dce",
                "matmul_to_linear",
                "fuse_gemm",
                "dce",
                "simplify_outer_products",
            ]
            .iter()
            .map(|n| PassSpec::new(n))
            .collect(),
        }
    }

    /// The default pipeline followed by `insert_kv_cache` and a cleanup:
    /// the step graph the serving runtime executes.
    pub fn serving(block_size: usize) -> Pipeline {
        let mut p = Pipeline::default_pipeline();
        let mut kv = PassSpec::new("insert_kv_cache");
        kv.options
            .insert("block_size".into(), toml::Value::Integer(block_size as i64));
        p.passes.push(kv);
        // The step graph moves Q/K to heads-first for rope and back for
        // paged attention; rope runs as well in place.
        p.passes.push(PassSpec::new("sink_rope_transposes"));
        for n in ["canonicalize", "cse", "dce"] {
            p.passes.push(PassSpec::new(n));
        }
        p
    }

    /// What the tensorrt target exports: the default passes, then
    /// `insert_past_kv` (the decoder-with-past graph: contiguous
    /// `past_key_values` inputs, `present` outputs) and a cleanup.
    pub fn decoder_with_past() -> Pipeline {
        let mut p = Pipeline::default_pipeline();
        for n in ["insert_past_kv", "canonicalize", "cse", "dce"] {
            p.passes.push(PassSpec::new(n));
        }
        p
    }

    /// Parses a pipeline file; `path` is only for messages.
    pub fn from_toml(path: &str, text: &str) -> Result<Pipeline, PassError> {
        let err = |message: String| PassError::Pipeline {
            path: path.into(),
            message,
        };
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| err(e.to_string()))?;
        if let Some(k) = doc.keys().find(|k| *k != "pass") {
            return Err(err(format!(
                "unknown key '{k}' (a pipeline is a list of [[pass]] tables)"
            )));
        }
        let list = match doc.get("pass") {
            None => return Ok(Pipeline { passes: Vec::new() }),
            Some(toml::Value::Array(a)) => a,
            Some(_) => return Err(err("'pass' must be an array of tables ([[pass]])".into())),
        };
        let mut passes = Vec::new();
        for (i, entry) in list.iter().enumerate() {
            let t = entry
                .as_table()
                .ok_or_else(|| err(format!("pass #{} is not a table", i + 1)))?;
            if let Some(k) = t
                .keys()
                .find(|k| !["name", "enabled", "options"].contains(&k.as_str()))
            {
                return Err(err(format!(
                    "pass #{}: unknown key '{k}' (expected name, enabled, options)",
                    i + 1
                )));
            }
            let name = t
                .get("name")
                .and_then(toml::Value::as_str)
                .ok_or_else(|| err(format!("pass #{} needs a string 'name'", i + 1)))?;
            let enabled = match t.get("enabled") {
                None => true,
                Some(toml::Value::Boolean(b)) => *b,
                Some(v) => {
                    return Err(err(format!(
                        "pass '{name}': 'enabled' must be true or false, found {v}"
                    )))
                }
            };
            let options = match t.get("options") {
                None => toml::Table::new(),
                Some(toml::Value::Table(o)) => o.clone(),
                Some(v) => {
                    return Err(err(format!(
                        "pass '{name}': 'options' must be a table, found {v}"
                    )))
                }
            };
            passes.push(PassSpec {
                name: name.into(),
                enabled,
                options,
            });
        }
        Ok(Pipeline { passes })
    }

    /// Reads a pipeline file.
    pub fn load(path: &std::path::Path) -> Result<Pipeline, PassError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PassError::Pipeline {
            path: p.clone(),
            message: e.to_string(),
        })?;
        Pipeline::from_toml(&p, &text)
    }
}
