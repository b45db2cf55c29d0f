//! Kimi Delta Attention (Kimi Team 2025, "Kimi Linear: An Expressive, Efficient Attention
//! Architecture"), as fla's layer (`fla/layers/kda.py`, `fla/ops/kda/naive.py`) builds it.
//!
//! Gated DeltaNet's front (short convs, SiLU, per-head L2-normalised q and k, scale d_k^−½,
//! β_t = σ(x W_β) per head, d_v = d_k by default) with two changes:
//! 1. **Per-channel decay** g_t ∈ R^{h×d_k}: `g = −e^{A_log_h} softplus(x W_f↓ W_f↑ + dt_bias)`,
//!    a low-rank gate (W_f↓: d → d_v, W_f↑: d_v → h·d_k), dt_bias per channel `[h·d_k]`, A_log per
//!    head `[h]`, A ~ U(1, 16). Rule: `S_t = (I − β_t k_t k_tᵀ) Diag(α_t) S_{t−1} + β_t k_t v_tᵀ`:
//!    Diag(α_t) scales the *key rows* of S (`d_k × d_v`), before the correction.
//! 2. **Output gate**: low-rank sigmoid, `W_o (RMSNorm(o) ⊙ σ(x W_g↓ W_g↑))` (no bias, as the tech
//!    report's Eq. 10).
//!
//! `lower_bound = lb` ∈ [−5, 0) switches to fla's bounded gate `g = lb·σ(e^{A_log}(raw + dt_bias))`
//! with A_log = 0 at init. Training: the chunked WY form with pairwise per-channel products
//! ([`Rule::chunked`]); decode: the recurrence. The state is Gated DeltaNet's.

use burn::module::{Module, Param};
use burn::nn::{Linear, RmsNorm, RmsNormConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use super::short_conv::ShortConv;
use super::{delta_heads, gates, rule_flops, Recurrent};
use crate::config::ConvInit;
use crate::linear::{apply, linear, Columns};
use crate::state::RecurrentState;

/// Kimi Delta Attention with one fused input projection.
#[derive(Module, Debug)]
pub struct Kda {
    /// `d → [q h·d_k | k h·d_k | v h·d_v | β h | f↓ d_v | g↓ d_v]`.
    pub proj: Linear,
    /// Over the q | k | v columns.
    pub conv: Option<ShortConv>,
    /// Decay gate up-projection `d_v → h·d_k`.
    pub f_up: Linear,
    /// Output gate up-projection `d_v → h·d_v`.
    pub g_up: Linear,
    /// `[h]`.
    pub a_log: Param<Tensor<1>>,
    /// `[h·d_k]`.
    pub dt_bias: Param<Tensor<1>>,
    /// Over d_v, shared by heads.
    pub norm: RmsNorm,
    /// `h·d_v → d`.
    pub out: Linear,
    pub heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
    #[module(skip)]
    pub lower_bound: Option<f64>,
    #[module(skip)]
    pub chunk: usize,
}

/// Shape and switches of a [`Kda`].
#[derive(Clone, Debug)]
pub struct KdaOptions {
    pub key_dim: usize,
    pub value_dim: usize,
    pub conv: bool,
    pub lower_bound: Option<f64>,
    pub conv_init: ConvInit,
    pub chunk: usize,
}

impl Kda {
    pub fn new(d_model: usize, heads: usize, o: KdaOptions, device: &Device) -> Self {
        let (h, dk, dv) = (heads, o.key_dim, o.value_dim);
        let qkv = 2 * h * dk + h * dv;
        let a_log = match o.lower_bound {
            Some(_) => Param::from_tensor(Tensor::zeros([h], device)),
            None => gates::a_log(h, 1.0, 16.0, device),
        };
        Self {
            proj: linear(d_model, qkv + h + 2 * dv, device),
            conv: o.conv.then(|| ShortConv::new(qkv, o.conv_init, device)),
            f_up: linear(dv, h * dk, device),
            g_up: linear(dv, h * dv, device),
            a_log,
            dt_bias: gates::dt_bias(h * dk, device),
            norm: RmsNormConfig::new(dv).with_epsilon(1e-5).init(device),
            out: linear(h * dv, d_model, device),
            heads,
            key_dim: dk,
            value_dim: dv,
            lower_bound: o.lower_bound,
            chunk: o.chunk,
        }
    }

    /// The per-channel log-decays `[b, t, h·d_k]` from the gate's low-rank input `[b, t, d_v]`.
    fn log_decay(&self, f_down: Tensor<3>) -> Tensor<3> {
        let (h, dk) = (self.heads, self.key_dim);
        let [b, t, _] = f_down.dims();
        let raw = apply(&self.f_up, f_down).reshape([b, t, h, dk]);
        let a_log = self.a_log.val().reshape([1, 1, h, 1]);
        let dt_bias = self.dt_bias.val().reshape([1, 1, h, dk]);
        let g = match self.lower_bound {
            Some(lb) => gates::bounded_log_decay(raw, a_log, dt_bias, lb as f32),
            None => gates::log_decay(raw, a_log, dt_bias),
        };
        g.reshape([b, t, h * dk])
    }

    /// Projections (2 per weight), the conv and the chunked rule with per-channel decays.
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let proj = [&self.proj, &self.f_up, &self.g_up, &self.out].iter().map(|l| l.weight.shape().num_elements()).sum::<usize>();
        let conv = self.conv.as_ref().map_or(0, |c| c.weight.shape().num_elements());
        let rule = self.heads * rule_flops(self.key_dim, self.value_dim, self.chunk, context, true, true);
        (2 * proj + 2 * conv + rule) as u64
    }
}

impl Recurrent for Kda {
    fn state_shape(&self) -> (usize, usize, usize) {
        (self.heads, self.key_dim, self.value_dim)
    }

    fn short_conv(&self) -> Option<&ShortConv> {
        self.conv.as_ref()
    }

    fn mix(&self, x: Tensor<3>, state: &mut RecurrentState, fresh: bool) -> Tensor<3> {
        let (h, dk, dv) = (self.heads, self.key_dim, self.value_dim);
        let width = 2 * h * dk + h * dv;
        let columns = Columns::new(&self.proj, x);
        let part = |from: usize, len: usize| columns.part(from, len);
        let beta = sigmoid(part(width, h));
        let g = self.log_decay(part(width + h, dv));
        let gate = sigmoid(apply(&self.g_up, part(width + h + dv, dv)));
        let o = delta_heads(part(0, width), self.conv.as_ref(), state, (h, h, dk), beta, g, true, &self.norm, self.chunk, fresh);
        apply(&self.out, o * gate)
    }
}
