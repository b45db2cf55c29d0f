//! The fused causal attention kernel against an independent f64 loop (forward) and against
//! Burn's own ops under autodiff (gradients), over shapes that cross the row blocks, stack
//! grouped-query heads along the rows and start at a cache offset.

use attnlab_kernels::{causal_attention, fused};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Distribution, Tensor};

fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// `[heads, rows, keys, d, dv]` cases with (t, offset): one block; ragged blocks (150 rows);
/// grouped-query stacking (rows = 3·t); decode-like (t = 5 queries after 20 cached keys).
const CASES: &[([usize; 5], usize, usize)] = &[
    ([2, 17, 17, 8, 8], 17, 0),
    ([3, 150, 150, 16, 12], 150, 0),
    ([2, 3 * 40, 40, 8, 8], 40, 0),
    ([2, 2 * 5, 25, 8, 4], 5, 20),
];

/// Naive f64 reference on flat `[heads, rows|keys, d]` data.
#[allow(clippy::too_many_arguments)]
fn reference(q: &[f32], k: &[f32], v: &[f32], [h, rows, keys, d, dv]: [usize; 5], t: usize, offset: usize, scale: f64) -> Vec<f32> {
    let mut out = vec![0.0f32; h * rows * dv];
    for head in 0..h {
        for r in 0..rows {
            let pos = offset + r % t;
            let scores: Vec<f64> = (0..=pos)
                .map(|j| (0..d).map(|c| q[(head * rows + r) * d + c] as f64 * k[(head * keys + j) * d + c] as f64).sum::<f64>() * scale)
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for c in 0..dv {
                let acc: f64 = weights.iter().enumerate().map(|(j, w)| w * v[(head * keys + j) * dv + c] as f64).sum();
                out[(head * rows + r) * dv + c] = (acc / total) as f32;
            }
        }
    }
    out
}

fn inputs(dims: [usize; 5], device: &Device) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [h, rows, keys, d, dv] = dims;
    let q = Tensor::random([1, h, rows, d], Distribution::Normal(0.0, 1.5), device);
    let k = Tensor::random([1, h, keys, d], Distribution::Normal(0.0, 1.5), device);
    let v = Tensor::random([1, h, keys, dv], Distribution::Normal(0.0, 1.0), device);
    (q, k, v)
}

#[test]
fn forward_matches_the_f64_reference() {
    let device = Device::flex();
    for &(dims, t, offset) in CASES {
        let (q, k, v) = inputs(dims, &device);
        assert!(fused(&q), "the fused kernel must be the one under test");
        let want = reference(&values(q.clone()), &values(k.clone()), &values(v.clone()), dims, t, offset, 0.3);
        let got = values(causal_attention(q, k, v, t, offset, 0.3, None));
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "{dims:?} t={t} offset={offset}: max |fused − reference| = {diff}");
    }
}

#[test]
fn strided_inputs_give_the_same_result() {
    let device = Device::flex();
    let (q, k, v) = inputs([2, 30, 30, 8, 8], &device);
    let want = values(causal_attention(q.clone(), k.clone(), v.clone(), 30, 0, 0.5, None));
    // Same values, transposed storage.
    let strided = |x: Tensor<4>| x.swap_dims(2, 3).into_data();
    let (qs, ks, vs) = (strided(q), strided(k), strided(v));
    let back = |data| Tensor::<4>::from_data(data, &device).swap_dims(2, 3);
    let got = values(causal_attention(back(qs), back(ks), back(vs), 30, 0, 0.5, None));
    assert_eq!(got, want);
}

/// The same attention from Burn's ops: `softmax(QKᵀ·scale masked) V`.
fn composed(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, t: usize, offset: usize, scale: f32) -> Tensor<4> {
    let [_, h, rows, _] = q.dims();
    let keys = k.dims()[2];
    let mask = Tensor::<2, Bool>::tril_mask([t, keys], offset as i64, &q.device()).repeat_dim(0, rows / t);
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let scores = scores.mask_fill(mask.unsqueeze::<4>().expand([1, h, rows, keys]), f32::NEG_INFINITY);
    softmax(scores, 3).matmul(v)
}

#[test]
fn gradients_match_burns_composed_ops() {
    let device = Device::flex().autodiff();
    for &(dims, t, offset) in CASES {
        let (q, k, v) = inputs(dims, &device);
        let w = Tensor::<4>::random([1, dims[0], dims[1], dims[4]], Distribution::Normal(0.0, 1.0), &device);
        let grads_of = |f: &dyn Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>| {
            let (q, k, v) = (q.clone().require_grad(), k.clone().require_grad(), v.clone().require_grad());
            let g = (f(q.clone(), k.clone(), v.clone()) * w.clone()).sum().backward();
            [q.grad(&g).unwrap(), k.grad(&g).unwrap(), v.grad(&g).unwrap()].map(values)
        };
        let ours = grads_of(&|q, k, v| causal_attention(q, k, v, t, offset, 0.3, None));
        let burns = grads_of(&|q, k, v| composed(q, k, v, t, offset, 0.3));
        for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(ours.iter().zip(&burns)) {
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            let size = b.iter().map(|x| x.abs()).fold(0.0, f32::max);
            assert!(diff < 1e-4 * size.max(1.0), "{dims:?} t={t} offset={offset}: {name} differs by {diff} (max |grad| {size})");
        }
        // Keys after the last query's position get no gradient.
        if offset + t < dims[2] {
            let dk = &ours[1];
            assert!(dk[(offset + t) * dims[3]..dims[2] * dims[3]].iter().all(|&x| x == 0.0));
        }
    }
}

#[test]
fn untracked_and_tracked_forward_agree() {
    let device = Device::flex().autodiff();
    let (q, k, v) = inputs([2, 20, 20, 8, 8], &device);
    let plain = values(causal_attention(q.clone(), k.clone(), v.clone(), 20, 0, 0.4, None));
    let tracked = values(causal_attention(q.require_grad(), k, v, 20, 0, 0.4, None));
    assert_eq!(plain, tracked);
}

/// A sliding window of `w` keys with `sinks` attention sinks, against Burn's ops with the same
/// rule written out as a mask: values and all three gradients, at an offset and across blocks.
#[test]
fn sliding_window_with_sinks_matches_the_masked_composed_ops() {
    use burn::tensor::TensorData;
    let device = Device::flex().autodiff();
    // (dims, t, offset, window, sinks)
    for &(dims, t, offset, w, sinks) in &[([2, 70, 70, 8, 8], 70, 0, 5, 0), ([2, 2 * 9, 30, 8, 4], 9, 21, 4, 2), ([1, 20, 20, 4, 4], 20, 0, 1, 3)] {
        let (q, k, v) = inputs(dims, &device);
        let [h, rows, keys, _, dv] = dims;
        let visible = |p: usize, j: usize| j <= p && (p - j < w || j < sinks);
        let hidden: Vec<bool> = (0..rows).flat_map(|r| (0..keys).map(move |j| (r, j))).map(|(r, j)| !visible(offset + r % t, j)).collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(hidden, [rows, keys]), &device);
        let masked = |q: Tensor<4>, k: Tensor<4>, v: Tensor<4>| {
            let scores = (q.matmul(k.swap_dims(2, 3)) * 0.3).mask_fill(mask.clone().unsqueeze::<4>().expand([1, h, rows, keys]), f32::NEG_INFINITY);
            softmax(scores, 3).matmul(v)
        };
        let up = Tensor::<4>::random([1, h, rows, dv], Distribution::Normal(0.0, 1.0), &device);
        let run = |f: &dyn Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>| {
            let (q, k, v) = (q.clone().require_grad(), k.clone().require_grad(), v.clone().require_grad());
            let y = f(q.clone(), k.clone(), v.clone());
            let g = (y.clone() * up.clone()).sum().backward();
            [values(y), values(q.grad(&g).unwrap()), values(k.grad(&g).unwrap()), values(v.grad(&g).unwrap())]
        };
        let ours = run(&|q, k, v| causal_attention(q, k, v, t, offset, 0.3, Some((w, sinks))));
        let want = run(&masked);
        for (name, (a, b)) in ["y", "dq", "dk", "dv"].iter().zip(ours.iter().zip(&want)) {
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(diff < 1e-4, "{dims:?} window {w} sinks {sinks}: {name} differs by {diff}");
        }
    }
}
