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
        attention: config.mixer_label(),
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
    /// MFU, never above 1 (see [`crate::peak::mfu`]).
    pub mfu: f64,
    /// The peak MFU is taken against: the measured one, or the achieved FLOP/s where larger.
    pub peak_flops: f64,
    /// The achieved FLOP/s exceeded the measured peak (then `peak_flops` is the achieved figure).
    #[serde(default)]
    pub peak_exceeded: bool,
    /// Peak resident memory of the process (run it in a fresh process for a per-point figure).
    pub peak_rss_bytes: Option<u64>,
    /// `train.precision` of the point (the type the step computes in).
    #[serde(default = "f32_name")]
    pub precision: String,
    /// The round of `bench train --rounds` this measurement belongs to (1-based; 0: not set).
    #[serde(default)]
    pub round: usize,
}

fn f32_name() -> String {
    "f32".into()
}

/// One point of `bench train --rounds` over all rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundSummary {
    pub attention: String,
    /// Median, min and max of the point's tokens/s over the rounds.
    pub tokens_per_sec: [f64; 3],
    /// Median, min and max over the rounds of (this point's tokens/s / the first point's, same round).
    pub ratio: [f64; 3],
}

/// Median (the mean of the two middle values for an even count), min and max; `values` non-empty.
fn spread(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
    [median, values[0], values[n - 1]]
}

/// Summary of `bench train --rounds`: `results` holds `points` measurements per round, listed in
/// the same point order every round. Ratios are taken within a round, so that a drift of the
/// machine's speed between rounds cancels out. A point is named by its attention label, or by its
/// sweep point where two points share a label (configs differing outside the attention).
pub fn round_summary(results: &[TrainPoint], points: usize) -> Vec<RoundSummary> {
    assert!(points > 0 && !results.is_empty() && results.len() % points == 0, "round_summary: {} results for {points} points per round", results.len());
    let rounds: Vec<&[TrainPoint]> = results.chunks(points).collect();
    let shared = |i: usize| rounds[0].iter().filter(|p| p.attention == rounds[0][i].attention).count() > 1;
    (0..points)
        .map(|i| RoundSummary {
            attention: if shared(i) { rounds[0][i].point.clone() } else { rounds[0][i].attention.clone() },
            tokens_per_sec: spread(rounds.iter().map(|r| r[i].tokens_per_sec).collect()),
            ratio: spread(rounds.iter().map(|r| r[i].tokens_per_sec / r[0].tokens_per_sec).collect()),
        })
        .collect()
}

/// `peak` is the device's measured matmul peak (FLOP/s) for MFU.
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
    let mut stage = None;
    for i in 0..warmup + steps {
        // A staged run is timed as it trains: each step with its stage's frozen set.
        if let Some((k, s, _)) = crate::stages::stage_at(&t.stages, i).filter(|(k, _, _)| stage != Some(*k)) {
            model = crate::stages::freeze_for(model, s);
            stage = Some(k);
        }
        ad.sync().ok();
        let t0 = Instant::now();
        let (grads, _) = crate::trainer::accumulated_grads(&model, run, &mut rng, i, &ad);
        model = crate::optim::step(&mut optim, model, grads, t.lr, t.grad_clip, t.precision);
        ad.sync().ok();
        if i >= warmup {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    let tokens_per_sec = (t.accumulate * t.batch * t.block * steps) as f64 / (ms.iter().sum::<f64>() / 1e3);
    let flops = model.flops_per_token(t.block);
    let mfu = crate::peak::mfu(flops, tokens_per_sec, peak);
    TrainPoint {
        point: point.to_string(),
        attention: run.spec.model.mixer_label(),
        params: model.param_counts().total,
        steps,
        tokens_per_sec,
        ms_per_step_median: ms[ms.len() / 2],
        ms_per_step_p90: ms[((ms.len() - 1) as f64 * 0.9).round() as usize],
        mfu: mfu.value,
        peak_flops: mfu.peak,
        peak_exceeded: mfu.exceeded,
        precision: t.precision.name().into(),
        peak_rss_bytes: crate::memory::peak_rss_bytes(),
        round: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(attention: &str, tokens_per_sec: f64) -> TrainPoint {
        TrainPoint { point: attention.into(), attention: attention.into(), params: 1, steps: 1, tokens_per_sec, ms_per_step_median: 1.0, ms_per_step_p90: 1.0, mfu: 0.1, peak_flops: 1.0, peak_exceeded: false, precision: "f32".into(), peak_rss_bytes: None, round: 0 }
    }

    /// Three rounds of (a, b, c) on a machine whose speed drifts (a runs at 100, 200, 50
    /// tokens/s): b is half of a in rounds 1–2 and a quarter in round 3, c equals a, then half.
    /// An even count of rounds takes the mean of the middle two. Planted and seen to fail:
    /// ratios against the first round's a (b's min 0.125); the upper middle as the median of an
    /// even count (0.6); ratios against the previous point instead of the first (c's 2.0);
    /// points always named by their attention label (the last case).
    #[test]
    fn ratios_are_taken_within_a_round() {
        let r = [point("a", 100.0), point("b", 50.0), point("c", 100.0), point("a", 200.0), point("b", 100.0), point("c", 100.0), point("a", 50.0), point("b", 12.5), point("c", 25.0)];
        let s = round_summary(&r, 3);
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].attention.as_str(), s[0].ratio), ("a", [1.0, 1.0, 1.0]));
        assert_eq!(s[1].tokens_per_sec, [50.0, 12.5, 100.0]);
        assert_eq!(s[1].ratio, [0.5, 0.25, 0.5]);
        assert_eq!(s[2].ratio, [0.5, 0.5, 1.0]);
        let four: Vec<TrainPoint> = [100.0, 80.0, 100.0, 60.0, 100.0, 40.0, 100.0, 20.0].iter().zip(["a", "b"].iter().cycle()).map(|(v, n)| point(n, *v)).collect();
        assert_eq!(round_summary(&four, 2)[1].ratio, [0.5, 0.2, 0.8]);
        // Two points with one attention label (they differ elsewhere) are named by their point.
        let mut same = [point("gdn", 1.0), point("gdn", 2.0), point("mha", 3.0)];
        (same[0].point, same[1].point) = ("model.d_model=64".into(), "model.d_model=128".into());
        let names: Vec<String> = round_summary(&same, 3).into_iter().map(|s| s.attention).collect();
        assert_eq!(names, ["model.d_model=64", "model.d_model=128", "mha"]);
    }
}

/// Task-generation benchmark (`attnlab bench tasks`): seconds to generate `samples` training
/// examples of `seq_len` tokens through a fixed training set (`data.train_samples`: each example
/// generated on demand from its own stream, checked against the held-out sets), per task kind
/// with its other parameters at their defaults. Best of `repeats`.
pub fn task_generation(samples: usize, seq_len: usize, repeats: usize) -> Result<Vec<(String, f64)>, attnlab_data::tasks::TaskError> {
    let kinds = ["mqar", "selective_copy", "mad_recall", "mad_noisy_recall", "mad_fuzzy_recall", "mad_selective_copy", "mad_compression", "mad_memorization"];
    let mut out = Vec::new();
    for kind in kinds {
        let config: attnlab_data::TaskConfig = toml::from_str(&format!("kind = \"{kind}\"\nseq_len = {seq_len}")).expect("a known task");
        let data = attnlab_data::TaskData::new(config, 128)?.with_train_samples(samples, 0);
        let mut best = f64::INFINITY;
        for _ in 0..repeats.max(1) {
            let t0 = Instant::now();
            let tokens: usize = (0..samples).map(|i| data.train_set_example(i).tokens.len()).sum();
            best = best.min(t0.elapsed().as_secs_f64());
            std::hint::black_box(tokens);
        }
        out.push((kind.to_string(), best));
    }
    Ok(out)
}
