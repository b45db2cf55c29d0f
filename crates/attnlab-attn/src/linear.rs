//! The projection every mixer and MLP uses: bias-free, weights ~ N(0, 0.02²) as GPT-2/nanoGPT.

use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

/// Std of the initial weights.
pub const INIT_STD: f64 = 0.02;

/// A bias-free `d_in → d_out` projection. Weight `[d_in, d_out]`.
pub fn linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_bias(false)
        .with_initializer(Initializer::Normal { mean: 0.0, std: INIT_STD })
        .init(device)
}

/// `x · W` through a bias-free [`linear`] layer, x: `[..., d_in]` → `[..., d_out]`: what
/// `Linear::forward` computes, as one fused op (with its backward) on the CPU backend.
pub fn apply<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    debug_assert!(layer.bias.is_none(), "attnlab projections are bias-free");
    attnlab_kernels::linear(x, layer.weight.val())
}
