//! Tokens picked by the executor (`Executor::step_greedy` and
//! `step_sample`): the engine uses them only for requests without
//! penalties, masks or logprobs; greedy picks equal host sampling of the
//! same logits; sampled picks get each request's own uniforms, and a
//! fallback to host sampling sees the same random stream.

use optc_runtime::engine::{Engine, Event, Executor, RowSampling, StepSeq};
use optc_runtime::sampler::{Rng, SamplingParams};
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

#[derive(Default)]
struct Mock {
    greedy: bool,
    greedy_calls: usize,
    /// Whether `step_sample` is supported.
    sample: bool,
    /// Every `step_sample` call's rows.
    sample_rows: Vec<Vec<RowSampling>>,
}

/// The mock's "sampled" token: its uniform scaled to the vocabulary (greedy
/// rows, which draw none, get the argmax).
fn mock_pick(s: &StepSeq, r: &RowSampling) -> u32 {
    if r.temperature == 0.0 {
        let l = logits(s);
        (0..VOCAB).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as u32
    } else {
        (r.uniform * VOCAB as f64) as u32
    }
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

    fn step_sample(
        &mut self,
        seqs: &[StepSeq],
        rows: &[RowSampling],
    ) -> Option<Result<Vec<(u32, f32)>, String>> {
        if !self.sample {
            return None;
        }
        self.sample_rows.push(rows.to_vec());
        Some(Ok(seqs
            .iter()
            .filter(|s| s.sample)
            .zip(rows)
            .map(|(s, r)| (mock_pick(s, r), 0.0))
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
    generate_each(exec, &[params.clone(), params.clone(), params.clone()])
}

/// Three requests with their own parameters, to the end.
fn generate_each(exec: Mock, params: &[SamplingParams]) -> (Vec<Vec<u32>>, usize) {
    generate_with(exec, params).0
}

fn generate_with(exec: Mock, params: &[SamplingParams]) -> ((Vec<Vec<u32>>, usize), Mock) {
    let greedy = exec.greedy;
    let mut e = Engine::new(config(), exec, vec![]);
    let ids: Vec<u64> = [vec![1u32, 2, 3], vec![4, 5], vec![9]]
        .into_iter()
        .zip(params)
        .map(|(p, sp)| e.add(p, sp.clone()).unwrap())
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
    assert_eq!(calls > 0, greedy && params.iter().all(|p| p.temperature == 0.0));
    let exec = std::mem::take(e.executor_mut());
    ((outs, calls), exec)
}

#[test]
fn device_greedy_equals_host_greedy() {
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(9)
    };
    let (host, _) = generate(Mock::default(), &params);
    let (device, _) = generate(
        Mock {
            greedy: true,
            ..Mock::default()
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
                ..Mock::default()
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

/// Sampled picks: each request's row carries its parameters and the next
/// uniform of its own seeded stream (greedy requests in the same batch
/// draw none), and its tokens are what the executor picked.
#[test]
fn device_sampling_gets_each_requests_own_uniforms() {
    let sampled = |seed, top_k| SamplingParams {
        temperature: 0.8,
        top_k,
        top_p: 0.9,
        min_p: 0.05,
        seed: Some(seed),
        max_tokens: 6,
        ignore_eos: true,
        ..Default::default()
    };
    let greedy = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(6)
    };
    let params = [sampled(5, Some(3)), greedy.clone(), sampled(8, None)];
    let exec = Mock {
        greedy: true,
        sample: true,
        ..Mock::default()
    };
    let ((outs, greedy_calls), exec) = generate_with(exec, &params);
    assert_eq!(greedy_calls, 0, "a mixed batch samples");
    assert!(!exec.sample_rows.is_empty());
    for (i, seed) in [(0, 5u64), (2, 8)] {
        let mut rng = Rng::new(seed);
        let want: Vec<u32> = (0..6).map(|_| (rng.uniform() * VOCAB as f64) as u32).collect();
        assert_eq!(outs[i], want, "request {i}");
    }
    let (host_greedy, _) = generate(Mock::default(), &greedy);
    assert_eq!(outs[1], host_greedy[1]);
    for rows in &exec.sample_rows {
        for r in rows {
            if r.temperature == 0.0 {
                assert_eq!(r.uniform, 0.0);
            } else {
                assert_eq!((r.top_p, r.min_p), (0.9, 0.05));
                assert!(r.top_k == Some(3) || r.top_k.is_none());
            }
        }
    }
}

/// An executor that cannot sample leaves the random streams untouched:
/// host sampling gives what it gives when the engine never asks (a request
/// wanting logprobs always samples on the host).
#[test]
fn declined_device_sampling_leaves_the_streams_alone() {
    let base = SamplingParams {
        temperature: 1.1,
        top_k: Some(6),
        seed: Some(21),
        max_tokens: 7,
        ignore_eos: true,
        ..Default::default()
    };
    let asked = generate(Mock::default(), &base).0;
    let never = generate(
        Mock::default(),
        &SamplingParams {
            logprobs: Some(0),
            ..base.clone()
        },
    )
    .0;
    assert_eq!(asked, never);
    // Penalties and logprobs keep a sampling request off the executor.
    let exec = Mock {
        sample: true,
        ..Mock::default()
    };
    let ((_, _), exec) = generate_with(
        exec,
        &[
            SamplingParams {
                repetition_penalty: 1.2,
                ..base.clone()
            },
            base.clone(),
            base,
        ],
    );
    assert!(exec.sample_rows.is_empty());
}
