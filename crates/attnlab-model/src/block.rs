//! One pre-norm decoder block: `x ← x + Mixer(RMSNorm(x))`, `x ← x + MLP(RMSNorm(x))`.

use attnlab_attn::{Attention, State};
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

impl Block {
    /// x: `[batch, seq, d_model]`, causal.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(rms_norm(&self.attn_norm, x));
        x.clone() + self.mlp.forward(rms_norm(&self.mlp_norm, x))
    }

    /// Incremental forward of new tokens x: `[batch, new, d_model]` with this block's state.
    pub fn step(&self, x: Tensor<3>, state: &mut State) -> Tensor<3> {
        let x = x.clone() + self.attn.step(rms_norm(&self.attn_norm, x), state);
        x.clone() + self.mlp.forward(rms_norm(&self.mlp_norm, x))
    }
}
