//! Sparse decode over a model trained with dense softmax attention: a dense prefill, then each
//! new token's attention restricted to a budget of keys chosen by Adamas or a baseline
//! ([`attnlab_attn::key_selection`]), the first `dense_layers` layers left dense (Adamas keeps
//! layers 0 and 1 dense). Adamas' threshold τ is calibrated per layer as one standard deviation
//! of the Hadamard-transformed prefill keys (all sequences, heads, positions, dimensions), or
//! given. The protocol of Adamas' PG-19 / passkey evaluations: the context prefilled densely,
//! the rest fed token by token (a dense prefill scores exactly as the dense model).
//!
//! Kinds: grouped-query attention with the causal pattern in every layer (mha, mqa, gqa and
//! their gated / qk-norm variants), a power-of-two head_dim ≥ 4, one loop, the LM head.

use attnlab_attn::adamas::hadamard;
use attnlab_attn::key_selection::{host, step_layer, HostCache, Recall, Selector};
use attnlab_attn::State;
use attnlab_kernels::rms_norm;
use burn::tensor::{Int, Tensor};

use crate::gpt::Gpt;

/// The per-layer decode caches and thresholds after [`prefill`].
#[derive(Debug, Clone)]
pub struct SparseDecoder {
    pub caches: Vec<HostCache>,
    pub selector: Selector,
    pub dense_layers: usize,
}

impl SparseDecoder {
    /// Each layer's τ.
    pub fn taus(&self) -> Vec<f32> {
        self.caches.iter().map(|c| c.tau).collect()
    }
}

/// Why a model cannot decode with key selection, naming what is wrong.
pub fn check(model: &Gpt, selector: &Selector) -> Result<(), String> {
    if let Some(b) = selector.budget() {
        if b < 2 {
            return Err(format!("eval.inference.budget = {b}: must be ≥ 2 (it counts the current token)"));
        }
    }
    if let Selector::SinkWindow { budget, sinks } = *selector {
        if sinks >= budget {
            return Err(format!("eval.inference.sinks = {sinks}: must be < budget = {budget}"));
        }
    }
    if let Selector::Pages { page, budget } = *selector {
        if page == 0 || page > budget.saturating_sub(1) {
            return Err(format!("eval.inference.page = {page}: allowed: 1 to {} (budget − 1: a page must fit beside the current token)", budget.saturating_sub(1)));
        }
    }
    for (l, m) in model.causal_grouped_layers("key selection")?.into_iter().enumerate() {
        if !(m.head_dim.is_power_of_two() && m.head_dim >= 4) {
            return Err(format!("key selection: layer {l} has head_dim = {}: Adamas' Hadamard codes need a power of two ≥ 4", m.head_dim));
        }
    }
    Ok(())
}

/// One standard deviation of the Hadamard-transformed keys `[b, g, t, d_h]`.
pub fn calibrate_tau(keys: &[f32], head_dim: usize) -> f32 {
    let mut rotated = keys.to_vec();
    rotated.chunks_mut(head_dim).for_each(hadamard);
    let n = rotated.len() as f64;
    let mean = rotated.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = rotated.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
    var.sqrt() as f32
}

/// Dense prefill of `context` `[b, P]` (the model's own cached decode) → logits `[b, P, vocab]`
/// and the decoder holding every layer's keys, values and codes (τ per layer: `tau`, or
/// calibrated on these keys). Call [`check`] first.
pub fn prefill(model: &Gpt, context: Tensor<2, Int>, selector: Selector, dense_layers: usize, tau: Option<f32>) -> (Tensor<3>, SparseDecoder) {
    let [b, p] = context.dims();
    let device = context.device();
    let mut states = model.init_states(b, p, &device);
    let logits = model.step(context, &mut states);
    let caches = states
        .into_iter()
        .map(|state| {
            let State::Kv(kv) = state else { unreachable!("grouped-query layers keep a KV cache") };
            let [_, g, _, d] = kv.k.dims();
            let keys = kv.k.narrow(2, 0, kv.len);
            let tau = tau.unwrap_or_else(|| calibrate_tau(&host(keys.clone()), d));
            let mut cache = HostCache::new(b, g, d, tau);
            cache.push(keys, kv.v.narrow(2, 0, kv.len));
            cache
        })
        .collect();
    (logits, SparseDecoder { caches, selector, dense_layers })
}

/// One token per sequence `[b, 1]` → logits `[b, 1, vocab]`, and the recall of the oracle's
/// keys over the selecting layers.
pub fn step(model: &Gpt, decoder: &mut SparseDecoder, token: Tensor<2, Int>) -> (Tensor<3>, Recall) {
    let mut h = model.embed.forward(token);
    let mut recall = Recall::default();
    let layers = model.causal_grouped_layers("key selection").expect("checked by sparse_decode::check");
    for (l, (b, attn)) in model.blocks.iter().zip(layers).enumerate() {
        let selector = if l < decoder.dense_layers { Selector::Dense } else { decoder.selector };
        let (y, r) = step_layer(attn, rms_norm(&b.attn_norm, h.clone()), &mut decoder.caches[l], &selector);
        recall.sum += r.sum;
        recall.rows += r.rows;
        h = h + y;
        h = h.clone() + b.mlp.forward(rms_norm(&b.mlp_norm, h));
    }
    (model.logits(h), recall)
}
