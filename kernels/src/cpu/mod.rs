//! Host kernels. Activations are f32 row-major slices; weights may stay in
//! f16/bf16 ([`gemm::WeightRef`]). Parallel kernels use rayon's global pool.

pub mod attention;
pub mod elementwise;
pub mod gemm;
pub mod layout;
pub mod norm;
pub mod rope;
