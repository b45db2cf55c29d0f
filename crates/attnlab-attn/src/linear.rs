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

/// Output columns `from..from + len` of [`apply`]: `x · W[:, from..from + len]`. Layers that keep
/// one fused input projection (one parameter, as the reference code) take their parts this
/// way: slicing the weight costs a `d_in × len` copy and its gradient a `d_in × d_out` buffer,
/// where slicing the output would cost a `[rows, d_out]` zero-filled buffer per part backward.
pub fn apply_columns<const D: usize>(layer: &Linear, x: Tensor<D>, from: usize, len: usize) -> Tensor<D> {
    debug_assert!(layer.bias.is_none(), "attnlab projections are bias-free");
    attnlab_kernels::linear(x, layer.weight.val().narrow(1, from, len))
}
