//! The recurrent family: mixers whose decode state is a fixed-size matrix memory instead of a
//! growing KV cache (linear attention, Gated DeltaNet, Kimi Delta Attention).
//!
//! Shared pieces live here once: the chunk engine ([`chunk::Rule`]: chunkwise-parallel training
//! form and token recurrence of the additive and delta rules), the short causal convolution with
//! its decode tail ([`short_conv`]), the decay-gate parametrisations ([`gates`]) and the head
//! plumbing below.

pub mod chunk;
pub mod gated_deltanet;
pub mod gates;
pub mod kda;
pub mod linear_attention;
pub mod short_conv;

use burn::tensor::{Device, Tensor};

use crate::state::RecurrentState;
use chunk::Rule;
use short_conv::ShortConv;

/// Runs the rule from `state` and updates it, or, for a training forward (`fresh`: `state` is
/// empty and discarded), [`Rule::forward`] (the fused op on CPU).
pub fn run_rule(rule: Rule, state: &mut RecurrentState, chunk: usize, fresh: bool) -> Tensor<4> {
    state.len += rule.q.dims()[2];
    if fresh {
        return rule.forward(chunk);
    }
    let (o, s) = rule.run(state.s.clone(), chunk);
    state.s = s;
    o
}

/// `[b, t, h·d]` → `[b, h, t, d]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, t, width] = x.dims();
    x.reshape([b, t, heads, width / heads]).swap_dims(1, 2)
}

/// `[b, h, t, d]` → `[b, t, h·d]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, t, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, t, h * d])
}

/// `x / √(Σx² + 1e-6)` over the last axis (fla's `l2norm`; not max(‖x‖, ε)).
pub fn l2_normalize(x: Tensor<4>) -> Tensor<4> {
    let norm = (x.clone().powi_scalar(2).sum_dim(3) + 1e-6).sqrt();
    x / norm
}

/// An empty state: s `[batch, heads, d_k, d_v]` of zeros and the conv's empty tail.
pub fn empty_state(batch: usize, heads: usize, dk: usize, dv: usize, conv: Option<&ShortConv>, capacity: usize, device: &Device) -> RecurrentState {
    RecurrentState {
        s: Tensor::zeros([batch, heads, dk, dv], device),
        conv: conv.map(|c| c.empty_tail(batch, device)),
        len: 0,
        capacity,
    }
}

/// `4 · (heads · d_k · d_v + (K − 1) · conv channels)`: the state's bytes, whatever the context.
pub fn state_bytes(heads: usize, dk: usize, dv: usize, conv: Option<&ShortConv>) -> usize {
    let tail = conv.map_or(0, |c| (short_conv::KERNEL - 1) * c.weight.dims()[0]);
    (heads * dk * dv + tail) * crate::F32_BYTES
}

/// The q | k | v columns `[b, t, 2·h·d_k + h·d_v]` through the short conv (continuing `state`'s
/// tail and updating it) and SiLU: q, k `[b, h, t, d_k]` (L2-normalised per head when `l2`),
/// v `[b, h, t, d_v]`.
pub fn delta_qkv(qkv: Tensor<3>, conv: Option<&ShortConv>, state: &mut RecurrentState, heads: usize, dk: usize, l2: bool) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let width = qkv.dims()[2];
    let qkv = match conv {
        Some(conv) => {
            let tail = state.conv.take().expect("a conv tail in the state");
            let (y, tail) = conv.forward(qkv, tail);
            state.conv = Some(tail);
            y
        }
        None => qkv,
    };
    let qkv = attnlab_kernels::silu(qkv);
    let hk = heads * dk;
    let q = split_heads(qkv.clone().narrow(2, 0, hk), heads);
    let k = split_heads(qkv.clone().narrow(2, hk, hk), heads);
    let v = split_heads(qkv.narrow(2, 2 * hk, width - 2 * hk), heads);
    if l2 {
        (l2_normalize(q), l2_normalize(k), v)
    } else {
        (q, k, v)
    }
}

/// Forward FLOPs per token and head of the chunked rule at chunk `c` (≤ context), counted as
/// computed: the C × C scores (and, for the delta rule, the Gram matrix, its inverse by
/// ⌈log₂ C⌉ squarings and the products u, w, P·w), and the three `d_k × d_v` state products.
/// Per-channel decays compute each score pairwise (3 FLOPs per entry and channel).
pub fn rule_flops(dk: usize, dv: usize, chunk: usize, context: usize, delta: bool, per_channel: bool) -> usize {
    let c = chunk.min(context.max(1));
    let score = if per_channel { 3 * c * dk } else { 2 * c * dk };
    let mut flops = score + 2 * c * dv + 2 * dk * dv * 2;
    if delta {
        let squarings = (c.max(2) as f64).log2().ceil() as usize;
        flops += score + 2 * 2 * c * c * squarings + 2 * c * (dk + dv) + 2 * c * dk + 2 * dk * dv;
    }
    flops
}
