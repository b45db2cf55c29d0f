//! Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"), with fla's layer
//! choices (`fla/layers/linear_attn.py`).
//!
//! q, k, v = x W_q, x W_k, x W_v split into h heads of d_h; a feature map φ per head after the
//! split (elu+1, relu, identity, or fla's Hedgehog `softmax([2(xW + b), −2(xW + b)])` with
//! d_φ = 2·d_h, one learnable map shared by heads, separate for q and k).
//! Rule: `S_t = S_{t−1} + φ(k_t) v_tᵀ` (`d_φ × d_h` per head), current token included.
//! Output, default: `o_t = RMSNorm(φ(q_t)ᵀ S_t · d_φ^−½)` per head (one weight over d_h shared
//! by heads, eps 1e-5; fla's layer). `normalize = true`: `o_t = φ(q_t)ᵀS_t / (φ(q_t)ᵀz_t + 1e-6)`
//! with `z_t = Σ φ(k_s)`, carried as an extra column of ones in v (so S is `d_φ × (d_h + 1)`).
//! The RMSNorm is the default because the normaliser's denominator can approach 0
//! (fast-transformers #84 "diverges"; fla drops it). φ is applied before padding, so a ragged
//! last chunk cannot pollute the state handed to decode (Hedgehog's φ(0) ≠ 0).

use burn::module::{Module, Param};
use burn::nn::{Linear, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Device, Tensor};

use super::chunk::Rule;
use super::short_conv::ShortConv;
use super::{merge_heads, rule_flops, run_rule, split_heads, Recurrent};
use crate::config::FeatureMap;
use crate::linear::{apply, linear};
use crate::state::RecurrentState;
use attnlab_kernels::rms_norm;

/// ε of the normaliser's denominator.
const NORMALIZER_EPS: f64 = 1e-6;

/// One learnable Hedgehog map `softmax([2(xW + b), −2(xW + b)])`: W `[d_h, d_h]` = I, b = 0 at init.
#[derive(Module, Debug)]
pub struct HedgehogMap {
    pub weight: Param<Tensor<2>>,
    pub bias: Param<Tensor<1>>,
}

impl HedgehogMap {
    fn new(d: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::eye(d, device)),
            bias: Param::from_tensor(Tensor::zeros([d], device)),
        }
    }

    /// x `[b, h, t, d]` → `[b, h, t, 2d]`.
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let d = self.bias.dims()[0];
        let z = x.matmul(self.weight.val().reshape([1, 1, d, d])) + self.bias.val().reshape([1, 1, 1, d]);
        softmax(Tensor::cat(vec![z.clone() * 2.0, z * -2.0], 3), 3)
    }
}

/// The learnable maps of the Hedgehog feature map, one for queries and one for keys.
#[derive(Module, Debug)]
pub struct Hedgehog {
    pub q: HedgehogMap,
    pub k: HedgehogMap,
}

/// Linear attention with a fused QKV projection.
#[derive(Module, Debug)]
pub struct LinearAttention {
    /// `d → 3·h·d_h`.
    pub qkv: Linear,
    pub hedgehog: Option<Hedgehog>,
    /// Output RMSNorm over d_h (without the normaliser).
    pub norm: Option<RmsNorm>,
    /// `h·d_h → d`.
    pub out: Linear,
    pub heads: usize,
    pub head_dim: usize,
    #[module(skip)]
    pub map: FeatureMap,
    #[module(skip)]
    pub chunk: usize,
}

impl LinearAttention {
    pub fn new(d_model: usize, heads: usize, map: FeatureMap, normalize: bool, chunk: usize, device: &Device) -> Self {
        let d = d_model / heads;
        Self {
            qkv: linear(d_model, 3 * heads * d, device),
            hedgehog: (map == FeatureMap::Hedgehog).then(|| Hedgehog { q: HedgehogMap::new(d, device), k: HedgehogMap::new(d, device) }),
            norm: (!normalize).then(|| RmsNormConfig::new(d).with_epsilon(1e-5).init(device)),
            out: linear(heads * d, d_model, device),
            heads,
            head_dim: d,
            map,
            chunk,
        }
    }

    /// Width of φ(x): 2·d_h for Hedgehog, else d_h.
    pub fn feature_dim(&self) -> usize {
        if self.map == FeatureMap::Hedgehog {
            2 * self.head_dim
        } else {
            self.head_dim
        }
    }

    /// Columns of the state: d_h, plus the normaliser's z.
    fn state_cols(&self) -> usize {
        self.head_dim + usize::from(self.norm.is_none())
    }

    /// φ of queries (`key = false`) or keys, `[b, h, t, d_h]` → `[b, h, t, d_φ]`.
    pub(crate) fn phi(&self, x: Tensor<4>, key: bool) -> Tensor<4> {
        match (self.map, &self.hedgehog) {
            // elu(x) + 1 = relu(x) + e^{min(x, 0)}: two cheap passes, no masks.
            (FeatureMap::Elu1, _) => relu(x.clone()) + x.clamp_max(0.0).exp(),
            (FeatureMap::Relu, _) => relu(x),
            (FeatureMap::Identity, _) => x,
            (FeatureMap::Hedgehog, Some(maps)) => if key { maps.k.apply(x) } else { maps.q.apply(x) },
            (FeatureMap::Hedgehog, None) => unreachable!("a hedgehog map is built with its parameters"),
        }
    }

    /// Projections (2 per weight), the Hedgehog maps and the chunked rule per head.
    pub fn flops_per_token(&self, context: usize) -> u64 {
        let proj = self.qkv.weight.shape().num_elements() + self.out.weight.shape().num_elements();
        let maps = if self.hedgehog.is_some() { 2 * 2 * self.heads * self.head_dim * self.head_dim } else { 0 };
        let rule = self.heads * rule_flops(self.feature_dim(), self.state_cols(), self.chunk, context, false, false);
        (2 * proj + maps + rule) as u64
    }
}

impl Recurrent for LinearAttention {
    fn state_shape(&self) -> (usize, usize, usize) {
        (self.heads, self.feature_dim(), self.state_cols())
    }

    fn short_conv(&self) -> Option<&ShortConv> {
        None
    }

    fn mix(&self, x: Tensor<3>, state: &mut RecurrentState, fresh: bool) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, d) = (self.heads, self.head_dim);
        let qkv = apply(&self.qkv, x);
        let part = |i: usize| split_heads(qkv.clone().narrow(2, i * h * d, h * d), h);
        let q = self.phi(part(0), false);
        let k = self.phi(part(1), true);
        let v = match self.norm {
            Some(_) => part(2),
            None => Tensor::cat(vec![part(2), Tensor::ones([b, h, t, 1], (&qkv.device(), qkv.dtype()))], 3),
        };
        let scale = 1.0 / (self.feature_dim() as f64).sqrt();
        let o = run_rule(Rule { q, k, v, beta: None, g: None, l2: false, scale }, state, self.chunk, fresh);
        let o = match &self.norm {
            Some(norm) => rms_norm(norm, o),
            None => o.clone().narrow(3, 0, d) / (o.narrow(3, d, 1) + NORMALIZER_EPS),
        };
        // o is f32 after a half-precision training forward's recurrence: back to the weights' type.
        apply(&self.out, merge_heads(o).cast(qkv.dtype()))
    }
}
