//! GQA/MHA/MQA against an independent reference (f64 loops: per-head RoPE, naive softmax,
//! K/V head ⌊i / (h/g)⌋) with **peaked** attention, for the training forward (fused CPU kernel)
//! and for cached decode; causality; gradients against finite differences of the reference.
//!
//! Mutations planted and seen to fail (see `tests/README.md` for the full list):
//! - scale 1/d_h instead of 1/√d_h (both kernels) → `every_group_count_matches_the_reference_with_peaked_attention`;
//! - RoPE off on the keys → the same test and `cached_decode_matches_the_reference`;
//! - causal mask shifted by one (a query also sees the next key) → both, and the causality test;
//! - K/V head `i mod g` instead of `⌊i / (h/g)⌋` → the reference test (GQA-2, GQA-3 cases);
//! - a wrong factor in the fused kernel's backward → `gradients_match_finite_differences_of_the_reference`.

mod common;

use attnlab_attn::burn::tensor::{Distribution, Tensor};
use attnlab_attn::{Attention, AttentionConfig, GroupedQuery};
use common::*;

/// Causal multi-head reference from the module's weights.
fn reference(m: &GroupedQuery, x: &[f64], b: usize, t: usize, d_model: usize) -> Vec<f64> {
    gqa_reference(m, x, b, t, d_model, &|_, q, k| k <= q)
}

const CONFIGS: [AttentionConfig; 4] = [AttentionConfig::Mha {}, AttentionConfig::Gqa { kv_heads: 3 }, AttentionConfig::Gqa { kv_heads: 2 }, AttentionConfig::Mqa {}];

#[test]
fn every_group_count_matches_the_reference_with_peaked_attention() {
    let (d_model, heads) = (48, 6);
    for config in CONFIGS {
        for t in [1, 7, 19] {
            let m = sharpen(grouped(&config, d_model, heads, 3), SHARP);
            let x = random_input(2, t, d_model, 11, &cpu());
            let got = to_vec(m.forward(x.clone()));
            assert_matches_reference(&format!("{config:?} t={t}"), &got, || reference(&m, &to_vec(x), 2, t, d_model));
        }
    }
}

#[test]
fn cached_decode_matches_the_reference() {
    let (d_model, heads, t) = (48, 6, 13);
    for config in CONFIGS {
        let m = sharpen(grouped(&config, d_model, heads, 4), SHARP);
        let x = random_input(2, t, d_model, 12, &cpu());
        let want = reference(&m, &to_vec(x.clone()), 2, t, d_model);
        let m = Attention::GroupedQuery(m);
        for prefill in [1, 6] {
            let err = rel_err(&to_vec(decode(&m, &x, prefill)), &want);
            assert!(err < 1e-4, "{config:?} prefill {prefill}: relative error {err}");
        }
    }
}

#[test]
fn changing_a_later_token_leaves_earlier_outputs_unchanged() {
    let dev = cpu();
    let m = sharpen(grouped(&AttentionConfig::Gqa { kv_heads: 2 }, 32, 4, 1), SHARP);
    let (t, cut) = (12, 6);
    let (x, noise) = seeded(&dev, 2, || {
        let x = Tensor::<3>::random([1, t, 32], Distribution::Normal(0.0, 1.0), &dev);
        (x, Tensor::<3>::random([1, t - cut - 1, 32], Distribution::Normal(0.0, 1.0), &dev))
    });
    let x2 = x.clone().slice_assign([0..1, cut + 1..t, 0..32], noise);
    let full_a = m.forward(x);
    let full_b = m.forward(x2);
    let a = to_vec(full_a.clone().narrow(1, 0, cut + 1));
    let b = to_vec(full_b.clone().narrow(1, 0, cut + 1));
    assert!(rel_err(&b, &a) < 1e-6, "outputs ≤ t moved when tokens > t changed");
    let later = rel_err(&to_vec(full_b.narrow(1, cut + 1, 1)), &to_vec(full_a.narrow(1, cut + 1, 1)));
    assert!(later > 1e-2, "the output at t+1 should change with its own token (relative change {later})");
}

#[test]
fn gradients_match_finite_differences_of_the_reference() {
    let dev = cpu().autodiff();
    let (d_model, heads, t) = (32, 4, 9);
    for config in [AttentionConfig::Mha {}, AttentionConfig::Gqa { kv_heads: 2 }, AttentionConfig::Mqa {}] {
        let m = sharpen(grouped_on(&config, d_model, heads, 5, &dev), SHARP);
        let x = random_input(1, t, d_model, 6, &dev);
        check_gradients(&format!("{config:?}"), &m, x, &|m, x| m.forward(x), &|m, x| reference(m, x, 1, t, d_model));
    }
}
