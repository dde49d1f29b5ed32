//! `optc-codegen`: lowering a finished graph to something that runs.
//!
//! - [`cpu`]: a plan of host kernels (`optc-kernels`) with a memory plan
//!   that reuses buffers by liveness; ops without a host kernel run their
//!   reference semantics from the IR, so every graph runs.
//! - [`nvrtc`]: CUDA kernels compiled at run time by NVRTC, GEMMs through
//!   cuBLASLt, on one NVIDIA GPU.
//! - [`tensorrt`]: the decoder-with-past network as ONNX, with the
//!   `trtexec` line and profile that build a TensorRT engine from it.

pub mod cpu;
mod lowering;
pub mod nvrtc;
pub mod tensorrt;

/// Why a graph could not be lowered or run; names the node or tensor.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    #[error("invalid graph: {0}")]
    Verify(#[from] optc_ir::VerifyError),
    #[error("weight @{name}: {message}")]
    Weight { name: String, message: String },
    #[error("input %{name}: {message}")]
    Input { name: String, message: String },
    #[error("{node}: {message}")]
    Node { node: String, message: String },
}
