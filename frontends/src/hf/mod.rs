//! Hugging Face model folders: `config.json`, `model.safetensors` (or a
//! sharded `model.safetensors.index.json`), `tokenizer.json` and
//! `generation_config.json`, built into the plain graph a trace of the
//! transformers code gives (no fused ops: fusion is the passes' job).

mod checkpoint;
pub mod config;
pub mod generation;
mod gpt2;
mod llama;
mod rope;
pub mod tokenizer;
mod trace;

use std::path::{Path, PathBuf};

use optc_ir::{Graph, WeightStore};

pub use checkpoint::Checkpoint;
pub use config::{Architecture, ModelConfig, RopeScaling};
pub use generation::GenerationConfig;
pub use tokenizer::HfTokenizer;

/// What went wrong loading a model folder; every variant names the file
/// (and the tensor or key) it is about.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: architecture {found} is not supported (supported: {supported})")]
    UnknownArchitecture {
        path: PathBuf,
        found: String,
        supported: String,
    },
    #[error("{dir}: no model.safetensors or model.safetensors.index.json")]
    NoCheckpoint { dir: PathBuf },
    #[error("{file}: missing tensor '{tensor}'")]
    MissingTensor { file: PathBuf, tensor: String },
    #[error("{file}: tensor '{tensor}' has shape {found:?} but the config implies {expected:?}")]
    TensorShape {
        file: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: tensor '{tensor}' has dtype {dtype}; weights must be f32, f16 or bf16")]
    TensorDType {
        file: PathBuf,
        tensor: String,
        dtype: optc_ir::DType,
    },
    #[error(transparent)]
    Weights(#[from] optc_ir::WeightError),
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("building the {arch} graph: {source}")]
    Build {
        arch: &'static str,
        #[source]
        source: optc_ir::BuildError,
    },
}

/// A loaded model: its config, graph, weights and (if present) tokenizer.
pub struct HfModel {
    pub dir: PathBuf,
    pub config: ModelConfig,
    /// `%ids: i64[B, S]` → `%logits: DT[B, S, vocab]`, DT the model dtype.
    pub graph: Graph,
    pub weights: WeightStore,
    pub tokenizer: Option<HfTokenizer>,
    pub generation: GenerationConfig,
    /// The Jinja chat template, as shipped (applied by the runtime's chat API).
    pub chat_template: Option<String>,
}

/// Builds the graph of a config from a checkpoint's tensors.
pub fn build_graph(config: &ModelConfig, checkpoint: &Checkpoint) -> Result<Graph, HfError> {
    match config.architecture {
        Architecture::Gpt2 => gpt2::build(config, checkpoint),
        _ => llama::build(config, checkpoint),
    }
}

/// Loads a model folder. Weights are memory-mapped, not read: building the
/// graph only looks at tensor names, dtypes and shapes.
pub fn load(dir: impl AsRef<Path>) -> Result<HfModel, HfError> {
    let dir = dir.as_ref().to_path_buf();
    let _span = tracing::info_span!("hf_load", dir = %dir.display()).entered();
    let config = ModelConfig::load(&dir)?;
    let checkpoint = Checkpoint::open(&dir)?;
    let graph = build_graph(&config, &checkpoint)?;
    let tokenizer = HfTokenizer::load_if_present(&dir)?;
    let generation = GenerationConfig::load(&dir, &config)?;
    let chat_template = tokenizer::chat_template(&dir)?;
    Ok(HfModel {
        dir,
        config,
        graph,
        weights: checkpoint.into_store(),
        tokenizer,
        generation,
        chat_template,
    })
}
