//! Naive scaled dot-product attention: the reference every other path is tested against.
//!
//! `O = softmax(Q Kᵀ · scale + M) V`, with M = −∞ where `mask` is true.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Tensor};

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
    masked_softmax(q.matmul(k.swap_dims(2, 3)) * scale, mask).matmul(v)
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
