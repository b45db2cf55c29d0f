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
pub mod log_linear;
pub mod log_linear_gdn;
pub mod short_conv;

use burn::tensor::{Device, Tensor};

use crate::state::RecurrentState;
use chunk::Rule;
use short_conv::ShortConv;

/// What the three recurrent kinds share: the contract methods over one `mix` (the layer from a
/// state) and the shape of their state.
pub trait Recurrent {
    /// (heads, rows d_k (or d_φ), columns d_v (+1 for linear attention's normaliser)) of S.
    fn state_shape(&self) -> (usize, usize, usize);

    /// The short conv whose tail the state carries, if any.
    fn short_conv(&self) -> Option<&ShortConv>;

    /// The layer on x `[batch, new, d_model]` from `state`, updating it; with `fresh` the
    /// training forward from an empty state ([`run_rule`]).
    fn mix(&self, x: Tensor<3>, state: &mut RecurrentState, fresh: bool) -> Tensor<3>;

    /// Causal forward. x: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let mut state = self.init_state(x.dims()[0], 0, &x.device());
        self.mix(x, &mut state, true)
    }

    /// Empty state: S `[batch, h, rows, cols]` of zeros and the conv's empty tail `[batch, 3, channels]`.
    fn init_state(&self, batch: usize, capacity: usize, device: &Device) -> RecurrentState {
        let (h, rows, cols) = self.state_shape();
        RecurrentState { s: Tensor::zeros([batch, h, rows, cols], device), conv: self.short_conv().map(|c| c.empty_tail(batch, device)), len: 0, capacity }
    }

    /// Feeds x `[batch, new, d_model]` from `state` (chunked for new > 1) and updates it.
    fn step(&self, x: Tensor<3>, state: &mut RecurrentState) -> Tensor<3> {
        self.mix(x, state, false)
    }

    /// `4 · (h · rows · cols + (K − 1) · conv channels)`, whatever the context.
    fn state_bytes(&self, _context: usize) -> usize {
        let (h, rows, cols) = self.state_shape();
        let tail = self.short_conv().map_or(0, |c| (short_conv::KERNEL - 1) * c.weight.dims()[0]);
        (h * rows * cols + tail) * crate::F32_BYTES
    }
}

/// Runs the rule from `state` and updates it, or, for a training forward (`fresh`: `state` is
/// empty and discarded), [`Rule::forward`] (the fused op on CPU). A half-precision training
/// forward runs the recurrence in f32 and returns o in f32 (for the normalisation after it).
pub fn run_rule(rule: Rule, state: &mut RecurrentState, chunk: usize, fresh: bool) -> Tensor<4> {
    state.len += rule.q.dims()[2];
    if fresh {
        return rule.cast(burn::tensor::DType::F32).forward(chunk);
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

/// The shared middle of Gated DeltaNet and KDA: q | k | v columns `[b, t, 2·h_k·d_k + h·d_v]`
/// through [`conv_silu`] (then each of the h_k key heads repeated for h / h_k consecutive value
/// heads, [`repeat_key_heads`]), the delta rule with β `[b, t, h]` and log-decays g `[b, t, h]` (per
/// head) or `[b, t, h·d_k]` (per channel) (q scaled by d_k^−½, q and k L2-normalised when `l2`),
/// then the per-head RMSNorm over d_v: `[b, t, h·d_v]`. A training forward on the CPU backend
/// runs the fused op on this token-major layout as it is ([`chunk::takes_fused`]); every other
/// path splits the heads for [`Rule`].
#[allow(clippy::too_many_arguments)]
pub fn delta_heads(
    qkv: Tensor<3>,
    conv: Option<&ShortConv>,
    state: &mut RecurrentState,
    (key_heads, heads, dk): (usize, usize, usize),
    beta: Tensor<3>,
    g: Tensor<3>,
    l2: bool,
    norm: &burn::nn::RmsNorm,
    chunk: usize,
    fresh: bool,
) -> Tensor<3> {
    let qkv = repeat_key_heads(conv_silu(qkv, conv, state, fresh), key_heads, heads / key_heads, dk);
    let [b, t, width] = qkv.dims();
    let (hk, dv) = (heads * dk, (width - 2 * heads * dk) / heads);
    assert_eq!(width, heads * (2 * dk + dv), "delta_heads: qkv width {width} is not h·(2·d_k + d_v) with h = {heads}, d_k = {dk}");
    let scale = 1.0 / (dk as f64).sqrt();
    if fresh && chunk::takes_fused(&qkv, true) {
        state.len += t;
        let options = attnlab_kernels::RuleOptions { delta: true, l2, scale: scale as f32 };
        let o = attnlab_kernels::delta_rule(qkv, beta, g, heads, dk, options).reshape([b, t, heads, dv]);
        return attnlab_kernels::rms_norm(norm, o).reshape([b, t, heads * dv]);
    }
    let q = split_heads(qkv.clone().narrow(2, 0, hk), heads);
    let k = split_heads(qkv.clone().narrow(2, hk, hk), heads);
    let v = split_heads(qkv.narrow(2, 2 * hk, heads * dv), heads);
    let rule = Rule { q, k, v, beta: Some(beta.swap_dims(1, 2)), g: Some(split_heads(g, heads)), l2, scale };
    merge_heads(attnlab_kernels::rms_norm(norm, run_rule(rule, state, chunk, fresh)))
}

/// q | k | v columns with `key_heads` heads of d_k in q and k → the same with each key head
/// repeated `group` times in a row (`repeat_interleave`: value head j reads key head ⌊j / group⌋).
pub fn repeat_key_heads(qkv: Tensor<3>, key_heads: usize, group: usize, dk: usize) -> Tensor<3> {
    if group == 1 {
        return qkv;
    }
    let [b, t, width] = qkv.dims();
    let hk = key_heads * dk;
    let repeat = |x: Tensor<3>| x.reshape([b, t, key_heads, 1, dk]).expand([b, t, key_heads, group, dk]).reshape([b, t, hk * group]);
    let q = repeat(qkv.clone().narrow(2, 0, hk));
    let k = repeat(qkv.clone().narrow(2, hk, hk));
    Tensor::cat(vec![q, k, qkv.narrow(2, 2 * hk, width - 2 * hk)], 2)
}

/// The q | k | v columns `[b, t, c]` through the short conv (continuing `state`'s tail and
/// updating it) and SiLU. For a training forward (`fresh`: empty state, discarded) on the CPU
/// backend, conv and SiLU are one fused op.
pub fn conv_silu(qkv: Tensor<3>, conv: Option<&ShortConv>, state: &mut RecurrentState, fresh: bool) -> Tensor<3> {
    match conv {
        Some(conv) if fresh && attnlab_kernels::fused(&qkv) => attnlab_kernels::short_conv_silu(qkv, conv.weight.val()),
        Some(conv) => {
            let tail = state.conv.take().expect("a conv tail in the state");
            let (y, tail) = conv.forward(qkv, tail);
            state.conv = Some(tail);
            attnlab_kernels::silu(y)
        }
        None => attnlab_kernels::silu(qkv),
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
