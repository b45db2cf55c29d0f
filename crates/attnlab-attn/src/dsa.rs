//! DeepSeek Sparse Attention (DeepSeek-V3.2-Exp, 2025; `inference/model.py`, class `Indexer`)
//! on top of MLA ([`LatentAttention`]), DeepSeek's base, or of grouped-query attention
//! ([`GroupedQuery`], `kv_heads` set; the indexer's queries then read x and its RoPE covers
//! `rope_dim` dims). Everything below holds for both; "MLA" reads "the attention".
//!
//! A lightning indexer per layer scores every earlier key for each query:
//! `q^I = c_q W_qI` `[H_I, d_I]` (c_q = MLA's normalised query latent, or x without one),
//! `k^I = LayerNorm(x W_kI)` `[d_I]` (one key shared by the indexer heads; LayerNorm with bias,
//! ε 1e-6), RoPE (rotate-half) on the *first* d_R dims of both (d_R = MLA's `rope_dim`),
//! `w = x W_w · H_I^−½ · d_I^−½` `[H_I]` (no activation), and
//! `I_{t,s} = Σ_j w_{t,j} · ReLU(q^I_{t,j} · k^I_s)` for s ≤ t. Query t attends (MLA, all heads)
//! to `S_t` = the top-min(k, t + 1) keys s ≤ t by I_{t,s}, ties to the lower index, under the
//! causal mask as well (the selection never reaches the future). With `top_k ≥ T` the layer is
//! MLA (to float rounding: its masked softmax is another path than MLA's fused kernel).
//!
//! The selection is a constant mask: the LM loss never reaches the indexer. The indexer trains on
//! its own auxiliary loss (MECHANISMS.md §5), returned through [`crate::Attention::forward_aux`]:
//! - `indexer_kl_dense` (DeepSeek's dense warm-up): the main attention is **dense** (causal);
//!   `L_I = mean_t KL(p_t ‖ softmax(I_t))` with `p_t` the attention probabilities summed over heads
//!   and L1-normalised (stop-gradient), the softmax over all s ≤ t;
//! - `indexer_kl` (sparse training): the main attention is sparse; the same KL restricted to
//!   `S_t` (p from the sparse probabilities, the softmax of I over S_t);
//! - `indexer_recall` (a metric, not a loss): the fraction of the dense attention's per-row top-k
//!   keys (probabilities summed over heads) that the indexer selected, over rows with more than k
//!   keys.
//!
//! The indexer's inputs (x and c_q) are always detached, so L_I never trains the backbone (MLA's
//! `q_latent` and norms included), and p is detached, so it never trains the main attention. The
//! top-k selection runs on the host (ties broken the same way in `forward` and `step`).
//! Initialisation N(0, 0.02²) for W_qI, W_kI, W_w (a zero W_w would silence W_qI and W_kI).
//!
//! Decode: MLA's latent cache plus the indexer key per token, `(d_c + d_R + d_I)` floats per
//! token per layer (GQA: `2·g·d_h + d_I`); MLA's K/V are rebuilt from the cached latents (not
//! the absorbed form) and masked to the selected keys.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::{log_softmax, relu, softmax};
use burn::tensor::{Bool, DType, Device, Tensor, TensorData};

use crate::grouped_query::{merge_heads, repeat_heads, GroupedQuery};
use crate::latent::LatentAttention;
use crate::linear::{apply, linear};
use crate::rope::Rope;
use crate::state::{write_in_place, DsaState, KvCache};
use crate::F32_BYTES;

/// The lightning indexer.
#[derive(Module, Debug)]
pub struct Indexer {
    /// `c_q → H_I·d_I`.
    pub q: Linear,
    /// `d_model → d_I`, then [`Indexer::k_norm`].
    pub k: Linear,
    pub k_norm: LayerNorm,
    /// `d_model → H_I`.
    pub w: Linear,
    /// RoPE of the first d_R dims (`None` when MLA has no RoPE).
    pub rope: Option<Rope>,
    pub heads: usize,
    pub dim: usize,
}

impl Indexer {
    fn new(d_model: usize, q_in: usize, heads: usize, dim: usize, rope_dim: Option<usize>, max_seq: usize, rope_base: f32, device: &Device) -> Self {
        Self {
            q: linear(q_in, heads * dim, device),
            k: linear(d_model, dim, device),
            k_norm: LayerNormConfig::new(dim).with_epsilon(1e-6).init(device),
            w: linear(d_model, heads, device),
            rope: rope_dim.map(|r| Rope::new(r, max_seq, rope_base, device)),
            heads,
            dim,
        }
    }

    /// RoPE on the first d_R dims of x `[b, heads, t, d_I]` for positions `start..`.
    fn rotate(&self, x: Tensor<4>, start: usize) -> Tensor<4> {
        match &self.rope {
            None => x,
            Some(rope) => {
                let r = rope.dim();
                let rotated = rope.apply(x.clone().narrow(3, 0, r), start);
                Tensor::cat(vec![rotated, x.narrow(3, r, self.dim - r)], 3)
            }
        }
    }

    /// The indexer key `[b, t, d_I]` of positions `start..` (post-LayerNorm, post-RoPE).
    pub fn keys(&self, x: Tensor<3>, start: usize) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let k = self.k_norm.forward(apply(&self.k, x)).reshape([b, 1, t, self.dim]);
        self.rotate(k, start).reshape([b, t, self.dim])
    }

    /// Scores `[b, t, s]` of queries at positions `start..start + t` (inputs x `[b, t, d]`, c_q)
    /// over the keys `[b, s, d_I]` of positions `0..s`; −∞ where `future` `[t, s]` is true.
    pub fn scores(&self, x: Tensor<3>, c_q: Tensor<3>, keys: Tensor<3>, start: usize, future: Tensor<2, Bool>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let s = keys.dims()[1];
        let (h, d) = (self.heads, self.dim);
        let q = apply(&self.q, c_q).reshape([b, t, h, d]).swap_dims(1, 2);
        let q = self.rotate(q, start);
        let w = apply(&self.w, x) * (1.0 / ((h * d) as f32).sqrt());
        let dots = relu(q.matmul(keys.unsqueeze_dim::<4>(1).swap_dims(2, 3))); // [b, h, t, s]
        let scores = (dots * w.swap_dims(1, 2).unsqueeze_dim::<4>(3)).sum_dim(1).reshape([b, t, s]);
        scores.mask_fill(future.unsqueeze::<3>().expand([b, t, s]), f32::NEG_INFINITY)
    }
}

/// `[t, s]`, true where key s is after query `start + i`.
fn future(t: usize, s: usize, start: usize, device: &Device) -> Tensor<2, Bool> {
    let data: Vec<bool> = (0..t).flat_map(|i| (0..s).map(move |j| j > start + i)).collect();
    Tensor::from_data(TensorData::new(data, [t, s]), device)
}

/// The selected keys `[b][t][s]` of score rows `[b, t, s]` (−∞ = not allowed): the top
/// min(k, allowed) by score, ties to the lower index.
pub fn select(scores: &[f32], b: usize, t: usize, s: usize, k: usize) -> Vec<bool> {
    let mut out = vec![false; b * t * s];
    let mut order: Vec<usize> = Vec::with_capacity(s);
    for row in 0..b * t {
        let r = &scores[row * s..(row + 1) * s];
        order.clear();
        order.extend((0..s).filter(|&j| r[j] > f32::NEG_INFINITY));
        order.sort_by(|&i, &j| r[j].total_cmp(&r[i]).then(i.cmp(&j)));
        for &j in order.iter().take(k) {
            out[row * s + j] = true;
        }
    }
    out
}

/// The indexer's KL loss `mean_t KL(p_t ‖ softmax(I_t))` over the keys `allowed` `[b, t, s]`
/// marks, with `p_t` the attention probabilities `probs` `[b, h, t, s]` summed over heads and
/// L1-normalised (no gradient), and the softmax of the scores `index` `[b, t, s]` over the
/// allowed keys only. In f32 whatever the compute type (as the LM loss); p = 0 terms are 0
/// (xlogy). Returns the loss `[1]` and p `[b, t, s]`.
pub fn indexer_kl(probs: Tensor<4>, index: Tensor<3>, allowed: Tensor<3, Bool>) -> (Tensor<1>, Tensor<3>) {
    let [b, _, t, s] = probs.dims();
    let p = probs.detach().cast(DType::F32).sum_dim(1).reshape([b, t, s]);
    let p = p.clone() / p.sum_dim(2);
    let log_q = log_softmax(index.cast(DType::F32).mask_fill(allowed.clone().bool_not(), f32::NEG_INFINITY), 2).mask_fill(allowed.bool_not(), 0.0);
    let kl = (p.clone() * (p.clone().clamp_min(1e-30).log() - log_q)).sum_dim(2).mean().reshape([1]);
    (kl, p)
}

/// Which attention a forward uses and which indexer loss it computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexerLoss {
    None,
    /// Dense attention, KL over every earlier key.
    Dense,
    /// Sparse attention, KL over the selected keys.
    Sparse,
}

/// DeepSeek Sparse Attention: MLA (or grouped-query attention) whose queries see only their
/// indexer-selected keys. Exactly one of `mla` and `gqa` is set (two options rather than an
/// enum so that checkpoints of MLA-based DSA keep their parameter paths).
#[derive(Module, Debug)]
pub struct Dsa {
    pub mla: Option<LatentAttention>,
    pub gqa: Option<GroupedQuery>,
    pub indexer: Indexer,
    pub top_k: usize,
}

/// A forward's output `[b, t, d_model]` and, when asked, the indexer's KL `[1]` and recall.
pub struct DsaOutput {
    pub y: Tensor<3>,
    pub kl: Option<Tensor<1>>,
    pub recall: Option<f64>,
}

/// The attention under the selection: queries `[b, h, t, d_qk]` and keys, values of every head
/// `[b, h, s, ·]` (GQA's K/V heads repeated, MLA's rebuilt from the latents).
struct Heads {
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
}

impl Dsa {
    /// DSA on MLA (DeepSeek's): the indexer's queries read MLA's query input, its RoPE covers
    /// MLA's `rope_dim`.
    pub fn new(mla: LatentAttention, index_heads: usize, index_dim: usize, top_k: usize, max_seq: usize, rope_base: f32, device: &Device) -> Self {
        let d_model = mla.out.weight.dims()[1];
        let q_in = mla.q_latent.as_ref().map_or(d_model, |ql| ql.norm.gamma.dims()[0]);
        let rope_dim = mla.rope.as_ref().map(|r| r.dim());
        Self { indexer: Indexer::new(d_model, q_in, index_heads, index_dim, rope_dim, max_seq, rope_base, device), mla: Some(mla), gqa: None, top_k }
    }

    /// DSA on grouped-query attention: the indexer's queries read x, RoPE on its first
    /// `rope_dim` dims.
    #[allow(clippy::too_many_arguments)]
    pub fn on_grouped(gqa: GroupedQuery, index_heads: usize, index_dim: usize, rope_dim: usize, top_k: usize, max_seq: usize, rope_base: f32, device: &Device) -> Self {
        let d_model = gqa.out.weight.dims()[1];
        Self { indexer: Indexer::new(d_model, d_model, index_heads, index_dim, Some(rope_dim), max_seq, rope_base, device), mla: None, gqa: Some(gqa), top_k }
    }

    fn gqa(&self) -> Option<&GroupedQuery> {
        self.gqa.as_ref()
    }

    /// The MLA backbone; panics for DSA on GQA.
    pub fn mla(&self) -> &LatentAttention {
        self.mla.as_ref().expect("this dsa layer is on grouped-query attention, not MLA")
    }

    /// Causal training forward (sparse). x: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, IndexerLoss::None).y
    }

    /// The forward with the indexer loss `loss` (see the module doc).
    pub fn forward_with(&self, x: Tensor<3>, loss: IndexerLoss) -> DsaOutput {
        let keys = self.indexer.keys(x.clone().detach(), 0);
        let (c_q, heads) = match self.gqa() {
            Some(gqa) => {
                let (q, k, v) = gqa.split_rotate(apply(&gqa.qkv, x.clone()), 0);
                (x.clone(), self.grouped_heads(gqa, q, k, v))
            }
            None => {
                let mla = self.mla();
                let c_q = mla.query_input(x.clone());
                let q = mla.queries_from(c_q.clone(), 0);
                let (c_kv, k_r) = mla.latents(x.clone(), 0);
                let (k, v) = mla.keys_values(c_kv, k_r);
                (c_q, Heads { q, k, v })
            }
        };
        self.attend(x, c_q, heads, keys, 0, loss)
    }

    fn grouped_heads(&self, gqa: &GroupedQuery, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Heads {
        let r = gqa.heads / gqa.kv_heads;
        Heads { q, k: repeat_heads(k, r), v: repeat_heads(v, r) }
    }

    /// The score scale: MLA's `1/√(d_h + d_R)`, GQA's `1/√d_h`.
    fn scale(&self) -> f32 {
        match self.gqa() {
            Some(gqa) => 1.0 / (gqa.head_dim as f32).sqrt(),
            None => self.mla().scale(),
        }
    }

    /// Per-head outputs `[b, h, t, d_v]` through the output projection → `[b, t, d_model]`.
    fn output(&self, o: Tensor<4>) -> Tensor<3> {
        let out = match self.gqa() {
            Some(gqa) => &gqa.out,
            None => &self.mla().out,
        };
        apply(out, merge_heads(o))
    }

    /// Attention of the queries at positions `start..` over the keys and values and indexer
    /// keys of positions `0..s`.
    fn attend(&self, x: Tensor<3>, c_q: Tensor<3>, heads: Heads, keys: Tensor<3>, start: usize, loss: IndexerLoss) -> DsaOutput {
        let Heads { q, k, v } = heads;
        let [b, h, t, _] = q.dims();
        let s = k.dims()[2];
        let device = q.device();
        // The causal mask, built once on the host for the indexer, the attention and the losses.
        let future = future(t, s, start, &device);
        let index = self.indexer.scores(x.detach(), c_q.detach(), keys, start, future.clone());
        let index_host: Vec<f32> = index.clone().into_data().convert::<f32>().try_into_vec::<f32>().expect("scores");
        let selected = select(&index_host, b, t, s, self.top_k);
        let selected_mask = Tensor::<3, Bool>::from_data(TensorData::new(selected.clone(), [b, t, s]), &device);
        let scores = q.matmul(k.swap_dims(2, 3)) * self.scale();
        let causal = future.clone().unsqueeze::<4>().expand([b, h, t, s]);
        let visible = match loss {
            IndexerLoss::Dense => causal,
            _ => selected_mask.clone().bool_not().unsqueeze_dim::<4>(1).expand([b, h, t, s]),
        };
        let probs = softmax(scores.clone().mask_fill(visible, f32::NEG_INFINITY), 3);
        let y = self.output(probs.clone().matmul(v));
        if loss == IndexerLoss::None {
            return DsaOutput { y, kl: None, recall: None };
        }
        let allowed = match loss {
            IndexerLoss::Dense => future.clone().unsqueeze::<3>().expand([b, t, s]).bool_not(),
            _ => selected_mask,
        };
        let (kl, p) = indexer_kl(probs, index, allowed);
        let dense = match loss {
            IndexerLoss::Dense => p,
            _ => {
                let all = softmax(scores.detach().mask_fill(future.unsqueeze::<4>().expand([b, h, t, s]), f32::NEG_INFINITY), 3);
                all.sum_dim(1).reshape([b, t, s])
            }
        };
        let dense_host: Vec<f32> = dense.into_data().convert::<f32>().try_into_vec::<f32>().expect("probabilities");
        let recall = self.recall(&dense_host, &selected, b, t, s, start);
        DsaOutput { y, kl: Some(kl), recall }
    }

    /// The fraction of each row's dense top-k keys the indexer selected, over rows with more
    /// than k keys (`None` when there are none).
    fn recall(&self, dense: &[f32], selected: &[bool], b: usize, t: usize, s: usize, start: usize) -> Option<f64> {
        let masked: Vec<f32> = (0..b * t * s).map(|i| if (i % s) <= start + (i / s) % t { dense[i] } else { f32::NEG_INFINITY }).collect();
        let top = select(&masked, b, t, s, self.top_k);
        let (mut hit, mut total) = (0usize, 0usize);
        for row in 0..b * t {
            if start + row % t + 1 <= self.top_k {
                continue;
            }
            for j in 0..s {
                if top[row * s + j] {
                    total += 1;
                    hit += usize::from(selected[row * s + j]);
                }
            }
        }
        (total > 0).then(|| hit as f64 / total as f64)
    }

    /// Empty decode state: MLA's latent cache (or GQA's KV cache) and the indexer keys.
    pub fn init_state(&self, batch: usize, capacity: usize, device: &Device) -> DsaState {
        let kv = self.gqa().map(|g| {
            let shape = [batch, g.kv_heads, capacity, g.head_dim];
            KvCache { k: Tensor::zeros(shape, device), v: Tensor::zeros(shape, device), len: 0 }
        });
        DsaState { latent: self.mla.as_ref().map(|m| m.init_state(batch, capacity, device)), kv, keys: Tensor::zeros([batch, capacity, self.indexer.dim], device) }
    }

    /// Feeds x `[batch, new, d_model]` (prefill when new > 1).
    pub fn step(&self, x: Tensor<3>, state: &mut DsaState) -> Tensor<3> {
        let [b, new, _] = x.dims();
        let (start, end) = (state.len(), state.len() + new);
        assert!(end <= state.capacity(), "DSA cache full: {end} tokens > capacity {}", state.capacity());
        let keys = self.indexer.keys(x.clone(), start);
        write_in_place(&mut state.keys, [0..b, start..end, 0..self.indexer.dim], keys);
        let keys = state.keys.clone().narrow(1, 0, end);
        let (c_q, heads) = match (self.gqa(), &mut state.kv, &mut state.latent) {
            (Some(gqa), Some(cache), _) => {
                let (q, k, v) = gqa.split_rotate(apply(&gqa.qkv, x.clone()), start);
                let range = [0..b, 0..gqa.kv_heads, start..end, 0..gqa.head_dim];
                write_in_place(&mut cache.k, range.clone(), k);
                write_in_place(&mut cache.v, range, v);
                cache.len = end;
                (x.clone(), self.grouped_heads(gqa, q, cache.k.clone().narrow(2, 0, end), cache.v.clone().narrow(2, 0, end)))
            }
            (None, _, Some(cache)) => {
                let mla = self.mla();
                let c_q = mla.query_input(x.clone());
                let q = mla.queries_from(c_q.clone(), start);
                let (c_kv, k_r) = mla.latents(x.clone(), start);
                write_in_place(&mut cache.c_kv, [0..b, start..end, 0..mla.kv_latent], c_kv);
                write_in_place(&mut cache.k_rope, [0..b, start..end, 0..mla.rope_dim], k_r);
                cache.len = end;
                let (k, v) = mla.keys_values(cache.c_kv.clone().narrow(1, 0, end), cache.k_rope.clone().narrow(1, 0, end));
                (c_q, Heads { q, k, v })
            }
            _ => panic!("this decode state does not belong to this dsa layer"),
        };
        self.attend(x, c_q, heads, keys, start, IndexerLoss::None).y
    }

    /// Bytes of the decode state of one sequence: MLA's `(d_c + d_R)` (or GQA's `2·g·d_h`) plus
    /// the indexer key's `d_I` floats per token.
    pub fn state_bytes(&self, context: usize) -> usize {
        let base = match self.gqa() {
            Some(gqa) => gqa.state_bytes(context),
            None => self.mla().state_bytes(context),
        };
        base + self.indexer.dim * context * F32_BYTES
    }

    /// Forward FLOPs per token at `context`: the attention over min(k, context) keys, the
    /// indexer's projections and its scoring of every key.
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let ix = &self.indexer;
        let proj = ix.q.weight.shape().num_elements() + ix.k.weight.shape().num_elements() + ix.w.weight.shape().num_elements();
        let base = match self.gqa() {
            Some(gqa) => gqa.flops_per_token(context.min(self.top_k)),
            None => self.mla().flops_per_token(context.min(self.top_k)),
        };
        base + (2 * proj + 2 * ix.heads * ix.dim * context + 2 * ix.heads * context) as u64
    }
}
