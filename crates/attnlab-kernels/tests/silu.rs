//! The fused SiLU against Burn's own `silu` (an independent implementation), values and the
//! input gradient, on a shape with several parallel chunks and a ragged last one, and a strided
//! input. (Planted: `s·(1 + x·s)` in the backward fails `fused_silu_matches_burns_silu`.)

use attnlab_kernels::silu;
use burn::tensor::{Device, Distribution, Tensor};

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn fused_silu_matches_burns_silu() {
    let dev = Device::flex().autodiff();
    let x = Tensor::<3>::random([3, 17, 1021], Distribution::Normal(0.0, 4.0), &dev);
    let up = Tensor::<3>::random([3, 17, 1021], Distribution::Normal(0.0, 1.0), &dev);
    let run = |fused: bool| {
        let x = x.clone().require_grad();
        let y = if fused { silu(x.clone()) } else { burn::tensor::activation::silu(x.clone()) };
        let g = (y.clone() * up.clone()).sum().backward();
        (y, x.grad(&g).unwrap())
    };
    let ((y, dx), (y_ref, dx_ref)) = (run(true), run(false));
    assert!(max_abs_diff(y, y_ref) < 2e-5, "forward differs");
    assert!(max_abs_diff(dx, dx_ref) < 2e-5, "backward differs");
    let strided = Tensor::<3>::random([4, 9, 5], Distribution::Normal(0.0, 2.0), &Device::flex()).swap_dims(0, 2);
    assert!(max_abs_diff(silu(strided.clone()), burn::tensor::activation::silu(strided)) < 2e-5, "strided input differs");
}
