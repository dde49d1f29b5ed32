//! `optc-kernels`: the kernels backends run. [`cpu`] holds the host kernels
//! of the CPU target: plain functions on f32 slices (and weights in their
//! stored dtype), with no knowledge of graphs, so each is tested alone
//! against a naive loop and the codegen picks them per op. [`cuda`] holds
//! the CUDA C sources the `nvrtc` target compiles at run time.

pub mod cpu;
pub mod cuda;
