//! Fusion passes: rewrites that turn the plain graph frontends give into
//! fewer, larger ops that backends implement well.

mod gemm;

pub use gemm::FuseGemm;
