//! `optc-frontends`: importers that turn models users already have into the
//! plain, unfused IR graph a faithful trace of the model would give.
//! Frontends never optimise; fusion and the rest are passes.
//!
//! - [`hf`]: Hugging Face model folders (config.json + safetensors +
//!   tokenizer.json + generation_config.json).
//! - [`gguf`]: llama.cpp GGUF files (llama architecture), dequantised on
//!   demand into the same graph.
//! - [`onnx`]: ONNX models, import and export.
//! - [`fx`]: torch.export `.pt2` archives.

pub mod fx;
pub mod gguf;
pub mod hf;
pub mod onnx;
