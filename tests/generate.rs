//! Generation through the whole runtime (scheduler, block manager, sampler,
//! detokenizer) on the CPU target's paged executor: 32 greedy tokens equal
//! transformers' `generate` for every fixture architecture, batched
//! requests equal their solo runs (also with staggered arrivals, chunked
//! prefill and preemption), the prefix cache is reused, and stop strings
//! end the text.

use std::path::{Path, PathBuf};

use optc::ir::WeightStore;
use std::collections::BTreeMap;

use optc::runtime::engine::Event;
use optc::runtime::sampler::SamplingParams;
use optc::runtime::scheduler::FinishReason;
use optc::{LlmOptions, Prompt, Target, LLM};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn reference(name: &str) -> (Vec<u32>, Vec<u32>) {
    let mut s = WeightStore::new();
    s.open_safetensors(fixture(name).join("reference.safetensors"))
        .unwrap();
    let ids = s
        .get("ids")
        .unwrap()
        .to_i64_vec()
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let greedy = s
        .get("greedy")
        .unwrap()
        .to_i64_vec()
        .into_iter()
        .map(|i| i as u32)
        .collect();
    (ids, greedy)
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in ["llama", "mistral", "qwen2", "phi3", "gpt2"] {
        let (ids, want) = reference(name);
        let mut llm = LLM::new(fixture(name), LlmOptions::default()).unwrap();
        // The reference used min_new_tokens = 32: no end-of-sequence before.
        let params = SamplingParams {
            min_tokens: 32,
            ..SamplingParams::greedy(32)
        };
        let out = llm.generate(&[Prompt::Ids(ids)], &params).unwrap();
        assert_eq!(out[0].token_ids, want, "{name}");
        assert_eq!(out[0].finish_reason, FinishReason::Length, "{name}");
    }
}

#[test]
fn batched_requests_equal_solo_runs_and_text_streams() {
    let opts = LlmOptions {
        max_num_tokens: 6,
        num_blocks: 12,
        block_size: 4,
        ..LlmOptions::default()
    };
    let prompts = [
        Prompt::Text("The robot and the dog.".into()),
        Prompt::Text("A cat".into()),
        Prompt::Text("The robot and the dog went home.".into()),
    ];
    let params = SamplingParams::greedy(6);
    let mut llm = LLM::new(fixture("llama"), opts.clone()).unwrap();
    let mut streamed = vec![String::new(); 3];
    let batch = llm
        .generate_stream(&prompts, &params, |i, piece| streamed[i].push_str(piece))
        .unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let mut solo = LLM::new(fixture("llama"), opts.clone()).unwrap();
        let alone = solo.generate(std::slice::from_ref(p), &params).unwrap();
        assert_eq!(batch[i], alone[0], "prompt {i}");
        assert_eq!(streamed[i], batch[i].text, "prompt {i}: streamed pieces add up");
    }
    // Seeded sampling repeats.
    let sampled = SamplingParams {
        temperature: 0.9,
        seed: Some(11),
        ..SamplingParams::greedy(8)
    };
    let a = llm.generate(&prompts[..1], &sampled).unwrap();
    let b = llm.generate(&prompts[..1], &sampled).unwrap();
    assert_eq!(a, b);
}

#[test]
fn stop_strings_and_bad_requests() {
    let mut llm = LLM::new(fixture("llama"), LlmOptions::default()).unwrap();
    let greedy = llm
        .generate(&[Prompt::Text("The robot".into())], &SamplingParams::greedy(12))
        .unwrap();
    let text = greedy[0].text.clone();
    // Stop at a piece of the greedy text: the output ends right before it.
    let (cut, stop) = text
        .char_indices()
        .skip(1)
        .map(|(i, _)| (i, text[i..].chars().take(2).collect::<String>()))
        .find(|(i, st)| {
            st.chars().count() == 2
                && !st.contains('\u{FFFD}')
                && !st.trim().is_empty()
                && !text[..*i].contains(st.as_str())
        })
        .expect("a piece of the text that does not occur earlier");
    let params = SamplingParams {
        stop: vec![stop.clone()],
        ..SamplingParams::greedy(12)
    };
    let out = llm
        .generate(&[Prompt::Text("The robot".into())], &params)
        .unwrap();
    assert_eq!(
        out[0].finish_reason,
        FinishReason::Stop,
        "stop {stop:?} in {text:?}"
    );
    assert_eq!(out[0].text, text[..cut]);
    let bad = |llm: &mut LLM, p: Prompt, params: SamplingParams| {
        llm.generate(&[p], &params).unwrap_err().to_string()
    };
    assert!(bad(&mut llm, Prompt::Ids(vec![]), SamplingParams::greedy(1)).ends_with(": the prompt is empty"));
    assert!(
        bad(&mut llm, Prompt::Ids(vec![1, 9999]), SamplingParams::greedy(1))
            .contains("token id 9999 is outside the vocabulary")
    );
    let long: Vec<u32> = (0..200).map(|i| i % 300).collect();
    assert!(bad(&mut llm, Prompt::Ids(long), SamplingParams::greedy(1)).contains("exceeds the context"));
    let top_p = SamplingParams {
        top_p: 1.5,
        ..SamplingParams::greedy(1)
    };
    assert!(bad(&mut llm, Prompt::Ids(vec![1]), top_p).contains("top_p"));
    let zero = SamplingParams::greedy(0);
    assert!(bad(&mut llm, Prompt::Ids(vec![1]), zero).contains("max_tokens must be at least 1"));
    // The engine still serves after refusing requests.
    let again = llm
        .generate(&[Prompt::Text("The robot".into())], &SamplingParams::greedy(12))
        .unwrap();
    assert_eq!(again[0].text, text);
    // A batch whose second prompt is refused after the first was queued:
    // the first is aborted with it, and the next call is not handed its
    // tokens (it used to find a request it did not add, and panic).
    let mixed = [Prompt::Text("The robot".into()), Prompt::Ids(vec![1, 9999])];
    let err = llm.generate(&mixed, &SamplingParams::greedy(12)).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    assert_eq!(llm.engine().scheduler().num_unfinished(), 0);
    let after = llm
        .generate(&[Prompt::Text("The robot".into())], &SamplingParams::greedy(12))
        .unwrap();
    assert_eq!(after[0].text, text);
    // Requests added through engine() and still running: generate refuses
    // rather than consume their events; once they finish it serves again.
    let own = llm
        .engine()
        .add(vec![1, 2, 3], SamplingParams::greedy(4))
        .unwrap();
    let busy = llm
        .generate(&[Prompt::Text("The robot".into())], &SamplingParams::greedy(12))
        .unwrap_err();
    assert!(
        busy.to_string().contains("1 request(s) added through engine()"),
        "{busy}"
    );
    let mut done = false;
    while !done {
        for e in llm.engine().step().unwrap() {
            done |= matches!(e, Event::Finished { seq, .. } if seq == own);
        }
    }
    let last = llm
        .generate(&[Prompt::Text("The robot".into())], &SamplingParams::greedy(12))
        .unwrap();
    assert_eq!(last[0].text, text);
}

/// A second request sharing a 3-block prefix with a finished one finds those
/// blocks in the cache and produces the same tokens as without the cache.
#[test]
fn prefix_reuse_hits_the_cache_and_keeps_outputs() {
    let opts = LlmOptions {
        block_size: 4,
        num_blocks: 32,
        ..LlmOptions::default()
    };
    let prefix: Vec<u32> = vec![0, 53, 259, 222, 272, 286, 85, 262, 79, 69, 260, 283];
    let mut first = prefix.clone();
    first.extend([80, 72]);
    let mut second = prefix.clone();
    second.extend([15, 41, 70]);
    let params = SamplingParams::greedy(5);
    let mut llm = LLM::new(fixture("llama"), opts.clone()).unwrap();
    llm.generate(&[Prompt::Ids(first)], &params).unwrap();
    let before = llm.cache_stats().hit_tokens;
    let out = llm.generate(&[Prompt::Ids(second.clone())], &params).unwrap();
    assert_eq!(
        llm.cache_stats().hit_tokens - before,
        12,
        "three 4-token blocks reused"
    );
    let mut fresh = LLM::new(fixture("llama"), opts).unwrap();
    assert_eq!(out, fresh.generate(&[Prompt::Ids(second)], &params).unwrap());
}

/// 16 requests of different prompt lengths arrive one per step into a cache
/// too small for all of them, with prefill chunked to 16 tokens a step:
/// sequences get preempted and recomputed, and each request still produces
/// exactly the tokens it produces alone.
#[test]
fn staggered_requests_with_preemption_equal_solo_runs() {
    let opts = LlmOptions {
        max_batch_size: 8,
        max_num_tokens: 16,
        num_blocks: 24,
        block_size: 4,
        ..LlmOptions::default()
    };
    let prompts: Vec<Vec<u32>> = (0..16u32)
        .map(|i| {
            (0..3 + (i * 7) % 23)
                .map(|j| (i * 31 + j * 17 + 1) % 320)
                .collect()
        })
        .collect();
    let params = SamplingParams {
        min_tokens: 10,
        ..SamplingParams::greedy(10)
    };
    let mut llm = LLM::new(fixture("llama"), opts.clone()).unwrap();
    let mut outputs: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let mut ids = Vec::new();
    let mut step = 0;
    loop {
        if step < prompts.len() {
            ids.push(llm.engine().add(prompts[step].clone(), params.clone()).unwrap());
        }
        step += 1;
        for e in llm.engine().step().unwrap() {
            if let Event::Finished { seq, output, .. } = e {
                assert!(
                    outputs.insert(seq, output).is_none(),
                    "request {seq} finished twice"
                );
            }
        }
        if step >= prompts.len() && !llm.engine().has_unfinished() {
            break;
        }
        assert!(step < 2000, "the engine stopped making progress");
    }
    assert!(
        llm.engine().scheduler().preemptions > 0,
        "the cache was meant to force preemption"
    );
    assert_eq!(outputs.len(), 16);
    let mut solo = LLM::new(fixture("llama"), opts).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let alone = solo.generate(&[Prompt::Ids(p.clone())], &params).unwrap();
        assert_eq!(outputs[&ids[i]], alone[0].token_ids, "request {i}");
    }
}

/// The CPU target and the reference interpreter (no cache) agree token for
/// token on a real model-shaped fixture.
#[test]
fn cpu_target_equals_reference_target() {
    let params = SamplingParams::greedy(12);
    let prompt = [Prompt::Text("The robot and the dog.".into())];
    let mut cpu = LLM::new(fixture("qwen2"), LlmOptions::default()).unwrap();
    let reference = LlmOptions {
        target: Target::Reference,
        ..LlmOptions::default()
    };
    let mut interp = LLM::new(fixture("qwen2"), reference).unwrap();
    assert_eq!(
        cpu.generate(&prompt, &params).unwrap(),
        interp.generate(&prompt, &params).unwrap()
    );
}

/// Engine sizes that could never schedule a step (or that overflow) are
/// load errors, not a hang or a panic.
#[test]
fn engine_sizes_out_of_range_are_load_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama");
    let cases = [
        (
            LlmOptions {
                max_num_tokens: 0,
                ..LlmOptions::default()
            },
            "must be at least 1",
        ),
        (
            LlmOptions {
                max_batch_size: 0,
                ..LlmOptions::default()
            },
            "must be at least 1",
        ),
        (
            LlmOptions {
                block_size: 0,
                target: Target::Reference,
                ..LlmOptions::default()
            },
            "block_size 0 is not in 1..=4096",
        ),
        (
            LlmOptions {
                num_blocks: usize::MAX,
                ..LlmOptions::default()
            },
            "2^32 tokens or more",
        ),
        (
            LlmOptions {
                gpu_memory_utilization: Some(1.5),
                ..LlmOptions::default()
            },
            "gpu_memory_utilization 1.5 is not in (0, 1]",
        ),
    ];
    for (opts, want) in cases {
        match LLM::new(&dir, opts) {
            Ok(_) => panic!("loaded with {want:?}"),
            Err(e) => assert!(e.to_string().contains(want), "{e}"),
        }
    }
}
