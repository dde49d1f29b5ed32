//! The engine step loop: schedule, run a step on an executor, sample, and
//! update, until every request is done. Targets plug in through
//! [`Executor`]; the runtime around it is the same for all of them.

use std::collections::BTreeMap;

use crate::block_manager::{BlockId, SeqId, SeqMap};
use crate::sampler::{sample, Rng, Sample, SamplingParams};
use crate::scheduler::{FinishReason, RequestError, Scheduler, SchedulerConfig, StepPlan};

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
    /// With asynchronous scheduling: the (single) token is not known yet;
    /// it is the one the executor picked for this row of the step
    /// submitted before ([`Executor::submit`]), and `tokens` holds
    /// [`crate::scheduler::PENDING_TOKEN`] in its place.
    pub prev_pick: Option<usize>,
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

    /// Starts a step whose tokens are picked where the logits are (greedy
    /// when `rows` is `None`, else drawn with each sampling row's
    /// [`RowSampling`]) and returns without waiting for them, so the host
    /// can plan the next step meanwhile. Sequences with a `prev_pick`
    /// take their token from the picks of the step submitted before this
    /// one. [`Executor::collect`] returns the picks, oldest step first;
    /// the engine collects a step after submitting the next. `None`
    /// means "not supported, use the synchronous calls".
    fn submit(&mut self, seqs: &[StepSeq], rows: Option<&[RowSampling]>) -> Option<Result<(), String>> {
        let _ = (seqs, rows);
        None
    }

    /// The picks (token, log probability) of the oldest submitted step
    /// not collected yet, one per sampling sequence in order.
    fn collect(&mut self) -> Result<Vec<(u32, f32)>, String> {
        Err("no step was submitted".into())
    }

    /// Whether steps must carry each sequence's whole token history (an
    /// executor that recomputes it, like the reference interpreter).
    /// Paged executors say no: copying every history every step is host
    /// work that grows with batch and context.
    fn needs_history(&self) -> bool {
        false
    }

    /// A line on how the executor runs steps that a benchmark should
    /// print beside its numbers (e.g. which decode path a GPU program
    /// took), if it has one.
    fn report(&self) -> Option<String> {
        None
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

    fn submit(&mut self, seqs: &[StepSeq], rows: Option<&[RowSampling]>) -> Option<Result<(), String>> {
        (**self).submit(seqs, rows)
    }

    fn collect(&mut self) -> Result<Vec<(u32, f32)>, String> {
        (**self).collect()
    }

    fn needs_history(&self) -> bool {
        (**self).needs_history()
    }

    fn report(&self) -> Option<String> {
        (**self).report()
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

/// Tokens the executor picked, as samples (no top logprobs: a request
/// that asks for them is sampled on the host).
fn picked(picks: Vec<(u32, f32)>) -> Vec<Sample> {
    picks
        .into_iter()
        .map(|(token, logprob)| Sample {
            token,
            logprob,
            top_logprobs: Vec::new(),
        })
        .collect()
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

/// A step submitted to the executor whose tokens are not read yet.
struct InFlight {
    plan: StepPlan,
    /// The sequence of each sampling row, in order (the rows of its picks).
    rows: Vec<SeqId>,
}

/// Schedules, executes and samples.
///
/// With an executor that supports [`Executor::submit`], steps overlap
/// (asynchronous scheduling, on by default): while step n runs, the host
/// plans step n + 1 as if every sequence had its next token, submits it
/// (its new tokens come from step n's picks, on the executor's side) and
/// only then reads step n's tokens. A request that stops at step n has
/// had one token computed in vain. [`Engine::step`] then returns the
/// events of the step before the one it submitted (none on the first).
pub struct Engine<E: Executor> {
    sched: Scheduler,
    exec: E,
    rngs: SeqMap<Rng>,
    eos: Vec<u32>,
    next_id: SeqId,
    inflight: Option<InFlight>,
    asynchronous: bool,
    /// Set when a step failed with another in flight: the scheduler had
    /// counted that step as done, so the engine cannot go on.
    broken: Option<String>,
}

impl<E: Executor> Engine<E> {
    pub fn new(cfg: SchedulerConfig, exec: E, eos: Vec<u32>) -> Engine<E> {
        Engine {
            sched: Scheduler::new(cfg),
            exec,
            rngs: SeqMap::default(),
            eos,
            next_id: 0,
            inflight: None,
            asynchronous: true,
            broken: None,
        }
    }

    /// Turns asynchronous scheduling (see [`Engine`]) on or off; off, every
    /// step waits for its tokens before the next is planned. Takes effect
    /// once no step is in flight.
    pub fn set_async(&mut self, on: bool) {
        self.asynchronous = on;
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

    /// Requests not finished, or a step whose tokens are still to be read.
    pub fn has_unfinished(&self) -> bool {
        self.sched.num_unfinished() > 0 || self.inflight.is_some()
    }

    /// Runs one step and returns what happened.
    pub fn step(&mut self) -> Result<Vec<Event>, String> {
        if let Some(e) = &self.broken {
            return Err(format!("the engine stopped after an executor error: {e}"));
        }
        if let Some(a) = self.inflight.take() {
            let r = self.step_after(a);
            if let Err(e) = &r {
                self.broken = Some(e.clone());
            }
            return r;
        }
        let plan = self.sched.schedule();
        if plan.scheduled.is_empty() {
            return Ok(Vec::new());
        }
        let seqs = self.step_seqs(&plan, None);
        if self.asynchronous {
            if let Some(rows) = self.submit(&seqs) {
                self.inflight = Some(InFlight { plan, rows: rows? });
                return Ok(Vec::new());
            }
        }
        self.run_now(&plan, &seqs, false)
    }

    /// With step `a` in flight: plans and submits the next step, then
    /// reads `a`'s tokens. Falls back to waiting for `a` first when the
    /// next plan could need a preemption, and to running the next step
    /// here when its sampling needs the host.
    fn step_after(&mut self, a: InFlight) -> Result<Vec<Event>, String> {
        let Some(plan) = self.sched.schedule_ahead(&a.plan) else {
            let picks = self.exec.collect()?;
            return self.apply(&a, picks, false);
        };
        if plan.scheduled.is_empty() {
            let picks = self.exec.collect()?;
            return self.apply(&a, picks, true);
        }
        let mut seqs = self.step_seqs(&plan, Some(&a.rows));
        if self.asynchronous {
            if let Some(rows) = self.submit(&seqs) {
                let rows = rows?;
                let picks = self.exec.collect()?;
                let events = self.apply(&a, picks, true)?;
                self.inflight = Some(InFlight { plan, rows });
                return Ok(events);
            }
        }
        // The placeholders get `a`'s tokens here, and the step runs now,
        // without the requests `a` ended (synchronous scheduling would not
        // have planned them).
        let mut plan = plan;
        let picks = self.exec.collect()?;
        for s in &mut seqs {
            if let Some(r) = s.prev_pick.take() {
                let (token, _) = picks
                    .get(r)
                    .ok_or("a placeholder past the previous step's picks")?;
                s.tokens = vec![*token];
            }
        }
        let mut events = self.apply(&a, picks, true)?;
        plan.scheduled.retain(|s| self.sched.is_running(s.seq));
        seqs.retain(|s| self.sched.is_running(s.seq));
        if !plan.scheduled.is_empty() {
            events.extend(self.run_now(&plan, &seqs, false)?);
        }
        Ok(events)
    }

    /// Each scheduled sequence's part of a step. `prev_rows`: the sampling
    /// rows of the step in flight, whose picks are the placeholders.
    fn step_seqs(&self, plan: &StepPlan, prev_rows: Option<&[SeqId]>) -> Vec<StepSeq> {
        let history = self.exec.needs_history();
        let row_of: SeqMap<usize> = prev_rows
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(r, &s)| (s, r))
            .collect();
        plan.scheduled
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
                // A sequence that sampled in the step in flight decodes
                // that token: it is this step's one token.
                prev_pick: row_of.get(&s.seq).copied(),
            })
            .collect()
    }

    /// Runs a planned step and waits for its tokens.
    fn run_now(&mut self, plan: &StepPlan, seqs: &[StepSeq], ahead: bool) -> Result<Vec<Event>, String> {
        let wanted = seqs.iter().filter(|s| s.sample).count();
        let samples = match self.executor_picks(seqs) {
            Some(tokens) => picked(tokens?),
            None => self.host_samples(seqs, wanted)?,
        };
        let rows: Vec<SeqId> = seqs.iter().filter(|s| s.sample).map(|s| s.seq).collect();
        self.apply_rows(plan, &rows, samples, ahead)
    }

    /// Applies a submitted step's picks.
    fn apply(&mut self, a: &InFlight, picks: Vec<(u32, f32)>, ahead: bool) -> Result<Vec<Event>, String> {
        self.apply_rows(&a.plan, &a.rows, picked(picks), ahead)
    }

    /// The step's tokens become events and the scheduler's state; a token
    /// of a request that stopped, was aborted or preempted since the step
    /// was planned is dropped.
    fn apply_rows(
        &mut self,
        plan: &StepPlan,
        rows: &[SeqId],
        samples: Vec<Sample>,
        ahead: bool,
    ) -> Result<Vec<Event>, String> {
        if samples.len() != rows.len() {
            return Err(format!(
                "executor returned {} tokens for {} sampling sequences",
                samples.len(),
                rows.len()
            ));
        }
        let mut events = Vec::new();
        let mut sampled = BTreeMap::new();
        for (&seq, smp) in rows.iter().zip(samples) {
            if !self.sched.is_running(seq) {
                continue;
            }
            sampled.insert(seq, smp.token);
            events.push(Event::Token { seq, sample: smp });
        }
        let finished = if ahead {
            self.sched.update_ahead(plan, &sampled)
        } else {
            self.sched.update(plan, &sampled)
        };
        for f in finished {
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

    /// The sampling rows of a step the executor may pick, each with its
    /// uniform drawn from a copy of the request's stream (the streams
    /// advance only if the executor takes the step), or `None` when some
    /// request needs the host (penalties, logprobs, masks).
    #[allow(clippy::type_complexity)]
    fn pick_rows(&self, seqs: &[StepSeq]) -> Option<(Vec<RowSampling>, Vec<(SeqId, Rng)>)> {
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
        Some((rows, drawn))
    }

    /// The step's tokens picked by the executor, when every sampling
    /// sequence allows it and the executor can: greedy for all-greedy
    /// batches, else drawn with each request's uniform.
    fn executor_picks(&mut self, seqs: &[StepSeq]) -> Option<Result<Vec<(u32, f32)>, String>> {
        let (rows, drawn) = self.pick_rows(seqs)?;
        if drawn.is_empty() {
            return self.exec.step_greedy(seqs);
        }
        let r = self.exec.step_sample(seqs, &rows)?;
        self.rngs.extend(drawn);
        Some(r)
    }

    /// Submits a step (see [`Executor::submit`]) when the executor may pick
    /// all its tokens; returns its sampling rows' sequences.
    fn submit(&mut self, seqs: &[StepSeq]) -> Option<Result<Vec<SeqId>, String>> {
        let (rows, drawn) = self.pick_rows(seqs)?;
        let greedy = drawn.is_empty();
        let r = self.exec.submit(seqs, (!greedy).then_some(rows.as_slice()))?;
        if r.is_ok() {
            self.rngs.extend(drawn);
        }
        Some(r.map(|()| seqs.iter().filter(|s| s.sample).map(|s| s.seq).collect()))
    }
}
