//! `OPTC_CUDA_PROFILE=1`: GPU time per kernel kind, decode steps apart
//! from prefill ones (CUDA events around every step, CUDA graphs off),
//! and host time per phase, printed when the program drops. `OPTC_CUDA_PROFILE=graph` keeps CUDA graphs and times
//! each replay on the GPU against the host's work around it: whether a
//! decode step is bound by the GPU or by the host.

use std::collections::BTreeMap;

use super::program::CudaProgram;

/// Accumulated timings.
#[derive(Default)]
pub(super) struct Profile {
    /// kind -> (calls, GPU ms)
    pub(super) gpu: BTreeMap<String, (usize, f64)>,
    /// phase -> host ms of each call
    pub(super) host: BTreeMap<&'static str, Vec<f64>>,
    pub(super) runs: usize,
    /// Events around every CUDA graph replay (`graph` mode).
    pub(super) replays: Vec<(cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)>,
    /// Events per kernel (off in `graph` mode, which keeps CUDA graphs).
    pub(super) per_kernel: bool,
    /// When the last run that picked tokens returned them: the host time
    /// from there to the next run is the caller's (engine, step inputs).
    pub(super) last_pick: Option<std::time::Instant>,
}

impl Profile {
    /// Adds one call's host time (since `since`) to `phase`.
    pub(super) fn host_time(&mut self, phase: &'static str, since: std::time::Instant) {
        self.host
            .entry(phase)
            .or_default()
            .push(since.elapsed().as_secs_f64() * 1e3);
    }

    /// From `OPTC_CUDA_PROFILE`: `1` per kernel, `graph` per replay.
    pub(super) fn from_env() -> Option<Profile> {
        let mode = std::env::var("OPTC_CUDA_PROFILE").ok()?;
        let per_kernel = match mode.as_str() {
            "1" => true,
            "graph" => false,
            _ => return None,
        };
        Some(Profile {
            per_kernel,
            ..Profile::default()
        })
    }

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
                "  {k:<44} {n:>8} calls {ms:>10.2} ms {:>5.1}%\n",
                100.0 * ms / total.max(1e-9)
            ));
        }
        if !self.replays.is_empty() {
            let mut ms: Vec<f64> = self
                .replays
                .iter()
                .filter_map(|(a, b)| {
                    b.synchronize().ok()?;
                    a.elapsed_ms(b).ok().map(f64::from)
                })
                .collect();
            ms.sort_by(f64::total_cmp);
            let sum: f64 = ms.iter().sum();
            s.push_str(&format!(
                "  CUDA graph replays {:>8} {sum:>10.2} ms on the GPU (median {:.3} ms)\n",
                ms.len(),
                ms.get(ms.len() / 2).copied().unwrap_or(0.0)
            ));
        }
        for (k, calls) in &self.host {
            let mut sorted = calls.clone();
            sorted.sort_by(f64::total_cmp);
            let total: f64 = sorted.iter().sum();
            let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
            s.push_str(&format!(
                "  host {k:<28} {:>8} calls {total:>10.2} ms (median {:.1} us)\n",
                sorted.len(),
                median * 1e3
            ));
        }
        s
    }
}

impl Drop for CudaProgram {
    fn drop(&mut self) {
        // Copies into the pinned pick buffers end before they are freed.
        let _ = self.gpu.sync_all();
        self.pending.clear();
        self.pinned.clear();
        self.retired.clear();
        if let Some(p) = &self.profile {
            eprint!("{}", p.report());
        }
    }
}
