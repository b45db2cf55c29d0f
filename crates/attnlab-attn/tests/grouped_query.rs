//! GQA/MHA/MQA against an independent reference, decode against forward, causality, gradients.

mod common;

use attnlab_attn::burn::tensor::{Distribution, Tensor};
use attnlab_attn::{AttentionConfig, GroupedQuery};
use common::*;



/// Causal multi-head reference from the module's weights.
fn reference(m: &GroupedQuery, x: &[f64], b: usize, t: usize, d_model: usize) -> Vec<f64> {
    gqa_reference(m, x, b, t, d_model, &|_, q, k| k <= q)
}

#[test]
fn every_group_count_matches_the_naive_reference() {
    let (d_model, heads) = (48, 6);
    for config in [AttentionConfig::Mha {}, AttentionConfig::Gqa { kv_heads: 3 }, AttentionConfig::Gqa { kv_heads: 2 }, AttentionConfig::Mqa {}] {
        for t in [1, 7, 19] {
            let m = grouped(&config, d_model, heads, 3);
            let x = random_input(2, t, d_model, 11, &cpu());
            let got = to_vec(m.forward(x.clone()));
            let want = reference(&m, &to_vec(x), 2, t, d_model);
            let err = max_abs_diff(&got, &want);
            assert!(err < 1e-4, "{config:?} t={t}: max |diff| = {err}");
        }
    }
}

#[test]
fn mha_is_gqa_with_kv_heads_equal_heads_and_mqa_is_gqa_with_one() {
    use attnlab_attn::burn::module::Module;
    let x = random_input(2, 9, 32, 5, &cpu());
    let pairs = [(AttentionConfig::Mha {}, AttentionConfig::Gqa { kv_heads: 4 }), (AttentionConfig::Mqa {}, AttentionConfig::Gqa { kv_heads: 1 })];
    for (named, general) in pairs {
        let a = grouped(&named, 32, 4, 8);
        // Same shapes, so the general module loads the named one's weights.
        let b = grouped(&general, 32, 4, 9).load_record(a.clone().into_record());
        assert_eq!((a.kv_heads, a.qkv.weight.dims()), (b.kv_heads, b.qkv.weight.dims()));
        let err = max_abs_diff(&to_vec(a.forward(x.clone())), &to_vec(b.forward(x.clone())));
        assert!(err < 1e-6, "{named:?} vs {general:?}: {err}");
    }
}

#[test]
fn changing_a_later_token_leaves_earlier_outputs_unchanged() {
    let dev = cpu();
    let m = grouped(&AttentionConfig::Gqa { kv_heads: 2 }, 32, 4, 1);
    let (t, cut) = (12, 6);
    let x = random_input(1, t, 32, 2, &dev);
    let noise = Tensor::<3>::random([1, t - cut - 1, 32], Distribution::Normal(0.0, 1.0), &dev);
    let x2 = x.clone().slice_assign([0..1, cut + 1..t, 0..32], noise);
    let full_a = m.forward(x);
    let full_b = m.forward(x2);
    let a = to_vec(full_a.clone().narrow(1, 0, cut + 1));
    let b = to_vec(full_b.clone().narrow(1, 0, cut + 1));
    assert!(max_abs_diff(&a, &b) < 1e-6, "outputs ≤ t moved when tokens > t changed");
    let later = max_abs_diff(&to_vec(full_a.narrow(1, cut + 1, 1)), &to_vec(full_b.narrow(1, cut + 1, 1)));
    assert!(later > 1e-3, "the output at t+1 should change with its own token (diff {later})");
}
