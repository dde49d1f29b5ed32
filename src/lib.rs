//! optc: an optimizing graph compiler and runtime for LLM inference.
//!
//! This crate is the public face of the workspace: it re-exports the IR
//! ([`ir`]) and holds the `optc` driver. Later stages (frontends, passes,
//! codegen, runtime) join here as they land.

pub mod bench;
mod compiler;
pub mod executor;
pub mod fixtures;
pub mod llm;

pub use compiler::Compiler;
pub use llm::{LlmOptions, Output, Prompt, Target, LLM};
pub use optc_codegen as codegen;
pub use optc_frontends as frontends;
pub use optc_ir as ir;
pub use optc_passes as passes;
pub use optc_runtime as runtime;

/// A model's tokenizer as the runtime's decoder (the runtime knows nothing
/// of frontends, so the two meet here).
pub struct TokenizerDecoder<'a>(pub &'a frontends::hf::HfTokenizer);

impl runtime::detokenize::Decode for TokenizerDecoder<'_> {
    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        self.0.decode(&ids, true).map_err(|e| e.to_string())
    }
}
