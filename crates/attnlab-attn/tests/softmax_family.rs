//! Sliding window, strided and fixed sparse, tiled, gated and differential attention against
//! independent references (dense visibility rules written out here, f64 loops) with **peaked**
//! attention, at odd lengths, for the training forward and for cached decode; gradients
//! against finite differences of the references.
//!
//! Mutations planted and seen to fail (see `tests/README.md`):
//! - window off by one (`q − k ≤ window`) in the pattern → `sliding_window_sees_the_last_window_tokens_and_the_global_ones`;
//! - strided heads offset (`(q − k + 1) mod stride`) → `strided_sparse_gives_half_the_heads_a_local_and_half_a_strided_pattern`;
//! - fixed summary columns off by one (`k mod block > block − summary`) → `fixed_sparse_sees_its_block_and_the_summary_columns_of_earlier_blocks`;
//! - gate applied as `x W_θ` without the sigmoid, and the gate bias ignored → `gated_attention_multiplies_each_head_output_by_a_sigmoid_gate`;
//! - tiled: the running max not rescaled between key tiles → `tiled_attention_matches_the_reference_for_block_sizes_that_do_and_do_not_divide_t`;
//! - differential: λ added instead of subtracted, and the (1 − λ_init) factor dropped → `differential_attention_matches_the_per_head_reference`;
//! - Qwen3-Next's gated attention: RoPE on the last dims, RoPE before the q/k norm, k normed with q's
//!   gains, the fraction ignored → `qwen3_next_attention_normalises_q_and_k_per_head_then_rotates_a_fraction_of_the_dims`.

mod common;

use attnlab_attn::burn::module::Param;
use attnlab_attn::burn::tensor::{Distribution, Tensor};
use attnlab_attn::differential::lambda_init;
use attnlab_attn::{tiled_attention, Attention, AttentionConfig, Differential};
use common::*;

const LENGTHS: [usize; 3] = [1, 7, 65];

/// Checks a grouped-query variant against [`gqa_reference`] with the rule `allows(head, q, k)`,
/// with peaked attention: the training forward at odd lengths, cached decode at t = 29.
fn check(config: AttentionConfig, heads: usize, allows: &dyn Fn(usize, usize, usize) -> bool) {
    let d_model = 8 * heads;
    for t in LENGTHS {
        let m = sharpen(grouped(&config, d_model, heads, 3), SHARP);
        let x = random_input(2, t, d_model, 11, &cpu());
        let got = to_vec(m.forward(x.clone()));
        assert_matches_reference(&format!("{config:?} t={t}"), &got, || gqa_reference(&m, &to_vec(x), 2, t, d_model, allows));
    }
    let t = 29;
    let m = sharpen(grouped(&config, d_model, heads, 4), SHARP);
    let x = random_input(1, t, d_model, 12, &cpu());
    let want = gqa_reference(&m, &to_vec(x.clone()), 1, t, d_model, allows);
    let m = Attention::GroupedQuery(m);
    for prefill in [1, 10] {
        let err = rel_err(&to_vec(decode(&m, &x, prefill)), &want);
        assert!(err < 1e-4, "{config:?} decode after a prefill of {prefill}: relative error {err}");
    }
}

/// Gradients of a grouped-query variant against finite differences of [`gqa_reference`].
fn check_grads(config: AttentionConfig, allows: &dyn Fn(usize, usize, usize) -> bool) {
    let dev = cpu().autodiff();
    let (d_model, heads, t) = (32, 4, 11);
    let m = sharpen(grouped_on(&config, d_model, heads, 5, &dev), SHARP);
    let x = random_input(1, t, d_model, 6, &dev);
    check_gradients(&format!("{config:?}"), &m, x, &|m, x| m.forward(x), &|m, x| gqa_reference(m, x, 1, t, d_model, allows));
}

#[test]
fn sliding_window_sees_the_last_window_tokens_and_the_global_ones() {
    for (window, global, kv_heads) in [(1, 0, None), (5, 0, None), (5, 2, Some(2)), (16, 3, Some(1))] {
        let config = AttentionConfig::SlidingWindow { window, global_tokens: global, kv_heads };
        check(config, 4, &|_, q, k| k <= q && (q - k < window || k < global));
    }
    check_grads(AttentionConfig::SlidingWindow { window: 3, global_tokens: 1, kv_heads: Some(2) }, &|_, q, k| k <= q && (q - k < 3 || k < 1));
}

#[test]
fn sliding_window_decode_in_chunks_crosses_the_ring_buffer_correctly() {
    let dev = cpu();
    let config = AttentionConfig::SlidingWindow { window: 4, global_tokens: 1, kv_heads: Some(2) };
    let m = sharpen(grouped(&config, 32, 4, 4), SHARP);
    let t = 29;
    let x = random_input(1, t, 32, 8, &dev);
    let want = gqa_reference(&m, &to_vec(x.clone()), 1, t, 32, &|_, q, k| k <= q && (q - k < 4 || k < 1));
    let m = Attention::GroupedQuery(m);
    for chunk in [3, 7] {
        let mut state = m.init_state(1, t, &dev);
        let parts: Vec<_> = (0..t).step_by(chunk).map(|p| m.step(x.clone().narrow(1, p, chunk.min(t - p)), &mut state)).collect();
        let err = rel_err(&to_vec(Tensor::cat(parts, 1)), &want);
        assert!(err < 1e-4, "chunks of {chunk}: relative error {err}");
        assert_eq!(state.bytes(), 2 * 2 * 8 * (4 + 1) * 4, "the ring holds window + global tokens");
    }
}

#[test]
fn strided_sparse_gives_half_the_heads_a_local_and_half_a_strided_pattern() {
    for (block, stride, heads, kv_heads) in [(3, 4, 4, None), (8, 8, 4, Some(2)), (1, 2, 2, None)] {
        let config = AttentionConfig::StridedSparse { block, stride, kv_heads };
        check(config, heads, &|head, q, k| k <= q && if head < heads / 2 { q - k < block } else { (q - k) % stride == 0 });
    }
    check_grads(AttentionConfig::StridedSparse { block: 3, stride: 4, kv_heads: None }, &|head, q, k| k <= q && if head < 2 { q - k < 3 } else { (q - k) % 4 == 0 });
}

#[test]
fn fixed_sparse_sees_its_block_and_the_summary_columns_of_earlier_blocks() {
    for (block, summary, kv_heads) in [(4, 1, None), (5, 2, Some(2)), (8, 8, None), (1, 1, Some(1))] {
        let config = AttentionConfig::FixedSparse { block, summary: Some(summary), kv_heads, stride: None };
        // Same block, or one of the last `summary` positions of its block.
        check(config, 4, &|_, q, k| k <= q && (k / block == q / block || k % block + summary >= block));
    }
    check_grads(AttentionConfig::FixedSparse { block: 4, summary: Some(1), kv_heads: None, stride: None }, &|_, q, k| k <= q && (k / 4 == q / 4 || k % 4 == 3));
}

#[test]
fn gated_attention_multiplies_each_head_output_by_a_sigmoid_gate() {
    for (kv_heads, gate_bias) in [(None, None), (Some(2), None), (None, Some(3.0))] {
        check(AttentionConfig::Gated { kv_heads, gate_bias, partial_rope: None, qk_norm: false }, 4, &|_, q, k| k <= q);
    }
    check_grads(AttentionConfig::Gated { kv_heads: Some(2), gate_bias: Some(3.0), partial_rope: None, qk_norm: false }, &|_, q, k| k <= q);
}

/// Qwen3-Next's attention: per-head q/k RMSNorm (non-uniform gains, so the logits are peaked,
/// ≈ |γ_q||γ_k|/√d_h up to ≈ 10, and so the order norm → RoPE and q/k gains matter), then RoPE
/// on the first round(f·d_h) dims only; f = 0 is NoPE, f = 1 full RoPE.
fn qwen_gated(partial_rope: Option<f64>, qk_norm: bool, kv_heads: Option<usize>, seed: u64, dev: &attnlab_attn::burn::tensor::Device) -> attnlab_attn::GroupedQuery {
    let config = AttentionConfig::Gated { kv_heads, gate_bias: None, partial_rope, qk_norm };
    let mut m = sharpen(grouped_on(&config, 32, 4, seed, dev), SHARP);
    for (i, norm) in [&mut m.q_norm, &mut m.k_norm].into_iter().enumerate() {
        if let Some(norm) = norm {
            let gains = seeded(dev, seed + 10 + i as u64, || Tensor::<1>::random([8], Distribution::Uniform(2.0, 4.0), dev));
            norm.gamma = Param::from_tensor(gains.detach().set_require_grad(dev.is_autodiff()));
        }
    }
    m
}

/// Mutations planted and seen to fail: RoPE on the *last* round(f·d_h) dims; RoPE before the
/// q/k norm; k normalised with q's gains; the partial fraction ignored (all dims rotated).
#[test]
fn qwen3_next_attention_normalises_q_and_k_per_head_then_rotates_a_fraction_of_the_dims() {
    let dev = cpu();
    for (partial, qk_norm, kv_heads) in [(Some(0.25), true, Some(2)), (Some(0.5), false, None), (Some(0.0), true, None), (Some(1.0), true, Some(1)), (None, true, None)] {
        let m = qwen_gated(partial, qk_norm, kv_heads, 3, &dev);
        // The reference follows the module's tables and norms: check them against the config.
        assert_eq!(m.rope.as_ref().map_or(0, |r| r.dim()), (partial.unwrap_or(1.0) * 8.0) as usize, "rotated dims");
        assert_eq!((m.q_norm.is_some(), m.k_norm.is_some()), (qk_norm, qk_norm), "q/k norms");
        let allows = |_: usize, q: usize, k: usize| k <= q;
        for t in LENGTHS {
            let x = random_input(2, t, 32, 11, &dev);
            let got = to_vec(m.forward(x.clone()));
            assert_matches_reference(&format!("partial {partial:?} qk_norm {qk_norm} t={t}"), &got, || gqa_reference(&m, &to_vec(x), 2, t, 32, &allows));
        }
        let t = 29;
        let x = random_input(1, t, 32, 12, &dev);
        let want = gqa_reference(&m, &to_vec(x.clone()), 1, t, 32, &allows);
        let m = Attention::GroupedQuery(m);
        for prefill in [1, 10] {
            let err = rel_err(&to_vec(decode(&m, &x, prefill)), &want);
            assert!(err < 1e-4, "partial {partial:?} decode after a prefill of {prefill}: relative error {err}");
        }
    }
    let ad = cpu().autodiff();
    let m = qwen_gated(Some(0.25), true, Some(2), 5, &ad);
    let x = random_input(1, 11, 32, 6, &ad);
    check_gradients("qwen3-next gated", &m, x, &|m, x| m.forward(x), &|m, x| gqa_reference(m, x, 1, 11, 32, &|_, q, k| k <= q));
}

#[test]
fn a_gate_bias_starts_the_gate_at_sigmoid_of_the_bias() {
    let m = grouped(&AttentionConfig::Gated { kv_heads: None, gate_bias: Some(3.0), partial_rope: None, qk_norm: false }, 32, 4, 1);
    let b = to_vec(m.gate_bias.as_ref().expect("a gate bias").val());
    assert_eq!(b.len(), 32);
    assert!(b.iter().all(|v| (*v - 3.0).abs() < 1e-7));
    assert!(grouped(&AttentionConfig::Gated { kv_heads: None, gate_bias: None, partial_rope: None, qk_norm: false }, 32, 4, 1).gate_bias.is_none(), "the paper's gate has no bias");
}

#[test]
fn tiled_kind_matches_the_reference() {
    for kv_heads in [None, Some(2)] {
        check(AttentionConfig::Tiled { block_q: 5, block_k: 3, kv_heads }, 4, &|_, q, k| k <= q);
    }
    check_grads(AttentionConfig::Tiled { block_q: 4, block_k: 3, kv_heads: None }, &|_, q, k| k <= q);
}

#[test]
fn tiled_attention_matches_the_reference_for_block_sizes_that_do_and_do_not_divide_t() {
    let dev = cpu();
    let (b, h, dk, dv, scale) = (2, 3, 8, 6, 1.0);
    for t in LENGTHS {
        let (q, k, v) = seeded(&dev, t as u64, || {
            let q = Tensor::<4>::random([b, h, t, dk], Distribution::Normal(0.0, 1.0), &dev);
            let k = Tensor::<4>::random([b, h, t, dk], Distribution::Normal(0.0, 1.0), &dev);
            (q, k, Tensor::<4>::random([b, h, t, dv], Distribution::Normal(0.0, 1.0), &dev))
        });
        let rows = |x: &Tensor<4>, bi: usize, hi: usize, d: usize| -> Vec<Vec<f64>> {
            let all = to_vec(x.clone().narrow(0, bi, 1).narrow(1, hi, 1));
            all.chunks(d).map(|c| c.to_vec()).collect()
        };
        reset_rows();
        let mut want = Vec::new();
        for bi in 0..b {
            for hi in 0..h {
                want.extend(causal_head(&rows(&q, bi, hi, dk), &rows(&k, bi, hi, dk), &rows(&v, bi, hi, dv), scale).into_iter().flatten());
            }
        }
        if t > 7 {
            assert_peaked(&format!("t={t}"), 2.5);
        }
        let pos: Vec<usize> = (0..t).collect();
        for (bq, bk) in [(1, 1), (3, 5), (16, 16), (64, 7), (128, 128)] {
            let tiled = to_vec(tiled_attention(q.clone(), k.clone(), v.clone(), &pos, &pos, scale as f32, bq, bk));
            let err = rel_err(&tiled, &want);
            assert!(err < 1e-5, "t={t} blocks {bq}×{bk}: relative error {err}");
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
    differential_on(layer, seed, &cpu())
}

fn differential_on(layer: usize, seed: u64, dev: &attnlab_attn::burn::tensor::Device) -> Differential {
    let config = AttentionConfig::Differential {};
    match seeded(dev, seed, || config.init_layer(32, 4, 128, ROPE_BASE as f32, layer, dev)) {
        Attention::Differential(m) => sharpen(m, SHARP),
        other => panic!("expected differential attention, got {other:?}"),
    }
}

#[test]
fn differential_attention_matches_the_per_head_reference() {
    for (layer, t) in [(0, 1), (1, 7), (5, 65)] {
        let m = differential(layer, 4);
        assert_eq!((m.heads, m.head_dim), (2, 8), "half the heads, baseline head width");
        let x = random_input(1, t, 32, 6, &cpu());
        reset_rows();
        let want = differential_reference(&m, &to_vec(x.clone()), t, 32);
        if t > 7 {
            assert_peaked(&format!("layer {layer} t={t}"), 2.5);
        }
        let err = rel_err(&to_vec(m.forward(x.clone())), &want);
        assert!(err < 1e-4, "layer {layer} t={t}: relative error {err}");
        if t > 1 {
            let err = rel_err(&to_vec(decode(&Attention::Differential(m.clone()), &x, 3)), &want);
            assert!(err < 1e-4, "layer {layer} t={t} decode: relative error {err}");
        }
    }
}

#[test]
fn differential_gradients_match_finite_differences_of_the_reference() {
    let dev = cpu().autodiff();
    let t = 9;
    let m = differential_on(2, 8, &dev);
    let x = random_input(1, t, 32, 9, &dev);
    check_gradients("differential", &m, x, &|m, x| m.forward(x), &|m, x| differential_reference(m, x, t, 32));
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
    let err = rel_err(&to_vec(m.forward(x)), &want);
    assert!(err < 1e-4, "λ = 0 differs from attention on (Q₁, K₁): relative error {err}");
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
        (AttentionConfig::StridedSparse { block: 0, stride: 2, kv_heads: None }, "model.attention.block"),
        (AttentionConfig::StridedSparse { block: 2, stride: 0, kv_heads: None }, "model.attention.stride"),
        (AttentionConfig::FixedSparse { block: 0, summary: Some(1), kv_heads: None, stride: None }, "model.attention.block"),
        (AttentionConfig::FixedSparse { block: 4, summary: Some(5), kv_heads: None, stride: None }, "model.attention.summary"),
        (AttentionConfig::FixedSparse { block: 4, summary: Some(0), kv_heads: None, stride: None }, "model.attention.summary"),
        (AttentionConfig::FixedSparse { block: 4, summary: None, kv_heads: None, stride: None }, "model.attention.summary"),
        (AttentionConfig::Tiled { block_q: 0, block_k: 8, kv_heads: None }, "model.attention.block_q"),
        (AttentionConfig::Gated { kv_heads: Some(0), gate_bias: None, partial_rope: None, qk_norm: false }, "model.attention.kv_heads"),
        (AttentionConfig::Gated { kv_heads: None, gate_bias: Some(f64::NAN), partial_rope: None, qk_norm: false }, "model.attention.gate_bias"),
        // d_h = 8: 0.4 · 8 rounds to 3 rotated dims (odd); 1.5 is no fraction.
        (AttentionConfig::Gated { kv_heads: None, gate_bias: None, partial_rope: Some(0.4), qk_norm: false }, "model.attention.partial_rope"),
        (AttentionConfig::Gated { kv_heads: None, gate_bias: None, partial_rope: Some(1.5), qk_norm: false }, "model.attention.partial_rope"),
    ];
    for (config, field) in cases {
        let err = config.validate(32, 4).expect_err(&format!("{config:?} should be rejected"));
        assert_eq!(err.field, field, "{config:?}");
    }
    let err = AttentionConfig::Differential {}.validate(24, 3).expect_err("odd head count");
    assert_eq!(err.field, "model.heads");
}
