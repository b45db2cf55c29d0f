//! Multi-Token Attention (Golovneva et al. 2025, "Multi-Token Attention"; facebookresearch/RAM
//! `projects/mta/mta_transformer.py`): softmax attention whose score map is transformed before
//! and after the softmax, so that one attention weight can depend on several queries and keys.
//!
//! Per layer, with q, k, v from grouped-query attention's projection and RoPE ([`GroupedQuery`]
//! as `base`, K/V heads repeated to the query heads), `Â = q kᵀ / √d_h` `[b, H, T, T]`:
//! 1. **key–query convolution** (depthwise, kernel θ_h `[c_q, c_k]`, no bias), on Â with the
//!    entries j > i set to **0** first: `C[i, j] = Σ_{a<c_q, b<c_k} θ_h[a, b] ·
//!    Â[i − (c_q − 1) + a, j − (c_k − 1)/2 + b]`, rows above 0 and keys outside 0..T read as 0
//!    (the query axis is padded on the past side only, so row i reads rows ≤ i);
//! 2. **pre-softmax head mixing**: `Ã_i = Σ_j W[i, j] C_j` (W `[H, H]`);
//! 3. entries j > i set to −∞ (the convolution left values there), softmax over keys;
//! 4. optional **post-softmax convolution** with its own θ′, entries j > i then set to 0 again
//!    (no renormalisation: rows may not sum to 1);
//! 5. **post-softmax head mixing** in groups of c_h heads: `P_i = Σ_{j in i's group}
//!    W_g[j, i] A_j` (W_g `[H/c_h, c_h, c_h]`; note the transposed convention against 2., as
//!    the reference);
//! 6. `o = P v`; **group norm**: RMSNorm over each head's d_h with one scale `[d_h]` shared by
//!    the heads (ε 1e-5), optionally × (1 − λ_init(l)), λ_init(l) = 0.8 − 0.6·e^{−0.3·l};
//! 7. optional **gate** `o ← o · σ(w·o + b)` per head and token, w `[d_h]` and b shared by the
//!    heads; then W_o.
//!
//! Initialisation is the identity: θ[c_q − 1, (c_k − 1)/2] = 1 (else 0), W = W_g = I, so a new
//! layer with norm and gate off computes exactly MHA. Gate w ~ N(0, σ² = 1/d_model) clamped at
//! ±3σ (the reference truncates, `trunc_normal_`: here 0.27% of the draws sit at ±3σ instead of
//! being redrawn), b = 0 (the reference leaves PyTorch's default bias). `depth_scale` applies
//! with or without the norm (the reference has it inside the norm; the flags are independent).
//! `conv_layers` puts the convolutions in those layers only (the paper's 830M model: layers
//! 2, 6, 10, …); mixing, norm and gate are in every layer.
//!
//! Shapes: the full `[b, H, T, T]` map is materialised (O(T²) memory, as the reference's
//! non-Triton path). Decode keeps the KV cache and the last `keep = (c_q − 1)·n_convs` queries
//! (post-RoPE): row i needs score rows i − c_q + 1..i, and with the post convolution each of
//! those needs its own c_q − 1 earlier rows. A step recomputes the `keep + new` rows over all
//! keys and returns the last `new`.

use burn::module::{Module, Param};
use burn::nn::{RmsNorm, RmsNormConfig};
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Bool, Device, Distribution, Tensor};

use crate::differential::lambda_init;
use crate::grouped_query::{merge_heads, GroupedQuery};
use crate::linear::apply;
use crate::mask::causal_mask;
use crate::state::{write_in_place, KvCache, MtaState};
use crate::F32_BYTES;
use attnlab_kernels::rms_norm;

/// Options of an [`Mta`] layer beyond grouped-query attention's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct MtaOptions {
    /// Query and key extent of the convolution kernels (c_k odd).
    pub query_kernel: usize,
    pub key_kernel: usize,
    /// Whether this layer has the pre-softmax convolution (false outside `conv_layers`).
    pub pre_conv: bool,
    /// Whether this layer has the post-softmax convolution.
    pub post_conv: bool,
    /// Pre-softmax H×H head mixing.
    pub pre_mix: bool,
    /// Post-softmax head mixing in groups of this many heads (`None`: off).
    pub post_mix_group: Option<usize>,
    pub norm: bool,
    /// Scale the normalised output by 1 − λ_init(layer).
    pub depth_scale: bool,
    pub gate: bool,
    /// Layer index (for the depth scale).
    pub layer: usize,
}

/// Multi-Token Attention over grouped-query attention's projections.
#[derive(Module, Debug)]
pub struct Mta {
    /// W_qkv, W_o, RoPE and the K/V head count.
    pub base: GroupedQuery,
    /// Pre-softmax kernel θ `[H, 1, c_q, c_k]`.
    pub conv_pre: Option<Param<Tensor<4>>>,
    /// Post-softmax kernel θ′ `[H, 1, c_q, c_k]`.
    pub conv_post: Option<Param<Tensor<4>>>,
    /// Pre-softmax head mixing W `[H, H]` (`Ã_i = Σ_j W[i, j] A_j`).
    pub mix_pre: Option<Param<Tensor<2>>>,
    /// Post-softmax head mixing W_g `[H/c_h, c_h, c_h]` (`P_i = Σ_j W_g[j, i] A_j`).
    pub mix_post: Option<Param<Tensor<3>>>,
    /// Group norm: RMSNorm over d_h, one scale shared by the heads.
    pub norm: Option<RmsNorm>,
    /// Gate weight w `[d_h]` and bias b `[1]`.
    pub gate_w: Option<Param<Tensor<1>>>,
    pub gate_b: Option<Param<Tensor<1>>>,
    #[module(skip)]
    pub query_kernel: usize,
    #[module(skip)]
    pub key_kernel: usize,
    /// 1 − λ_init(layer), or 1.
    #[module(skip)]
    pub depth_scale: f32,
}

impl Mta {
    pub fn new(base: GroupedQuery, options: MtaOptions, d_model: usize, device: &Device) -> Self {
        let (h, d) = (base.heads, base.head_dim);
        let (c_q, c_k) = (options.query_kernel, options.key_kernel);
        let identity_kernel = || {
            let mut w = vec![0f32; h * c_q * c_k];
            for head in 0..h {
                w[head * c_q * c_k + (c_q - 1) * c_k + (c_k - 1) / 2] = 1.0;
            }
            Param::from_tensor(Tensor::from_data(burn::tensor::TensorData::new(w, [h, 1, c_q, c_k]), device))
        };
        let std = 1.0 / (d_model as f64).sqrt();
        Self {
            conv_pre: options.pre_conv.then(identity_kernel),
            conv_post: options.post_conv.then(identity_kernel),
            mix_pre: options.pre_mix.then(|| Param::from_tensor(Tensor::eye(h, device))),
            mix_post: options.post_mix_group.map(|c| {
                Param::from_tensor(Tensor::<2>::eye(c, device).unsqueeze::<3>().repeat_dim(0, h / c))
            }),
            norm: options.norm.then(|| RmsNormConfig::new(d).with_epsilon(1e-5).init(device)),
            gate_w: options.gate.then(|| {
                let w = Tensor::<1>::random([d], Distribution::Normal(0.0, std), device).clamp(-3.0 * std, 3.0 * std);
                Param::from_tensor(w)
            }),
            gate_b: options.gate.then(|| Param::from_tensor(Tensor::zeros([1], device))),
            query_kernel: c_q,
            key_kernel: c_k,
            depth_scale: if options.depth_scale { 1.0 - lambda_init(options.layer) } else { 1.0 },
            base,
        }
    }

    /// Convolutions in this layer (0, 1 or 2).
    fn convs(&self) -> usize {
        usize::from(self.conv_pre.is_some()) + usize::from(self.conv_post.is_some())
    }

    /// Earlier queries a decode step needs: (c_q − 1) per convolution.
    pub fn kept_queries(&self) -> usize {
        (self.query_kernel - 1) * self.convs()
    }

    /// The depthwise key–query convolution of `a` `[b, H, r, s]` (the last r of s positions,
    /// masked entries already 0): past-side padding of c_q − 1 rows, (c_k − 1)/2 keys each side.
    /// On the CPU backend one fused op with its own backward ([`attnlab_kernels::map_conv`]).
    fn convolve(&self, a: Tensor<4>, kernel: &Param<Tensor<4>>) -> Tensor<4> {
        if attnlab_kernels::fused(&a) {
            return attnlab_kernels::map_conv(a, kernel.val());
        }
        map_conv_composed(a, kernel.val())
    }

    /// q·kᵀ/√d_h of q `[b, H, r, d]` over k `[b, g, s, d]` → `[b, H, r, s]`, without copying
    /// K: the queries of a K/V group are stacked along the rows (`[b, g, (H/g)·r, d]`, head
    /// i = group·(H/g) + j), as grouped-query attention does.
    fn grouped_scores(q: Tensor<4>, k: Tensor<4>) -> Tensor<4> {
        let [b, h, r, d] = q.dims();
        let [_, g, s, _] = k.dims();
        let q = (q * (1.0 / (d as f32).sqrt())).reshape([b, g, (h / g) * r, d]);
        q.matmul(k.swap_dims(2, 3)).reshape([b, h, r, s])
    }

    /// `P V` of maps p `[b, H, r, s]` and values v `[b, g, s, d]` → `[b, H, r, d]` (no copy of V).
    fn grouped_values(p: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
        let [b, h, r, s] = p.dims();
        let [_, g, _, d] = v.dims();
        p.reshape([b, g, (h / g) * r, s]).matmul(v).reshape([b, h, r, d])
    }

    /// The attention map of q `[b, H, r, d]` (the last r of s positions) over k `[b, g, s, d]`
    /// after every transform: `[b, H, r, s]` (rows need not sum to 1 after the post steps).
    fn map(&self, q: Tensor<4>, k: Tensor<4>) -> Tensor<4> {
        let [b, h, r, _] = q.dims();
        let s = k.dims()[2];
        let mask: Tensor<4, Bool> = causal_mask(r, s, &q.device()).unsqueeze::<4>().expand([b, h, r, s]);
        let mut a = Self::grouped_scores(q, k);
        if let Some(kernel) = &self.conv_pre {
            a = self.convolve(a.mask_fill(mask.clone(), 0.0), kernel);
        }
        if let Some(w) = &self.mix_pre {
            a = w.val().unsqueeze::<3>().expand([b, h, h]).matmul(a.reshape([b, h, r * s])).reshape([b, h, r, s]);
        }
        let mut p = softmax(a.mask_fill(mask.clone(), f32::NEG_INFINITY), 3);
        if let Some(kernel) = &self.conv_post {
            p = self.convolve(p, kernel).mask_fill(mask, 0.0);
        }
        if let Some(w) = &self.mix_post {
            let [groups, c, _] = w.dims();
            let wt = w.val().swap_dims(1, 2).unsqueeze::<4>().expand([b, groups, c, c]);
            p = wt.matmul(p.reshape([b, groups, c, r * s])).reshape([b, h, r, s]);
        }
        p
    }

    /// The layer's attention map for x `[b, t, d_model]`: `[b, H, t, t]`.
    pub fn attention_map(&self, x: Tensor<3>) -> Tensor<4> {
        let (q, k, _) = self.project(x, 0);
        self.map(q, k)
    }

    /// The raw scores q·kᵀ/√d_h of x `[b, t, d_model]` before any transform or mask:
    /// `[b, H, t, t]`.
    pub fn scores(&self, x: Tensor<3>) -> Tensor<4> {
        let (q, k, _) = self.project(x, 0);
        Self::grouped_scores(q, k)
    }

    /// Group norm, depth scale, gate and W_o of o `[b, H, t, d]` → `[b, t, d_model]`.
    fn finish(&self, o: Tensor<4>) -> Tensor<3> {
        let mut o = match &self.norm {
            Some(norm) => rms_norm(norm, o),
            None => o,
        };
        if self.depth_scale != 1.0 {
            o = o * self.depth_scale;
        }
        if let (Some(w), Some(bias)) = (&self.gate_w, &self.gate_b) {
            let z = (o.clone() * w.val().unsqueeze::<4>()).sum_dim(3) + bias.val().reshape([1, 1, 1, 1]);
            o = o * sigmoid(z);
        }
        apply(&self.base.out, merge_heads(o))
    }

    /// q `[b, H, t, d]` and k, v `[b, g, t, d]` of x for positions `start..`.
    fn project(&self, x: Tensor<3>, start: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        self.base.split_rotate(apply(&self.base.qkv, x), start)
    }

    /// Causal forward. x: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (q, k, v) = self.project(x, 0);
        self.finish(Self::grouped_values(self.map(q, k), v))
    }

    /// Empty state: the KV cache of `base` and room for the last [`Self::kept_queries`] queries.
    pub fn init_state(&self, batch: usize, capacity: usize, device: &Device) -> MtaState {
        let (g, h, d) = (self.base.kv_heads, self.base.heads, self.base.head_dim);
        let kept = self.kept_queries().min(capacity);
        MtaState {
            kv: KvCache { k: Tensor::zeros([batch, g, capacity, d], device), v: Tensor::zeros([batch, g, capacity, d], device), len: 0 },
            queries: (kept > 0).then(|| Tensor::zeros([batch, h, kept, d], device)),
        }
    }

    /// Feeds x: `[batch, new, d_model]`; recomputes the rows of the kept queries and the new
    /// ones over every cached key and returns the new rows.
    pub fn step(&self, x: Tensor<3>, state: &mut MtaState) -> Tensor<3> {
        let [b, new, _] = x.dims();
        let cache = &mut state.kv;
        let (start, end) = (cache.len, cache.len + new);
        assert!(end <= cache.k.dims()[2], "KV cache full: {end} tokens > capacity {}", cache.k.dims()[2]);
        let (q, k, v) = self.project(x, start);
        let range = [0..b, 0..self.base.kv_heads, start..end, 0..self.base.head_dim];
        write_in_place(&mut cache.k, range.clone(), k);
        write_in_place(&mut cache.v, range, v);
        cache.len = end;
        // The buffer holds positions start − kept..start (right-aligned); the live ones are the
        // last min(start, kept).
        let (rows, earlier) = match &mut state.queries {
            Some(buffer) => {
                let kept = buffer.dims()[2];
                let earlier = start.min(kept);
                let rows = if earlier == 0 { q.clone() } else { Tensor::cat(vec![buffer.clone().narrow(2, kept - earlier, earlier), q.clone()], 2) };
                let all = Tensor::cat(vec![buffer.clone(), q], 2);
                let total = all.dims()[2];
                *buffer = all.narrow(2, total - kept, kept);
                (rows, earlier)
            }
            None => (q, 0),
        };
        let (keys, values) = (cache.k.clone().narrow(2, 0, end), cache.v.clone().narrow(2, 0, end));
        let o = Self::grouped_values(self.map(rows, keys).narrow(2, earlier, new), values);
        self.finish(o)
    }

    /// The KV cache of `base` plus `min(keep, context)` queries `[H, d_h]`.
    pub fn state_bytes(&self, context: usize) -> usize {
        self.base.state_bytes(context) + self.kept_queries().min(context) * self.base.heads * self.base.head_dim * F32_BYTES
    }

    /// `base`'s FLOPs plus, per head and visible key, 2·c_q·c_k per convolution, 2H for the
    /// pre-softmax mixing and 2c_h for the post-softmax mixing; the gate 2·H·d_h.
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let h = self.base.heads;
        let per_entry = 2 * self.query_kernel * self.key_kernel * self.convs()
            + self.mix_pre.as_ref().map_or(0, |_| 2 * h)
            + self.mix_post.as_ref().map_or(0, |w| 2 * w.dims()[1]);
        let gate = self.gate_w.as_ref().map_or(0, |_| 2 * h * self.base.head_dim);
        self.base.flops_per_token(context) + (h * context * per_entry + gate) as u64
    }
}

/// The key–query convolution of maps a `[b, H, r, s]` with kernels `[H, 1, c_q, c_k]` from Burn's
/// ops (every device but the CPU backend): c_q − 1 zero rows on the past side, then a depthwise
/// `conv2d` (a cross-correlation) with (c_k − 1)/2 zero keys each side.
pub fn map_conv_composed(a: Tensor<4>, kernel: Tensor<4>) -> Tensor<4> {
    let [b, h, _, s] = a.dims();
    let [_, _, c_q, c_k] = kernel.dims();
    let a = if c_q > 1 { Tensor::cat(vec![Tensor::<4>::zeros([b, h, c_q - 1, s], &a.device()).cast(a.dtype()), a], 2) } else { a };
    conv2d(a, kernel, None, ConvOptions::new([1, 1], [0, (c_k - 1) / 2], [1, 1], h))
}
