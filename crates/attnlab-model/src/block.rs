//! One pre-norm decoder block: `x ← x + Mixer(RMSNorm(x))`, `x ← x + MLP(RMSNorm(x))`.

use attnlab_attn::{Attention, AuxLoss, AuxRequest, State};
use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::Tensor;

use attnlab_kernels::rms_norm;

use crate::mlp::Mlp;

#[derive(Module, Debug)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub mlp_norm: RmsNorm,
    pub mlp: Mlp,
}

/// Inverted dropout: zeroes each element with probability `p` and scales the rest by
/// 1/(1 − p); the identity when `p = 0` or outside training (a device without autodiff, as
/// evaluation and decode use). Draws from the device's seeded generator.
pub fn dropout<const D: usize>(x: Tensor<D>, p: f64) -> Tensor<D> {
    if p == 0.0 || !x.device().is_autodiff() {
        return x;
    }
    let keep = x.random_like(burn::tensor::Distribution::Bernoulli(1.0 - p));
    x * keep / (1.0 - p)
}

impl Block {
    /// x: `[batch, seq, d_model]`, causal; `dropout` on both branches before their residual
    /// adds (training only: see [`dropout`]).
    pub fn forward(&self, x: Tensor<3>, p: f64) -> Tensor<3> {
        let x = x.clone() + dropout(self.attn.forward(rms_norm(&self.attn_norm, x)), p);
        x.clone() + dropout(self.mlp.forward(rms_norm(&self.mlp_norm, x)), p)
    }

    /// [`Block::forward`] with the mixer's auxiliary losses (see [`Attention::forward_aux`]).
    pub fn forward_aux(&self, x: Tensor<3>, p: f64, aux: &AuxRequest) -> (Tensor<3>, Vec<(AuxLoss, Tensor<1>)>) {
        let (y, losses) = self.attn.forward_aux(rms_norm(&self.attn_norm, x.clone()), aux);
        let x = x + dropout(y, p);
        (x.clone() + dropout(self.mlp.forward(rms_norm(&self.mlp_norm, x)), p), losses)
    }

    /// Incremental forward of new tokens x: `[batch, new, d_model]` with this block's state.
    pub fn step(&self, x: Tensor<3>, state: &mut State) -> Tensor<3> {
        let x = x.clone() + self.attn.step(rms_norm(&self.attn_norm, x), state);
        x.clone() + self.mlp.forward(rms_norm(&self.mlp_norm, x))
    }
}
