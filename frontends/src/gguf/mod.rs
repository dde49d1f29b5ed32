//! GGUF files (llama.cpp's container, versions 2 and 3) with
//! `general.architecture = llama`: tensors are renamed to the Hugging Face
//! Llama names and dequantised to f32 on demand (lazily: nothing is decoded
//! until a tensor is materialised), the config comes from the `llama.*`
//! metadata, and the tokenizer from `tokenizer.ggml.*`. The graph is the
//! same one the Hugging Face frontend builds for a Llama folder.

pub mod quant;
pub mod reader;
mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use optc_ir::{DType, LazyTensor, Tensor, WeightError, WeightStore};

use crate::hf::{self, Architecture, Checkpoint, GenerationConfig, HfModel, ModelConfig, RopeScaling};
use quant::{dequantize, type_name, GgmlType};
use reader::{parse_header, GgufHeader, MetaValue, TensorInfo};

/// What went wrong reading a GGUF file; names the file and tensor or key.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed GGUF header {source}")]
    Format {
        path: PathBuf,
        source: reader::FormatError,
    },
    #[error("{path}: general.architecture {found:?} is not supported (supported: llama)")]
    Architecture { path: PathBuf, found: String },
    #[error("{path}: metadata '{key}': {message}")]
    Metadata {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error(
        "{path}: tensor '{tensor}' has type {ty}, which optc cannot dequantise (supported: {supported})"
    )]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        ty: String,
        supported: &'static str,
    },
    #[error("{path}: tensor '{tensor}': {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] hf::HfError),
    #[error(transparent)]
    Weights(#[from] WeightError),
}

/// One tensor's bytes in the mapped file, decoded on demand.
struct GgufTensor {
    map: Arc<Mmap>,
    range: (usize, usize),
    ty: GgmlType,
    shape: Vec<usize>,
    /// For attention q/k: undo llama.cpp's interleaving permutation of the
    /// rows (heads of `2 * half` rows), back to Hugging Face's layout.
    unpermute_heads: Option<usize>,
}

impl LazyTensor for GgufTensor {
    fn materialise(&self) -> Result<Tensor, WeightError> {
        let n: usize = self.shape.iter().product();
        let mut v = dequantize(self.ty, &self.map[self.range.0..self.range.1], n);
        if let Some(heads) = self.unpermute_heads {
            let rows = self.shape[0];
            let cols = n / rows.max(1);
            let half = rows / heads / 2;
            let mut out = vec![0f32; n];
            for h in 0..heads {
                for a in 0..2 {
                    for b in 0..half {
                        let new = h * 2 * half + a * half + b;
                        let old = h * 2 * half + b * 2 + a;
                        out[new * cols..(new + 1) * cols].copy_from_slice(&v[old * cols..(old + 1) * cols]);
                    }
                }
            }
            v = out;
        }
        Ok(Tensor::from_f32(DType::F32, &self.shape, &v))
    }
}

/// Typed metadata access with errors naming the file and key.
struct Meta<'a> {
    path: &'a Path,
    h: &'a GgufHeader,
}

impl Meta<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> GgufError {
        GgufError::Metadata {
            path: self.path.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        match self.h.metadata.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected an integer, found {v:?}"))),
        }
    }

    fn usize(&self, key: &str) -> Result<usize, GgufError> {
        self.opt_u64(key)?
            .map(|v| v as usize)
            .ok_or_else(|| self.err(key, "missing"))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        match self.h.metadata.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a number, found {v:?}"))),
        }
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.h.metadata.get(key).and_then(MetaValue::as_str)
    }
}

/// `blk.N.attn_q.weight` → `model.layers.N.self_attn.q_proj.weight`, etc.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The inverse of [`hf_name`], for error messages.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let g = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

fn config(path: &Path, h: &GgufHeader) -> Result<ModelConfig, GgufError> {
    let m = Meta { path, h };
    let arch = m.str("general.architecture").unwrap_or("(none)");
    if arch != "llama" {
        return Err(GgufError::Architecture {
            path: path.to_path_buf(),
            found: arch.to_string(),
        });
    }
    let hidden = m.usize("llama.embedding_length")?;
    let heads = m.usize("llama.attention.head_count")?;
    let kv = m
        .opt_u64("llama.attention.head_count_kv")?
        .map_or(heads, |v| v as usize);
    // hidden > 0 bounds heads by it (and 2 * heads, the rotary pairs).
    if hidden == 0 || heads == 0 || kv == 0 || heads % kv != 0 || hidden % heads != 0 {
        return Err(m.err(
            "llama.attention.head_count",
            format!("{heads} heads / {kv} kv heads do not divide hidden size {hidden}"),
        ));
    }
    let head_dim = m
        .opt_u64("llama.attention.key_length")?
        .map_or(hidden / heads, |v| v as usize);
    let vocab = match h
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
    {
        Some(t) => t.len(),
        None => m.usize("llama.vocab_size")?,
    };
    let rope_scaling = match m.str("llama.rope.scaling.type") {
        None | Some("none") => RopeScaling::Default,
        Some("linear") => RopeScaling::Linear {
            factor: m.opt_f64("llama.rope.scaling.factor")?.unwrap_or(1.0),
        },
        Some(other) => {
            return Err(m.err(
                "llama.rope.scaling.type",
                format!("'{other}' is not supported (supported: none, linear)"),
            ))
        }
    };
    if h.tensors.iter().any(|t| t.name == "rope_freqs.weight") {
        return Err(m.err(
            "rope_freqs.weight",
            "per-frequency rope factors (llama3 scaling) are not supported yet",
        ));
    }
    let ids = |key: &str| -> Result<Vec<i64>, GgufError> {
        Ok(m.opt_u64(key)?.map(|v| v as i64).into_iter().collect())
    };
    let config = ModelConfig {
        source: path.to_path_buf(),
        architecture: Architecture::Llama,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: m.usize("llama.feed_forward_length")?,
        num_layers: m.usize("llama.block_count")?,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim,
        norm_eps: m
            .opt_f64("llama.attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5),
        rope_theta: m.opt_f64("llama.rope.freq_base")?.unwrap_or(10000.0),
        rope_scaling,
        partial_rotary_factor: 1.0,
        max_position_embeddings: m.opt_u64("llama.context_length")?.map_or(2048, |v| v as usize),
        tie_word_embeddings: !h.tensors.iter().any(|t| t.name == "output.weight"),
        sliding_window: None,
        attention_bias: false,
        mlp_bias: false,
        hidden_act: "silu".into(),
        dtype: Some(DType::F32),
        bos_token_id: ids("tokenizer.ggml.bos_token_id")?.first().copied(),
        eos_token_ids: ids("tokenizer.ggml.eos_token_id")?,
    };
    match config.size_out_of_range() {
        Some((name, v)) => Err(m.err(
            gguf_key(name),
            format!("{v} is not in 1..={}", hf::config::MAX_CONFIG_SIZE),
        )),
        None => Ok(config),
    }
}

/// The GGUF metadata key a config size comes from (`size_out_of_range`
/// names it as config.json does).
fn gguf_key(name: &str) -> &'static str {
    match name {
        "hidden_size" => "llama.embedding_length",
        "num_attention_heads" => "llama.attention.head_count",
        "num_key_value_heads" => "llama.attention.head_count_kv",
        "num_hidden_layers" => "llama.block_count",
        "head_dim" => "llama.attention.key_length",
        "intermediate_size" => "llama.feed_forward_length",
        "vocab_size" => "tokenizer.ggml.tokens",
        "max_position_embeddings" => "llama.context_length",
        _ => "(size)",
    }
}

/// Maps the file and registers every tensor (under its Hugging Face name) as
/// a lazy f32 tensor.
fn weights(path: &Path, h: &GgufHeader, map: Arc<Mmap>, c: &ModelConfig) -> Result<WeightStore, GgufError> {
    let mut store = WeightStore::new();
    let terr = |t: &TensorInfo, message: String| GgufError::Tensor {
        path: path.to_path_buf(),
        tensor: t.name.clone(),
        message,
    };
    for t in &h.tensors {
        let Some(name) = hf_name(&t.name) else {
            return Err(terr(t, "is not a tensor of the llama architecture".into()));
        };
        let ty = GgmlType::from_code(t.ggml_type).ok_or_else(|| GgufError::UnsupportedType {
            path: path.to_path_buf(),
            tensor: t.name.clone(),
            ty: type_name(t.ggml_type),
            supported: GgmlType::SUPPORTED,
        })?;
        let n = t.numel().unwrap_or(u64::MAX);
        let bytes = ty.bytes_for(n).ok_or_else(|| {
            terr(
                t,
                format!(
                    "{n} values are not whole {} blocks, or too many to address",
                    type_name(t.ggml_type)
                ),
            )
        })?;
        let start = h.data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(bytes));
        let (start, end) = match (start, end) {
            (Some(s), Some(e)) if e <= map.len() as u64 && t.offset % h.alignment == 0 => {
                (s as usize, e as usize)
            }
            _ => {
                return Err(terr(
                    t,
                    format!(
                        "data at offset {} ({bytes} bytes) lies outside the file ({} bytes) or is misaligned",
                        t.offset,
                        map.len()
                    ),
                ))
            }
        };
        let unpermute_heads = if name.ends_with("q_proj.weight") {
            Some(c.num_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(c.num_kv_heads)
        } else {
            None
        };
        let shape = t.shape();
        let pairs_split = |heads: usize| {
            let pairs = heads.checked_mul(2);
            shape.first().zip(pairs).is_some_and(|(&r, p)| r % p == 0)
        };
        if unpermute_heads.is_some_and(|heads| !pairs_split(heads)) {
            return Err(terr(
                t,
                format!("shape {shape:?} does not split into rotary head pairs"),
            ));
        }
        let src = GgufTensor {
            map: map.clone(),
            range: (start, end),
            ty,
            shape: shape.clone(),
            unpermute_heads,
        };
        store.insert_lazy(name, DType::F32, shape, Arc::new(src))?;
    }
    Ok(store)
}

/// Loads a `.gguf` file into the same model the Hugging Face frontend builds.
pub fn load(path: impl AsRef<Path>) -> Result<HfModel, GgufError> {
    let path = path.as_ref().to_path_buf();
    let _span = tracing::info_span!("gguf_load", path = %path.display()).entered();
    let file = std::fs::File::open(&path).map_err(|source| GgufError::Io {
        path: path.clone(),
        source,
    })?;
    // SAFETY: read-only map; see WeightStore::open_safetensors.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|source| GgufError::Io {
        path: path.clone(),
        source,
    })?);
    let header = parse_header(&map).map_err(|source| GgufError::Format {
        path: path.clone(),
        source,
    })?;
    let config = config(&path, &header)?;
    let store = weights(&path, &header, map, &config)?;
    let names = store.names().map(String::from).collect();
    let checkpoint = Checkpoint::from_store(store, names, path.clone(), Some(gguf_name));
    let graph = hf::build_graph(&config, &checkpoint)?;
    let tokenizer = Some(tokenizer::from_metadata(&path, &header)?);
    let generation = GenerationConfig {
        bos_token_id: config.bos_token_id,
        eos_token_ids: config.eos_token_ids.clone(),
        ..Default::default()
    };
    let chat_template = header
        .metadata
        .get("tokenizer.chat_template")
        .and_then(MetaValue::as_str)
        .map(String::from);
    Ok(HfModel {
        dir: path,
        config,
        graph,
        weights: checkpoint.into_store(),
        tokenizer,
        generation,
        chat_template,
    })
}
