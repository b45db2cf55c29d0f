//! The fused GELU against Burn's own `gelu_approximate` (an independent implementation),
//! values and gradients, on shapes that exercise the parallel chunks and strided inputs.

use attnlab_kernels::gelu::GeluBackend;
use attnlab_kernels::{gelu_tanh, vector_math};
use burn::backend::Dispatch;
use burn::tensor::activation::gelu_approximate;
use burn::tensor::{Device, Distribution, Tensor};

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn exp_and_sigmoid_match_f64_to_float_precision() {
    let mut worst_exp = 0.0f64;
    let mut worst_sigmoid = 0.0f64;
    for i in 0..=200_000 {
        let x = -87.0 + 175.0 * i as f32 / 200_000.0;
        let want = (x as f64).exp();
        worst_exp = worst_exp.max(((vector_math::exp(x) as f64 - want) / want).abs());
        let s = 1.0 / (1.0 + (-(x as f64)).exp());
        worst_sigmoid = worst_sigmoid.max((vector_math::sigmoid(x) as f64 - s).abs());
    }
    assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
    assert!(worst_sigmoid < 2e-7, "sigmoid absolute error {worst_sigmoid}");
    // Out of range: clamped, never NaN or infinite.
    assert!((0.0..1e-37).contains(&vector_math::exp(-1000.0)));
    assert!(vector_math::exp(1000.0).is_finite() && vector_math::exp(1000.0) > 1e38);
    assert!((0.0..1e-37).contains(&vector_math::sigmoid(-1000.0)));
    assert!((vector_math::sigmoid(1000.0) - 1.0).abs() < 1e-7);
}

#[test]
fn fused_gelu_matches_burns_gelu_approximate() {
    let dev = Device::flex();
    // 3·17·1021 elements: several parallel chunks and a ragged last one; wide range of inputs.
    let x = Tensor::<3>::random([3, 17, 1021], Distribution::Normal(0.0, 4.0), &dev);
    let diff = max_abs_diff(gelu_tanh(x.clone()), gelu_approximate(x.clone()));
    assert!(diff < 2e-5, "forward differs by {diff}");
    // A transposed (non-contiguous) input.
    let xt = x.clone().swap_dims(1, 2);
    let diff = max_abs_diff(gelu_tanh(xt.clone()), gelu_approximate(xt));
    assert!(diff < 2e-5, "strided forward differs by {diff}");
    // Sanity: the test can fail (GELU is not the identity on this data).
    assert!(max_abs_diff(gelu_tanh(x.clone()), x) > 0.1);
}

#[test]
fn fused_gelu_gradient_matches_burns() {
    let dev = Device::flex().autodiff();
    let x = Tensor::<2>::random([97, 301], Distribution::Normal(0.0, 3.0), &dev).require_grad();
    let w = Tensor::<2>::random([97, 301], Distribution::Normal(0.0, 1.0), &dev);
    let ours = x.grad(&(gelu_tanh(x.clone()) * w.clone()).sum().backward()).unwrap();
    let burns = x.grad(&(gelu_approximate(x.clone()) * w).sum().backward()).unwrap();
    let diff = max_abs_diff(ours, burns);
    assert!(diff < 2e-5, "gradient differs by {diff}");
}

#[test]
fn kernels_match_the_composed_default_bodies() {
    // On the plain Flex device the extension runs the fused kernels; on the autodiff device the
    // backward runs the trait's default body (composed backend ops). They must agree.
    let x = Tensor::<2>::random([64, 515], Distribution::Normal(0.0, 3.0), &Device::flex());
    let g = Tensor::<2>::random([64, 515], Distribution::Normal(0.0, 1.0), &Device::flex());
    let fused = Tensor::<2>::from_dispatch(Dispatch::gelu_tanh_backward(
        x.clone().into_dispatch(),
        g.clone().into_dispatch(),
    ));
    let ad = Device::flex().autodiff();
    let composed = Tensor::<2>::from_dispatch(Dispatch::gelu_tanh_backward(
        x.to_device(&ad).into_dispatch(),
        g.to_device(&ad).into_dispatch(),
    ));
    let diff = max_abs_diff(fused, composed.to_device(&Device::flex()));
    assert!(diff < 2e-5, "fused backward and composed backward differ by {diff}");
}
