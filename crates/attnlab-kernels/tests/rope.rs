//! The fused rotary embedding against a plain f64 rotation (values) and against the same
//! rotation composed from Burn's ops (gradients), at a position offset and on a strided input.

use attnlab_kernels::{fused, rope};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

const MAX: usize = 40;
const HALF: usize = 4;

fn tables(device: &Device) -> (Tensor<2>, Tensor<2>, Vec<f64>) {
    let angles: Vec<f64> = (0..MAX).flat_map(|p| (0..HALF).map(move |i| p as f64 * 10_000f64.powf(-(i as f64) / HALF as f64))).collect();
    let cos = angles.iter().map(|a| a.cos() as f32).collect::<Vec<_>>();
    let sin = angles.iter().map(|a| a.sin() as f32).collect::<Vec<_>>();
    let t = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [MAX, HALF]), device);
    (t(cos), t(sin), angles)
}

fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

#[test]
fn rotation_matches_the_f64_formula_at_an_offset() {
    let device = Device::flex();
    let (cos, sin, angles) = tables(&device);
    let (b, h, seq, start) = (2, 3, 9, 13);
    let x = Tensor::<4>::random([b, h, seq, 2 * HALF], Distribution::Normal(0.0, 1.0), &device);
    assert!(fused(&x));
    let (xs, ys) = (values(x.clone()), values(rope(x, cos, sin, start)));
    for row in 0..b * h * seq {
        let pos = start + row % seq;
        for i in 0..HALF {
            let a = angles[pos * HALF + i];
            let (x1, x2) = (xs[row * 2 * HALF + i] as f64, xs[row * 2 * HALF + HALF + i] as f64);
            let want = [x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin()];
            let got = [ys[row * 2 * HALF + i] as f64, ys[row * 2 * HALF + HALF + i] as f64];
            assert!((got[0] - want[0]).abs() < 1e-5 && (got[1] - want[1]).abs() < 1e-5, "row {row} pair {i}: {got:?} vs {want:?}");
        }
    }
}

#[test]
fn gradient_matches_burns_composed_rotation_and_strided_input_works() {
    let device = Device::flex().autodiff();
    let (cos, sin, _) = tables(&device);
    let (seq, start) = (11, 5);
    // A strided view, as attention's head split produces.
    let x = Tensor::<4>::random([2, seq, 3, 2 * HALF], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 2);
    let up = Tensor::<4>::random([2, 3, seq, 2 * HALF], Distribution::Normal(0.0, 1.0), &device);
    let composed = |x: Tensor<4>| {
        let c = cos.clone().narrow(0, start, seq).unsqueeze::<4>();
        let s = sin.clone().narrow(0, start, seq).unsqueeze::<4>();
        let (x1, x2) = (x.clone().narrow(3, 0, HALF), x.narrow(3, HALF, HALF));
        Tensor::cat(vec![x1.clone() * c.clone() - x2.clone() * s.clone(), x2 * c + x1 * s], 3)
    };
    let grad = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| {
        let x = x.clone().require_grad();
        let y = f(x.clone());
        let g = (y.clone() * up.clone()).sum().backward();
        (values(y), values(x.grad(&g).unwrap()))
    };
    let (y, dx) = grad(&|x| rope(x, cos.clone(), sin.clone(), start));
    let (y_ref, dx_ref) = grad(&composed);
    let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff(&y, &y_ref) < 1e-5, "values differ by {}", diff(&y, &y_ref));
    assert!(diff(&dx, &dx_ref) < 1e-5, "gradients differ by {}", diff(&dx, &dx_ref));
}
