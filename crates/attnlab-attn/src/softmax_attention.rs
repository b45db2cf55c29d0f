//! Naive scaled dot-product attention: the reference every other path is tested against.
//!
//! `O = softmax(Q Kᵀ · scale + M) V`, with M = −∞ where `mask` is true.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Tensor};

/// Causal attention where query row ρ sits at position `start + ρ mod t` and key j at position
/// j (grouped-query attention stacks a group's `rows / t` heads along the rows); row ρ sees keys
/// `j ≤ start + ρ mod t`. q: `[batch, groups, rows, d_qk]`, k: `[batch, groups, keys, d_qk]`,
/// v: `[batch, groups, keys, d_v]` → `[batch, groups, rows, d_v]`.
/// On the CPU backend this is one fused kernel ([`attnlab_kernels::causal_attention`], O(T) saved
/// memory for the backward), on wgpu its GPU counterpart ([`attnlab_kernels::gpu_causal_attention`]);
/// with `ATTNLAB_FUSED=0`, or another dtype, [`softmax_attention`] with the mask.
pub fn causal_softmax_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, t: usize, start: usize, scale: f32) -> Tensor<4> {
    if attnlab_kernels::fused(&q) {
        return attnlab_kernels::causal_attention(q, k, v, t, start, scale, None);
    }
    if attnlab_kernels::gpu_fused(&q) {
        return attnlab_kernels::gpu_causal_attention(q, k, v, t, start, scale, None);
    }
    let (rows, keys) = (q.dims()[2], k.dims()[2]);
    // Query i (position start + i) may not see keys j > start + i.
    let mask = Tensor::<2, Bool>::tril_mask([t, keys], start as i64, &q.device());
    softmax_attention(q, k, v, Some(mask.unsqueeze::<3>().repeat_dim(1, rows / t)), scale)
}

/// q: `[batch, heads, q_len, d_qk]`, k: `[batch, heads, k_len, d_qk]`,
/// v: `[batch, heads, k_len, d_v]`, mask: `[heads or 1, q_len, k_len]` (true = masked out).
/// Returns `[batch, heads, q_len, d_v]`. Materialises the full `q_len × k_len` score matrix.
pub fn softmax_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<3, Bool>>,
    scale: f32,
) -> Tensor<4> {
    // q scaled before the product: the raw q·k of a half-precision forward could overflow f16.
    masked_softmax((q * scale).matmul(k.swap_dims(2, 3)), mask).matmul(v)
}

/// Attention weights from scaled scores `[batch, heads, q_len, k_len]`: softmax over keys,
/// with masked positions (mask `[heads or 1, q_len, k_len]`, true = masked out) at zero weight.
pub fn masked_softmax(scores: Tensor<4>, mask: Option<Tensor<3, Bool>>) -> Tensor<4> {
    let scores = match mask {
        Some(mask) => {
            let shape = scores.dims();
            scores.mask_fill(mask.unsqueeze::<4>().expand(shape), f32::NEG_INFINITY)
        }
        None => scores,
    };
    softmax(scores, 3)
}
