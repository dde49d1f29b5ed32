//! The CPU target: [`CpuProgram`] lowers a graph to a plan of host kernels
//! and runs it.
//!
//! Lowering decides, per op, which host kernel runs it (or the op's
//! reference `eval` for cold ops such as `constant` and `cos` on a handful
//! of values), which values are views of others (`reshape`, `unsqueeze`,
//! `squeeze`: no copy), and which buffer each value lives in: values share
//! buffers once the earlier one is dead (a linear scan over the schedule).
//! Float activations are f32 in memory, rounded to the declared dtype after
//! each op (so a bf16 graph computes what the interpreter computes, up to
//! f32 accumulation); weights keep their stored dtype where a kernel reads
//! them directly (`linear`, `embedding`).
//!
//! An input with the same name and type as an output is *state* (the KV
//! caches of a step graph): the program owns it, ops update it in place,
//! and it persists between runs.

mod buffers;
mod exec;
mod plan;

pub use plan::{CpuProgram, PlanSummary};
