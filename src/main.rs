//! The `optc` driver.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use optc::frontends::{fx, gguf, hf, onnx};
use optc::ir::{self, Graph, Tensor, WeightStore};
use optc::passes::check::CheckConfig;
use optc::passes::{DumpConfig, Pipeline};
use optc::Compiler;

#[derive(Parser)]
#[command(
    name = "optc",
    version,
    about = "Optimizing graph compiler and runtime for LLM inference"
)]
struct Cli {
    /// More log output (-v: info, -vv: debug, -vvv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load a model (a Hugging Face folder, .gguf, .pt2, .onnx or .ir) and summarise it.
    Inspect {
        /// A model folder (config.json + safetensors), a .gguf file, a
        /// torch.export archive (.pt2), an ONNX model (.onnx), or a graph in
        /// optc's text form (.ir).
        file: PathBuf,
        /// Print the whole graph in the text form instead of the summary.
        #[arg(long)]
        ir: bool,
    },
    /// Run a model on the reference interpreter and write its logits.
    Logits {
        /// A Hugging Face model folder or a .gguf file.
        model: PathBuf,
        /// Token ids, comma-separated (e.g. 1,2,3).
        #[arg(long, value_delimiter = ',', conflicts_with = "text")]
        ids: Vec<i64>,
        /// Text to tokenize with the model's tokenizer (special tokens added
        /// as the tokenizer's post-processor says, like transformers).
        #[arg(long)]
        text: Option<String>,
        /// Write an f32 tensor `logits` of shape [tokens, vocab] here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a pass pipeline on a model and write the resulting text IR.
    Compile {
        /// A model folder, a .gguf file, a torch.export archive (.pt2), or a
        /// .ir graph.
        model: PathBuf,
        /// A pipeline TOML file (default: the built-in pipeline).
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Write the text IR after these passes (`all` or names, comma-separated).
        #[arg(long, value_delimiter = ',')]
        dump_after: Vec<String>,
        /// Where --dump-after writes `NN-PASS.ir` and `NN-PASS.diff`.
        #[arg(long, default_value = "optc-dump")]
        dump_dir: PathBuf,
        /// Run the interpreter before and after every pass on the same random
        /// inputs and fail if a pass changes the results.
        #[arg(long)]
        check_passes: bool,
        /// Max abs error a pass may introduce under --check-passes.
        #[arg(long, default_value_t = 1e-4)]
        check_tolerance: f64,
        /// Symbol values for --check-passes inputs, e.g. `S=8` (others are 4).
        #[arg(long = "check-symbol", value_name = "SYM=N")]
        check_symbols: Vec<String>,
        /// Weights for a .ir graph (needed by --check-passes).
        #[arg(long = "weights", value_name = "FILE")]
        weights: Vec<PathBuf>,
        /// Write the final text IR here (default: standard output), or the
        /// ONNX model with --emit onnx.
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// What to write: `ir` (optc's text form) or `onnx` (an ONNX model,
        /// opset 21, weights as initializers).
        #[arg(long, default_value = "ir", value_parser = ["ir", "onnx"])]
        emit: String,
        /// With --emit onnx: put the weights in OUT.data next to the model
        /// instead of inside it (needed above 2 GiB).
        #[arg(long)]
        external_data: bool,
        /// Use the serving pipeline: the default passes, then
        /// insert_kv_cache (the step graph the runtime executes).
        #[arg(long, conflicts_with = "pipeline")]
        kv_cache: bool,
        /// Tokens per KV-cache block (with --kv-cache).
        #[arg(long, default_value_t = 16)]
        block_size: usize,
        /// Also lower the result for this target (`cpu`, `nvrtc`) and print
        /// its plan (kernels, reference fallbacks, buffers) to standard
        /// error; or `tensorrt`: run the decoder-with-past pipeline and
        /// write the network, its trtexec build script and manifest to
        /// the folder -o names.
        #[arg(long)]
        target: Option<String>,
        /// With --target nvrtc: only plan the lowering (kernels by kind,
        /// the fusions decided at lowering), which needs no GPU; nothing
        /// is compiled or uploaded.
        #[arg(long, requires = "target")]
        plan_only: bool,
        /// With --target tensorrt: the most sequences one engine call takes.
        #[arg(long, default_value_t = 8)]
        max_batch_size: i64,
        /// With --target tensorrt: the most new tokens one call takes (the
        /// longest prompt prefilled at once).
        #[arg(long, default_value_t = 1024)]
        max_input_len: i64,
        /// With --target tensorrt: the longest sequence (past + new
        /// tokens) the engine takes (default: the model's
        /// max_position_embeddings, at most 4096).
        #[arg(long)]
        max_seq_len: Option<i64>,
    },
    /// Generate text with a model (compiled for the CPU target by default).
    Generate {
        /// A Hugging Face model folder or a .gguf file.
        model: PathBuf,
        /// Where steps run: `cpu` (host kernels, paged KV cache), `nvrtc`
        /// (CUDA kernels and cuBLASLt on GPU 0), or `reference` (the
        /// interpreter, no cache: slow, the oracle).
        #[arg(long, default_value = "cpu")]
        target: String,
        /// Store f32 weights as f16 or bf16 (cast_weights), or int8
        /// (quantize_int8: blocks of 32 with f32 scales).
        #[arg(long)]
        weight_dtype: Option<String>,
        /// The prompt (tokenized with the model's tokenizer).
        #[arg(long, conflicts_with = "ids")]
        prompt: Option<String>,
        /// The prompt as token ids, comma-separated.
        #[arg(long, value_delimiter = ',')]
        ids: Vec<u32>,
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long)]
        seed: Option<u64>,
        /// Stop strings (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        /// Print one JSON object (ids, text, finish reason, timings) instead of streaming text.
        #[arg(long)]
        json: bool,
        /// Send the prompt as a user message through the model's chat template.
        #[arg(long)]
        chat: bool,
        /// nvrtc target: the fraction of GPU memory optc may use in all
        /// (weights, activations and the KV cache, which takes what is
        /// left), as in vLLM (default 0.9).
        #[arg(long)]
        gpu_memory_utilization: Option<f32>,
    },
    /// Measure serving throughput and latency on a standard workload.
    Bench {
        /// A Hugging Face model folder or a .gguf file.
        model: PathBuf,
        #[arg(long, default_value = "cpu")]
        target: String,
        /// Store f32 weights as f16 or bf16 (cast_weights), or int8
        /// (quantize_int8: blocks of 32 with f32 scales).
        #[arg(long)]
        weight_dtype: Option<String>,
        /// Requests, all submitted at once.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Random prompt tokens per request.
        #[arg(long, default_value_t = 128)]
        input_len: usize,
        /// Tokens generated per request (end-of-sequence ignored).
        #[arg(long, default_value_t = 128)]
        output_len: usize,
        /// Measured runs (after one warm-up run).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Most tokens one step processes (prefill chunk budget).
        #[arg(long, default_value_t = 2048)]
        max_num_tokens: usize,
        /// Print one JSON object per run.
        #[arg(long)]
        json: bool,
        /// Run the peer harness's standard workloads instead of
        /// --batch/--input-len/--output-len, in one process: W1 (1, 128,
        /// 256), W2 (32, 128, 128), W3 (128, 512, 128), comma-separated.
        #[arg(long, value_delimiter = ',')]
        workloads: Vec<String>,
        /// Sample instead of greedy decoding (the peer harness is greedy):
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// With --temperature: keep the k most likely tokens.
        #[arg(long)]
        top_k: Option<usize>,
        /// With --temperature: keep the smallest set reaching this mass.
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// nvrtc target: the fraction of GPU memory optc may use in all
        /// (weights, activations and the KV cache, which takes what is
        /// left), as in vLLM; without it
        /// the cache holds exactly what the workloads need.
        #[arg(long)]
        gpu_memory_utilization: Option<f32>,
    },
    /// List every pass with its one-line description.
    Passes,
    /// Run the ONNX backend node tests (folders of model.onnx +
    /// test_data_set_N) on the reference interpreter and print the score.
    OnnxConformance {
        /// The folder holding one sub-folder per case (made by
        /// scripts/make_onnx_node_tests.py).
        dir: PathBuf,
        /// Also print one line per case that did not pass.
        #[arg(long)]
        details: bool,
        /// Write the per-op table (Markdown) here.
        #[arg(long)]
        table: Option<PathBuf>,
        /// Fail unless at least this many cases pass.
        #[arg(long)]
        min_passed: Option<usize>,
    },
    /// Run a graph on the reference interpreter.
    Eval {
        /// A graph in optc's text form (.ir), a torch.export archive (.pt2,
        /// which carries its weights) or an ONNX model (.onnx).
        file: PathBuf,
        /// NAME=FILE.safetensors: the tensor named NAME in the file (or its
        /// only tensor) is graph input %NAME. Repeat for every input.
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        /// Safetensors files holding the weights the graph refers to.
        #[arg(long = "weights", value_name = "FILE")]
        weights: Vec<PathBuf>,
        /// Write the outputs, by output name, to this safetensors file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn onnx_conformance(
    dir: &Path,
    details: bool,
    table: Option<&Path>,
    min_passed: Option<usize>,
) -> Result<()> {
    let report = onnx::conformance::run_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if report.cases.is_empty() {
        bail!(
            "{}: no case folders (sub-folders with a model.onnx)",
            dir.display()
        );
    }
    if details {
        print!("{}", report.details());
    }
    if let Some(t) = table {
        std::fs::write(t, report.table()).with_context(|| format!("cannot write {}", t.display()))?;
    }
    println!("ONNX node tests: {}", report.summary());
    if let Some(min) = min_passed {
        if report.passed() < min {
            bail!("{} cases passed, fewer than the required {min}", report.passed());
        }
    }
    Ok(())
}

fn load_graph(path: &Path) -> Result<Graph> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let g = ir::parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))?;
    ir::verify(&g).with_context(|| format!("{}: invalid graph", path.display()))?;
    Ok(g)
}

/// A weight's element count, or an error naming it when its dims are
/// negative or their product overflows (a hand-made file can say anything).
fn weight_elements(g: &optc::ir::Graph, w: optc::ir::NodeId) -> Result<u64> {
    let Some(dims) = g.node(w).outputs[0].shape.as_consts() else {
        return Ok(0);
    };
    dims.iter()
        .try_fold(1u64, |n, &d| u64::try_from(d).ok().and_then(|d| n.checked_mul(d)))
        .ok_or_else(|| {
            let name = g.node_name(w).unwrap_or("?");
            anyhow::anyhow!("weight {name}: dims {dims:?} are negative or too large")
        })
}

fn inspect(path: &Path, print_ir: bool) -> Result<()> {
    if path.is_dir() || path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return inspect_model(path, print_ir);
    }
    let g = if onnx::is_onnx(path) {
        let m = onnx::load(path)?;
        if !print_ir {
            println!(
                "onnx     {} (opset {}, IR version {}, producer {:?})",
                path.display(),
                m.opset,
                m.ir_version,
                m.producer
            );
        }
        m.graph
    } else if fx::is_pt2(path) {
        let m = fx::load(path)?;
        if !print_ir {
            println!(
                "archive  {} (torch {}, export schema {}.{})",
                path.display(),
                m.torch_version,
                m.schema_version.0,
                m.schema_version.1
            );
            for (sym, (lo, hi)) in &m.ranges {
                let show = |b: &Option<i64>| b.map_or("inf".to_string(), |b| b.to_string());
                println!("range    {sym} in {}..={}", show(lo), show(hi));
            }
        }
        m.graph
    } else {
        load_graph(path)?
    };
    if print_ir {
        print!("{}", ir::print(&g));
        return Ok(());
    }
    println!("graph    {}", g.name);
    for &i in g.inputs() {
        println!(
            "input    %{}: {}",
            g.node_name(i).unwrap_or("?"),
            g.node(i).outputs[0]
        );
    }
    for o in g.outputs() {
        println!("output   %{}: {}", o.name, o.ty);
    }
    let syms: Vec<String> = g.symbols().into_iter().collect();
    println!(
        "symbols  {}",
        if syms.is_empty() {
            "none".into()
        } else {
            syms.join(", ")
        }
    );
    let mut params: BTreeMap<String, u64> = BTreeMap::new();
    for &w in g.weights() {
        let n = weight_elements(&g, w)?;
        let e = params.entry(g.node(w).outputs[0].dtype.to_string()).or_insert(0);
        *e = e.saturating_add(n);
    }
    let total: u64 = params.values().fold(0, |a, &n| a.saturating_add(n));
    let by_dtype: Vec<String> = params.iter().map(|(d, n)| format!("{d} {n}")).collect();
    println!(
        "weights  {} tensors, {total} parameters ({})",
        g.weights().len(),
        if by_dtype.is_empty() {
            "none".into()
        } else {
            by_dtype.join(", ")
        }
    );
    let counts = g.op_counts();
    let n_ops: usize = counts.values().sum();
    println!("ops      {n_ops}");
    for (op, n) in counts {
        println!("  {op:<30} {n}");
    }
    Ok(())
}

/// Loads a Hugging Face folder or a `.gguf` file.
fn load_model(path: &Path) -> Result<hf::HfModel> {
    if path.is_dir() {
        Ok(hf::load(path)?)
    } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        Ok(gguf::load(path)?)
    } else if !path.exists() {
        bail!("{}: no such file or folder", path.display())
    } else {
        bail!("{}: expected a model folder or a .gguf file", path.display())
    }
}

fn inspect_model(dir: &Path, print_ir: bool) -> Result<()> {
    let m = load_model(dir)?;
    if print_ir {
        print!("{}", ir::print(&m.graph));
        return Ok(());
    }
    let c = &m.config;
    println!("model    {}", dir.display());
    println!("arch     {:?} ({})", c.architecture, c.architecture.class_name());
    println!(
        "sizes    {} layers, hidden {}, {} heads / {} kv heads of {}, mlp {}, vocab {}",
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.intermediate_size,
        c.vocab_size
    );
    let mut by_dtype: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for &w in m.graph.weights() {
        let ty = &m.graph.node(w).outputs[0];
        let n = weight_elements(&m.graph, w)?;
        let bytes = n.saturating_mul(ty.dtype.bits() as u64).div_ceil(8);
        let e = by_dtype.entry(ty.dtype.to_string()).or_insert((0, 0));
        e.0 = e.0.saturating_add(n);
        e.1 = e.1.saturating_add(bytes);
    }
    let total: u64 = by_dtype.values().fold(0, |a, (n, _)| a.saturating_add(*n));
    let bytes: u64 = by_dtype.values().fold(0, |a, (_, b)| a.saturating_add(*b));
    let parts: Vec<String> = by_dtype.iter().map(|(d, (n, _))| format!("{d} {n}")).collect();
    println!("params   {total} ({})", parts.join(", "));
    println!("memory   {:.2} MiB of weights", bytes as f64 / (1024.0 * 1024.0));
    if let Some(t) = &m.tokenizer {
        println!("tokens   vocabulary of {}", t.vocab_size());
    }
    println!("eos      {:?}", m.generation.eos_token_ids);
    if let Some(t) = &m.chat_template {
        println!("chat     template of {} characters", t.len());
    }
    let counts = m.graph.op_counts();
    println!("ops      {}", counts.values().sum::<usize>());
    for (op, n) in counts {
        println!("  {op:<30} {n}");
    }
    Ok(())
}

fn logits(model: &Path, ids: &[i64], text: Option<&str>, out: Option<&Path>) -> Result<()> {
    let m = load_model(model)?;
    let ids: Vec<i64> = match text {
        Some(t) => {
            let tok = m
                .tokenizer
                .as_ref()
                .with_context(|| format!("{}: --text needs a tokenizer.json", model.display()))?;
            tok.encode(t, true)?
        }
        None => ids.to_vec(),
    };
    if ids.is_empty() {
        bail!("give the prompt with --ids 1,2,3 or --text \"...\"");
    }
    let vocab = m.config.vocab_size;
    if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= vocab) {
        bail!("token id {bad} is outside the vocabulary (0..{vocab})");
    }
    let t = ids.len();
    let input = Tensor::from_i64(ir::DType::I64, &[1, t], &ids);
    let inputs = BTreeMap::from([("ids".to_string(), input)]);
    let start = std::time::Instant::now();
    let outs = ir::run(&m.graph, &inputs, &m.weights).context("evaluation failed")?;
    tracing::info!(elapsed = ?start.elapsed(), tokens = t, "interpreted");
    let logits = outs[0].cast(ir::DType::F32).reshape(&[t, vocab]);
    let last = &logits.to_f32_vec()[(t - 1) * vocab..];
    let mut top: Vec<(usize, f32)> = last.iter().copied().enumerate().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let shown: Vec<String> = top.iter().take(5).map(|(i, v)| format!("{i}:{v:.4}")).collect();
    println!("ids      {ids:?}");
    println!(
        "logits   f32[{t}, {vocab}]; top-5 at the last position: {}",
        shown.join(" ")
    );
    if let Some(out) = out {
        ir::weights::write_safetensors(out, &[("logits".to_string(), logits)])?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// What `optc compile` writes.
enum Emit {
    /// The text IR, to `-o` or standard output.
    Ir,
    /// An ONNX model, its weights in a side file when `external`.
    Onnx { path: PathBuf, external: bool },
    /// The tensorrt target's folder: the network, its build script and
    /// manifest.
    TensorRt {
        dir: PathBuf,
        max_batch: i64,
        max_input_len: i64,
        max_seq_len: Option<i64>,
    },
}

#[allow(clippy::too_many_arguments)]
fn compile(
    model: &Path,
    pipeline: Option<&Path>,
    dump_after: &[String],
    dump_dir: &Path,
    check: Option<CheckConfig>,
    weights: &[PathBuf],
    out: Option<&Path>,
    verbose: bool,
    kv_cache: Option<usize>,
    lower: Option<&str>,
    plan_only: bool,
    emit: Emit,
) -> Result<()> {
    // The longest sequence the model takes, where its config says.
    let mut max_positions = None;
    let (mut graph, mut store) = if fx::is_pt2(model) {
        let m = fx::load(model)?;
        (m.graph, m.weights)
    } else if onnx::is_onnx(model) {
        let m = onnx::load(model)?;
        (m.graph, m.weights)
    } else if model.extension().is_some_and(|e| e == "ir") {
        let g = load_graph(model)?;
        let mut store = WeightStore::new();
        for w in weights {
            store.open_safetensors(w)?;
        }
        (g, store)
    } else {
        let m = load_model(model)?;
        max_positions = Some(m.config.max_position_embeddings as i64);
        (m.graph, m.weights)
    };
    let mut compiler = Compiler::new();
    if let Some(p) = pipeline {
        compiler.set_pipeline(Pipeline::load(p)?);
    }
    if let Some(bs) = kv_cache {
        compiler.set_pipeline(Pipeline::serving(bs));
    }
    if let Emit::TensorRt { .. } = emit {
        if pipeline.is_some() || kv_cache.is_some() {
            bail!("--target tensorrt runs its own pipeline (the default passes, then insert_past_kv): drop --pipeline and --kv-cache");
        }
        compiler.set_pipeline(Pipeline::decoder_with_past());
    }
    if !dump_after.is_empty() {
        let after = if dump_after.iter().any(|a| a == "all") {
            Vec::new()
        } else {
            dump_after.to_vec()
        };
        compiler.dump(DumpConfig {
            dir: dump_dir.to_path_buf(),
            after,
        });
    }
    if let Some(c) = check {
        compiler.check_passes(c);
    }
    let passes_start = std::time::Instant::now();
    let report = compiler.compile(&mut graph, &mut store)?;
    let passes_millis = passes_start.elapsed().as_secs_f64() * 1e3;
    // With the IR going to a file, the pass report goes to stderr.
    let report_always = out.is_some() || !matches!(emit, Emit::Ir);
    match emit {
        Emit::Onnx { path, external } => {
            onnx::export::write(&path, &graph, &store, external)?;
            println!("wrote {}", path.display());
        }
        Emit::TensorRt {
            dir,
            max_batch,
            max_input_len,
            max_seq_len,
        } => {
            // Past 4,096 positions the largest shapes' attention scores
            // outgrow a GPU (TensorRT plans its memory for them).
            let max_seq_len = max_seq_len
                .or(max_positions.map(|n| n.min(4096)))
                .with_context(|| {
                    format!(
                        "{}: no max_position_embeddings to size the engine's profile by; give --max-seq-len",
                        model.display()
                    )
                })?;
            let profile = optc::codegen::tensorrt::EngineProfile {
                max_batch,
                max_input_len: max_input_len.min(max_seq_len),
                max_seq_len,
            };
            let net =
                optc::codegen::tensorrt::write(&dir, &graph, &store, optc::passes::past_kv::PAST, &profile)?;
            println!(
                "wrote {}: model.onnx (+ model.onnx.data), build_engine.sh, network.json; {} attention layers, \
                 batch up to {}, {} new tokens a call, sequences up to {max_seq_len} tokens \
                 (sh {}/build_engine.sh builds the engine with trtexec)",
                dir.display(),
                net.layers,
                net.max_batch,
                profile.max_input_len,
                dir.display()
            );
        }
        Emit::Ir => {
            let text = ir::print(&graph);
            match out {
                Some(o) => {
                    std::fs::write(o, &text).with_context(|| format!("cannot write {}", o.display()))?
                }
                None => print!("{text}"),
            }
        }
    }
    if verbose || report_always {
        eprint!("{}", report.table());
    } else {
        // Notes (an e-graph run stopped by a bound, ...) say a pass did less
        // than it could: never silent, even without -v.
        for r in &report.runs {
            for n in &r.notes {
                eprintln!("note: pass {}: {n}", r.name);
            }
        }
    }
    match lower.map(target).transpose()? {
        Some(optc::Target::Cpu) => {
            let p = optc::codegen::cpu::CpuProgram::new(&graph, &store)?;
            let s = p.summary();
            eprintln!(
                "cpu plan: {} weight bytes, {} buffers for {} values, {} views",
                s.weight_bytes, s.buffers, s.values, s.views
            );
            for (k, n) in &s.kernels {
                eprintln!("  kernel    {k:<20} {n}");
            }
            for (k, n) in &s.reference {
                eprintln!("  reference {k:<20} {n}");
            }
        }
        Some(optc::Target::Nvrtc) if plan_only => {
            let s = optc::codegen::nvrtc::plan_summary(&graph)?;
            eprintln!(
                "nvrtc plan (no GPU used: nothing compiled or uploaded): {} views, {} ops folded at lowering",
                s.views, s.folded
            );
            print_nvrtc_kernels(&s);
        }
        Some(optc::Target::Nvrtc) => {
            let lower_start = std::time::Instant::now();
            optc::codegen::nvrtc::available().map_err(anyhow::Error::msg)?;
            let p = optc::codegen::nvrtc::CudaProgram::new(&graph, &store, &mut |_, _| {})?;
            let lower_millis = lower_start.elapsed().as_secs_f64() * 1e3;
            let s = p.summary();
            eprintln!(
                "nvrtc plan on {}: {} weight bytes, {} views, {} ops folded at lowering",
                s.device, s.weight_bytes, s.views, s.folded
            );
            // Where a compile's time goes: the passes, the kernels (NVRTC or
            // the cache), the weights to the GPU, and the rest of lowering
            // (the CUDA context, planning).
            let kernel_millis = s.compile.as_ref().map_or(0.0, |c| c.millis);
            eprintln!(
                "  time: passes {passes_millis:.0} ms, lowering {lower_millis:.0} ms (kernels {kernel_millis:.0} ms, \
                 weights to the GPU {:.0} ms, the rest {:.0} ms)",
                s.upload_millis,
                (lower_millis - kernel_millis - s.upload_millis).max(0.0)
            );
            if let Some(c) = &s.compile {
                eprintln!(
                    "  kernels compiled in {:.1} ms ({}; {} bytes of CUDA C)",
                    c.millis,
                    if c.cache_hit { "cache hit" } else { "NVRTC" },
                    c.source_bytes
                );
            }
            print_nvrtc_kernels(s);
            if let Some((tbps, wide)) = s.dram {
                eprintln!(
                    "  DRAM {tbps:.2} TB/s (memory clock x bus width): {} (OPTC_CUDA_WIDE_DRAM=1/0 forces it)",
                    if wide {
                        "wide-DRAM GEMVs (gate/up's ring by bulk copies, QKV with two loads a stage)"
                    } else {
                        "the standard GEMV geometries"
                    }
                );
            }
            if let Some(m) = &s.prefill_mma {
                eprintln!("  tensor-core prefill attention: {m}");
            }
        }
        Some(optc::Target::Reference) | None => {}
    }
    Ok(())
}

/// The nvrtc plan's kernels by kind, fused GEMVs and host fallbacks.
fn print_nvrtc_kernels(s: &optc::codegen::nvrtc::CudaSummary) {
    for (k, n) in &s.kernels {
        eprintln!("  kernel    {k:<20} {n}");
    }
    if s.gemv_norms + s.gemv_glus + s.gemv_ropes > 0 {
        eprintln!(
            "  fused GEMVs at decode batches: {} linears do the norm before them, {} the SwiGLU after, \
             {} the rope + KV cache write after",
            s.gemv_norms, s.gemv_glus, s.gemv_ropes
        );
    }
    if s.gemm_biases + s.gemm_gelus > 0 {
        eprintln!(
            "  GEMM epilogues: {} matmuls add their bias, {} matmuls or linears apply the tanh GELU after",
            s.gemm_biases, s.gemm_gelus
        );
    }
    for (k, n) in &s.host {
        eprintln!("  host      {k:<20} {n}");
    }
    if let Some(k) = &s.mega_kernel {
        eprintln!(
            "  one-token decode megakernel: {} layers and the LM head in one launch ({k}){}",
            s.mega_layers,
            s.mega.as_deref().map(|m| format!(", {m}")).unwrap_or_default()
        );
    }
}

fn weight_dtype(name: Option<&str>) -> Result<Option<ir::DType>> {
    match name {
        None => Ok(None),
        Some("f16") => Ok(Some(ir::DType::F16)),
        Some("bf16") => Ok(Some(ir::DType::BF16)),
        Some("int8") => Ok(Some(ir::DType::I8)),
        Some(d) => bail!("--weight-dtype {d}: expected f16, bf16 or int8"),
    }
}

fn target(name: &str) -> Result<optc::Target> {
    match name {
        "cpu" => Ok(optc::Target::Cpu),
        "reference" => Ok(optc::Target::Reference),
        "nvrtc" | "cuda" => Ok(optc::Target::Nvrtc),
        "tensorrt" => bail!(
            "optc does not run TensorRT engines: `optc compile MODEL --target tensorrt -o DIR` writes the network \
             and the trtexec line that builds one; to run here, use --target nvrtc or cpu"
        ),
        _ => bail!("unknown target '{name}' (known: cpu, nvrtc, reference; tensorrt for optc compile)"),
    }
}

/// Loads and compiles a model with a spinner on standard error.
fn load_llm(model: &Path, opts: optc::LlmOptions) -> Result<optc::LLM> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    let name = model.display().to_string();
    let llm = optc::LLM::new_with_progress(model, opts, &mut |stage| {
        bar.set_message(format!("{stage} {name}"))
    });
    bar.finish_and_clear();
    Ok(llm?)
}

/// `--gpu-memory-utilization` checked against the target: a fraction in
/// (0, 1], and only where the KV cache lives on a GPU (`default` when the
/// flag is absent there).
fn gpu_memory_utilization(
    target: optc::Target,
    given: Option<f32>,
    default: Option<f32>,
) -> Result<Option<f32>> {
    match (target, given) {
        (optc::Target::Nvrtc, Some(u)) if u > 0.0 && u <= 1.0 => Ok(Some(u)),
        (optc::Target::Nvrtc, Some(u)) => bail!("--gpu-memory-utilization {u} is not in (0, 1]"),
        (optc::Target::Nvrtc, None) => Ok(default),
        (_, Some(_)) => {
            bail!("--gpu-memory-utilization sizes the KV cache on a GPU: it needs --target nvrtc")
        }
        (_, None) => Ok(None),
    }
}

/// Runs each named workload `(batch, input_len, output_len)` on one
/// engine sized for the largest: one warm-up, then `reps` measured runs.
#[allow(clippy::too_many_arguments)]
fn bench(
    model: &Path,
    target: optc::Target,
    weight_dtype: Option<ir::DType>,
    workloads: &[(String, (usize, usize, usize))],
    reps: usize,
    max_num_tokens: usize,
    json: bool,
    sampling: optc::bench::Sampling,
    gpu_memory_utilization: Option<f32>,
) -> Result<()> {
    sampling.check()?;
    if workloads
        .iter()
        .any(|(_, (b, i, o))| *b == 0 || *i == 0 || *o == 0)
    {
        bail!("--batch, --input-len and --output-len must be at least 1");
    }
    let block_size = 16;
    let mut blocks = 1;
    for (name, (b, i, o)) in workloads {
        let need = i
            .checked_add(*o)
            .and_then(|t| t.div_ceil(block_size).checked_mul(*b))
            .with_context(|| format!("workload {name}: {b} requests of {i} + {o} tokens overflow"))?;
        blocks = blocks.max(need);
    }
    let blocks = blocks.saturating_add(1);
    let max_batch = workloads.iter().map(|(_, (b, _, _))| *b).max().unwrap_or(1);
    let opts = optc::LlmOptions {
        max_batch_size: max_batch,
        max_num_tokens: max_num_tokens.max(max_batch),
        num_blocks: blocks,
        block_size,
        target,
        weight_dtype,
        gpu_memory_utilization,
        ..optc::LlmOptions::default()
    };
    let mut llm = load_llm(model, opts)?;
    let vocab = llm.vocab_size;
    for (name, &(batch, input_len, output_len)) in workloads.iter().map(|(n, w)| (n, w)) {
        let w = optc::bench::Workload {
            batch,
            input_len,
            output_len,
            seed: 7,
            sampling,
        };
        optc::bench::run(&mut llm, vocab, &w)?; // warm-up
        for rep in 0..reps {
            let r = optc::bench::run(
                &mut llm,
                vocab,
                &optc::bench::Workload {
                    seed: 11 + rep as u64,
                    ..w.clone()
                },
            )?;
            if json {
                let j = r.json();
                if name.is_empty() {
                    println!("{j}");
                } else {
                    println!("{{\"workload\": \"{name}\", {}", &j[1..]);
                }
            } else if name.is_empty() {
                println!("run {}: {}", rep + 1, r.line());
            } else {
                println!("{name} run {}: {}", rep + 1, r.line());
            }
        }
    }
    if let Some(report) = llm.engine().executor().report() {
        eprintln!("{report}");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn generate(
    model: &Path,
    target: optc::Target,
    weight_dtype: Option<ir::DType>,
    prompt: Option<&str>,
    ids: &[u32],
    params: optc::runtime::sampler::SamplingParams,
    json: bool,
    chat: bool,
    gpu_memory_utilization: Option<f32>,
) -> Result<()> {
    use std::io::Write;
    let start = std::time::Instant::now();
    let opts = optc::LlmOptions {
        target,
        weight_dtype,
        // On the GPU the cache takes what memory allows, as in vLLM.
        gpu_memory_utilization,
        ..optc::LlmOptions::default()
    };
    let mut llm = load_llm(model, opts)?;
    let loaded = start.elapsed();
    let p = match prompt {
        Some(t) if chat => {
            let text = llm.render_chat(&[("user", t)])?;
            optc::Prompt::Ids(llm.encode(&text, false)?)
        }
        Some(t) => optc::Prompt::Text(t.to_string()),
        None if !ids.is_empty() => optc::Prompt::Ids(ids.to_vec()),
        None => bail!("give the prompt with --prompt \"...\" or --ids 1,2,3"),
    };
    let gen_start = std::time::Instant::now();
    let mut first: Option<std::time::Duration> = None;
    let mut stdout = std::io::stdout();
    let out = llm.generate_stream(&[p], &params, |_, piece| {
        if first.is_none() {
            first = Some(gen_start.elapsed());
        }
        if !json {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
    })?;
    let total = gen_start.elapsed();
    let o = &out[0];
    if json {
        let reason = match o.finish_reason {
            optc::runtime::scheduler::FinishReason::Length => "length",
            optc::runtime::scheduler::FinishReason::Stop => "stop",
        };
        println!(
            "{{\"ids\": {:?}, \"text\": {:?}, \"finish_reason\": \"{reason}\", \"load_s\": {:.3}, \"first_text_s\": {:.3}, \"total_s\": {:.3}}}",
            o.token_ids,
            o.text,
            loaded.as_secs_f64(),
            first.unwrap_or(total).as_secs_f64(),
            total.as_secs_f64()
        );
    } else {
        println!();
        eprintln!(
            "{} tokens in {:.2} s ({:.2} tokens/s), finish: {:?}",
            o.token_ids.len(),
            total.as_secs_f64(),
            o.token_ids.len() as f64 / total.as_secs_f64().max(1e-9),
            o.finish_reason
        );
    }
    Ok(())
}

fn check_config(tolerance: f64, symbols: &[String]) -> Result<CheckConfig> {
    let mut c = CheckConfig {
        tolerance,
        ..CheckConfig::default()
    };
    for s in symbols {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("--check-symbol {s:?}: expected SYM=N"))?;
        let v: i64 = v
            .parse()
            .with_context(|| format!("--check-symbol {s:?}: {v:?} is not an integer"))?;
        c.symbols.insert(k.to_string(), v);
    }
    Ok(c)
}

/// Reads one tensor for `--input NAME=FILE`.
fn read_input(spec: &str) -> Result<(String, Tensor)> {
    let (name, file) = spec
        .split_once('=')
        .with_context(|| format!("--input {spec:?}: expected NAME=FILE.safetensors"))?;
    let mut store = WeightStore::new();
    let names = store
        .open_safetensors(file)
        .with_context(|| format!("--input {name}"))?;
    let key = if store.contains(name) {
        name.to_string()
    } else if names.len() == 1 {
        names[0].clone()
    } else {
        bail!(
            "--input {name}: {file} holds {} tensors and none is named {name:?}",
            names.len()
        );
    };
    Ok((name.to_string(), store.get(&key)?))
}

fn summary(t: &Tensor) -> String {
    let v = t.to_f64_vec();
    let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:.5}")).collect();
    let more = if v.len() > 6 { ", ..." } else { "" };
    format!("{}{:?} [{}{more}]", t.dtype(), t.shape(), head.join(", "))
}

fn eval(path: &Path, inputs: &[String], weights: &[PathBuf], out: Option<&Path>) -> Result<()> {
    let inputs: BTreeMap<String, Tensor> = inputs.iter().map(|s| read_input(s)).collect::<Result<_>>()?;
    let (g, mut store) = if fx::is_pt2(path) {
        let m = fx::load(path)?;
        let bindings = ir::interp::bind_symbols(&m.graph, &inputs)
            .with_context(|| format!("{}: the inputs do not fit the graph", path.display()))?;
        m.check_bindings(&bindings)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        (m.graph, m.weights)
    } else if onnx::is_onnx(path) {
        let m = onnx::load(path)?;
        (m.graph, m.weights)
    } else {
        (load_graph(path)?, WeightStore::new())
    };
    for w in weights {
        store.open_safetensors(w)?;
    }
    let start = std::time::Instant::now();
    let outs =
        ir::run(&g, &inputs, &store).with_context(|| format!("{}: evaluation failed", path.display()))?;
    tracing::info!(elapsed = ?start.elapsed(), "interpreted {}", g.name);
    let named: Vec<(String, Tensor)> = g.outputs().iter().map(|o| o.name.clone()).zip(outs).collect();
    for (name, t) in &named {
        println!("%{name}: {}", summary(t));
    }
    if let Some(out) = out {
        ir::weights::write_safetensors(out, &named)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let result = match &cli.cmd {
        Cmd::Inspect { file, ir } => inspect(file, *ir),
        Cmd::Logits {
            model,
            ids,
            text,
            out,
        } => logits(model, ids, text.as_deref(), out.as_deref()),
        Cmd::Compile {
            model,
            pipeline,
            dump_after,
            dump_dir,
            check_passes,
            check_tolerance,
            check_symbols,
            weights,
            out,
            emit,
            external_data,
            kv_cache,
            block_size,
            target: lower,
            plan_only,
            max_batch_size,
            max_input_len,
            max_seq_len,
        } => (|| {
            let tensorrt = lower.as_deref() == Some("tensorrt");
            let to = match (emit.as_str(), out, tensorrt) {
                ("onnx", _, true) => bail!("--target tensorrt writes its own ONNX network: drop --emit onnx"),
                (_, Some(o), true) => Emit::TensorRt {
                    dir: o.clone(),
                    max_batch: *max_batch_size,
                    max_input_len: *max_input_len,
                    max_seq_len: *max_seq_len,
                },
                (_, None, true) => {
                    bail!("--target tensorrt needs -o DIR (the folder for the network and its build script)")
                }
                ("onnx", Some(o), false) => Emit::Onnx {
                    path: o.clone(),
                    external: *external_data,
                },
                ("onnx", None, false) => bail!("--emit onnx needs -o FILE.onnx"),
                _ => Emit::Ir,
            };
            // A misspelt target fails before any work is done or written.
            if let Some(l) = lower.as_deref().filter(|_| !tensorrt) {
                target(l)?;
            }
            if tensorrt && *plan_only {
                bail!("--plan-only is for --target nvrtc; --target tensorrt writes a network for TensorRT to build");
            }
            if tensorrt && (*max_batch_size < 1 || *max_input_len < 1 || max_seq_len.is_some_and(|n| n < 2)) {
                bail!(
                    "--max-batch-size ({max_batch_size}) and --max-input-len ({max_input_len}) must be at least 1, \
                     --max-seq-len ({}) at least 2",
                    max_seq_len.map_or("the model's".into(), |n| n.to_string())
                );
            }
            let check = if *check_passes {
                Some(check_config(*check_tolerance, check_symbols)?)
            } else {
                None
            };
            compile(
                model,
                pipeline.as_deref(),
                dump_after,
                dump_dir,
                check,
                weights,
                out.as_deref(),
                cli.verbose > 0,
                kv_cache.then_some(*block_size),
                lower.as_deref().filter(|_| !tensorrt),
                *plan_only,
                to,
            )
        })(),
        Cmd::Generate {
            model,
            target: tgt,
            weight_dtype: wd,
            prompt,
            ids,
            max_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            stop,
            json,
            chat,
            gpu_memory_utilization: gpu_mem,
        } => {
            let params = optc::runtime::sampler::SamplingParams {
                temperature: *temperature,
                top_p: *top_p,
                top_k: *top_k,
                seed: *seed,
                stop: stop.clone(),
                max_tokens: *max_tokens,
                ..Default::default()
            };
            (|| {
                let target = target(tgt)?;
                generate(
                    model,
                    target,
                    weight_dtype(wd.as_deref())?,
                    prompt.as_deref(),
                    ids,
                    params,
                    *json,
                    *chat,
                    gpu_memory_utilization(target, *gpu_mem, Some(0.9))?,
                )
            })()
        }
        Cmd::Bench {
            model,
            target: tgt,
            weight_dtype: wd,
            batch,
            input_len,
            output_len,
            reps,
            max_num_tokens,
            json,
            workloads,
            temperature,
            top_k,
            top_p,
            gpu_memory_utilization: gpu_mem,
        } => (|| {
            let target = target(tgt)?;
            let gpu_mem = gpu_memory_utilization(target, *gpu_mem, None)?;
            let named = if workloads.is_empty() {
                vec![(String::new(), (*batch, *input_len, *output_len))]
            } else {
                workloads
                    .iter()
                    .map(|w| match w.as_str() {
                        "W1" | "w1" => Ok(("W1".to_string(), (1, 128, 256))),
                        "W2" | "w2" => Ok(("W2".to_string(), (32, 128, 128))),
                        "W3" | "w3" => Ok(("W3".to_string(), (128, 512, 128))),
                        other => Err(anyhow::anyhow!("unknown workload {other} (known: W1, W2, W3)")),
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            bench(
                model,
                target,
                weight_dtype(wd.as_deref())?,
                &named,
                *reps,
                *max_num_tokens,
                *json,
                optc::bench::Sampling {
                    temperature: *temperature,
                    top_k: *top_k,
                    top_p: *top_p,
                },
                gpu_mem,
            )
        })(),
        Cmd::OnnxConformance {
            dir,
            details,
            table,
            min_passed,
        } => onnx_conformance(dir, *details, table.as_deref(), *min_passed),
        Cmd::Passes => {
            for p in Compiler::new().registry().all() {
                println!("{:<24} {}", p.name(), p.description());
            }
            let default: Vec<String> = Pipeline::default_pipeline()
                .passes
                .into_iter()
                .map(|p| p.name)
                .collect();
            println!("\ndefault pipeline: {}", default.join(" -> "));
            Ok(())
        }
        Cmd::Eval {
            file,
            inputs,
            weights,
            out,
        } => eval(file, inputs, weights, out.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
