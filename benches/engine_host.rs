//! Host work of one serving decode step, without a model: the engine's
//! schedule and update, the per-sequence step description, and the input
//! tensors a GPU executor copies up (`gpu_step_inputs`), at the batch sizes
//! of the standard workloads (W1 1, W2 32, W3 128) with 512-token prompts.
//! On the GPU this time sits between two decode graphs unless it overlaps
//! them. Measured, never asserted: `cargo bench --bench engine_host`;
//! numbers go to docs/perf.md.

use optc::executor::gpu_step_inputs;
use optc::ir::DType;
use optc::runtime::engine::{Engine, Executor, RowSampling, StepSeq};
use optc::runtime::sampler::SamplingParams;
use optc::runtime::scheduler::SchedulerConfig;

fn main() {
    divan::main();
}

const PROMPT: usize = 512;
const BLOCK: usize = 16;
const MAX_LEN: usize = 4096;

/// Answers every step instantly with token 1, after building the inputs a
/// GPU step would copy up; with `submit`, steps are submitted ahead
/// (asynchronous scheduling, as the CUDA executor does).
struct HostOnly {
    submit: bool,
    queue: std::collections::VecDeque<Vec<(u32, f32)>>,
}

impl Executor for HostOnly {
    fn submit(&mut self, seqs: &[StepSeq], _: Option<&[RowSampling]>) -> Option<Result<(), String>> {
        if !self.submit {
            return None;
        }
        Some(self.step_greedy(seqs)?.map(|p| self.queue.push_back(p)))
    }

    fn collect(&mut self) -> Result<Vec<(u32, f32)>, String> {
        self.queue.pop_front().ok_or_else(|| "nothing submitted".into())
    }

    fn step(&mut self, _: &[StepSeq]) -> Result<Vec<Vec<f32>>, String> {
        Err("the host-only executor picks greedy tokens only".into())
    }

    fn step_greedy(&mut self, seqs: &[StepSeq]) -> Option<Result<Vec<(u32, f32)>, String>> {
        Some(gpu_step_inputs(seqs, DType::I64).map(|inputs| {
            divan::black_box(inputs);
            seqs.iter().filter(|s| s.sample).map(|_| (1, 0.0)).collect()
        }))
    }
}

/// An engine with `batch` requests past their prefill.
fn decoding_engine(batch: usize, submit: bool) -> Engine<HostOnly> {
    let cfg = SchedulerConfig {
        max_batch_size: batch,
        max_num_tokens: 16_384,
        num_blocks: batch * MAX_LEN.div_ceil(BLOCK) + 1,
        block_size: BLOCK,
        max_model_len: MAX_LEN,
        vocab_size: 128_256,
    };
    let exec = HostOnly {
        submit,
        queue: Default::default(),
    };
    let mut e = Engine::new(cfg, exec, vec![]);
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(MAX_LEN - PROMPT)
    };
    for r in 0..batch {
        let prompt: Vec<u32> = (0..PROMPT).map(|i| ((i * 31 + r * 7) % 128_000) as u32).collect();
        e.add(prompt, params.clone()).expect("request fits");
    }
    // Prefill (in chunks of max_num_tokens), then one decode step.
    let mut steps = 0;
    while steps < batch * PROMPT / 16_384 + 2 {
        e.step().expect("step runs");
        steps += 1;
    }
    e
}

/// One decode step's host work at `batch` sequences, each step waiting
/// for its tokens.
#[divan::bench(args = [1, 32, 128], sample_count = 40, sample_size = 20)]
fn decode_step(bencher: divan::Bencher, batch: usize) {
    bench_steps(bencher, batch, false);
}

/// The same with asynchronous scheduling: the next step planned and
/// submitted before this one's tokens are applied.
#[divan::bench(args = [1, 32, 128], sample_count = 40, sample_size = 20)]
fn decode_step_async(bencher: divan::Bencher, batch: usize) {
    bench_steps(bencher, batch, true);
}

fn bench_steps(bencher: divan::Bencher, batch: usize, submit: bool) {
    let mut e = decoding_engine(batch, submit);
    bencher
        .counter(divan::counter::ItemsCount::new(batch))
        .bench_local(|| e.step().expect("step runs"));
}
