//! Gated DeltaNet (Yang, Kautz & Hatamizadeh, ICLR 2025, "Gated Delta Networks: Improving
//! Mamba2 with Delta Rule"), as fla's layer (`fla/layers/gated_deltanet.py`) builds it.
//!
//! x `[b, t, d]` → q = L2(SiLU(conv(x W_q))), k = L2(SiLU(conv(x W_k))) `[b, h, t, d_k]`,
//! v = SiLU(conv(x W_v)) `[b, h, t, d_v]` (d_v = expand_v · d_k; depthwise causal convs of kernel
//! 4 before the head split; L2 per head over d_k, after conv and SiLU); from the raw x:
//! β_t = σ(x W_β) `[b, h, t]`, g_t = −e^{A_log} softplus(x W_a + dt_bias) (one per head).
//! Rule: `S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ`, α = e^g, `o_t = S_tᵀ q_t / √d_k`
//! (S: `d_k × d_v`, post-update). Output: `W_o (RMSNorm(o) ⊙ SiLU(x W_g))`, one RMSNorm weight
//! over d_v shared by heads (eps 1e-5). Init: A ~ U(0, 16), dt log-uniform [1e-3, 0.1].
//! Training: the chunked WY form ([`Rule::chunked`]); decode: the recurrence, with the conv
//! tails in the state. Parameters: `d·(2·h_k·d_k + 2·h·d_v + 2h) + h·d_v·d` plus the conv
//! (h the value heads, h_k the key heads; equal unless grouped).
//!
//! Grouped value heads (Qwen3-Next, `value_heads = H_v`): q and k have H_k = `model.heads`
//! heads, v, β, the decay, the gate and the state H_v; value head j reads key head ⌊j / r⌋,
//! r = H_v / H_k (`repeat_interleave`: consecutive value heads share a key head, not a tiling).
//! The conv runs over the concatenated `[q; k; v]` channels `2·H_k·d_k + H_v·d_v`.

use burn::module::{Module, Param};
use burn::nn::{Linear, RmsNorm, RmsNormConfig};
use attnlab_kernels::silu;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use super::short_conv::ShortConv;
use super::{delta_heads, gates, rule_flops, Recurrent};
use crate::config::ConvInit;
use crate::linear::{apply, linear, Columns};
use crate::state::RecurrentState;

/// Gated DeltaNet with one fused input projection.
#[derive(Module, Debug)]
pub struct GatedDeltaNet {
    /// `d → [q h_k·d_k | k h_k·d_k | v h·d_v | β h | a h | gate h·d_v (when gated)]` (h the
    /// value heads, h_k the key heads).
    pub proj: Linear,
    /// Over the q | k | v columns.
    pub conv: Option<ShortConv>,
    /// `[h]`.
    pub a_log: Param<Tensor<1>>,
    /// `[h]`.
    pub dt_bias: Param<Tensor<1>>,
    /// Over d_v, shared by heads.
    pub norm: RmsNorm,
    /// `h·d_v → d`.
    pub out: Linear,
    /// Value heads (the state's heads).
    pub heads: usize,
    /// Query/key heads (= `heads` unless grouped).
    pub key_heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
    #[module(skip)]
    pub gated: bool,
    #[module(skip)]
    pub l2: bool,
    #[module(skip)]
    pub chunk: usize,
}

/// Shape and switches of a [`GatedDeltaNet`].
#[derive(Clone, Debug)]
pub struct GdnOptions {
    pub key_dim: usize,
    pub value_dim: usize,
    /// Value heads, a multiple of the layer's (key) heads.
    pub value_heads: usize,
    pub conv: bool,
    pub gate: bool,
    pub l2: bool,
    pub conv_init: ConvInit,
    pub chunk: usize,
}

impl GatedDeltaNet {
    pub fn new(d_model: usize, heads: usize, o: GdnOptions, device: &Device) -> Self {
        let (hk, h, dk, dv) = (heads, o.value_heads, o.key_dim, o.value_dim);
        assert!(h % hk == 0, "value heads {h} must be a multiple of the key heads {hk}");
        let qkv = 2 * hk * dk + h * dv;
        Self {
            proj: linear(d_model, qkv + 2 * h + if o.gate { h * dv } else { 0 }, device),
            conv: o.conv.then(|| ShortConv::new(qkv, o.conv_init, device)),
            a_log: gates::a_log(h, 0.0, 16.0, device),
            dt_bias: gates::dt_bias(h, device),
            norm: RmsNormConfig::new(dv).with_epsilon(1e-5).init(device),
            out: linear(h * dv, d_model, device),
            heads: h,
            key_heads: hk,
            key_dim: dk,
            value_dim: dv,
            gated: o.gate,
            l2: o.l2,
            chunk: o.chunk,
        }
    }

    /// Projections (2 per weight), the conv (2·K per channel) and the chunked rule
    /// ([`rule_flops`]) per head.
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let proj = self.proj.weight.shape().num_elements() + self.out.weight.shape().num_elements();
        let conv = self.conv.as_ref().map_or(0, |c| c.weight.shape().num_elements());
        let rule = self.heads * rule_flops(self.key_dim, self.value_dim, self.chunk, context, true, false);
        (2 * proj + 2 * conv + rule) as u64
    }
}

impl Recurrent for GatedDeltaNet {
    fn state_shape(&self) -> (usize, usize, usize) {
        (self.heads, self.key_dim, self.value_dim)
    }

    fn short_conv(&self) -> Option<&ShortConv> {
        self.conv.as_ref()
    }

    fn mix(&self, x: Tensor<3>, state: &mut RecurrentState, fresh: bool) -> Tensor<3> {
        let (h, dk, dv) = (self.heads, self.key_dim, self.value_dim);
        let width = 2 * self.key_heads * dk + h * dv;
        let columns = Columns::new(&self.proj, x);
        let part = |from: usize, len: usize| columns.part(from, len);
        let beta = sigmoid(part(width, h));
        let g = gates::log_decay(part(width + h, h), self.a_log.val().reshape([1, 1, h]), self.dt_bias.val().reshape([1, 1, h]));
        let gate = self.gated.then(|| silu(part(width + 2 * h, h * dv)));
        let o = delta_heads(part(0, width), self.conv.as_ref(), state, (self.key_heads, h, dk), beta, g, self.l2, &self.norm, self.chunk, fresh);
        apply(&self.out, match gate {
            Some(gate) => o * gate,
            None => o,
        })
    }
}
