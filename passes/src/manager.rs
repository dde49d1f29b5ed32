//! Runs a pipeline: verify after every pass, time it, count nodes, dump the
//! text IR and a diff after selected passes, and check numerically that each
//! pass kept the graph's meaning.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use optc_ir::{print, verify, Graph, Tensor, WeightStore};

use crate::check::{self, CheckConfig};
use crate::{Pass, PassContext, PassError, PassRegistry, Pipeline};

/// Where and after which passes to write the text IR.
#[derive(Clone, Debug)]
pub struct DumpConfig {
    pub dir: PathBuf,
    /// Pass names to dump after; empty means every pass.
    pub after: Vec<String>,
}

/// One pass's run, for the report.
#[derive(Clone, Debug)]
pub struct PassRun {
    pub name: String,
    pub elapsed: Duration,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub rewrites: usize,
    /// Max abs difference of the interpreter's outputs before and after the
    /// pass (with `--check-passes`).
    pub max_abs_error: Option<f64>,
    pub notes: Vec<String>,
}

/// Every pass run of a pipeline, in order.
#[derive(Clone, Debug, Default)]
pub struct PipelineReport {
    pub runs: Vec<PassRun>,
}

impl PipelineReport {
    /// A table of pass, time, node-count change and rewrites (and error).
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<4} {:<24} {:>10} {:>8} {:>8} {:>9} {:>10}\n",
            "#", "pass", "time", "nodes", "change", "rewrites", "max err"
        );
        for (i, r) in self.runs.iter().enumerate() {
            let change = r.nodes_after as i64 - r.nodes_before as i64;
            let err = r.max_abs_error.map_or("-".to_string(), |e| format!("{e:.2e}"));
            s.push_str(&format!(
                "{:<4} {:<24} {:>10} {:>8} {:>+8} {:>9} {:>10}\n",
                i + 1,
                r.name,
                format!("{:.2?}", r.elapsed),
                r.nodes_after,
                change,
                r.rewrites,
                err
            ));
            for n in &r.notes {
                s.push_str(&format!("     note: {n}\n"));
            }
        }
        s
    }
}

/// A resolved pipeline, ready to run.
pub struct PassManager {
    steps: Vec<(Arc<dyn Pass>, toml::Table)>,
    dump: Option<DumpConfig>,
    check: Option<CheckConfig>,
}

impl PassManager {
    /// Resolves every enabled pass of `pipeline` in `registry`.
    pub fn new(registry: &PassRegistry, pipeline: &Pipeline) -> Result<PassManager, PassError> {
        let steps = pipeline
            .passes
            .iter()
            .filter(|p| p.enabled)
            .map(|p| Ok((registry.get(&p.name)?, p.options.clone())))
            .collect::<Result<_, PassError>>()?;
        Ok(PassManager {
            steps,
            dump: None,
            check: None,
        })
    }

    pub fn with_dump(mut self, dump: DumpConfig) -> PassManager {
        self.dump = Some(dump);
        self
    }

    pub fn with_check(mut self, check: CheckConfig) -> PassManager {
        self.check = Some(check);
        self
    }

    /// Names of the passes that will run, in order.
    pub fn pass_names(&self) -> Vec<&str> {
        self.steps.iter().map(|(p, _)| p.name()).collect()
    }

    fn write(&self, path: PathBuf, text: &str) -> Result<(), PassError> {
        std::fs::write(&path, text).map_err(|source| PassError::Dump {
            path: path.display().to_string(),
            source,
        })
    }

    /// Runs the pipeline on `g`.
    pub fn run(&self, g: &mut Graph, weights: &mut WeightStore) -> Result<PipelineReport, PassError> {
        let _span = tracing::info_span!("pipeline", graph = %g.name).entered();
        if let Some(d) = &self.dump {
            // A misspelt pass name would otherwise dump nothing, silently.
            let names = self.pass_names();
            if let Some(bad) = d.after.iter().find(|a| !names.contains(&a.as_str())) {
                return Err(PassError::Unknown {
                    name: bad.clone(),
                    known: names.join(", "),
                });
            }
            std::fs::create_dir_all(&d.dir).map_err(|source| PassError::Dump {
                path: d.dir.display().to_string(),
                source,
            })?;
            self.write(d.dir.join("00-input.ir"), &print(g))?;
        }
        // With checking on: fixed random inputs, and the outputs to compare with.
        let mut checking: Option<(std::collections::BTreeMap<String, Tensor>, Vec<Tensor>)> = match &self
            .check
        {
            Some(cfg) => {
                let inputs = check::random_inputs(g, cfg).map_err(PassError::Check)?;
                let outs = optc_ir::run(g, &inputs, weights).map_err(|e| PassError::Check(e.to_string()))?;
                Some((inputs, outs))
            }
            None => None,
        };
        let mut report = PipelineReport::default();
        for (i, (pass, options)) in self.steps.iter().enumerate() {
            let name = pass.name().to_string();
            let span = tracing::info_span!("pass", pass = %name).entered();
            let before_text = self.dump.as_ref().map(|_| print(g));
            let nodes_before = g.node_count();
            let before_graph = (checking.is_some() && !pass.keeps_signature()).then(|| g.clone());
            let start = Instant::now();
            let mut cx = PassContext { weights, options };
            let r = pass.run(g, &mut cx)?;
            let elapsed = start.elapsed();
            verify(g).map_err(|source| PassError::Broke {
                pass: name.clone(),
                source,
            })?;
            let mut run = PassRun {
                name: name.clone(),
                elapsed,
                nodes_before,
                nodes_after: g.node_count(),
                rewrites: r.rewrites,
                max_abs_error: None,
                notes: r.notes,
            };
            tracing::info!(
                elapsed = ?run.elapsed,
                nodes = run.nodes_after,
                change = run.nodes_after as i64 - nodes_before as i64,
                rewrites = run.rewrites,
                "pass done"
            );
            if let (Some(cfg), Some(before), Some((inputs, prev))) =
                (&self.check, &before_graph, checking.as_mut())
            {
                // The signature changed: compare the first output on the
                // pass's translation of the inputs, then continue from there.
                let translated = pass
                    .check_inputs(before, inputs, g)
                    .ok_or_else(|| {
                        PassError::Check(format!(
                            "pass '{name}' changes the graph's inputs and cannot be checked"
                        ))
                    })?
                    .map_err(PassError::Check)?;
                let outs = optc_ir::run(g, &translated, weights)
                    .map_err(|e| PassError::Check(format!("after '{name}': {e}")))?;
                let (a, b) = (&prev[0], &outs[0]);
                if a.numel() != b.numel() || a.dtype() != b.dtype() {
                    return Err(PassError::Check(format!(
                        "after '{name}': output 0 is {:?}{:?}, before it was {:?}{:?}",
                        b.dtype(),
                        b.shape(),
                        a.dtype(),
                        a.shape()
                    )));
                }
                let b0 = b.reshape(a.shape());
                let err = check::max_abs_error(std::slice::from_ref(a), std::slice::from_ref(&b0));
                run.max_abs_error = Some(err);
                if err.is_nan()
                    || !check::within(std::slice::from_ref(a), std::slice::from_ref(&b0), cfg.tolerance)
                {
                    return Err(PassError::Changed {
                        pass: name,
                        error: err,
                        tolerance: cfg.tolerance,
                    });
                }
                *inputs = translated;
                *prev = outs;
            } else if let (Some(cfg), Some((inputs, prev))) = (&self.check, checking.as_mut()) {
                let outs = optc_ir::run(g, inputs, weights).map_err(|e| PassError::Broke {
                    pass: name.clone(),
                    source: optc_ir::VerifyError::Op {
                        node: "interpreter".into(),
                        message: e.to_string(),
                    },
                })?;
                let err = check::max_abs_error(prev, &outs);
                run.max_abs_error = Some(err);
                if err.is_nan() || !check::within(prev, &outs, cfg.tolerance) {
                    return Err(PassError::Changed {
                        pass: name,
                        error: err,
                        tolerance: cfg.tolerance,
                    });
                }
                *prev = outs;
            }
            if let (Some(d), Some(before)) = (&self.dump, before_text) {
                if d.after.is_empty() || d.after.contains(&name) {
                    let after = print(g);
                    let stem = format!("{:02}-{name}", i + 1);
                    self.write(d.dir.join(format!("{stem}.ir")), &after)?;
                    let diff = similar::TextDiff::from_lines(&before, &after)
                        .unified_diff()
                        .context_radius(2)
                        .header("before", &format!("after {name}"))
                        .to_string();
                    self.write(d.dir.join(format!("{stem}.diff")), &diff)?;
                }
            }
            drop(span);
            report.runs.push(run);
        }
        Ok(report)
    }
}
