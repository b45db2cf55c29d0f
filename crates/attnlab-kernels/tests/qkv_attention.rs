//! The packed-QKV attention op against the same computation composed from Burn's ops (split,
//! rotate, masked softmax attention, merge): values and the gradient of qkv, for MHA, GQA and
//! MQA head layouts and a sequence longer than one row block.

use attnlab_kernels::{fused, qkv_attention};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Distribution, Tensor, TensorData};

fn tables(max: usize, half: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let angles: Vec<f32> = (0..max).flat_map(|p| (0..half).map(move |i| p as f32 * 10_000f32.powf(-(i as f32) / half as f32))).collect();
    let t = |f: fn(f32) -> f32| Tensor::<2>::from_data(TensorData::new(angles.iter().map(|&a| f(a)).collect::<Vec<_>>(), [max, half]), device);
    (t(f32::cos), t(f32::sin))
}

/// Reference: `[b, t, (h + 2g)·d]` → heads, RoPE on q and k, causal softmax attention with each
/// query head reading group `i / (h/g)`, heads merged back to `[b, t, h·d]`.
fn composed(qkv: Tensor<3>, cos: Tensor<2>, sin: Tensor<2>, h: usize, g: usize, scale: f32) -> Tensor<3> {
    let [b, t, w] = qkv.dims();
    let d = w / (h + 2 * g);
    let half = d / 2;
    let heads = |from: usize, n: usize| qkv.clone().narrow(2, from * d, n * d).reshape([b, t, n, d]).swap_dims(1, 2);
    let rotate = |x: Tensor<4>| {
        let (c, s) = (cos.clone().narrow(0, 0, t).unsqueeze::<4>(), sin.clone().narrow(0, 0, t).unsqueeze::<4>());
        let (x1, x2) = (x.clone().narrow(3, 0, half), x.narrow(3, half, half));
        Tensor::cat(vec![x1.clone() * c.clone() - x2.clone() * s.clone(), x2 * c + x1 * s], 3)
    };
    let (q, k, v) = (rotate(heads(0, h)), rotate(heads(h, g)), heads(h + g, g));
    // Repeat each kv group for its h/g query heads.
    let expand = |x: Tensor<4>| x.unsqueeze_dim::<5>(2).repeat_dim(2, h / g).reshape([b, h, t, d]);
    let (k, v) = (expand(k), expand(v));
    let mask = Tensor::<2, Bool>::tril_mask([t, t], 0, &qkv.device()).unsqueeze::<4>().expand([b, h, t, t]);
    let scores = (q.matmul(k.swap_dims(2, 3)) * scale).mask_fill(mask, f32::NEG_INFINITY);
    softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([b, t, h * d])
}

#[test]
fn values_and_qkv_gradient_match_the_composed_ops() {
    let device = Device::flex().autodiff();
    // (heads, kv_heads, head_dim, seq): MHA, GQA-2, MQA; 70 > one 64-row block.
    for (h, g, d, t) in [(4, 4, 8, 9), (4, 2, 8, 70), (4, 1, 6, 33)] {
        let (cos, sin) = tables(80, d / 2, &device);
        let qkv = Tensor::<3>::random([2, t, (h + 2 * g) * d], Distribution::Normal(0.0, 1.0), &device);
        let up = Tensor::<3>::random([2, t, h * d], Distribution::Normal(0.0, 1.0), &device);
        assert!(fused(&qkv), "the fused op must be the one under test");
        let run = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
            let qkv = qkv.clone().require_grad();
            let y = f(qkv.clone());
            let grads = (y.clone() * up.clone()).sum().backward();
            (y, qkv.grad(&grads).unwrap())
        };
        let (y, dqkv) = run(&|x| qkv_attention(x, cos.clone(), sin.clone(), h, g, 0.35, None));
        let (y_ref, dqkv_ref) = run(&|x| composed(x, cos.clone(), sin.clone(), h, g, 0.35));
        let diff = (y.inner() - y_ref.inner()).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "h={h} g={g} t={t}: values differ by {diff}");
        let gdiff = (dqkv - dqkv_ref).abs().max().into_scalar::<f32>();
        assert!(gdiff < 1e-4, "h={h} g={g} t={t}: d(qkv) differs by {gdiff}");
    }
}
