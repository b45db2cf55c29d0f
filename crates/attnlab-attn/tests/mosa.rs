//! Mixture of Sparse Attention against an independent f64 reference in the dense masked form
//! (MECHANISMS.md §6): full q, k, v of every position from each routed head's weights, RoPE at
//! the original positions on the first half of the head, allowed(i, j) = i ∈ I ∧ j ∈ I ∧ j ≤ i,
//! rows outside I zero, each row scaled by its router score; the dense heads by the grouped-query
//! reference. The sets I are the rules written out plainly: expert choice = the k best scores
//! (ties to the lower index), prefix = rank within the prefix below ⌈(t + 1)/ρ⌉ and within the
//! budget. Routed heads' weights × 6 (peaked attention).
//!
//! Mutations planted and seen to fail (with the contract tests, which also hold two MoSA layers):
//! - RoPE at compact positions 0..k − 1 instead of the original ones → `forward_matches_the_reference`,
//!   gradients, decode (here and in the contract);
//! - the router score not applied to the routed output → forward, gradients, decode, and the
//!   contract's every-parameter-has-a-gradient (the router gets none);
//! - the causal mask among the chosen tokens dropped → forward, gradients, decode, the leak
//!   probe, the contract's causality test;
//! - prefix routing without its budget (rank only) → forward, gradients, decode,
//!   `unchosen_tokens_get_nothing`;
//! - expert choice's ties to the higher index → `expert_choice_breaks_ties_to_the_lower_index`;
//! - decode ranking the new score with `>` instead of `≥` (a tie goes to the later token) →
//!   `decode_equals_the_forward_on_repeated_tokens` only (random inputs never tie);
//! - decode slots ⌊capacity/ρ⌋ instead of ⌈capacity/ρ⌉ → the contract's state-bytes test only.
//! - gathered rows without the sequence's offset n·t (batch 2 reads sequence 0) → forward,
//!   decode, `rho_one_with_unit_scores_is_multi_head_attention`;
//! - a constant gate instead of the router score → forward, gradients, decode, the ρ = 1 identity.

mod common;

use attnlab_attn::burn::module::Param;
use attnlab_attn::burn::tensor::{Device, Tensor};
use attnlab_attn::config::MosaRouting;
use attnlab_attn::{Attention, AttentionConfig, Mosa};
use common::*;

const D_MODEL: usize = 32;
const T: usize = 16;

fn config(routing: MosaRouting, rho: usize, dense_heads: usize, mosa_heads: usize) -> AttentionConfig {
    AttentionConfig::Mosa { rho, routing, dense_heads, mosa_heads: Some(mosa_heads), head_dim: Some(8) }
}

fn layer(config: &AttentionConfig, dev: &Device) -> Mosa {
    let Attention::Mosa(mut m) = seeded(dev, 31, || config.init(D_MODEL, 4, 64, ROPE_BASE as f32, dev)) else { panic!("mosa") };
    m.qkv = Param::from_tensor((m.qkv.val() * 6.0).detach());
    m.dense = m.dense.map(|d| sharpen(d, SHARP));
    m
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The chosen positions of one head's scores.
fn chosen(scores: &[f64], routing: MosaRouting, rho: usize) -> Vec<bool> {
    let t = scores.len();
    let mut out = vec![false; t];
    match routing {
        MosaRouting::ExpertChoice => {
            let k = (t / rho).max(2).min(t);
            let mut order: Vec<usize> = (0..t).collect();
            order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap().then(a.cmp(&b)));
            for &p in &order[..k] {
                out[p] = true;
            }
        }
        MosaRouting::Prefix => {
            let mut count = 0;
            for p in 0..t {
                let budget = (p + 1).div_ceil(rho);
                let better = (0..p).filter(|&s| scores[s] >= scores[p]).count();
                if better < budget && count < budget {
                    out[p] = true;
                    count += 1;
                }
            }
        }
    }
    out
}

/// The layer's output for x `[b, t, d]`, and the chosen sets `[b][E][t]`.
fn reference(m: &Mosa, x: &[f64], b: usize, t: usize) -> (Vec<f64>, Vec<Vec<Vec<bool>>>) {
    let (e_n, h) = (m.heads, m.head_dim);
    let rd = m.rope.dim();
    let w_r = to_vec(m.router.weight.val());
    let w_qkv = to_vec(m.qkv.val());
    let w_o = to_vec(m.out.val());
    let dense = m.dense.as_ref().map(|d| gqa_reference(d, x, b, t, D_MODEL, &|_, i, j| j <= i));
    let mut out = dense.unwrap_or_else(|| vec![0.0; b * t * D_MODEL]);
    let mut sets = Vec::new();
    for n in 0..b {
        let xs = &x[n * t * D_MODEL..(n + 1) * t * D_MODEL];
        let r = matmul(xs, t, D_MODEL, &w_r, e_n);
        let mut head_sets = Vec::new();
        for e in 0..e_n {
            let scores: Vec<f64> = (0..t).map(|p| sigmoid(r[p * e_n + e])).collect();
            let set = chosen(&scores, m.routing, m.rho);
            let we = &w_qkv[e * D_MODEL * 3 * h..(e + 1) * D_MODEL * 3 * h];
            let qkv = matmul(xs, t, D_MODEL, we, 3 * h);
            let rot = |v: Vec<f64>, p: usize| {
                let mut v = v;
                let r = rope(&v[..rd], p, ROPE_BASE);
                v[..rd].copy_from_slice(&r);
                v
            };
            let q: Vec<Vec<f64>> = (0..t).map(|p| rot(cols(&qkv, 3 * h, p, 0, h), p)).collect();
            let k: Vec<Vec<f64>> = (0..t).map(|p| rot(cols(&qkv, 3 * h, p, h, h), p)).collect();
            let v: Vec<Vec<f64>> = (0..t).map(|p| cols(&qkv, 3 * h, p, 2 * h, h)).collect();
            let allows = |i: usize, j: usize| set[i] && set[j] && j <= i;
            for i in (0..t).filter(|&i| set[i]) {
                let o = weighted_sum(&weights(&q, &k, i, 1.0 / (h as f64).sqrt(), &allows), &v);
                let y = matmul(&o, 1, h, &w_o[e * h * D_MODEL..(e + 1) * h * D_MODEL], D_MODEL);
                for (c, yc) in y.iter().enumerate() {
                    out[(n * t + i) * D_MODEL + c] += scores[i] * yc;
                }
            }
            head_sets.push(set);
        }
        sets.push(head_sets);
    }
    (out, sets)
}

#[test]
fn forward_matches_the_reference() {
    let dev = cpu();
    for config in [config(MosaRouting::Prefix, 4, 1, 3), config(MosaRouting::ExpertChoice, 4, 1, 3), config(MosaRouting::Prefix, 2, 0, 2), config(MosaRouting::ExpertChoice, 3, 0, 2)] {
        let m = layer(&config, &dev);
        let x = random_input(2, T, D_MODEL, 3, &dev);
        let xs = to_vec(x.clone());
        let got = to_vec(m.forward(x));
        assert_matches_reference(&format!("{config:?}"), &got, || reference(&m, &xs, 2, T).0);
        // Sparse, not dense: fewer than all tokens chosen per head.
        let (_, sets) = reference(&m, &xs, 2, T);
        assert!(sets.iter().flatten().all(|s| s.iter().filter(|c| **c).count() < T));
    }
}

#[test]
fn gradients_match_finite_differences_of_the_reference() {
    let dev = cpu().autodiff();
    for config in [config(MosaRouting::Prefix, 2, 1, 2), config(MosaRouting::ExpertChoice, 2, 0, 2)] {
        let m = layer(&config, &dev);
        let x = random_input(1, 9, D_MODEL, 4, &dev);
        check_gradients(&format!("{config:?}"), &m, x, &|m, x| m.forward(x), &|m, x| reference(m, x, 1, 9).0);
    }
}

/// Tokens no routed head chose get exactly 0 from the layer (no dense heads).
#[test]
fn unchosen_tokens_get_nothing() {
    let dev = cpu();
    let m = layer(&config(MosaRouting::Prefix, 4, 0, 2), &dev);
    let x = random_input(1, T, D_MODEL, 5, &dev);
    let (_, sets) = reference(&m, &to_vec(x.clone()), 1, T);
    let y = to_vec(m.forward(x));
    let mut seen = 0;
    for p in (0..T).filter(|&p| sets[0].iter().all(|s| !s[p])) {
        assert!(y[p * D_MODEL..(p + 1) * D_MODEL].iter().all(|v| *v == 0.0), "token {p} was chosen by no head but got an output");
        seen += 1;
    }
    assert!(seen > 0, "every token was chosen: the test checks nothing");
}

/// The leak probe: copies of the highest-scoring token placed after position P change which
/// earlier tokens expert choice picks, so outputs before P change; prefix routing's do not.
#[test]
fn expert_choice_leaks_the_future_and_prefix_routing_does_not() {
    let dev = cpu();
    let p = 8;
    for (routing, leaks) in [(MosaRouting::ExpertChoice, true), (MosaRouting::Prefix, false)] {
        let m = layer(&config(routing, 4, 1, 3), &dev);
        let x = random_input(1, T, D_MODEL, 6, &dev);
        // The token head 0 scores highest among the first P.
        let r = to_vec(attnlab_attn::burn::tensor::activation::sigmoid(attnlab_attn::linear::apply(&m.router, x.clone())));
        let best = (0..p).max_by(|&a, &b| r[a * 3].total_cmp(&r[b * 3])).unwrap();
        let copies = x.clone().narrow(1, best, 1).repeat_dim(1, T - p);
        let changed = Tensor::cat(vec![x.clone().narrow(1, 0, p), copies], 1);
        let a = to_vec(m.forward(x).narrow(1, 0, p));
        let b = to_vec(m.forward(changed).narrow(1, 0, p));
        let moved = max_abs_diff(&a, &b) > 1e-5 * a.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        assert_eq!(moved, leaks, "{routing:?}: earlier outputs {} when later tokens changed", if moved { "changed" } else { "stayed" });
    }
}

#[test]
fn expert_choice_breaks_ties_to_the_lower_index() {
    let dev = cpu();
    // Identical tokens tie in every router score: the first k positions are chosen.
    let m = layer(&config(MosaRouting::ExpertChoice, 4, 0, 1), &dev);
    let x = random_input(1, 1, D_MODEL, 7, &dev).repeat_dim(1, T);
    let r = to_vec(attnlab_attn::burn::tensor::activation::sigmoid(attnlab_attn::linear::apply(&m.router, x)));
    let r: Vec<f32> = r.iter().map(|v| *v as f32).collect();
    assert_eq!(m.select(&r, 1, T), vec![(0..m.expert_k(T)).collect::<Vec<_>>()]);
}

/// Decode equals the forward when tokens repeat (router scores tie: decode must rank a tie
/// below the earlier token, as the forward does).
#[test]
fn decode_equals_the_forward_on_repeated_tokens() {
    let dev = cpu();
    let m = layer(&config(MosaRouting::Prefix, 2, 1, 3), &dev);
    let base = random_input(2, 5, D_MODEL, 8, &dev);
    let x = Tensor::cat(vec![base.clone(), base.clone(), base.narrow(1, 0, 3)], 1);
    let full = to_vec(m.forward(x.clone()));
    let attn = Attention::Mosa(m);
    for prefill in [1, 6] {
        let err = rel_err(&to_vec(decode(&attn, &x, prefill)), &full);
        assert!(err < 1e-4, "prefill {prefill}: relative |decode − forward| = {err}");
    }
}

/// Prefix routing on constructed scores: rising scores fill the budget exactly (tokens 0, ρ,
/// 2ρ, …: each rank-0 token waits for the budget to grow), falling scores choose token 0 only,
/// ρ = 1 chooses everything; never more than ⌈T/ρ⌉. Expert choice takes the k best.
#[test]
fn routing_rules_on_constructed_scores() {
    let dev = cpu();
    let at = |rho: usize, routing: MosaRouting| {
        let Attention::Mosa(m) = locked(|| config(routing, rho, 0, 1).init(D_MODEL, 4, 64, ROPE_BASE as f32, &dev)) else { panic!("mosa") };
        m
    };
    let rising: Vec<f32> = (0..10).map(|p| p as f32).collect();
    let falling: Vec<f32> = rising.iter().rev().cloned().collect();
    assert_eq!(at(3, MosaRouting::Prefix).select(&rising, 1, 10), vec![vec![0, 3, 6, 9]]);
    assert_eq!(at(3, MosaRouting::Prefix).select(&falling, 1, 10), vec![vec![0]]);
    assert_eq!(at(1, MosaRouting::Prefix).select(&falling, 1, 10), vec![(0..10).collect::<Vec<_>>()]);
    assert_eq!(at(3, MosaRouting::ExpertChoice).select(&rising, 1, 10), vec![vec![7, 8, 9]]);
    for rho in 1..6 {
        let random: Vec<f32> = probe(40, rho as u64).iter().map(|v| *v as f32).collect();
        let chosen = &at(rho, MosaRouting::Prefix).select(&random, 1, 40)[0];
        assert!(chosen.len() <= 40usize.div_ceil(rho) && chosen[0] == 0, "ρ = {rho}: {chosen:?}");
    }
}

/// ρ = 1 with r ≡ 1 is multi-head attention: every head chooses every token and nothing is
/// scaled. r ≡ 1 by a zero router (σ(0) = ½) with W_O doubled; the other side is attnlab's
/// grouped-query module (MHA: as many K/V heads as heads) holding the routed heads' weights in its
/// fused projection, RoPE on the same half of each head; batch 2, attention peaked.
#[test]
fn rho_one_with_unit_scores_is_multi_head_attention() {
    let dev = cpu();
    let (e_n, h) = (4, 8);
    let mut m = layer(&config(MosaRouting::Prefix, 1, 0, e_n), &dev);
    let Attention::Mosa(holder) = seeded(&dev, 5, || config(MosaRouting::Prefix, 1, e_n, 1).init(D_MODEL, 4, 64, ROPE_BASE as f32, &dev)) else { panic!("mosa") };
    let mut mha = holder.dense.expect("dense heads");
    assert_eq!((mha.heads, mha.kv_heads, mha.head_dim), (e_n, e_n, h));
    let w = m.qkv.val(); // [E, d, 3h′]
    let part = |from: usize| Tensor::cat((0..e_n).map(|e| w.clone().narrow(0, e, 1).reshape([D_MODEL, 3 * h]).narrow(1, from, h)).collect(), 1);
    mha.qkv.weight = Param::from_tensor(Tensor::cat(vec![part(0), part(h), part(2 * h)], 1));
    mha.out.weight = Param::from_tensor(m.out.val().reshape([e_n * h, D_MODEL]));
    m.router.weight = Param::from_tensor(m.router.weight.val().zeros_like());
    m.out = Param::from_tensor(m.out.val() * 2.0);
    let x = random_input(2, T, D_MODEL, 9, &dev);
    let err = rel_err(&to_vec(m.forward(x.clone())), &to_vec(mha.forward(x)));
    assert!(err < 1e-5, "relative |MoSA(ρ = 1, r ≡ 1) − MHA| = {err}");
}

#[test]
fn labels_and_validation() {
    let parse = |s: &str| toml::from_str::<AttentionConfig>(s).unwrap();
    assert_eq!(parse("kind = \"mosa\"").label(), "mosa-r4");
    assert_eq!(parse("kind = \"mosa\"\nrho = 8\nmosa_heads = 6\nrouting = \"expert_choice\"").label(), "mosa-r8-e6-noncausal");
    assert_eq!(parse("kind = \"mosa\"").validate(32, 4), Ok(()));
    let err = parse("kind = \"mosa\"\nrho = 0").validate(32, 4).unwrap_err();
    assert_eq!(err.field, "model.attention.rho");
    let err = parse("kind = \"mosa\"\ndense_heads = 4").validate(32, 4).unwrap_err();
    assert_eq!(err.field, "model.attention.mosa_heads");
    let err = parse("kind = \"mosa\"\nhead_dim = 2").validate(32, 4).unwrap_err();
    assert_eq!(err.field, "model.attention.head_dim");
}
