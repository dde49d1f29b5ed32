//! The scheduler: which tokens of which requests go into the next step.
//!
//! Requests wait in arrival order and run once their blocks are allocated.
//! Every step spends a token budget (`max_num_tokens`) over at most
//! `max_batch_size` sequences: running sequences that are decoding come
//! first (one token each), then prompt chunks of running sequences that are
//! still prefilling, then new requests, first come first served, whose
//! prompts may be split across steps (chunked prefill). When the cache runs
//! out of blocks, the most recently admitted running sequence is preempted:
//! its blocks are freed and it goes back to the front of the queue, to be
//! recomputed from its prompt and the tokens it already generated. A request
//! is never dropped or duplicated: it is waiting, running or finished.

use std::collections::{BTreeMap, VecDeque};

use crate::block_manager::{BlockError, BlockManager, SeqId, SeqMap};
use crate::sampler::SamplingParams;

/// Limits of a step and of the cache.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub max_batch_size: usize,
    pub max_num_tokens: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    /// Longest prompt + output a sequence may reach.
    pub max_model_len: usize,
    pub vocab_size: usize,
}

/// A request the scheduler refuses; it never disturbs the others.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("request {0}: the prompt is empty")]
    EmptyPrompt(SeqId),
    #[error("request {id}: prompt of {len} tokens plus max_tokens {max} exceeds the context of {ctx}")]
    TooLong {
        id: SeqId,
        len: usize,
        max: usize,
        ctx: usize,
    },
    #[error("request {id}: token id {token} is outside the vocabulary (0..{vocab})")]
    UnknownToken { id: SeqId, token: u32, vocab: usize },
    #[error("request {id}: {message}")]
    Sampling { id: SeqId, message: String },
    #[error("request {0} is already known")]
    Duplicate(SeqId),
    #[error("request {id} needs {needed} blocks but the cache has only {total}")]
    NeverFits { id: SeqId, needed: usize, total: usize },
}

/// Why a sequence finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// Reached `max_tokens`.
    Length,
    /// Produced an end-of-sequence or stop token.
    Stop,
}

#[derive(Clone, Debug)]
struct Seq {
    prompt: Vec<u32>,
    output: Vec<u32>,
    params: SamplingParams,
    eos: Vec<u32>,
    /// Tokens (of prompt + output) whose KV is in the cache.
    computed: usize,
    /// Admission order, for choosing whom to preempt.
    admitted: u64,
    /// The last output token is a placeholder ([`PENDING_TOKEN`]) for the
    /// one a step still in flight samples (asynchronous scheduling).
    pending: bool,
}

/// The token id a step planned ahead carries for a token not known yet:
/// the executor takes the real one from the step before (see
/// [`Scheduler::schedule_ahead`]). A valid id, so input checks pass.
pub const PENDING_TOKEN: u32 = 0;

impl Seq {
    fn tokens(&self) -> Vec<u32> {
        let mut t = self.prompt.clone();
        t.extend(&self.output);
        t
    }

    fn len(&self) -> usize {
        self.prompt.len() + self.output.len()
    }

    /// Tokens `from..to` of the prompt then the output, copying only those
    /// (a decode step must not copy the whole context).
    fn slice(&self, from: usize, to: usize) -> Vec<u32> {
        let p = self.prompt.len();
        let mut v = Vec::with_capacity(to.saturating_sub(from));
        if from < p {
            v.extend_from_slice(&self.prompt[from..to.min(p)]);
        }
        if to > p {
            v.extend_from_slice(&self.output[from.max(p) - p..to - p]);
        }
        v
    }
}

/// One sequence's share of a step.
#[derive(Clone, Debug, PartialEq)]
pub struct Scheduled {
    pub seq: SeqId,
    /// Position of the first token in `tokens`.
    pub start: usize,
    /// Token ids to process (their KV gets written).
    pub tokens: Vec<u32>,
    /// Whether this chunk ends the known tokens, so its last row's logits
    /// sample the next token.
    pub sample: bool,
}

/// What the next step runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepPlan {
    pub scheduled: Vec<Scheduled>,
    /// Sequences preempted to make room (they will be recomputed).
    pub preempted: Vec<SeqId>,
}

impl StepPlan {
    pub fn num_tokens(&self) -> usize {
        self.scheduled.iter().map(|s| s.tokens.len()).sum()
    }
}

/// A finished request.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub seq: SeqId,
    pub output: Vec<u32>,
    pub reason: FinishReason,
}

/// Waiting and running sequences, and the cache they share.
pub struct Scheduler {
    cfg: SchedulerConfig,
    blocks: BlockManager,
    waiting: VecDeque<SeqId>,
    running: Vec<SeqId>,
    seqs: BTreeMap<SeqId, Seq>,
    next_admission: u64,
    /// How many times any sequence was preempted.
    pub preemptions: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Scheduler {
        let blocks = BlockManager::new(cfg.num_blocks, cfg.block_size);
        Scheduler {
            cfg,
            blocks,
            waiting: VecDeque::new(),
            running: Vec::new(),
            seqs: BTreeMap::new(),
            next_admission: 0,
            preemptions: 0,
        }
    }

    pub fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    /// Requests not finished yet.
    pub fn num_unfinished(&self) -> usize {
        self.seqs.len()
    }

    pub fn block_table(&self, seq: SeqId) -> Option<&[crate::block_manager::BlockId]> {
        self.blocks.block_table(seq)
    }

    /// Queues a request after checking it; a bad request changes nothing.
    pub fn add(
        &mut self,
        id: SeqId,
        prompt: Vec<u32>,
        params: SamplingParams,
        eos: Vec<u32>,
    ) -> Result<(), RequestError> {
        if self.seqs.contains_key(&id) {
            return Err(RequestError::Duplicate(id));
        }
        if prompt.is_empty() {
            return Err(RequestError::EmptyPrompt(id));
        }
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(RequestError::UnknownToken {
                id,
                token: t,
                vocab: self.cfg.vocab_size,
            });
        }
        params
            .validate(self.cfg.vocab_size)
            .map_err(|e| RequestError::Sampling { id, message: e.0 })?;
        // Saturating: a huge max_tokens is too long, not an overflow.
        if prompt.len().saturating_add(params.max_tokens) > self.cfg.max_model_len {
            return Err(RequestError::TooLong {
                id,
                len: prompt.len(),
                max: params.max_tokens,
                ctx: self.cfg.max_model_len,
            });
        }
        let needed = self.blocks.blocks_for(prompt.len() + params.max_tokens);
        if needed > self.cfg.num_blocks {
            return Err(RequestError::NeverFits {
                id,
                needed,
                total: self.cfg.num_blocks,
            });
        }
        self.seqs.insert(
            id,
            Seq {
                prompt,
                output: Vec::new(),
                params: params.normalized(),
                eos,
                computed: 0,
                admitted: 0,
                pending: false,
            },
        );
        self.waiting.push_back(id);
        Ok(())
    }

    /// Frees a running sequence's blocks and queues it first to recompute.
    fn preempt(&mut self, victim: SeqId, plan: &mut StepPlan) {
        self.blocks.free(victim).expect("running sequences have blocks");
        self.running.retain(|&s| s != victim);
        plan.scheduled.retain(|s| s.seq != victim);
        let s = self.seqs.get_mut(&victim).expect("known");
        s.computed = 0;
        // A token still in flight is dropped; recomputing samples it again.
        if s.pending {
            s.output.pop();
            s.pending = false;
        }
        self.waiting.push_front(victim);
        plan.preempted.push(victim);
        self.preemptions += 1;
    }

    /// Plans the next step.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_num_tokens;
        // Decodes first, then unfinished prefills, in admission order.
        let mut order = self.running.clone();
        order.sort_by_key(|s| {
            let q = &self.seqs[s];
            (q.computed < q.len().saturating_sub(1), q.admitted)
        });
        for seq in order {
            if !self.is_running(seq) || budget == 0 || plan.scheduled.len() >= self.cfg.max_batch_size {
                continue;
            }
            let (computed, len) = (self.seqs[&seq].computed, self.seqs[&seq].len());
            let n = (len - computed).min(budget);
            if n == 0 {
                continue;
            }
            // Room for tokens generated since the last step; preempt the
            // latest admitted other sequence until there is (or this one).
            loop {
                let known = self
                    .blocks
                    .num_tokens(seq)
                    .expect("running sequences have blocks");
                let new = self.seqs[&seq].slice(known, len);
                match self.blocks.append(seq, &new) {
                    Ok(()) => break,
                    Err(BlockError::OutOfBlocks { .. }) => {}
                    Err(e) => unreachable!("running sequences have blocks: {e}"),
                }
                let victim = self
                    .running
                    .iter()
                    .copied()
                    .filter(|&s| s != seq)
                    .max_by_key(|s| self.seqs[s].admitted);
                match victim {
                    Some(v) => self.preempt(v, &mut plan),
                    None => {
                        self.preempt(seq, &mut plan);
                        break;
                    }
                }
                // A preempted sequence's tokens this step go back to the budget.
                budget = self.cfg.max_num_tokens - plan.num_tokens();
            }
            if !self.is_running(seq) {
                continue;
            }
            plan.scheduled.push(Scheduled {
                seq,
                start: computed,
                tokens: self.seqs[&seq].slice(computed, computed + n),
                sample: computed + n == len,
            });
            budget -= n;
        }
        // New requests, first come first served, while budget and blocks last.
        while budget > 0 && plan.scheduled.len() < self.cfg.max_batch_size {
            let Some(&seq) = self.waiting.front() else { break };
            let tokens = self.seqs[&seq].tokens();
            match self.blocks.allocate(seq, &tokens) {
                Ok(hit) => {
                    self.waiting.pop_front();
                    let s = self.seqs.get_mut(&seq).expect("known");
                    s.computed = hit;
                    s.admitted = self.next_admission;
                    self.next_admission += 1;
                    self.running.push(seq);
                    let n = (tokens.len() - hit).min(budget);
                    plan.scheduled.push(Scheduled {
                        seq,
                        start: hit,
                        tokens: tokens[hit..hit + n].to_vec(),
                        sample: hit + n == tokens.len(),
                    });
                    budget -= n;
                }
                Err(BlockError::OutOfBlocks { .. }) => break,
                Err(e) => unreachable!("waiting sequences have no blocks: {e}"),
            }
        }
        plan
    }

    /// Applies a step's results: the scheduled tokens' KV is now written, and
    /// each sequence that sampled gets its token. Returns the requests that
    /// finished (their blocks are freed).
    pub fn update(&mut self, plan: &StepPlan, sampled: &BTreeMap<SeqId, u32>) -> Vec<Finished> {
        let mut done = Vec::new();
        for s in &plan.scheduled {
            if !self.is_running(s.seq) {
                continue;
            }
            let q = self.seqs.get_mut(&s.seq).expect("known");
            q.computed += s.tokens.len();
            self.blocks.mark_computed(s.seq, s.tokens.len()).expect("running");
            if !s.sample {
                continue;
            }
            if let Some(f) = sampled.get(&s.seq).and_then(|&tok| self.accept(s.seq, tok)) {
                done.push(f);
            }
        }
        done
    }

    /// Plans the step after `inflight`, a step still running: as if it had
    /// written its tokens' KV and each of its sampling sequences had one
    /// more token, whose value the executor takes from that step's picks
    /// ([`PENDING_TOKEN`] stands in for it here). Sequences the step ends
    /// by length are left out. Apply `inflight`'s results with
    /// [`Scheduler::update_ahead`] before planning again.
    ///
    /// `None`, with nothing changed, when the plan could need a preemption
    /// (a sequence whose token is in flight must not lose its blocks): the
    /// caller then finishes `inflight` first and plans as usual.
    pub fn schedule_ahead(&mut self, inflight: &StepPlan) -> Option<StepPlan> {
        let samples: SeqMap<()> = inflight
            .scheduled
            .iter()
            .filter(|s| s.sample)
            .map(|s| (s.seq, ()))
            .collect();
        let grows =
            |q: &Seq, seq: SeqId| samples.contains_key(&seq) && q.output.len() + 1 < q.params.max_tokens;
        let mut need = 0;
        for &seq in &self.running {
            let q = &self.seqs[&seq];
            if q.pending {
                return None;
            }
            let have = self.blocks.block_table(seq).map_or(0, <[_]>::len);
            need += self
                .blocks
                .blocks_for(q.len() + usize::from(grows(q, seq)))
                .saturating_sub(have);
        }
        if need > self.blocks.num_free_blocks() {
            return None;
        }
        for s in &inflight.scheduled {
            if !self.is_running(s.seq) {
                continue;
            }
            self.blocks.mark_computed(s.seq, s.tokens.len()).expect("running");
            let q = self.seqs.get_mut(&s.seq).expect("known");
            q.computed += s.tokens.len();
            if grows(q, s.seq) {
                q.output.push(PENDING_TOKEN);
                q.pending = true;
            }
        }
        Some(self.schedule())
    }

    /// Applies the sampled tokens of a step planned before
    /// [`Scheduler::schedule_ahead`] ran on it (which already counted its
    /// KV as written). Returns the requests that finished.
    pub fn update_ahead(&mut self, plan: &StepPlan, sampled: &BTreeMap<SeqId, u32>) -> Vec<Finished> {
        let mut done = Vec::new();
        for s in plan.scheduled.iter().filter(|s| s.sample) {
            if !self.is_running(s.seq) {
                continue;
            }
            if let Some(f) = sampled.get(&s.seq).and_then(|&tok| self.accept(s.seq, tok)) {
                done.push(f);
            }
        }
        done
    }

    /// Whether a request is running (has blocks), so a token it sampled
    /// counts: not finished, aborted, waiting or preempted.
    pub fn is_running(&self, seq: SeqId) -> bool {
        // Running is having blocks (admission allocates them; preemption,
        // finishing and aborting free them): one map lookup, not a scan.
        self.blocks.block_table(seq).is_some()
    }

    /// Gives a running sequence its sampled token (in place of its
    /// placeholder, if a step planned ahead carries one); the request
    /// finishes, freeing its blocks, on a stop token or at `max_tokens`.
    fn accept(&mut self, seq: SeqId, tok: u32) -> Option<Finished> {
        let q = self.seqs.get_mut(&seq).expect("known");
        if q.pending {
            q.pending = false;
            let pos = q.len() - 1;
            *q.output.last_mut().expect("a pending token") = tok;
            // A step planned ahead appended the placeholder: its KV is
            // computed from the real token, and so is the block's hash.
            if self.blocks.num_tokens(seq).is_some_and(|n| n > pos) {
                self.blocks.set_token(seq, pos, tok).expect("not computed yet");
            }
        } else {
            q.output.push(tok);
        }
        let q = &self.seqs[&seq];
        let stop = (!q.params.ignore_eos && q.eos.contains(&tok)) || q.params.stop_token_ids.contains(&tok);
        let reason = if stop {
            FinishReason::Stop
        } else if q.output.len() >= q.params.max_tokens {
            FinishReason::Length
        } else {
            // The new token's slot is reserved, and its KV written, by the
            // next step that schedules it.
            return None;
        };
        let q = self.seqs.remove(&seq).expect("known");
        self.blocks.free(seq).expect("running");
        self.running.retain(|&r| r != seq);
        Some(Finished {
            seq,
            output: q.output,
            reason,
        })
    }

    /// Ends a request early (a stop string matched, or the caller gave up):
    /// frees its blocks and returns its output so far.
    pub fn abort(&mut self, seq: SeqId) -> Option<Vec<u32>> {
        let mut q = self.seqs.remove(&seq)?;
        if q.pending {
            q.output.pop();
        }
        self.waiting.retain(|&s| s != seq);
        if self.running.contains(&seq) {
            self.running.retain(|&s| s != seq);
            let _ = self.blocks.free(seq);
        }
        Some(q.output)
    }

    /// Cache slots of a running sequence's tokens (for the executor).
    pub fn slots(&self, seq: SeqId, range: std::ops::Range<usize>) -> Option<Vec<usize>> {
        self.blocks.slots(seq, range).ok()
    }

    /// The prompt and output of an unfinished sequence (for the executor).
    pub fn tokens(&self, seq: SeqId) -> Option<Vec<u32>> {
        self.seqs.get(&seq).map(Seq::tokens)
    }

    /// The sampling parameters and generated tokens of a sequence.
    pub fn request(&self, seq: SeqId) -> Option<(&SamplingParams, &[u32], &[u32])> {
        self.seqs
            .get(&seq)
            .map(|s| (&s.params, s.prompt.as_slice(), s.output.as_slice()))
    }
}
