//! The engine step loop: schedule, run a step on an executor, sample, and
//! update, until every request is done. Targets plug in through
//! [`Executor`]; the runtime around it is the same for all of them.

use std::collections::{BTreeMap, HashMap};

use crate::block_manager::{BlockId, SeqId};
use crate::sampler::{sample, Rng, Sample, SamplingParams};
use crate::scheduler::{FinishReason, RequestError, Scheduler, SchedulerConfig};

/// One sequence's part of a step, with everything an executor may need:
/// the new tokens and their positions and cache slots (for paged
/// executors), the block table, and the whole token history (for
/// executors without a cache; empty unless [`Executor::needs_history`]).
#[derive(Clone, Debug)]
pub struct StepSeq {
    pub seq: SeqId,
    pub start: usize,
    pub tokens: Vec<u32>,
    pub slots: Vec<usize>,
    pub block_table: Vec<BlockId>,
    pub history: Vec<u32>,
    /// Whether the last new token's logits are wanted.
    pub sample: bool,
}

/// One sampling sequence's draw, for an executor that samples where the
/// logits are ([`Executor::step_sample`]): the request's temperature and
/// filters (as in [`SamplingParams`]) and the uniform it drew from its own
/// random stream for this step (0 when greedy, which draws none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowSampling {
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: f32,
    pub min_p: f32,
    pub uniform: f64,
}

/// Runs steps of a model: a target's half of the runtime.
pub trait Executor {
    /// Processes every sequence's new tokens (writing their KV) and returns
    /// one row of logits per sequence with `sample`, in order.
    fn step(&mut self, seqs: &[StepSeq]) -> Result<Vec<Vec<f32>>, String>;

    /// Like [`Executor::step`], but returns each sampling sequence's
    /// greedy token and its log probability, computed where the logits
    /// are (a GPU copies back 8 bytes a sequence instead of a row of
    /// logits). The engine calls it only when every sampling sequence is
    /// plain greedy; `None` means "not supported, use `step`".
    fn step_greedy(&mut self, seqs: &[StepSeq]) -> Option<Result<Vec<(u32, f32)>, String>> {
        let _ = seqs;
        None
    }

    /// Like [`Executor::step_greedy`], for batches where some request
    /// samples: each sampling sequence's token (and its log probability
    /// under the tempered logits) drawn where the logits are, with its
    /// [`RowSampling`], in order. The engine calls it only when no
    /// sampling sequence needs penalties, masks or top logprobs (those
    /// stay on the host); `None` means "not supported, use `step`".
    fn step_sample(
        &mut self,
        seqs: &[StepSeq],
        rows: &[RowSampling],
    ) -> Option<Result<Vec<(u32, f32)>, String>> {
        let _ = (seqs, rows);
        None
    }

    /// Whether steps must carry each sequence's whole token history (an
    /// executor that recomputes it, like the reference interpreter).
    /// Paged executors say no: copying every history every step is host
    /// work that grows with batch and context.
    fn needs_history(&self) -> bool {
        false
    }
}

impl<E: Executor + ?Sized> Executor for Box<E> {
    fn step(&mut self, seqs: &[StepSeq]) -> Result<Vec<Vec<f32>>, String> {
        (**self).step(seqs)
    }

    fn step_greedy(&mut self, seqs: &[StepSeq]) -> Option<Result<Vec<(u32, f32)>, String>> {
        (**self).step_greedy(seqs)
    }

    fn step_sample(
        &mut self,
        seqs: &[StepSeq],
        rows: &[RowSampling],
    ) -> Option<Result<Vec<(u32, f32)>, String>> {
        (**self).step_sample(seqs, rows)
    }

    fn needs_history(&self) -> bool {
        (**self).needs_history()
    }
}

/// Whether the executor may pick this request's next token from the raw
/// logits: no penalties, no logprobs asked, and no tokens masked
/// (min_tokens already reached).
fn executor_pickable(p: &SamplingParams, produced: usize) -> bool {
    p.repetition_penalty == 1.0
        && p.presence_penalty == 0.0
        && p.frequency_penalty == 0.0
        && p.logprobs.is_none()
        && produced >= p.min_tokens
}

/// Something that happened to a request during a step.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A new token.
    Token { seq: SeqId, sample: Sample },
    /// The request is done.
    Finished {
        seq: SeqId,
        output: Vec<u32>,
        reason: FinishReason,
    },
}

/// Schedules, executes and samples.
pub struct Engine<E: Executor> {
    sched: Scheduler,
    exec: E,
    rngs: HashMap<SeqId, Rng>,
    eos: Vec<u32>,
    next_id: SeqId,
}

impl<E: Executor> Engine<E> {
    pub fn new(cfg: SchedulerConfig, exec: E, eos: Vec<u32>) -> Engine<E> {
        Engine {
            sched: Scheduler::new(cfg),
            exec,
            rngs: HashMap::new(),
            eos,
            next_id: 0,
        }
    }

    /// The executor (for targets that report their own statistics).
    pub fn executor(&self) -> &E {
        &self.exec
    }

    /// The executor, to change its settings between steps.
    pub fn executor_mut(&mut self) -> &mut E {
        &mut self.exec
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    /// Queues a request; returns its id.
    pub fn add(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<SeqId, RequestError> {
        let id = self.next_id;
        let seed = params
            .seed
            .unwrap_or(0x5eed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        self.sched.add(id, prompt, params, self.eos.clone())?;
        self.rngs.insert(id, Rng::new(seed));
        self.next_id += 1;
        Ok(id)
    }

    /// Ends a request early; returns its output so far.
    pub fn abort(&mut self, seq: SeqId) -> Option<Vec<u32>> {
        self.rngs.remove(&seq);
        self.sched.abort(seq)
    }

    pub fn has_unfinished(&self) -> bool {
        self.sched.num_unfinished() > 0
    }

    /// Runs one step and returns what happened.
    pub fn step(&mut self) -> Result<Vec<Event>, String> {
        let plan = self.sched.schedule();
        if plan.scheduled.is_empty() {
            return Ok(Vec::new());
        }
        let history = self.exec.needs_history();
        let seqs: Vec<StepSeq> = plan
            .scheduled
            .iter()
            .map(|s| StepSeq {
                seq: s.seq,
                start: s.start,
                tokens: s.tokens.clone(),
                slots: self
                    .sched
                    .slots(s.seq, s.start..s.start + s.tokens.len())
                    .unwrap_or_default(),
                block_table: self
                    .sched
                    .block_table(s.seq)
                    .map(<[BlockId]>::to_vec)
                    .unwrap_or_default(),
                history: if history {
                    self.sched.tokens(s.seq).unwrap_or_default()
                } else {
                    Vec::new()
                },
                sample: s.sample,
            })
            .collect();
        let wanted = seqs.iter().filter(|s| s.sample).count();
        let samples = match self.executor_picks(&seqs) {
            Some(tokens) => {
                let tokens = tokens?;
                if tokens.len() != wanted {
                    return Err(format!(
                        "executor returned {} tokens for {wanted} sampling sequences",
                        tokens.len()
                    ));
                }
                tokens
                    .into_iter()
                    .map(|(token, logprob)| Sample {
                        token,
                        logprob,
                        top_logprobs: Vec::new(),
                    })
                    .collect()
            }
            None => self.host_samples(&seqs, wanted)?,
        };
        let mut events = Vec::new();
        let mut sampled = BTreeMap::new();
        for (s, smp) in seqs.iter().filter(|s| s.sample).zip(samples) {
            sampled.insert(s.seq, smp.token);
            events.push(Event::Token {
                seq: s.seq,
                sample: smp,
            });
        }
        for f in self.sched.update(&plan, &sampled) {
            self.rngs.remove(&f.seq);
            events.push(Event::Finished {
                seq: f.seq,
                output: f.output,
                reason: f.reason,
            });
        }
        Ok(events)
    }

    /// Each sampling sequence's token drawn here from the executor's logits
    /// (penalties, masks and logprobs included).
    fn host_samples(&mut self, seqs: &[StepSeq], wanted: usize) -> Result<Vec<Sample>, String> {
        let rows = self.exec.step(seqs)?;
        if rows.len() != wanted {
            return Err(format!(
                "executor returned {} logit rows for {wanted} sampling sequences",
                rows.len()
            ));
        }
        let mut samples = Vec::with_capacity(wanted);
        for (s, mut row) in seqs.iter().filter(|s| s.sample).zip(rows) {
            let (params, prompt, output) =
                self.sched.request(s.seq).ok_or("scheduled an unknown sequence")?;
            // min_tokens: end-of-sequence and stop tokens cannot come early.
            if output.len() < params.min_tokens {
                for &t in self.eos.iter().chain(&params.stop_token_ids) {
                    if let Some(l) = row.get_mut(t as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let rng = self
                .rngs
                .get_mut(&s.seq)
                .ok_or("sequence without a random stream")?;
            samples.push(sample(&row, params, prompt, output, rng));
        }
        Ok(samples)
    }

    /// The step's tokens picked by the executor, when every sampling
    /// sequence allows it and the executor can: greedy for all-greedy
    /// batches, else drawn with each request's uniform (taken from its
    /// stream only when the executor takes the step, so a fallback to
    /// host sampling sees the same stream).
    fn executor_picks(&mut self, seqs: &[StepSeq]) -> Option<Result<Vec<(u32, f32)>, String>> {
        let mut rows = Vec::new();
        let mut drawn = Vec::new();
        for s in seqs.iter().filter(|s| s.sample) {
            let (p, _, out) = self.sched.request(s.seq)?;
            if !executor_pickable(p, out.len()) {
                return None;
            }
            let mut uniform = 0.0;
            if p.temperature > 0.0 {
                let mut rng = self.rngs.get(&s.seq)?.clone();
                uniform = rng.uniform();
                drawn.push((s.seq, rng));
            }
            rows.push(RowSampling {
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                min_p: p.min_p,
                uniform,
            });
        }
        if drawn.is_empty() {
            return self.exec.step_greedy(seqs);
        }
        let r = self.exec.step_sample(seqs, &rows)?;
        self.rngs.extend(drawn);
        Some(r)
    }
}
