//! Tiled causal attention with an online softmax (FlashAttention, Dao et al. 2022, Alg. 1).
//!
//! Queries are cut into blocks of `block_q` rows and keys into blocks of `block_k`. For one
//! query block, with running row max `m`, running sum `ℓ` and accumulator `a`, each key block j
//! does: `S = Q Kⱼᵀ·scale`, `m' = max(m, rowmax S)`, `P = exp(S − m')`,
//! `ℓ ← ℓ·exp(m − m') + rowsum P`, `a ← a·exp(m − m') + P Vⱼ`, `m ← m'`; finally `O = a / ℓ`.
//! The largest score tensor is `[batch, heads, block_q, block_k]`: the `T × T` matrix is never
//! built. Key blocks entirely in a query block's future are skipped; only blocks crossing the
//! diagonal get a mask.
//!
//! Under autodiff the graph keeps every tile's intermediates for the backward pass, so training
//! memory still grows with T² (see the README: linear training memory needs a fused backward).

use burn::tensor::{Bool, DType, Tensor, TensorData};

/// Stand-in for −∞ in masked scores and the initial running max: keeps `exp(m − m')` finite
/// (0) when a row has seen only masked keys so far.
const MASKED: f32 = -1.0e30;

/// q: `[batch, heads, q_len, d]`, k: `[batch, heads, k_len, d]`, v: `[batch, heads, k_len, d_v]`;
/// `q_pos[i]` / `k_pos[j]` are the absolute positions of query row i and key j; query i sees
/// key j iff `k_pos[j] ≤ q_pos[i]` (every row must see at least one key).
/// Returns `[batch, heads, q_len, d_v]`, equal to [`crate::softmax_attention`] with a causal mask.
#[allow(clippy::too_many_arguments)]
pub fn tiled_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    q_pos: &[usize],
    k_pos: &[usize],
    scale: f32,
    block_q: usize,
    block_k: usize,
) -> Tensor<4> {
    let dtype = q.dtype();
    if dtype != DType::F32 {
        // A half-precision training forward: the online softmax in f32 (its −1e30 stand-in for
        // −∞ is no f16 value), the output in the input's type.
        let (q, k, v) = (q.cast(DType::F32), k.cast(DType::F32), v.cast(DType::F32));
        return tiled_attention(q, k, v, q_pos, k_pos, scale, block_q, block_k).cast(dtype);
    }
    let [b, h, t, _] = q.dims();
    let [_, _, s, dv] = v.dims();
    assert_eq!((q_pos.len(), k_pos.len()), (t, s), "tiled_attention: position lists do not match q/k");
    assert!(block_q > 0 && block_k > 0, "tiled_attention: block sizes must be ≥ 1");
    let device = q.device();
    let mut outputs = Vec::with_capacity(t.div_ceil(block_q));
    for q0 in (0..t).step_by(block_q) {
        let bq = block_q.min(t - q0);
        let rows = &q_pos[q0..q0 + bq];
        let (q_min, q_max) = (*rows.iter().min().unwrap(), *rows.iter().max().unwrap());
        let qi = q.clone().narrow(2, q0, bq) * scale;
        let mut m = Tensor::<4>::full([b, h, bq, 1], MASKED, &device);
        let mut l = Tensor::<4>::zeros([b, h, bq, 1], &device);
        let mut acc = Tensor::<4>::zeros([b, h, bq, dv], &device);
        for k0 in (0..s).step_by(block_k) {
            let bk = block_k.min(s - k0);
            let cols = &k_pos[k0..k0 + bk];
            let (k_min, k_max) = (*cols.iter().min().unwrap(), *cols.iter().max().unwrap());
            if k_min > q_max {
                continue; // the whole tile lies in the future of every row
            }
            let mut scores = qi.clone().matmul(k.clone().narrow(2, k0, bk).swap_dims(2, 3));
            if k_max > q_min {
                let data: Vec<bool> = rows.iter().flat_map(|&qp| cols.iter().map(move |&kp| kp > qp)).collect();
                let mask = Tensor::<4, Bool>::from_data(TensorData::new(data, [1, 1, bq, bk]), &device);
                scores = scores.mask_fill(mask.expand([b, h, bq, bk]), MASKED);
            }
            let m_new = m.clone().max_pair(scores.clone().max_dim(3));
            let p = (scores - m_new.clone()).exp();
            let correction = (m - m_new.clone()).exp();
            l = l * correction.clone() + p.clone().sum_dim(3);
            acc = acc * correction + p.matmul(v.clone().narrow(2, k0, bk));
            m = m_new;
        }
        outputs.push(acc / l);
    }
    Tensor::cat(outputs, 2)
}

