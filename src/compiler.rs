//! The compiler API: a registry of passes and a pipeline, applied to a
//! graph and its weights.

use std::sync::Arc;

use optc_ir::{Graph, WeightStore};
use optc_passes::check::CheckConfig;
use optc_passes::{DumpConfig, Pass, PassError, PassManager, PassRegistry, Pipeline, PipelineReport};

/// Compiles graphs with a pipeline of passes. Register your own passes with
/// [`Compiler::register`] and name them in the pipeline (see
/// `examples/custom_pass.rs`).
pub struct Compiler {
    registry: PassRegistry,
    pipeline: Pipeline,
    dump: Option<DumpConfig>,
    check: Option<CheckConfig>,
}

impl Default for Compiler {
    fn default() -> Self {
        Compiler::new()
    }
}

impl Compiler {
    /// The built-in passes and the default pipeline.
    pub fn new() -> Compiler {
        Compiler {
            registry: PassRegistry::builtin(),
            pipeline: Pipeline::default_pipeline(),
            dump: None,
            check: None,
        }
    }

    /// Makes a pass available to pipelines under its name.
    pub fn register(&mut self, pass: Arc<dyn Pass>) -> &mut Compiler {
        self.registry.register(pass);
        self
    }

    pub fn set_pipeline(&mut self, pipeline: Pipeline) -> &mut Compiler {
        self.pipeline = pipeline;
        self
    }

    pub fn pipeline_mut(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }

    /// Writes the text IR (and a diff) after the passes `dump.after` names.
    pub fn dump(&mut self, dump: DumpConfig) -> &mut Compiler {
        self.dump = Some(dump);
        self
    }

    /// Runs the interpreter before and after each pass and fails if a pass
    /// changes the results by more than the tolerance.
    pub fn check_passes(&mut self, check: CheckConfig) -> &mut Compiler {
        self.check = Some(check);
        self
    }

    pub fn registry(&self) -> &PassRegistry {
        &self.registry
    }

    /// Runs the pipeline on `graph` in place.
    pub fn compile(&self, graph: &mut Graph, weights: &mut WeightStore) -> Result<PipelineReport, PassError> {
        let mut pm = PassManager::new(&self.registry, &self.pipeline)?;
        if let Some(d) = &self.dump {
            pm = pm.with_dump(d.clone());
        }
        if let Some(c) = &self.check {
            pm = pm.with_check(c.clone());
        }
        pm.run(graph, weights)
    }
}
