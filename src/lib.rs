//! optc: an optimizing graph compiler and runtime for LLM inference.
//!
//! This crate is the public face of the workspace: it re-exports the IR
//! ([`ir`]) and holds the `optc` driver. Later stages (frontends, passes,
//! codegen, runtime) join here as they land.

mod compiler;
pub mod fixtures;

pub use compiler::Compiler;
pub use optc_frontends as frontends;
pub use optc_ir as ir;
pub use optc_passes as passes;
