//! The fused key–query convolution (Multi-Token Attention) against Burn's own `conv2d` with the
//! same padding (past-side rows by concatenation, symmetric keys), values and gradients of
//! both inputs, for a kernel taller than the map, a 1 × 1 kernel, and r < s (a decode window).
//! Planted and seen to fail: the key offset off by one; dθ summed over heads instead of per head.
//! Half the kernel's taps are exactly 0 (MTA starts from an identity kernel): a backward that
//! skipped zero taps, as the forward may, would leave their gradient at 0.

use attnlab_kernels::{fused, map_conv};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};

fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn composed(x: Tensor<4>, w: Tensor<4>) -> Tensor<4> {
    let [b, h, _, s] = x.dims();
    let [_, _, cq, ck] = w.dims();
    let x = if cq > 1 { Tensor::cat(vec![Tensor::zeros([b, h, cq - 1, s], &x.device()), x], 2) } else { x };
    conv2d(x, w, None, ConvOptions::new([1, 1], [0, (ck - 1) / 2], [1, 1], h))
}

#[test]
fn values_and_gradients_match_burns_conv2d() {
    let device = Device::flex().autodiff();
    for (b, h, r, s, cq, ck) in [(2, 3, 9, 9, 3, 5), (1, 2, 4, 11, 6, 11), (2, 2, 7, 7, 1, 1), (1, 4, 3, 12, 2, 3)] {
        let x = Tensor::<4>::random([b, h, r, s], Distribution::Normal(0.0, 1.0), &device);
        // Half the taps exactly 0, as MTA's identity initialisation (a zero tap still has a
        // gradient).
        let w = Tensor::<4>::random([h, 1, cq, ck], Distribution::Normal(0.0, 1.0), &device);
        let w = w.clone().mask_fill(w.lower_elem(0.0), 0.0);
        let up = Tensor::<4>::random([b, h, r, s], Distribution::Normal(0.0, 1.0), &device);
        assert!(fused(&x.clone().inner()));
        let run = |f: &dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<4>| {
            let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
            let y = f(x.clone(), w.clone());
            let g = (y.clone() * up.clone()).sum().backward();
            (values(y), values(x.grad(&g).unwrap()), values(w.grad(&g).unwrap()))
        };
        let got = run(&|x, w| map_conv(x, w));
        let want = run(&|x, w| composed(x, w));
        let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        for (name, mine, theirs) in [("y", &got.0, &want.0), ("dx", &got.1, &want.1), ("dw", &got.2, &want.2)] {
            assert!(diff(mine, theirs) < 1e-5, "{name} at {:?}: relative difference {}", (b, h, r, s, cq, ck), diff(mine, theirs));
        }
    }
}
