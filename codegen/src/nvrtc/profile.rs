//! `OPTC_CUDA_PROFILE=1`: GPU time per kernel kind (CUDA events around
//! every step) and host time per phase, printed when the program drops.

use std::collections::BTreeMap;

use super::program::CudaProgram;

/// Accumulated timings.
#[derive(Default)]
pub(super) struct Profile {
    /// kind -> (calls, GPU ms)
    pub(super) gpu: BTreeMap<String, (usize, f64)>,
    /// phase -> host ms
    pub(super) host: BTreeMap<&'static str, f64>,
    pub(super) runs: usize,
}

impl Profile {
    pub(super) fn report(&self) -> String {
        let total: f64 = self.gpu.values().map(|v| v.1).sum();
        let mut rows: Vec<_> = self.gpu.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let mut s = format!(
            "nvrtc profile over {} runs: {total:.1} ms of GPU time in steps\n",
            self.runs
        );
        for (k, (n, ms)) in rows {
            s.push_str(&format!(
                "  {k:<28} {n:>8} calls {ms:>10.2} ms {:>5.1}%\n",
                100.0 * ms / total.max(1e-9)
            ));
        }
        for (k, ms) in &self.host {
            s.push_str(&format!("  host {k:<23} {ms:>10.2} ms\n"));
        }
        s
    }
}

impl Drop for CudaProgram {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            eprint!("{}", p.report());
        }
    }
}
