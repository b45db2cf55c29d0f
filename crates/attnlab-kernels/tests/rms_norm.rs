//! The fused RMSNorm against burn's `RmsNorm::forward` (values and both gradients), on rank 3
//! and 4 inputs, a strided input, and row counts that split unevenly into parallel tasks.

use attnlab_kernels::{fused, rms_norm};
use burn::module::Param;
use burn::nn::RmsNormConfig;
use burn::tensor::{Device, Distribution, Tensor};

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn values_and_gradients_match_burns_rms_norm() {
    let device = Device::flex().autodiff();
    for (rows, d) in [(3, 5), (12 * 64, 128), (1000, 33)] {
        let mut norm = RmsNormConfig::new(d).init(&device);
        // Non-trivial gamma, so its gradient and its product are both exercised.
        norm.gamma = Param::from_tensor(Tensor::random([d], Distribution::Normal(1.0, 0.5), &device));
        let x = Tensor::<3>::random([2, rows / 2 + 1, d], Distribution::Normal(0.5, 2.0), &device);
        let up = Tensor::<3>::random([2, rows / 2 + 1, d], Distribution::Normal(0.0, 1.0), &device);
        assert!(fused(&x), "the fused op must be the one under test");
        let run = |fused_op: bool| {
            let x = x.clone().require_grad();
            let y = if fused_op { rms_norm(&norm, x.clone()) } else { norm.forward(x.clone()) };
            let g = (y.clone() * up.clone()).sum().backward();
            (y, x.grad(&g).unwrap(), norm.gamma.grad(&g).unwrap())
        };
        let (y, dx, dg) = run(true);
        let (y_ref, dx_ref, dg_ref) = run(false);
        assert!(max_abs_diff(y, y_ref) < 1e-5, "{rows}×{d}: y differs");
        assert!(max_abs_diff(dx, dx_ref) < 1e-4, "{rows}×{d}: dx differs");
        let dg_diff = max_abs_diff(dg, dg_ref.clone());
        let dg_size = dg_ref.abs().max().into_scalar::<f32>();
        assert!(dg_diff < 1e-5 * dg_size.max(1.0) * 10.0, "{rows}×{d}: dγ differs by {dg_diff} (max {dg_size})");
    }
}

#[test]
fn strided_rank_four_and_untracked_inputs_work() {
    let device = Device::flex();
    let norm = RmsNormConfig::new(16).init(&device);
    let x = Tensor::<4>::random([2, 16, 7, 3], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 3);
    let diff = max_abs_diff(rms_norm(&norm, x.clone()), norm.forward(x));
    assert!(diff < 1e-5, "strided input differs by {diff}");
}
