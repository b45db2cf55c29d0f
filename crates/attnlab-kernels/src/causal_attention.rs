//! Fused causal softmax attention for the CPU backend, with a FlashAttention-style backward.
//!
//! Shapes: q `[batch, groups, rows, d]`, k `[batch, groups, keys, d]`, v `[batch, groups, keys, d_v]`.
//! Query row ρ sits at position `offset + ρ mod t` (grouped-query attention stacks the `rows / t`
//! query heads of a group along the rows) and key j at position j; row ρ sees keys `j ≤ pos(ρ)`
//! (with a sliding window only `pos(ρ) − window < j`, plus the first `sinks` positions).
//!
//! Forward, per (batch, group) and block of `BLOCK_ROWS` rows: `S = Q Kᵀ·scale`, `P = softmax(S)`
//! over the visible keys, `O = P V`, and the row's log-sum-exp `L = max S + ln Σ exp(S − max S)`.
//! Backward (Dao et al. 2022, Alg. 2, with whole key rows): recompute `P = exp(S − L)`, then
//! `dV += Pᵀ dO`, `dP = dO Vᵀ`, `D = rowsum(dO ⊙ O)`, `dS = P ⊙ (dP − D)`,
//! `dQ = dS K·scale`, `dK += dSᵀ Q·scale`.
//! Only q, k, v, O and L are kept for the backward, so saved memory grows linearly with the
//! sequence; the `BLOCK_ROWS × keys` score block is scratch.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{Shape, Tensor};
use rayon::prelude::*;

use crate::matmul::{matmul, View};
use crate::tensor::{contiguous, from_vec, slice};
use crate::vector_math::{exp_shifted_sum, scaled_max, with_avx2};

/// Query rows handled together: the score scratch is `BLOCK_ROWS × keys`.
const BLOCK_ROWS: usize = 64;

/// The layout of one call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dims {
    /// batch · groups: independent (q, k, v) slices.
    pub heads: usize,
    pub rows: usize,
    pub keys: usize,
    pub d: usize,
    pub dv: usize,
    /// Queries per head: row ρ is query `ρ mod t`.
    pub t: usize,
    /// Position of query 0.
    pub offset: usize,
    pub scale: f32,
    /// Sliding window: a query at p also sees only keys `j > p − window`, plus the first
    /// `sinks` positions (attention sinks). `usize::MAX` and 0 for plain causal attention.
    pub window: usize,
    pub sinks: usize,
}

impl Dims {
    pub(crate) fn of(q: &Shape, k: &Shape, v: &Shape, t: usize, offset: usize, scale: f32) -> Self {
        let (q, k, v) = (q.as_slice(), k.as_slice(), v.as_slice());
        assert!(q.len() == 4 && k.len() == 4 && v.len() == 4, "causal_attention: q, k, v must be rank 4");
        assert!(q[..2] == k[..2] && k[..3] == v[..3] && q[3] == k[3], "causal_attention: q {q:?}, k {k:?}, v {v:?} do not match");
        assert!(t > 0 && q[2] % t == 0, "causal_attention: {} rows are not a multiple of t = {t}", q[2]);
        assert!(offset + t <= k[2], "causal_attention: queries at {offset}..{} need that many keys, got {}", offset + t, k[2]);
        Self { heads: q[0] * q[1], rows: q[2], keys: k[2], d: q[3], dv: v[3], t, offset, scale, window: usize::MAX, sinks: 0 }
    }

    /// The same layout with a sliding window of `window` keys (≥ 1) and `sinks` sink positions.
    pub fn windowed(self, window: usize, sinks: usize) -> Self {
        assert!(window > 0, "causal_attention: the window must hold at least the query's own key");
        Self { window, sinks, ..self }
    }

    fn pos(&self, row: usize) -> usize {
        self.offset + row % self.t
    }

    /// Keys visible from position p: `0..sinks_end` and `lo..=p`.
    fn visible(&self, p: usize) -> (usize, usize) {
        let lo = (p + 1).saturating_sub(self.window);
        (self.sinks.min(lo), lo)
    }
}

/// Scaled, masked scores of rows `r0..r0 + n` turned into probabilities in place
/// (`scores`: `n × keys`), or `exp(S − L)` with the saved log-sum-exp when `lse` is given.
/// Writes each row's log-sum-exp into `lse_out` when that is given.
fn probabilities(scores: &mut [f32], dims: &Dims, r0: usize, n: usize, lse: Option<&[f32]>, mut lse_out: Option<&mut [f32]>) {
    let (keys, scale) = (dims.keys, dims.scale);
    with_avx2!(for i in 0..n {
        let row = &mut scores[i * keys..(i + 1) * keys];
        let p = dims.pos(r0 + i);
        let (sinks_end, lo) = dims.visible(p);
        // Visible: `sinks` = row[..sinks_end] and `local` = row[lo..=p]; the rest is zero weight.
        let (sinks, rest) = row.split_at_mut(sinks_end);
        let (gap, rest) = rest.split_at_mut(lo - sinks_end);
        let (local, future) = rest.split_at_mut(p + 1 - lo);
        gap.fill(0.0);
        future.fill(0.0);
        match lse {
            Some(lse) => {
                exp_shifted_sum(sinks, scale, lse[i]);
                exp_shifted_sum(local, scale, lse[i]);
            }
            None => {
                let max = scaled_max(sinks, scale).max(scaled_max(local, scale));
                let inv = 1.0 / (exp_shifted_sum(sinks, scale, max) + exp_shifted_sum(local, scale, max));
                sinks.iter_mut().chain(local.iter_mut()).for_each(|x| *x *= inv);
                if let Some(out) = lse_out.as_deref_mut() {
                    out[i] = max - inv.ln();
                }
            }
        }
    })
}

/// Forward on contiguous slices: returns O `[heads, rows, dv]` and L `[heads, rows]`.
pub fn forward(q: &[f32], k: &[f32], v: &[f32], dims: Dims) -> (Vec<f32>, Vec<f32>) {
    let Dims { rows, keys, d, dv, .. } = dims;
    let mut o = vec![0.0; dims.heads * rows * dv];
    let mut lse = vec![0.0; dims.heads * rows];
    o.par_chunks_mut(rows * dv).zip(lse.par_chunks_mut(rows)).enumerate().for_each(|(h, (o, lse))| {
        let (q, k, v) = (&q[h * rows * d..(h + 1) * rows * d], &k[h * keys * d..(h + 1) * keys * d], &v[h * keys * dv..(h + 1) * keys * dv]);
        o.par_chunks_mut(BLOCK_ROWS * dv).zip(lse.par_chunks_mut(BLOCK_ROWS)).enumerate().for_each(|(blk, (o, lse))| {
            let (r0, n) = (blk * BLOCK_ROWS, lse.len());
            let mut s = vec![0.0; n * keys];
            matmul(&mut s, n, keys, d, View::rows(&q[r0 * d..], d), View::transposed(k, d), false);
            probabilities(&mut s, &dims, r0, n, None, Some(lse));
            matmul(o, n, dv, keys, View::rows(&s, keys), View::rows(v, dv), false);
        });
    });
    (o, lse)
}

/// Backward on contiguous slices: returns (dQ, dK, dV) shaped like q, k, v.
#[allow(clippy::too_many_arguments)]
pub fn backward(q: &[f32], k: &[f32], v: &[f32], o: &[f32], lse: &[f32], d_o: &[f32], dims: Dims) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { heads, rows, keys, d, dv, scale, .. } = dims;
    let mut dq = vec![0.0; heads * rows * d];
    let mut dk = vec![0.0; heads * keys * d];
    let mut dvv = vec![0.0; heads * keys * dv];
    dq.par_chunks_mut(rows * d)
        .zip(dk.par_chunks_mut(keys * d))
        .zip(dvv.par_chunks_mut(keys * dv))
        .enumerate()
        .for_each(|(h, ((dq, dk), dvv))| {
            let qh = &q[h * rows * d..(h + 1) * rows * d];
            let (kh, vh) = (&k[h * keys * d..(h + 1) * keys * d], &v[h * keys * dv..(h + 1) * keys * dv]);
            let (oh, doh, lh) = (&o[h * rows * dv..(h + 1) * rows * dv], &d_o[h * rows * dv..(h + 1) * rows * dv], &lse[h * rows..(h + 1) * rows]);
            let mut p = vec![0.0; BLOCK_ROWS.min(rows) * keys];
            let mut dp = vec![0.0; BLOCK_ROWS.min(rows) * keys];
            for r0 in (0..rows).step_by(BLOCK_ROWS) {
                let n = BLOCK_ROWS.min(rows - r0);
                let (p, dp) = (&mut p[..n * keys], &mut dp[..n * keys]);
                let (q_blk, do_blk) = (&qh[r0 * d..(r0 + n) * d], &doh[r0 * dv..(r0 + n) * dv]);
                matmul(p, n, keys, d, View::rows(q_blk, d), View::transposed(kh, d), false);
                probabilities(p, &dims, r0, n, Some(&lh[r0..r0 + n]), None);
                matmul(dvv, keys, dv, n, View::transposed(p, keys), View::rows(do_blk, dv), true);
                matmul(dp, n, keys, dv, View::rows(do_blk, dv), View::transposed(vh, dv), false);
                for i in 0..n {
                    let row = (r0 + i) * dv;
                    let delta: f32 = (0..dv).map(|c| doh[row + c] * oh[row + c]).sum();
                    let (p_row, dp_row) = (&p[i * keys..(i + 1) * keys], &mut dp[i * keys..(i + 1) * keys]);
                    for (ds, &pj) in dp_row.iter_mut().zip(p_row) {
                        *ds = pj * (*ds - delta) * scale;
                    }
                }
                let ds = &*dp;
                matmul(&mut dq[r0 * d..(r0 + n) * d], n, d, keys, View::rows(ds, keys), View::rows(kh, d), false);
                matmul(dk, keys, d, n, View::transposed(ds, keys), View::rows(q_blk, d), true);
            }
        });
    (dq, dk, dvv)
}

/// The fused op as a backend extension: Flex runs the kernel, autodiff over Flex adds the
/// backward above.
#[backend_extension(Flex, Autodiff)]
pub trait AttentionBackend: Backend {
    /// `softmax(Q Kᵀ·scale + causal mask) V`; see the module docs for shapes and positions.
    /// `window`/`sinks` as in [`Dims`] (`usize::MAX`, 0: plain causal).
    #[allow(clippy::too_many_arguments)]
    fn causal_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, t: usize, offset: usize, scale: f32, window: usize, sinks: usize) -> FloatTensor<Self>;
}

/// Forward on Flex tensors, keeping L.
#[allow(clippy::too_many_arguments)]
fn forward_flex(q: FlexTensor, k: FlexTensor, v: FlexTensor, t: usize, offset: usize, scale: f32, window: usize, sinks: usize) -> (FlexTensor, Vec<f32>) {
    let dims = Dims::of(&q.shape(), &k.shape(), &v.shape(), t, offset, scale).windowed(window, sinks);
    let (q, k, v) = (contiguous(q), contiguous(k), contiguous(v));
    let (o, lse) = forward(slice(&q), slice(&k), slice(&v), dims);
    let mut shape = q.shape();
    shape[3] = dims.dv;
    (from_vec(o, shape), lse)
}

impl AttentionBackend for Flex {
    fn causal_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, t: usize, offset: usize, scale: f32, window: usize, sinks: usize) -> FlexTensor {
        forward_flex(q, k, v, t, offset, scale, window, sinks).0
    }
}

/// What the backward needs besides q, k, v (which autodiff checkpoints).
#[derive(Clone, Debug)]
struct Saved {
    nodes: [NodeId; 3],
    o: FlexTensor,
    lse: Vec<f32>,
    t: usize,
    offset: usize,
    scale: f32,
    window: usize,
    sinks: usize,
}

#[derive(Debug)]
struct CausalAttentionBackward;

impl Backward<Flex, 3> for CausalAttentionBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let Saved { nodes, o, lse, t, offset, scale, window, sinks } = ops.state;
        let [q, k, v]: [FlexTensor; 3] = nodes.map(|id| contiguous(checkpointer.retrieve_node_output(id)));
        let d_o = contiguous(grads.consume::<Flex>(&ops.node));
        let dims = Dims::of(&q.shape(), &k.shape(), &v.shape(), t, offset, scale).windowed(window, sinks);
        let (dq, dk, dv) = backward(slice(&q), slice(&k), slice(&v), slice(&o), &lse, slice(&d_o), dims);
        for ((parent, grad), like) in ops.parents.into_iter().zip([dq, dk, dv]).zip([&q, &k, &v]) {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, from_vec(grad, like.shape()));
            }
        }
    }
}

impl<C: CheckpointStrategy> AttentionBackend for Autodiff<Flex, C> {
    fn causal_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, t: usize, offset: usize, scale: f32, window: usize, sinks: usize) -> FloatTensor<Self> {
        match CausalAttentionBackward.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let nodes = [prep.checkpoint(&q), prep.checkpoint(&k), prep.checkpoint(&v)];
                let (o, lse) = forward_flex(q.primitive().clone(), k.primitive().clone(), v.primitive().clone(), t, offset, scale, window, sinks);
                prep.finish(Saved { nodes, o: o.clone(), lse, t, offset, scale, window, sinks }, o)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::causal_attention(q.into_primitive(), k.into_primitive(), v.into_primitive(), t, offset, scale, window, sinks))
            }
        }
    }
}

/// Fused causal attention (see the module docs). q: `[batch, groups, rows, d]`,
/// k: `[batch, groups, keys, d]`, v: `[batch, groups, keys, d_v]` → `[batch, groups, rows, d_v]`.
/// `window = Some((w, sinks))` limits each query to its last w keys plus the first `sinks`.
/// Only for tensors where [`crate::fused`] is true; other devices use the composed ops.
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, t: usize, offset: usize, scale: f32, window: Option<(usize, usize)>) -> Tensor<4> {
    assert!(crate::fused(&q), "causal_attention: the fused kernel needs f32 tensors on the CPU (flex) device");
    let (window, sinks) = window.unwrap_or((usize::MAX, 0));
    Tensor::from_dispatch(Dispatch::causal_attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch(), t, offset, scale, window, sinks))
}
