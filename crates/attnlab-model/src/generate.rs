//! Sampling with the decode state: the prompt is prefilled in one `step`, then one token at a
//! time. Sampling runs on the host from a seeded [`Rng`], so it reproduces from the seed.

use attnlab_data::Rng;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::gpt::Gpt;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (None = all).
    pub top_k: Option<usize>,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.8, top_k: Some(40), seed: 0 }
    }
}

/// Continues `prompt` (non-empty) by `tokens` new token ids. The last new token is never fed
/// back, so `prompt.len() + tokens − 1` must not exceed `model.max_seq`.
pub fn generate(model: &Gpt, prompt: &[u32], tokens: usize, sampling: Sampling, device: &Device) -> Vec<u32> {
    assert!(!prompt.is_empty(), "generate: empty prompt");
    let capacity = prompt.len() + tokens.saturating_sub(1);
    assert!(capacity <= model.max_seq, "generate: prompt + tokens = {capacity} exceeds model.max_seq = {}", model.max_seq);
    let mut rng = Rng::new(sampling.seed);
    let mut states = model.init_states(1, capacity, device);
    let mut out = Vec::with_capacity(tokens);
    let mut input: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    for _ in 0..tokens {
        let n = input.len();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(std::mem::take(&mut input), [1, n]), device);
        let logits = model.step(ids, &mut states);
        let vocab = logits.dims()[2];
        let last: Vec<f32> = logits.narrow(1, n - 1, 1).reshape([vocab]).into_data().try_into_vec::<f32>().expect("f32 logits");
        let next = sample(&last, sampling, &mut rng);
        out.push(next);
        input.push(next as i64);
    }
    out
}

/// Continues `prompt` (non-empty) by `tokens` new ids with no length limit: each token is
/// predicted from the last `max_seq` tokens at most, as nanoGPT's `generate` crops to
/// `block_size`. While prompt and output fit this is [`generate`] (one prefill, then cached
/// steps); past that, every new token re-prefills the last `max_seq` tokens (a sliding window:
/// `max_seq` positions of work per token), with the seed advanced per token.
pub fn generate_cropped(model: &Gpt, prompt: &[u32], tokens: usize, sampling: Sampling, device: &Device) -> Vec<u32> {
    assert!(!prompt.is_empty(), "generate: empty prompt");
    let window = model.max_seq.max(1);
    let tail = |ids: &[u32]| ids[ids.len().saturating_sub(window)..].to_vec();
    let context = tail(prompt);
    // The last token generated is never fed back: max_seq − len + 1 fit in the cache.
    let mut out = generate(model, &context, tokens.min(window - context.len() + 1), sampling, device);
    let mut seed = sampling.seed;
    while out.len() < tokens {
        seed = seed.wrapping_add(1);
        let all: Vec<u32> = prompt.iter().chain(&out).copied().collect();
        out.extend(generate(model, &tail(&all), 1, Sampling { seed, ..sampling }, device));
    }
    out
}

/// Picks a token from logits with temperature and top-k.
pub fn sample(logits: &[f32], sampling: Sampling, rng: &mut Rng) -> u32 {
    let argmax = || logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap_or(0);
    if sampling.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(sampling.top_k.unwrap_or(logits.len()).clamp(1, logits.len()));
    let max = logits[order[0]];
    let weights: Vec<f64> = order.iter().map(|&i| (((logits[i] - max) / sampling.temperature) as f64).exp()).collect();
    let mut u = rng.unit_f64() * weights.iter().sum::<f64>();
    for (&i, w) in order.iter().zip(&weights) {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    order[order.len() - 1] as u32
}
