//! Sampling: from one row of logits to the next token of one request.
//!
//! The order is the one vLLM and transformers use: penalties (repetition on
//! prompt and output tokens, presence and frequency on output tokens), then
//! temperature, then the top-k, top-p and min-p filters, then a draw from the
//! remaining distribution with the request's own random stream (so a seeded
//! request gives the same tokens whatever else is in the batch).
//! Temperature 0 is greedy (argmax, lowest id on ties). Logprobs are those
//! of the distribution after penalties and temperature, before filtering.
//! A NaN logit is never picked and takes no mass (as -inf), as on the GPU;
//! a row of nothing but NaN and -inf gives token 0 at -inf.

/// What a request asks of sampling.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `top_p`, in (0, 1].
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one, in [0, 1].
    pub min_p: f32,
    /// > 1 discourages tokens already in the prompt or output.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of tokens already generated.
    pub frequency_penalty: f32,
    /// Seeds this request's random stream; `None` takes one from the engine.
    pub seed: Option<u64>,
    /// Most tokens to generate (at least 1).
    pub max_tokens: usize,
    /// End-of-sequence and stop tokens cannot end generation before this
    /// many tokens (transformers' `min_new_tokens`).
    pub min_tokens: usize,
    /// Tokens that end generation (besides the model's end-of-sequence ids).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation (not included in the output text).
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence ids.
    pub ignore_eos: bool,
    /// Return the top-n logprobs of each sampled step.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: 16,
            min_tokens: 0,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

/// A request whose sampling parameters make no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("bad sampling parameters: {0}")]
pub struct SamplingError(pub String);

/// Below this temperature a request samples greedily, as in vLLM
/// (dividing by a temperature near 0 overflows the scaled logits).
pub const MIN_TEMPERATURE: f32 = 1e-5;

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..SamplingParams::default()
        }
    }

    /// The parameters a request runs with: a temperature below
    /// `MIN_TEMPERATURE` becomes 0, greedy (vLLM's rule).
    pub fn normalized(mut self) -> SamplingParams {
        if self.temperature < MIN_TEMPERATURE {
            self.temperature = 0.0;
        }
        self
    }

    /// Checks every field against its range (and token ids against `vocab`).
    pub fn validate(&self, vocab: usize) -> Result<(), SamplingError> {
        let bad = |m: String| Err(SamplingError(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1 (or unset for all tokens)".into());
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if !self.presence_penalty.is_finite() || !self.frequency_penalty.is_finite() {
            return bad("presence and frequency penalties must be finite".into());
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if let Some(t) = self.stop_token_ids.iter().find(|&&t| t as usize >= vocab) {
            return bad(format!(
                "stop token id {t} is outside the vocabulary (0..{vocab})"
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }
}

/// SplitMix64: each request's own random stream.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One sampled step.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub token: u32,
    /// Log probability of the sampled token.
    pub logprob: f32,
    /// The most likely tokens and their logprobs, if asked for.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Applies the penalties to `logits` in place. `prompt` and `output` are
/// the request's tokens so far.
pub fn apply_penalties(logits: &mut [f32], p: &SamplingParams, prompt: &[u32], output: &[u32]) {
    if p.repetition_penalty != 1.0 {
        let mut seen = vec![false; logits.len()];
        for &t in prompt.iter().chain(output) {
            if let Some(s) = seen.get_mut(t as usize) {
                *s = true;
            }
        }
        for (l, s) in logits.iter_mut().zip(seen) {
            if s {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &t in output {
            *counts.entry(t).or_insert(0) += 1;
        }
        for (t, c) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.presence_penalty + p.frequency_penalty * c as f32;
            }
        }
    }
}

/// log-softmax in f64 (stable), NaN taken as -inf. Logits at +inf share
/// all the mass (k of them: log p = -ln k each), as on the GPU.
fn log_softmax(x: &[f32]) -> Vec<f64> {
    let nan_as_neg_inf = |v: f32| if v.is_nan() { f64::NEG_INFINITY } else { v as f64 };
    let max = x
        .iter()
        .map(|&v| nan_as_neg_inf(v))
        .fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return vec![f64::NEG_INFINITY; x.len()];
    }
    // Shifted by the maximum, which itself gives 0 (inf - inf would be NaN).
    let shifted = |v: f32| {
        let v = nan_as_neg_inf(v);
        if v == max {
            0.0
        } else {
            v - max
        }
    };
    let log_sum = x.iter().map(|&v| shifted(v).exp()).sum::<f64>().ln();
    x.iter().map(|&v| shifted(v) - log_sum).collect()
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], p: &SamplingParams, prompt: &[u32], output: &[u32], rng: &mut Rng) -> Sample {
    sample_with(logits, p, prompt, output, || rng.uniform())
}

/// [`sample`] with the uniform in [0, 1) from `draw` (called once, and only
/// when the request samples), so another sampler (the GPU's) can be
/// checked draw for draw.
pub fn sample_with(
    logits: &[f32],
    p: &SamplingParams,
    prompt: &[u32],
    output: &[u32],
    draw: impl FnOnce() -> f64,
) -> Sample {
    let mut l = logits.to_vec();
    apply_penalties(&mut l, p, prompt, output);
    if p.temperature > 0.0 {
        for v in &mut l {
            *v /= p.temperature;
        }
    }
    let logp = log_softmax(&l);
    let token = if p.temperature == 0.0 {
        // argmax, lowest id on ties; NaN and -inf never win (token 0 when
        // nothing else is left, as the GPU's argmax)
        let mut best: Option<usize> = None;
        for (i, &v) in l.iter().enumerate() {
            if v > f32::NEG_INFINITY && best.is_none_or(|b| v > l[b]) {
                best = Some(i);
            }
        }
        best.unwrap_or(0)
    } else {
        // Candidates by decreasing probability (ties by id), then filters.
        let mut order: Vec<usize> = (0..l.len()).filter(|&i| logp[i] > f64::NEG_INFINITY).collect();
        order.sort_by(|&a, &b| logp[b].total_cmp(&logp[a]).then(a.cmp(&b)));
        if let Some(k) = p.top_k {
            order.truncate(k.max(1));
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = 0;
            for &i in &order {
                acc += logp[i].exp();
                keep += 1;
                if acc >= p.top_p as f64 {
                    break;
                }
            }
            order.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            if let Some(&first) = order.first() {
                let floor = logp[first] + (p.min_p as f64).ln();
                order.retain(|&i| logp[i] >= floor);
            }
        }
        let total: f64 = order.iter().map(|&i| logp[i].exp()).sum();
        let mut u = draw() * total;
        let mut pick = *order.last().unwrap_or(&0);
        for &i in &order {
            u -= logp[i].exp();
            if u < 0.0 {
                pick = i;
                break;
            }
        }
        pick
    };
    let top_logprobs = match p.logprobs {
        Some(n) if n > 0 => {
            let mut idx: Vec<usize> = (0..l.len()).collect();
            idx.sort_by(|&a, &b| logp[b].total_cmp(&logp[a]).then(a.cmp(&b)));
            idx.into_iter()
                .take(n)
                .map(|i| (i as u32, logp[i] as f32))
                .collect()
        }
        _ => Vec::new(),
    };
    Sample {
        token: token as u32,
        logprob: logp[token] as f32,
        top_logprobs,
    }
}
