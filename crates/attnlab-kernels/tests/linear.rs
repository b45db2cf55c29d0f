//! The fused bias-free linear op against Burn's `linear` (values and both gradients), for rank
//! 2 and 3 inputs, a transposed (strided) weight, and sizes on both sides of the threading cutoff.

use attnlab_kernels::{fused, linear};
use burn::tensor::{Device, Distribution, Tensor};

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn values_and_gradients_match_burns_linear() {
    let device = Device::flex().autodiff();
    // (rows split as [b, t], d_in, d_out): small (single-threaded) and large (threaded) products.
    for (b, t, d_in, d_out) in [(2, 5, 7, 3), (12, 64, 128, 384), (3, 100, 512, 128)] {
        let x = Tensor::<3>::random([b, t, d_in], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([d_in, d_out], Distribution::Normal(0.0, 0.1), &device);
        let up = Tensor::<3>::random([b, t, d_out], Distribution::Normal(0.0, 1.0), &device);
        assert!(fused(&x.clone().inner()), "the fused op must be the one under test");
        let run = |f: &dyn Fn(Tensor<3>, Tensor<2>) -> Tensor<3>| {
            let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
            let y = f(x.clone(), w.clone());
            let g = (y.clone() * up.clone()).sum().backward();
            (y, x.grad(&g).unwrap(), w.grad(&g).unwrap())
        };
        let (y, dx, dw) = run(&|x, w| linear(x, w));
        let (y_ref, dx_ref, dw_ref) = run(&|x, w| burn::tensor::module::linear(x, w, None));
        let tol = 1e-5 * (d_in as f32).sqrt() * 10.0;
        assert!(max_abs_diff(y.inner(), y_ref.inner()) < tol, "{b}×{t}×{d_in}→{d_out}: y differs");
        assert!(max_abs_diff(dx, dx_ref) < tol, "{b}×{t}×{d_in}→{d_out}: dx differs");
        let dw_diff = max_abs_diff(dw, dw_ref);
        assert!(dw_diff < tol * (b * t) as f32 / 10.0, "{b}×{t}×{d_in}→{d_out}: dw differs by {dw_diff}");
    }
}

#[test]
fn a_transposed_weight_and_rank_two_input_work() {
    let device = Device::flex().autodiff();
    let x = Tensor::<2>::random([33, 16], Distribution::Normal(0.0, 1.0), &device);
    let e = Tensor::<2>::random([65, 16], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let y = linear(x.clone(), e.clone().transpose());
    let y_ref = x.clone().matmul(e.clone().transpose());
    assert!(max_abs_diff(y.clone(), y_ref.clone()) < 1e-4);
    let g = y.sum().backward();
    let g_ref = y_ref.clone().sum().backward();
    assert!(max_abs_diff(e.grad(&g).unwrap(), e.grad(&g_ref).unwrap()) < 1e-4);
    // Without tracking, the same values.
    let plain = linear(x.clone().inner(), e.clone().inner().transpose());
    assert!(max_abs_diff(plain, y_ref.inner()) < 1e-4);
}
