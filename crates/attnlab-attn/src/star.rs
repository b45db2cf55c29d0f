//! Star Attention's phase 2 (Acharya et al. 2025, "Star Attention: Efficient LLM Inference over
//! Long Sequences"; `../shared/MECHANISMS.md` §7; NVIDIA/Star-Attention): query and generated
//! tokens attend to a KV cache **sharded over hosts**. Host h attends its own shard and returns
//! only its partial output and log-sum-exp per query row,
//!
//!   `ℓ_h = log Σ_{j ∈ h} exp(q·k_j/√d_h)`,   `o_h = Σ_{j ∈ h} exp(q·k_j/√d_h − ℓ_h) v_j`,
//!
//! and the merge is exact: `ℓ = log Σ_h e^{ℓ_h}`, `o = Σ_h e^{ℓ_h − ℓ} o_h` (computed shifted by
//! `max_h ℓ_h` in f32, not the reference's un-shifted `ℓ + log(1 + e^{ℓ_b − ℓ})`).
//!
//! Masks (attnlab's rule, deliberately not the reference's bottom-right FlashAttention mask on
//! every host): no mask on the context hosts; on the query host (the last) the new tokens are
//! its last keys and see them causally, every earlier key fully. Only the query host stores the
//! new tokens' K/V. An empty shard is skipped; a row with no visible key would give `ℓ = −∞`,
//! `o = 0`. Hosts are threads, each holding its shard; they exchange only `(o_h, ℓ_h)`.
//!
//! Shapes: q `[b, h, t_q, d_h]` (grouped-query: head i reads K/V head ⌊i / (h/g)⌋), shard keys
//! and values `[b, g, s_h, d_h]`.

use burn::tensor::{Bool, Tensor, TensorData};

use crate::grouped_query::GroupedQuery;

/// One host's part of a layer's KV cache (`None`: holds no token).
#[derive(Debug, Clone, Default)]
pub struct Shard {
    pub kv: Option<(Tensor<4>, Tensor<4>)>,
}

impl Shard {
    /// A shard holding keys and values `[b, g, s, d_h]`.
    pub fn new(k: Tensor<4>, v: Tensor<4>) -> Self {
        Self { kv: Some((k, v)) }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends keys and values `[b, g, n, d_h]` after the held ones.
    pub fn append(&mut self, k: Tensor<4>, v: Tensor<4>) {
        self.kv = Some(match self.kv.take() {
            Some((k0, v0)) => (Tensor::cat(vec![k0, k], 2), Tensor::cat(vec![v0, v], 2)),
            None => (k, v),
        });
    }

    /// Bytes of the held keys and values (f32).
    pub fn bytes(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, v)| (k.shape().num_elements() + v.shape().num_elements()) * crate::F32_BYTES)
    }
}

/// One host's answer for the query rows: o `[b, h, t_q, d_h]` and ℓ `[b, h, t_q, 1]`.
#[derive(Debug, Clone)]
pub struct Partial {
    pub o: Tensor<4>,
    pub lse: Tensor<4>,
}

/// Host-local attention of q `[b, h, t_q, d_h]` over k, v `[b, g, s, d_h]`: output normalised
/// over this shard and its log-sum-exp. `causal_new`: the last `t_q` keys are the queries' own
/// tokens (query host) — query i sees keys `j ≤ s − t_q + i`; otherwise every key.
pub fn partial(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f32, causal_new: bool) -> Partial {
    let [b, h, tq, d] = q.dims();
    let [_, g, s, _] = k.dims();
    let r = h / g;
    // Group-stacked rows: row ρ of group γ is head γ·r + ρ / t_q, query ρ mod t_q.
    let scores = (q.reshape([b, g, r * tq, d]) * scale).matmul(k.swap_dims(2, 3));
    let scores = if causal_new {
        assert!(s >= tq, "the query host holds the {tq} new tokens' keys, got {s} keys");
        let hidden: Vec<bool> = (0..r * tq).flat_map(|row| (0..s).map(move |j| j > s - tq + row % tq)).collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(hidden, [r * tq, s]), &scores.device());
        scores.mask_fill(mask.unsqueeze::<4>().expand([b, g, r * tq, s]), f32::NEG_INFINITY)
    } else {
        scores
    };
    // A row with no visible key: max −∞ → clamp so that exp gives 0, ℓ = −∞ and o = 0.
    let m = scores.clone().max_dim(3).clamp_min(f32::MIN);
    let p = (scores - m.clone()).exp();
    let sum = p.clone().sum_dim(3);
    let o = p.matmul(v) / sum.clone().clamp_min(f32::MIN_POSITIVE);
    let lse = m + sum.log();
    Partial { o: o.reshape([b, h, tq, d]), lse: lse.reshape([b, h, tq, 1]) }
}

/// The exact merge of the hosts' partials: `o = Σ_h e^{ℓ_h − ℓ} o_h`, `ℓ = log Σ_h e^{ℓ_h}`,
/// shifted by `max_h ℓ_h`. Returns (o, ℓ).
pub fn merge(parts: Vec<Partial>) -> (Tensor<4>, Tensor<4>) {
    assert!(!parts.is_empty(), "merge: no host answered");
    let top = parts.iter().skip(1).fold(parts[0].lse.clone(), |m, p| m.max_pair(p.lse.clone())).clamp_min(f32::MIN);
    let mut weighted = None;
    let mut total = None;
    for p in parts {
        let w = (p.lse - top.clone()).exp();
        let wo = p.o * w.clone();
        weighted = Some(weighted.map_or(wo.clone(), |acc: Tensor<4>| acc + wo));
        total = Some(total.map_or(w.clone(), |acc: Tensor<4>| acc + w));
    }
    let (weighted, total) = (weighted.expect("parts"), total.expect("parts"));
    let o = weighted / total.clone().clamp_min(f32::MIN_POSITIVE);
    (o, top + total.log())
}

/// Every non-empty shard's [`partial`], each on its own thread (the hosts); `query_host` is the
/// index of the shard that holds the `t_q` new tokens as its last keys.
pub fn partials(q: &Tensor<4>, shards: &[Shard], query_host: usize, scale: f32) -> Vec<Partial> {
    std::thread::scope(|scope| {
        let hosts: Vec<_> = shards
            .iter()
            .enumerate()
            .filter_map(|(i, shard)| {
                let (k, v) = shard.kv.clone()?;
                let q = q.clone();
                Some(scope.spawn(move || partial(q, k, v, scale, i == query_host)))
            })
            .collect();
        hosts.into_iter().map(|h| h.join().expect("a Star Attention host panicked")).collect()
    })
}

/// Phase 2 of one grouped-query layer: the new tokens x `[b, t_q, d_model]` at positions
/// `start..` (`start` = tokens cached over all shards) are projected, their K/V appended to
/// the query host (the last shard), every host answers on its thread, and the merged output
/// goes through the gate and the output projection → `[b, t_q, d_model]`.
pub fn attend_hosts(layer: &GroupedQuery, x: Tensor<3>, shards: &mut [Shard], start: usize) -> Tensor<3> {
    let (q, k, v, gate) = layer.project_at(x, start);
    let query_host = shards.len() - 1;
    shards[query_host].append(k, v);
    let scale = 1.0 / (layer.head_dim as f32).sqrt();
    let (o, _) = merge(partials(&q, shards, query_host, scale));
    layer.finish(o, gate)
}
