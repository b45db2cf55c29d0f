//! The feed-forward sublayer. x: `[batch, seq, d_model]` → same shape.
//! SwiGLU: `W₂(SiLU(x W₁) ⊙ x W₃)` (Shazeer 2020), `up` holds `[W₁ | W₃]` fused.
//! GELU: `W₂ GELU_tanh(x W₁)` (GPT-2).

use attnlab_attn::linear::{apply, linear};
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use crate::config::MlpKind;

#[derive(Module, Debug)]
pub struct Mlp {
    /// `d_model → hidden` (GELU) or `d_model → 2·hidden` (SwiGLU).
    pub up: Linear,
    /// `hidden → d_model`.
    pub down: Linear,
    pub gated: bool,
}

impl Mlp {
    pub fn new(kind: MlpKind, d_model: usize, hidden: usize, device: &Device) -> Self {
        let gated = kind == MlpKind::Swiglu;
        let up_width = if gated { 2 * hidden } else { hidden };
        Self { up: linear(d_model, up_width, device), down: linear(hidden, d_model, device), gated }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = apply(&self.up, x);
        if self.gated {
            let hidden = h.dims()[2] / 2;
            let gate = silu(h.clone().narrow(2, 0, hidden));
            apply(&self.down, gate * h.narrow(2, hidden, hidden))
        } else {
            apply(&self.down, gelu_tanh(h))
        }
    }
}

/// GELU with the tanh approximation (GPT-2): one fused kernel (and backward) on the CPU backend.
pub use attnlab_kernels::gelu_tanh;
