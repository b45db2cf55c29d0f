//! The chunk engine of the recurrent family: one rule, three kinds.
//!
//! Per head, with a `d_k × d_v` state S, log-decays g_t (one per head, `[.., 1]`, or one per key
//! channel, `[.., d_k]`; α_t = e^{g_t}) and, for the delta rule, β_t ∈ (0, 1):
//! - **additive** (linear attention, `beta = None`): `S_t = Diag(α_t) S_{t−1} + k_t v_tᵀ`;
//! - **delta** (Gated DeltaNet, KDA): `S_t = (I − β_t k_t k_tᵀ) Diag(α_t) S_{t−1} + β_t k_t v_tᵀ`,
//!   i.e. decay first, then the correction on the decayed state: `v'_t = β_t (v_t − (Diag(α_t)S_{t−1})ᵀ k_t)`,
//!   `S_t = Diag(α_t) S_{t−1} + k_t v'_tᵀ`;
//!
//! and `o_t = S_tᵀ q_t` (post-update state; the caller scales q).
//!
//! **Chunkwise-parallel form** (Yang et al. 2024, "Parallelizing Linear Transformers with the
//! Delta Rule over Sequence Length"; the WY representation). T is cut into chunks of C; inside a
//! chunk, G_i = Σ_{r ≤ i} g_r is the *inclusive* chunk-local cumsum and Γ_ij = e^{G_i − G_j}
//! (j ≤ i; the argument is masked before the exponential, so nothing overflows):
//! - `A_ij = β_i k_iᵀ Diag(Γ_ij) k_j` (j < i), `T = (I + A)⁻¹`, `u = T(β ⊙ V)`, `w = T(β ⊙ K ⊙ e^G)`
//!   (additive: u = V, w = 0), so the chunk's pseudo-values are `V' = u − w S`;
//! - `P_ij = q_iᵀ Diag(Γ_ij) k_j` (j ≤ i), `O = (Q ⊙ e^G) S + P V'`;
//! - `S ← Diag(e^{G_C}) S + (K ⊙ e^{G_C − G})ᵀ V'`.
//!
//! Everything but the last line is batched over all chunks; only `V'` and S run chunk by chunk.
//! `T` comes from `(I + A)⁻¹ = Π_k (I + (−A)^{2^k})` (A is strictly lower triangular, so
//! `(−A)^C = 0`): ⌈log₂ C⌉ squarings of batched C × C matrices instead of C sequential
//! substitution steps. Per-head decays use `(QKᵀ) ⊙ Γ`; per-channel decays compute the C × C × d_k
//! products pairwise (`(K ⊙ e^G)(K ⊙ e^{−G})ᵀ` would overflow), hence KDA's smaller chunk.
//! A ragged last chunk is padded with zero k, v, β and g: padded positions are in the future
//! (no real output changes) and leave the final state exactly as the recurrence does.

use burn::tensor::{Bool, Device, Tensor};

use super::{merge_heads, split_heads};

/// Large negative value put in the exponent of masked (future) pairs: `e^{−1e30} = 0`, with a
/// zero gradient.
const MASKED: f32 = -1e30;

/// Inputs of the rule for one sequence batch. q, k: `[b, h, t, d_k]`, v: `[b, h, t, d_v]`,
/// beta: `[b, h, t]` (the delta rule; `None`: additive), g: `[b, h, t, 1]` or `[b, h, t, d_k]`
/// (log-decays ≤ 0; `None`: no decay). q and k are used as `scale · L2(q)`, `L2(k)` (`l2`) or
/// `scale · q`, `k`: the fused CPU op does this inside, the other paths first ([`Rule::prepared`]).
#[derive(Clone, Debug)]
pub struct Rule {
    pub q: Tensor<4>,
    pub k: Tensor<4>,
    pub v: Tensor<4>,
    pub beta: Option<Tensor<3>>,
    pub g: Option<Tensor<4>>,
    pub l2: bool,
    pub scale: f64,
}

impl Rule {
    /// The same rule with every tensor in `dtype` (no copy where it already is).
    pub fn cast(self, dtype: burn::tensor::DType) -> Rule {
        Rule {
            q: self.q.cast(dtype),
            k: self.k.cast(dtype),
            v: self.v.cast(dtype),
            beta: self.beta.map(|b| b.cast(dtype)),
            g: self.g.map(|g| g.cast(dtype)),
            ..self
        }
    }

    /// The same rule with q and k normalised and scaled (`l2 = false`, `scale = 1`).
    pub fn prepared(self) -> Rule {
        let (q, k) = if self.l2 { (super::l2_normalize(self.q), super::l2_normalize(self.k)) } else { (self.q, self.k) };
        let q = if self.scale == 1.0 { q } else { q * self.scale };
        Rule { q, k, l2: false, scale: 1.0, ..self }
    }

    /// Runs the rule from state `s0` `[b, h, d_k, d_v]`: the recurrence for one token, the
    /// chunked form for more. Returns o `[b, h, t, d_v]` and the final state.
    pub fn run(self, s0: Tensor<4>, chunk: usize) -> (Tensor<4>, Tensor<4>) {
        if self.q.dims()[2] == 1 {
            self.token(s0)
        } else {
            self.chunked(s0, chunk)
        }
    }

    /// The training forward from S = 0: o `[b, h, t, d_v]`. For the delta rule on the CPU backend
    /// one fused op (the token recurrence with its own backward, [`attnlab_kernels::delta_rule`]);
    /// elsewhere the chunked form: on wgpu, with `ATTNLAB_FUSED=0` or `ATTNLAB_RECURRENT=chunked`
    /// (to measure one against the other), and for the additive rule (linear attention), whose
    /// chunked form is only matrix products and is faster on CPU (`cargo bench -p attnlab-attn`:
    /// one layer, batch 4, forward + backward, median of 100, 2-core AVX-512 Xeon: chunked 5.5
    /// vs fused 6.8 ms at T = 64, 18.5 vs 26.7 ms at T = 256; for GDN the fused op is 1.9× faster
    /// at T = 64 and 1.8× at T = 256, for KDA 2.8× and 3.7×; `reports/linear_family/`).
    /// `ATTNLAB_RECURRENT=fused` forces the fused op for the additive rule too.
    pub fn forward(self, chunk: usize) -> Tensor<4> {
        if !takes_fused(&self.q, self.beta.is_some()) {
            let [b, h, _, dk] = self.q.dims();
            let s0 = Tensor::zeros([b, h, dk, self.v.dims()[3]], &self.q.device());
            return self.chunked(s0, chunk).0;
        }
        self.fused()
    }

    /// The fused CPU op from S = 0 ([`attnlab_kernels::delta_rule`]; only where
    /// [`attnlab_kernels::fused`] holds): o `[b, h, t, d_v]`. The op takes the layers'
    /// token-major layout; this packs the head-major tensors into it (the layers call the op
    /// directly, [`super::delta_heads`]).
    pub fn fused(self) -> Tensor<4> {
        let [b, h, t, dk] = self.q.dims();
        let device = self.q.device();
        let options = attnlab_kernels::RuleOptions { delta: self.beta.is_some(), l2: self.l2, scale: self.scale as f32 };
        let beta = self.beta.map_or_else(|| Tensor::zeros([b, t, h], &device), |beta| beta.swap_dims(1, 2));
        let g = self.g.map_or_else(|| Tensor::zeros([b, t, h], &device), merge_heads);
        let qkv = Tensor::cat(vec![merge_heads(self.q), merge_heads(self.k), merge_heads(self.v)], 2);
        split_heads(attnlab_kernels::delta_rule(qkv, beta, g, h, dk, options), h)
    }

    /// One token of the recurrence.
    pub fn token(self, s: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let this = self.prepared();
        let [b, h, _, dk] = this.q.dims();
        let dv = this.v.dims()[3];
        let s = match this.g {
            // [b, h, 1, e] → [b, h, e, 1]: scales the key rows of S (e = 1: all of them).
            Some(g) => s * g.exp().swap_dims(2, 3),
            None => s,
        };
        let k_col = this.k.clone().reshape([b, h, dk, 1]);
        let v_new = match this.beta {
            Some(beta) => (this.v - this.k.matmul(s.clone())) * beta.reshape([b, h, 1, 1]),
            None => this.v,
        };
        let s = s + k_col.matmul(v_new.reshape([b, h, 1, dv]));
        (this.q.matmul(s.clone()), s)
    }

    /// The chunkwise-parallel form (module doc).
    pub fn chunked(self, s0: Tensor<4>, chunk: usize) -> (Tensor<4>, Tensor<4>) {
        let this = self.prepared();
        let [b, h, t, _] = this.q.dims();
        let dv = this.v.dims()[3];
        let c = chunk.clamp(1, t.max(1));
        let n = t.div_ceil(c);
        let device = this.q.device();
        let (q, k, v) = (split_chunks(this.q, c), split_chunks(this.k, c), split_chunks(this.v, c));
        // Inclusive chunk-local cumsum of the log-decays, [b, h, n, c, e].
        let big_g = this.g.map(|g| split_chunks(g, c).cumsum(3));
        let causal = lower_mask(c, 0, &device); // j ≤ i
        let strict = lower_mask(c, -1, &device).reshape([1, 1, 1, c, c]); // j < i
        let (scores, gram) = pair_products(&q, &k, big_g.as_ref(), &causal);
        let decayed = |x: Tensor<5>| match &big_g {
            Some(g) => x * g.clone().exp(),
            None => x,
        };
        let (u, w) = match this.beta {
            Some(beta) => {
                let beta = split_chunks(beta.unsqueeze_dim::<4>(3), c);
                let a = gram * strict * beta.clone();
                let inv = unit_lower_inverse(a, &device);
                (inv.clone().matmul(v * beta.clone()), Some(inv.matmul(decayed(k.clone()) * beta)))
            }
            None => (v, None),
        };
        let pu = scores.clone().matmul(u.clone());
        let qw = match &w {
            Some(w) => decayed(q) - scores.matmul(w.clone()),
            None => decayed(q),
        };
        // Decay to the chunk's end: e^{G_C} for S, K ⊙ e^{G_C − G} for the new writes.
        let (end_decay, k_end) = match &big_g {
            Some(g) => {
                let last = g.clone().narrow(3, c - 1, 1);
                (Some(last.clone().exp()), k * (last - g.clone()).exp())
            }
            None => (None, k),
        };
        let mut s = s0;
        let mut starts = Vec::with_capacity(n);
        for i in 0..n {
            starts.push(s.clone());
            let at = |x: &Tensor<5>| chunk_at(x, i);
            let v_new = match &w {
                Some(w) => at(&u) - at(w).matmul(s.clone()),
                None => at(&u),
            };
            if let Some(d) = &end_decay {
                s = s * at(d).swap_dims(2, 3);
            }
            s = s + at(&k_end).swap_dims(2, 3).matmul(v_new);
        }
        let starts: Tensor<5> = Tensor::stack(starts, 2);
        let o = pu + qw.matmul(starts);
        (o.reshape([b, h, n * c, dv]).narrow(2, 0, t), s)
    }
}

/// The WY pieces of the delta rule from S = 0 with one per-head log-decay, chunk by chunk
/// ([`delta_chunks`]). With `A_r = α_r (I − β_r k_r k_rᵀ)`, inside chunk i
/// `E_ii = P_i T_i` (`P = (QKᵀ) ⊙ Γ`, `T = (I + A)⁻¹`); a state S at the chunk's start is read as
/// `R_i S` with `R_i = Q_i ⊙ e^{G_i} − P_i W_i` (`W = T(β ⊙ K ⊙ e^G)`) and carried to its end as
/// `M_i S` with `M_i = e^{G_C} I − K̃_iᵀ W_i` (`K̃ = K ⊙ e^{G_C − G}`), and chunk j's own writes
/// leave `F_j (β ⊙ V_j)` with `F_j = K̃_jᵀ T_j`; so the rule's effective attention below the
/// diagonal is `E_ij = R_i M_{i−1} ⋯ M_{j+1} F_j` (j < i).
pub struct DeltaChunks {
    /// `E_ii` `[b, h, n, C, C]`: the effective attention inside each chunk,
    /// `E_ts = q_tᵀ (A_t ⋯ A_{s+1}) k_s` (the output is `E (β ⊙ V)`).
    pub diagonal: Tensor<5>,
    /// R, M, F across chunks; `None` for a single chunk.
    pub across: Option<Across>,
}

/// The pieces that link chunks ([`DeltaChunks`]).
pub struct Across {
    /// `R_i` `[b, h, n, C, d_k]`: the outputs' read of the state at the chunk's start.
    pub read: Tensor<5>,
    /// `M_i` `[b, h, n, d_k, d_k]`: the state at the chunk's start carried to its end.
    pub carry: Tensor<5>,
    /// `F_i` `[b, h, n, d_k, C]`: the chunk's writes, `F_i (β ⊙ V_i)`, at its end.
    pub writes: Tensor<5>,
}

/// [`DeltaChunks`] of q (scaled), k (normalised) `[b, h, t, d_k]`, beta `[b, h, t]` and g
/// `[b, h, t, 1]` in chunks of `chunk` (not capped at t: a ragged or short last chunk is padded
/// with zero k, β and g, as in [`Rule::chunked`]).
/// Cost per head: O(t·C·(d_k + C·log₂C)) for the chunks, O(t·d_k·(C + d_k)) across them.
pub fn delta_chunks(q: Tensor<4>, k: Tensor<4>, beta: Tensor<3>, g: Tensor<4>, chunk: usize) -> DeltaChunks {
    let [_, _, t, dk] = q.dims();
    let c = chunk.max(1);
    let n = t.div_ceil(c);
    let device = q.device();
    let (q, k, beta) = (split_chunks(q, c), split_chunks(k, c), split_chunks(beta.unsqueeze_dim::<4>(3), c));
    let big_g = split_chunks(g, c).cumsum(3); // inclusive, chunk-local
    let causal = lower_mask(c, 0, &device);
    let strict = lower_mask(c, -1, &device).reshape([1, 1, 1, c, c]);
    let (scores, gram) = pair_products(&q, &k, Some(&big_g), &causal);
    let inv = unit_lower_inverse(gram * strict * beta.clone(), &device);
    let diagonal = scores.clone().matmul(inv.clone()); // [b, h, n, C, C]
    let across = (n > 1).then(|| {
        let w = inv.clone().matmul(k.clone() * big_g.clone().exp() * beta);
        let read = q * big_g.clone().exp() - scores.matmul(w.clone());
        let last = big_g.clone().narrow(3, c - 1, 1); // G_C [b, h, n, 1, 1]
        let k_end = (k * (last.clone() - big_g).exp()).swap_dims(3, 4); // K̃ᵀ [b, h, n, d_k, C]
        let eye = Tensor::<2>::eye(dk, &device).reshape([1, 1, 1, dk, dk]);
        let carry = eye * last.exp() - k_end.clone().matmul(w);
        Across { read, carry, writes: k_end.matmul(inv) }
    });
    DeltaChunks { diagonal, across }
}

/// The delta rule's effective attention from S = 0 with one per-head log-decay:
/// `E [b, h, t, t]` (lower triangular) such that the rule's output is `O = E (β ⊙ V)`, assembled
/// block by block from [`delta_chunks`] (`E_ij = R_i M_{i−1} ⋯ M_{j+1} F_j` below the
/// diagonal). Inputs as [`delta_chunks`]. Cost per head: the chunks' and O(t²·d_k + t²/C·d_k²)
/// for the blocks below the diagonal (log-linear Gated DeltaNet's dense form weighs E per pair).
pub fn delta_attention(q: Tensor<4>, k: Tensor<4>, beta: Tensor<3>, g: Tensor<4>, chunk: usize) -> Tensor<4> {
    let t = q.dims()[2];
    let DeltaChunks { diagonal, across } = delta_chunks(q, k, beta, g, chunk.clamp(1, t.max(1)));
    let [b, h, n, c, _] = diagonal.dims();
    let zero = Tensor::<4>::zeros([b, h, c, c], &diagonal.device());
    let mut blocks: Vec<Vec<Tensor<4>>> = vec![vec![zero; n]; n];
    for (i, row) in blocks.iter_mut().enumerate() {
        row[i] = chunk_at(&diagonal, i);
    }
    if let Some(Across { read, carry, writes }) = across {
        for j in 0..n - 1 {
            let mut state = chunk_at(&writes, j);
            for i in j + 1..n {
                blocks[i][j] = chunk_at(&read, i).matmul(state.clone());
                if i + 1 < n {
                    state = chunk_at(&carry, i).matmul(state);
                }
            }
        }
    }
    let rows = blocks.into_iter().map(|row| Tensor::cat(row, 3)).collect();
    Tensor::cat(rows, 2).narrow(2, 0, t).narrow(3, 0, t)
}

/// The training path `ATTNLAB_RECURRENT` asks for (`chunked`, `fused`; unset: the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Default,
    Chunked,
    Fused,
}

/// Whether a training forward of the rule on `x`'s device runs the fused CPU op (see
/// [`Rule::forward`]): the delta rule by default, the additive rule when forced.
pub fn takes_fused<const D: usize>(x: &Tensor<D>, delta: bool) -> bool {
    attnlab_kernels::fused(x)
        && match recurrent_path() {
            Path::Chunked => false,
            Path::Fused => true,
            Path::Default => delta,
        }
}

fn recurrent_path() -> Path {
    static PATH: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
    *PATH.get_or_init(|| match std::env::var("ATTNLAB_RECURRENT").as_deref() {
        Ok("chunked") => Path::Chunked,
        Ok("fused") => Path::Fused,
        _ => Path::Default,
    })
}

/// `P = (Q Kᵀ) ⊙ Γ` (j ≤ i) and `KKᵀ ⊙ Γ` (all j; the caller keeps j < i) per chunk,
/// `[b, h, n, c, c]`. Per-head decays factor out of the dot products; per-channel decays are
/// summed pairwise over d_k.
fn pair_products(q: &Tensor<5>, k: &Tensor<5>, big_g: Option<&Tensor<5>>, causal: &Tensor<2>) -> (Tensor<5>, Tensor<5>) {
    let c = q.dims()[3];
    let kt = k.clone().swap_dims(3, 4);
    let mask = causal.clone().reshape([1, 1, 1, c, c]);
    match big_g {
        None => (q.clone().matmul(kt.clone()) * mask.clone(), k.clone().matmul(kt) * mask),
        Some(g) if g.dims()[4] == 1 => {
            let gamma = decay_matrix(g.clone() - g.clone().swap_dims(3, 4), &mask);
            (q.clone().matmul(kt.clone()) * gamma.clone(), k.clone().matmul(kt) * gamma)
        }
        Some(g) => {
            // [b, h, n, c_i, c_j, d_k]
            let gi = g.clone().unsqueeze_dim::<6>(4);
            let gj = g.clone().unsqueeze_dim::<6>(3);
            let gamma = decay_matrix(gi - gj, &mask.unsqueeze_dim::<6>(5));
            let kj = k.clone().unsqueeze_dim::<6>(3);
            let pair = |x: &Tensor<5>| (x.clone().unsqueeze_dim::<6>(4) * kj.clone() * gamma.clone()).sum_dim(5).squeeze_dim::<5>(5);
            (pair(q), pair(k))
        }
    }
}

/// `e^{D}` where `mask` (1 allowed, 0 masked) allows, 0 elsewhere; the exponent is replaced
/// *before* the exponential.
fn decay_matrix<const D: usize>(diff: Tensor<D>, mask: &Tensor<D>) -> Tensor<D> {
    let bias = (mask.clone().neg() + 1.0) * MASKED;
    (diff * mask.clone() + bias).exp()
}

/// `(I + A)⁻¹` of strictly lower-triangular `[.., c, c]` matrices: `Σ_k (−A)^k` as
/// `Π_j (I + (−A)^{2^j})`, ⌈log₂ c⌉ batched squarings.
fn unit_lower_inverse(a: Tensor<5>, device: &Device) -> Tensor<5> {
    let c = a.dims()[4];
    let eye = Tensor::<2>::eye(c, device).reshape([1, 1, 1, c, c]);
    let mut power = -a;
    let mut inv = power.clone() + eye;
    let mut span = 2;
    while span < c {
        power = power.clone().matmul(power);
        inv = inv.clone() + inv.matmul(power.clone());
        span *= 2;
    }
    inv
}

/// `[c, c]` with ones where column ≤ row + offset (offset 0: j ≤ i, −1: j < i), zeros elsewhere.
fn lower_mask(c: usize, offset: i64, device: &Device) -> Tensor<2> {
    // `tril_mask` is true *outside* the kept triangle.
    Tensor::<2, Bool>::tril_mask([c, c], offset, device).bool_not().float()
}

/// Chunk `i` `[b, h, c, d]` of chunked `[b, h, n, c, d]`.
pub fn chunk_at(x: &Tensor<5>, i: usize) -> Tensor<4> {
    x.clone().narrow(2, i, 1).squeeze_dim::<4>(2)
}

/// `[b, h, t, d]` as chunks of `c` `[b, h, ⌈t/c⌉, c, d]`, the last padded with zeros on the
/// time axis.
pub fn split_chunks(x: Tensor<4>, c: usize) -> Tensor<5> {
    let [b, h, t, d] = x.dims();
    let n = t.div_ceil(c);
    if n * c == t {
        return x.reshape([b, h, n, c, d]);
    }
    let zeros = Tensor::zeros([b, h, n * c - t, d], (&x.device(), x.dtype()));
    Tensor::cat(vec![x, zeros], 2).reshape([b, h, n, c, d])
}
