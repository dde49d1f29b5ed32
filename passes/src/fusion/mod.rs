//! Fusion passes: rewrites that turn the plain graph frontends give into
//! fewer, larger ops that backends implement well. Pattern fusions run on
//! an e-graph ([`egraph`]) with rules kept as data ([`rules`]); GEMM fusion
//! is a structural pass over the graph, after matmuls against weights
//! become linears ([`MatmulToLinear`]).

mod add_rmsnorm;
pub mod egraph;
mod gemm;
mod matmul_linear;
mod passes;
mod rope_layout;
pub mod rules;

pub use add_rmsnorm::FuseAddRmsNorm;
pub use gemm::FuseGemm;
pub use matmul_linear::MatmulToLinear;
pub use passes::{FuseAttention, FuseGelu, FuseLayerNorm, FuseRmsNorm, FuseRope, FuseSwiglu};
pub use rope_layout::SinkRopeTransposes;
