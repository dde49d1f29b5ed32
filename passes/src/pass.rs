//! The pass contract.

use std::collections::BTreeMap;

use optc_ir::{Graph, Tensor, VerifyError, WeightStore};

/// A graph rewrite. Passes must keep the graph's meaning (what the reference
/// interpreter computes) and leave it valid; the manager checks both.
pub trait Pass: Send + Sync {
    /// The name pipelines use.
    fn name(&self) -> &str;
    /// One line saying what the pass does (shown by `optc passes`).
    fn description(&self) -> &str;
    /// Rewrites `g` in place.
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError>;
    /// False for passes that change the graph's inputs (such as
    /// `insert_kv_cache`); `--check-passes` then needs [`Pass::check_inputs`].
    fn keeps_signature(&self) -> bool {
        true
    }
    /// For a pass that changes the signature: inputs of the rewritten graph
    /// `after` that compute what `before` computes on `inputs`, so that
    /// `--check-passes` can compare their first outputs (element by element,
    /// in order). `None`: the pass cannot be checked that way.
    fn check_inputs(
        &self,
        _before: &Graph,
        _inputs: &BTreeMap<String, Tensor>,
        _after: &Graph,
    ) -> Option<Result<BTreeMap<String, Tensor>, String>> {
        None
    }
}

/// What a pass can use besides the graph.
pub struct PassContext<'a> {
    /// Weights the graph refers to; passes add lazy views here (e.g. a
    /// concatenation for a fused GEMM) instead of copying data.
    pub weights: &'a mut WeightStore,
    /// This pass's options from the pipeline (`[pass.options]` in TOML).
    pub options: &'a toml::Table,
}

impl PassContext<'_> {
    /// An integer option with a default; a value of the wrong type is an error.
    pub fn int_option(&self, pass: &str, key: &str, default: i64) -> Result<i64, PassError> {
        match self.options.get(key) {
            None => Ok(default),
            Some(toml::Value::Integer(i)) => Ok(*i),
            Some(v) => Err(PassError::Option {
                pass: pass.into(),
                message: format!("option '{key}' must be an integer, found {v}"),
            }),
        }
    }
}

/// What a pass did, for the report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassReport {
    /// How many rewrites (fusions, removals, folds) it made.
    pub rewrites: usize,
    /// Anything worth telling the user (limits hit, patterns skipped and why).
    pub notes: Vec<String>,
}

impl PassReport {
    pub fn with_rewrites(rewrites: usize) -> PassReport {
        PassReport {
            rewrites,
            notes: Vec::new(),
        }
    }
}

/// Why a pipeline stopped; names the pass.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("pass '{pass}' left an invalid graph: {source}")]
    Broke {
        pass: String,
        #[source]
        source: VerifyError,
    },
    #[error(
        "pass '{pass}' changed the graph's results: max abs error {error:.3e} > tolerance {tolerance:.1e}"
    )]
    Changed {
        pass: String,
        error: f64,
        tolerance: f64,
    },
    #[error("pass '{pass}': {message}")]
    Failed { pass: String, message: String },
    #[error("pass '{pass}': {message}")]
    Option { pass: String, message: String },
    #[error("unknown pass '{name}' (known: {known})")]
    Unknown { name: String, known: String },
    #[error("{path}: {message}")]
    Pipeline { path: String, message: String },
    #[error("checking passes: {0}")]
    Check(String),
    #[error("writing {path}: {source}")]
    Dump {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
