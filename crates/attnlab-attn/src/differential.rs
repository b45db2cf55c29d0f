//! Differential attention (Ye et al. 2024, "Differential Transformer").
//!
//! With `h` baseline heads of width `d = d_model / h`, there are `h' = h / 2` differential heads.
//! Head i has two query/key pairs (Q₁, K₁), (Q₂, K₂) of width d and one value V of width 2d:
//! `oᵢ = (softmax(Q₁K₁ᵀ/√d) − λ·softmax(Q₂K₂ᵀ/√d)) V`, with the learnable scalar
//! `λ = exp(λ_q1·λ_k1) − exp(λ_q2·λ_k2) + λ_init`, `λ_init = 0.8 − 0.6·exp(−0.3·l)` for the
//! layer index l counted from 0. Each head's output goes through RMSNorm and is scaled by
//! `(1 − λ_init)`; `y = [o₁ .. o_h'] W_o`. Parameters and K/V cache equal MHA's at equal width.

use burn::module::{Module, Param};
use burn::nn::{Linear, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Distribution, Tensor};

use crate::linear::{apply, linear};
use attnlab_kernels::rms_norm;
use crate::mask::causal_mask;
use crate::rope::Rope;
use crate::softmax_attention::masked_softmax;
use crate::state::{write_in_place, KvCache};
use crate::F32_BYTES;

/// Std of the initial λ vectors (as the paper's code).
const LAMBDA_INIT_STD: f64 = 0.1;

/// Differential attention with a fused QKV projection.
#[derive(Module, Debug)]
pub struct Differential {
    /// `d_model → 3·d_model`: [Q (2h' sub-heads of d) | K (2h' of d) | V (h' of 2d)].
    pub qkv: Linear,
    /// `d_model → d_model`.
    pub out: Linear,
    pub lambda_q1: Param<Tensor<1>>,
    pub lambda_k1: Param<Tensor<1>>,
    pub lambda_q2: Param<Tensor<1>>,
    pub lambda_k2: Param<Tensor<1>>,
    /// Per-head RMSNorm over `2d`.
    pub head_norm: RmsNorm,
    pub rope: Rope,
    /// Differential heads h'.
    pub heads: usize,
    /// Width d of one query/key.
    pub head_dim: usize,
    #[module(skip)]
    pub lambda_init: f32,
}

/// `λ_init = 0.8 − 0.6·exp(−0.3·layer)`, layer counted from 0.
pub fn lambda_init(layer: usize) -> f32 {
    0.8 - 0.6 * (-0.3 * layer as f32).exp()
}

impl Differential {
    /// `heads` is the baseline head count (even); the module has `heads / 2` differential heads.
    pub fn new(d_model: usize, heads: usize, max_seq: usize, rope_base: f32, layer: usize, device: &Device) -> Self {
        let head_dim = d_model / heads;
        let lambda = || Param::from_tensor(Tensor::random([head_dim], Distribution::Normal(0.0, LAMBDA_INIT_STD), device));
        Self {
            qkv: linear(d_model, 3 * d_model, device),
            out: linear(d_model, d_model, device),
            lambda_q1: lambda(),
            lambda_k1: lambda(),
            lambda_q2: lambda(),
            lambda_k2: lambda(),
            head_norm: RmsNormConfig::new(2 * head_dim).with_epsilon(1e-5).init(device),
            rope: Rope::new(head_dim, max_seq, rope_base, device),
            heads: heads / 2,
            head_dim,
            lambda_init: lambda_init(layer),
        }
    }

    /// The scalar λ as a `[1]` tensor.
    pub fn lambda(&self) -> Tensor<1> {
        let dot = |a: &Param<Tensor<1>>, b: &Param<Tensor<1>>| (a.val() * b.val()).sum().exp();
        dot(&self.lambda_q1, &self.lambda_k1) - dot(&self.lambda_q2, &self.lambda_k2) + self.lambda_init
    }

    /// q, k `[b, 2h', t, d]` (rotated for positions `start..`), v `[b, h', t, 2d]`.
    fn project(&self, x: Tensor<3>, start: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [b, t, d_model] = x.dims();
        let (h, d) = (self.heads, self.head_dim);
        let qkv = apply(&self.qkv, x);
        let q = qkv.clone().narrow(2, 0, d_model).reshape([b, t, 2 * h, d]).swap_dims(1, 2);
        let k = qkv.clone().narrow(2, d_model, d_model).reshape([b, t, 2 * h, d]).swap_dims(1, 2);
        let v = qkv.narrow(2, 2 * d_model, d_model).reshape([b, t, h, 2 * d]).swap_dims(1, 2);
        (self.rope.apply(q, start), self.rope.apply(k, start), v)
    }

    /// Queries are the last t of s positions. Returns `[b, t, d_model]`.
    fn attend(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<3> {
        let [b, sub_heads, t, d] = q.dims();
        let s = k.dims()[2];
        let h = sub_heads / 2;
        let mask = causal_mask(t, s, &q.device()).unsqueeze();
        // q scaled before the product: the raw q·k of a half-precision forward could overflow f16.
        let w = masked_softmax((q * (1.0 / (d as f32).sqrt())).matmul(k.swap_dims(2, 3)), Some(mask));
        let w = w.reshape([b, h, 2, t * s]);
        let w1 = w.clone().narrow(2, 0, 1).reshape([b, h, t, s]);
        let w2 = w.narrow(2, 1, 1).reshape([b, h, t, s]);
        let lambda = self.lambda().reshape([1, 1, 1, 1]);
        let o = (w1 - w2 * lambda).matmul(v); // [b, h', t, 2d]
        let o = rms_norm(&self.head_norm, o) * (1.0 - self.lambda_init);
        apply(&self.out, o.swap_dims(1, 2).reshape([b, t, h * 2 * d]))
    }

    /// Causal forward. x: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (q, k, v) = self.project(x, 0);
        self.attend(q, k, v)
    }

    /// Empty cache: k `[batch, 2h', capacity, d]`, v `[batch, h', capacity, 2d]`.
    pub fn init_state(&self, batch: usize, capacity: usize, device: &Device) -> KvCache {
        let (h, d) = (self.heads, self.head_dim);
        KvCache { k: Tensor::zeros([batch, 2 * h, capacity, d], device), v: Tensor::zeros([batch, h, capacity, 2 * d], device), len: 0 }
    }

    /// Feeds x: `[batch, new, d_model]`, appends its keys/values to the cache.
    pub fn step(&self, x: Tensor<3>, cache: &mut KvCache) -> Tensor<3> {
        let [b, new, _] = x.dims();
        let (start, end) = (cache.len, cache.len + new);
        assert!(end <= cache.k.dims()[2], "KV cache full: {end} tokens > capacity {}", cache.k.dims()[2]);
        let (h, d) = (self.heads, self.head_dim);
        let (q, k, v) = self.project(x, start);
        write_in_place(&mut cache.k, [0..b, 0..2 * h, start..end, 0..d], k);
        write_in_place(&mut cache.v, [0..b, 0..h, start..end, 0..2 * d], v);
        cache.len = end;
        self.attend(q, cache.k.clone().narrow(2, 0, end), cache.v.clone().narrow(2, 0, end))
    }

    /// `(2h'·d + h'·2d) · context · 4` bytes: the same as MHA at equal width.
    pub fn state_bytes(&self, context: usize) -> usize {
        4 * self.heads * self.head_dim * context * F32_BYTES
    }

    /// Projections (2 per weight) plus two score maps of width d and one AV of width 2d per
    /// head and key: `2·(3 + 1)·d_model² + 4·d_model·context`.
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let proj = self.qkv.weight.shape().num_elements() + self.out.weight.shape().num_elements();
        (2 * proj + 8 * self.heads * self.head_dim * context) as u64
    }
}
