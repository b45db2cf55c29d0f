//! Grouped-query attention; MHA (kv_heads = heads) and MQA (kv_heads = 1) are the same module.
//!
//! Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models".
//! `[q | k | v] = x W_qkv`, q: h heads, k/v: g heads; query head i uses K/V head ⌊i / (h/g)⌋:
//! `oᵢ = softmax(rope(qᵢ) rope(k_⌊i/r⌋)ᵀ / √d_h + causal) v_⌊i/r⌋`, `y = [o₁..o_h] W_o`.
//! K/V heads are never copied: queries of one group are stacked along the sequence axis,
//! q `[b, g, r·t, d_h]` against k `[b, g, s, d_h]`.
//!
//! The same module carries the softmax family's local and modified variants, each composing
//! with `kv_heads`: a visibility [`Pattern`] (sliding window with a ring-buffer cache, strided
//! and fixed sparse), a [`Kernel`] (naive or tiled online softmax) and an optional sigmoid output gate.

use burn::module::{Module, Param};
use burn::nn::{Linear, RmsNorm, RmsNormConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use crate::linear::{apply, linear};
use attnlab_kernels::rms_norm;
use crate::mask::Pattern;
use crate::rope::Rope;
use crate::softmax_attention::{causal_softmax_attention, softmax_attention};
use crate::state::{write_in_place, KvCache, State, WindowCache};
use crate::tiled_attention::tiled_attention;
use crate::F32_BYTES;

/// How the scores are computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The full score matrix ([`softmax_attention`]).
    Naive,
    /// Blockwise online softmax ([`tiled_attention`]); causal pattern only.
    Tiled { block_q: usize, block_k: usize },
}

/// Grouped-query attention with a fused QKV projection (no biases), a visibility [`Pattern`]
/// (causal, sliding window, strided or fixed sparse), a score [`Kernel`] and an optional output gate.
#[derive(Module, Debug)]
pub struct GroupedQuery {
    /// `d_model → (heads + 2·kv_heads)·head_dim`.
    pub qkv: Linear,
    /// `heads·head_dim → d_model`.
    pub out: Linear,
    /// Gated attention (Qiu et al. 2025): `d_model → heads·head_dim`; the SDPA output is
    /// multiplied elementwise by `σ(x W_θ)` before `out`.
    pub gate: Option<Linear>,
    /// Optional learnable bias of the gate, `[heads·head_dim]` (`gate_bias` in the config).
    pub gate_bias: Option<Param<Tensor<1>>>,
    /// Per-head RMSNorm of q and of k over d_h, before RoPE (Qwen3-Next's `q_norm`, `k_norm`).
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    /// Rotary embedding of the first `rope.dim()` dims of every head (all of them unless
    /// partial); `None`: NoPE.
    pub rope: Option<Rope>,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    #[module(skip)]
    pub pattern: Pattern,
    #[module(skip)]
    pub kernel: Kernel,
}

/// Builder options of [`GroupedQuery`] beyond its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub pattern: Pattern,
    pub kernel: Kernel,
    pub gated: bool,
    /// Initial value of a learnable gate bias (`None`: the paper's bias-free gate).
    pub gate_bias: Option<f64>,
    /// Rotated dims per head (even, ≤ head_dim; 0 = NoPE); `None`: all of them.
    pub rope_dims: Option<usize>,
    /// Per-head RMSNorm of q and k before RoPE.
    pub qk_norm: bool,
}

impl Default for Variant {
    fn default() -> Self {
        Self { pattern: Pattern::Causal, kernel: Kernel::Naive, gated: false, gate_bias: None, rope_dims: None, qk_norm: false }
    }
}

impl GroupedQuery {
    pub fn new(d_model: usize, heads: usize, kv_heads: usize, max_seq: usize, rope_base: f32, device: &Device) -> Self {
        Self::with_variant(d_model, heads, kv_heads, max_seq, rope_base, Variant::default(), device)
    }

    pub fn with_variant(
        d_model: usize,
        heads: usize,
        kv_heads: usize,
        max_seq: usize,
        rope_base: f32,
        variant: Variant,
        device: &Device,
    ) -> Self {
        let head_dim = d_model / heads;
        let rope_dims = variant.rope_dims.unwrap_or(head_dim);
        Self {
            qkv: linear(d_model, (heads + 2 * kv_heads) * head_dim, device),
            out: linear(heads * head_dim, d_model, device),
            gate: variant.gated.then(|| linear(d_model, heads * head_dim, device)),
            gate_bias: variant
                .gate_bias
                .filter(|_| variant.gated)
                .map(|b| Param::from_tensor(Tensor::full([heads * head_dim], b as f32, device))),
            q_norm: variant.qk_norm.then(|| RmsNormConfig::new(head_dim).init(device)),
            k_norm: variant.qk_norm.then(|| RmsNormConfig::new(head_dim).init(device)),
            rope: (rope_dims > 0).then(|| Rope::new(rope_dims, max_seq, rope_base, device)),
            heads,
            kv_heads,
            head_dim,
            pattern: variant.pattern,
            kernel: variant.kernel,
        }
    }

    /// The output gate `σ(x W_θ + b)` `[b, t, heads·d_h]`, when gated.
    fn gate_values(&self, x: &Tensor<3>) -> Option<Tensor<3>> {
        let w = self.gate.as_ref()?;
        let z = apply(w, x.clone());
        Some(sigmoid(match &self.gate_bias {
            Some(b) => z + b.val().unsqueeze::<3>(),
            None => z,
        }))
    }

    /// q `[b, heads, t, d_h]`, k and v `[b, kv_heads, t, d_h]`, rotated for positions `start..`,
    /// and the output gate `σ(x W_θ)` `[b, t, heads·d_h]` when gated.
    fn project(&self, x: Tensor<3>, start: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>, Option<Tensor<3>>) {
        let gate = self.gate_values(&x);
        let (q, k, v) = self.split_rotate(apply(&self.qkv, x), start);
        (q, k, v, gate)
    }

    /// q `[b, heads, t, d_h]`, k and v `[b, kv_heads, t, d_h]` from the QKV projection's output
    /// `[b, t, (heads + 2·kv_heads)·d_h]`: head split, q/k norms, RoPE for positions `start..`.
    pub fn split_rotate(&self, qkv: Tensor<3>, start: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [b, t, _] = qkv.dims();
        let (h, g, d) = (self.heads, self.kv_heads, self.head_dim);
        // [b, t, (h + 2g)·d] → [b, t, h + 2g, d] is free (contiguous); narrowing heads after it
        // keeps q, k, v as views until their first real use.
        let qkv = qkv.reshape([b, t, h + 2 * g, d]);
        let split = |from: usize, n: usize| qkv.clone().narrow(2, from, n).swap_dims(1, 2);
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(q_norm), Some(k_norm)) => (rms_norm(q_norm, split(0, h)), rms_norm(k_norm, split(h, g))),
            _ => (split(0, h), split(h, g)),
        };
        let v = split(h + g, g);
        (self.rotate(q, start), self.rotate(k, start), v)
    }

    /// RoPE on the first `rope.dim()` dims of each head of x `[b, heads, t, d_h]` (positions
    /// `start..`); the rest pass through.
    fn rotate(&self, x: Tensor<4>, start: usize) -> Tensor<4> {
        match &self.rope {
            None => x,
            Some(rope) if rope.dim() == self.head_dim => rope.apply(x, start),
            Some(rope) => {
                let r = rope.dim();
                let rotated = rope.apply(x.clone().narrow(3, 0, r), start);
                Tensor::cat(vec![rotated, x.narrow(3, r, self.head_dim - r)], 3)
            }
        }
    }

    /// Whether the fused CPU kernel computes this layer: full RoPE, no q/k norm, naive kernel
    /// and a pattern it covers.
    fn fusable(&self) -> bool {
        self.kernel == Kernel::Naive
            && self.fused_window().is_some()
            && self.q_norm.is_none()
            && self.rope.as_ref().is_some_and(|r| r.dim() == self.head_dim)
    }

    /// Attention of q `[b, h, t, d]` (positions `start..start + t`) over k, v `[b, g, s, d]`,
    /// then the gate and the output projection. `slots[j]` is the position of key j (`None` =
    /// empty); `None` means keys are positions `0..s`. Returns `[b, t, d_model]`.
    fn attend(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, gate: Option<Tensor<3>>, start: usize, slots: Option<&[Option<usize>]>) -> Tensor<3> {
        let [b, h, t, d] = q.dims();
        let s = k.dims()[2];
        let (g, r) = (self.kv_heads, h / self.kv_heads);
        let q = q.reshape([b, g, r * t, d]);
        let scale = 1.0 / (d as f32).sqrt();
        let o = match (&self.kernel, slots) {
            (Kernel::Tiled { block_q, block_k }, None) if self.pattern == Pattern::Causal => {
                // Row ρ of the stacked queries is query ρ mod t.
                let rows: Vec<usize> = (0..r * t).map(|row| start + row % t).collect();
                let keys: Vec<usize> = (0..s).collect();
                tiled_attention(q, k, v, &rows, &keys, scale, *block_q, *block_k)
            }
            (_, None) if self.pattern == Pattern::Causal => causal_softmax_attention(q, k, v, t, start, scale),
            (_, None) if attnlab_kernels::gpu_fused(&q) && self.fused_window().is_some() => {
                attnlab_kernels::gpu_causal_attention(q, k, v, t, start, scale, self.fused_window().flatten())
            }
            _ => {
                let keys: Vec<Option<usize>> = match slots {
                    Some(slots) => slots.to_vec(),
                    None => (0..s).map(Some).collect(),
                };
                let queries: Vec<usize> = (start..start + t).collect();
                let mask = self.pattern.mask(h, &queries, &keys, &q.device());
                // [1, t, s] → [1, r·t, s]; per-head [h, t, s] → [g, r·t, s] (head = group·r + i).
                let mask = if mask.dims()[0] == 1 { mask.repeat_dim(1, r) } else { mask.reshape([g, r * t, s]) };
                softmax_attention(q, k, v, Some(mask), scale)
            }
        };
        self.finish(o.reshape([b, h, t, d]), gate)
    }

    /// Per-head outputs o `[b, h, t, d_h]` → `[b, t, d_model]`: head merge, the output gate
    /// (when gated) and the output projection.
    pub fn finish(&self, o: Tensor<4>, gate: Option<Tensor<3>>) -> Tensor<3> {
        let o = merge_heads(o);
        let o = match gate {
            Some(gate) => o * gate,
            None => o,
        };
        apply(&self.out, o)
    }

    /// q `[b, heads, t, d_h]`, k and v `[b, kv_heads, t, d_h]` of x `[b, t, d_model]` as positions
    /// `start..start + t`, and the output gate (when gated): the projections an inference mode
    /// (Star Attention's phase 2) attends with in its own way before [`Self::finish`].
    pub fn project_at(&self, x: Tensor<3>, start: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>, Option<Tensor<3>>) {
        self.project(x, start)
    }

    /// Causal attention over a sequence made of `segments` `(length, first position)` laid end
    /// to end (Star Attention's phase 1: the anchor at positions `0..a`, then a context block
    /// at its own positions): RoPE by each token's position, visibility by order in x. Causal
    /// pattern only. Returns the output `[b, t, d_model]` and the rotated keys and the values
    /// `[b, kv_heads, t, d_h]` of every token.
    pub fn forward_segments(&self, x: Tensor<3>, segments: &[(usize, usize)]) -> (Tensor<3>, Tensor<4>, Tensor<4>) {
        assert_eq!(self.pattern, Pattern::Causal, "forward_segments: causal attention only");
        assert_eq!(segments.iter().map(|s| s.0).sum::<usize>(), x.dims()[1], "segments must cover x");
        let gate = self.gate_values(&x);
        let qkv = apply(&self.qkv, x);
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        let mut from = 0;
        for &(len, position) in segments.iter().filter(|s| s.0 > 0) {
            let (q, k, v) = self.split_rotate(qkv.clone().narrow(1, from, len), position);
            qs.push(q);
            ks.push(k);
            vs.push(v);
            from += len;
        }
        let (q, k, v) = (Tensor::cat(qs, 2), Tensor::cat(ks, 2), Tensor::cat(vs, 2));
        let y = self.attend(q, k.clone(), v.clone(), gate, 0, None);
        (y, k, v)
    }

    /// Causal forward. x: `[batch, seq, d_model]` → `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if self.fusable() && attnlab_kernels::fused(&x) {
            return self.forward_fused(x);
        }
        let (q, k, v, gate) = self.project(x, 0);
        self.attend(q, k, v, gate, 0, None)
    }

    /// [`Self::forward`] on the CPU backend: RoPE, head split, causal attention and head merge
    /// as one fused op on the QKV projection ([`attnlab_kernels::qkv_attention`]).
    fn forward_fused(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_values(&x);
        let (cos, sin) = self.rope.as_ref().expect("fusable: full RoPE").tables();
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let window = self.fused_window().expect("a pattern the fused kernel covers");
        let o = attnlab_kernels::qkv_attention(apply(&self.qkv, x), cos, sin, self.heads, self.kv_heads, scale, window);
        apply(&self.out, match gate {
            Some(gate) => o * gate,
            None => o,
        })
    }

    /// The fused CPU kernel's visibility for this pattern: `Some(None)` causal,
    /// `Some(Some((window, global)))` a sliding window with sinks, `None` not covered (strided).
    fn fused_window(&self) -> Option<Option<(usize, usize)>> {
        match self.pattern {
            Pattern::Causal => Some(None),
            Pattern::Window { window, global } => Some(Some((window, global))),
            Pattern::Strided { .. } | Pattern::Fixed { .. } => None,
        }
    }

    /// Tokens of K/V a sequence must keep: the window (plus the global tokens) for a sliding
    /// window, else everything.
    fn kept_tokens(&self) -> Option<usize> {
        match self.pattern {
            Pattern::Window { window, global } => Some(window + global),
            _ => None,
        }
    }

    /// Empty state for `batch` sequences of up to `capacity` tokens: a full KV cache, or a ring
    /// buffer of `global + window` slots for a sliding window.
    pub fn init_state(&self, batch: usize, capacity: usize, device: &Device) -> State {
        let slots = self.kept_tokens().map_or(capacity, |kept| kept.min(capacity));
        let shape = [batch, self.kv_heads, slots, self.head_dim];
        let (k, v) = (Tensor::zeros(shape, device), Tensor::zeros(shape, device));
        match self.pattern {
            Pattern::Window { window, global } => {
                State::Window(WindowCache { k, v, positions: vec![None; slots], window, global, capacity, len: 0 })
            }
            _ => State::Kv(KvCache { k, v, len: 0 }),
        }
    }

    /// Feeds x: `[batch, new, d_model]` and stores its keys/values in the state.
    pub fn step(&self, x: Tensor<3>, state: &mut State) -> Tensor<3> {
        match state {
            State::Kv(cache) => self.step_kv(x, cache),
            State::Window(cache) => self.step_window(x, cache),
            State::Latent(_) | State::Recurrent(_) | State::Lolcats(_) | State::Dsa(_) | State::Mta(_) | State::Mosa(_) => panic!("this decode state does not belong to grouped-query attention"),
        }
    }

    pub(crate) fn step_kv(&self, x: Tensor<3>, cache: &mut KvCache) -> Tensor<3> {
        let [b, new, _] = x.dims();
        let (start, end) = (cache.len, cache.len + new);
        assert!(end <= cache.k.dims()[2], "KV cache full: {end} tokens > capacity {}", cache.k.dims()[2]);
        let (q, k, v, gate) = self.project(x, start);
        let range = [0..b, 0..self.kv_heads, start..end, 0..self.head_dim];
        write_in_place(&mut cache.k, range.clone(), k);
        write_in_place(&mut cache.v, range, v);
        cache.len = end;
        let k = cache.k.clone().narrow(2, 0, end);
        let v = cache.v.clone().narrow(2, 0, end);
        self.attend(q, k, v, gate, start, None)
    }

    /// Attends over the ring buffer plus the new tokens, then keeps in the ring the new tokens a
    /// later query can still see (the global ones and the last `window`).
    fn step_window(&self, x: Tensor<3>, cache: &mut WindowCache) -> Tensor<3> {
        let [b, new, _] = x.dims();
        let (start, end) = (cache.len, cache.len + new);
        assert!(end <= cache.capacity, "window cache: {end} tokens > capacity {}", cache.capacity);
        let (q, k, v, gate) = self.project(x, start);
        let mut slots = cache.positions.clone();
        slots.extend((start..end).map(Some));
        let keys = Tensor::cat(vec![cache.k.clone(), k.clone()], 2);
        let values = Tensor::cat(vec![cache.v.clone(), v.clone()], 2);
        let y = self.attend(q, keys, values, gate, start, Some(&slots));
        // Runs of kept positions that land in consecutive slots: at most three writes.
        let kept: Vec<usize> = (start..end).filter(|&p| p < cache.global || p + cache.window >= end).collect();
        let mut runs: Vec<(usize, usize, usize)> = Vec::new(); // (first position, first slot, length)
        for p in kept {
            let slot = cache.slot(p);
            match runs.last_mut() {
                Some((_, s0, n)) if *s0 + *n == slot => *n += 1,
                _ => runs.push((p, slot, 1)),
            }
        }
        for (p0, s0, n) in runs {
            let range = [0..b, 0..self.kv_heads, s0..s0 + n, 0..self.head_dim];
            write_in_place(&mut cache.k, range.clone(), k.clone().narrow(2, p0 - start, n));
            write_in_place(&mut cache.v, range, v.clone().narrow(2, p0 - start, n));
            for i in 0..n {
                cache.positions[s0 + i] = Some(p0 + i);
            }
        }
        cache.len = end;
        y
    }

    /// Bytes of K and V for one sequence of `context` tokens: `2 · g · d_h · kept · 4`, where
    /// kept = context, or min(context, global + window) for a sliding window.
    pub fn state_bytes(&self, context: usize) -> usize {
        let kept = self.kept_tokens().map_or(context, |kept| kept.min(context));
        2 * self.kv_heads * self.head_dim * kept * F32_BYTES
    }

    /// Forward FLOPs per token at `context`: projections (2 per weight) plus
    /// `QKᵀ` and `AV` (2·h·d_h each per visible key).
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let proj = self.qkv.weight.shape().num_elements()
            + self.out.weight.shape().num_elements()
            + self.gate.as_ref().map_or(0, |g| g.weight.shape().num_elements());
        let visible = match self.pattern {
            Pattern::Causal => context,
            Pattern::Window { window, global } => context.min(window + global),
            // Half the heads see `block` keys, half see context / stride.
            Pattern::Strided { block, stride } => (context.min(block) + context.div_ceil(stride)) / 2,
            // At most its own block plus the summary columns of the earlier blocks.
            Pattern::Fixed { block, summary } => context.min(block) + (context.saturating_sub(1) / block) * summary,
        };
        (2 * proj + 4 * self.heads * self.head_dim * visible) as u64
    }
}

/// K/V heads `[b, g, t, d]` repeated to `g·r` query heads (head i reads group ⌊i / r⌋).
pub fn repeat_heads(x: Tensor<4>, r: usize) -> Tensor<4> {
    if r == 1 {
        return x;
    }
    let [b, g, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, g, r, t, d]).reshape([b, g * r, t, d])
}

/// Per-head outputs `[b, H, t, d]` → `[b, t, H·d]`.
pub fn merge_heads(o: Tensor<4>) -> Tensor<3> {
    let [b, h, t, d] = o.dims();
    o.swap_dims(1, 2).reshape([b, t, h * d])
}
