//! Log-linear attention (Guo et al. 2025, "Log-Linear Attention") over linear attention
//! (`../shared/MECHANISMS.md` §4; fla `ops/log_linear_attn/naive.py`, HanGuo97 `hattention`).
//!
//! The base's q, k, v and feature map φ stay ([`LinearAttention`]); the keys before a query are
//! split into Fenwick buckets by level `ℓ(t, t) = 0`, `ℓ(t, s) = bit-length(t XOR s)` (0-based
//! positions), each weighted by a query-dependent `λ_t^ℓ ≥ 0`:
//!
//! `o_t = RMSNorm(Σ_{s ≤ t} λ_t^{ℓ(t,s)} (φ(q_t)·φ(k_s)) v_s · d_φ^−½)` per head, then `W_o`,
//! `λ_t = softplus(Λ_h ⊙ (x_t W_l)_h)`, `W_l: d → h·L` (bias-free, N(0, 0.02²)), `Λ [h, L]` = 1 at
//! init (λ ≈ ln 2: through the RMSNorm the layer starts as its base). With every λ equal it *is*
//! the base layer (the RMSNorm removes the common factor). L = `levels` ≥ bit-length(max_seq − 1) + 1.
//!
//! Training form: chunks of C (a power of two) at multiples of C. Inside a chunk the masked
//! product `(φ(Q)φ(K)ᵀ ⊙ M^H) V`, `M^H_{ts} = λ_t^{ℓ(t,s)}` (levels ≤ log₂C); a key in an earlier
//! chunk j of query chunk i has level `log₂C + bit-length(i XOR j)`, so each higher level reads one
//! bucket of whole chunks — a difference of two prefix sums of the chunk states `Σ φ(k)vᵀ`:
//! O(T·C + T·log(T/C)·d_φ·d_h) ([`LogLinearAttention::forward_chunked`]). The dense O(T²)
//! form ([`LogLinearAttention::forward_dense`]) is kept as the tests' second path.
//! Decode: one `d_φ × d_h` state per level; before inserting token t > 0, with z the trailing
//! zeros of t, `S^(z+1) += Σ_{ℓ ≤ z} S^(ℓ)` and levels 0..=z are cleared (a binary carry); then
//! `S^(0) = φ(k_t) v_tᵀ` and `o_t = Σ_ℓ λ_t^ℓ S^(ℓ)ᵀ φ(q_t)`. The state holds bit-length(t) + 1
//! levels at position t: `4·h·d_φ·d_h·(⌊log₂ t⌋ + 2)` bytes — it grows with log t (`state_bytes`;
//! a state is allocated with the levels of its whole capacity).
//! Only the RMSNorm output of the base is built (the normaliser form would need z per level).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::softplus;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::chunk::split_chunks;
use super::linear_attention::LinearAttention;
use super::{merge_heads, split_heads};
use crate::config::FeatureMap;
use crate::linear::{apply, linear};
use crate::state::RecurrentState;
use attnlab_kernels::rms_norm;

/// Fenwick level of key position `s` for query position `t ≥ s`: 0 for `s = t`, else the
/// bit length of `t XOR s`.
pub fn level(t: usize, s: usize) -> usize {
    assert!(s <= t, "level({t}, {s}): the key must not follow the query");
    (usize::BITS - (t ^ s).leading_zeros()) as usize
}

/// Levels a state needs for positions `0..len`: bit-length(len − 1) + 1 (1 for len ≤ 1).
pub fn levels_for(len: usize) -> usize {
    level(len.saturating_sub(1), 0) + 1
}

/// The level weights `λ = softplus(Λ ⊙ x W_l)` `[b, h, t, L]` for x `[b, t, d]` (`W_l: d → h·L`,
/// `Λ [h·L]`), shared by both bases.
pub fn level_weights(level_proj: &Linear, level_scale: &Param<Tensor<1>>, heads: usize, levels: usize, x: Tensor<3>) -> Tensor<4> {
    let [b, t, _] = x.dims();
    let z = apply(level_proj, x).reshape([b, t, heads, levels]).swap_dims(1, 2);
    softplus(z * level_scale.val().reshape([1, heads, 1, levels]), 1.0)
}

/// Positions `levels` cover: 2^(levels − 1).
pub fn max_positions(levels: usize) -> usize {
    1usize.checked_shl(levels as u32 - 1).unwrap_or(usize::MAX)
}

/// For positions `0..n`: the level of every (query i, key j) pair `[n, n]` (0 where j > i) and
/// the causal mask (1 where j ≤ i) in `dtype` (a half-precision forward multiplies in it).
fn level_table(n: usize, device: &Device, dtype: burn::tensor::DType) -> (Tensor<2, Int>, Tensor<2>) {
    let (mut levels, mut causal) = (Vec::with_capacity(n * n), Vec::with_capacity(n * n));
    for i in 0..n {
        for j in 0..n {
            levels.push(if j <= i { level(i, j) as i64 } else { 0 });
            causal.push(if j <= i { 1f32 } else { 0.0 });
        }
    }
    let levels = Tensor::from_data(TensorData::new(levels, [n, n]), device);
    (levels, Tensor::<2>::from_data(TensorData::new(causal, [n, n]), device).cast(dtype))
}

/// `M_ts = λ_t^{ℓ(t,s)}` for s ≤ t, 0 for s > t: the dense level mask `[b, h, t, t]` of level
/// weights `λ [b, h, t, L]`.
pub fn level_mask(lambda: Tensor<4>, t: usize) -> Tensor<4> {
    let [b, h, _, _] = lambda.dims();
    let (levels, causal) = level_table(t, &lambda.device(), lambda.dtype());
    lambda.gather(3, levels.unsqueeze::<4>().expand([b, h, t, t])) * causal.unsqueeze::<4>()
}

/// The level mask inside chunks of `c` (a power of two; chunks start at multiples of c, so the
/// level of a pair is `ℓ(t mod c, s mod c)`): `[b, h, n, c, c]` from λ `[b, h, n, c, L]`.
pub fn chunk_level_mask(lambda: Tensor<5>) -> Tensor<5> {
    let [b, h, n, c, _] = lambda.dims();
    let (levels, causal) = level_table(c, &lambda.device(), lambda.dtype());
    lambda.gather(4, levels.unsqueeze::<5>().expand([b, h, n, c, c])) * causal.unsqueeze::<5>()
}

/// The levels across chunks of `c`: a key in chunk j < i of a query in chunk i has level
/// `log₂c + ℓ'`, `ℓ' = bit-length(i XOR j)`. `Σ_ℓ' λ_t^{log₂c + ℓ'} read^(ℓ')_t` for the reads of
/// the buckets `[b, h, n, cross, c, d]` and λ `[b, h, n, c, L]` → `[b, h, n, c, d]`.
pub fn weigh_cross(read: Tensor<6>, lambda: Tensor<5>) -> Tensor<5> {
    let [b, h, n, cross, c, d] = read.dims();
    let base = c.trailing_zeros() as usize;
    let w = lambda.narrow(4, base + 1, cross).swap_dims(3, 4).unsqueeze_dim::<6>(5); // [b, h, n, cross, c, 1]
    (read * w).sum_dim(3).reshape([b, h, n, c, d])
}

/// Checks that a training sequence of `t` positions fits the `levels` (positions < 2^(L − 1)).
pub fn check_length(t: usize, levels: usize) {
    assert!(t <= max_positions(levels), "log-linear attention: {t} positions exceed the {levels} levels' 2^{} (set model.attention.levels)", levels - 1);
}

/// The chunk the chunked forms use for `t` positions: `c` (a power of two), capped at t's next
/// power of two — a longer chunk's padded rows would read levels up to log₂c, beyond the L
/// that cover `t` positions.
pub fn level_chunk(c: usize, t: usize) -> usize {
    assert!(c.is_power_of_two(), "log-linear attention: chunk {c} must be a power of two");
    c.min(t.next_power_of_two())
}

/// Checks that token position `t` fits the `levels` (positions < 2^(levels − 1)) and a state
/// holding `held` levels (allocated for `capacity`).
pub fn check_position(t: usize, levels: usize, held: usize, capacity: usize) {
    assert!(t < max_positions(levels), "log-linear attention: position {t} exceeds the {levels} levels (positions < 2^{}; set model.attention.levels)", levels - 1);
    assert!(levels_for(t + 1) <= held, "log-linear state: position {t} needs {} levels, the state holds {held} (capacity {capacity})", levels_for(t + 1));
}

/// The binary carry before inserting token `t` into level states `s` `[b, held, h, rows, cols]`:
/// for t > 0 with z trailing zeros, `S^(z+1) += Σ_{ℓ ≤ z} S^(ℓ)` and levels 0..=z cleared.
pub fn carry(s: Tensor<5>, t: usize) -> Tensor<5> {
    if t == 0 {
        return s;
    }
    let [b, held, h, rows, cols] = s.dims();
    let z = t.trailing_zeros() as usize;
    let above = s.clone().narrow(1, z + 1, 1) + s.clone().narrow(1, 0, z + 1).sum_dim(1);
    let mut parts = vec![Tensor::zeros([b, z + 1, h, rows, cols], (&above.device(), above.dtype())), above];
    if held > z + 2 {
        parts.push(s.narrow(1, z + 2, held - z - 2));
    }
    Tensor::cat(parts, 1)
}

/// `s` with level 0 replaced by `fresh` `[b, 1, h, rows, cols]`.
pub fn set_level0(s: Tensor<5>, fresh: Tensor<5>) -> Tensor<5> {
    let held = s.dims()[1];
    if held > 1 { Tensor::cat(vec![fresh, s.narrow(1, 1, held - 1)], 1) } else { fresh }
}

/// `Σ_ℓ λ_i^ℓ read^(ℓ)`: per-level reads `[b, held, h, 1, cols]` weighted by token i's level
/// weights of `lambda` `[b, h, new, L]` → `[b, h, 1, cols]`.
pub fn weigh_levels(read: Tensor<5>, lambda: &Tensor<4>, i: usize) -> Tensor<4> {
    let [b, held, h, _, cols] = read.dims();
    let w = lambda.clone().narrow(2, i, 1).narrow(3, 0, held).reshape([b, h, held]).swap_dims(1, 2).reshape([b, held, h, 1, 1]);
    (read * w).sum_dim(1).reshape([b, h, 1, cols])
}

#[derive(Module, Debug)]
pub struct LogLinearAttention {
    /// The linear-attention layer whose q, k, v, φ, output norm and `W_o` are used.
    pub base: LinearAttention,
    /// `d → h·L`: the level weights' pre-activations.
    pub level_proj: Linear,
    /// `Λ [h·L]` (row-major `[h, L]`; one-dimensional, so `train.decay = "matrices"` does not
    /// decay it, as fla), ones at init.
    pub level_scale: Param<Tensor<1>>,
    pub levels: usize,
    /// C of the chunked training form (a power of two).
    #[module(skip)]
    pub chunk: usize,
}

impl LogLinearAttention {
    /// `levels` = L (the largest position is 2^(L−1) − 1). The base must use its RMSNorm output.
    pub fn new(d_model: usize, heads: usize, map: FeatureMap, levels: usize, chunk: usize, device: &Device) -> Self {
        assert!(chunk.is_power_of_two(), "log-linear chunk {chunk} must be a power of two");
        Self {
            base: LinearAttention::new(d_model, heads, map, false, crate::config::LINEAR_CHUNK, device),
            level_proj: linear(d_model, heads * levels, device),
            level_scale: Param::from_tensor(Tensor::ones([heads * levels], device)),
            levels,
            chunk,
        }
    }

    /// Longest sequence the levels cover: 2^(L−1).
    pub fn max_positions(&self) -> usize {
        max_positions(self.levels)
    }

    /// λ `[b, h, t, L]` for x `[b, t, d]`.
    pub fn lambda(&self, x: Tensor<3>) -> Tensor<4> {
        level_weights(&self.level_proj, &self.level_scale, self.base.heads, self.levels, x)
    }

    /// φ(q), φ(k) `[b, h, t, d_φ]` and v `[b, h, t, d_h]`.
    fn qkv(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let (h, d) = (self.base.heads, self.base.head_dim);
        let qkv = apply(&self.base.qkv, x);
        let part = |i: usize| split_heads(qkv.clone().narrow(2, i * h * d, h * d), h);
        (self.base.phi(part(0), false), self.base.phi(part(1), true), part(2))
    }

    /// The per-head outputs `[b, h, t, d_h]` through the output norm and `W_o`.
    fn output(&self, o: Tensor<4>) -> Tensor<3> {
        let norm = self.base.norm.as_ref().expect("log-linear attention uses the RMSNorm output");
        apply(&self.base.out, merge_heads(rms_norm(norm, o)))
    }

    /// The dense O(T²) masked form with given level weights `λ [b, h, t, L]` (the tests'
    /// second path; they pass [`Self::lambda`] or one-hot weights).
    pub fn forward_dense(&self, x: Tensor<3>, lambda: Tensor<4>) -> Tensor<3> {
        let t = x.dims()[1];
        check_length(t, self.levels);
        let (q, k, v) = self.qkv(x);
        let scale = 1.0 / (self.base.feature_dim() as f64).sqrt();
        let weights = level_mask(lambda.cast(q.dtype()), t);
        let scores = q.matmul(k.swap_dims(2, 3)) * scale;
        self.output((scores * weights).matmul(v))
    }

    /// Causal forward (the chunked form). x: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let lambda = self.lambda(x.clone());
        self.forward_chunked(x, lambda, self.chunk)
    }

    /// The chunked form with chunk `c` (a power of two) and level weights `λ [b, h, t, L]`.
    pub fn forward_chunked(&self, x: Tensor<3>, lambda: Tensor<4>, c: usize) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let c = level_chunk(c, t);
        check_length(t, self.levels);
        let (h, d, dphi) = (self.base.heads, self.base.head_dim, self.base.feature_dim());
        let n = t.div_ceil(c);
        let (q, k, v) = self.qkv(x);
        let device = q.device();
        let dtype = q.dtype();
        // Zero padding to n·C: a padded key has v = 0 and adds nothing; padded queries are dropped.
        let (q, k, v) = (split_chunks(q, c), split_chunks(k, c), split_chunks(v, c));
        let lambda = split_chunks(lambda.cast(dtype), c);
        let scale = 1.0 / (dphi as f64).sqrt();
        let weights = chunk_level_mask(lambda.clone());
        let intra = (q.clone().matmul(k.clone().swap_dims(3, 4)) * scale * weights).matmul(v.clone());
        // Across chunks: bucket ℓ' ≥ 1 of chunk i is chunks [β − 2^(ℓ'−1), β), β = i − (i mod 2^(ℓ'−1)),
        // non-empty iff bit ℓ'−1 of i is set; its state is P[β] − P[β − 2^(ℓ'−1)] with P the
        // exclusive prefix sums of the chunk states (empty buckets read P[0] − P[0] = 0).
        let cross = level(n - 1, 0);
        let out = if cross == 0 {
            intra
        } else {
            // Prefix sums and their differences in f32 (a half-precision difference of two long
            // sums would lose the bucket).
            let states = k.swap_dims(3, 4).matmul(v).cast(burn::tensor::DType::F32); // [b, h, n, d_φ, d_h]
            let prefix = Tensor::cat(vec![Tensor::zeros([b, h, 1, dphi, d], &device), states.cumsum(2)], 2);
            let (mut hi, mut lo) = (Vec::with_capacity(n * cross), Vec::with_capacity(n * cross));
            for i in 0..n {
                for lv in 1..=cross {
                    let width = 1usize << (lv - 1);
                    let (a, z) = if i & width != 0 { (i - i % width, i - i % width - width) } else { (0, 0) };
                    hi.push(a as i64);
                    lo.push(z as i64);
                }
            }
            let index = |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v, [n * cross]), &device);
            let buckets = (prefix.clone().select(2, index(hi)) - prefix.select(2, index(lo))).cast(dtype).reshape([b, h, n, cross, dphi, d]);
            let read = q.unsqueeze_dim::<6>(3).matmul(buckets) * scale; // [b, h, n, cross, C, d_h]
            intra + weigh_cross(read, lambda)
        };
        self.output(out.reshape([b, h, n * c, d]).narrow(2, 0, t))
    }

    /// Empty state: level states `[batch, L·h, d_φ, d_h]` (level ℓ at rows ℓ·h..), with the
    /// levels positions `0..capacity` need.
    pub fn init_state(&self, batch: usize, capacity: usize, device: &Device) -> RecurrentState {
        let (h, dphi, d) = (self.base.heads, self.base.feature_dim(), self.base.head_dim);
        let levels = levels_for(capacity.max(1)).min(self.levels);
        RecurrentState { s: Tensor::zeros([batch, levels * h, dphi, d], device), conv: None, len: 0, capacity }
    }

    /// Feeds x `[batch, new, d_model]` token by token through the Fenwick levels.
    pub fn step(&self, x: Tensor<3>, state: &mut RecurrentState) -> Tensor<3> {
        let [b, new, _] = x.dims();
        let (h, dphi, d) = (self.base.heads, self.base.feature_dim(), self.base.head_dim);
        let held = state.s.dims()[1] / h;
        let lambda = self.lambda(x.clone());
        let (q, k, v) = self.qkv(x);
        let scale = 1.0 / (dphi as f64).sqrt();
        let mut outputs = Vec::with_capacity(new);
        for i in 0..new {
            let t = state.len;
            check_position(t, self.levels, held, state.capacity);
            // [b, L, h, d_φ, d_h] views of the levels.
            let s = carry(state.s.clone().reshape([b, held, h, dphi, d]), t);
            let (qt, kt, vt) = (q.clone().narrow(2, i, 1), k.clone().narrow(2, i, 1), v.clone().narrow(2, i, 1)); // [b, h, 1, ·]
            let fresh = kt.swap_dims(2, 3).matmul(vt).unsqueeze_dim::<5>(1); // [b, 1, h, d_φ, d_h]
            let s = set_level0(s, fresh);
            // o = Σ_ℓ λ^ℓ S^(ℓ)ᵀ φ(q): per level [b, L, h, 1, d_h].
            outputs.push(weigh_levels(qt.unsqueeze_dim::<5>(1).matmul(s.clone()) * scale, &lambda, i));
            state.s = s.reshape([b, held * h, dphi, d]);
            state.len += 1;
        }
        self.output(Tensor::cat(outputs, 2))
    }

    /// `4 · h · d_φ · d_h · (bit-length(context − 1) + 1)`: the levels `context` positions use
    /// (at most L).
    pub fn state_bytes(&self, context: usize) -> usize {
        let (h, dphi, d) = (self.base.heads, self.base.feature_dim(), self.base.head_dim);
        h * dphi * d * levels_for(context.max(1)).min(self.levels) * crate::F32_BYTES
    }

    /// Projections (the base's and the level head, 2 per weight) and the chunked form: the
    /// masked product over the chunk's visible keys (`2·h·(d_φ + d_h)` per key, ≤ C), the chunk
    /// state and one `d_φ × d_h` read per cross-chunk level (`2·h·d_φ·d_h` each).
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let proj = self.base.qkv.weight.shape().num_elements() + self.base.out.weight.shape().num_elements() + self.level_proj.weight.shape().num_elements();
        let (h, dphi, d) = (self.base.heads, self.base.feature_dim(), self.base.head_dim);
        let intra = 2 * h * (dphi + d) * context.min(self.chunk);
        let cross = level(context.max(1).div_ceil(self.chunk) - 1, 0);
        (2 * proj + intra + 2 * h * dphi * d * (1 + cross)) as u64
    }
}
