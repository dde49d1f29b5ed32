//! `optc-frontends`: importers that turn models users already have into the
//! plain, unfused IR graph a faithful trace of the model would give.
//! Frontends never optimise; fusion and the rest are passes.
//!
//! - [`hf`]: Hugging Face model folders (config.json + safetensors +
//!   tokenizer.json + generation_config.json).

pub mod hf;
