//! The `optc` driver.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use optc::ir::{self, Graph, Tensor, WeightStore};

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
    /// Parse and verify a graph, then summarise it.
    Inspect {
        /// A graph in optc's text form (.ir).
        file: PathBuf,
        /// Print the normalised text form instead of the summary.
        #[arg(long)]
        ir: bool,
    },
    /// Run a graph on the reference interpreter.
    Eval {
        /// A graph in optc's text form (.ir).
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

fn load_graph(path: &Path) -> Result<Graph> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let g = ir::parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))?;
    ir::verify(&g).with_context(|| format!("{}: invalid graph", path.display()))?;
    Ok(g)
}

fn inspect(path: &Path, print_ir: bool) -> Result<()> {
    let g = load_graph(path)?;
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
        let ty = &g.node(w).outputs[0];
        let n: i64 = ty.shape.as_consts().map_or(0, |d| d.iter().product());
        *params.entry(ty.dtype.to_string()).or_insert(0) += n as u64;
    }
    let total: u64 = params.values().sum();
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
    let g = load_graph(path)?;
    let mut store = WeightStore::new();
    for w in weights {
        store.open_safetensors(w)?;
    }
    let inputs: BTreeMap<String, Tensor> = inputs.iter().map(|s| read_input(s)).collect::<Result<_>>()?;
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
