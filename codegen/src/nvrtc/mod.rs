//! The `nvrtc` target: a graph lowered to CUDA on an NVIDIA GPU.
//!
//! Kernels are CUDA C from `kernels/cuda` (embedded in the binary),
//! compiled once per program by NVRTC for the GPU's own architecture and
//! cached on disk (see [`cache_dir`]); GEMMs go through cuBLASLt with a
//! heuristic algorithm per shape. Everything runs on one stream: a run
//! copies its inputs up in one transfer, launches, and copies the outputs
//! back. cudarc loads the CUDA libraries at run time, so this compiles
//! everywhere and [`available`] says whether this machine can run it.

mod compile;
mod device;
mod gemm;
mod program;

pub use compile::{cache_dir, CompileReport};
pub use device::available;
pub use program::{CudaProgram, CudaSummary};
