//! Device-side greedy sampling through `Executor::step_greedy`: the
//! engine uses it only for plain greedy requests, and the tokens equal
//! host sampling of the same logits.

use optc_runtime::engine::{Engine, Event, Executor, StepSeq};
use optc_runtime::sampler::SamplingParams;
use optc_runtime::scheduler::SchedulerConfig;

const VOCAB: usize = 11;

/// Logits that depend on the last token and its position.
fn logits(s: &StepSeq) -> Vec<f32> {
    let last = *s.history.last().unwrap_or(&0) as usize;
    let pos = s.history.len();
    (0..VOCAB)
        .map(|i| ((i * 7 + last * 3 + pos) % VOCAB) as f32 * 0.5)
        .collect()
}

struct Mock {
    greedy: bool,
    greedy_calls: usize,
}

impl Executor for Mock {
    fn needs_history(&self) -> bool {
        true
    }

    fn step(&mut self, seqs: &[StepSeq]) -> Result<Vec<Vec<f32>>, String> {
        Ok(seqs.iter().filter(|s| s.sample).map(logits).collect())
    }

    fn step_greedy(&mut self, seqs: &[StepSeq]) -> Option<Result<Vec<(u32, f32)>, String>> {
        if !self.greedy {
            return None;
        }
        self.greedy_calls += 1;
        Some(Ok(seqs
            .iter()
            .filter(|s| s.sample)
            .map(|s| {
                let l = logits(s);
                let best = (0..VOCAB).fold(0, |b, i| if l[i] > l[b] { i } else { b });
                (best as u32, 0.0)
            })
            .collect()))
    }
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        max_batch_size: 4,
        max_num_tokens: 64,
        num_blocks: 32,
        block_size: 4,
        max_model_len: 64,
        vocab_size: VOCAB,
    }
}

fn generate(exec: Mock, params: &SamplingParams) -> (Vec<Vec<u32>>, usize) {
    let greedy = exec.greedy;
    let mut e = Engine::new(config(), exec, vec![]);
    let ids: Vec<u64> = [vec![1u32, 2, 3], vec![4, 5], vec![9]]
        .into_iter()
        .map(|p| e.add(p, params.clone()).unwrap())
        .collect();
    let mut outs = vec![Vec::new(); ids.len()];
    while e.has_unfinished() {
        for ev in e.step().unwrap() {
            if let Event::Finished { seq, output, .. } = ev {
                let i = ids.iter().position(|&x| x == seq).unwrap();
                outs[i] = output;
            }
        }
    }
    let calls = e.executor().greedy_calls;
    assert_eq!(calls > 0, greedy);
    (outs, calls)
}

#[test]
fn device_greedy_equals_host_greedy() {
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(9)
    };
    let (host, _) = generate(
        Mock {
            greedy: false,
            greedy_calls: 0,
        },
        &params,
    );
    let (device, _) = generate(
        Mock {
            greedy: true,
            greedy_calls: 0,
        },
        &params,
    );
    assert_eq!(host, device);
    assert!(host.iter().all(|o| o.len() == 9));
}

#[test]
fn sampling_and_penalties_stay_on_the_host() {
    for params in [
        SamplingParams {
            temperature: 0.8,
            seed: Some(3),
            max_tokens: 5,
            ignore_eos: true,
            ..Default::default()
        },
        SamplingParams {
            repetition_penalty: 1.3,
            ignore_eos: true,
            ..SamplingParams::greedy(5)
        },
    ] {
        let mut e = Engine::new(
            config(),
            Mock {
                greedy: true,
                greedy_calls: 0,
            },
            vec![],
        );
        e.add(vec![1, 2, 3], params).unwrap();
        while e.has_unfinished() {
            e.step().unwrap();
        }
        assert_eq!(e.executor().greedy_calls, 0);
    }
}
