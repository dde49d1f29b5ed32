//! The `nvrtc` target: a graph lowered to CUDA on an NVIDIA GPU.
//!
//! Kernels are CUDA C from `kernels/cuda` (embedded in the binary),
//! compiled once per program by NVRTC for the GPU's own architecture and
//! cached on disk (see [`cache_dir`]); GEMMs go through cuBLASLt with a
//! heuristic algorithm per shape. Everything runs on one stream: a run
//! copies its inputs up in one transfer, launches, and copies the outputs
//! back. cudarc loads the CUDA libraries at run time, so this compiles
//! everywhere and [`available`] says whether this machine can run it.

/// Launches `$f` with `$cfg` on the program's stream, as a dependent of
/// the kernel ahead (programmatic dependent launch, when it is on): every
/// kernel entry point starts with `pdl_start()` or waits inside its
/// `_impl` before it reads or writes (`entry_points_wait_before_they_work`
/// checks the sources), so launching it early only hides its launch
/// latency, and its own early trigger lets the next kernel (a GEMV that
/// streams its weights before its wait) start sooner.
macro_rules! launch {
    ($gpu:expr, $f:expr, $cfg:expr; $($name:ident = $val:expr),* $(,)?) => {
        launch_dependent!($gpu, $f, $cfg, true; $($name = $val),*)
    };
}

/// Launches `$f` with `$cfg`, as a kernel that may start before the one
/// ahead of it ends (programmatic dependent launch,
/// `Gpu::launch_dependent`) when `$early` holds: it must then call
/// `pdl_wait()` before it reads anything an earlier kernel writes. The
/// arguments are bound to locals first so each outlives the launch.
macro_rules! launch_dependent {
    ($gpu:expr, $f:expr, $cfg:expr, $early:expr; $($name:ident = $val:expr),* $(,)?) => {{
        // The config first: argument names may shadow what it reads.
        let early = $early;
        let launch_cfg = $cfg;
        // Locals, so every argument outlives the launch; `x = x` is fine.
        $(
            #[allow(clippy::redundant_locals)]
            let $name = $val;
        )*
        let mut params: Vec<*mut std::ffi::c_void> =
            vec![$( &$name as *const _ as *mut std::ffi::c_void ),*];
        // SAFETY: the arguments are listed in the kernel's parameter order
        // with its parameter types, and the locals outlive the call.
        unsafe { $gpu.launch_dependent($f, launch_cfg, early, &mut params) }
    }};
}

mod chains;
mod compile;
mod device;
mod fuse;
mod gemm;
mod graphs;
mod l2warm;
mod launch;
mod mega;
mod pick;
mod profile;
mod program;
mod run;
mod select;
mod staging;
mod strided;

pub use compile::{cache_dir, CompileReport};
pub use device::available;
pub use gemm::GemmTuning;
pub use pick::{PickedId, SampleRow};
pub use program::{plan_summary, AttentionPaths, CudaProgram, CudaSummary, SkinnyGemm};
