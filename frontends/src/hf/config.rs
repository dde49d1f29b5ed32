//! `config.json`: the architecture and its sizes, read in both the
//! transformers-4 and transformers-5 spellings.

use std::path::Path;

use optc_ir::DType;
use serde_json::{Map, Value};

use super::HfError;

/// The model families the frontend can build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Phi3,
    Gpt2,
}

impl Architecture {
    /// `(architectures entry, model_type)` for every supported family.
    pub const SUPPORTED: [(&'static str, &'static str, Architecture); 5] = [
        ("LlamaForCausalLM", "llama", Architecture::Llama),
        ("MistralForCausalLM", "mistral", Architecture::Mistral),
        ("Qwen2ForCausalLM", "qwen2", Architecture::Qwen2),
        ("Phi3ForCausalLM", "phi3", Architecture::Phi3),
        ("GPT2LMHeadModel", "gpt2", Architecture::Gpt2),
    ];

    /// The `architectures` class name.
    pub fn class_name(self) -> &'static str {
        Architecture::SUPPORTED
            .iter()
            .find(|(_, _, a)| *a == self)
            .map(|(c, _, _)| *c)
            .unwrap_or("?")
    }

    fn supported_list() -> String {
        Architecture::SUPPORTED
            .iter()
            .map(|(c, _, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How rotary frequencies are computed.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq[i] = theta^(-2i/d)`.
    Default,
    /// Llama 3's wavelength-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Positions divided by `factor`.
    Linear { factor: f64 },
}

/// Everything the graph builders need, normalised across spellings.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// The config.json this came from (for error messages).
    pub source: std::path::PathBuf,
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Epsilon of RMSNorm or LayerNorm.
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Fraction of each head that is rotated (Phi-3 style partial rotary).
    pub partial_rotary_factor: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Mistral-style local attention: keys older than this many positions
    /// are masked.
    pub sliding_window: Option<usize>,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// The activation of the MLP (`silu`, `gelu_new`, ...).
    pub hidden_act: String,
    /// The dtype the checkpoint declares (`torch_dtype` / `dtype`), if any.
    pub dtype: Option<DType>,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
}

/// Typed access to the JSON object with errors that name the file and key.
struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn err(&self, message: String) -> HfError {
        HfError::Config {
            path: self.path.to_path_buf(),
            message,
        }
    }

    fn get(&self, keys: &[&str]) -> Option<&Value> {
        keys.iter()
            .find_map(|k| self.map.get(*k).filter(|v| !v.is_null()))
    }

    fn opt_usize(&self, keys: &[&str]) -> Result<Option<usize>, HfError> {
        match self.get(keys) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(format!("'{}' must be a non-negative integer, found {v}", keys[0]))),
        }
    }

    fn usize(&self, keys: &[&str]) -> Result<usize, HfError> {
        self.opt_usize(keys)?
            .ok_or_else(|| self.err(format!("missing '{}'", keys.join("' or '"))))
    }

    fn opt_f64(&self, keys: &[&str]) -> Result<Option<f64>, HfError> {
        match self.get(keys) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("'{}' must be a number, found {v}", keys[0]))),
        }
    }

    fn opt_bool(&self, keys: &[&str]) -> Result<Option<bool>, HfError> {
        match self.get(keys) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("'{}' must be true or false, found {v}", keys[0]))),
        }
    }

    fn opt_str(&self, keys: &[&str]) -> Option<&str> {
        self.get(keys).and_then(Value::as_str)
    }

    /// Token ids written as one integer or a list.
    fn ids(&self, key: &str) -> Result<Vec<i64>, HfError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(|i| vec![i])
                .ok_or_else(|| self.err(format!("'{key}' must be an integer"))),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_i64()
                        .ok_or_else(|| self.err(format!("'{key}' must hold integers")))
                })
                .collect(),
            Some(v) => Err(self.err(format!("'{key}' must be an integer or a list, found {v}"))),
        }
    }
}

/// Maps a torch dtype name (`bfloat16`, `torch.float16`, `float32`, ...).
pub fn torch_dtype(name: &str) -> Option<DType> {
    Some(match name.trim_start_matches("torch.") {
        "float32" | "float" => DType::F32,
        "float16" | "half" => DType::F16,
        "bfloat16" => DType::BF16,
        _ => return None,
    })
}

fn architecture(f: &Fields) -> Result<Architecture, HfError> {
    let names: Vec<&str> = match f.map.get("architectures") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    for n in &names {
        if let Some((_, _, a)) = Architecture::SUPPORTED.iter().find(|(c, _, _)| c == n) {
            return Ok(*a);
        }
    }
    let model_type = f.opt_str(&["model_type"]);
    if names.is_empty() {
        if let Some((_, _, a)) = Architecture::SUPPORTED
            .iter()
            .find(|(_, t, _)| Some(*t) == model_type)
        {
            return Ok(*a);
        }
    }
    let found = if names.is_empty() {
        format!("model_type {:?}", model_type.unwrap_or("(none)"))
    } else {
        names.join(", ")
    };
    Err(HfError::UnknownArchitecture {
        path: f.path.to_path_buf(),
        found,
        supported: Architecture::supported_list(),
    })
}

/// Reads rope settings from `rope_parameters` (transformers 5) or
/// `rope_theta` + `rope_scaling` (transformers 4).
fn rope(f: &Fields) -> Result<(f64, RopeScaling, Option<f64>), HfError> {
    let params = f.map.get("rope_parameters").and_then(Value::as_object);
    let scaling = params.or_else(|| f.map.get("rope_scaling").and_then(Value::as_object));
    let inner = scaling.map(|m| Fields { path: f.path, map: m });
    let theta = match inner
        .as_ref()
        .and_then(|i| i.opt_f64(&["rope_theta"]).transpose())
    {
        Some(t) => t?,
        None => f.opt_f64(&["rope_theta"])?.unwrap_or(10000.0),
    };
    let partial = match inner
        .as_ref()
        .and_then(|i| i.opt_f64(&["partial_rotary_factor"]).transpose())
    {
        Some(p) => Some(p?),
        None => f.opt_f64(&["partial_rotary_factor"])?,
    };
    let Some(s) = inner else {
        return Ok((theta, RopeScaling::Default, partial));
    };
    let kind = s.opt_str(&["rope_type", "type"]).unwrap_or("default");
    let need = |k: &str| {
        s.opt_f64(&[k])?
            .ok_or_else(|| s.err(format!("rope scaling '{kind}' needs '{k}'")))
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        other => {
            return Err(s.err(format!(
                "rope type '{other}' is not supported (supported: default, linear, llama3)"
            )))
        }
    };
    Ok((theta, scaling, partial))
}

/// The largest size a config may give (2^24: far past every real model's
/// widths, vocabularies, layer counts and windows, and small enough that
/// products of two sizes fit in 64 bits).
pub const MAX_CONFIG_SIZE: usize = 1 << 24;

impl ModelConfig {
    /// Parses `config.json` text; `path` is only for messages.
    pub fn parse(path: &Path, text: &str) -> Result<ModelConfig, HfError> {
        let value: Value = serde_json::from_str(text).map_err(|e| HfError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let map = value.as_object().ok_or_else(|| HfError::Json {
            path: path.to_path_buf(),
            message: "expected a JSON object".into(),
        })?;
        let f = Fields { path, map };
        let architecture = architecture(&f)?;
        let gpt2 = architecture == Architecture::Gpt2;
        let hidden_size = f.usize(&["hidden_size", "n_embd"])?;
        let num_heads = f.usize(&["num_attention_heads", "n_head"])?;
        let num_layers = f.usize(&["num_hidden_layers", "n_layer"])?;
        let num_kv_heads = f.opt_usize(&["num_key_value_heads"])?.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(f.err(format!(
                "{num_heads} attention heads are not a multiple of {num_kv_heads} key/value heads"
            )));
        }
        let head_dim = match f.opt_usize(&["head_dim"])? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(f.err(format!(
                    "hidden_size {hidden_size} is not a multiple of {num_heads} heads"
                )))
            }
        };
        let intermediate_size = match f.opt_usize(&["intermediate_size", "n_inner"])? {
            Some(n) => n,
            None if gpt2 => hidden_size.saturating_mul(4),
            None => return Err(f.err("missing 'intermediate_size'".into())),
        };
        let (rope_theta, rope_scaling, partial) = rope(&f)?;
        let dtype = match f.opt_str(&["dtype", "torch_dtype"]) {
            None => None,
            Some(s) => Some(torch_dtype(s).ok_or_else(|| {
                f.err(format!(
                    "dtype '{s}' is not supported (supported: float32, float16, bfloat16)"
                ))
            })?),
        };
        let sliding_window = match architecture {
            Architecture::Mistral => f.opt_usize(&["sliding_window"])?,
            Architecture::Qwen2 if f.opt_bool(&["use_sliding_window"])?.unwrap_or(false) => {
                return Err(f.err("Qwen2 use_sliding_window = true is not supported yet".into()))
            }
            _ => None,
        };
        let vocab_size = f.usize(&["vocab_size"])?;
        let max_position_embeddings = f
            .opt_usize(&["max_position_embeddings", "n_positions"])?
            .unwrap_or(2048);
        let default_bias = architecture == Architecture::Qwen2 || gpt2;
        let hidden_act = f
            .opt_str(&["hidden_act", "activation_function"])
            .unwrap_or(if gpt2 { "gelu_new" } else { "silu" })
            .to_string();
        let config = ModelConfig {
            source: path.to_path_buf(),
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            norm_eps: f
                .opt_f64(&["rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps"])?
                .unwrap_or(if gpt2 { 1e-5 } else { 1e-6 }),
            rope_theta,
            rope_scaling,
            partial_rotary_factor: partial.unwrap_or(1.0),
            max_position_embeddings,
            tie_word_embeddings: f.opt_bool(&["tie_word_embeddings"])?.unwrap_or(gpt2),
            sliding_window,
            attention_bias: f.opt_bool(&["attention_bias"])?.unwrap_or(default_bias),
            mlp_bias: f.opt_bool(&["mlp_bias"])?.unwrap_or(gpt2),
            hidden_act,
            dtype,
            bos_token_id: f.ids("bos_token_id")?.first().copied(),
            eos_token_ids: f.ids("eos_token_id")?,
        };
        match config.size_out_of_range() {
            Some((name, v)) => Err(f.err(format!("{name} {v} is not in 1..={MAX_CONFIG_SIZE}"))),
            None => Ok(config),
        }
    }

    /// The first size that is zero or past any real model's
    /// (`MAX_CONFIG_SIZE`), with its config.json name: a corrupt or hostile
    /// config, caught before tables are built from its sizes, they are
    /// multiplied, or a zero vocabulary divides. (No sliding window is 0.)
    pub fn size_out_of_range(&self) -> Option<(&'static str, usize)> {
        let window = self.sliding_window.map(|w| ("sliding_window", w));
        [
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("num_hidden_layers", self.num_layers),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ]
        .into_iter()
        .chain(window)
        .find(|&(_, v)| !(1..=MAX_CONFIG_SIZE).contains(&v))
    }

    /// Reads and parses `config.json` in a model folder.
    pub fn load(dir: &Path) -> Result<ModelConfig, HfError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| HfError::Io {
            path: path.clone(),
            source,
        })?;
        ModelConfig::parse(&path, &text)
    }

    /// Channels of each head that rotary embedding rotates.
    pub fn rotary_dim(&self) -> usize {
        let r = (self.head_dim as f64 * self.partial_rotary_factor) as usize;
        r - r % 2
    }
}
