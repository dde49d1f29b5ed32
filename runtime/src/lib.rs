//! `optc-runtime`: the serving runtime every target shares. It knows nothing
//! of graphs or targets: an executor runs steps, the runtime decides what
//! goes into them.
//!
//! - [`block_manager`]: the paged KV cache's blocks, with prefix reuse;
//! - [`engine`]: the step loop over an [`engine::Executor`];
//! - [`scheduler`]: which tokens of which requests each step runs
//!   (decode priority, chunked prefill, preemption by recompute);
//! - [`sampler`]: turning logits into tokens (greedy, temperature, top-k/p,
//!   min-p, penalties, seeds, logprobs);
//! - [`detokenize`]: incremental detokenisation and stop strings for
//!   streaming.

pub mod block_manager;
pub mod detokenize;
pub mod engine;
pub mod sampler;
pub mod scheduler;
