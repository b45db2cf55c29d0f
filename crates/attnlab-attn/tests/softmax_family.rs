//! Sliding window, fixed sparse, tiled, gated and differential attention against independent
//! references (dense visibility rules written out here, f64 loops), at odd lengths.

mod common;

use attnlab_attn::burn::module::{Module, Param};
use attnlab_attn::burn::tensor::{Distribution, Tensor};
use attnlab_attn::differential::lambda_init;
use attnlab_attn::{softmax_attention, tiled_attention, Attention, AttentionConfig, Differential};
use common::*;

const LENGTHS: [usize; 3] = [1, 7, 65];

/// Checks a grouped-query variant against [`gqa_reference`] with the rule `allows(head, q, k)`.
fn check(config: AttentionConfig, heads: usize, allows: &dyn Fn(usize, usize, usize) -> bool) {
    let d_model = 8 * heads;
    for t in LENGTHS {
        let m = grouped(&config, d_model, heads, 3);
        let x = random_input(2, t, d_model, 11, &cpu());
        let got = to_vec(m.forward(x.clone()));
        let want = gqa_reference(&m, &to_vec(x), 2, t, d_model, allows);
        let err = max_abs_diff(&got, &want);
        assert!(err < 1e-4, "{config:?} t={t}: max |diff| = {err}");
    }
}

#[test]
fn sliding_window_sees_the_last_window_tokens_and_the_global_ones() {
    for (window, global, kv_heads) in [(1, 0, None), (5, 0, None), (5, 2, Some(2)), (16, 3, Some(1))] {
        let config = AttentionConfig::SlidingWindow { window, global_tokens: global, kv_heads };
        check(config, 4, &|_, q, k| k <= q && (q - k < window || k < global));
    }
}

#[test]
fn sliding_window_at_least_as_long_as_the_sequence_is_full_causal_attention() {
    let t = 23;
    let mha = grouped(&AttentionConfig::Mha {}, 32, 4, 5);
    let swa = grouped(&AttentionConfig::SlidingWindow { window: t, global_tokens: 0, kv_heads: None }, 32, 4, 6).load_record(mha.clone().into_record());
    let x = random_input(2, t, 32, 1, &cpu());
    let err = max_abs_diff(&to_vec(mha.forward(x.clone())), &to_vec(swa.forward(x)));
    assert!(err < 1e-6, "window ≥ T differs from MHA by {err}");
}

#[test]
fn sliding_window_decode_in_chunks_crosses_the_ring_buffer_correctly() {
    let dev = cpu();
    let config = AttentionConfig::SlidingWindow { window: 4, global_tokens: 1, kv_heads: Some(2) };
    dev.seed(4);
    let m = config.init(32, 4, 64, ROPE_BASE as f32, &dev);
    let t = 29;
    let x = random_input(1, t, 32, 8, &dev);
    let full = to_vec(m.forward(x.clone()));
    for chunk in [3, 7] {
        let mut state = m.init_state(1, t, &dev);
        let parts: Vec<_> = (0..t).step_by(chunk).map(|p| m.step(x.clone().narrow(1, p, chunk.min(t - p)), &mut state)).collect();
        let err = max_abs_diff(&to_vec(Tensor::cat(parts, 1)), &full);
        assert!(err < 1e-4, "chunks of {chunk}: {err}");
        assert_eq!(state.bytes(), 2 * 2 * 8 * (4 + 1) * 4, "the ring holds window + global tokens");
    }
}

#[test]
fn fixed_sparse_gives_half_the_heads_a_local_and_half_a_strided_pattern() {
    for (block, stride, heads, kv_heads) in [(3, 4, 4, None), (8, 8, 4, Some(2)), (1, 2, 2, None)] {
        let config = AttentionConfig::FixedSparse { block, stride, kv_heads };
        check(config, heads, &|head, q, k| k <= q && if head < heads / 2 { q - k < block } else { (q - k) % stride == 0 });
    }
}

#[test]
fn gated_attention_multiplies_each_head_output_by_a_sigmoid_gate() {
    for kv_heads in [None, Some(2)] {
        check(AttentionConfig::Gated { kv_heads }, 4, &|_, q, k| k <= q);
    }
}

#[test]
fn tiled_attention_equals_naive_for_block_sizes_that_do_and_do_not_divide_t() {
    let dev = cpu();
    for t in LENGTHS {
        dev.seed(t as u64);
        let q = Tensor::<4>::random([2, 3, t, 8], Distribution::Normal(0.0, 1.0), &dev);
        let k = Tensor::<4>::random([2, 3, t, 8], Distribution::Normal(0.0, 1.0), &dev);
        let v = Tensor::<4>::random([2, 3, t, 6], Distribution::Normal(0.0, 1.0), &dev);
        let mask = attnlab_attn::mask::causal_mask(t, t, &dev).unsqueeze();
        let naive = to_vec(softmax_attention(q.clone(), k.clone(), v.clone(), Some(mask), 0.3));
        let pos: Vec<usize> = (0..t).collect();
        for (bq, bk) in [(1, 1), (3, 5), (16, 16), (64, 7), (128, 128)] {
            let tiled = to_vec(tiled_attention(q.clone(), k.clone(), v.clone(), &pos, &pos, 0.3, bq, bk));
            let err = max_abs_diff(&tiled, &naive);
            assert!(err < 1e-5, "t={t} blocks {bq}×{bk}: {err}");
        }
    }
}

#[test]
fn tiled_kind_equals_mha_and_gqa_with_the_same_weights() {
    for (kv_heads, named) in [(None, AttentionConfig::Mha {}), (Some(2), AttentionConfig::Gqa { kv_heads: 2 })] {
        for t in LENGTHS {
            let naive = grouped(&named, 32, 4, 9);
            let tiled = grouped(&AttentionConfig::Tiled { block_q: 5, block_k: 3, kv_heads }, 32, 4, 10).load_record(naive.clone().into_record());
            let x = random_input(2, t, 32, 2, &cpu());
            let err = max_abs_diff(&to_vec(naive.forward(x.clone())), &to_vec(tiled.forward(x)));
            assert!(err < 1e-5, "{named:?} t={t}: {err}");
        }
    }
}

/// Differential attention written out per head: `(w₁ − λ w₂) V`, RMSNorm, × (1 − λ_init), W_o.
fn differential_reference(m: &Differential, x: &[f64], t: usize, d_model: usize) -> Vec<f64> {
    let (h, d) = (m.heads, m.head_dim);
    let w_qkv = to_vec(m.qkv.weight.val());
    let w_out = to_vec(m.out.weight.val());
    let gamma = to_vec(m.head_norm.gamma.val());
    let dot = |a: &Param<Tensor<1>>, b: &Param<Tensor<1>>| to_vec(a.val()).iter().zip(to_vec(b.val())).map(|(x, y)| x * y).sum::<f64>().exp();
    let lambda_init = m.lambda_init as f64;
    let lambda = dot(&m.lambda_q1, &m.lambda_k1) - dot(&m.lambda_q2, &m.lambda_k2) + lambda_init;
    let qkv = matmul(x, t, d_model, &w_qkv, 3 * d_model);
    let mut concat = vec![0.0; t * d_model];
    for head in 0..h {
        let sub = |base: usize, i: usize, p: usize| rope(&cols(&qkv, 3 * d_model, p, base + (2 * head + i) * d, d), p, ROPE_BASE);
        let q1: Vec<_> = (0..t).map(|p| sub(0, 0, p)).collect();
        let q2: Vec<_> = (0..t).map(|p| sub(0, 1, p)).collect();
        let k1: Vec<_> = (0..t).map(|p| sub(d_model, 0, p)).collect();
        let k2: Vec<_> = (0..t).map(|p| sub(d_model, 1, p)).collect();
        let v: Vec<_> = (0..t).map(|p| cols(&qkv, 3 * d_model, p, 2 * d_model + head * 2 * d, 2 * d)).collect();
        let scale = 1.0 / (d as f64).sqrt();
        for i in 0..t {
            let w1 = weights(&q1, &k1, i, scale, &|i, j| j <= i);
            let w2 = weights(&q2, &k2, i, scale, &|i, j| j <= i);
            let w: Vec<f64> = w1.iter().zip(&w2).map(|(a, b)| a - lambda * b).collect();
            let o = rms_norm(&weighted_sum(&w, &v), &gamma, 1e-5);
            for (c, oc) in o.iter().enumerate() {
                concat[i * d_model + head * 2 * d + c] = oc * (1.0 - lambda_init);
            }
        }
    }
    matmul(&concat, t, d_model, &w_out, d_model)
}

fn differential(layer: usize, seed: u64) -> Differential {
    let dev = cpu();
    dev.seed(seed);
    let config = AttentionConfig::Differential {};
    match config.init_layer(32, 4, 128, ROPE_BASE as f32, layer, &dev) {
        Attention::Differential(m) => m,
        other => panic!("expected differential attention, got {other:?}"),
    }
}

#[test]
fn differential_attention_matches_the_per_head_reference() {
    for (layer, t) in [(0, 1), (1, 7), (5, 65)] {
        let m = differential(layer, 4);
        assert_eq!((m.heads, m.head_dim), (2, 8), "half the heads, baseline head width");
        let x = random_input(1, t, 32, 6, &cpu());
        let err = max_abs_diff(&to_vec(m.forward(x.clone())), &differential_reference(&m, &to_vec(x), t, 32));
        assert!(err < 1e-4, "layer {layer} t={t}: {err}");
    }
}

#[test]
fn differential_with_lambda_zero_is_plain_attention_on_the_first_query_key_pair() {
    let mut m = differential(0, 7);
    // λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init = 0 when both pairs are equal and λ_init = 0.
    m.lambda_init = 0.0;
    m.lambda_q2 = Param::from_tensor(m.lambda_q1.val());
    m.lambda_k2 = Param::from_tensor(m.lambda_k1.val());
    assert!(to_vec(m.lambda())[0].abs() < 1e-7);
    let (t, d_model, d) = (9, 32, 8);
    let x = random_input(1, t, d_model, 3, &cpu());
    let qkv = matmul(&to_vec(x.clone()), t, d_model, &to_vec(m.qkv.weight.val()), 3 * d_model);
    let gamma = to_vec(m.head_norm.gamma.val());
    let mut concat = vec![0.0; t * d_model];
    for head in 0..2 {
        let q: Vec<_> = (0..t).map(|p| rope(&cols(&qkv, 3 * d_model, p, 2 * head * d, d), p, ROPE_BASE)).collect();
        let k: Vec<_> = (0..t).map(|p| rope(&cols(&qkv, 3 * d_model, p, d_model + 2 * head * d, d), p, ROPE_BASE)).collect();
        let v: Vec<_> = (0..t).map(|p| cols(&qkv, 3 * d_model, p, 2 * d_model + head * 2 * d, 2 * d)).collect();
        for (i, o) in causal_head(&q, &k, &v, 1.0 / (d as f64).sqrt()).into_iter().enumerate() {
            concat[i * d_model + head * 2 * d..i * d_model + (head + 1) * 2 * d].copy_from_slice(&rms_norm(&o, &gamma, 1e-5));
        }
    }
    let want = matmul(&concat, t, d_model, &to_vec(m.out.weight.val()), d_model);
    let err = max_abs_diff(&to_vec(m.forward(x)), &want);
    assert!(err < 1e-4, "λ = 0 differs from attention on (Q₁, K₁): {err}");
}

#[test]
fn lambda_init_follows_the_papers_depth_schedule() {
    for (layer, want) in [(0, 0.2), (1, 0.8 - 0.6 * (-0.3f64).exp()), (10, 0.8 - 0.6 * (-3.0f64).exp())] {
        assert!((lambda_init(layer) as f64 - want).abs() < 1e-6, "layer {layer}");
    }
}

#[test]
fn new_kinds_reject_impossible_shapes_naming_the_field() {
    let cases = [
        (AttentionConfig::SlidingWindow { window: 0, global_tokens: 0, kv_heads: None }, "model.attention.window"),
        (AttentionConfig::SlidingWindow { window: 4, global_tokens: 0, kv_heads: Some(3) }, "model.attention.kv_heads"),
        (AttentionConfig::FixedSparse { block: 0, stride: 2, kv_heads: None }, "model.attention.block"),
        (AttentionConfig::FixedSparse { block: 2, stride: 0, kv_heads: None }, "model.attention.stride"),
        (AttentionConfig::Tiled { block_q: 0, block_k: 8, kv_heads: None }, "model.attention.block_q"),
        (AttentionConfig::Gated { kv_heads: Some(0) }, "model.attention.kv_heads"),
    ];
    for (config, field) in cases {
        let err = config.validate(32, 4).expect_err(&format!("{config:?} should be rejected"));
        assert_eq!(err.field, field, "{config:?}");
    }
    let err = AttentionConfig::Differential {}.validate(24, 3).expect_err("odd head count");
    assert_eq!(err.field, "model.heads");
}
