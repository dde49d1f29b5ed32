//! Asynchronous scheduling (`Executor::submit`): the engine plans step
//! n + 1 while step n is in flight, with placeholders for step n's tokens
//! that the executor fills from its own picks. Whatever the requests do
//! (stop early, reach max_tokens, get preempted, aborted, need host
//! sampling, share prefixes, prefill in chunks), the tokens must be the
//! ones synchronous scheduling gives.
//!
//! The mock is a paged executor: it writes each processed token into its
//! cache slot and computes logits only from the tokens it reads back
//! through the block table, so a placeholder left unfilled, a wrong slot
//! or a block reused too early changes the output.

use std::collections::{BTreeMap, VecDeque};

use optc_runtime::engine::{Engine, Event, Executor, RowSampling, StepSeq};
use optc_runtime::sampler::SamplingParams;
use optc_runtime::scheduler::SchedulerConfig;

const VOCAB: usize = 13;
const EOS: u32 = 3;

struct PagedMock {
    block_size: usize,
    cache: Vec<Option<u32>>,
    /// Picks of submitted steps not collected yet, oldest first.
    queue: VecDeque<Vec<(u32, f32)>>,
    /// Picks of the last submitted step (what `prev_pick` refers to).
    last: Vec<(u32, f32)>,
    async_ok: bool,
    submitted: usize,
    synchronous: usize,
}

impl PagedMock {
    fn new(cfg: &SchedulerConfig, async_ok: bool) -> PagedMock {
        PagedMock {
            block_size: cfg.block_size,
            cache: vec![None; cfg.num_blocks * cfg.block_size],
            queue: VecDeque::new(),
            last: Vec::new(),
            async_ok,
            submitted: 0,
            synchronous: 0,
        }
    }

    /// Writes every new token to its slot (placeholders from `prev`), then
    /// returns the logits of each sampling sequence from its cached context.
    fn run(&mut self, seqs: &[StepSeq], prev: Option<&[(u32, f32)]>) -> Result<Vec<Vec<f32>>, String> {
        for s in seqs {
            for (i, (&t, &slot)) in s.tokens.iter().zip(&s.slots).enumerate() {
                let t = match s.prev_pick {
                    Some(r) => {
                        if i > 0 || s.tokens.len() != 1 {
                            return Err("a placeholder in a chunk of more than one token".into());
                        }
                        prev.and_then(|p| p.get(r))
                            .ok_or("placeholder without a previous pick")?
                            .0
                    }
                    None => t,
                };
                self.cache[slot] = Some(t);
            }
        }
        let mut rows = Vec::new();
        for s in seqs.iter().filter(|s| s.sample) {
            let end = s.start + s.tokens.len();
            let mut h: u64 = 17;
            for p in 0..end {
                let slot =
                    s.block_table[p / self.block_size].0 as usize * self.block_size + p % self.block_size;
                let t =
                    self.cache[slot].ok_or_else(|| format!("seq {}: slot {slot} never written", s.seq))?;
                h = h.wrapping_mul(31).wrapping_add(u64::from(t) + p as u64);
            }
            rows.push(
                (0..VOCAB as u64)
                    .map(|i| {
                        let x =
                            (h ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                        (x >> 54) as f32 * 0.01
                    })
                    .collect(),
            );
        }
        Ok(rows)
    }

    fn picks(
        &mut self,
        seqs: &[StepSeq],
        rows: Option<&[RowSampling]>,
        prev: Option<&[(u32, f32)]>,
    ) -> Result<Vec<(u32, f32)>, String> {
        let logits = self.run(seqs, prev)?;
        Ok(logits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let greedy = (0..VOCAB).fold(0, |b, j| if l[j] > l[b] { j } else { b }) as u32;
                match rows.map(|r| r[i]) {
                    Some(r) if r.temperature > 0.0 => ((r.uniform * VOCAB as f64) as u32, 0.0),
                    _ => (greedy, 0.0),
                }
            })
            .collect())
    }
}

impl Executor for PagedMock {
    fn step(&mut self, seqs: &[StepSeq]) -> Result<Vec<Vec<f32>>, String> {
        self.synchronous += 1;
        self.run(seqs, None)
    }

    fn step_greedy(&mut self, seqs: &[StepSeq]) -> Option<Result<Vec<(u32, f32)>, String>> {
        self.synchronous += 1;
        Some(self.picks(seqs, None, None))
    }

    fn step_sample(
        &mut self,
        seqs: &[StepSeq],
        rows: &[RowSampling],
    ) -> Option<Result<Vec<(u32, f32)>, String>> {
        self.synchronous += 1;
        Some(self.picks(seqs, Some(rows), None))
    }

    fn submit(&mut self, seqs: &[StepSeq], rows: Option<&[RowSampling]>) -> Option<Result<(), String>> {
        if !self.async_ok {
            return None;
        }
        self.submitted += 1;
        let prev = std::mem::take(&mut self.last);
        Some(self.picks(seqs, rows, Some(&prev)).map(|p| {
            self.last = p.clone();
            self.queue.push_back(p);
        }))
    }

    fn collect(&mut self) -> Result<Vec<(u32, f32)>, String> {
        self.queue
            .pop_front()
            .ok_or_else(|| "nothing submitted".to_string())
    }
}

fn config(num_blocks: usize, max_num_tokens: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_batch_size: 4,
        max_num_tokens,
        num_blocks,
        block_size: 4,
        max_model_len: 64,
        vocab_size: VOCAB,
    }
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..SamplingParams::default()
    }
}

/// What a run produced: each request's token events in order, its
/// finished output and reason, and the mock's counters.
#[derive(Debug, PartialEq)]
struct Run {
    tokens: Vec<Vec<u32>>,
    finished: Vec<Option<(Vec<u32>, String)>>,
    aborted: Vec<Option<Vec<u32>>>,
}

/// Runs the requests to the end; `abort_at` aborts request i once it has
/// produced that many tokens (seen in events).
fn run(
    cfg: SchedulerConfig,
    asynchronous: bool,
    requests: &[(Vec<u32>, SamplingParams)],
    abort_at: &[(usize, usize)],
) -> (Run, usize, usize, u64) {
    let mock = PagedMock::new(&cfg, true);
    let mut e = Engine::new(cfg, mock, vec![EOS]);
    e.set_async(asynchronous);
    let ids: Vec<u64> = requests
        .iter()
        .map(|(p, sp)| e.add(p.clone(), sp.clone()).unwrap())
        .collect();
    let n = ids.len();
    let mut r = Run {
        tokens: vec![Vec::new(); n],
        finished: vec![None; n],
        aborted: vec![None; n],
    };
    let mut steps = 0;
    while e.has_unfinished() {
        steps += 1;
        assert!(steps < 1000, "no progress");
        for ev in e.step().unwrap() {
            match ev {
                Event::Token { seq, sample } => {
                    let i = ids.iter().position(|&x| x == seq).unwrap();
                    assert!(
                        r.finished[i].is_none() && r.aborted[i].is_none(),
                        "a token after the end"
                    );
                    r.tokens[i].push(sample.token);
                }
                Event::Finished { seq, output, reason } => {
                    let i = ids.iter().position(|&x| x == seq).unwrap();
                    assert_eq!(output, r.tokens[i], "the output is the tokens the events gave");
                    r.finished[i] = Some((output, format!("{reason:?}")));
                }
            }
        }
        for &(i, at) in abort_at {
            if r.tokens[i].len() >= at && r.finished[i].is_none() && r.aborted[i].is_none() {
                let out = e.abort(ids[i]).unwrap();
                assert_eq!(out, r.tokens[i], "an aborted request returns the tokens it gave");
                r.aborted[i] = Some(out);
            }
        }
    }
    let m = e.executor();
    (r, m.submitted, m.synchronous, e.scheduler().preemptions)
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![1, 2, 5, 7, 9],
        vec![4, 5],
        vec![9],
        vec![6, 6, 6, 6, 6, 6, 6, 8, 2],
        vec![11, 12, 0],
    ]
}

#[test]
fn async_tokens_equal_synchronous_ones_with_stops_and_lengths() {
    let reqs: Vec<_> = prompts()
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, greedy(3 + 5 * i)))
        .collect();
    let (sync, submitted, ..) = run(config(64, 64), false, &reqs, &[]);
    assert_eq!(submitted, 0);
    let (asy, submitted, synchronous, _) = run(config(64, 64), true, &reqs, &[]);
    assert_eq!(asy, sync);
    assert!(submitted > 10, "{submitted} steps submitted");
    assert_eq!(synchronous, 0);
    // The test means something: some request stops at end-of-sequence
    // and some at max_tokens.
    let reasons: Vec<_> = sync.finished.iter().flatten().map(|f| f.1.as_str()).collect();
    assert!(
        reasons.contains(&"Stop") && reasons.contains(&"Length"),
        "{reasons:?}"
    );
}

#[test]
fn async_tokens_equal_synchronous_ones_with_chunked_prefill_and_shared_prefixes() {
    let shared = vec![7u32, 8, 9, 10, 11, 12, 1, 2, 4, 5];
    let mut reqs: Vec<_> = prompts().into_iter().map(|p| (p, greedy(12))).collect();
    for tail in [vec![1u32], vec![2, 4], vec![5, 5, 5]] {
        let mut p = shared.clone();
        p.extend(tail);
        reqs.push((p, greedy(9)));
    }
    // A 6-token budget splits prompts and delays admissions.
    let (sync, ..) = run(config(64, 6), false, &reqs, &[]);
    let (asy, submitted, ..) = run(config(64, 6), true, &reqs, &[]);
    assert_eq!(asy, sync);
    assert!(submitted > 10);
}

#[test]
fn async_tokens_equal_synchronous_ones_under_memory_pressure() {
    let reqs: Vec<_> = prompts().into_iter().map(|p| (p, greedy(20))).collect();
    // 12 blocks of 4 slots for five requests of up to 29 tokens: plans
    // that could need a preemption wait for the step in flight.
    let (sync, _, _, preempted) = run(config(12, 64), false, &reqs, &[]);
    assert!(preempted > 0, "the cache is small enough to preempt");
    let (asy, submitted, synchronous, _) = run(config(12, 64), true, &reqs, &[]);
    assert_eq!(asy, sync);
    assert!(submitted > 0 && synchronous == 0);
}

#[test]
fn async_sampling_and_host_fallback_equal_synchronous_ones() {
    let sampled = |seed: u64| SamplingParams {
        temperature: 0.9,
        seed: Some(seed),
        max_tokens: 10,
        ..SamplingParams::default()
    };
    let penalised = SamplingParams {
        repetition_penalty: 1.3,
        max_tokens: 8,
        ..greedy(8)
    };
    let p = prompts();
    let reqs = vec![
        (p[0].clone(), sampled(1)),
        (p[1].clone(), greedy(12)),
        (p[2].clone(), sampled(2)),
        // Joins later in the same batch and needs the host's sampler.
        (p[3].clone(), penalised),
    ];
    let (sync, ..) = run(config(64, 64), false, &reqs, &[]);
    let (asy, submitted, synchronous, _) = run(config(64, 64), true, &reqs, &[]);
    assert_eq!(asy, sync);
    assert!(submitted > 0, "steps without the host request go async");
    assert!(synchronous > 0, "steps with it run synchronously");
}

#[test]
fn aborting_with_a_step_in_flight_keeps_what_was_given() {
    let reqs: Vec<_> = prompts().into_iter().map(|p| (p, greedy(16))).collect();
    let aborts = [(0, 2), (3, 5)];
    let (sync, ..) = run(config(64, 64), false, &reqs, &aborts);
    let (asy, ..) = run(config(64, 64), true, &reqs, &aborts);
    // The same requests end the same way; the others are untouched.
    assert_eq!(asy.finished, sync.finished);
    for i in 0..reqs.len() {
        match (&asy.aborted[i], &sync.aborted[i]) {
            (Some(a), Some(s)) => assert_eq!(a, s),
            (None, None) => {}
            other => panic!("request {i}: {other:?}"),
        }
    }
}

#[test]
fn executors_without_submit_run_synchronously() {
    let cfg = config(64, 64);
    let mut e = Engine::new(cfg.clone(), PagedMock::new(&cfg, false), vec![EOS]);
    e.add(vec![1, 2], greedy(4)).unwrap();
    let mut tokens = BTreeMap::new();
    while e.has_unfinished() {
        let events = e.step().unwrap();
        assert!(!events.is_empty(), "every step gives its tokens at once");
        for ev in events {
            if let Event::Token { seq, sample } = ev {
                tokens.entry(seq).or_insert_with(Vec::new).push(sample.token);
            }
        }
    }
    assert_eq!(e.executor().submitted, 0);
    assert!(e.executor().synchronous > 0);
}

/// An executor error with a step in flight stops the engine for good (the
/// scheduler had counted that step as done); it never panics or makes up
/// tokens.
#[test]
fn an_executor_error_with_a_step_in_flight_stops_the_engine() {
    struct Failing(PagedMock, usize);
    impl Executor for Failing {
        fn step(&mut self, seqs: &[StepSeq]) -> Result<Vec<Vec<f32>>, String> {
            self.0.step(seqs)
        }
        fn submit(&mut self, seqs: &[StepSeq], rows: Option<&[RowSampling]>) -> Option<Result<(), String>> {
            self.1 += 1;
            if self.1 == 4 {
                return Some(Err("device lost".into()));
            }
            self.0.submit(seqs, rows)
        }
        fn collect(&mut self) -> Result<Vec<(u32, f32)>, String> {
            self.0.collect()
        }
    }
    let cfg = config(64, 64);
    let mut e = Engine::new(cfg.clone(), Failing(PagedMock::new(&cfg, true), 0), vec![EOS]);
    e.add(vec![1, 2, 5], greedy(20)).unwrap();
    let mut errors = Vec::new();
    for _ in 0..6 {
        if let Err(m) = e.step() {
            errors.push(m);
        }
    }
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().all(|m| m.contains("device lost")), "{errors:?}");
}

/// A request that needs host sampling (logprobs) arriving at any point, so
/// the step after a submitted one falls back to running synchronously,
/// also when requests stop in the step in flight.
#[test]
fn a_host_sampled_request_arriving_at_any_point_gives_the_synchronous_tokens() {
    let reqs: Vec<_> = prompts().into_iter().map(|p| (p, greedy(14))).collect();
    let late = SamplingParams {
        logprobs: Some(2),
        ..greedy(6)
    };
    let mut fallbacks = 0;
    // It arrives once the others have given `at` tokens in all (the same
    // point of progress in both modes).
    for at in 1..50 {
        let mut outs = Vec::new();
        for asynchronous in [false, true] {
            // Room in the batch: the late request joins at once.
            let cfg = SchedulerConfig {
                max_batch_size: 8,
                ..config(64, 64)
            };
            let mut e = Engine::new(cfg.clone(), PagedMock::new(&cfg, true), vec![EOS]);
            e.set_async(asynchronous);
            for (p, sp) in &reqs {
                e.add(p.clone(), sp.clone()).unwrap();
            }
            let mut done = BTreeMap::new();
            let (mut given, mut added) = (0, false);
            while e.has_unfinished() {
                for ev in e.step().unwrap() {
                    match ev {
                        Event::Token { .. } => given += 1,
                        Event::Finished { seq, output, reason } => {
                            done.insert(seq, (output, reason));
                        }
                    }
                }
                if given >= at && !added {
                    e.add(vec![2, 9, 4], late.clone()).unwrap();
                    added = true;
                }
            }
            if asynchronous && e.executor().synchronous > 0 {
                fallbacks += 1;
            }
            outs.push(done);
        }
        assert_eq!(outs[0], outs[1], "the late request arrives after {at} tokens");
    }
    assert!(fallbacks > 20, "{fallbacks} runs fell back");
}
