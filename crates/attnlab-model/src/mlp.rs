//! The feed-forward sublayer. x: `[batch, seq, d_model]` → same shape.
//! SwiGLU: `W₂(SiLU(x W₁) ⊙ x W₃)` (Shazeer 2020), `up` holds `[W₁ | W₃]` fused.
//! GELU: `W₂ GELU_tanh(x W₁)` (GPT-2).

use attnlab_attn::linear;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::{sigmoid, silu};
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
        let h = self.up.forward(x);
        if self.gated {
            let hidden = h.dims()[2] / 2;
            let gate = silu(h.clone().narrow(2, 0, hidden));
            self.down.forward(gate * h.narrow(2, hidden, hidden))
        } else {
            self.down.forward(gelu_tanh(h))
        }
    }
}

/// GELU with the tanh approximation (GPT-2), written as `x·σ(2·√(2/π)·(x + 0.044715·x³))`
/// (since `0.5·(1 + tanh z) = σ(2z)`): the same function as Burn's `gelu_approximate`, without
/// its per-element `tanhf` and `powf` calls, which took ~28% of a CPU training step's profile.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;
    let cube = x.clone() * x.clone() * x.clone();
    let z = (x.clone() + cube * 0.044715) * TWO_SQRT_2_OVER_PI;
    x * sigmoid(z)
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::gelu_approximate;
    use burn::tensor::{Device, Distribution, Tensor};

    #[test]
    fn gelu_tanh_equals_burns_gelu_approximate_with_its_gradient() {
        let dev = Device::flex().autodiff();
        let x = Tensor::<2>::random([64, 33], Distribution::Normal(0.0, 3.0), &dev).require_grad();
        let (a, b) = (super::gelu_tanh(x.clone()), gelu_approximate(x.clone()));
        let diff = (a.clone() - b.clone()).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "values differ by {diff}");
        let ga = x.grad(&a.sum().backward()).unwrap();
        let gb = x.grad(&b.sum().backward()).unwrap();
        let gdiff = (ga - gb).abs().max().into_scalar::<f32>();
        assert!(gdiff < 1e-5, "gradients differ by {gdiff}");
    }
}
