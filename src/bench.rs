//! `optc bench`: the standard serving workloads on one engine, with the
//! metrics the peer harness (`shared/peer/hf_baseline.py`) reports: output
//! tokens/s, time to first token, time per output token, decode step time.

use std::time::{Duration, Instant};

use crate::llm::{LlmError, LLM};
use crate::runtime::engine::Event;
use crate::runtime::sampler::SamplingParams;

/// One workload: `batch` requests of `input_len` random prompt tokens, each
/// generating exactly `output_len` tokens (end-of-sequence ignored), all
/// submitted at once.
#[derive(Clone, Debug)]
pub struct Workload {
    pub batch: usize,
    pub input_len: usize,
    pub output_len: usize,
    pub seed: u64,
    pub sampling: Sampling,
}

/// How a workload's requests pick tokens: greedy (temperature 0, what the
/// peer harness does) unless asked, to measure sampling's cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
        }
    }
}

impl Sampling {
    fn params(&self, max_tokens: usize, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: Some(seed),
            max_tokens,
            ignore_eos: true,
            ..SamplingParams::default()
        }
    }

    /// The sampler's own range checks, before a model loads.
    pub fn check(&self) -> Result<(), crate::runtime::sampler::SamplingError> {
        self.params(1, 0).validate(usize::MAX)
    }
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub workload: Workload,
    pub total: Duration,
    /// Every request's time to first token.
    pub ttft: Vec<Duration>,
    /// Every request's mean time per output token after the first.
    pub tpot: Vec<Duration>,
    /// Steps where every request was decoding.
    pub decode_steps: Vec<Duration>,
    pub output_tokens: usize,
}

/// The `q`-quantile (nearest rank) of durations, in ms.
pub fn quantile_ms(v: &[Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    s.sort_by(f64::total_cmp);
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

impl BenchResult {
    pub fn output_tokens_per_s(&self) -> f64 {
        self.output_tokens as f64 / self.total.as_secs_f64().max(1e-12)
    }

    /// The metrics as (JSON key, value), in reporting order.
    pub fn metrics(&self) -> [(&'static str, f64); 7] {
        [
            ("output_tok_s", self.output_tokens_per_s()),
            ("ttft_ms_p50", quantile_ms(&self.ttft, 0.5)),
            ("ttft_ms_p99", quantile_ms(&self.ttft, 0.99)),
            ("tpot_ms_p50", quantile_ms(&self.tpot, 0.5)),
            ("tpot_ms_p99", quantile_ms(&self.tpot, 0.99)),
            ("decode_step_ms_p50", quantile_ms(&self.decode_steps, 0.5)),
            ("total_s", self.total.as_secs_f64()),
        ]
    }

    /// A one-line summary.
    pub fn line(&self) -> String {
        let w = &self.workload;
        let [tps, t50, t99, p50, p99, step, total] = self.metrics().map(|(_, v)| v);
        format!(
            "batch {} prompt {} output {}: {tps:.1} output tok/s, TTFT p50 {t50:.1} ms p99 {t99:.1} ms, TPOT p50 {p50:.2} ms p99 {p99:.2} ms, decode step {step:.2} ms (p50), total {total:.2} s",
            w.batch, w.input_len, w.output_len
        )
    }

    /// The result as a JSON object (hand-written: a handful of numbers).
    pub fn json(&self) -> String {
        let w = &self.workload;
        let mut s = format!(
            "{{\"batch\": {}, \"input_len\": {}, \"output_len\": {}",
            w.batch, w.input_len, w.output_len
        );
        if w.sampling != Sampling::default() {
            let k = w.sampling.top_k.map_or("null".to_string(), |k| k.to_string());
            s.push_str(&format!(
                ", \"temperature\": {}, \"top_k\": {k}, \"top_p\": {}",
                w.sampling.temperature, w.sampling.top_p
            ));
        }
        for (k, v) in self.metrics() {
            s.push_str(&format!(", \"{k}\": {v:.4}"));
        }
        s.push('}');
        s
    }
}

/// `w`'s random prompts over a vocabulary of `vocab` tokens: distinct
/// seeds give distinct prompts, so no run of a benchmark finds another's
/// prompt in the prefix cache.
pub fn prompts(w: &Workload, vocab: usize) -> Vec<Vec<u32>> {
    // A bijection of the seed (xor, then a multiply by an odd constant),
    // kept off xorshift's fixed point 0.
    let mut state = (w.seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    if state == 0 {
        state = 1;
    }
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let vocab = vocab.max(1) as u64;
    (0..w.batch)
        .map(|_| (0..w.input_len).map(|_| (next() % vocab) as u32).collect())
        .collect()
}

/// Runs `w` on `llm` (whose vocabulary has `vocab` tokens).
pub fn run(llm: &mut LLM, vocab: usize, w: &Workload) -> Result<BenchResult, LlmError> {
    let start = Instant::now();
    let mut seqs = Vec::new();
    for (i, prompt) in prompts(w, vocab).into_iter().enumerate() {
        let params = w.sampling.params(w.output_len, w.seed.wrapping_add(i as u64));
        seqs.push(llm.engine().add(prompt, params)?);
    }
    let mut first = vec![None; w.batch];
    let mut last = vec![start; w.batch];
    let mut count = vec![0usize; w.batch];
    let mut decode_steps = Vec::new();
    let index = |s: u64| seqs.iter().position(|&x| x == s);
    while llm.engine().has_unfinished() {
        let all_decoding = first.iter().all(Option::is_some);
        let t0 = Instant::now();
        let events = llm.engine().step().map_err(LlmError::Exec)?;
        let now = Instant::now();
        if all_decoding {
            decode_steps.push(now - t0);
        }
        for e in events {
            if let Event::Token { seq, .. } = e {
                if let Some(i) = index(seq) {
                    first[i].get_or_insert(now);
                    last[i] = now;
                    count[i] += 1;
                }
            }
        }
    }
    let total = start.elapsed();
    let ttft = first.iter().map(|f| f.unwrap_or(start + total) - start).collect();
    let tpot = (0..w.batch)
        .filter(|&i| count[i] > 1)
        .map(|i| (last[i] - first[i].unwrap_or(start)) / (count[i] - 1) as u32)
        .collect();
    Ok(BenchResult {
        workload: w.clone(),
        total,
        ttft,
        tpot,
        decode_steps,
        output_tokens: count.iter().sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds `optc bench` gives its warm-up and measured runs (7, then
    /// 11, 12, ...) once mapped two seeds to one prompt (`seed | 1`), so
    /// every other run hit the prefix cache.
    #[test]
    fn distinct_seeds_give_distinct_prompts() {
        let w = |seed| Workload {
            batch: 2,
            input_len: 16,
            output_len: 1,
            seed,
            sampling: Sampling::default(),
        };
        let mut seen = std::collections::HashSet::new();
        for seed in [7, 11, 12, 13, 14, 15, 0, 1] {
            let p = prompts(&w(seed), 1000);
            assert_eq!(p.len(), 2);
            assert!(p.iter().all(|q| q.len() == 16 && q.iter().all(|&t| t < 1000)));
            assert_ne!(p[0], p[1], "seed {seed}: the batch's prompts");
            for q in p {
                assert!(seen.insert(q), "seed {seed} repeats an earlier prompt");
            }
        }
        assert_eq!(prompts(&w(12), 1000), prompts(&w(12), 1000));
    }
}
