//! The scheduler against a mock executor that keeps a real paged cache of
//! token ids: each step writes the scheduled tokens into their slots, and a
//! sampling row reads its whole sequence back through the block table and
//! checks it. The "model" picks the next token from a hash of the sequence,
//! so outputs depend on every token. Requests arriving at different steps,
//! with chunked prefill and a cache too small for all of them (forcing
//! preemption), must each produce exactly what they produce alone.

use std::collections::{BTreeMap, HashMap};

use optc_runtime::block_manager::SeqId;
use optc_runtime::sampler::SamplingParams;
use optc_runtime::scheduler::{FinishReason, RequestError, Scheduler, SchedulerConfig};
use proptest::prelude::*;

const VOCAB: usize = 50;

fn next_token(seq: &[u32]) -> u32 {
    let mut h: u64 = 1469598103934665603;
    for &t in seq {
        h = (h ^ t as u64).wrapping_mul(1099511628211);
    }
    (h % VOCAB as u64) as u32
}

fn config(num_blocks: usize, budget: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_batch_size: 8,
        max_num_tokens: budget,
        num_blocks,
        block_size: 4,
        max_model_len: 256,
        vocab_size: VOCAB,
    }
}

struct Req {
    id: SeqId,
    prompt: Vec<u32>,
    max_tokens: usize,
    arrives: usize,
}

/// Runs requests to completion; returns each one's output and the number of preemptions.
fn run(cfg: SchedulerConfig, reqs: &[Req]) -> (BTreeMap<SeqId, Vec<u32>>, u64) {
    let mut s = Scheduler::new(cfg);
    let mut cache: HashMap<usize, u32> = HashMap::new();
    let mut out = BTreeMap::new();
    let mut step = 0;
    while out.len() < reqs.len() {
        for r in reqs.iter().filter(|r| r.arrives == step) {
            s.add(
                r.id,
                r.prompt.clone(),
                SamplingParams::greedy(r.max_tokens),
                vec![],
            )
            .unwrap();
        }
        let plan = s.schedule();
        assert!(plan.num_tokens() <= 7, "budget");
        let mut sampled = BTreeMap::new();
        for sc in &plan.scheduled {
            let slots = s.slots(sc.seq, sc.start..sc.start + sc.tokens.len()).unwrap();
            for (slot, &t) in slots.iter().zip(&sc.tokens) {
                cache.insert(*slot, t);
            }
            if sc.sample {
                let all = s.tokens(sc.seq).unwrap();
                let read: Vec<u32> = s
                    .slots(sc.seq, 0..all.len())
                    .unwrap()
                    .iter()
                    .map(|p| cache[p])
                    .collect();
                assert_eq!(
                    read, all,
                    "seq {} reads its own tokens back through its block table",
                    sc.seq
                );
                sampled.insert(sc.seq, next_token(&all));
            }
        }
        for f in s.update(&plan, &sampled) {
            assert_eq!(f.reason, FinishReason::Length);
            assert!(out.insert(f.seq, f.output).is_none(), "finished twice");
        }
        step += 1;
        assert!(step < 10_000, "no progress");
    }
    assert_eq!(s.num_unfinished(), 0);
    assert_eq!(s.blocks().num_free_blocks(), s.blocks().num_blocks());
    (out, s.preemptions)
}

fn alone(r: &Req) -> Vec<u32> {
    let mut t = r.prompt.clone();
    for _ in 0..r.max_tokens {
        t.push(next_token(&t));
    }
    t[r.prompt.len()..].to_vec()
}

fn requests(n: u64, seed: u64) -> Vec<Req> {
    (0..n)
        .map(|i| {
            let len = 1 + ((i * 7 + seed) % 13) as usize;
            // Half the requests share a 2-block prefix.
            let prompt: Vec<u32> = (0..len as u32)
                .map(|k| {
                    if i % 2 == 0 && k < 8 {
                        k
                    } else {
                        (k * 3 + i as u32 + seed as u32) % VOCAB as u32
                    }
                })
                .collect();
            Req {
                id: i,
                prompt,
                max_tokens: 1 + ((i + seed) % 9) as usize,
                arrives: ((i * 3 + seed) % 10) as usize,
            }
        })
        .collect()
}

#[test]
fn sixteen_requests_with_chunking_and_preemption_match_their_solo_runs() {
    let reqs = requests(16, 0);
    let (out, preemptions) = run(config(8, 7), &reqs);
    assert!(preemptions > 0, "the cache is small enough to force preemption");
    for r in &reqs {
        assert_eq!(out[&r.id], alone(r), "request {}", r.id);
    }
}

#[test]
fn bad_requests_are_refused_without_disturbing_others() {
    let mut s = Scheduler::new(config(8, 7));
    s.add(1, vec![1, 2, 3], SamplingParams::greedy(2), vec![])
        .unwrap();
    let bad = |s: &mut Scheduler, id, prompt: Vec<u32>, p: SamplingParams| {
        s.add(id, prompt, p, vec![]).unwrap_err()
    };
    assert_eq!(
        bad(&mut s, 2, vec![], SamplingParams::greedy(1)),
        RequestError::EmptyPrompt(2)
    );
    assert_eq!(
        bad(&mut s, 3, vec![1, 99], SamplingParams::greedy(1)),
        RequestError::UnknownToken {
            id: 3,
            token: 99,
            vocab: VOCAB
        }
    );
    assert_eq!(
        bad(&mut s, 4, vec![1; 250], SamplingParams::greedy(10)),
        RequestError::TooLong {
            id: 4,
            len: 250,
            max: 10,
            ctx: 256
        }
    );
    // A max_tokens near usize::MAX is too long, not an overflow.
    assert_eq!(
        bad(&mut s, 8, vec![1; 3], SamplingParams::greedy(usize::MAX)),
        RequestError::TooLong {
            id: 8,
            len: 3,
            max: usize::MAX,
            ctx: 256
        }
    );
    assert_eq!(
        bad(&mut s, 5, vec![1], SamplingParams::greedy(0)).to_string(),
        "request 5: max_tokens must be at least 1"
    );
    let mut p = SamplingParams::greedy(3);
    p.top_p = 1.5;
    assert_eq!(
        bad(&mut s, 6, vec![1], p).to_string(),
        "request 6: top_p must be in (0, 1], got 1.5"
    );
    assert_eq!(
        bad(&mut s, 1, vec![1], SamplingParams::greedy(1)),
        RequestError::Duplicate(1)
    );
    assert_eq!(
        bad(&mut s, 7, vec![1; 40], SamplingParams::greedy(1)),
        RequestError::NeverFits {
            id: 7,
            needed: 11,
            total: 8
        }
    );
    assert_eq!(s.num_unfinished(), 1);
}

#[test]
fn eos_ends_a_request() {
    let mut s = Scheduler::new(config(8, 7));
    let prompt = vec![5, 6];
    let first = next_token(&prompt);
    s.add(1, prompt, SamplingParams::greedy(10), vec![first]).unwrap();
    let plan = s.schedule();
    let done = s.update(&plan, &BTreeMap::from([(1, first)]));
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].reason, done[0].output.clone()),
        (FinishReason::Stop, vec![first])
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random arrivals, lengths and cache sizes: nothing lost or duplicated,
    /// every request exactly its solo output.
    #[test]
    fn random_schedules(n in 1u64..12, seed in 0u64..1000, blocks in 6usize..20) {
        let reqs = requests(n, seed);
        let (out, _) = run(config(blocks, 7), &reqs);
        prop_assert_eq!(out.len(), reqs.len());
        for r in &reqs {
            prop_assert_eq!(&out[&r.id], &alone(r), "request {}", r.id);
        }
    }
}
