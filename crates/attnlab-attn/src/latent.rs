//! Multi-head latent attention (MLA), DeepSeek-V2 (2024), §2.1.
//!
//! Keys and values are rebuilt from one shared latent per token:
//! `c_kv = RMSNorm(x W_dkv)` `[d_c]`, `k_C = c_kv W_uk`, `v = c_kv W_uv` (`[h, d_h]` each).
//! Queries, optionally through a latent: `c_q = RMSNorm(x W_dq)`, `q_C = c_q W_uq`.
//! Decoupled RoPE: `q_R = rope(c_q W_qr)` `[h, d_R]`, `k_R = rope(x W_kr)` `[d_R]` shared by
//! all heads. Score of head i: `[q_Cᵢ; q_Rᵢ]·[k_Cᵢ; k_R] / √(d_h + d_R)`.
//! The decode state holds only `c_kv` and `k_R`: `(d_c + d_R)` floats per token per layer.
//!
//! NoPE (`rope = false`, Kimi Linear's MLA, `modeling_kimi.py`): nothing is rotated, but the
//! decoupled slices stay (unrotated `q_R`, shared `k_R`), the scale stays `1/√(d_h + d_R)` and the
//! cache still holds `d_c + d_R` floats per token; the layer then sees no positions at all (in a
//! hybrid, the recurrent layers carry them).

use burn::module::Module;
use burn::nn::{Linear, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Tensor};

use crate::linear::{apply, linear};
use attnlab_kernels::rms_norm;
use crate::mask::causal_mask;
use crate::rope::Rope;
use crate::softmax_attention::{causal_softmax_attention, masked_softmax};
use crate::state::{write_in_place, LatentCache};
use crate::F32_BYTES;

/// Optional query compression: `c_q = RMSNorm(x W_dq)`.
#[derive(Module, Debug)]
pub struct QueryLatent {
    pub down: Linear,
    pub norm: RmsNorm,
}

#[derive(Module, Debug)]
pub struct LatentAttention {
    pub q_latent: Option<QueryLatent>,
    /// `(q_latent or d_model) → heads·(head_dim + rope_dim)`: `[q_C | q_R]` per head.
    pub q_up: Linear,
    /// `d_model → kv_latent + rope_dim`: `[c_kv | k_R]` before norm and rotation.
    pub kv_down: Linear,
    pub kv_norm: RmsNorm,
    /// `kv_latent → heads·2·head_dim`: `[k_C | v]` per head.
    pub kv_up: Linear,
    /// `heads·head_dim → d_model`.
    pub out: Linear,
    /// `None`: NoPE (the decoupled slices are not rotated).
    pub rope: Option<Rope>,
    pub heads: usize,
    pub head_dim: usize,
    pub kv_latent: usize,
    pub rope_dim: usize,
}

impl LatentAttention {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        d_model: usize,
        heads: usize,
        kv_latent: usize,
        q_latent: Option<usize>,
        rope_dim: usize,
        rotate: bool,
        max_seq: usize,
        rope_base: f32,
        device: &Device,
    ) -> Self {
        let head_dim = d_model / heads;
        let linear = |i: usize, o: usize| linear(i, o, device);
        let q_in = q_latent.unwrap_or(d_model);
        Self {
            q_latent: q_latent.map(|dq| QueryLatent { down: linear(d_model, dq), norm: RmsNormConfig::new(dq).init(device) }),
            q_up: linear(q_in, heads * (head_dim + rope_dim)),
            kv_down: linear(d_model, kv_latent + rope_dim),
            kv_norm: RmsNormConfig::new(kv_latent).init(device),
            kv_up: linear(kv_latent, heads * 2 * head_dim),
            out: linear(heads * head_dim, d_model),
            rope: rotate.then(|| Rope::new(rope_dim, max_seq, rope_base, device)),
            heads,
            head_dim,
            kv_latent,
            rope_dim,
        }
    }

    /// The queries' input: the normalised query latent `c_q = RMSNorm(x W_dq)`, or x itself
    /// without a query latent.
    pub fn query_input(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.q_latent {
            Some(ql) => rms_norm(&ql.norm, apply(&ql.down, x)),
            None => x,
        }
    }

    /// Queries `[b, h, t, d_h + d_R]` for positions `start..`.
    fn queries(&self, x: Tensor<3>, start: usize) -> Tensor<4> {
        self.queries_from(self.query_input(x), start)
    }

    /// Queries `[b, h, t, d_h + d_R]` from the query input `c_q` `[b, t, ·]` ([`Self::query_input`]).
    pub fn queries_from(&self, c_q: Tensor<3>, start: usize) -> Tensor<4> {
        let [b, t, _] = c_q.dims();
        let (h, d, r) = (self.heads, self.head_dim, self.rope_dim);
        let q = apply(&self.q_up, c_q).reshape([b, t, h, d + r]).swap_dims(1, 2);
        let q_c = q.clone().narrow(3, 0, d);
        let q_r = self.rotate(q.narrow(3, d, r), start);
        Tensor::cat(vec![q_c, q_r], 3)
    }

    /// RoPE for positions `start..`, or x itself under NoPE.
    fn rotate(&self, x: Tensor<4>, start: usize) -> Tensor<4> {
        match &self.rope {
            Some(rope) => rope.apply(x, start),
            None => x,
        }
    }

    /// The cached part for new tokens: `c_kv [b, t, d_c]` and rotated `k_R [b, t, d_R]`.
    pub fn latents(&self, x: Tensor<3>, start: usize) -> (Tensor<3>, Tensor<3>) {
        let [b, t, _] = x.dims();
        let kv = apply(&self.kv_down, x);
        let c_kv = rms_norm(&self.kv_norm, kv.clone().narrow(2, 0, self.kv_latent));
        let k_r = kv.narrow(2, self.kv_latent, self.rope_dim).reshape([b, 1, t, self.rope_dim]);
        let k_r = self.rotate(k_r, start).reshape([b, t, self.rope_dim]);
        (c_kv, k_r)
    }

    /// Attention of queries `[b, h, t, d_h + d_R]` over latents of s positions. `[b, t, d_model]`.
    fn attend(&self, q: Tensor<4>, c_kv: Tensor<3>, k_r: Tensor<3>) -> Tensor<3> {
        let [b, h, t, _] = q.dims();
        let s = c_kv.dims()[1];
        let (k, v) = self.keys_values(c_kv, k_r);
        let o = causal_softmax_attention(q, k, v, t, s - t, self.scale());
        apply(&self.out, o.swap_dims(1, 2).reshape([b, t, h * self.head_dim]))
    }

    /// K `[b, h, s, d_h + d_R]` (`[k_C; k_R]`, the rotary key shared by the heads) and V
    /// `[b, h, s, d_h]` rebuilt from the latents of s positions.
    pub fn keys_values(&self, c_kv: Tensor<3>, k_r: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
        let [b, s, _] = c_kv.dims();
        let (h, d) = (self.heads, self.head_dim);
        let kv = apply(&self.kv_up, c_kv).reshape([b, s, h, 2 * d]).swap_dims(1, 2);
        let k_c = kv.clone().narrow(3, 0, d);
        let v = kv.narrow(3, d, d);
        let k_r = k_r.reshape([b, 1, s, self.rope_dim]).expand([b, h, s, self.rope_dim]);
        (Tensor::cat(vec![k_c, k_r], 3), v)
    }

    /// The score scale `1/√(d_h + d_R)`.
    pub fn scale(&self) -> f32 {
        1.0 / ((self.head_dim + self.rope_dim) as f32).sqrt()
    }

    /// The same attention in the absorbed-weight form (DeepSeek-V2 §2.1.2), used for decode:
    /// `q_Cᵢ·(W_ukᵢᵀ c_j) = (q_Cᵢ W_ukᵢᵀ)·c_j` and `Σ_j p_ij W_uvᵢ c_j = W_uvᵢ Σ_j p_ij c_j`,
    /// so scores and values stay in the latent space and K/V are never rebuilt. The latent and
    /// the rotary key are shared by all heads, so the heads are stacked along the query axis
    /// (`[b, 1, h·t, ·]`) against one copy of the cache: per step O(s·h·(d_c + d_R)) work and
    /// no copy of the cache.
    fn attend_absorbed(&self, q: Tensor<4>, c_kv: Tensor<3>, k_r: Tensor<3>) -> Tensor<3> {
        let [b, h, t, _] = q.dims();
        let (d, r, dc) = (self.head_dim, self.rope_dim, self.kv_latent);
        // W_up [d_c, h·2·d_h] → per head [h, d_c, 2·d_h]: W_uk = [.., ..d_h], W_uv = [.., d_h..].
        let w = self.kv_up.weight.val().reshape([dc, h, 2 * d]).swap_dims(0, 1);
        let w_uk = w.clone().narrow(2, 0, d).unsqueeze::<4>();
        let w_uv = w.narrow(2, d, d).unsqueeze::<4>();
        let q_lat = q.clone().narrow(3, 0, d).matmul(w_uk.swap_dims(2, 3)).reshape([b, 1, h * t, dc]);
        let q_r = q.narrow(3, d, r).reshape([b, 1, h * t, r]);
        let c = c_kv.unsqueeze_dim::<4>(1); // [b, 1, s, d_c]
        let k_r = k_r.unsqueeze_dim::<4>(1); // [b, 1, s, d_R]
        let s = c.dims()[2];
        let scores = (q_lat.matmul(c.clone().swap_dims(2, 3)) + q_r.matmul(k_r.swap_dims(2, 3))) * (1.0 / ((d + r) as f32).sqrt());
        let mask = causal_mask(t, s, &scores.device()).repeat_dim(0, h).unsqueeze();
        let o_lat = masked_softmax(scores, Some(mask)).matmul(c).reshape([b, h, t, dc]);
        let o = o_lat.matmul(w_uv); // [b, h, t, d_h]
        apply(&self.out, o.swap_dims(1, 2).reshape([b, t, h * d]))
    }

    /// Causal forward. x: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let q = self.queries(x.clone(), 0);
        let (c_kv, k_r) = self.latents(x, 0);
        self.attend(q, c_kv, k_r)
    }

    /// Empty latent cache for `batch` sequences of up to `capacity` tokens.
    pub fn init_state(&self, batch: usize, capacity: usize, device: &Device) -> LatentCache {
        LatentCache {
            c_kv: Tensor::zeros([batch, capacity, self.kv_latent], device),
            k_rope: Tensor::zeros([batch, capacity, self.rope_dim], device),
            len: 0,
        }
    }

    /// Feeds x: `[batch, new, d_model]`; caches only `c_kv` and `k_R` and attends in the
    /// absorbed form (tested equal to `forward`).
    pub fn step(&self, x: Tensor<3>, cache: &mut LatentCache) -> Tensor<3> {
        let [b, new, _] = x.dims();
        let (start, end) = (cache.len, cache.len + new);
        assert!(end <= cache.c_kv.dims()[1], "latent cache full: {end} tokens > capacity {}", cache.c_kv.dims()[1]);
        let q = self.queries(x.clone(), start);
        let (c_kv, k_r) = self.latents(x, start);
        write_in_place(&mut cache.c_kv, [0..b, start..end, 0..self.kv_latent], c_kv);
        write_in_place(&mut cache.k_rope, [0..b, start..end, 0..self.rope_dim], k_r);
        cache.len = end;
        let c_kv = cache.c_kv.clone().narrow(1, 0, end);
        let k_r = cache.k_rope.clone().narrow(1, 0, end);
        self.attend_absorbed(q, c_kv, k_r)
    }

    /// Bytes of the latent cache for one sequence of `context` tokens: `(d_c + d_R) · context · 4`.
    pub fn state_bytes(&self, context: usize) -> usize {
        (self.kv_latent + self.rope_dim) * context * F32_BYTES
    }

    /// Forward FLOPs per token at `context` (training form, K/V rebuilt from the latent): projections plus
    /// `QKᵀ` over `d_h + d_R` and `AV` over `d_h`, per head and key.
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let mut proj = self.q_up.weight.shape().num_elements()
            + self.kv_down.weight.shape().num_elements()
            + self.kv_up.weight.shape().num_elements()
            + self.out.weight.shape().num_elements();
        if let Some(ql) = &self.q_latent {
            proj += ql.down.weight.shape().num_elements();
        }
        let attn = 2 * self.heads * (2 * self.head_dim + self.rope_dim) * context;
        (2 * proj + attn) as u64
    }
}
