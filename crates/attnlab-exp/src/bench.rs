//! Training benchmark: tokens/s, ms/step, MFU and peak memory of training steps, per sweep point.
//!
//! Decode benchmark: tokens/s of cached one-token steps and the decode-state size, per
//! attention kind, context length and batch size.
//!
//! For each point: a model with random weights, a state prefilled with `context` tokens (in
//! chunks of [`PREFILL_CHUNK`] so the prefill's score matrix stays small), one untimed warm-up
//! step, then `tokens` timed steps of one token per sequence; the device is synced before each
//! clock read. tokens/s = batch · tokens / seconds.

use std::time::Instant;

use attnlab_model::{Gpt, ModelConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::spec::PreparedRun;

/// Prefill chunk (tokens per `step` call).
pub const PREFILL_CHUNK: usize = 256;

#[derive(Debug, Clone, Serialize)]
pub struct DecodePoint {
    pub attention: String,
    pub context: usize,
    pub batch: usize,
    pub decode_tokens_per_sec: f64,
    pub ms_per_step: f64,
    /// Decode-state bytes of one sequence at `context` tokens, all layers.
    pub state_bytes_per_sequence: usize,
    /// `state_bytes_per_sequence / context`.
    pub state_bytes_per_token: usize,
}

fn ids(batch: usize, len: usize, vocab: usize, offset: usize, device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = (0..batch * len).map(|i| ((i * 31 + offset * 7) % vocab) as i64).collect();
    Tensor::from_data(TensorData::new(v, [batch, len]), device)
}

/// Runs one point. `config.max_seq` must cover `context + tokens + 1`.
pub fn decode_point(config: &ModelConfig, context: usize, batch: usize, tokens: usize, device: &Device) -> DecodePoint {
    let model = Gpt::new(config, device);
    let capacity = context + tokens + 1;
    let mut states = model.init_states(batch, capacity, device);
    let mut fed = 0;
    while fed < context {
        let n = PREFILL_CHUNK.min(context - fed);
        let _ = model.step(ids(batch, n, config.vocab, fed, device), &mut states);
        fed += n;
    }
    let _ = model.step(ids(batch, 1, config.vocab, fed, device), &mut states).into_data();
    device.sync().ok();
    let t0 = Instant::now();
    for i in 0..tokens {
        let logits = model.step(ids(batch, 1, config.vocab, fed + 1 + i, device), &mut states);
        // Read the logits back as generation would (sampling happens on the host).
        let _ = logits.into_data();
    }
    device.sync().ok();
    let secs = t0.elapsed().as_secs_f64();
    // Analytic bytes at exactly `context` tokens (the contract tests prove them equal to the
    // real state tensors' bytes); the state itself was allocated for `capacity`.
    let per_sequence = model.state_bytes(context);
    DecodePoint {
        attention: config.attention.label(),
        context,
        batch,
        decode_tokens_per_sec: (batch * tokens) as f64 / secs,
        ms_per_step: secs * 1e3 / tokens as f64,
        state_bytes_per_sequence: per_sequence,
        state_bytes_per_token: per_sequence / context.max(1),
    }
}

/// Training throughput of one sweep point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainPoint {
    pub point: String,
    pub attention: String,
    pub params: usize,
    pub steps: usize,
    pub tokens_per_sec: f64,
    pub ms_per_step_median: f64,
    pub ms_per_step_p90: f64,
    pub mfu: f64,
    pub peak_flops: f64,
    /// Peak resident memory of the process (run it in a fresh process for a per-point figure).
    pub peak_rss_bytes: Option<u64>,
}

/// `peak` is the device's f32 matmul peak (FLOP/s) for MFU.
/// Times `warmup + steps` training steps of `run` (AdamW at the run's peak LR, its batches);
/// the first `warmup` are left out. tokens/s = accumulate·batch·block·steps / synced time of
/// the steps.
pub fn train_point(run: &PreparedRun, point: &str, warmup: usize, steps: usize, device: &Device, peak: f64) -> TrainPoint {
    let t = &run.spec.train;
    let ad = device.clone().autodiff();
    let mut model = crate::trainer::seeded_model(&run.spec.model, t.seed, &ad);
    let mut optim = crate::optim::optimizer(t, &model);
    let mut rng = attnlab_data::Rng::new(t.seed);
    let mut ms = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        ad.sync().ok();
        let t0 = Instant::now();
        let (grads, _) = crate::trainer::accumulated_grads(&model, run, &mut rng, &ad);
        model = crate::optim::step(&mut optim, model, grads, t.lr, t.grad_clip);
        ad.sync().ok();
        if i >= warmup {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    let tokens_per_sec = (t.accumulate * t.batch * t.block * steps) as f64 / (ms.iter().sum::<f64>() / 1e3);
    let flops = model.flops_per_token(t.block);
    TrainPoint {
        point: point.to_string(),
        attention: run.spec.model.attention.label(),
        params: model.param_counts().total,
        steps,
        tokens_per_sec,
        ms_per_step_median: ms[ms.len() / 2],
        ms_per_step_p90: ms[((ms.len() - 1) as f64 * 0.9).round() as usize],
        mfu: crate::peak::mfu(flops, tokens_per_sec, peak),
        peak_flops: peak,
        peak_rss_bytes: crate::memory::peak_rss_bytes(),
    }
}
