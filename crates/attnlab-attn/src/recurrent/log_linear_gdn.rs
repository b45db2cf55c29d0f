//! Log-linear Gated DeltaNet (Guo et al. 2025; `../shared/MECHANISMS.md` §4; HanGuo97
//! `hattention`, `HStruct.GDELTA`): Gated DeltaNet's q, k, v, β, decay, conv, norm and gate
//! ([`GatedDeltaNet`], its defaults) with one delta-rule state per Fenwick level.
//!
//! Per token t (0-based): with z the trailing zeros of t > 0, `S^(z+1) += Σ_{ℓ ≤ z} S^(ℓ)` and
//! levels 0..=z are cleared (the binary carry of [`super::log_linear`]); every level then takes
//! GDN's transition `S ← α_t (I − β_t k_t k_tᵀ) S` (k L2-normalised), `S^(0) = β_t k_t v_tᵀ`, and
//! `o_t = Σ_ℓ λ_t^ℓ S^(ℓ)ᵀ q_t / √d_k`, then GDN's `RMSNorm(o) ⊙ SiLU(x W_g)` and `W_o`. Summed over
//! levels the states are GDN's own state, so with every λ equal the layer is its base (the
//! RMSNorm removes the common factor). Equivalently `o_t = Σ_s λ_t^{ℓ(t,s)} P_ts v_s` with GDN's
//! effective attention `P_ts = β_s q_tᵀ (A_t ⋯ A_{s+1}) k_s / √d_k`.
//!
//! Training runs the chunked form (the paper's O(T log T) one): chunks of C (a power of two, GDN's
//! chunk) at multiples of C. Inside chunk i, GDN's effective attention `E_ii` from its WY form
//! (`E_ts β_s = P_ts`, [`super::chunk::delta_chunks`]) weighed per pair,
//! `(E_ii ⊙ M)(β ⊙ V_i)`, `M_ts = λ_t^{ℓ(t,s)}` (levels ≤ log₂C). A key in an earlier chunk j has
//! level `log₂C + bit-length(i XOR j)`: the chunks of one bucket are carried to chunk i's start
//! as one `d_k × d_v` state, by decode's binary carry run over chunks (the chunk's WY carry `M_i`
//! as the transition, its writes `F_i(β ⊙ V_i)` as level 0), and read through the chunk's
//! `R_i`. Cost per head O(T·C·(d_k + d_v + C·log₂C) + T·log₂(T/C)·d_k·d_v·(1 + d_k/C)).
//! The dense form (`O = (E ⊙ M)(β ⊙ V)` over the whole `E [T, T]`, [`super::chunk::delta_attention`],
//! O(T²)) is kept as the tests' second path. `cargo bench -p attnlab-attn -- log_linear_gdn` (one
//! layer, d_model 128, 4 heads, batch 4, forward + backward, medians; idle 2-core AMD EPYC):
//! chunked vs dense 68 vs 79 ms at T = 256, 0.33 vs 1.22 s at T = 1024. (Earlier, `attnlab bench
//! train`, MQAR at T = 64, d_model 64, batch 32, ms per step: the dense form 135, GDN's fused op
//! 47, MHA 25; the first, token-by-token training form 858.)
//! Decode runs the per-level recurrence above, token by token (the tests hold all three forms to
//! one reference).
//! Decode state: the levels (`bit-length(t) + 1` of them at position t) plus the conv tails.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::sigmoid;
use burn::tensor::{DType, Device, Tensor};

use super::gated_deltanet::{GatedDeltaNet, GdnOptions};
use super::chunk::{chunk_at, split_chunks};
use super::log_linear::{carry, check_length, check_position, chunk_level_mask, level, level_chunk, level_mask, level_weights, levels_for, set_level0, weigh_cross, weigh_levels};
use super::{chunk, conv_silu, gates, l2_normalize, merge_heads, split_heads, Recurrent};
use crate::config::{ConvInit, DELTA_CHUNK};
use crate::linear::{apply, linear, Columns};
use crate::state::RecurrentState;
use attnlab_kernels::{rms_norm, silu};

/// GDN's rule inputs: q (L2-normalised, scaled), k `[b, h, t, d_k]`, v `[b, h, t, d_v]`, β and the
/// log-decays g `[b, h, t]`, the output gate `[b, t, h·d_v]`.
struct Inputs {
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    beta: Tensor<3>,
    g: Tensor<3>,
    gate: Option<Tensor<3>>,
}

/// The rule's inputs in f32 for the training forms: q, k `[b, h, t, d_k]`, β `[b, h, t]`,
/// g `[b, h, t, 1]`, β ⊙ v `[b, h, t, d_v]`, the output gate.
struct TrainingInputs {
    q: Tensor<4>,
    k: Tensor<4>,
    beta: Tensor<3>,
    g: Tensor<4>,
    bv: Tensor<4>,
    gate: Option<Tensor<3>>,
}

/// The states of chunk i's cross-chunk buckets at its start, `[b, h, n, cross, d_k, d_v]`
/// (bucket ℓ' ≥ 1: the chunks j < i with bit-length(i XOR j) = ℓ', carried to chunk i): decode's
/// binary carry ([`carry`]) at the granularity of chunks, with each chunk's WY carry `M_i`
/// (`moves` `[b, h, n, d_k, d_k]`) as the transition of every level and its writes
/// `F_i (β ⊙ V_i)` (`writes` `[b, h, n, d_k, C]`, `bv` `[b, h, n, C, d_v]`) as the new level 0.
fn bucket_states(moves: Tensor<5>, writes: Tensor<5>, bv: Tensor<5>) -> Tensor<6> {
    let [b, h, n, dk, _] = moves.dims();
    let dv = bv.dims()[4];
    let cross = level(n - 1, 0);
    let mut s = Tensor::<5>::zeros([b, cross + 1, h, dk, dv], (&bv.device(), bv.dtype())); // [b, levels, h, d_k, d_v]
    let mut reads = Vec::with_capacity(n);
    for i in 0..n {
        s = carry(s, i);
        reads.push(s.clone().narrow(1, 1, cross));
        if i + 1 < n {
            let moved = chunk_at(&moves, i).unsqueeze_dim::<5>(1).matmul(s);
            s = set_level0(moved, chunk_at(&writes, i).matmul(chunk_at(&bv, i)).unsqueeze_dim::<5>(1));
        }
    }
    Tensor::stack::<6>(reads, 1).permute([0, 3, 1, 2, 4, 5])
}

#[derive(Module, Debug)]
pub struct LogLinearGdn {
    /// The Gated DeltaNet layer whose projections, conv, gates, norm and `W_o` are used.
    pub base: GatedDeltaNet,
    /// `d → h·L`: the level weights' pre-activations.
    pub level_proj: Linear,
    /// `Λ [h·L]` (one-dimensional: not decayed), ones at init.
    pub level_scale: Param<Tensor<1>>,
    pub levels: usize,
}

impl LogLinearGdn {
    /// Gated DeltaNet at its defaults (d_k = d_model / heads, d_v = 2·d_k, conv, gate, L2).
    pub fn new(d_model: usize, heads: usize, levels: usize, device: &Device) -> Self {
        let dk = d_model / heads;
        let options = GdnOptions { key_dim: dk, value_dim: 2 * dk, value_heads: heads, conv: true, gate: true, l2: true, conv_init: ConvInit::Kaiming, chunk: DELTA_CHUNK };
        Self {
            base: GatedDeltaNet::new(d_model, heads, options, device),
            level_proj: linear(d_model, heads * levels, device),
            level_scale: Param::from_tensor(Tensor::ones([heads * levels], device)),
            levels,
        }
    }

    /// λ `[b, h, t, L]` for x `[b, t, d]`.
    pub fn lambda(&self, x: Tensor<3>) -> Tensor<4> {
        level_weights(&self.level_proj, &self.level_scale, self.base.heads, self.levels, x)
    }

    /// Empty state: the levels `[batch, L·h, d_k, d_v]` positions `0..capacity` use, and the
    /// conv tail.
    pub fn init_state(&self, batch: usize, capacity: usize, device: &Device) -> RecurrentState {
        let (h, dk, dv) = (self.base.heads, self.base.key_dim, self.base.value_dim);
        let levels = levels_for(capacity.max(1)).min(self.levels);
        RecurrentState { s: Tensor::zeros([batch, levels * h, dk, dv], device), conv: self.base.short_conv().map(|c| c.empty_tail(batch, device)), len: 0, capacity }
    }

    /// Causal forward: the chunked form ([`Self::forward_chunked`]) with GDN's chunk.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let lambda = self.lambda(x.clone());
        self.forward_chunked(x, lambda, self.base.chunk)
    }

    /// The chunked training form with chunks of `c` (a power of two) and level weights
    /// `λ [b, h, t, L]`: inside chunk i GDN's `E_ii` weighed per pair, `(E_ii ⊙ M_ii)(β ⊙ V_i)`;
    /// across chunks the buckets' states at the chunk's start ([`bucket_states`]) read through
    /// `R_i` and weighed by `λ_t^{log₂c + ℓ'}` ([`chunk::delta_chunks`]). Per head
    /// O(T·C·(d_k + d_v + C·log₂C)) for the chunks, O(T·log₂(T/C)·d_k·d_v·(1 + d_k/C)) for the
    /// buckets' carries and reads.
    pub fn forward_chunked(&self, x: Tensor<3>, lambda: Tensor<4>, c: usize) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let c = level_chunk(c, t);
        let TrainingInputs { q, k, beta, g, bv, gate } = self.rule(x);
        let parts = chunk::delta_chunks(q, k, beta, g, c);
        let lambda = split_chunks(lambda.cast(DType::F32), c); // [b, h, n, C, L]
        let bv = split_chunks(bv, c); // [b, h, n, C, d_v]
        let [_, h, n, _, dv] = bv.dims();
        let mut o = (parts.diagonal * chunk_level_mask(lambda.clone())).matmul(bv.clone());
        if let Some(chunk::Across { read, carry, writes }) = parts.across {
            let read = read.unsqueeze_dim::<6>(3).matmul(bucket_states(carry, writes, bv)); // [b, h, n, cross, C, d_v]
            o = o + weigh_cross(read, lambda);
        }
        self.output(o.reshape([b, h, n * c, dv]).narrow(2, 0, t), gate)
    }

    /// The dense form with level weights `λ [b, h, t, L]` (the tests' second path): GDN's
    /// effective attention `E [t, t]` ([`chunk::delta_attention`], from WY chunks of GDN's
    /// `chunk`, any length) weighed per pair, `o = (E ⊙ M)(β ⊙ V)`, `M_ts = λ_t^{ℓ(t,s)}`.
    /// O(t²·(d_k + d_v)) per head, like softmax attention.
    pub fn forward_dense(&self, x: Tensor<3>, lambda: Tensor<4>) -> Tensor<3> {
        let t = x.dims()[1];
        let TrainingInputs { q, k, beta, g, bv, gate } = self.rule(x);
        let e = chunk::delta_attention(q, k, beta, g, self.base.chunk);
        self.output((e * level_mask(lambda.cast(DType::F32), t)).matmul(bv), gate)
    }

    /// GDN's rule for a training forward of x `[b, t, d]` (the conv from an empty tail), in f32
    /// whatever the training precision (as GDN's `run_rule`).
    fn rule(&self, x: Tensor<3>) -> TrainingInputs {
        let [b, t, _] = x.dims();
        check_length(t, self.levels);
        // Only the conv reads the state here: GDN's (one level of S), not the levels' stack.
        let mut state = self.base.init_state(b, t, &x.device());
        let i = self.inputs(x, &mut state, true);
        let f32 = |x: Tensor<4>| x.cast(DType::F32);
        let beta = i.beta.cast(DType::F32);
        let bv = f32(i.v) * beta.clone().unsqueeze_dim(3);
        TrainingInputs { q: f32(i.q), k: f32(i.k), beta, g: f32(i.g.unsqueeze_dim(3)), bv, gate: i.gate }
    }

    /// Feeds x `[batch, new, d_model]` token by token and updates the state.
    pub fn step(&self, x: Tensor<3>, state: &mut RecurrentState) -> Tensor<3> {
        let lambda = self.lambda(x.clone());
        self.step_with_lambda(x, lambda, state)
    }

    /// [`Self::step`] with given level weights `λ [b, h, new, L]` (tests pass one-hot weights).
    pub fn step_with_lambda(&self, x: Tensor<3>, lambda: Tensor<4>, state: &mut RecurrentState) -> Tensor<3> {
        let [b, new, _] = x.dims();
        let (h, dk, dv) = (self.base.heads, self.base.key_dim, self.base.value_dim);
        let Inputs { q, k, v, beta, g, gate } = self.inputs(x, state, false);
        let held = state.s.dims()[1] / h;
        let mut outputs = Vec::with_capacity(new);
        for i in 0..new {
            let t = state.len;
            check_position(t, self.levels, held, state.capacity);
            let s = carry(state.s.clone().reshape([b, held, h, dk, dv]), t);
            let token = |x: &Tensor<4>| x.clone().narrow(2, i, 1).unsqueeze_dim::<5>(1); // [b, 1, h, 1, ·]
            let (qt, kt, vt) = (token(&q), token(&k), token(&v));
            let bt = beta.clone().narrow(2, i, 1).reshape([b, 1, h, 1, 1]);
            let at = g.clone().narrow(2, i, 1).exp().reshape([b, 1, h, 1, 1]);
            let kcol = kt.clone().swap_dims(3, 4); // [b, 1, h, d_k, 1]
            // Every level: S ← α (S − β k (kᵀ S)); then S^(0) = β k vᵀ.
            let s = (s.clone() - kcol.clone().matmul(kt.matmul(s)) * bt.clone()) * at;
            let s = set_level0(s, kcol.matmul(vt) * bt);
            outputs.push(weigh_levels(qt.matmul(s.clone()), &lambda, i));
            state.s = s.reshape([b, held * h, dk, dv]);
            state.len += 1;
        }
        self.output(Tensor::cat(outputs, 2), gate)
    }

    /// GDN's per-token inputs of the rule for x `[b, new, d]`: the conv continues `state`'s tail
    /// (`fresh`: a training forward from an empty state, [`conv_silu`]).
    fn inputs(&self, x: Tensor<3>, state: &mut RecurrentState, fresh: bool) -> Inputs {
        let m = &self.base;
        let (h, dk, dv) = (m.heads, m.key_dim, m.value_dim);
        let width = 2 * h * dk + h * dv;
        let columns = Columns::new(&m.proj, x);
        let part = |from: usize, len: usize| columns.part(from, len);
        let beta = sigmoid(part(width, h)).swap_dims(1, 2);
        let g = gates::log_decay(part(width + h, h), m.a_log.val().reshape([1, 1, h]), m.dt_bias.val().reshape([1, 1, h])).swap_dims(1, 2);
        let gate = m.gated.then(|| silu(part(width + 2 * h, h * dv)));
        let qkv = conv_silu(part(0, width), m.conv.as_ref(), state, fresh);
        let (mut q, mut k) = (split_heads(qkv.clone().narrow(2, 0, h * dk), h), split_heads(qkv.clone().narrow(2, h * dk, h * dk), h));
        if m.l2 {
            (q, k) = (l2_normalize(q), l2_normalize(k));
        }
        let q = q * (1.0 / (dk as f64).sqrt());
        let v = split_heads(qkv.narrow(2, 2 * h * dk, h * dv), h);
        Inputs { q, k, v, beta, g, gate }
    }

    /// Per-head outputs `[b, h, t, d_v]` through GDN's RMSNorm, gate and `W_o`.
    fn output(&self, o: Tensor<4>, gate: Option<Tensor<3>>) -> Tensor<3> {
        let o = merge_heads(rms_norm(&self.base.norm, o));
        apply(&self.base.out, match gate {
            Some(gate) => o * gate,
            None => o,
        })
    }

    /// `4 · (h · d_k · d_v · levels + conv tails)`: the levels `context` positions use.
    pub fn state_bytes(&self, context: usize) -> usize {
        let m = &self.base;
        let tail = m.conv.as_ref().map_or(0, |c| (super::short_conv::KERNEL - 1) * c.weight.dims()[0]);
        (m.heads * m.key_dim * m.value_dim * levels_for(context.max(1)).min(self.levels) + tail) * crate::F32_BYTES
    }

    /// Projections (2 per weight), the conv, and the chunked training form per (padded) position
    /// and head over `context` positions, as computed ([`chunk::delta_chunks`]): in a chunk the
    /// pair products, inverse, diagonal block and its masked product with `β ⊙ V`; across chunks
    /// W, R, M, F, the chunk's write `F(β ⊙ V)`, the carry of every bucket level and one read per
    /// level.
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let m = &self.base;
        let proj = m.proj.weight.shape().num_elements() + m.out.weight.shape().num_elements() + self.level_proj.weight.shape().num_elements();
        let conv = m.conv.as_ref().map_or(0, |c| c.weight.shape().num_elements());
        let (t, dk, dv) = (context.max(1), m.key_dim, m.value_dim);
        let c = level_chunk(m.chunk, t);
        let n = t.div_ceil(c);
        let squarings = (c.max(2) as f64).log2().ceil() as usize - 1;
        let mut chunked = 4 * c * dk + 4 * c * c * squarings + 2 * c * c + 2 * c * dv;
        if n > 1 {
            let cross = level(n - 1, 0);
            chunked += 4 * c * dk + 2 * dk * dk + 2 * dk * c + 2 * dk * dv + (2 * dk * dk * dv * (cross + 1)).div_ceil(c) + 2 * dk * dv * cross;
        }
        (2 * proj + 2 * conv + m.heads * chunked) as u64
    }
}
