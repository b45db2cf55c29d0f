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

/// Output columns `from..from + len` of [`apply`]: `x · W[:, from..from + len]`.
pub fn apply_columns<const D: usize>(layer: &Linear, x: Tensor<D>, from: usize, len: usize) -> Tensor<D> {
    debug_assert!(layer.bias.is_none(), "attnlab projections are bias-free");
    attnlab_kernels::linear(x, layer.weight.val().narrow(1, from, len))
}

/// The column parts of one fused projection `x · W`, for layers that keep one parameter (as the
/// reference code) but use its output in parts. With `x` in an autodiff graph each part is its
/// own product with a slice of W ([`apply_columns`]): slicing the output instead would cost a
/// zero-filled `[rows, d_out]` buffer per part in the backward. Otherwise (decode, evaluation)
/// one product, sliced: slicing W would copy it on every decode step.
pub struct Columns<'a, const D: usize> {
    layer: &'a Linear,
    x: Tensor<D>,
    product: Option<Tensor<D>>,
}

impl<'a, const D: usize> Columns<'a, D> {
    pub fn new(layer: &'a Linear, x: Tensor<D>) -> Self {
        let product = (!x.is_tracked()).then(|| apply(layer, x.clone()));
        Self { layer, x, product }
    }

    /// Columns `from..from + len` of `x · W`.
    pub fn part(&self, from: usize, len: usize) -> Tensor<D> {
        match &self.product {
            Some(p) => p.clone().narrow(D - 1, from, len),
            None => apply_columns(self.layer, self.x.clone(), from, len),
        }
    }
}
