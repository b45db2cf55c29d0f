//! Log-linear attention over linear attention against an independent f64 reference (the
//! training forward is the chunked form, checked also against the dense O(T²) form): the
//! Fenwick buckets written out from their definition (not the bit-length formula), the masked
//! sum over every visible key, the output RMSNorm and W_o; decode (the binary-carry level
//! states) against the same reference across power-of-two boundaries; gradients against finite
//! differences; one-hot λ; λ all equal gives the base kind; state bytes and the level limit.
//!
//! Mutations planted and seen to fail:
//! - level from 1-based positions (`bit-length((t+1) XOR (s+1))`) → `levels_are_the_fenwick_buckets`,
//!   `forward_matches_the_reference`, `one_hot_lambda_keeps_one_bucket`, gradients;
//! - the weight matrix transposed (λ of the key, not the query) → `forward_matches_the_reference`,
//!   `one_hot_lambda_keeps_one_bucket`, gradients;
//! - the cross-chunk bucket one chunk late (`P[β + 1] − P[β + 1 − 2^(ℓ'−1)]`), and the cross-chunk
//!   λ read one level low → `chunked_form_equals_the_dense_form`, `forward_matches_the_reference`;
//! - the chunk not capped at the sequence's next power of two → `a_chunk_longer_than_the_levels_cover_is_fine`
//!   (an out-of-range level index);
//! - the binary carry skipped (levels never merged) → `decode_equals_the_reference_across_powers_of_two`;
//! - state bytes counting `levels` (L) instead of the levels the context uses → `state_bytes_grow_with_log_t_and_equal_the_real_tensors`.

mod common;

use attnlab_attn::burn::tensor::{Device, Tensor, TensorData};
use attnlab_attn::recurrent::log_linear::{level, levels_for};
use attnlab_attn::config::LogLinearBase;
use attnlab_attn::{Attention, AttentionConfig, FeatureMap, LogLinearAttention, Recurrent};
use common::*;

const D_MODEL: usize = 16;
const HEADS: usize = 2;

/// The bucket of key s < t by its definition: level ℓ ≥ 1 holds s ∈ [b − 2^(ℓ−1), b),
/// b = t − (t mod 2^(ℓ−1)), and is non-empty only if bit ℓ−1 of t is set; s = t is level 0.
fn bucket(t: usize, s: usize) -> usize {
    if s == t {
        return 0;
    }
    let found: Vec<usize> = (1..40)
        .filter(|&l| {
            let width = 1usize << (l - 1);
            let b = t - t % width;
            t & width != 0 && s + width >= b && s < b
        })
        .collect();
    assert_eq!(found.len(), 1, "key {s} of query {t} is in buckets {found:?}");
    found[0]
}

fn elu1(x: f64) -> f64 {
    if x > 0.0 { x + 1.0 } else { x.exp() }
}

/// λ `[b][t][h][L]` from the module's level head, in f64.
fn reference_lambda(m: &LogLinearAttention, x: &[f64], b: usize, t: usize) -> Vec<Vec<Vec<Vec<f64>>>> {
    let (h, l) = (m.base.heads, m.levels);
    let w = to_vec(m.level_proj.weight.val());
    let scale = to_vec(m.level_scale.val());
    (0..b)
        .map(|s| {
            let z = matmul(&x[s * t * D_MODEL..(s + 1) * t * D_MODEL], t, D_MODEL, &w, h * l);
            (0..t).map(|i| (0..h).map(|j| (0..l).map(|k| (1.0 + (scale[j * l + k] * z[i * h * l + j * l + k]).exp()).ln()).collect()).collect()).collect()
        })
        .collect()
}

/// The layer written out: per head `o_t = Σ_{s ≤ t} λ_t^{bucket(t,s)} (φ(q_t)·φ(k_s)) v_s / √d_φ`,
/// RMSNorm over d_h, heads concatenated, W_o. Elu+1 feature map.
fn reference(m: &LogLinearAttention, x: &[f64], b: usize, t: usize, lambda: &[Vec<Vec<Vec<f64>>>]) -> Vec<f64> {
    let (h, d) = (m.base.heads, m.base.head_dim);
    let w_qkv = to_vec(m.base.qkv.weight.val());
    let w_out = to_vec(m.base.out.weight.val());
    let gamma = to_vec(m.base.norm.as_ref().unwrap().gamma.val());
    let mut out = Vec::new();
    for s in 0..b {
        let qkv = matmul(&x[s * t * D_MODEL..(s + 1) * t * D_MODEL], t, D_MODEL, &w_qkv, 3 * h * d);
        let mut concat = vec![0.0; t * h * d];
        for j in 0..h {
            let get = |part: usize, i: usize| cols(&qkv, 3 * h * d, i, part * h * d + j * d, d);
            for i in 0..t {
                let q: Vec<f64> = get(0, i).into_iter().map(elu1).collect();
                let mut o = vec![0.0; d];
                for key in 0..=i {
                    let k: Vec<f64> = get(1, key).into_iter().map(elu1).collect();
                    let score = q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt();
                    let weight = lambda[s][i][j][bucket(i, key)];
                    for (o, v) in o.iter_mut().zip(get(2, key)) {
                        *o += weight * score * v;
                    }
                }
                concat[i * h * d + j * d..i * h * d + (j + 1) * d].copy_from_slice(&rms_norm(&o, &gamma, 1e-5));
            }
        }
        out.extend(matmul(&concat, t, h * d, &w_out, D_MODEL));
    }
    out
}

fn config(levels: Option<usize>) -> AttentionConfig {
    // Chunks of 4: the training forward crosses chunks (and cross-chunk levels) at t ≥ 5.
    AttentionConfig::LogLinear { base: LogLinearBase::Linear, feature_map: FeatureMap::Elu1, levels, chunk: 4 }
}

/// Weights × 4 and Λ = 4: λ spread over ≈ 0.2–2.5, so buckets weigh differently.
fn layer(seed: u64, levels: Option<usize>, dev: &Device) -> LogLinearAttention {
    let Attention::LogLinear(m) = seeded(dev, seed, || config(levels).init(D_MODEL, HEADS, 64, 10_000.0, dev)) else { panic!("expected log-linear") };
    let mut m = sharpen(m, 4.0);
    m.level_scale = attnlab_attn::burn::module::Param::from_tensor((m.level_scale.val() * 4.0).detach().set_require_grad(dev.is_autodiff()));
    m
}

#[test]
fn levels_are_the_fenwick_buckets() {
    for t in 0..1100 {
        for s in 0..=t {
            assert_eq!(level(t, s), bucket(t, s), "level of key {s} for query {t}");
        }
    }
    assert_eq!((level(6, 5), level(6, 4), level(6, 3), level(6, 0)), (2, 2, 3, 3), "t = 6: level 1 empty, level 2 = {{4, 5}}, level 3 = {{0..3}}");
    assert_eq!((levels_for(1), levels_for(2), levels_for(64), levels_for(65)), (1, 2, 7, 8));
}

#[test]
fn forward_matches_the_reference() {
    let dev = cpu();
    for t in [1, 7, 17, 33] {
        let m = layer(3, None, &dev);
        let x = random_input(2, t, D_MODEL, 5, &dev);
        let got = to_vec(m.forward(x.clone()));
        let xs = to_vec(x);
        let lambda = reference_lambda(&m, &xs, 2, t);
        let spread = lambda.iter().flatten().flatten().flatten().fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        assert!(spread.1 > 3.0 * spread.0, "λ should vary across levels and tokens: {spread:?}");
        assert_matches_reference(&format!("t={t}"), &got, || reference(&m, &xs, 2, t, &lambda));
    }
}

#[test]
fn decode_equals_the_reference_across_powers_of_two() {
    let dev = cpu();
    let t = 35;
    let m = layer(4, None, &dev);
    let x = random_input(1, t, D_MODEL, 6, &dev);
    let xs = to_vec(x.clone());
    let want = reference(&m, &xs, 1, t, &reference_lambda(&m, &xs, 1, t));
    let m = Attention::LogLinear(m);
    for prefill in [1, 5, 16] {
        let err = rel_err(&to_vec(decode(&m, &x, prefill)), &want);
        assert!(err < 1e-4, "prefill {prefill}: relative error {err}");
    }
}

/// The chunked form equals the dense O(T²) form for chunks that do and do not divide T, chunk
/// 1 (every key in another chunk) and one chunk covering everything.
#[test]
fn chunked_form_equals_the_dense_form() {
    let dev = cpu();
    let m = layer(15, None, &dev);
    for t in [1, 6, 16, 37] {
        let x = random_input(2, t, D_MODEL, 16, &dev);
        let lambda = m.lambda(x.clone());
        let dense = to_vec(m.forward_dense(x.clone(), lambda.clone()));
        for c in [1, 2, 4, 8, 64] {
            let err = rel_err(&to_vec(m.forward_chunked(x.clone(), lambda.clone(), c)), &dense);
            assert!(err < 1e-5, "t = {t}, chunk {c}: relative error {err}");
        }
    }
}

/// A chunk longer than the sequence, with just the levels the sequence needs (L = 3: 4
/// positions): the padded rows must not read a level beyond L.
#[test]
fn a_chunk_longer_than_the_levels_cover_is_fine() {
    let dev = cpu();
    let m = layer(17, Some(3), &dev);
    for t in [1, 3, 4] {
        let x = random_input(1, t, D_MODEL, 18, &dev);
        let lambda = m.lambda(x.clone());
        let dense = to_vec(m.forward_dense(x.clone(), lambda.clone()));
        let err = rel_err(&to_vec(m.forward_chunked(x, lambda, 64)), &dense);
        assert!(err < 1e-5, "t = {t}: relative error {err}");
    }
}

/// λ = e_ℓ keeps exactly bucket ℓ (random λ would hide a wrong level assignment).
#[test]
fn one_hot_lambda_keeps_one_bucket() {
    let dev = cpu();
    let (b, t) = (1, 13);
    let m = layer(7, None, &dev);
    let x = random_input(b, t, D_MODEL, 8, &dev);
    let xs = to_vec(x.clone());
    for keep in 0..4 {
        let one_hot: Vec<Vec<Vec<Vec<f64>>>> = vec![vec![vec![(0..m.levels).map(|l| f64::from(u8::from(l == keep))).collect(); HEADS]; t]; b];
        // [b][t][h][L] → the module's [b, h, t, L].
        let flat: Vec<f32> = (0..HEADS * t).flat_map(|_| (0..m.levels).map(|l| if l == keep { 1.0 } else { 0.0 })).collect();
        let lambda = Tensor::<1>::from_data(TensorData::new(flat, [b * HEADS * t * m.levels]), &dev).reshape([b, HEADS, t, m.levels]);
        let want = reference(&m, &xs, b, t, &one_hot);
        for (form, got) in [("dense", m.forward_dense(x.clone(), lambda.clone())), ("chunked", m.forward_chunked(x.clone(), lambda, 4))] {
            let err = rel_err(&to_vec(got), &want);
            assert!(err < 1e-4, "{form}, bucket {keep}: relative error {err}");
        }
    }
}

/// With the level head at zero every λ = softplus(0): one common factor, which the output
/// RMSNorm removes — the layer is its base linear attention (computed by the base's own
/// chunked rule, a separate code path).
#[test]
fn equal_lambda_is_the_base_linear_attention() {
    let dev = cpu();
    let mut m = layer(9, None, &dev);
    m.level_proj.weight = attnlab_attn::burn::module::Param::from_tensor(m.level_proj.weight.val().zeros_like());
    let x = random_input(2, 21, D_MODEL, 10, &dev);
    let err = rel_err(&to_vec(m.forward(x.clone())), &to_vec(m.base.forward(x)));
    assert!(err < 1e-4, "relative error {err}");
}

#[test]
fn gradients_match_finite_differences_of_the_reference() {
    let dev = cpu().autodiff();
    let m = layer(11, None, &dev);
    let t = 9;
    let x = random_input(1, t, D_MODEL, 12, &dev);
    check_gradients("log_linear", &m, x, &|m, x| m.forward(x), &|m, x| reference(m, x, 1, t, &reference_lambda(m, x, 1, t)));
}

#[test]
fn state_bytes_grow_with_log_t_and_equal_the_real_tensors() {
    let dev = cpu();
    let m = layer(13, None, &dev);
    let per_level = HEADS * 8 * 8 * 4;
    for (context, levels) in [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (8, 4), (9, 5), (64, 7)] {
        assert_eq!(m.state_bytes(context), levels * per_level, "context {context}");
        let mut state = m.init_state(1, context, &dev);
        m.step(random_input(1, context, D_MODEL, 1, &dev), &mut state);
        assert_eq!(Attention::LogLinear(m.clone()).state_bytes(context), attnlab_attn::State::Recurrent(state).bytes(), "context {context}");
    }
}

#[test]
#[should_panic(expected = "exceeds the 3 levels")]
fn decoding_past_the_levels_is_an_error() {
    let dev = cpu();
    let m = layer(14, Some(3), &dev);
    let mut state = m.init_state(1, 8, &dev);
    m.step(random_input(1, 5, D_MODEL, 1, &dev), &mut state);
}
