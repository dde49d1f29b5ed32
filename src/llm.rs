//! `LLM`: load a model, compile it, and generate text with the shared
//! runtime (scheduler, block manager, sampler, detokenizer).
//!
//! The default target is the CPU: the model is compiled with the serving
//! pipeline (fusions, then `insert_kv_cache`) and the step graph runs on
//! [`CpuExecutor`] with a paged KV cache. [`Target::Reference`] instead runs
//! the model graph on the reference interpreter, recomputing each
//! sequence's history at every step: slow, but the oracle.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::executor::{CpuExecutor, CudaExecutor};
use crate::frontends::hf::{HfModel, HfTokenizer};
use crate::frontends::{gguf, hf};
use crate::ir::{run, DType, Graph, Tensor, WeightStore};
use crate::runtime::block_manager::SeqId;
use crate::runtime::detokenize::Detokenizer;
use crate::runtime::engine::{Engine, Event, Executor, StepSeq};
use crate::runtime::sampler::SamplingParams;
use crate::runtime::scheduler::{FinishReason, RequestError, SchedulerConfig};
use crate::{Compiler, TokenizerDecoder};

/// Why loading or generating failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("{0}")]
    Load(String),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("executing a step: {0}")]
    Exec(String),
    #[error("{0}")]
    Tokenizer(String),
    /// `generate` was called while requests added through `LLM::engine`
    /// were unfinished.
    #[error("{0} request(s) added through engine() are unfinished; step or abort them before generate")]
    Busy(usize),
}

/// Runs steps on the reference interpreter, without a KV cache: each
/// sampling sequence's whole history is recomputed. Weights are
/// materialised once, when the executor is made.
pub struct InterpreterExecutor {
    graph: Graph,
    weights: WeightStore,
    vocab: usize,
}

impl InterpreterExecutor {
    pub fn new(graph: Graph, weights: &WeightStore, vocab: usize) -> Result<InterpreterExecutor, LlmError> {
        let mut owned = WeightStore::new();
        for &w in graph.weights() {
            if let crate::ir::NodeKind::Weight { key, .. } = &graph.node(w).kind {
                if !owned.contains(key) {
                    let t = weights.get(key).map_err(|e| LlmError::Load(e.to_string()))?;
                    owned
                        .insert(key.clone(), t)
                        .map_err(|e| LlmError::Load(e.to_string()))?;
                }
            }
        }
        Ok(InterpreterExecutor {
            graph,
            weights: owned,
            vocab,
        })
    }
}

impl Executor for InterpreterExecutor {
    fn needs_history(&self) -> bool {
        true
    }

    fn step(&mut self, seqs: &[StepSeq]) -> Result<Vec<Vec<f32>>, String> {
        let mut rows = Vec::new();
        for s in seqs.iter().filter(|s| s.sample) {
            let ids: Vec<i64> = s.history.iter().map(|&t| i64::from(t)).collect();
            let input = Tensor::from_i64(DType::I64, &[1, ids.len()], &ids);
            let out = run(
                &self.graph,
                &BTreeMap::from([("ids".to_string(), input)]),
                &self.weights,
            )
            .map_err(|e| e.to_string())?;
            let logits = out[0].cast(DType::F32).to_f32_vec();
            rows.push(logits[(ids.len() - 1) * self.vocab..ids.len() * self.vocab].to_vec());
        }
        Ok(rows)
    }
}

/// Where steps run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Target {
    /// Host kernels with a paged KV cache.
    #[default]
    Cpu,
    /// The reference interpreter without a cache (recomputes histories).
    Reference,
    /// NVRTC-compiled CUDA kernels and cuBLASLt on GPU 0, with a paged KV
    /// cache in device memory.
    Nvrtc,
}

/// Sizes of the runtime.
#[derive(Clone, Debug)]
pub struct LlmOptions {
    pub max_batch_size: usize,
    pub max_num_tokens: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    /// Run the default pass pipeline before serving (the reference target
    /// only: the CPU target always needs the serving pipeline).
    pub compile: bool,
    pub target: Target,
    /// Store f32 linear and embedding weights in this dtype: f16 or bf16
    /// (the `cast_weights` pass), or i8 (`quantize_int8` for linear
    /// weights, f16 for the rest). `None` keeps the checkpoint's dtypes.
    pub weight_dtype: Option<DType>,
    /// nvrtc target: size the KV cache from this fraction of GPU memory
    /// (like vLLM's `gpu_memory_utilization`) instead of `num_blocks`.
    pub gpu_memory_utilization: Option<f32>,
}

impl Default for LlmOptions {
    fn default() -> Self {
        LlmOptions {
            max_batch_size: 8,
            max_num_tokens: 512,
            num_blocks: 256,
            block_size: 16,
            compile: true,
            target: Target::Cpu,
            weight_dtype: None,
            gpu_memory_utilization: None,
        }
    }
}

impl LlmOptions {
    /// Sizes an engine can run with: none zero (a zero token budget or
    /// batch would schedule nothing, forever), batches of at most 2^20,
    /// blocks of at most 4,096 tokens, a cache whose token count fits in
    /// 32 bits, and a GPU memory fraction in (0, 1].
    pub fn check(&self) -> Result<(), LlmError> {
        let bad = |m: String| Err(LlmError::Load(m));
        if self.max_batch_size == 0 || self.max_num_tokens == 0 {
            return bad(format!(
                "max_batch_size ({}) and max_num_tokens ({}) must be at least 1",
                self.max_batch_size, self.max_num_tokens
            ));
        }
        if self.max_batch_size > 1 << 20 {
            return bad(format!("max_batch_size {} is over 2^20", self.max_batch_size));
        }
        if !(1..=4096).contains(&self.block_size) {
            return bad(format!("block_size {} is not in 1..=4096", self.block_size));
        }
        if self.num_blocks == 0
            || self
                .num_blocks
                .checked_mul(self.block_size)
                .is_none_or(|t| t > u32::MAX as usize)
        {
            return bad(format!(
                "a cache of {} blocks of {} tokens is empty or holds 2^32 tokens or more",
                self.num_blocks, self.block_size
            ));
        }
        if let Some(u) = self.gpu_memory_utilization {
            if !(u > 0.0 && u <= 1.0) {
                return bad(format!("gpu_memory_utilization {u} is not in (0, 1]"));
            }
        }
        Ok(())
    }
}

/// A prompt as text (tokenized with the model's tokenizer) or token ids.
#[derive(Clone, Debug)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// One request's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
}

/// A model ready to generate.
pub struct LLM {
    pub(crate) engine: Engine<Box<dyn Executor>>,
    tokenizer: Option<HfTokenizer>,
    /// The chat template the model ships, if any.
    pub chat_template: Option<String>,
    /// Tokens in the model's vocabulary.
    pub vocab_size: usize,
}

fn load(path: &Path) -> Result<HfModel, LlmError> {
    let r = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        gguf::load(path).map_err(|e| e.to_string())
    } else {
        hf::load(path).map_err(|e| e.to_string())
    };
    r.map_err(LlmError::Load)
}

impl LLM {
    /// Loads a Hugging Face folder or `.gguf` file and compiles it.
    pub fn new(path: impl AsRef<Path>, opts: LlmOptions) -> Result<LLM, LlmError> {
        LLM::new_with_progress(path, opts, &mut |_| {})
    }

    /// [`LLM::new`], calling `stage` as loading moves on ("loading",
    /// "compiling", "lowering"), for progress displays.
    pub fn new_with_progress(
        path: impl AsRef<Path>,
        opts: LlmOptions,
        stage: &mut dyn FnMut(&str),
    ) -> Result<LLM, LlmError> {
        opts.check()?;
        stage("loading");
        let mut m = load(path.as_ref())?;
        let vocab = m.config.vocab_size;
        let mut num_blocks = opts.num_blocks;
        let exec: Box<dyn Executor> = match opts.target {
            Target::Nvrtc => {
                if opts.weight_dtype.is_some() {
                    return Err(LlmError::Load(
                        "--weight-dtype is a CPU-target option: the nvrtc target runs the checkpoint's own dtype"
                            .into(),
                    ));
                }
                optc_codegen::nvrtc::available().map_err(LlmError::Load)?;
                stage("compiling");
                let mut c = Compiler::new();
                c.set_pipeline(crate::passes::Pipeline::serving(opts.block_size));
                c.compile(&mut m.graph, &mut m.weights)
                    .map_err(|e| LlmError::Load(e.to_string()))?;
                stage("uploading weights");
                let blocks = opts.gpu_memory_utilization.is_none().then_some(opts.num_blocks);
                // No more than every sequence of a full batch at the
                // longest context can hold.
                let mut next_report = 0usize;
                let most =
                    opts.max_batch_size * m.config.max_position_embeddings.div_ceil(opts.block_size) + 1;
                let exec = CudaExecutor::new(
                    &m.graph,
                    &m.weights,
                    blocks,
                    opts.gpu_memory_utilization.unwrap_or(0.9),
                    most,
                    vocab,
                    &mut |done, total| {
                        // Every 5%: enough for a progress display.
                        if done >= next_report || done == total {
                            stage(&format!("uploading weights {} / {} MB", done >> 20, total >> 20));
                            next_report = done + (total / 20).max(1);
                        }
                    },
                )?;
                num_blocks = exec.num_blocks;
                Box::new(exec)
            }
            Target::Cpu => {
                stage("compiling");
                let mut c = Compiler::new();
                let mut pipeline = crate::passes::Pipeline::serving(opts.block_size);
                if let Some(d) = opts.weight_dtype {
                    let at = pipeline
                        .passes
                        .iter()
                        .position(|p| p.name == "insert_kv_cache")
                        .unwrap_or(0);
                    // int8: linear weights quantised, what is left (an
                    // embedding table) in f16.
                    let half = if d == DType::I8 { DType::F16 } else { d };
                    let mut cast = crate::passes::PassSpec::new("cast_weights");
                    cast.options
                        .insert("dtype".into(), toml::Value::String(half.to_string()));
                    pipeline.passes.insert(at, cast);
                    if d == DType::I8 {
                        pipeline
                            .passes
                            .insert(at, crate::passes::PassSpec::new("quantize_int8"));
                    }
                }
                c.set_pipeline(pipeline);
                c.compile(&mut m.graph, &mut m.weights)
                    .map_err(|e| LlmError::Load(e.to_string()))?;
                stage("lowering");
                Box::new(CpuExecutor::new(&m.graph, &m.weights, opts.num_blocks, vocab)?)
            }
            Target::Reference => {
                if opts.compile {
                    stage("compiling");
                    Compiler::new()
                        .compile(&mut m.graph, &mut m.weights)
                        .map_err(|e| LlmError::Load(e.to_string()))?;
                }
                Box::new(InterpreterExecutor::new(m.graph, &m.weights, vocab)?)
            }
        };
        let cfg = SchedulerConfig {
            max_batch_size: opts.max_batch_size,
            max_num_tokens: opts.max_num_tokens,
            num_blocks,
            block_size: opts.block_size,
            max_model_len: m.config.max_position_embeddings.min(num_blocks * opts.block_size),
            vocab_size: vocab,
        };
        let eos: Vec<u32> = m
            .generation
            .eos_token_ids
            .iter()
            .filter_map(|&e| u32::try_from(e).ok())
            .collect();
        Ok(LLM {
            engine: Engine::new(cfg, exec, eos),
            tokenizer: m.tokenizer,
            chat_template: m.chat_template,
            vocab_size: vocab,
        })
    }

    fn ids(&self, p: &Prompt) -> Result<Vec<u32>, LlmError> {
        match p {
            Prompt::Ids(ids) => Ok(ids.clone()),
            Prompt::Text(t) => {
                let tok = self.tokenizer.as_ref().ok_or_else(|| {
                    LlmError::Tokenizer("the model has no tokenizer; give token ids".into())
                })?;
                let ids = tok
                    .encode(t, true)
                    .map_err(|e| LlmError::Tokenizer(e.to_string()))?;
                Ok(ids.into_iter().map(|i| i as u32).collect())
            }
        }
    }

    /// Generates for every prompt (batched by the scheduler); calls
    /// `on_text(index, piece)` as text becomes available (streaming).
    /// Refuses to start while requests added through [`LLM::engine`] are
    /// unfinished (their events would be consumed here and lost); when it
    /// fails part way (a prompt the scheduler refuses, an executor or
    /// tokenizer error) it aborts the requests it added, so the engine is
    /// left as it found it.
    pub fn generate_stream(
        &mut self,
        prompts: &[Prompt],
        params: &SamplingParams,
        mut on_text: impl FnMut(usize, &str),
    ) -> Result<Vec<Output>, LlmError> {
        let busy = self.engine.scheduler().num_unfinished();
        if busy > 0 {
            return Err(LlmError::Busy(busy));
        }
        let mut ids = Vec::new();
        for p in prompts {
            ids.push(self.ids(p)?);
        }
        let mut index: HashMap<SeqId, usize> = HashMap::new();
        let run = self.run_requests(ids, params, &mut index, &mut on_text);
        if run.is_err() {
            for seq in index.keys() {
                self.engine.abort(*seq);
            }
        }
        run
    }

    /// Queues `prompts` (recording each request's place in `index`) and
    /// steps the engine until all of them finish.
    fn run_requests(
        &mut self,
        prompts: Vec<Vec<u32>>,
        params: &SamplingParams,
        index: &mut HashMap<SeqId, usize>,
        on_text: &mut impl FnMut(usize, &str),
    ) -> Result<Vec<Output>, LlmError> {
        let mut detok: HashMap<SeqId, Detokenizer> = HashMap::new();
        let mut outputs: Vec<Option<Output>> = vec![None; prompts.len()];
        for (i, prompt) in prompts.into_iter().enumerate() {
            let seq = self.engine.add(prompt.clone(), params.clone())?;
            index.insert(seq, i);
            detok.insert(seq, Detokenizer::new(&prompt, params.stop.clone()));
        }
        let mut finished: HashMap<SeqId, (Vec<u32>, FinishReason)> = HashMap::new();
        // Tokens handed to each request's detokenizer so far.
        let mut seen: HashMap<SeqId, usize> = HashMap::new();
        while index.keys().any(|s| !finished.contains_key(s)) {
            let events = self.engine.step().map_err(LlmError::Exec)?;
            for e in events {
                match e {
                    Event::Token { seq, sample } => {
                        // A step can return two tokens of one request (the
                        // asynchronous engine's fallback): those after a stop
                        // string ended it are not part of its output.
                        if finished.contains_key(&seq) {
                            continue;
                        }
                        let (Some(&i), Some(tok), Some(d)) =
                            (index.get(&seq), &self.tokenizer, detok.get_mut(&seq))
                        else {
                            continue;
                        };
                        let delta = d
                            .push(&TokenizerDecoder(tok), sample.token)
                            .map_err(LlmError::Tokenizer)?;
                        let n = seen.entry(seq).or_insert(0);
                        *n += 1;
                        on_text(i, &delta.text);
                        if delta.stopped {
                            // The scheduler may hold a token past this one
                            // (from the same step): not part of the output.
                            let mut out = self.engine.abort(seq).unwrap_or_default();
                            out.truncate(*n);
                            finished.insert(seq, (out, FinishReason::Stop));
                        }
                    }
                    Event::Finished { seq, output, reason } => {
                        if index.contains_key(&seq) {
                            finished.entry(seq).or_insert((output, reason));
                        }
                    }
                }
            }
        }
        for (seq, (token_ids, reason)) in finished {
            let (Some(&i), Some(d)) = (index.get(&seq), detok.get_mut(&seq)) else {
                continue;
            };
            let rest = d.finish();
            on_text(i, &rest.text);
            outputs[i] = Some(Output {
                token_ids,
                text: d.text().to_string(),
                finish_reason: reason,
            });
        }
        outputs
            .into_iter()
            .enumerate()
            .map(|(i, o)| o.ok_or_else(|| LlmError::Exec(format!("request {i} ended without an output"))))
            .collect()
    }

    /// Renders a conversation with the model's chat template (as
    /// transformers' `apply_chat_template` with the generation prompt does):
    /// the text the model continues from.
    pub fn render_chat(&self, messages: &[(&str, &str)]) -> Result<String, LlmError> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| LlmError::Tokenizer("the model ships no chat template".into()))?;
        let mut env = minijinja::Environment::new();
        env.add_template("chat", template)
            .map_err(|e| LlmError::Tokenizer(format!("chat template: {e}")))?;
        let msgs: Vec<BTreeMap<&str, &str>> = messages
            .iter()
            .map(|(role, content)| BTreeMap::from([("role", *role), ("content", *content)]))
            .collect();
        env.get_template("chat")
            .and_then(|t| t.render(minijinja::context! { messages => msgs, add_generation_prompt => true }))
            .map_err(|e| LlmError::Tokenizer(format!("chat template: {e}")))
    }

    /// Answers a conversation: renders it with the chat template, tokenizes
    /// it without adding special tokens (the template has them), and generates.
    pub fn chat(&mut self, messages: &[(&str, &str)], params: &SamplingParams) -> Result<Output, LlmError> {
        let text = self.render_chat(messages)?;
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| LlmError::Tokenizer("the model has no tokenizer".into()))?;
        let ids = tok
            .encode(&text, false)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?;
        let ids = ids.into_iter().map(|i| i as u32).collect();
        let mut out = self.generate(&[Prompt::Ids(ids)], params)?;
        Ok(out.remove(0))
    }

    /// Token ids of a text with the model's tokenizer (special tokens added
    /// when `special`).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, LlmError> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| LlmError::Tokenizer("the model has no tokenizer".into()))?;
        let ids = tok
            .encode(text, special)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?;
        Ok(ids.into_iter().map(|i| i as u32).collect())
    }

    /// The engine, for serving loops of your own (add requests between
    /// steps, abort them, read the scheduler's counters).
    pub fn engine(&mut self) -> &mut Engine<Box<dyn Executor>> {
        &mut self.engine
    }

    /// The prefix cache's counters (hits, queries, evictions).
    pub fn cache_stats(&self) -> crate::runtime::block_manager::CacheStats {
        self.engine.scheduler().blocks().stats()
    }

    /// Generates for every prompt and returns the outputs.
    pub fn generate(&mut self, prompts: &[Prompt], params: &SamplingParams) -> Result<Vec<Output>, LlmError> {
        self.generate_stream(prompts, params, |_, _| {})
    }
}
