//! Grouped-query attention; MHA (kv_heads = heads) and MQA (kv_heads = 1) are the same module.
//!
//! Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models".
//! `[q | k | v] = x W_qkv`, q: h heads, k/v: g heads; query head i uses K/V head ⌊i / (h/g)⌋:
//! `oᵢ = softmax(rope(qᵢ) rope(k_⌊i/r⌋)ᵀ / √d_h + causal) v_⌊i/r⌋`, `y = [o₁..o_h] W_o`.
//! K/V heads are never copied: queries of one group are stacked along the sequence axis,
//! q `[b, g, r·t, d_h]` against k `[b, g, s, d_h]`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use crate::linear::linear;
use crate::mask::causal_mask;
use crate::rope::Rope;
use crate::softmax_attention::softmax_attention;
use crate::state::{write_in_place, KvCache};
use crate::F32_BYTES;

/// Grouped-query attention with a fused QKV projection (no biases).
#[derive(Module, Debug)]
pub struct GroupedQuery {
    /// `d_model → (heads + 2·kv_heads)·head_dim`.
    pub qkv: Linear,
    /// `heads·head_dim → d_model`.
    pub out: Linear,
    pub rope: Rope,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl GroupedQuery {
    pub fn new(d_model: usize, heads: usize, kv_heads: usize, max_seq: usize, rope_base: f32, device: &Device) -> Self {
        let head_dim = d_model / heads;
        Self {
            qkv: linear(d_model, (heads + 2 * kv_heads) * head_dim, device),
            out: linear(heads * head_dim, d_model, device),
            rope: Rope::new(head_dim, max_seq, rope_base, device),
            heads,
            kv_heads,
            head_dim,
        }
    }

    /// q `[b, heads, t, d_h]`, k and v `[b, kv_heads, t, d_h]`, rotated for positions `start..`.
    fn project(&self, x: Tensor<3>, start: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [b, t, _] = x.dims();
        let (h, g, d) = (self.heads, self.kv_heads, self.head_dim);
        let qkv = self.qkv.forward(x);
        let split = |from: usize, n: usize| qkv.clone().narrow(2, from * d, n * d).reshape([b, t, n, d]).swap_dims(1, 2);
        let q = self.rope.apply(split(0, h), start);
        let k = self.rope.apply(split(h, g), start);
        let v = split(h + g, g);
        (q, k, v)
    }

    /// Attention of q `[b, h, t, d]` over k, v `[b, g, s, d]` (queries are the last t of s
    /// positions), then the output projection. Returns `[b, t, d_model]`.
    fn attend(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<3> {
        let [b, h, t, d] = q.dims();
        let s = k.dims()[2];
        let (g, r) = (self.kv_heads, h / self.kv_heads);
        let mask = causal_mask(t, s, &q.device()).repeat_dim(0, r);
        let q = q.reshape([b, g, r * t, d]);
        let o = softmax_attention(q, k, v, Some(mask), 1.0 / (d as f32).sqrt());
        let o = o.reshape([b, h, t, d]).swap_dims(1, 2).reshape([b, t, h * d]);
        self.out.forward(o)
    }

    /// Causal forward. x: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (q, k, v) = self.project(x, 0);
        self.attend(q, k, v)
    }

    /// Empty cache for `batch` sequences of up to `capacity` tokens.
    pub fn init_state(&self, batch: usize, capacity: usize, device: &Device) -> KvCache {
        let shape = [batch, self.kv_heads, capacity, self.head_dim];
        KvCache { k: Tensor::zeros(shape, device), v: Tensor::zeros(shape, device), len: 0 }
    }

    /// Feeds x: `[batch, new, d_model]`, appends its keys/values to the cache.
    pub fn step(&self, x: Tensor<3>, cache: &mut KvCache) -> Tensor<3> {
        let [b, new, _] = x.dims();
        let (start, end) = (cache.len, cache.len + new);
        assert!(end <= cache.k.dims()[2], "KV cache full: {end} tokens > capacity {}", cache.k.dims()[2]);
        let (q, k, v) = self.project(x, start);
        let range = [0..b, 0..self.kv_heads, start..end, 0..self.head_dim];
        write_in_place(&mut cache.k, range.clone(), k);
        write_in_place(&mut cache.v, range, v);
        cache.len = end;
        let k = cache.k.clone().narrow(2, 0, end);
        let v = cache.v.clone().narrow(2, 0, end);
        self.attend(q, k, v)
    }

    /// Bytes of K and V for one sequence of `context` tokens: `2 · g · d_h · context · 4`.
    pub fn state_bytes(&self, context: usize) -> usize {
        2 * self.kv_heads * self.head_dim * context * F32_BYTES
    }

    /// Forward FLOPs per token at `context`: projections (2 per weight) plus
    /// `QKᵀ` and `AV` (2·h·d_h each per key).
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let proj = self.qkv.weight.shape().num_elements() + self.out.weight.shape().num_elements();
        (2 * proj + 4 * self.heads * self.head_dim * context) as u64
    }
}
