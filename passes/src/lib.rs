//! `optc-passes`: the pass framework and the graph rewrites.
//!
//! A [`Pass`] rewrites a graph in place; the [`PassManager`] runs a pipeline
//! of them, verifies the graph after each, times them, can dump the text IR
//! and a diff after each, and can check numerically (on the reference
//! interpreter) that each pass kept the graph's meaning. Pipelines come from
//! [`Pipeline::default_pipeline`] or a TOML file; passes are found by name in
//! a [`PassRegistry`], where users add their own.

pub mod check;
pub mod cleanup;
pub mod fusion;
pub mod kv_cache;
mod manager;
mod pass;
pub mod past_kv;
mod pipeline;
pub mod quant;
mod rebuild;
mod registry;

pub use manager::{DumpConfig, PassManager, PassRun, PipelineReport};
pub use pass::{Pass, PassContext, PassError, PassReport};
pub use pipeline::{PassSpec, Pipeline};
pub use registry::PassRegistry;
